"""Reading DICOM CT series: geometry, HU, sources, compression, and every refusal a user can meet."""

from __future__ import annotations

import io
import logging
import random
import re
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import get_encoder
from pydicom.uid import (
    MPEG2MPML,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    RTStructureSetStorage,
)

from imaging.ct_writer import CtSeriesInfo, write_ct_series
from imaging.dicom_ct import (
    CT_IMAGE_STORAGE,
    list_ct_series,
    read_ct_series,
    supported_transfer_syntaxes,
)
from imaging.errors import (
    DuplicateSlicePositionError,
    GantryTiltError,
    InconsistentMatrixError,
    InconsistentOrientationError,
    InconsistentPixelSpacingError,
    IrregularSliceSpacingError,
    MissingAttributeError,
    MultipleSeriesError,
    NoCtImagesError,
    SeriesNotFoundError,
    UndecodablePixelDataError,
)
from imaging.uids import new_uid
from imaging.volume import Geometry, Volume

PYDICOM_TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"  # never get_testdata_file: it downloads

HFS = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
FFS = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
HFP = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
SAGITTAL = (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)  # i = +y, j = -z, k = -x (right-handed)


def make_ct(shape=(5, 6, 7), spacing=(0.7, 0.9, 2.5), origin=(-250.0, 1000.0, -700.0), direction=HFS, seed=0) -> Volume:
    """Integer HU (exactly representable in int16 files) on an arbitrary grid."""
    hu = np.random.default_rng(seed).integers(-1024, 3000, size=shape).astype(np.float32)
    return Volume(hu, Geometry(shape, spacing, origin, direction))


def write_series(volume: Volume, folder: Path, **info) -> list[Path]:
    return write_ct_series(volume, folder, CtSeriesInfo(**info))


def edit(path: Path, **attributes) -> None:
    ds = pydicom.dcmread(path)
    for keyword, value in attributes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)


def assert_same_grid(found: Geometry, expected: Geometry) -> None:
    assert found.shape == expected.shape
    np.testing.assert_allclose(found.spacing, expected.spacing, rtol=0, atol=1e-9)
    np.testing.assert_allclose(found.origin, expected.origin, rtol=0, atol=1e-9)
    np.testing.assert_allclose(found.direction, expected.direction, rtol=0, atol=1e-12)


# --- geometry and values --------------------------------------------------------------------------


@pytest.mark.parametrize("direction", [HFS, FFS, HFP, SAGITTAL], ids=["HFS", "FFS", "HFP", "sagittal"])
def test_grid_and_hounsfield_units_read_back_exactly(tmp_path, direction):
    ct = make_ct(direction=direction)
    paths = write_series(ct, tmp_path)

    volume = read_ct_series(tmp_path)

    assert_same_grid(volume.geometry, ct.geometry)
    assert volume.array.dtype == np.float32
    np.testing.assert_array_equal(volume.array, ct.array)
    assert volume.meta["sop_instance_uids"] == [pydicom.dcmread(p).SOPInstanceUID for p in paths]
    k_axis = np.asarray(direction).reshape(3, 3)[:, 2]
    expected_positions = [float(np.asarray(ct.geometry.origin) @ k_axis + 2.5 * k) for k in range(5)]
    np.testing.assert_allclose(volume.meta["slice_positions"], expected_positions, atol=1e-9)


def test_slices_running_against_the_normal_are_restacked_along_it(tmp_path):
    # k along -z with rows/columns along +x/+y: a left-handed grid. DICOM stacks along row x column = +z,
    # so the reader's k runs the other way, over the same voxels in patient space.
    ct = make_ct(direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0))
    write_series(ct, tmp_path)

    volume = read_ct_series(tmp_path)

    assert volume.geometry.direction == HFS
    np.testing.assert_allclose(volume.geometry.origin, (-250.0, 1000.0, -710.0))
    np.testing.assert_array_equal(volume.array, ct.array[::-1])


