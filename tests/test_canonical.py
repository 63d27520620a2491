"""The canonical space and its way back: one preprocessing, exact geometry, thin OARs that survive."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from imaging.canonical import DEFAULT_SPEC, find_canonical_frame, mask_to_canonical, to_canonical
from imaging.errors import NoBodyFoundError
from imaging.volume import Geometry, Volume
from imaging.warp import warp_masks_to_patient
from phantom.analytic import (
    LANDMARKS,
    VERTEX_Z,
    body_volume,
    grid_points,
    landmark_mask_at,
    landmark_volume,
    patient_grid,
)

ZERO_FIELD = np.zeros((3, *DEFAULT_SPEC.shape), np.float32)

SCANS = {
    "HFS": dict(position="HFS", spacing=(2.0, 2.0, 3.0)),
    "FFS": dict(position="FFS", spacing=(2.0, 2.0, 3.0)),
    "HFS far origin, anisotropic": dict(position="HFS", spacing=(1.3, 2.1, 2.5), offset=(1000.0, -2000.0, 500.0)),
    "FFS far origin, anisotropic": dict(position="FFS", spacing=(1.7, 1.4, 3.5), offset=(-400.0, 300.0, -900.0)),
}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


@pytest.fixture(scope="module")
def canonical_scans():
    out = {}
    for name, kw in SCANS.items():
        geometry = patient_grid(**kw)
        offset = kw.get("offset", (0.0, 0.0, 0.0))
        ct = body_volume(geometry, offset)
        out[name] = (ct, offset, to_canonical(ct))
    return out


def test_same_anatomy_lands_on_the_same_canonical_voxels(canonical_scans):
    ref_ct, ref_offset, ref = canonical_scans["HFS"]
    ref_centroids = {
        name: np.array(
            ndimage.center_of_mass(mask_to_canonical(landmark_volume(ref_ct.geometry, name, ref_offset), ref.frame))
        )
        for name in ("gland_l", "stem", "eye_r")
    }
    for scan_name, (ct, offset, can) in canonical_scans.items():
        assert can.image.shape == (128, 128, 128)
        assert abs(can.frame.vertex_z_mm - (VERTEX_Z + offset[2])) < 2.0, scan_name
        diff = np.abs(can.image - ref.image)
        assert diff.mean() < 0.01, (scan_name, diff.mean())
        for name, ref_c in ref_centroids.items():
            soft = mask_to_canonical(landmark_volume(ct.geometry, name, offset), can.frame)
            c = np.array(ndimage.center_of_mass(soft))
            assert np.abs(c - ref_c).max() < 0.5, (scan_name, name, c, ref_c)


def test_left_is_left_in_every_patient_position(canonical_scans):
    for scan_name, (ct, offset, can) in canonical_scans.items():
        eye_l = mask_to_canonical(landmark_volume(ct.geometry, "eye_l", offset), can.frame)
        eye_r = mask_to_canonical(landmark_volume(ct.geometry, "eye_r", offset), can.frame)
        # canonical i runs to the patient's left, k from head to feet, j from anterior to posterior
        assert ndimage.center_of_mass(eye_l)[2] > 64 > ndimage.center_of_mass(eye_r)[2], scan_name
        assert ndimage.center_of_mass(eye_l)[0] < 40, scan_name
        assert ndimage.center_of_mass(eye_l)[1] < 40, scan_name


def test_window_and_intensities(canonical_scans):
    _ct, _, can = canonical_scans["HFS"]
    g = can.frame.geometry
    assert g.shape == (128, 128, 128) and g.spacing == DEFAULT_SPEC.spacing
    assert g.origin[2] == pytest.approx(can.frame.vertex_z_mm + DEFAULT_SPEC.top_margin_mm)
    assert can.image.dtype == np.float32 and can.image.min() >= 0.0 and can.image.max() <= 1.0
    assert can.image[0].max() == 0.0  # above the vertex: air
    brain = can.image[30, 60:68, 60:68]
    assert np.allclose(brain, (30.0 + 170.0) / 400.0, atol=0.02)
    assert not can.frame.top_cut and not can.frame.scan_shorter_than_window
    assert can.fov_mask[:, 64, :].all()  # scanned over the whole window height


def test_scan_shorter_than_the_window_is_padded_and_flagged():
    geometry = patient_grid(spacing=(2.0, 2.0, 3.0), extent_mm=(400.0, 300.0, 200.0))
    can = to_canonical(body_volume(geometry))
    assert can.frame.scan_shorter_than_window
    assert can.fov_mask[:60, 64, 64].all() and not can.fov_mask[-30:].any()
    assert can.image[-30:].max() == 0.0


def test_a_scan_starting_just_below_the_vertex_extrapolates_the_dome():
    geometry = patient_grid(spacing=(2.0, 2.0, 3.0), top_z=-15.0, extent_mm=(400.0, 300.0, 300.0))
    frame = find_canonical_frame(body_volume(geometry))
    assert frame.top_cut
    assert frame.vertex_z_mm > frame.scanned_z_range_mm[1]
    assert abs(frame.vertex_z_mm - VERTEX_Z) < 8.0, frame.vertex_z_mm
    assert frame.window_z_range_mm[1] == pytest.approx(frame.vertex_z_mm + DEFAULT_SPEC.top_margin_mm)


def test_a_scan_starting_deep_in_the_head_anchors_at_its_top():
    geometry = patient_grid(spacing=(2.0, 2.0, 3.0), top_z=-60.0, extent_mm=(400.0, 300.0, 300.0))
    frame = find_canonical_frame(body_volume(geometry))
    assert frame.top_cut  # 60 mm below the vertex the dome no longer tells where it closes
    assert frame.window_z_range_mm[1] == pytest.approx(frame.scanned_z_range_mm[1], abs=2.5)


def test_a_flat_truncated_top_anchors_the_window_at_the_top_of_the_body():
    """OpenKBP-style: the CT was blanked to -1024 above a straight cut through the head."""
    geometry = patient_grid(spacing=(2.0, 2.0, 3.0))
    ct = body_volume(geometry)
    cut_z = VERTEX_Z - 70.0
    z = geometry.index_to_physical(
        np.stack([np.zeros(geometry.shape[0]), np.zeros(geometry.shape[0]), np.arange(geometry.shape[0])], 1)
    )[:, 2]
    ct.array[z > cut_z] = -1024.0
    frame = find_canonical_frame(ct)
    assert frame.top_cut
    assert abs(frame.window_z_range_mm[1] - cut_z) <= 4.0


def test_a_ct_without_a_body_is_rejected():
    geometry = Geometry((20, 30, 30), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    with pytest.raises(NoBodyFoundError) as err:
        to_canonical(Volume(np.full(geometry.shape, -1000.0, np.float32), geometry))
    assert err.value.code == "NO_BODY_FOUND"


def _local_grid(centre, spacing, half_extent_mm=30.0, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> Geometry:
    n = [round(2 * half_extent_mm / s) for s in spacing]
    d = np.asarray(direction, float).reshape(3, 3)
    origin = np.asarray(centre) - d @ (np.asarray(spacing) * (np.array(n) - 1) / 2)
    return Geometry((n[2], n[1], n[0]), spacing, tuple(origin), direction)


def _frame_linking_field(atlas_scan, patient_scan):
    """The canonical field between two scans of the same body: both frames have the same axes and spacing, so
    it is the constant offset between them, plus the body's own displacement between the scans."""
    _, atlas_offset, atlas = atlas_scan
    _, patient_offset, patient = patient_scan
    delta = np.asarray(atlas_offset) - np.asarray(patient_offset)  # the atlas scan sees the body moved by delta
    a_g, f_g = atlas.frame.geometry, patient.frame.geometry
    y0 = a_g.physical_to_index(f_g.index_to_physical(np.zeros(3)) + delta)
    return a_g, f_g, np.broadcast_to(y0[::-1, None, None, None], (3, *f_g.shape)).astype(np.float32), delta


