"""``segment_ct``: a CT to one mask per atlas OAR on the CT's own grid, the one inference path.

    CT --to_canonical--> fixed canonical image (128^3, [0, 1])
       --window_shift onto the atlas (when the model was trained so)--> the same CT, window moved (new rows resampled)
       --register (the model: numpy in, numpy out)--> pull field (3, 128, 128, 128) in canonical voxels
       --warp_masks_to_patient--> every atlas OAR on the patient grid, with its flags (at the model's per-OAR
                                  mask thresholds when it carries calibrated ones, else 0.5)

Window alignment moves the canonical window itself (``imaging.canonical.shift_frame``) and resamples the CT
there, rather than shifting the arrays: the model sees what training saw (arrays shifted by whole voxels are
that very window) without the zero-filled rows, and the field's way back uses the window the field was
computed on, so the contract of ``imaging.canonical.FIELD_CONVENTION`` holds unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from imaging.canonical import (
    DEFAULT_SPEC,
    CanonicalFrame,
    CanonicalSampler,
    CanonicalSpec,
    known_mask,
    to_canonical,
    window_shift,
)
from imaging.metrics import folded_fraction
from imaging.volume import Geometry, Volume
from imaging.warp import MASK_THRESHOLD, WarpedMask, warp_masks_to_patient

from .atlas import SegmentationAtlas

Register = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # canonical image -> (field, affine field)


@dataclass
class Segmentation:
    masks: dict[str, WarpedMask]  # TG-263 name -> the OAR on the patient grid (its bounding box)
    seconds: dict[str, float]  # preprocessing, registration, warping, checks
    folded_fraction: float  # voxels of the field with a non-positive Jacobian determinant
    warnings: list[str]
    frame: CanonicalFrame  # the fixed canonical window the field lives on (after window alignment)
    window_shift: tuple[int, int]  # (dk, dj) canonical voxels of the alignment, (0, 0) without
    displacement: np.ndarray = field(repr=False)  # (3, 128, 128, 128) composed pull field, canonical voxels
    affine_field: np.ndarray = field(repr=False)  # the affine stage's alone

    def summary(self) -> dict:
        return {
            "oars": {
                name: {
                    "volume_cc": round(m.volume_cc, 3),
                    "empty": m.empty,
                    "reaches_window_border": m.reaches_window_border,
                    "cut_by_scan": m.cut_by_scan,
                }
                for name, m in self.masks.items()
            },
            "warnings": list(self.warnings),
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "folded_fraction": self.folded_fraction,
            "window_shift": list(self.window_shift),
            "canonical_frame": self.frame.to_dict(),
        }


def align_window(
    ct: Volume, atlas: SegmentationAtlas, spec: CanonicalSpec = DEFAULT_SPEC
) -> tuple[np.ndarray, CanonicalFrame, tuple[int, int]]:
    """The canonical image on the window that best matches the atlas's, that window, and the shift found."""
    sampler = CanonicalSampler(ct, spec)
    can = sampler.image()
    dk, dj = window_shift(can.image, known_mask(ct, can), atlas.window_reference)
    if (dk, dj) == (0, 0):
        return can.image, can.frame, (0, 0)
    moved = sampler.shifted(can, dk, dj)  # = to_canonical(ct, spec, shift_frame(can.frame, dk, dj)), cheaper
    return moved.image, moved.frame, (int(dk), int(dj))


def warp_atlas(
    atlas: SegmentationAtlas,
    fixed_frame: CanonicalFrame,
    displacement: np.ndarray,
    patient: Geometry,
    thresholds: Mapping[str, float] | None = None,
) -> dict[str, WarpedMask]:
    """Every atlas OAR through a canonical pull field onto the patient grid (a stage's field, or the whole);
    ``thresholds``: the model's calibrated level per OAR (``MASK_THRESHOLD`` for the OARs it does not name)."""
    return warp_masks_to_patient(
        atlas.masks,
        atlas.frame.geometry,
        fixed_frame.geometry,
        displacement,
        patient,
        threshold=MASK_THRESHOLD if thresholds is None else thresholds,
    )


def segmentation_warnings(frame: CanonicalFrame, masks: dict[str, WarpedMask]) -> list[str]:
    """What a physicist must know before trusting the contours (job warnings)."""
    out = []
    if frame.top_cut:
        out.append("the scan starts inside the head (its top is cut): the window starts at the scan's top")
    if frame.scan_shorter_than_window:
        gap = frame.scanned_z_range_mm[0] - frame.window_z_range_mm[0]
        out.append(f"the scan ends {gap:.0f} mm above the bottom of the canonical window (about T4)")
    for name, m in masks.items():
        if m.empty:
            out.append(f"{name}: lands outside the scanned volume, no contour")
            continue
        if m.reaches_window_border:
            out.append(f"{name}: reaches the border of the canonical window (the field is extrapolated there)")
        if m.cut_by_scan:
            out.append(f"{name}: runs out of the scanned volume (cut by the scan)")
    return out


def segment_ct(
    ct: Volume,
    atlas: SegmentationAtlas,
    register: Register,
    align_windows: bool,
    spec: CanonicalSpec = DEFAULT_SPEC,
    progress: Callable[[str], None] | None = None,
    thresholds: Mapping[str, float] | None = None,
) -> Segmentation:
    """Contour every atlas OAR on ``ct`` (see the module docstring); ``align_windows`` as the model was trained,
    ``thresholds`` as it was calibrated (``training.calibration``; None: 0.5 for every OAR).

    ``progress(stage)`` is called as each stage starts (``preprocessing``, ``registration``, ``warping``,
    ``checks``): the worker reports it on the job and cancels a job there by raising."""
    report = progress or (lambda stage: None)
    report("preprocessing")
    t0 = time.perf_counter()
    if align_windows:
        image, frame, shift = align_window(ct, atlas, spec)
    else:
        can = to_canonical(ct, spec)
        image, frame, shift = can.image, can.frame, (0, 0)
    report("registration")
    t1 = time.perf_counter()
    displacement, affine = register(image)
    report("warping")
    t2 = time.perf_counter()
    masks = warp_atlas(atlas, frame, displacement, ct.geometry, thresholds)
    report("checks")
    t3 = time.perf_counter()
    folded = folded_fraction(displacement)
    warnings = segmentation_warnings(frame, masks)
    t4 = time.perf_counter()
    seconds = {"preprocessing": t1 - t0, "registration": t2 - t1, "warping": t3 - t2, "checks": t4 - t3}
    return Segmentation(masks, seconds, folded, warnings, frame, shift, displacement, affine)