def test_meta_carries_uids_and_the_attributes_an_rtstruct_copies(tmp_path):
    ct = make_ct()
    write_series(
        ct,
        tmp_path,
        patient_name="Doe^Jane",
        patient_id="ID-42",
        patient_birth_date="19600101",
        patient_sex="F",
        study_uid="1.2.3.4",
        series_uid="1.2.3.4.5",
        frame_of_reference_uid="1.2.3.4.6",
        patient_position="FFS",
        extra={"AccessionNumber": "ACC1", "ReferringPhysicianName": "Ref^Doc"},
    )

    meta = read_ct_series(tmp_path).meta

    assert meta["sop_class_uid"] == CT_IMAGE_STORAGE
    assert (meta["study_instance_uid"], meta["series_instance_uid"], meta["frame_of_reference_uid"]) == (
        "1.2.3.4",
        "1.2.3.4.5",
        "1.2.3.4.6",
    )
    assert meta["patient_position"] == "FFS"
    assert meta["transfer_syntaxes"] == [ExplicitVRLittleEndian]
    assert meta["dicom"] == {
        "SpecificCharacterSet": "ISO_IR 100",
        "PatientName": "Doe^Jane",
        "PatientID": "ID-42",
        "PatientBirthDate": "19600101",
        "PatientSex": "F",
        "StudyDate": "20260101",
        "StudyTime": "120000",
        "StudyID": "1",
        "AccessionNumber": "ACC1",
        "ReferringPhysicianName": "Ref^Doc",
        "StudyDescription": "Head and neck planning CT",
    }
    assert all(isinstance(v, str) for v in meta["dicom"].values())


def test_per_slice_rescale_slope_and_intercept_are_applied(tmp_path):
    ct = make_ct(shape=(3, 4, 5))
    paths = write_series(ct, tmp_path)
    rescales = [(1.0, -1024.0), (0.5, 0.0), (2.5, -1000.0)]
    stored = np.random.default_rng(1).integers(0, 3000, size=(3, 4, 5)).astype(np.int16)
    for path, (slope, intercept), values in zip(paths, rescales, stored, strict=True):
        edit(path, RescaleSlope=f"{slope:g}", RescaleIntercept=f"{intercept:g}", PixelData=values.tobytes())

    volume = read_ct_series(tmp_path)

    expected = np.stack(
        [values * slope + intercept for values, (slope, intercept) in zip(stored, rescales, strict=True)]
    )
    np.testing.assert_array_equal(volume.array, expected.astype(np.float32))


def test_a_single_slice_takes_its_depth_from_slice_thickness(tmp_path):
    ct = make_ct(shape=(1, 4, 5))
    write_series(ct, tmp_path, slice_thickness=1.5)

    volume = read_ct_series(tmp_path)

    assert volume.geometry.spacing == (0.7, 0.9, 1.5)
    np.testing.assert_array_equal(volume.array, ct.array)


def test_a_single_slice_without_thickness_is_refused(tmp_path):
    (path,) = write_series(make_ct(shape=(1, 4, 5)), tmp_path)
    edit(path, SliceThickness=None)

    with pytest.raises(MissingAttributeError, match="SliceThickness"):
        read_ct_series(tmp_path)


# --- sources --------------------------------------------------------------------------------------


def test_file_order_does_not_matter(tmp_path):
    ct = make_ct(shape=(8, 4, 5))
    paths = write_series(ct, tmp_path)
    shuffled = list(paths)
    random.Random(3).shuffle(shuffled)
    for i, path in enumerate(shuffled):  # names no longer follow the slice order either
        path.rename(tmp_path / f"x{i:02d}.dcm")

    from_folder = read_ct_series(tmp_path)
    from_list = read_ct_series(sorted(tmp_path.iterdir(), reverse=True))

    np.testing.assert_array_equal(from_folder.array, ct.array)
    np.testing.assert_array_equal(from_list.array, ct.array)
    assert from_folder.meta["sop_instance_uids"] == from_list.meta["sop_instance_uids"]


def test_a_zip_archive_is_read_in_memory(tmp_path):
    ct = make_ct()
    paths = write_series(ct, tmp_path / "series")
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in paths:
            zf.write(path, f"PATIENT/STUDY/SERIES/{path.name}")
        zf.writestr("README.txt", "exported by a PACS")
        zf.writestr("__MACOSX/._CT_0001.dcm", b"\x00\x05\x16\x07" + bytes(60))

    volume = read_ct_series(archive)

    assert_same_grid(volume.geometry, ct.geometry)
    np.testing.assert_array_equal(volume.array, ct.array)
    assert volume.meta["ignored_files"]["not_dicom"] == 2
    np.testing.assert_array_equal(read_ct_series([archive.read_bytes()]).array, ct.array)  # an uploaded zip


