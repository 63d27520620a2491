"""The phantom atlas: 36 OARs with adult volumes, exact left-right symmetry, anatomical order, CT numbers that
agree with the masks, and landmarks where the anatomy puts them. One 2 mm atlas per module (a second or so)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from anatomy.catalogue import BY_NAME, OARS, Laterality
from phantom.atlas import (
    EXPECTED_VOLUME_CC,
    TISSUE_HU,
    AtlasPhantom,
    build_atlas,
    build_atlas_region,
    full_mask,
    oar_tissues,
)

# Structures a few millimetres across: on the 2 mm grid their volume depends on where voxel centres fall, so
# there they only need the right order of magnitude; test_thin_oars_at_1mm holds them to the ranges.
THIN = (
    "Lens_L",
    "Lens_R",
    "Cochlea_L",
    "Cochlea_R",
    "OpticNrv_L",
    "OpticNrv_R",
    "OpticChiasm",
    "Pituitary",
    "Glnd_Lacrimal_L",
    "Glnd_Lacrimal_R",
)
ORBITS_AND_SELLA_MM = ((-60.0, -100.0, -130.0), (60.0, 10.0, -88.0))  # holds every THIN OAR

# mean HU of each OAR on the noise-free CT (bands of the organ's tissue; larynx parts include their airway)
HU_BANDS: dict[str, tuple[float, float]] = {
    "Brain": (20, 40),
    "Lobe_Temporal": (20, 40),
    "Brainstem": (25, 40),
    "SpinalCord": (25, 45),
    "Pituitary": (40, 80),
    "OpticChiasm": (20, 45),
    "OpticNrv": (20, 45),
    "Eye": (0, 30),
    "Lens": (60, 130),
    "Glnd_Lacrimal": (30, 60),
    "Cochlea": (0, 40),
    "Parotid": (-40, 0),
    "Glnd_Submand": (25, 50),
    "Bone_Mandible": (300, 2000),
    "Cavity_Oral": (-60, 80),
    "Lips": (30, 60),
    "Musc_Constrict_S": (40, 60),
    "Musc_Constrict_M": (40, 60),
    "Musc_Constrict_I": (40, 60),
    "Cricopharyngeus": (40, 60),
    "Esophagus_S": (30, 60),
    "Larynx_SG": (-500, 50),
    "Glottis": (-400, 60),
    "Glnd_Thyroid": (70, 130),
    "BrachialPlex": (25, 45),
    "A_Carotid": (150, 250),
}

REQUIRED_LANDMARKS = (
    "vertex",
    "head_centre",
    "neck_pivot",
    "c7",
    "tmj_l",
    "tmj_r",
    "chin",
    "molar_l",
    "molar_r",
    "body_centre_neck",
    "skin_top_of_shoulders",
)


@pytest.fixture(scope="module")
def atlas() -> AtlasPhantom:
    return build_atlas(2.0)


def _volume_cc(atlas: AtlasPhantom, name: str) -> float:
    mask, geometry = atlas.masks[name]
    return float(mask.sum()) * geometry.voxel_volume_mm3 / 1000.0


def _points(atlas: AtlasPhantom, name: str) -> np.ndarray:
    """LPS centres of the OAR's voxels, (n, 3)."""
    mask, geometry = atlas.masks[name]
    return geometry.index_to_physical(np.argwhere(mask)[:, ::-1].astype(float))


def _centroid(atlas: AtlasPhantom, name: str) -> np.ndarray:
    return _points(atlas, name).mean(axis=0)


def _hu_at(atlas: AtlasPhantom, point) -> float:
    i, j, k = np.rint(atlas.ct.geometry.physical_to_index(np.asarray(point, float))).astype(int)
    return float(atlas.ct.array[k, j, i])


def _base(name: str) -> str:
    return name[:-2] if BY_NAME[name].laterality is not Laterality.MIDLINE else name


