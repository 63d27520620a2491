"""The service's parts that need no Redis: settings, hashed API keys, safe zip unpacking, the job folder rule, the
header-only series check agreeing with the reader, and ``oarmorph segment -o`` writing the worker's RTSTRUCT."""

from __future__ import annotations

import io
import pickle
import stat
import zipfile
from pathlib import Path

import pydicom
import pytest
from pydantic import ValidationError
from service_support import PATIENT_ID
from typer.testing import CliRunner

from imaging.dicom_ct import inspect_ct_series, read_ct_series
from imaging.errors import GantryTiltError, UndecodablePixelDataError
from service.errors import ServiceError
from service.security import ApiKeyConfigError, ApiKeys, new_key, parse_entries
from service.settings import Settings, redact_url
from service.storage import JobStorage, _Counter, unpack_zip


def test_settings_refuse_a_visibility_timeout_shorter_than_the_hard_time_limit():
    with pytest.raises(ValidationError, match="visibility_timeout_s"):
        Settings(task_soft_time_limit_s=10, task_time_limit_s=20, visibility_timeout_s=15)
    with pytest.raises(ValidationError, match="task_time_limit_s"):
        Settings(task_soft_time_limit_s=30, task_time_limit_s=20)
    assert redact_url("redis://:hunter2@redis:6379/0") == "redis://:***@redis:6379/0"
    assert "hunter2" not in str(Settings(redis_url="redis://:hunter2@redis:6379/0").describe())


def test_settings_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("OARMORPH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("OARMORPH_BUNDLES", '{"mine": "/models/mine"}')
    monkeypatch.setenv("OARMORPH_MAX_UPLOAD_BYTES", "1234")
    settings = Settings()
    assert settings.data_dir == tmp_path and settings.max_upload_bytes == 1234
    assert settings.bundle_dirs()["mine"] == Path("/models/mine")


def test_api_keys_are_stored_hashed_and_identify_their_owner(tmp_path):
    key, entry = new_key("clinic-a")
    assert key not in entry.line() and entry.line().startswith("clinic-a:")
    other_key, other = new_key("clinic-b")
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# keys\n{other.line()}\n")
    keys = ApiKeys.from_settings(entry.line(), keys_file)
    assert keys.identify(key) == "clinic-a" and keys.identify(other_key) == "clinic-b"
    assert keys.identify("guess") is None and keys.identify("") is None and keys.identify(None) is None
    with pytest.raises(ApiKeyConfigError):
        parse_entries("clinic-a:nothex:abcd")
    with pytest.raises(ApiKeyConfigError):
        ApiKeys.from_settings(f"{entry.line()},{entry.line()}", None)


def test_job_folders_are_only_ever_under_the_jobs_folder(tmp_path):
    storage = JobStorage(tmp_path / "jobs")
    for bad in ("../x", "..", "a" * 31, "A" * 32, "0" * 32 + "/..", "/etc/passwd"):
        with pytest.raises(ServiceError) as err:
            storage.job_dir(bad)
        assert err.value.code == "JOB_NOT_FOUND"
    assert storage.job_dir("0" * 32) == (tmp_path / "jobs" / ("0" * 32)).resolve()


def _zip_with(members: list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for info, data in members:
            zf.writestr(info, data)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("../evil.dcm", "ZIP_UNSAFE_PATH"),
        ("a/../../evil.dcm", "ZIP_UNSAFE_PATH"),
        ("/abs/evil.dcm", "ZIP_UNSAFE_PATH"),
        ("C:\\evil.dcm", "ZIP_UNSAFE_PATH"),
        ("..\\evil.dcm", "ZIP_UNSAFE_PATH"),
    ],
)
def test_unsafe_zip_member_names_refuse_the_archive_and_write_nothing(tmp_path, name, code):
    target = tmp_path / "job" / "input"
    target.mkdir(parents=True)
    archive = tmp_path / "up.zip"
    archive.write_bytes(_zip_with([("ok.dcm", b"x" * 100), (name, b"y" * 100)]))
    with pytest.raises(ServiceError) as err:
        unpack_zip(archive, _Counter(target, 10**6, 100), 200)
    assert err.value.code == code
    assert list(target.iterdir()) == [] and not any(tmp_path.rglob("evil*"))


def test_a_symbolic_link_in_a_zip_is_refused(tmp_path):
    info = zipfile.ZipInfo("link.dcm")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = tmp_path / "up.zip"
    archive.write_bytes(_zip_with([(info, b"/etc/passwd")]))
    (tmp_path / "in").mkdir()
    with pytest.raises(ServiceError) as err:
        unpack_zip(archive, _Counter(tmp_path / "in", 10**6, 100), 200)
    assert err.value.code == "ZIP_UNSAFE_PATH"


def test_zip_bombs_are_refused_by_declared_and_by_unpacked_size(tmp_path):
    (tmp_path / "in").mkdir()
    archive = tmp_path / "bomb.zip"
    archive.write_bytes(_zip_with([("a.dcm", b"\0" * 2_000_000)]))
    with pytest.raises(ServiceError) as err:  # declared size over the limit
        unpack_zip(archive, _Counter(tmp_path / "in", 1_000_000, 100), 10_000)
    assert err.value.code == "ZIP_BOMB"
    with pytest.raises(ServiceError) as err:  # declared ratio over the limit
        unpack_zip(archive, _Counter(tmp_path / "in", 10**8, 100), 50)
    assert err.value.code == "ZIP_BOMB"
    # headers that lie (a small declared size): what is unpacked is counted and stops at the member's declared size
    data = bytearray(_zip_with([("a.dcm", b"\0" * 2_000_000)]))
    central = data.rfind(b"PK\x01\x02")
    data[central + 24 : central + 28] = (1000).to_bytes(4, "little")  # central directory: uncompressed size 1000
    local = data.find(b"PK\x03\x04")
    data[local + 22 : local + 26] = (1000).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    with pytest.raises(ServiceError) as err:
        unpack_zip(archive, _Counter(tmp_path / "in", 10**8, 100), 10**6)
    assert err.value.code in ("ZIP_INVALID", "ZIP_BOMB")
    assert sum(f.stat().st_size for f in (tmp_path / "in").iterdir()) <= 1_000_000