def test_uploaded_bytes_and_file_objects_are_read(tmp_path):
    ct = make_ct()
    paths = write_series(ct, tmp_path)
    uploads: list = [p.read_bytes() for p in paths[::2]] + [io.BytesIO(p.read_bytes()) for p in paths[1::2]]

    volume = read_ct_series(uploads)

    assert_same_grid(volume.geometry, ct.geometry)
    np.testing.assert_array_equal(volume.array, ct.array)


def test_a_dataset_written_without_preamble_or_file_meta_is_read(tmp_path):
    ct = make_ct(shape=(3, 4, 5))
    paths = write_series(ct, tmp_path)
    ds = pydicom.dcmread(paths[1])
    ds.preamble = None
    ds.file_meta = FileMetaDataset()
    bare = io.BytesIO()
    pydicom.dcmwrite(bare, ds, enforce_file_format=False, implicit_vr=True, little_endian=True)
    paths[1].write_bytes(bare.getvalue())

    volume = read_ct_series(tmp_path)

    np.testing.assert_array_equal(volume.array, ct.array)
    assert volume.meta["transfer_syntaxes"] == sorted([ExplicitVRLittleEndian, ImplicitVRLittleEndian])


def test_non_dicom_files_and_other_dicom_objects_are_skipped_and_counted(tmp_path):
    ct = make_ct()
    write_series(ct, tmp_path / "CT")
    (tmp_path / "README").write_text("not an image")
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(200))
    (tmp_path / "empty.dcm").write_bytes(b"")
    (tmp_path / "fake.dcm").write_bytes(b"\x08\x00\x16\x00garbage that only starts like a dataset")
    write_structure_set(tmp_path / "RS.dcm")
    shutil.copy(PYDICOM_TEST_FILES / "dicomdirtests" / "DICOMDIR", tmp_path / "DICOMDIR")

    volume = read_ct_series(tmp_path)

    np.testing.assert_array_equal(volume.array, ct.array)
    assert volume.meta["ignored_files"] == {
        "not_dicom": 4,
        "other_sop_classes": {"Media Storage Directory Storage": 1, "RT Structure Set Storage": 1},
        "localizers": 0,
        "other_ct_series": 0,
        "repeated_instances": 0,
    }


def test_a_localizer_in_the_series_is_left_out(tmp_path):
    ct = make_ct()
    paths = write_series(ct, tmp_path)
    scout = tmp_path / "scout.dcm"
    shutil.copy(paths[0], scout)
    edit(
        scout,
        SOPInstanceUID=new_uid(),
        ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"],
        ImageOrientationPatient=[1, 0, 0, 0, 0, -1],
    )

    volume = read_ct_series(tmp_path)

    np.testing.assert_array_equal(volume.array, ct.array)
    assert volume.meta["ignored_files"]["localizers"] == 1


def test_only_other_objects_is_no_ct(tmp_path):
    write_structure_set(tmp_path / "RS.dcm")
    (tmp_path / "notes.txt").write_text("hello")

    with pytest.raises(NoCtImagesError, match=r"1 non-DICOM file.*1 RT Structure Set Storage") as caught:
        read_ct_series(tmp_path)
    assert caught.value.code == "NO_CT_IMAGES"


def write_structure_set(path: Path) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTStructureSetStorage
    meta.MediaStorageSOPInstanceUID = new_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = new_uid()
    ds.StructureSetLabel = "OARs"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


# --- several series -------------------------------------------------------------------------------