def test_the_grid_is_lps_aligned_symmetric_about_x0_and_runs_upwards(atlas):
    g = atlas.ct.geometry
    assert np.allclose(g.direction_matrix, np.eye(3)) and g.spacing == (2.0, 2.0, 2.0)
    assert atlas.ct.array.dtype == np.float32 and np.isfinite(atlas.ct.array).all()
    lo, hi = g.corners_physical().min(axis=0), g.corners_physical().max(axis=0)
    assert lo[0] == -hi[0] and lo[0] <= -199 and lo[1] <= -129 and hi[1] >= 139 and lo[2] <= -399 and hi[2] >= 7
    assert g.origin[2] == lo[2]  # k = 0 is the lowest slice
    # the top of the skin is at z = 0
    body = atlas.ct.array > -500
    top_k = np.flatnonzero(body.any(axis=(1, 2)))[-1]
    assert -g.spacing[2] < g.index_to_physical(np.array([0, 0, top_k]))[2] <= 0.0


def test_the_atlas_is_exactly_left_right_symmetric(atlas):
    assert np.array_equal(atlas.ct.array, atlas.ct.array[:, :, ::-1])


def test_expected_volumes_cover_the_catalogue():
    assert sorted(EXPECTED_VOLUME_CC) == sorted(BY_NAME)
    assert all(0 < lo < hi for lo, hi in EXPECTED_VOLUME_CC.values())


@pytest.mark.parametrize("name", [oar.name for oar in OARS])
def test_every_oar_is_present_with_an_adult_volume(atlas, name):
    mask, geometry = atlas.masks[name]
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    g = atlas.ct.geometry
    assert geometry.spacing == g.spacing and geometry.direction == g.direction
    offset = (np.asarray(geometry.origin) - np.asarray(g.origin)) / np.asarray(g.spacing)
    assert np.allclose(offset, np.rint(offset)) and (offset >= 0).all()
    assert (np.rint(offset)[::-1] + mask.shape <= g.shape).all()
    # cropped to the bounding box plus 2 voxels (less only at the grid's edge: the cord runs off its bottom)
    first = np.rint(offset)[::-1].astype(int)
    for axis in range(3):
        profile = mask.any(axis=tuple(a for a in range(3) if a != axis))
        at_bottom_edge, at_top_edge = first[axis] == 0, first[axis] + mask.shape[axis] == g.shape[axis]
        assert at_bottom_edge or (not profile[:2].any() and profile[2])
        assert at_top_edge or (not profile[-2:].any() and profile[-3])
    lo, hi = EXPECTED_VOLUME_CC[name]
    volume = _volume_cc(atlas, name)
    if name in THIN:
        lo, hi = lo / 2.0, hi * 2.0  # the 2 mm grid only gets the order of magnitude of these right
    assert lo <= volume <= hi, f"{name}: {volume:.3f} cc outside [{lo}, {hi}]"


def test_thin_oars_at_1mm():
    """Lenses, cochleae, optic nerves, chiasm, pituitary and lacrimal glands on the 1 mm grid (their box only)."""
    region = build_atlas_region(1.0, *ORBITS_AND_SELLA_MM)
    for name in THIN:
        mask, geometry = region.masks[name]
        for axis in range(3):  # wholly inside the region, not cut by it
            profile = mask.any(axis=tuple(a for a in range(3) if a != axis))
            assert not profile[0] and not profile[-1], name
        volume = float(mask.sum()) * geometry.voxel_volume_mm3 / 1000.0
        lo, hi = EXPECTED_VOLUME_CC[name]
        assert lo <= volume <= hi, f"{name}: {volume:.3f} cc outside [{lo}, {hi}] at 1 mm"
    # optic nerves: 3-4 mm thick, 40-50 mm from the globe to the chiasm
    points = _points(region, "OpticNrv_L")
    length = np.linalg.norm(points.max(axis=0) - points.min(axis=0))
    assert 40.0 <= length <= 55.0
    assert 3.0 <= 2.0 * np.sqrt(_volume_cc(region, "OpticNrv_L") * 1000.0 / (np.pi * length)) <= 4.5