@pytest.mark.parametrize("radius_mm", [2.5, 5.0, 10.0, 20.0])
def test_a_mask_sent_to_canonical_space_and_back_agrees_with_itself(canonical_scans, radius_mm):
    """Patient-space mask -> its scan's canonical frame -> field -> another frame -> back to its own grid."""
    a_g, f_g, field, delta = _frame_linking_field(
        canonical_scans["FFS far origin, anisotropic"], canonical_scans["HFS"]
    )
    centre = np.array([20.0, -10.0, -150.0])
    grid = _local_grid(centre + 0.3, (0.9, 0.9, 2.0), half_extent_mm=radius_mm + 10)
    mask = (((grid_points(grid) - centre) ** 2).sum(-1) <= radius_mm**2).astype(np.uint8)
    seen_by_atlas = dataclasses.replace(grid, origin=tuple(np.asarray(grid.origin) + delta))
    back = warp_masks_to_patient({"s": (mask, seen_by_atlas)}, a_g, f_g, field, grid)["s"].full()
    shift_mm = (np.array(ndimage.center_of_mass(back)) - np.array(ndimage.center_of_mass(mask))) * grid.spacing[::-1]
    assert np.abs(shift_mm).max() < 0.5 * min(grid.spacing), shift_mm
    assert dice(back, mask) >= 0.98, dice(back, mask)