def test_two_series_must_be_chosen_between(tmp_path):
    first = make_ct(seed=1)
    second = make_ct(shape=(3, 6, 7), seed=2)
    write_series(first, tmp_path / "a", series_uid="1.2.3.1", series_description="CT 2.5mm", series_number=2)
    write_series(second, tmp_path / "b", series_uid="1.2.3.2", series_description="CT bone", series_number=3)

    with pytest.raises(MultipleSeriesError) as caught:
        read_ct_series(tmp_path)
    message = caught.value.message
    assert "1.2.3.1 'CT 2.5mm' (5 slices)" in message
    assert "1.2.3.2 'CT bone' (3 slices)" in message

    summaries = list_ct_series(tmp_path)
    assert [(s.series_instance_uid, s.series_description, s.number_of_slices) for s in summaries] == [
        ("1.2.3.1", "CT 2.5mm", 5),
        ("1.2.3.2", "CT bone", 3),
    ]
    assert summaries[0].modality == "CT" and summaries[0].series_number == 2

    chosen = read_ct_series(tmp_path, series_uid="1.2.3.2")
    np.testing.assert_array_equal(chosen.array, second.array)
    assert chosen.meta["ignored_files"]["other_ct_series"] == 5

    with pytest.raises(SeriesNotFoundError, match=re.escape("1.2.3.9")):
        read_ct_series(tmp_path, series_uid="1.2.3.9")


# --- refusals -------------------------------------------------------------------------------------


def test_a_missing_slice_is_reported_as_a_gap(tmp_path):
    paths = write_series(make_ct(shape=(6, 4, 5), spacing=(1.0, 1.0, 3.0), origin=(0.0, 0.0, -30.0)), tmp_path)
    paths[2].unlink()  # the slice at z = -24

    with pytest.raises(IrregularSliceSpacingError) as caught:
        read_ct_series(tmp_path)

    assert caught.value.message == (
        "slice gap of 6.0 mm between z=-27.0 and z=-21.0 where the spacing is 3.0 mm elsewhere: 1 slice missing?"
    )
    assert caught.value.details["usual_spacing_mm"] == pytest.approx(3.0)


def test_missing_slices_can_be_interpolated_on_request(tmp_path):
    volume = make_ct(shape=(7, 4, 5), spacing=(1.0, 1.0, 3.0), origin=(0.0, 0.0, -30.0))
    paths = write_series(volume, tmp_path)
    paths[2].unlink()
    paths[3].unlink()

    filled = read_ct_series(tmp_path, fill_gaps=True)

    assert filled.geometry.shape == (7, 4, 5) and filled.geometry.spacing[2] == pytest.approx(3.0)
    assert filled.meta["interpolated_slices"] == [2, 3]
    assert filled.meta["sop_instance_uids"][2] == "" and filled.meta["sop_instance_uids"][4] != ""
    assert "2 slices missing" in filled.meta["warnings"][0] and "interpolated" in filled.meta["warnings"][0]
    np.testing.assert_allclose(filled.array[[0, 1, 4, 5, 6]], volume.array[[0, 1, 4, 5, 6]])
    np.testing.assert_allclose(filled.array[2], volume.array[1] + (volume.array[4] - volume.array[1]) / 3, atol=1e-3)


def test_spacing_off_the_grid_is_refused_even_when_gaps_may_be_filled(tmp_path):
    paths = write_series(make_ct(shape=(5, 4, 5), spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0)), tmp_path)
    edit(paths[4], ImagePositionPatient=[0, 0, 9])
    with pytest.raises(IrregularSliceSpacingError):
        read_ct_series(tmp_path, fill_gaps=True)


def test_irregular_spacing_that_is_not_a_gap_is_reported(tmp_path):
    paths = write_series(make_ct(shape=(5, 4, 5), spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0)), tmp_path)
    edit(paths[4], ImagePositionPatient=[0, 0, 9])

    with pytest.raises(IrregularSliceSpacingError, match=re.escape("slice spacing of 3.0 mm between z=6.0 and z=9.0")):
        read_ct_series(tmp_path)


def test_a_tilted_gantry_is_refused_with_its_angle(tmp_path):
    spacing_z = 2.5
    paths = write_series(make_ct(shape=(6, 4, 5), spacing=(1.0, 1.0, spacing_z), origin=(0.0, 0.0, 0.0)), tmp_path)
    tilt = np.radians(15.0)
    for k, path in enumerate(paths):
        y = k * spacing_z * np.tan(tilt)  # each slice shifted a little further posterior
        edit(path, ImagePositionPatient=[0, f"{y:.6f}", f"{k * spacing_z:g}"])

    with pytest.raises(GantryTiltError, match=re.escape("gantry tilt of 15.00 degrees")) as caught:
        read_ct_series(tmp_path)
    assert caught.value.details["tilt_degrees"] == pytest.approx(15.0, abs=1e-3)