def test_the_header_check_refuses_what_the_reader_refuses_without_decoding(phantom_case, tmp_path):
    found = inspect_ct_series(phantom_case.ct_dir)
    volume = read_ct_series(phantom_case.ct_dir)
    assert found.shape == volume.geometry.shape
    assert list(found.sop_instance_uids) == volume.meta["sop_instance_uids"]
    assert found.series_instance_uid == volume.meta["series_instance_uid"]
    # a gantry tilt: both refuse with the same code
    tilted = tmp_path / "tilted"
    tilted.mkdir()
    for n, path in enumerate(phantom_case.ct_files()):
        ds = pydicom.dcmread(path)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + 0.3 * n, z]
        ds.save_as(tilted / path.name)
    for check in (inspect_ct_series, read_ct_series):
        with pytest.raises(GantryTiltError):
            check(tilted)
    # a truncated slice: refused from the header's pixel data length alone
    cut = tmp_path / "cut"
    cut.mkdir()
    for path in phantom_case.ct_files():
        (cut / path.name).write_bytes(path.read_bytes())
    victim = sorted(cut.iterdir())[5]
    victim.write_bytes(victim.read_bytes()[:-4000])
    with pytest.raises(UndecodablePixelDataError, match="truncated"):
        inspect_ct_series(cut)
    with pytest.raises(UndecodablePixelDataError):
        read_ct_series(cut)


def test_upload_checks_run_in_their_own_process_and_their_refusals_cross_back(phantom_case, tmp_path):
    import asyncio
    import os
    import signal

    from service.intake_pool import IntakePool

    settings = Settings(data_dir=tmp_path / "data")
    error = ServiceError(422, "GANTRY_TILT", "tilted", {"X-Test": "1"})
    again = pickle.loads(pickle.dumps(error))
    assert (again.status, again.code, again.detail, again.headers) == (422, "GANTRY_TILT", "tilted", {"X-Test": "1"})
    not_dicom = tmp_path / "not_dicom"
    not_dicom.mkdir()
    (not_dicom / "a.dcm").write_bytes(b"this is no DICOM file at all" * 10)
    pool = IntakePool(1)
    try:
        pool.start()
        found = asyncio.run(pool.check(phantom_case.ct_dir, settings))
        assert found.shape == read_ct_series(phantom_case.ct_dir).geometry.shape
        with pytest.raises(ServiceError) as refused:
            asyncio.run(pool.check(not_dicom, settings))
        assert (refused.value.status, refused.value.code) == (422, "NOT_DICOM")
        # a check process that dies: that upload is answered 503, the next one gets a new pool
        for pid in list(pool._pool()._processes):
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(ServiceError) as lost:
            asyncio.run(pool.check(phantom_case.ct_dir, settings))
        assert (lost.value.status, lost.value.code) == (503, "SERVICE_UNAVAILABLE")
        assert asyncio.run(pool.check(phantom_case.ct_dir, settings)).shape == found.shape
    finally:
        pool.stop()


def test_oarmorph_segment_writes_the_workers_rtstruct(phantom_case, tiny_model_dir, tmp_path, monkeypatch):
    from oarmorph.cli import app
    from service.settings import get_settings

    monkeypatch.setenv("OARMORPH_BUNDLES", f'{{"tiny": "{tiny_model_dir}"}}')
    monkeypatch.setenv("OARMORPH_DEFAULT_BUNDLE", "tiny")
    get_settings.cache_clear()
    try:
        out = tmp_path / "rs.dcm"
        res = CliRunner().invoke(app, ["segment", str(phantom_case.ct_dir), "-o", str(out)])  # the default bundle
        assert res.exit_code == 0, res.output
        ds = pydicom.dcmread(out)
        assert len(ds.StructureSetROISequence) == 36 and ds.ApprovalStatus == "UNAPPROVED"
        assert "tiny-test 0.0.1" in list(ds.SoftwareVersions) and ds.PatientID == PATIENT_ID
        by_name = tmp_path / "rs2.dcm"
        res = CliRunner().invoke(app, ["segment", str(phantom_case.ct_dir), "-o", str(by_name), "--bundle", "tiny"])
        assert res.exit_code == 0, res.output
        res = CliRunner().invoke(app, ["segment", str(phantom_case.ct_dir), "--bundle", "tiny"])
        assert res.exit_code == 2 and "USAGE" in res.output
        res = CliRunner().invoke(app, ["segment", str(phantom_case.ct_dir), "-o", str(out), "--bundle", "nope"])
        assert res.exit_code == 2 and "MODEL_NOT_FOUND" in res.output
    finally:
        get_settings.cache_clear()


def test_the_readme_lists_every_setting_and_every_error_code():
    from service.errors import IMAGING_CODES, JOB_CODES, SERVICE_CODES

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name in Settings.model_fields:
        assert f"`OARMORPH_{name.upper()}`" in readme, name
    for code in [*SERVICE_CODES, *IMAGING_CODES, *JOB_CODES]:
        assert f"`{code}`" in readme, code