def test_a_region_build_is_the_crop_of_the_full_build(atlas):
    lo_mm, hi_mm = (-40.0, -90.0, -300.0), (60.0, 30.0, -200.0)
    region = build_atlas_region(2.0, lo_mm, hi_mm)
    rg, g = region.ct.geometry, atlas.ct.geometry
    i0, j0, k0 = np.rint(g.physical_to_index(np.asarray(rg.origin))).astype(int)
    nk, nj, ni = rg.shape
    assert np.array_equal(region.ct.array, atlas.ct.array[k0 : k0 + nk, j0 : j0 + nj, i0 : i0 + ni])
    again = build_atlas_region(2.0, lo_mm, hi_mm)  # and nothing is random
    assert np.array_equal(again.ct.array, region.ct.array)
    name = "Glnd_Thyroid"  # wholly inside the region
    assert np.array_equal(full_mask(region, name), full_mask(atlas, name)[k0 : k0 + nk, j0 : j0 + nj, i0 : i0 + ni])


@pytest.mark.parametrize("left", [oar.name for oar in OARS if oar.laterality is Laterality.LEFT])
def test_left_and_right_oars_mirror_each_other(atlas, left):
    right = BY_NAME[left].mirror
    a, b = full_mask(atlas, left).astype(bool), full_mask(atlas, right)[:, :, ::-1].astype(bool)
    dice = 2.0 * (a & b).sum() / (a.sum() + b.sum())
    assert dice >= 0.99
    assert _centroid(atlas, left)[0] > 0 > _centroid(atlas, right)[0]  # L is the patient's left: +x in LPS


@pytest.mark.parametrize("name", [oar.name for oar in OARS])
def test_oar_voxels_carry_their_organs_ct_numbers(atlas, name):
    values = atlas.ct.array[full_mask(atlas, name).astype(bool)]
    assert set(np.unique(values)) <= {np.float32(TISSUE_HU[t]) for t in oar_tissues(name)}
    lo, hi = HU_BANDS[_base(name)]
    assert lo <= float(values.mean()) <= hi, f"{name}: mean {values.mean():.0f} HU outside [{lo}, {hi}]"


def test_eyes_and_lenses(atlas):
    for side in "LR":
        eye, lens = f"Eye_{side}", f"Lens_{side}"
        assert _centroid(atlas, lens)[1] < _centroid(atlas, eye)[1] - 5.0  # anterior (-y) of the eye's centre
        inside = full_mask(atlas, eye).astype(bool)
        assert inside[full_mask(atlas, lens).astype(bool)].all()
        assert _points(atlas, eye)[:, 2].min() > _points(atlas, "Cavity_Oral")[:, 2].max()
    chiasm, pituitary = _centroid(atlas, "OpticChiasm"), _centroid(atlas, "Pituitary")
    assert chiasm[2] > pituitary[2] and abs(chiasm[1] - pituitary[1]) < 8.0
    nerve = _points(atlas, "OpticNrv_L")
    assert _centroid(atlas, "Eye_L")[1] < nerve[:, 1].mean() < chiasm[1]


def test_brainstem_continues_into_the_spinal_cord(atlas):
    stem, cord = full_mask(atlas, "Brainstem").astype(bool), full_mask(atlas, "SpinalCord").astype(bool)
    stem_k, cord_k = np.flatnonzero(stem.any(axis=(1, 2))), np.flatnonzero(cord.any(axis=(1, 2)))
    assert stem_k.min() > cord_k.min() and 0 <= stem_k.min() - cord_k.max() <= 1
    assert (stem[stem_k.min()] & cord[cord_k.max()]).any()  # the cord's top lies under the medulla
    length = (cord_k.max() - cord_k.min()) * atlas.ct.geometry.spacing[2]
    assert length >= 230.0  # foramen magnum to below T4
    temporal = full_mask(atlas, "Lobe_Temporal_L").astype(bool)
    assert full_mask(atlas, "Brain").astype(bool)[temporal].all()  # the temporal lobes are part of the brain


