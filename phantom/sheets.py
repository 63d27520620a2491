"""The PNG sheets of docs/phantom: the atlas and full-size patients at the ends of the pose ranges.

``oarmorph phantom sheets`` regenerates all of them. Each patient sheet shows an axial slice through the
parotids, an axial slice through the eyes, a sagittal slice through the midline and a coronal slice through the
brainstem, in a soft-tissue window with every true OAR outlined in its catalogue colour.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from anatomy.catalogue import BY_NAME
from imaging.preview import Panel, save_panels_png

from .cohort import atlas_for
from .patient import PatientCase

SOFT_TISSUE = (-160.0, 240.0)  # W400 L40
BONE = (-450.0, 1050.0)  # W1500 L300

# label -> (anatomy overrides, scan overrides): the ends of the ranges a cohort draws from
SHOWCASES: dict[str, tuple[dict, dict]] = {
    "neutral": (
        {"neck_flexion_deg": 0.0, "head_rotation_deg": 0.0, "head_tilt_deg": 0.0, "jaw_opening_deg": 0.0},
        {"patient_position": "HFS", "metal_implant": False, "top_mm_above_vertex": 15.0},
    ),
    "flexion_ffs": (
        {"neck_flexion_deg": 15.0, "head_rotation_deg": 0.0, "head_tilt_deg": 0.0},
        {"patient_position": "FFS", "metal_implant": False},
    ),
    "extension_cut_skull": (
        {"neck_flexion_deg": -15.0, "head_rotation_deg": 0.0},
        {"top_mm_above_vertex": -30.0, "metal_implant": False},
    ),
    "rotation_tilt_open_jaw": (
        {"head_rotation_deg": 15.0, "head_tilt_deg": 8.0, "jaw_opening_deg": 12.0},
        {"metal_implant": False, "top_mm_above_vertex": 15.0},
    ),
    "metal_implant_heavy": ({"fat_change_mm": 12.0, "neck_flexion_deg": 5.0}, {"metal_implant": True}),
}


def _centroid_kji(case: PatientCase, name: str) -> np.ndarray | None:
    if name not in case.masks:
        return None
    box, start = case.masks[name]
    return np.argwhere(box).mean(axis=0) + np.asarray(start)


def _plane(case: PatientCase, axis: int, index: int) -> dict[str, tuple[np.ndarray, tuple[int, int, int]]]:
    """Every OAR's cut by the plane ``index`` along array ``axis``, on the full plane."""
    shape = [n for a, n in enumerate(case.ct.geometry.shape) if a != axis]
    out = {}
    for name, (box, start) in case.masks.items():
        local = index - start[axis]
        if not 0 <= local < box.shape[axis]:
            continue
        cut = np.take(box, local, axis=axis)
        plane = np.zeros(shape, np.uint8)
        lo = [s for a, s in enumerate(start) if a != axis]
        plane[lo[0] : lo[0] + cut.shape[0], lo[1] : lo[1] + cut.shape[1]] = cut
        out[name] = (plane, BY_NAME[name].color)
    return out


def _crop(panel: Panel, rows: slice, cols: slice) -> Panel:
    masks = {n: (m[rows, cols], c) for n, (m, c) in panel.masks.items()}
    return Panel(panel.title, panel.image[rows, cols], panel.aspect, masks, panel.flip_rows, panel.window)


def patient_panels(case: PatientCase) -> list[Panel]:
    hu = case.ct.array
    g = case.ct.geometry
    si, sj, sk = g.spacing
    up = g.direction_matrix[2, 2] > 0  # k runs to the head: draw it upwards
    fallback = np.array(hu.shape) / 2
    parotid = _centroid_kji(case, "Parotid_L")
    eye = _centroid_kji(case, "Eye_L")
    stem = _centroid_kji(case, "Brainstem")
    k_par = int((parotid if parotid is not None else fallback)[0])
    k_eye = int((eye if eye is not None else fallback)[0])
    c = stem if stem is not None else fallback
    j_stem, i_mid = int(c[1]), int(c[2])
    implant = case.meta.get("implant_slices")
    k_bone = int(np.median(implant)) if implant else k_par  # a metal case shows its implant and streaks
    note = " (dental implant)" if implant else ""
    # show the body, not the empty field of view around it
    body = hu[:, ::4, ::4] > -400
    box = [np.flatnonzero(body.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    k_sl = slice(max(int(box[0][0]) - 2, 0), int(box[0][-1]) + 3)
    j_sl = slice(max(int(box[1][0]) * 4 - 20, 0), int(box[1][-1]) * 4 + 24)
    i_sl = slice(max(int(box[2][0]) * 4 - 20, 0), int(box[2][-1]) * 4 + 24)
    panels = [
        _crop(
            Panel(f"axial k={k_par} (parotids)", hu[k_par], sj / si, _plane(case, 0, k_par), window=SOFT_TISSUE),
            j_sl,
            i_sl,
        ),
        _crop(
            Panel(f"axial k={k_eye} (eyes)", hu[k_eye], sj / si, _plane(case, 0, k_eye), window=SOFT_TISSUE), j_sl, i_sl
        ),
        _crop(Panel(f"axial k={k_bone}, bone window{note}", hu[k_bone], sj / si, {}, window=BONE), j_sl, i_sl),
        _crop(
            Panel("sagittal (brainstem)", hu[:, :, i_mid], sk / sj, _plane(case, 2, i_mid), up, SOFT_TISSUE), k_sl, j_sl
        ),
        _crop(
            Panel("coronal (brainstem)", hu[:, j_stem, :], sk / si, _plane(case, 1, j_stem), up, SOFT_TISSUE),
            k_sl,
            i_sl,
        ),
    ]
    return panels


def showcase_patient(label: str, seed: int) -> PatientCase:
    """A full-size patient with one end of the pose ranges forced (the rest drawn from ``seed``)."""
    from .cohort import FIELD_SPACING_MM, _anchors
    from .patient import draw_parameters, render_patient

    anatomy_overrides, scan_overrides = SHOWCASES[label]
    rng = np.random.default_rng([seed, list(SHOWCASES).index(label)])
    anatomy, scan = draw_parameters(rng, "full")
    anatomy = dataclasses.replace(anatomy, **anatomy_overrides)
    scan = dataclasses.replace(scan, **scan_overrides)
    return render_patient(atlas_for("full"), _anchors("full"), anatomy, scan, rng, FIELD_SPACING_MM["full"])


def write_sheets(out_dir: str | Path, seed: int = 2026) -> list[Path]:
    out = Path(out_dir)
    paths = [write_atlas_sheet(out / "atlas.png")]
    for label in SHOWCASES:
        case = showcase_patient(label, seed)
        a, s = case.anatomy, case.scan
        title = (
            f"{label}: {s.patient_position}, {s.columns}x{s.rows}x{s.slices} at {s.pixel_spacing_mm:.2f}x"
            f"{s.pixel_spacing_mm:.2f}x{s.slice_thickness_mm:.2f} mm; flexion {a.neck_flexion_deg:+.0f}, rotation "
            f"{a.head_rotation_deg:+.0f}, tilt {a.head_tilt_deg:+.0f}, jaw {a.jaw_opening_deg:.0f} deg, head x"
            f"{a.head_scale:.2f}, fat {a.fat_change_mm:+.0f} mm{', dental implant' if s.metal_implant else ''}"
        )
        paths.append(save_panels_png(patient_panels(case), out / f"patient_{label}.png", title=title, columns=3))
    return paths


def write_atlas_sheet(path: Path) -> Path:
    from .atlas_sheet import atlas_sheet

    return atlas_sheet(atlas_for("full"), path)