def test_the_warp_gives_every_oar_the_same_voxels_on_any_number_of_threads(canonical_scans):
    """The warp cuts the OARs' boxes into slabs shared by the threads: the masks must not depend on how many."""
    import SimpleITK as sitk

    a_g, f_g, field, delta = _frame_linking_field(
        canonical_scans["FFS far origin, anisotropic"], canonical_scans["HFS"]
    )
    rng = np.random.default_rng(11)
    wobble = ndimage.gaussian_filter(rng.normal(0.0, 6.0, field.shape), (0, 4, 4, 4)).astype(np.float32)
    field = field + wobble  # not a pure shift: every slab samples its own part of the field
    patient = _local_grid(np.array([20.0, -10.0, -150.0]), (0.9, 0.9, 2.0), half_extent_mm=60)
    masks = {}
    for n, (centre, radius) in enumerate([((20, -10, -150), 30.0), ((0, 0, -130), 6.0), ((45, -30, -170), 12.0)]):
        grid = _local_grid(np.asarray(centre, float) + delta, (0.7, 0.7, 1.0), half_extent_mm=radius + 3)
        inside = ((grid_points(grid) - np.asarray(centre, float) - delta) ** 2).sum(-1) <= radius**2
        masks[f"s{n}"] = (inside.astype(np.uint8), grid)
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    try:
        results = []
        for threads in (1, 3):
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
            results.append(warp_masks_to_patient(masks, a_g, f_g, field, patient))
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)
    for name in masks:
        one, three = results[0][name], results[1][name]
        assert one.array.any() and one.box_start == three.box_start, name
        np.testing.assert_array_equal(one.array, three.array)
        assert (one.reaches_window_border, one.cut_by_scan) == (three.reaches_window_border, three.cut_by_scan)


@pytest.mark.parametrize("radius_mm", [5.0, 10.0, 20.0])
def test_a_fine_atlas_mask_lands_on_the_patient_grid_where_it_belongs(canonical_scans, radius_mm):
    """An atlas structure at 0.5 mm, carried onto a 0.9 x 0.9 x 2 mm patient grid, against the analytic truth."""
    a_g, f_g, field, delta = _frame_linking_field(
        canonical_scans["FFS far origin, anisotropic"], canonical_scans["HFS"]
    )
    centre = np.array([20.0, -10.0, -150.0])
    atlas_grid = _local_grid(centre + delta, (0.5, 0.5, 0.5), half_extent_mm=radius_mm + 4)
    atlas_mask = (((grid_points(atlas_grid) - centre - delta) ** 2).sum(-1) <= radius_mm**2).astype(np.uint8)
    patient = _local_grid(centre + 0.3, (0.9, 0.9, 2.0), half_extent_mm=radius_mm + 10)
    truth = (((grid_points(patient) - centre) ** 2).sum(-1) <= radius_mm**2).astype(np.uint8)
    back = warp_masks_to_patient({"s": (atlas_mask, atlas_grid)}, a_g, f_g, field, patient)["s"].full()
    shift_mm = (np.array(ndimage.center_of_mass(back)) - np.array(ndimage.center_of_mass(truth))) * patient.spacing[
        ::-1
    ]
    assert np.abs(shift_mm).max() < 0.5 * min(patient.spacing), shift_mm
    assert dice(back, truth) >= 0.98, dice(back, truth)


