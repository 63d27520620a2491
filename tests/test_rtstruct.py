"""Masks to RTSTRUCT and back: exact on synthetic shapes and real expert masks, valid for DICOM tools.

Independent checks: dicom3tools' ``dciodvfy`` validates the IOD, plastimatch rasterises our contours itself,
rt-utils opens the file. External tools and the shared data are optional (skipped with a reason when absent).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from imaging.contours import even_odd_fill_window, mask_slice_to_polygons, polygons_to_mask_slice
from imaging.ct_writer import CtSeriesInfo, write_ct_series
from imaging.errors import GeometryMismatchError, MissingAttributeError, RtStructError, RtStructReferenceError
from imaging.rtstruct import (
    DEFAULT_COLORS,
    PATIENT_STUDY_KEYWORDS,
    CtReference,
    RoiSpec,
    read_rtstruct,
    write_rtstruct,
)
from imaging.uids import new_uid
from imaging.volume import Geometry, Volume

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"

CREATED = dt.datetime(2026, 2, 3, 4, 5, 6)


# --- helpers --------------------------------------------------------------------------------------------


def ct_volume_from_series(paths: list[Path], array: np.ndarray, geometry: Geometry) -> Volume:
    """The CT Volume the DICOM reader would return (meta built from the written headers, slices in order)."""
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    first = headers[0]
    meta = {
        "sop_instance_uids": [h.SOPInstanceUID for h in headers],
        "sop_class_uid": first.SOPClassUID,
        "study_instance_uid": first.StudyInstanceUID,
        "series_instance_uid": first.SeriesInstanceUID,
        "frame_of_reference_uid": first.FrameOfReferenceUID,
        "dicom": {key: str(first.get(key, "")) for key in ("SpecificCharacterSet", *PATIENT_STUDY_KEYWORDS)},
    }
    return Volume(array, geometry, meta)


def write_ct(folder: Path, geometry: Geometry, hu: np.ndarray | None = None, seed: str = "ct") -> CtReference:
    """A CT series of ``geometry`` written with ``ct_writer`` into ``folder``; its ``CtReference``."""
    array = np.full(geometry.shape, -1000, np.int16) if hu is None else hu
    info = CtSeriesInfo(uid_seed=seed, patient_name="Test^Rtstruct", patient_id="RS-0001", study_date="20260202")
    paths = write_ct_series(Volume(array, geometry), folder, info)
    return CtReference.from_volume(ct_volume_from_series(paths, array, geometry))


def fake_ct(geometry: Geometry, seed: str = "fake") -> CtReference:
    """A ``CtReference`` without files (the writer and reader need no pixels)."""
    return CtReference(
        geometry,
        tuple(new_uid(seed, "sop", k) for k in range(geometry.shape[0])),
        CT_IMAGE_STORAGE,
        new_uid(seed, "study"),
        new_uid(seed, "series"),
        new_uid(seed, "for"),
        {"PatientName": "Fake^Ct", "PatientID": "FAKE", "StudyDate": "20260101", "StudyTime": "1200", "StudyID": "1"},
    )


def rotation(axis: tuple[float, float, float], degrees: float) -> tuple[float, ...]:
    """Row-major rotation matrix (Rodrigues), an exactly orthonormal direction."""
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    t = np.radians(degrees)
    cross = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    m = np.eye(3) + np.sin(t) * cross + (1 - np.cos(t)) * cross @ cross
    return tuple(m.ravel())


def physical_points(geometry: Geometry) -> np.ndarray:
    kk, jj, ii = np.indices(geometry.shape)
    return geometry.index_to_physical(np.stack([ii, jj, kk], axis=-1).astype(float))


def synthetic_masks(geometry: Geometry, seed: int = 0) -> dict[RoiSpec, np.ndarray]:
    """Shapes that stress the outline: sphere, torus (holes), islands and saddles, 1-voxel structures, noise."""
    nk, nj, ni = geometry.shape
    p = physical_points(geometry)
    centre = geometry.index_to_physical(np.array([ni / 2, nj / 2, nk / 2]))
    d = p - centre
    sphere = np.linalg.norm(d, axis=-1) <= 9.0
    axis_k = geometry.direction_matrix[:, 2]  # torus around the slice normal: rings with holes in every slice
    along = d @ axis_k
    radial = np.linalg.norm(d - along[..., None] * axis_k, axis=-1)
    torus = (radial - 10.0) ** 2 + along**2 <= 4.5**2
    islands = np.zeros(geometry.shape, bool)
    islands[2, 3, 4] = True  # single voxel
    islands[3, 5:8, 5:8] = True  # a square...
    islands[3, 8, 8] = True  # ...touching a voxel at its corner (saddle)
    islands[3, 9, 9] = True
    islands[3, 2, 10] = islands[3, 3, 11] = islands[3, 2, 12] = True  # a zig-zag of diagonal neighbours
    islands[4, 10:14, 2:6] = True
    islands[4, 11:13, 3:5] = False  # a hole
    islands[4, 12, 3] = True  # an island inside the hole
    thin = np.zeros(geometry.shape, bool)
    thin[1 : nk - 1, nj // 3, ni // 3] = True  # a 1-voxel line across slices
    thin[nk // 2, 2 : nj - 2, ni - 3] = True  # a 1-voxel line in a slice
    thin[nk - 2, 1:4, 1 : ni - 1] = True  # a 3-voxel-wide strip on one slice
    rng = np.random.default_rng(seed)
    noise = rng.random(geometry.shape) < 0.45  # dense random voxels: saddles and holes everywhere
    noise[:, :, : ni // 2] = False
    return {
        RoiSpec("Sphere", (255, 0, 0)): sphere.astype(np.uint8),
        RoiSpec("Torus", (0, 255, 0), "AVOIDANCE", "a ring in every slice"): torus.astype(np.uint8),
        RoiSpec("Islands", (0, 0, 255)): islands,  # bool masks are accepted
        RoiSpec("Thin", (255, 255, 0)): thin.astype(np.uint8),
        RoiSpec("Noise", (255, 0, 255), "CONTROL"): noise.astype(np.uint8),
        RoiSpec("Empty", (0, 255, 255)): np.zeros(geometry.shape, np.uint8),
    }


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a) != 0, np.asarray(b) != 0
    if np.array_equal(a, b):
        return 1.0
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def contour_data_texts(contour: Dataset) -> list[bytes]:
    """ContourData as written (the numbers' texts), read from the raw element of a file read with pydicom."""
    element = contour.get_item(0x30060050)
    assert isinstance(element, RawDataElement)
    return element.value.rstrip(b" ").split(b"\\")


def shoelace(points_ij: np.ndarray) -> float:
    x, y = points_ij[:, 0], points_ij[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def point_in_polygon(point: np.ndarray, polygon: np.ndarray) -> bool:
    xs, ys = polygon[:, 0], polygon[:, 1]
    xn, yn = np.roll(xs, -1), np.roll(ys, -1)
    crosses = (ys > point[1]) != (yn > point[1])
    x_at = xs + (point[1] - ys) * (xn - xs) / np.where(yn != ys, yn - ys, 1.0)
    return bool(np.count_nonzero(crosses & (point[0] < x_at)) % 2)


def polygon_volume_voxels(ds: Dataset, geometry: Geometry) -> dict[str, tuple[float, int, float]]:
    """Per ROI: volume from the polygon areas (in voxels), number of contours, total perimeter (in voxel edges).

    A contour inside an odd number of other contours of its slice is a hole and counts negative (even-odd).
    """
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    result = {}
    for roi_contour in ds.ROIContourSequence:
        by_slice: dict[int, list[np.ndarray]] = {}
        contours = list(roi_contour.get("ContourSequence", []))
        for contour in contours:
            points = np.array(contour_data_texts(contour), float).reshape(-1, 3)
            ijk = geometry.physical_to_index(points)
            by_slice.setdefault(round(float(ijk[0, 2])), []).append(ijk[:, :2])
        area = perimeter = 0.0
        for polygons in by_slice.values():
            for n, polygon in enumerate(polygons):
                depth = sum(point_in_polygon(polygon[0], q) for m, q in enumerate(polygons) if m != n)
                area += (-1) ** depth * abs(shoelace(polygon))
                perimeter += float(np.linalg.norm(np.roll(polygon, -1, axis=0) - polygon, axis=1).sum())
        result[names[int(roi_contour.ReferencedROINumber)]] = (area, len(contours), perimeter)
    return result


# --- contours: mask slice <-> polygons -------------------------------------------------------------------


def test_single_voxel_gives_a_diamond_around_its_centre():
    mask = np.zeros((3, 4), bool)
    mask[1, 2] = True
    (polygon,) = mask_slice_to_polygons(mask)
    assert sorted(map(tuple, polygon)) == sorted([(1.5, 1.0), (2.5, 1.0), (2.0, 0.5), (2.0, 1.5)])


def test_outline_runs_between_voxel_centres_and_drops_collinear_points():
    mask = np.zeros((8, 9), bool)
    mask[2:6, 1:7] = True  # 4 rows x 6 columns
    (polygon,) = mask_slice_to_polygons(mask)
    assert len(polygon) == 8  # an octagon: straight sides, corners cut by marching squares
    assert polygon[:, 0].min() == 0.5 and polygon[:, 0].max() == 6.5
    assert polygon[:, 1].min() == 1.5 and polygon[:, 1].max() == 5.5
    assert abs(shoelace(polygon)) == 24 - 0.5  # the voxel area less 4 corner triangles of 1/8


def test_hole_is_a_separate_contour():
    mask = np.zeros((7, 7), bool)
    mask[1:6, 1:6] = True
    mask[3, 3] = False
    polygons = mask_slice_to_polygons(mask)
    assert len(polygons) == 2
    assert np.array_equal(polygons_to_mask_slice(polygons, mask.shape), mask)


def test_diagonal_neighbours_and_saddles_round_trip():
    checker = (np.indices((6, 7)).sum(axis=0) % 2).astype(bool)
    assert np.array_equal(polygons_to_mask_slice(mask_slice_to_polygons(checker), checker.shape), checker)
    inverse = ~checker
    inverse[[0, -1], :] = inverse[:, [0, -1]] = False
    assert np.array_equal(polygons_to_mask_slice(mask_slice_to_polygons(inverse), inverse.shape), inverse)


def test_round_trip_is_exact_on_many_random_slices():
    rng = np.random.default_rng(2024)
    for n in range(1500):
        shape = tuple(int(s) for s in rng.integers(1, 20, size=2))
        if n % 3 == 0:  # blobs with holes: smoothed noise thresholded
            noise = rng.random((shape[0] + 2, shape[1] + 2))
            smooth = (noise[:-2, :-2] + noise[1:-1, 1:-1] + noise[2:, 2:] + noise[2:, :-2] + noise[:-2, 2:]) / 5
            mask = smooth > rng.uniform(0.35, 0.65)
        else:
            mask = rng.random(shape) < rng.uniform(0.05, 0.95)
        polygons = mask_slice_to_polygons(mask)
        assert np.array_equal(polygons_to_mask_slice(polygons, shape), mask), f"mask {n}"


def test_rasteriser_uses_voxel_centres_and_even_odd():
    square = np.array([[0.5, 0.5], [3.5, 0.5], [3.5, 2.5], [0.5, 2.5]])  # covers centres i 1..3, j 1..2
    expected = np.zeros((5, 6), bool)
    expected[1:3, 1:4] = True
    assert np.array_equal(polygons_to_mask_slice([square], (5, 6)), expected)
    closed = np.vstack([square, square[:1]])  # an explicitly repeated closing point changes nothing
    assert np.array_equal(polygons_to_mask_slice([closed], (5, 6)), expected)
    overlapping = [square, square + np.array([1.0, 0.0])]  # XOR of the fills
    xor = polygons_to_mask_slice(overlapping, (5, 6))
    assert xor[1:3, 1].all() and not xor[1:3, 2:4].any() and xor[1:3, 4].all()
    assert even_odd_fill_window([square + 100.0], (5, 6)) is None  # outside the slice: nothing
    clipped = polygons_to_mask_slice([square - 2.0], (5, 6))  # partly outside: clipped
    assert clipped.sum() == 2 and clipped[0, 0] and clipped[0, 1]


# --- round trips on synthetic CT series --------------------------------------------------------------------

GEOMETRIES = {
    "HFS": Geometry((14, 40, 48), (0.9, 1.1, 2.0), (-20.0, 35.0, -1190.0)),
    "FFS": Geometry((12, 36, 45), (0.7, 0.7, 3.0), (300.5, -220.25, 850.0), (-1, 0, 0, 0, 1, 0, 0, 0, -1)),
    "HFP-anisotropic": Geometry((16, 30, 40), (1.3, 0.6, 1.25), (1.0e4, -3.5e3, 12.5), (-1, 0, 0, 0, -1, 0, 0, 0, 1)),
    "oblique": Geometry((12, 40, 40), (0.8, 0.8, 2.5), (-55.5, 80.25, -400.0), rotation((1.0, 2.0, 0.5), 17.0)),
}


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_round_trip_is_exact_on_synthetic_ct_series(tmp_path, name):
    geometry = GEOMETRIES[name]
    ct = write_ct(tmp_path / "ct", geometry, seed=name)
    masks = synthetic_masks(geometry)
    ds = write_rtstruct(ct, masks, tmp_path / "rs.dcm", uid_seed=name, created=CREATED)
    structure_set = read_rtstruct(tmp_path / "rs.dcm", ct)
    assert structure_set.warnings == []
    assert structure_set.frame_of_reference_uid == ct.frame_of_reference_uid
    assert list(structure_set.rois) == [spec.name for spec in masks]
    for number, (spec, mask) in enumerate(masks.items(), start=1):
        roi = structure_set.rois[spec.name]
        assert roi.mask.dtype == np.uint8 and roi.mask.shape == geometry.shape
        assert np.array_equal(roi.mask, np.asarray(mask, np.uint8)), spec.name
        assert (roi.number, roi.color, roi.interpreted_type) == (number, spec.color, spec.interpreted_type)
    in_memory = read_rtstruct(ds, ct)
    assert all(np.array_equal(in_memory.rois[n].mask, r.mask) for n, r in structure_set.rois.items())


def test_in_memory_dataset_reads_like_the_file_even_after_pydicom_converted_it(tmp_path):
    geometry = GEOMETRIES["HFS"]
    ct = fake_ct(geometry)
    masks = synthetic_masks(geometry)
    ds = write_rtstruct(ct, masks)
    for roi_contour in ds.ROIContourSequence:
        for contour in roi_contour.get("ContourSequence", []):
            assert len(contour.ContourData) == 3 * contour.NumberOfContourPoints  # converts the raw element
    read = read_rtstruct(ds, ct)
    for spec, mask in masks.items():
        assert np.array_equal(read.rois[spec.name].mask, np.asarray(mask, np.uint8))


def test_masks_of_other_dtypes_and_layouts(tmp_path):
    geometry = Geometry((6, 20, 21), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))  # a row length no multiple of 8
    ct = fake_ct(geometry)
    base = np.zeros(geometry.shape, np.uint8)
    base[2:5, 4:15, 3:9] = 1
    base[3, 8, 5] = 0
    fortran = np.asfortranarray(base)
    masks = {"Uint8": base, "Int16": base.astype(np.int16) * 7, "Fortran": fortran, "Bool": base.astype(bool)}
    read = read_rtstruct(write_rtstruct(ct, masks), ct)
    for n, name in enumerate(masks):
        assert np.array_equal(read.rois[name].mask, base), name
        assert read.rois[name].color == DEFAULT_COLORS[n] and read.rois[name].interpreted_type == "ORGAN"


# --- the header ----------------------------------------------------------------------------------------


def test_header_follows_the_ct_and_the_rt_structure_set_iod(tmp_path):
    geometry = GEOMETRIES["FFS"]
    ct = write_ct(tmp_path / "ct", geometry, seed="header")
    masks = synthetic_masks(geometry)
    write_rtstruct(
        ct,
        masks,
        tmp_path / "rs.dcm",
        label="AUTO-OAR",
        series_description="test contours",
        model_name="hn-model v3",
        algorithm_name="hn-model",
        algorithm_version="3.1",
        uid_seed="header",
        created=CREATED,
    )
    ds = pydicom.dcmread(tmp_path / "rs.dcm")
    first_ct = pydicom.dcmread(sorted((tmp_path / "ct").glob("*.dcm"))[0], stop_before_pixels=True)

    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ImplicitVRLittleEndian
    assert ds.SOPClassUID == RT_STRUCTURE_SET_STORAGE == ds.file_meta.MediaStorageSOPClassUID
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
    assert ds.SpecificCharacterSet == first_ct.SpecificCharacterSet
    assert (ds.InstanceCreationDate, ds.InstanceCreationTime) == ("20260203", "040506")
    for keyword in PATIENT_STUDY_KEYWORDS:
        assert str(ds.get(keyword)) == str(first_ct.get(keyword, "")), keyword
    assert ds.StudyInstanceUID == first_ct.StudyInstanceUID
    assert ds.FrameOfReferenceUID == first_ct.FrameOfReferenceUID
    assert ds.Modality == "RTSTRUCT" and ds.SeriesInstanceUID != first_ct.SeriesInstanceUID
    assert ds.SeriesDescription == "test contours" and ds.OperatorsName == "" and ds.SeriesNumber > 0
    assert ds.Manufacturer == "oarmorph" and ds.ManufacturerModelName == "hn-model v3"
    versions = list(ds.SoftwareVersions)
    assert versions[0].startswith("oarmorph ") and "hn-model 3.1" in versions
    assert ds.StructureSetLabel == "AUTO-OAR" and ds.StructureSetDate == "20260203"
    assert ds.ApprovalStatus == "UNAPPROVED"

    (frame,) = ds.ReferencedFrameOfReferenceSequence
    assert frame.FrameOfReferenceUID == first_ct.FrameOfReferenceUID
    (study,) = frame.RTReferencedStudySequence
    assert study.ReferencedSOPClassUID == "1.2.840.10008.3.1.2.3.1"
    assert study.ReferencedSOPInstanceUID == first_ct.StudyInstanceUID
    (series,) = study.RTReferencedSeriesSequence
    assert series.SeriesInstanceUID == first_ct.SeriesInstanceUID
    assert [i.ReferencedSOPInstanceUID for i in series.ContourImageSequence] == list(ct.sop_instance_uids)
    assert {i.ReferencedSOPClassUID for i in series.ContourImageSequence} == {CT_IMAGE_STORAGE}

    specs = list(masks)
    assert [r.ROIName for r in ds.StructureSetROISequence] == [s.name for s in specs]
    for number, roi in enumerate(ds.StructureSetROISequence, start=1):
        assert roi.ROINumber == number and roi.ReferencedFrameOfReferenceUID == first_ct.FrameOfReferenceUID
        assert roi.ROIGenerationAlgorithm == "AUTOMATIC" and roi.ROIGenerationDescription == "hn-model 3.1"
    assert ds.StructureSetROISequence[1].ROIDescription == "a ring in every slice"
    for number, (observation, spec) in enumerate(zip(ds.RTROIObservationsSequence, specs, strict=True), start=1):
        assert observation.ObservationNumber == number and observation.ReferencedROINumber == number
        assert observation.RTROIInterpretedType == spec.interpreted_type and observation.ROIInterpreter == ""

    slice_of_uid = {uid: k for k, uid in enumerate(ct.sop_instance_uids)}
    for roi_contour, spec in zip(ds.ROIContourSequence, specs, strict=True):
        assert list(roi_contour.ROIDisplayColor) == list(spec.color)
        contours = list(roi_contour.get("ContourSequence", []))
        if spec.name == "Empty":
            assert contours == []  # listed, not contoured
            continue
        assert [c.ContourNumber for c in contours] == list(range(1, len(contours) + 1))
        for contour in contours:
            texts = contour_data_texts(contour)
            assert all(len(t) <= 16 for t in texts)
            assert not any(re.fullmatch(rb"-0(\.0*)?", t) for t in texts)
            assert not any(re.search(rb"\.\d*0$", t) for t in texts)  # trailing zeros stripped
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            assert len(texts) == 3 * contour.NumberOfContourPoints
            (image,) = contour.ContourImageSequence
            assert image.ReferencedSOPClassUID == CT_IMAGE_STORAGE
            ks = geometry.physical_to_index(np.array(texts, float).reshape(-1, 3))[:, 2]
            assert np.abs(ks - ks[0]).max() < 1e-3
            assert slice_of_uid[image.ReferencedSOPInstanceUID] == round(float(ks[0]))


def test_same_seed_and_time_give_the_same_bytes(tmp_path):
    geometry = GEOMETRIES["HFS"]
    ct = fake_ct(geometry)
    masks = synthetic_masks(geometry)
    write_rtstruct(ct, masks, tmp_path / "a.dcm", uid_seed="same", created=CREATED)
    write_rtstruct(ct, masks, tmp_path / "b.dcm", uid_seed="same", created=CREATED)
    assert (tmp_path / "a.dcm").read_bytes() == (tmp_path / "b.dcm").read_bytes()
    other = write_rtstruct(ct, masks, None, uid_seed="other", created=CREATED)
    assert other.SOPInstanceUID != pydicom.dcmread(tmp_path / "a.dcm").SOPInstanceUID


def test_names_the_ct_character_set_cannot_hold_switch_to_utf8():
    geometry = GEOMETRIES["HFS"]
    latin = fake_ct(geometry)
    latin.dicom["SpecificCharacterSet"] = "ISO_IR 100"
    empty = np.zeros(geometry.shape, np.uint8)
    assert write_rtstruct(latin, {"Glándula": empty}).SpecificCharacterSet == "ISO_IR 100"
    greek = write_rtstruct(latin, {RoiSpec("Glándula-Δ", (10, 20, 30)): empty})
    assert greek.SpecificCharacterSet == "ISO_IR 192"
    assert pydicom.dcmread(pydicom.filebase.DicomBytesIO(_to_bytes(greek))).StructureSetROISequence[0].ROIName == (
        "Glándula-Δ"
    )


# --- refusals and warnings --------------------------------------------------------------------------


def test_writer_refuses_a_mask_off_the_ct_grid_and_bad_specs():
    geometry = GEOMETRIES["HFS"]
    ct = fake_ct(geometry)
    with pytest.raises(GeometryMismatchError):
        write_rtstruct(ct, {"Wrong": np.zeros((14, 40, 47), np.uint8)})
    with pytest.raises(RtStructError):
        write_rtstruct(ct, {RoiSpec("A", (1, 2, 3)): np.zeros(geometry.shape), "A": np.zeros(geometry.shape)})
    with pytest.raises(RtStructError):
        RoiSpec("Back\\slash", (0, 0, 0))
    with pytest.raises(RtStructError):
        RoiSpec("Red", (256, 0, 0))
    with pytest.raises(RtStructError):
        RoiSpec("Lower", (0, 0, 0), "organ")
    with pytest.raises(RtStructError):
        write_rtstruct(ct, {}, label="A LABEL LONGER THAN 16")


def test_ct_reference_needs_the_dicom_references():
    geometry = GEOMETRIES["HFS"]
    with pytest.raises(MissingAttributeError):
        CtReference.from_volume(Volume(np.zeros(geometry.shape, np.int16), geometry, {}))
    with pytest.raises(GeometryMismatchError):
        CtReference(geometry, ("1.2.3",), CT_IMAGE_STORAGE, "1.2", "1.3", "1.4")


def _written(geometry: Geometry) -> tuple[CtReference, Dataset, dict[RoiSpec, np.ndarray]]:
    ct = fake_ct(geometry)
    masks = synthetic_masks(geometry)
    return ct, pydicom.dcmread(pydicom.filebase.DicomBytesIO(_to_bytes(write_rtstruct(ct, masks)))), masks


def _to_bytes(ds: Dataset) -> bytes:
    buffer = pydicom.filebase.DicomBytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def test_reader_refuses_another_frame_of_reference_unless_told_not_to_check():
    ct, ds, _ = _written(GEOMETRIES["HFS"])
    other = CtReference(
        ct.geometry, ct.sop_instance_uids, ct.sop_class_uid, ct.study_instance_uid, ct.series_instance_uid, "1.2.3.4"
    )
    with pytest.raises(RtStructReferenceError) as raised:
        read_rtstruct(ds, other)
    assert raised.value.code == "RTSTRUCT_REFERENCE_MISMATCH"
    assert read_rtstruct(ds, other, check_references=False).rois["Sphere"].mask.any()


def test_reader_warns_about_images_of_another_series():
    ct, ds, _ = _written(GEOMETRIES["HFS"])
    other = CtReference(
        ct.geometry,
        tuple(new_uid("elsewhere", k) for k in range(ct.geometry.shape[0])),
        ct.sop_class_uid,
        ct.study_instance_uid,
        ct.series_instance_uid,
        ct.frame_of_reference_uid,
    )
    found = read_rtstruct(ds, other).warnings
    assert any("Sphere" in w and "not slices of this CT" in w for w in found)


def test_contour_between_slices_is_an_error_naming_the_roi():
    ct, ds, _ = _written(GEOMETRIES["FFS"])
    contour = ds.ROIContourSequence[1].ContourSequence[0]  # the torus
    points = np.asarray(contour.ContourData, float).reshape(-1, 3)
    points[:, 2] += 0.4 * ct.geometry.spacing[2]  # 0.4 slice spacings off
    contour.ContourData = [f"{v:.3f}" for v in points.ravel()]
    with pytest.raises(RtStructError, match="Torus"):
        read_rtstruct(ds, ct)
    points[:, 2] -= 0.3 * ct.geometry.spacing[2]  # 0.1 slice spacings off: tolerated
    contour.ContourData = [f"{v:.3f}" for v in points.ravel()]
    assert read_rtstruct(ds, ct).rois["Torus"].mask.any()
    points[:, 2] += 100 * ct.geometry.spacing[2]  # beyond the last slice
    contour.ContourData = [f"{v:.3f}" for v in points.ravel()]
    with pytest.raises(RtStructError, match="Torus"):
        read_rtstruct(ds, ct)


def test_malformed_contour_data_is_an_error_naming_the_roi():
    ct, ds, _ = _written(GEOMETRIES["HFS"])
    ds.ROIContourSequence[0].ContourSequence[0].ContourData = ["1", "2", "3", "4"]
    with pytest.raises(RtStructError, match="Sphere"):
        read_rtstruct(ds, ct)


def test_point_and_open_contours_are_skipped_with_a_warning():
    ct, ds, masks = _written(GEOMETRIES["HFS"])
    contours = ds.ROIContourSequence[0].ContourSequence  # the sphere
    contours[0].ContourGeometricType = "OPEN_PLANAR"
    point = Dataset()
    point.ContourGeometricType = "POINT"
    point.NumberOfContourPoints = 1
    point.ContourData = ["1", "2", "-1180"]
    contours.append(point)
    read = read_rtstruct(ds, ct)
    assert any("Sphere" in w and "POINT" in w for w in read.warnings)
    assert any("Sphere" in w and "OPEN_PLANAR" in w for w in read.warnings)
    sphere = np.asarray(next(iter(masks.values())), bool)
    skipped_slice = sphere.any(axis=(1, 2)).argmax()
    assert not read.rois["Sphere"].mask[skipped_slice].any()
    assert np.array_equal(read.rois["Sphere"].mask[skipped_slice + 1 :], sphere[skipped_slice + 1 :])


def test_reader_refuses_other_objects():
    ct, ds, _ = _written(GEOMETRIES["HFS"])
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.Modality = "CT"
    with pytest.raises(RtStructError):
        read_rtstruct(ds, ct)


# --- speed -----------------------------------------------------------------------------------------------


def ellipsoid_masks(geometry: Geometry, count: int, seed: int = 0, max_cc: float = 1400.0) -> list[np.ndarray]:
    """``count`` ellipsoids from 0.1 cc to ``max_cc`` (log-spaced), each drawn only inside its box."""
    rng = np.random.default_rng(seed)
    nk, nj, ni = geometry.shape
    spacing_kji = np.array(geometry.spacing[::-1])
    masks = []
    for volume_cc in np.geomspace(0.1, max_cc, count):
        radius_mm = (3 * volume_cc * 1000 / (4 * np.pi)) ** (1 / 3) * np.array([1.2, 0.8, 1.0])  # k, j, i
        half = np.ceil(radius_mm / spacing_kji).astype(int) + 1
        centre = np.array([rng.uniform(h, n - h) for h, n in zip(half, (nk, nj, ni), strict=True)])
        lo = np.maximum(np.floor(centre - half).astype(int), 0)
        hi = np.minimum(np.ceil(centre + half).astype(int) + 1, (nk, nj, ni))
        kk, jj, ii = np.ogrid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        inside = sum(
            (((x - c) * s / r) ** 2) for x, c, s, r in zip((kk, jj, ii), centre, spacing_kji, radius_mm, strict=True)
        )
        mask = np.zeros(geometry.shape, np.uint8)
        mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = inside <= 1.0
        masks.append(mask)
    return masks


def test_36_masks_of_very_different_sizes_round_trip(tmp_path):
    """Correctness only: the speed on a 512 x 512 x 200 grid is measured by benchmarks/bench_rtstruct.py."""
    geometry = Geometry((60, 192, 192), (0.98, 0.98, 2.5), (-250.0, -250.0, -600.0))
    ct = fake_ct(geometry)
    masks = {
        RoiSpec(f"OAR {n:02d}", DEFAULT_COLORS[n % 12]): m
        for n, m in enumerate(ellipsoid_masks(geometry, 36, max_cc=80.0))
    }
    write_rtstruct(ct, masks, tmp_path / "rs.dcm")
    read = read_rtstruct(tmp_path / "rs.dcm", ct)
    assert len(read.rois) == 36
    for spec, mask in masks.items():
        assert np.array_equal(read.rois[spec.name].mask, mask), spec.name


# --- independent tools -------------------------------------------------------------------------------


@pytest.mark.tools
def test_dciodvfy_finds_no_error(tmp_path):
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    geometry = GEOMETRIES["oblique"]
    ct = write_ct(tmp_path / "ct", geometry, seed="dciodvfy")
    write_rtstruct(ct, synthetic_masks(geometry), tmp_path / "rs.dcm", uid_seed="dciodvfy")
    run = subprocess.run([dciodvfy, str(tmp_path / "rs.dcm")], capture_output=True, text=True, timeout=60)
    lines = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    assert not [line for line in lines if line.startswith("Error")], "\n".join(lines)
    assert not [line for line in lines if line.startswith("Warning")], "\n".join(lines)
    dcentvfy = shutil.which("dcentvfy")  # patient, study and frame of reference consistent across CT and RTSTRUCT
    if dcentvfy is not None:
        files = [str(p) for p in sorted((tmp_path / "ct").glob("*.dcm"))] + [str(tmp_path / "rs.dcm")]
        run = subprocess.run([dcentvfy, *files], capture_output=True, text=True, timeout=60)
        assert not [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")], run.stderr


def plastimatch_masks(rtstruct: Path, ct_dir: Path, out_dir: Path, geometry: Geometry) -> dict[str, np.ndarray]:
    """plastimatch's own rasterisation of our RTSTRUCT, on the CT grid (resampled there by nearest neighbour).

    ``--xor-contours`` gives plastimatch the even-odd rule of RTSTRUCT; without it plastimatch ORs the contours of
    a slice and fills holes. One bit-packed structure-set image (bit n = n-th structure of the list) is much
    faster to write and read than an image per structure.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    command = [
        shutil.which("plastimatch") or "plastimatch",
        "convert",
        "--input",
        str(rtstruct),
        "--referenced-ct",
        str(ct_dir),
        "--output-ss-img",
        str(out_dir / "ss.nrrd"),
        "--output-ss-list",
        str(out_dir / "ss.txt"),
        "--xor-contours",
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    image = sitk.ReadImage(str(out_dir / "ss.nrrd"))
    theirs = Geometry(image.GetSize()[::-1], image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    if not theirs.same_grid(geometry):
        reference = geometry.reference_image()
        image = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, image.GetPixelID())
    bits = sitk.GetArrayFromImage(image)
    components = np.ascontiguousarray(np.moveaxis(bits.reshape(*bits.shape[:3], -1), -1, 0))
    bits_per_component = 8 * bits.dtype.itemsize
    result = {}
    for line in (out_dir / "ss.txt").read_text().splitlines():
        if not line.strip():
            continue
        index, _, name = line.split("|", 2)
        component, bit = divmod(int(index), bits_per_component)
        result[name] = (components[component] & (1 << bit)) != 0
    return result


@pytest.mark.tools
@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_plastimatch_reads_the_same_masks(tmp_path, name):
    if shutil.which("plastimatch") is None:
        pytest.skip("plastimatch is not installed")
    geometry = GEOMETRIES[name]
    ct = write_ct(tmp_path / "ct", geometry, seed=name)
    masks = synthetic_masks(geometry)
    write_rtstruct(ct, masks, tmp_path / "rs.dcm")
    theirs = plastimatch_masks(tmp_path / "rs.dcm", tmp_path / "ct", tmp_path / "pm", geometry)
    for spec, mask in masks.items():  # plastimatch 1.9.4 agrees voxel for voxel, saddles and 1-voxel islands too
        assert dice(theirs[spec.name], mask) >= 0.97, spec.name


@pytest.mark.skipif(importlib.util.find_spec("rt_utils") is None, reason="rt-utils is not installed")
def test_rt_utils_opens_our_file(tmp_path):
    from rt_utils import RTStructBuilder

    geometry = GEOMETRIES["HFS"]
    ct = write_ct(tmp_path / "ct", geometry, seed="rt-utils")
    masks = synthetic_masks(geometry)
    write_rtstruct(ct, masks, tmp_path / "rs.dcm")
    builder = RTStructBuilder.create_from(
        dicom_series_path=str(tmp_path / "ct"), rt_struct_path=str(tmp_path / "rs.dcm")
    )
    assert builder.get_roi_names() == [spec.name for spec in masks]


@pytest.mark.skipif(importlib.util.find_spec("imaging.dicom_ct") is None, reason="the DICOM CT reader is not there")
def test_ct_reference_from_the_dicom_reader(tmp_path):
    from imaging.dicom_ct import read_ct_series

    geometry = GEOMETRIES["FFS"]
    write_ct(tmp_path / "ct", geometry, seed="reader")
    volume = read_ct_series(tmp_path / "ct")
    ct = CtReference.from_volume(volume)
    masks = synthetic_masks(volume.geometry)
    read = read_rtstruct(write_rtstruct(ct, masks), ct)
    for spec, mask in masks.items():
        assert np.array_equal(read.rois[spec.name].mask, np.asarray(mask, np.uint8)), spec.name


# --- real expert masks ----------------------------------------------------------------------------------

DEEPMIND_CASES = ("0522c0017", "TCGA-CV-7236")


def deepmind_masks(shared_data_dir: Path, case: str) -> tuple[Geometry, dict[str, np.ndarray]]:
    folder = shared_data_dir / "masks" / "deepmind_tcia_hn" / case
    paths = sorted(folder.glob("*.nrrd"))
    if not paths:
        pytest.skip(f"no DeepMind masks in {folder}")
    volumes = {p.stem: Volume.from_sitk(sitk.ReadImage(str(p))) for p in paths}
    geometry = next(iter(volumes.values())).geometry
    assert all(v.geometry.same_grid(geometry) for v in volumes.values())
    return geometry, {name: v.array for name, v in volumes.items()}


@pytest.mark.shared_data
@pytest.mark.parametrize("case", DEEPMIND_CASES)
def test_expert_masks_survive_the_round_trip(shared_data_dir, case):
    geometry, masks = deepmind_masks(shared_data_dir, case)
    ct = fake_ct(geometry, seed=case)
    ds = write_rtstruct(ct, masks)
    read = read_rtstruct(pydicom.dcmread(pydicom.filebase.DicomBytesIO(_to_bytes(ds))), ct)
    polygon_volumes = polygon_volume_voxels(ds, geometry)
    cc_per_voxel = geometry.voxel_volume_mm3 / 1000.0
    report = []
    for name, mask in masks.items():
        voxels = int(np.count_nonzero(mask))
        back = read.rois[name].mask
        if voxels == 0:  # TCGA-CV-7236 has no left submandibular gland: listed, not contoured
            assert not back.any() and polygon_volumes[name][1] == 0
            report.append(f"{name:18s} empty, listed without contours")
            continue
        area_voxels, contours, perimeter = polygon_volumes[name]
        overlap = dice(back, mask)
        back_ratio = np.count_nonzero(back) / voxels
        report.append(
            f"{name:18s} {voxels * cc_per_voxel:9.3f} cc  dice {overlap:.4f}  "
            f"voxels back {back_ratio:.4f}  polygons {area_voxels / voxels:.4f}"
        )
        assert overlap >= 0.97 and abs(back_ratio - 1) <= 0.03, report[-1]
        # Marching squares cuts each convex corner by 1/8 voxel: 1/2 voxel per outline, less for holes. That is
        # the whole difference between the polygon area and the voxel count (no systematic shrinkage), up to the
        # rounding of coordinates to a micrometre (at most 0.0005 mm times the perimeter) ...
        rounding = 0.0005 / min(geometry.spacing[:2]) * perimeter
        assert -rounding <= voxels - area_voxels <= 0.5 * contours + rounding, report[-1]
        # ... and it stays within 3 % except for the tiniest organs (cochleae: 26 voxels on 2 slices lose 1)
        if voxels * cc_per_voxel >= 0.1:
            assert abs(area_voxels / voxels - 1) <= 0.03, report[-1]
    print(f"\n{case}\n" + "\n".join(report))


@pytest.mark.shared_data
@pytest.mark.tools
def test_plastimatch_reads_the_expert_masks_like_we_do(tmp_path, shared_data_dir):
    if shutil.which("plastimatch") is None:
        pytest.skip("plastimatch is not installed")
    case = DEEPMIND_CASES[0]
    geometry, masks = deepmind_masks(shared_data_dir, case)
    ct = write_ct(tmp_path / "ct", geometry, seed=case)
    write_rtstruct(ct, masks, tmp_path / "rs.dcm")
    theirs = plastimatch_masks(tmp_path / "rs.dcm", tmp_path / "ct", tmp_path / "pm", geometry)
    report = {name: dice(theirs[name], mask) for name, mask in masks.items()}
    print(f"\nplastimatch vs our masks, {case}: " + ", ".join(f"{n} {d:.4f}" for n, d in report.items()))
    assert all(d >= 0.97 for d in report.values()), report


def test_contours_on_interpolated_slices_refer_to_no_image(tmp_path):
    """A CT read with fill_gaps has slices without SOP Instance UID: nothing may refer to them."""
    geometry = Geometry((6, 32, 32), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    ct = fake_ct(geometry)
    uids = list(ct.sop_instance_uids)
    uids[2] = ""
    ct = dataclasses.replace(ct, sop_instance_uids=tuple(uids))
    mask = np.zeros(geometry.shape, np.uint8)
    mask[1:4, 10:20, 10:20] = 1
    ds = write_rtstruct(ct, {"Box": mask}, tmp_path / "rs.dcm")
    referenced = [
        i.ReferencedSOPInstanceUID
        for i in ds.ReferencedFrameOfReferenceSequence[0]
        .RTReferencedStudySequence[0]
        .RTReferencedSeriesSequence[0]
        .ContourImageSequence
    ]
    assert "" not in referenced and len(referenced) == 5
    contours = ds.ROIContourSequence[0].ContourSequence
    assert len(contours) == 3 and sum("ContourImageSequence" in c for c in contours) == 2
    assert np.array_equal(read_rtstruct(tmp_path / "rs.dcm", ct).rois["Box"].mask, mask)
