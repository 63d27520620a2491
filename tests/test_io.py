"""NIfTI/NRRD volumes and masks in and out, and the one entry point for a CT of any format."""

from __future__ import annotations

import gzip
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from imaging.ct_writer import CtSeriesInfo, write_ct_series
from imaging.errors import GeometryMismatchError, InvalidMaskError, UnsupportedFormatError
from imaging.io import read_ct, read_mask, read_volume, volume_format, write_volume
from imaging.volume import Geometry, Volume

FFS = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


def rotation(degrees_about_z: float, degrees_about_x: float) -> tuple[float, ...]:
    a, b = np.radians(degrees_about_z), np.radians(degrees_about_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return tuple((rz @ rx).ravel())


OBLIQUE = rotation(20.0, -10.0)


def make_volume(dtype=np.float32, direction=FFS, shape=(5, 6, 7), seed=0) -> Volume:
    rng = np.random.default_rng(seed)
    if dtype == np.uint8:
        array = (rng.random(shape) > 0.5).astype(np.uint8)
    else:
        array = rng.integers(-1024, 3000, size=shape).astype(dtype)
    return Volume(array, Geometry(shape, (0.7, 0.9, 2.5), (-250.0, 1000.0, -700.0), direction))


# --- NIfTI and NRRD ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ct.nii", "ct.nii.gz", "ct.nrrd", "ct.nhdr"])
@pytest.mark.parametrize("direction", [FFS, OBLIQUE], ids=["FFS", "oblique"])
@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.uint8])
def test_a_volume_keeps_its_place_and_values_through_a_file(tmp_path, name, direction, dtype):
    volume = make_volume(dtype, direction)

    write_volume(volume, tmp_path / name)
    back = read_volume(tmp_path / name)

    # NIfTI keeps its header in float32; NRRD writes doubles as text.
    tolerance = 1e-4 if name.startswith("ct.nii") else 1e-9
    assert back.geometry.shape == volume.geometry.shape
    np.testing.assert_allclose(back.geometry.spacing, volume.geometry.spacing, atol=tolerance)
    np.testing.assert_allclose(back.geometry.origin, volume.geometry.origin, atol=tolerance)
    np.testing.assert_allclose(back.geometry.direction, volume.geometry.direction, atol=1e-6)
    assert back.array.dtype == dtype
    np.testing.assert_array_equal(back.array, volume.array)
    assert back.meta["source_format"] == volume_format(name)


def _nifti_header(path: Path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw)[:348] if path.suffix == ".gz" else raw[:348]


@pytest.mark.parametrize("name", ["ct.nii", "ct.nii.gz"])
def test_nifti_files_hold_ras_coordinates(tmp_path, name):
    """Checked in the header bytes, so the LPS->RAS flip is verified independently of SimpleITK's reader."""
    volume = make_volume(direction=OBLIQUE)
    write_volume(volume, tmp_path / name)

    header = _nifti_header(tmp_path / name)
    qoffset = np.array(struct.unpack("<3f", header[268:280]))
    srow = np.array(struct.unpack("<12f", header[280:328])).reshape(3, 4)

    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    expected_affine = lps_to_ras @ volume.geometry.index_to_physical_matrix[:3]
    np.testing.assert_allclose(qoffset, lps_to_ras @ np.asarray(volume.geometry.origin), atol=1e-3)
    np.testing.assert_allclose(srow, expected_affine, atol=1e-3)


def test_nrrd_files_declare_lps_space(tmp_path):
    write_volume(make_volume(), tmp_path / "ct.nhdr")

    header = (tmp_path / "ct.nhdr").read_text(errors="replace")

    assert "space: left-posterior-superior" in header


def test_a_boolean_volume_is_written_as_uint8(tmp_path):
    volume = make_volume(np.uint8)
    write_volume(volume.with_array(volume.array.astype(bool)), tmp_path / "mask.nrrd")

    back = read_volume(tmp_path / "mask.nrrd")

    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, volume.array)


@pytest.mark.parametrize("name", ["ct.mha", "ct.png", "ct.nii.bak", "ct", "ct.gz"])
def test_unknown_extensions_are_refused(tmp_path, name):
    with pytest.raises(UnsupportedFormatError, match="NIfTI"):
        write_volume(make_volume(), tmp_path / name)
    (tmp_path / name).write_bytes(b"whatever")
    with pytest.raises(UnsupportedFormatError):
        read_volume(tmp_path / name)


def test_a_2d_image_is_refused(tmp_path):
    sitk.WriteImage(sitk.Image(4, 5, sitk.sitkUInt8), str(tmp_path / "slice.nii.gz"))

    with pytest.raises(UnsupportedFormatError, match="2-D"):
        read_volume(tmp_path / "slice.nii.gz")


def test_a_missing_file_is_a_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_volume(tmp_path / "absent.nii.gz")