def test_mixed_matrix_sizes_are_refused(tmp_path):
    paths = write_series(make_ct(shape=(4, 4, 5)), tmp_path)
    edit(paths[2], Rows=8, Columns=8, PixelData=np.zeros((8, 8), np.int16).tobytes())

    with pytest.raises(InconsistentMatrixError, match="3 slice\\(s\\) of 4x5, 1 slice\\(s\\) of 8x8"):
        read_ct_series(tmp_path)


def test_mixed_orientations_are_refused(tmp_path):
    paths = write_series(make_ct(shape=(4, 4, 5)), tmp_path)
    edit(paths[1], ImageOrientationPatient=[1, 0, 0, 0, 0.9998477, -0.0174524])

    with pytest.raises(InconsistentOrientationError):
        read_ct_series(tmp_path)


def test_mixed_pixel_spacings_are_refused(tmp_path):
    paths = write_series(make_ct(shape=(4, 4, 5)), tmp_path)
    edit(paths[1], PixelSpacing=[0.9, 0.8])

    with pytest.raises(InconsistentPixelSpacingError):
        read_ct_series(tmp_path)


def test_two_images_at_one_position_are_refused(tmp_path):
    paths = write_series(make_ct(shape=(4, 4, 5)), tmp_path)
    twin = tmp_path / "twin.dcm"
    shutil.copy(paths[1], twin)
    edit(twin, SOPInstanceUID=new_uid())

    with pytest.raises(DuplicateSlicePositionError, match="share a position"):
        read_ct_series(tmp_path)


def test_the_same_instance_twice_is_read_once(tmp_path):
    ct = make_ct(shape=(4, 4, 5))
    paths = write_series(ct, tmp_path / "a")
    (tmp_path / "copy").mkdir()
    shutil.copy(paths[1], tmp_path / "copy" / "again.dcm")

    volume = read_ct_series(tmp_path)

    np.testing.assert_array_equal(volume.array, ct.array)
    assert volume.meta["ignored_files"]["repeated_instances"] == 1


@pytest.mark.parametrize("keyword", ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"])
def test_a_missing_geometry_attribute_is_named(tmp_path, keyword):
    paths = write_series(make_ct(shape=(3, 4, 5)), tmp_path)
    edit(paths[1], **{keyword: None})

    with pytest.raises(MissingAttributeError, match=keyword) as caught:
        read_ct_series(tmp_path)
    assert caught.value.details == {"attribute": keyword, "file": str(paths[1])}


# --- compressed pixel data ------------------------------------------------------------------------


def _compressed_copy(paths: list[Path], folder: Path, syntax) -> list[Path]:
    folder.mkdir()
    out = []
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.compress(syntax)
        ds.save_as(folder / path.name)
        out.append(folder / path.name)
    return out


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless], ids=lambda s: s.name)
def test_lossless_compressed_series_read_identical_values(tmp_path, syntax):
    if not get_encoder(syntax).is_available:
        pytest.skip(f"no encoder for {syntax.name} installed (needed to make the test files)")
    ct = make_ct(shape=(3, 36, 40))  # JPEG 2000 encoding needs at least 32 pixels a side
    paths = write_series(ct, tmp_path / "raw")
    _compressed_copy(paths, tmp_path / "compressed", syntax)

    raw = read_ct_series(tmp_path / "raw")
    compressed = read_ct_series(tmp_path / "compressed")

    np.testing.assert_array_equal(compressed.array, raw.array)
    assert compressed.geometry == raw.geometry
    assert compressed.meta["transfer_syntaxes"] == [syntax]