@pytest.mark.parametrize(("radius_mm", "min_dice"), [(10.0, 0.97), (20.0, 0.98)])
def test_soft_canonical_masks_keep_large_structures(canonical_scans, radius_mm, min_dice):
    """The 128^3 soft masks (training's segmentation loss) are coarse: fine for large OARs, which is why the
    way back never goes through them (a 5 mm sphere keeps Dice 0.64 only)."""
    _, _, can = canonical_scans["HFS"]
    centre = np.array([20.0, -10.0, -150.0])
    patient = _local_grid(centre, (0.9, 0.9, 2.0), half_extent_mm=radius_mm + 15)
    pts = grid_points(patient)
    mask = (((pts - centre) ** 2).sum(-1) <= radius_mm**2).astype(np.uint8)
    soft = mask_to_canonical(Volume(mask, patient), can.frame)
    g = can.frame.geometry
    back = warp_masks_to_patient({"s": (soft, g)}, g, g, ZERO_FIELD, patient)["s"].full()
    voxel = np.asarray(patient.spacing)[::-1]
    shift_mm = (np.array(ndimage.center_of_mass(back)) - np.array(ndimage.center_of_mass(mask))) * voxel
    assert np.abs(shift_mm).max() < 0.5 * min(DEFAULT_SPEC.spacing), shift_mm
    assert dice(back, mask) >= min_dice, dice(back, mask)


def test_identity_field_returns_every_mask_exactly_even_thin_ones(canonical_scans):
    _ct, offset, can = canonical_scans["FFS far origin, anisotropic"]
    lens_centre = LANDMARKS["lens_l"][0] + np.asarray(offset)
    patient = _local_grid(lens_centre, (0.5, 0.6, 1.0), direction=(-1, 0, 0, 0, 1, 0, 0, 0, -1))
    pts = grid_points(patient)
    lens = landmark_mask_at(pts, "lens_l", offset)
    eye = landmark_mask_at(pts, "eye_l", offset)
    nerve = ((((pts - lens_centre)[..., 0]) ** 2 + ((pts - lens_centre)[..., 2]) ** 2) <= 1.0).astype(
        np.uint8
    )  # 2 mm rod
    warped = warp_masks_to_patient(
        {"lens": (lens, patient), "eye": (eye, patient), "nerve": (nerve, patient)},
        can.frame.geometry,
        can.frame.geometry,
        ZERO_FIELD,
        patient,
    )
    for name, truth in {"lens": lens, "eye": eye, "nerve": nerve}.items():
        assert np.array_equal(warped[name].full(), truth), name
    assert (warped["lens"].full() <= warped["eye"].full()).all()  # overlap kept: lens inside eye


def test_constant_field_moves_masks_by_the_matching_physical_shift(canonical_scans):
    _, _, can = canonical_scans["HFS"]
    g = can.frame.geometry
    shift_kji = np.array([2.0, -3.0, 1.5])  # canonical voxels
    field = np.broadcast_to(shift_kji[:, None, None, None], (3, *g.shape)).astype(np.float32)
    centre = np.array([0.0, 0.0, -120.0])
    patient = _local_grid(centre, (1.0, 1.0, 1.0), half_extent_mm=35.0)
    pts = grid_points(patient)
    mask = (((pts - centre) ** 2).sum(-1) <= 15.0**2).astype(np.uint8)
    warped = warp_masks_to_patient({"s": (mask, patient)}, g, g, field, patient)["s"].full()
    # content at x comes from x + shift, so the sphere appears moved by -shift (in physical mm)
    shift_mm = g.direction_matrix @ (np.asarray(g.spacing) * shift_kji[::-1])
    expected = ((((pts + shift_mm) - centre) ** 2).sum(-1) <= 15.0**2).astype(np.uint8)
    assert dice(warped, expected) > 0.97  # linear sampling of a binary sphere at a non-integer shift
    moved_mm = (np.array(ndimage.center_of_mass(warped)) - np.array(ndimage.center_of_mass(mask)))[::-1]
    assert np.allclose(patient.direction_matrix @ moved_mm, -shift_mm, atol=0.3), (moved_mm, shift_mm)


def test_atlas_and_patient_with_their_own_frames(canonical_scans):
    """Same anatomy in two differently placed scans: the zero field maps atlas OARs onto the patient's."""
    atlas_ct, atlas_offset, atlas = canonical_scans["HFS far origin, anisotropic"]
    patient_ct, patient_offset, patient = canonical_scans["FFS"]
    masks = {
        n: (landmark_volume(atlas_ct.geometry, n, atlas_offset).array, atlas_ct.geometry)
        for n in ("gland_l", "stem", "eye_l")
    }
    warped = warp_masks_to_patient(masks, atlas.frame.geometry, patient.frame.geometry, ZERO_FIELD, patient_ct.geometry)
    for name, w in warped.items():
        truth = landmark_volume(patient_ct.geometry, name, patient_offset).array
        assert dice(w.full(), truth) > 0.85, (name, dice(w.full(), truth))
        assert not w.cut_by_scan and not w.reaches_window_border