# --- CT from any source -----------------------------------------------------------------------------


def test_read_ct_takes_dicom_folders_zips_file_lists_and_volume_files(tmp_path):
    ct = make_volume(np.int16)
    paths = write_ct_series(ct.with_array(ct.array.astype(np.float32)), tmp_path / "dicom", CtSeriesInfo())
    with zipfile.ZipFile(tmp_path / "ct.zip", "w") as zf:
        for path in paths:
            zf.write(path, path.name)
    write_volume(ct, tmp_path / "ct.nii.gz")

    for source in (tmp_path / "dicom", str(tmp_path / "dicom"), tmp_path / "ct.zip", paths, tmp_path / "ct.nii.gz"):
        volume = read_ct(source)
        assert volume.array.dtype == np.float32
        np.testing.assert_array_equal(volume.array, ct.array)
        np.testing.assert_allclose(volume.geometry.origin, ct.geometry.origin, atol=1e-4)
        np.testing.assert_allclose(volume.geometry.direction, ct.geometry.direction, atol=1e-6)
    assert read_ct(tmp_path / "dicom").meta["source_format"] == "dicom"
    with pytest.raises(ValueError, match="series_uid"):
        read_ct(tmp_path / "ct.nii.gz", series_uid="1.2.3")


# --- masks ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("inside_value", [1, 255, 1.0])
def test_a_mask_reads_as_zero_and_one(tmp_path, inside_value):
    mask = make_volume(np.uint8)
    dtype = np.float32 if isinstance(inside_value, float) else np.uint8
    write_volume(mask.with_array(mask.array.astype(dtype) * inside_value), tmp_path / "m.nii.gz")

    back = read_mask(tmp_path / "m.nii.gz", reference=mask.geometry)

    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, mask.array)


def test_a_label_map_is_not_a_mask(tmp_path):
    labels = make_volume(np.uint8)
    labels.array[0, 0, :3] = (1, 2, 3)
    write_volume(labels, tmp_path / "labels.nrrd")

    with pytest.raises(InvalidMaskError, match="3 different non-zero values \\(1, 2, 3\\)"):
        read_mask(tmp_path / "labels.nrrd")


def test_an_empty_mask_is_a_mask(tmp_path):
    empty = make_volume(np.uint8)
    write_volume(empty.with_array(np.zeros_like(empty.array)), tmp_path / "empty.nrrd")

    assert read_mask(tmp_path / "empty.nrrd").array.sum() == 0


def test_a_mask_off_the_reference_grid_is_refused_not_resampled(tmp_path):
    mask = make_volume(np.uint8)
    write_volume(mask, tmp_path / "m.nrrd")
    shifted = Geometry(mask.geometry.shape, mask.geometry.spacing, (-250.0, 1000.0, -697.5), FFS)
    smaller = Geometry((4, 6, 7), mask.geometry.spacing, mask.geometry.origin, FFS)

    with pytest.raises(GeometryMismatchError, match="origin") as caught:
        read_mask(tmp_path / "m.nrrd", reference=shifted)
    assert caught.value.code == "GEOMETRY_MISMATCH"
    with pytest.raises(GeometryMismatchError, match="shape"):
        read_mask(tmp_path / "m.nrrd", reference=smaller)


# --- real data --------------------------------------------------------------------------------------


@pytest.mark.shared_data
def test_real_openkbp_ct_and_mask(shared_data_dir):
    patient = shared_data_dir / "openkbp" / "train" / "pt_1"
    if not patient.is_dir():
        pytest.skip(f"{patient} is absent")

    ct = read_ct(patient / "ct.nii.gz")
    brainstem = read_mask(patient / "Brainstem.nii.gz", reference=ct.geometry)

    assert ct.array.dtype == np.float32 and ct.geometry.shape == (128, 128, 128)
    assert ct.geometry.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # slices run downwards
    assert ct.geometry.origin == (0.0, 0.0, 0.0)
    assert ct.array.min() == -1024.0
    assert 5 < brainstem.array.sum() * ct.geometry.voxel_volume_mm3 / 1000 < 60  # cc


@pytest.mark.shared_data
def test_real_full_resolution_nrrd_masks(shared_data_dir):
    folder = shared_data_dir / "masks" / "deepmind_tcia_hn" / "0522c0017"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")

    brainstem = read_mask(folder / "Brainstem.nrrd")
    lens = read_mask(folder / "Lens-Lt.nrrd", reference=brainstem.geometry)

    assert brainstem.geometry.shape[1:] == (512, 512)
    cc = brainstem.geometry.voxel_volume_mm3 / 1000
    assert brainstem.array.sum() * cc == pytest.approx(25.1, abs=0.1)  # the README's measured volumes
    assert lens.array.sum() * cc == pytest.approx(0.22, abs=0.01)