def test_a_damaged_compressed_slice_is_refused_not_skipped(tmp_path):
    paths = write_series(make_ct(shape=(3, 36, 40)), tmp_path / "raw")
    compressed = _compressed_copy(paths, tmp_path / "j2k", JPEG2000Lossless)
    ds = pydicom.dcmread(compressed[1])
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([bytes(len(frame))])  # the codestream zeroed
    ds.save_as(compressed[1])

    with pytest.raises(UndecodablePixelDataError) as caught:
        read_ct_series(tmp_path / "j2k")

    assert str(compressed[1]) in caught.value.message
    assert JPEG2000Lossless in caught.value.message and "JPEG 2000" in caught.value.message
    assert caught.value.details["transfer_syntax"] == JPEG2000Lossless


def test_a_truncated_uncompressed_slice_is_refused_not_skipped(tmp_path):
    paths = write_series(make_ct(shape=(3, 4, 5)), tmp_path)
    paths[1].write_bytes(paths[1].read_bytes()[:-10])

    with pytest.raises(UndecodablePixelDataError, match=r"CT_0002\.dcm .*less than expected"):
        read_ct_series(tmp_path)


def test_a_transfer_syntax_pydicom_cannot_decode_is_named(tmp_path):
    paths = write_series(make_ct(shape=(2, 4, 5)), tmp_path)
    ds = pydicom.dcmread(paths[0])
    ds.file_meta.TransferSyntaxUID = MPEG2MPML  # a video syntax: no pixel decoder exists for it
    ds.PixelData = encapsulate([bytes(40)])
    ds.save_as(paths[0])

    with pytest.raises(UndecodablePixelDataError, match=r"MPEG2 .*no pixel decoder") as caught:
        read_ct_series(tmp_path)
    assert caught.value.details["transfer_syntax"] == MPEG2MPML


def test_a_missing_decoder_plugin_is_named_with_what_to_install(tmp_path, monkeypatch):
    paths = write_series(make_ct(shape=(2, 36, 40)), tmp_path / "raw")
    _compressed_copy(paths, tmp_path / "j2k", JPEG2000Lossless)

    class Unavailable:
        is_available = False
        missing_dependencies = ("pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-openjpeg>=2.0",)

    monkeypatch.setattr("imaging.dicom_ct.get_decoder", lambda uid: Unavailable())

    with pytest.raises(UndecodablePixelDataError, match="install pylibjpeg with pylibjpeg-openjpeg"):
        read_ct_series(tmp_path / "j2k")


def test_supported_transfer_syntaxes_are_asked_of_pydicom():
    support = supported_transfer_syntaxes()

    for syntax in (ImplicitVRLittleEndian, ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless, JPEGLSLossless):
        assert support[syntax], syntax.name
    assert support["1.2.840.10008.1.2.4.100"] is False  # MPEG-2 video: never a CT


# --- privacy --------------------------------------------------------------------------------------


def test_pydicom_warnings_and_log_records_are_withheld_while_reading(tmp_path, caplog):
    # pydicom's validation messages may quote element values; reading must let none of them out.
    secret = "Secretname^" + "X" * 70  # too long for PN: pydicom warns and logs when it parses it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_series(make_ct(shape=(2, 4, 5)), tmp_path, patient_name=secret)
    caplog.clear()

    with warnings.catch_warnings(record=True) as escaped, caplog.at_level(logging.DEBUG):
        warnings.simplefilter("always")
        volume = read_ct_series(tmp_path)

    assert [str(w.message) for w in escaped] == []
    assert caplog.records == []
    assert volume.meta["reader_warnings"] >= 1
    assert volume.meta["dicom"]["PatientName"] == secret


# --- pydicom's bundled CT files -------------------------------------------------------------------

needs_pydicom_files = pytest.mark.skipif(
    not PYDICOM_TEST_FILES.is_dir(), reason=f"pydicom's test files are not installed at {PYDICOM_TEST_FILES}"
)


@needs_pydicom_files
def test_pydicom_ct_small_single_slice():
    volume = read_ct_series(PYDICOM_TEST_FILES / "CT_small.dcm")

    assert volume.geometry.shape == (1, 128, 128)
    assert volume.geometry.spacing == (0.661468, 0.661468, 5.0)
    assert volume.geometry.origin == (-158.135803, -179.035797, -75.699997)
    assert volume.meta["sop_instance_uids"] == [pydicom.dcmread(PYDICOM_TEST_FILES / "CT_small.dcm").SOPInstanceUID]
    assert -1100 < volume.array.min() < volume.array.max() < 3000


