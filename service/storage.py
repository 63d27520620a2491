"""Durable storage of a job's upload and result, under ``<data_dir>/jobs/<job id>/`` and nowhere else.

    upload/part-000001 ...   the request's files as they arrived (removed once sorted into input/)
    input/000001.dcm ...     the stored series, renamed: no name from the request is ever a path here
    result/rtstruct.dcm      the RTSTRUCT (written atomically by the worker)

Every path is built from a job id checked against its pattern and resolved under the jobs folder before it is
used. A zip is unpacked member by member into numbered files; a member named outside the archive (absolute,
``..``, a drive letter, a link) refuses the whole upload (``ZIP_UNSAFE_PATH``), as do unpacked sizes beyond the
upload limit or the packed size times ``max_zip_ratio``, whether declared by the archive or found by counting
the bytes actually unpacked (``ZIP_BOMB``). Archives inside archives are refused (``NESTED_ARCHIVE``): the
DICOM reader would unpack them in memory.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from .errors import ServiceError

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
ZIP_MAGIC = b"PK\x03\x04"
CHUNK = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")


class JobStorage:
    def __init__(self, jobs_dir: str | Path) -> None:
        self.root = Path(jobs_dir)

    def job_dir(self, job_id: str) -> Path:
        if not JOB_ID.fullmatch(job_id):
            raise ServiceError(404, "JOB_NOT_FOUND", "no such job")
        root = self.root.resolve()
        path = (root / job_id).resolve()
        if path.parent != root:  # cannot happen with the pattern above; kept as the rule
            raise ServiceError(404, "JOB_NOT_FOUND", "no such job")
        return path

    def upload_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "upload"

    def input_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "input"

    def result_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "result"

    def rtstruct_path(self, job_id: str) -> Path:
        return self.result_dir(job_id) / "rtstruct.dcm"

    def create(self, job_id: str) -> Path:
        folder = self.job_dir(job_id)
        for sub in ("upload", "input"):
            (folder / sub).mkdir(parents=True, exist_ok=False)
        return folder

    def remove_input(self, job_id: str) -> None:
        for sub in ("upload", "input"):
            shutil.rmtree(self.job_dir(job_id) / sub, ignore_errors=True)

    def remove_result(self, job_id: str) -> None:
        shutil.rmtree(self.result_dir(job_id), ignore_errors=True)

    def remove(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def has_input(self, job_id: str) -> bool:
        folder = self.input_dir(job_id)
        return folder.is_dir() and any(folder.iterdir())

    # --- sorting an upload into input/ -------------------------------------------------------------------------

    def sort_upload(self, job_id: str, max_bytes: int, max_files: int, max_ratio: float) -> int:
        """Move the uploaded parts into input/ (zips unpacked there); the number of files stored."""
        upload, target = self.upload_dir(job_id), self.input_dir(job_id)
        counter = _Counter(target, max_bytes, max_files)
        for part in sorted(upload.iterdir()):
            with part.open("rb") as fh:
                head = fh.read(4)
            if head == ZIP_MAGIC:
                unpack_zip(part, counter, max_ratio)
                part.unlink()
            elif part.stat().st_size > 0:
                counter.add_file(part)
            else:
                part.unlink()  # an empty part holds nothing
        shutil.rmtree(upload, ignore_errors=True)
        return counter.files


class _Counter:
    """Numbered files in the input folder, and the limits on how many and how large."""

    def __init__(self, target: Path, max_bytes: int, max_files: int) -> None:
        self.target = target
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.files = 0
        self.bytes = 0

    def next_path(self) -> Path:
        self.files += 1
        if self.files > self.max_files:
            raise ServiceError(413, "TOO_MANY_FILES", f"the upload holds more than {self.max_files} files")
        return self.target / f"{self.files:06d}.dcm"

    def grow(self, n: int) -> None:
        self.bytes += n
        if self.bytes > self.max_bytes:
            raise ServiceError(
                413, "ZIP_BOMB", f"the unpacked upload exceeds {self.max_bytes} bytes (max_upload_bytes)"
            )

    def add_file(self, part: Path) -> None:
        os.replace(part, self.next_path())  # same folder tree: a rename


def _unsafe_name(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    if "\x00" in name:
        return "a NUL character"
    pure = PurePosixPath(name.replace("\\", "/"))
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        return "an absolute path"
    if ".." in pure.parts:
        return "a '..' component"
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return None


def unpack_zip(path: Path, counter: _Counter, max_ratio: float) -> None:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ServiceError(400, "ZIP_INVALID", f"the zip archive cannot be read ({type(exc).__name__})") from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        for member in archive.infolist():
            problem = _unsafe_name(member)
            if problem:
                raise ServiceError(
                    400,
                    "ZIP_UNSAFE_PATH",
                    f"a zip member is named with {problem}: archives must hold relative names inside the archive",
                )
            if member.flag_bits & 0x1:
                raise ServiceError(400, "ZIP_INVALID", "the zip archive is encrypted")
        if counter.files + len(members) > counter.max_files:
            raise ServiceError(413, "TOO_MANY_FILES", f"the zip holds more than {counter.max_files} files")
        declared = sum(m.file_size for m in members)
        packed = max(sum(m.compress_size for m in members), 1)
        if counter.bytes + declared > counter.max_bytes:
            raise ServiceError(
                413,
                "ZIP_BOMB",
                f"the zip declares {declared} unpacked bytes, over {counter.max_bytes} (max_upload_bytes)",
            )
        if declared / packed > max_ratio:
            raise ServiceError(
                413,
                "ZIP_BOMB",
                f"the zip unpacks to {declared / packed:.0f} times its packed size, over {max_ratio:g} (max_zip_ratio)",
            )
        for member in members:
            limit = max(member.compress_size, 1) * max_ratio
            written = 0
            target = counter.next_path()
            try:
                with archive.open(member) as src, target.open("wb") as dst:
                    first = True
                    while chunk := src.read(CHUNK):
                        if first and chunk[:4] == ZIP_MAGIC:
                            raise ServiceError(
                                400, "NESTED_ARCHIVE", "the zip holds another zip: send one archive of DICOM files"
                            )
                        first = False
                        written += len(chunk)
                        counter.grow(len(chunk))
                        if written > max(limit, CHUNK):
                            raise ServiceError(
                                413,
                                "ZIP_BOMB",
                                f"a zip member unpacks to more than {max_ratio:g} times its packed size",
                            )
                        dst.write(chunk)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError) as exc:
                raise ServiceError(
                    400, "ZIP_INVALID", f"a zip member cannot be unpacked ({type(exc).__name__})"
                ) from None
            if written == 0:
                target.unlink()
                counter.files -= 1