def test_oars_pushed_out_of_the_scan_are_flagged(canonical_scans):
    _ct, _offset, can = canonical_scans["HFS"]
    g = can.frame.geometry
    patient = _local_grid(LANDMARKS["stem"][0], (1.0, 1.0, 2.0), half_extent_mm=12.0)
    mask = landmark_mask_at(grid_points(patient), "stem")
    field = np.zeros((3, *g.shape), np.float32)
    field[2] = 4.0  # pull from 4 voxels to the left: the structure moves out through the right side
    w = warp_masks_to_patient({"stem": (mask, patient)}, g, g, field, patient)["stem"]
    assert w.cut_by_scan and not w.empty
    nothing = warp_masks_to_patient({"none": (np.zeros_like(mask), patient)}, g, g, field, patient)["none"]
    assert nothing.empty and nothing.volume_cc == 0.0


@pytest.mark.shared_data
def test_the_real_scanner_series_gets_a_head_and_neck_window(shared_data_dir):
    from imaging.dicom_ct import read_ct_series

    ct = read_ct_series(shared_data_dir / "dicom" / "pycerr_head_neck_ct")
    can = to_canonical(ct)
    frame = can.frame
    # its first slice cuts the skull cap: the vertex is extrapolated a little above the scan
    assert frame.top_cut
    assert frame.scanned_z_range_mm[1] < frame.vertex_z_mm < frame.scanned_z_range_mm[1] + 30.0
    assert frame.scan_shorter_than_window  # 270 mm scanned, the window is 346 mm
    head = can.image[5:60, 40:90, 40:90]
    assert 0.3 < float(np.median(head)) < 0.7  # brain and soft tissue, inside the window
    assert not can.fov_mask[0].any()  # above the scan: the extrapolated dome and the margin
    assert can.fov_mask[8:90, 64, 64].all() and not can.fov_mask[-10:].any()


@pytest.mark.shared_data
def test_openkbp_truncated_ct_is_flagged(shared_data_dir):
    from imaging.io import read_ct

    frames = [
        find_canonical_frame(read_ct(shared_data_dir / "openkbp" / "train" / p / "ct.nii.gz"))
        for p in ("pt_1", "pt_100")
    ]
    assert all(f.top_cut for f in frames)  # both start inside the head (pt_1 truncated, pt_100 scanned so)


def test_window_shift_undoes_a_known_shift_of_a_truncated_case(canonical_scans):
    from imaging.canonical import WindowReference, shift_arrays, window_shift

    _, _, atlas = canonical_scans["HFS"]
    atlas_known = np.ones_like(atlas.image)
    case = shift_arrays(atlas.image, -10, 4)  # anatomy 10 voxels higher and 4 more posterior
    known = shift_arrays(atlas_known, -10, 4)
    known[:25] = 0.0  # OpenKBP-style truncation of the top
    case = case * known
    assert window_shift(case, known, WindowReference.of(atlas.image, atlas_known)) == (10, -4)