@needs_pydicom_files
def test_pydicom_jpeg2000_ct():
    volume = read_ct_series(PYDICOM_TEST_FILES / "693_J2KI.dcm")

    assert volume.geometry.shape == (1, 512, 512)
    assert volume.geometry.spacing == (0.478516, 0.478516, 5.0)  # SliceThickness, not SpacingBetweenSlices (20)
    assert volume.meta["transfer_syntaxes"] == ["1.2.840.10008.1.2.4.91"]
    assert -100 < np.median(volume.array[0, 200:300, 200:300]) < 100  # brain tissue
    assert volume.array[0, 0, 0] < -1500  # padding outside the reconstruction circle


@needs_pydicom_files
def test_pydicom_jpeg2000_with_pixel_representation_mismatch():
    volume = read_ct_series(PYDICOM_TEST_FILES / "J2K_pixelrep_mismatch.dcm")

    assert volume.geometry.shape == (1, 512, 512)
    np.testing.assert_allclose(volume.geometry.direction_matrix[:, 1], (0.0, 0.9272, -0.3746), atol=1e-4)
    assert -100 < np.median(volume.array[0, 200:300, 200:300]) < 100  # signed values decoded as signed
    assert volume.array.min() >= -2048 and volume.array.max() < 4000


@needs_pydicom_files
def test_pydicom_four_slice_series_has_161_slices_missing():
    folder = PYDICOM_TEST_FILES / "dicomdirtests" / "77654033" / "CT2"

    with pytest.raises(IrregularSliceSpacingError) as caught:
        read_ct_series(folder)
    assert caught.value.message == (
        "slice gap of 202.5 mm between z=-99.48 and z=103.02 where the spacing is 1.25 mm elsewhere: "
        "161 slices missing?"
    )

    filled = read_ct_series(folder, fill_gaps=True)
    assert filled.geometry.shape == (165, 16, 16) and len(filled.meta["interpolated_slices"]) == 161

    contiguous = read_ct_series(sorted(folder.iterdir())[1:])  # the three neighbouring slices
    assert contiguous.geometry.shape == (3, 16, 16)
    np.testing.assert_allclose(contiguous.geometry.spacing, (0.488281, 0.488281, 1.25), atol=1e-6)
    np.testing.assert_allclose(contiguous.geometry.origin, (-125.0, -128.100006, 103.019997))


# --- the real scanner series ----------------------------------------------------------------------


@pytest.mark.shared_data
def test_real_pycerr_head_and_neck_series(shared_data_dir):
    folder = shared_data_dir / "dicom" / "pycerr_head_neck_ct"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")

    volume = read_ct_series(folder)

    geometry = volume.geometry
    assert geometry.shape == (90, 511, 511)
    assert geometry.spacing == (1.0, 1.0, 3.0)
    assert geometry.direction == HFS
    assert geometry.origin == (1.0, -511.0, -267.0)  # x/y as written; slices sorted upwards, vertex last
    assert volume.meta["slice_positions"] == [float(z) for z in range(-267, 1, 3)]
    assert volume.meta["patient_position"] == ""
    assert volume.meta["transfer_syntaxes"] == [ImplicitVRLittleEndian]
    assert volume.meta["ignored_files"]["not_dicom"] == 1  # the licence text
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in folder.glob("IMG_*.dcm")]
    by_height = sorted(headers, key=lambda ds: float(ds.ImagePositionPatient[2]))
    assert volume.meta["sop_instance_uids"] == [ds.SOPInstanceUID for ds in by_height]
    hu = volume.array
    assert hu.min() == -1024.0 and np.median(hu[-1, :40, :]) < -990  # air in front of the vertex
    assert -50 < np.median(hu[45, 250:260, 250:260]) < 100  # soft tissue in the neck
    assert 700 < np.percentile(hu, 99.9) < 2000  # bone
    assert 0.001 < np.mean(hu > 700) < 0.05
    assert hu.max() > 3000  # values above BitsStored = 12 bits are real (dental metal), not masked away