def test_head_and_neck_order(atlas):
    z = {name: _centroid(atlas, name)[2] for name in atlas.masks}
    assert z["Larynx_SG"] > z["Glottis"] > z["Cricopharyngeus"] > z["Esophagus_S"]
    assert z["Glnd_Thyroid"] < z["Glottis"]
    assert z["Musc_Constrict_S"] > z["Musc_Constrict_M"] > z["Musc_Constrict_I"] > z["Cricopharyngeus"]
    assert z["Parotid_L"] > z["Glnd_Submand_L"]
    assert z["Brain"] > z["Brainstem"] > z["SpinalCord"]
    assert z["Lips"] < z["Eye_L"] and abs(z["Lips"] - z["Cavity_Oral"]) < 20.0
    # cochleae lateral to the brainstem, level with the pons and medulla
    stem = _points(atlas, "Brainstem")
    for side, sign in (("L", 1), ("R", -1)):
        cochlea = _centroid(atlas, f"Cochlea_{side}")
        level = stem[np.abs(stem[:, 2] - cochlea[2]) <= 2.0]
        assert level.size and sign * cochlea[0] > np.abs(level[:, 0]).max()


def test_parotids_lie_lateral_to_the_mandibular_rami(atlas):
    mandible, parotid = _points(atlas, "Bone_Mandible"), _points(atlas, "Parotid_L")
    for z in (-180.0, -170.0, -160.0):  # levels of the rami, above the mandible's body
        ramus = mandible[(np.abs(mandible[:, 2] - z) <= 1.0) & (mandible[:, 0] > 0)]
        gland = parotid[np.abs(parotid[:, 2] - z) <= 1.0]
        assert ramus.size and gland.size
        assert gland[:, 0].mean() > ramus[:, 0].mean()
        assert gland[:, 0].max() > ramus[:, 0].max()


def test_carotids_lie_lateral_to_the_airway(atlas):
    g = atlas.ct.geometry
    x = g.origin[0] + np.arange(g.shape[2]) * g.spacing[0]
    carotid = full_mask(atlas, "A_Carotid_L").astype(bool)
    checked = 0
    for k in np.flatnonzero(carotid.any(axis=(1, 2))):
        slab = atlas.ct.array[k]
        air = (slab <= -900) & ndimage.binary_fill_holes(slab > -500)  # air inside the body
        airway = air[:, np.abs(x) <= 20.0]  # the midline airway, not the ears or the maxillary sinuses
        if not airway.any():
            continue
        airway_x = np.abs(x[np.abs(x) <= 20.0][airway.any(axis=0)]).max()
        assert x[carotid[k].any(axis=0)].min() > airway_x
        checked += 1
    assert checked >= 40


def test_landmarks(atlas):
    lm = atlas.landmarks
    assert set(REQUIRED_LANDMARKS) <= set(lm)
    for name, point in lm.items():
        assert np.asarray(point).shape == (3,), name
    assert lm["vertex"][2] == 0.0 and lm["vertex"][0] == 0.0
    assert lm["tmj_l"][2] > lm["chin"][2] + 60.0 and lm["chin"][1] < lm["tmj_l"][1] - 50.0
    assert np.allclose(lm["tmj_r"], lm["tmj_l"] * [-1, 1, 1]) and np.allclose(lm["molar_r"], lm["molar_l"] * [-1, 1, 1])
    assert lm["vertex"][2] > lm["head_centre"][2] > lm["neck_pivot"][2] > lm["c7"][2] > lm["skin_top_of_shoulders"][2]
    assert lm["body_centre_neck"][2] < lm["neck_pivot"][2]
    head_centre = np.rint(atlas.ct.geometry.physical_to_index(lm["head_centre"])).astype(int)[::-1]
    assert full_mask(atlas, "Brain")[tuple(head_centre)]
    assert 80.0 <= _hu_at(atlas, lm["neck_pivot"]) <= 100.0  # the C2-C3 disc
    assert 200.0 <= _hu_at(atlas, lm["c7"]) <= 1000.0  # a vertebral body
    assert _hu_at(atlas, lm["molar_l"]) == TISSUE_HU["tooth"]
    assert _hu_at(atlas, lm["body_centre_neck"]) > -200.0
    shoulder = np.asarray(lm["skin_top_of_shoulders"])
    assert shoulder[0] > 100.0
    up = np.array([0.0, 0.0, 4.0])
    assert _hu_at(atlas, shoulder - up) > -200.0 and _hu_at(atlas, shoulder + up) == -1000.0
    mandible = _points(atlas, "Bone_Mandible")
    assert np.linalg.norm(mandible - lm["chin"], axis=1).min() <= 2.0
    assert np.linalg.norm(mandible - lm["tmj_l"], axis=1).min() <= 2.0