def _window_shift_by_shifted_copies(image, known, atlas_image, atlas_known, max_shift=(40, 16), min_overlap=0.7):
    """The search as first written: every candidate scored on zero-filled shifted copies (the reference)."""
    from imaging.canonical import intensity_bins, shift_arrays, weighted_mi

    def block_mean(a, f):
        k, j, i = (n // f for n in a.shape)
        return a[: k * f, : j * f, : i * f].reshape(k, f, j, f, i, f).mean(axis=(1, 3, 5))

    def best(scale, centre, radius, step):
        img_bins, kn = intensity_bins(block_mean(image, scale)), block_mean(known, scale)
        a_bins, a_kn = intensity_bins(block_mean(atlas_image, scale)), block_mean(atlas_known, scale)
        scored, own = [], float(kn.sum())
        for dk in range(centre[0] - radius[0], centre[0] + radius[0] + 1, step):
            for dj in range(centre[1] - radius[1], centre[1] + radius[1] + 1, step):
                overlap = shift_arrays(kn, dk // scale, dj // scale) * a_kn
                if overlap.sum() < min_overlap * own:
                    continue
                s_bins = shift_arrays(img_bins, dk // scale, dj // scale)
                scored.append((weighted_mi(s_bins, a_bins, overlap), -abs(dk) - abs(dj), dk, dj))
        return max(scored)[2:] if scored else centre

    return tuple(best(2, best(4, (0, 0), max_shift, 4), (4, 4), 2))


@pytest.mark.parametrize("scan", ["FFS", "HFS far origin, anisotropic", "FFS far origin, anisotropic"])
@pytest.mark.parametrize("dk, dj, cut, side", [(-10, 4, 25, 0), (7, -3, 0, 0), (0, 0, 40, 0), (5, 6, 10, 30)])
def test_window_shift_finds_what_scoring_shifted_copies_finds(canonical_scans, scan, dk, dj, cut, side):
    """The search scores views of the overlap, only over the rows where case and atlas hold known voxels, instead
    of shifted copies: the same shift, found faster."""
    from imaging.canonical import WindowReference, known_mask, shift_arrays, window_shift

    atlas_ct, _, atlas = canonical_scans["HFS"]
    ct, _, can = canonical_scans[scan]
    atlas_known = known_mask(atlas_ct, atlas)
    known = shift_arrays(known_mask(ct, can), dk, dj)
    known[:cut] = 0.0  # OpenKBP-style truncation of the top
    if side:  # and of the sides: columns of the case, and rows of the atlas, without a known voxel
        known[:, :, :side] = 0.0
        known[:, -side // 2 :] = 0.0
        atlas_known = atlas_known.copy()
        atlas_known[:, :, -side:] = 0.0
    rng = np.random.default_rng(3)
    noisy = np.clip(can.image + rng.normal(0.0, 0.05, can.image.shape).astype(np.float32), 0.0, 1.0)
    image = shift_arrays(noisy, dk, dj) * known
    expected = _window_shift_by_shifted_copies(image, known, atlas.image, atlas_known)
    assert window_shift(image, known, WindowReference.of(atlas.image, atlas_known)) == expected


@pytest.mark.parametrize("f", [2, 4])
def test_block_means_are_the_means_of_the_blocks(f):
    from imaging.canonical import _block_mean

    a = np.random.default_rng(f).random((18, 16, 12), dtype=np.float32)
    k, j, i = (n // f for n in a.shape)
    expected = a[: k * f, : j * f, : i * f].reshape(k, f, j, f, i, f).astype(np.float64).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(_block_mean(a, f), expected, rtol=2e-6)


@pytest.mark.parametrize("scan", ["HFS", "FFS far origin, anisotropic"])
@pytest.mark.parametrize("dk, dj", [(14, -2), (-9, 6), (0, 5), (-44, 0), (3, 0)])
def test_a_shifted_window_is_the_window_of_the_shifted_frame(canonical_scans, scan, dk, dj):
    """``CanonicalSampler.shifted`` moves the arrays and samples only the uncovered rows: to the bit what
    ``to_canonical`` gives on the moved frame (the same sample points, the same anti-aliased CT)."""
    from imaging.canonical import CanonicalSampler, shift_frame

    ct, _, _ = canonical_scans[scan]
    sampler = CanonicalSampler(ct)
    can = sampler.image()
    moved = sampler.shifted(can, dk, dj)
    direct = to_canonical(ct, frame=shift_frame(can.frame, dk, dj))
    assert moved.frame == direct.frame
    np.testing.assert_array_equal(moved.image, direct.image)
    np.testing.assert_array_equal(moved.fov_mask, direct.fov_mask)


def test_binned_mutual_information_is_numpys_histogram_mutual_information():
    """window_shift bins each image once; the MI must be that of np.histogram2d on the values, to the bit."""
    from imaging.canonical import MI_BINS, intensity_bins, weighted_mi

    rng = np.random.default_rng(7)
    for _ in range(20):
        a = rng.random((12, 10, 8)).astype(np.float32)
        b = rng.random((12, 10, 8)).astype(np.float32)
        a[0, 0, :5] = np.array([0.0, 1.0, 1 / 24, 0.5, 23 / 24], np.float32)  # on bin edges, both ends
        b[rng.random(b.shape) < 0.2] = 1.0
        w = rng.random(a.shape).astype(np.float32)
        joint, _, _ = np.histogram2d(a.ravel(), b.ravel(), bins=MI_BINS, range=[[0, 1], [0, 1]], weights=w.ravel())
        joint /= joint.sum()
        pa, pb = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
        nz = joint > 0
        expected = float((joint[nz] * np.log(joint[nz] / (pa @ pb)[nz])).sum())
        assert weighted_mi(intensity_bins(a), intensity_bins(b), w) == expected
    assert weighted_mi(intensity_bins(a), intensity_bins(b), np.zeros_like(w)) == -np.inf


@pytest.mark.parametrize(("shape", "block"), [((16, 16, 16), 4), ((13, 10, 7), 4), ((9, 6, 5), 2), ((8, 8, 8), 1)])
def test_block_bounds_find_exactly_the_voxels_a_brute_force_test_finds(shape, block):
    """warp_masks_to_patient's shortcut (FieldBlockBounds) must give the box the full per-voxel test gives."""
    from imaging.warp import FieldBlockBounds

    rng = np.random.default_rng(3)
    grid = np.indices(shape, dtype=np.float32)
    y = grid + rng.normal(0.0, 1.5, size=(3, *shape)).astype(np.float32)  # a rough pull map
    bounds = FieldBlockBounds(y, block)
    by_component = FieldBlockBounds.empty(shape, block)  # what the warp fills, one component per thread
    for c in (2, 0, 1):
        by_component.fill_component(c, y[c])
    np.testing.assert_array_equal(by_component.low, bounds.low)
    np.testing.assert_array_equal(by_component.high, bounds.high)
    for _ in range(40):
        lo = rng.uniform(-2, max(shape), 3)
        hi = lo + rng.uniform(0, 6, 3)
        inside = np.ones(shape, bool)
        for c in range(3):
            inside &= (y[c] >= lo[c]) & (y[c] <= hi[c])
        got = bounds.voxels_landing_in(y, lo, hi)
        if not inside.any():
            assert got is None
            continue
        nz = np.nonzero(inside)
        np.testing.assert_array_equal(got[0], [v.min() for v in nz])
        np.testing.assert_array_equal(got[1], [v.max() for v in nz])
    with pytest.raises(ValueError):
        FieldBlockBounds(y, 3)


@pytest.mark.parametrize("where", ["inside", "at a face", "everywhere", "nowhere"])
def test_the_body_is_the_largest_opened_component_of_the_whole_grid(where):
    """body_mask opens and labels only the box of what passes the threshold: the mask of doing it on all."""
    from imaging.body import body_mask, open_6_connected

    rng = np.random.default_rng(5)
    hu = np.full((30, 34, 28), -1000.0, np.float32)
    part = {"inside": np.s_[6:20, 9:25, 5:21], "at a face": np.s_[0:14, 20:34, 3:28], "everywhere": np.s_[:, :, :]}
    if where in part:
        region = hu[part[where]]
        region[...] = np.where(rng.random(region.shape) < 0.7, 40.0, -1000.0)
    opened = open_6_connected(hu > -400.0)
    labels, n = ndimage.label(opened)
    expected = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1) if n else opened
    np.testing.assert_array_equal(body_mask(hu), expected)
    assert body_mask(hu).any() == (where != "nowhere")


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.7])
def test_the_body_opening_is_scipys_binary_opening(fraction):
    from imaging.body import open_6_connected

    mask = np.random.default_rng(int(fraction * 10)).random((20, 23, 17)) < fraction
    expected = ndimage.binary_opening(mask, structure=ndimage.generate_binary_structure(3, 1), iterations=1)
    np.testing.assert_array_equal(open_6_connected(mask), expected)


def test_a_mask_is_resampled_from_its_box_as_from_the_whole_grid(canonical_scans):
    """mask_to_canonical smooths and samples only the mask's box (plus the Gaussian's reach): the same soft mask
    as the whole grid gives, for an OAR inside, one cut by the grid's border, and none at all."""
    from imaging.canonical import _resample

    ct, offset, can = canonical_scans["HFS"]
    g = can.frame.geometry
    inside = landmark_volume(ct.geometry, "eye_r", offset)
    cut = inside.with_array(np.zeros_like(inside.array))
    cut.array[60:90, :6, 150:190] = 1  # against the grid's anterior border
    for mask in (inside, cut):
        whole = np.clip(_resample(Volume(mask.array.astype(np.float32), mask.geometry), g, 0.0, min(g.spacing)), 0, 1)
        assert whole.sum() > 10
        assert np.abs(mask_to_canonical(mask, can.frame) - whole).max() < 1e-5
    empty = mask_to_canonical(inside.with_array(np.zeros_like(inside.array)), can.frame)
    assert empty.shape == g.shape and not empty.any()


@pytest.mark.parametrize(
    "direction",
    [
        (1, 0, 0, 0, 1, 0, 0, 0, 1),
        (1, 0, 0, 0, 1, 0, 0, 0, -1),  # slices stored from the feet up
        (0, 1, 0, 1, 0, 0, 0, 0, 1),  # rows and columns swapped
        (1, 0, 0, 0, 0.9848, -0.1736, 0, 0.1736, 0.9848),  # oblique (a 10 degree tilt): ITK's own test
    ],
    ids=["identity", "k flipped", "i-j swapped", "oblique"],
)
def test_the_scanned_mask_is_what_nearest_neighbour_resampling_takes_from_the_scan(direction):
    import SimpleITK as sitk

    from imaging.canonical import _prefiltered, _sample_on, scanned_mask

    scan = Geometry((37, 50, 45), (0.9, 1.1, 2.5), (-20.0, -31.0, 12.0), direction)
    target = Geometry((40, 30, 60), (1.3, 1.7, 2.1), (-35.0, -40.0, 70.0), (1, 0, 0, 0, 1, 0, 0, 0, -1))
    ones = _prefiltered(Volume(np.ones(scan.shape, np.uint8), scan), None)
    expected = _sample_on(ones, target, 0.0, sitk.sitkNearestNeighbor).astype(np.uint8)
    got = scanned_mask(scan, target)
    assert got.dtype == np.uint8 and got.shape == target.shape
    assert 0 < got.sum() < got.size
    assert np.array_equal(got, expected)


def test_a_voxel_centre_on_the_scans_outer_edge_counts_as_scanned():
    # Grids with commensurate spacings put centres exactly on the scan's outer voxel edges (OpenKBP's windows do):
    # ITK's rounding takes such a centre in on one grid and leaves it out on another; the mask always takes it in
    from imaging.canonical import scanned_mask

    scan = Geometry((10, 10, 10), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    target = Geometry((12, 20, 20), (0.5, 0.5, 1.0), (-0.5, -0.5, -1.0))  # first centres at index -0.5
    got = scanned_mask(scan, target)
    assert got.all()  # the first row, column and slice sit on the edge
    # and index n - 0.5 (the far edge) is outside: voxels 0 .. 9 span [-0.5, 9.5)
    far = Geometry((2, 2, 2), (1.0, 1.0, 2.0), (9.5, 9.5, 19.0))
    assert scanned_mask(scan, far).sum() == 0


@pytest.mark.parametrize("placement", ["inside", "across a face", "outside", "covering"])
@pytest.mark.parametrize("oblique", [False, True])
def test_resampling_only_the_images_footprint_gives_what_itk_gives_on_the_whole_grid(placement, oblique):
    """``_sample_on`` resamples only the target voxels within reach of the image and fills the rest with the
    default value: the values ITK gives on the whole grid (points outside the buffer get the default there too)."""
    import SimpleITK as sitk

    from imaging.canonical import _sample_on

    c, s = np.cos(0.3), np.sin(0.3)
    direction = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0) if oblique else (1, 0, 0, 0, 1, 0, 0, 0, 1)
    origin = {
        "inside": (10.0, 12.0, 8.0),
        "across a face": (-9.0, 30.0, 20.0),
        "outside": (500.0, 0.0, 0.0),
        "covering": (-40.0, -40.0, -40.0),
    }[placement]
    shape = (40, 50, 45) if placement == "covering" else (9, 11, 13)
    spacing = (3.1, 2.9, 3.3) if placement == "covering" else (1.7, 1.3, 2.1)
    rng = np.random.default_rng(2)
    small = Volume(rng.normal(0.0, 100.0, shape).astype(np.float32), Geometry(shape, spacing, origin, direction))
    img = small.to_sitk()
    target = Geometry((30, 34, 28), (2.5, 2.5, 2.7), (0.3, -0.2, 0.1), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    whole = sitk.GetArrayFromImage(
        sitk.Resample(
            img, target.reference_image(sitk.sitkFloat32), sitk.Transform(), sitk.sitkLinear, -7.0, sitk.sitkFloat32
        )
    )
    got = _sample_on(img, target, -7.0)
    assert got.shape == whole.shape and got.dtype == np.float32
    np.testing.assert_array_equal(got == -7.0, whole == -7.0)
    np.testing.assert_allclose(got, whole, rtol=0, atol=1e-4)  # 100 HU-scale values: float rounding only
    assert (placement == "outside") == (got == -7.0).all()
