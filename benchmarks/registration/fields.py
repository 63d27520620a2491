"""Each tool's transform as a pull field in canonical voxels (``imaging.canonical.FIELD_CONVENTION``).

The classical tools register in physical space, so both canonical images are handed to them on one grid with
the canonical spacing (2.5 x 2.5 x 2.7 mm along i, j, k), origin 0 and the identity direction: the "canonical
physical space", where index ``(k, j, i)`` sits at ``(i * si, j * sj, k * sk)`` mm. Fixed and moving share it,
so a tool's pull displacement ``d(p)`` (mm, components x, y, z along i, j, k: fixed point p shows moving point
``p + d(p)``) is the contract's field once divided by the spacing and put in array order:
``u = (d_z / sk, d_y / sj, d_x / si)``. Every converter below ends in ``displacement_mm_to_canonical``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from imaging.canonical import DEFAULT_SPEC

CANONICAL_SPACING = tuple(float(s) for s in DEFAULT_SPEC.spacing)  # mm along i, j, k


def displacement_mm_to_canonical(
    displacement_kji_xyz: np.ndarray, spacing_ijk: Sequence[float] = CANONICAL_SPACING
) -> np.ndarray:
    """A displacement array ``[k, j, i, 3]`` (x, y, z mm in the canonical physical space) as the contract's
    field ``(3, k, j, i)`` in canonical voxels, channels in array order (k, j, i)."""
    d = np.asarray(displacement_kji_xyz, np.float64)
    if d.ndim != 4 or d.shape[-1] != 3:
        raise ValueError(f"expected a [k, j, i, 3] displacement array, got {d.shape}")
    si, sj, sk = (float(s) for s in spacing_ijk)
    return np.stack([d[..., 2] / sk, d[..., 1] / sj, d[..., 0] / si]).astype(np.float32)


# --- images in the canonical physical space ---------------------------------------------------------------------


def to_sitk(image_kji: np.ndarray, spacing_ijk: Sequence[float] = CANONICAL_SPACING) -> sitk.Image:
    img = sitk.GetImageFromArray(np.ascontiguousarray(image_kji, np.float32))
    img.SetSpacing(tuple(float(s) for s in spacing_ijk))
    img.SetOrigin((0.0, 0.0, 0.0))
    return img


def to_ants(image_kji: np.ndarray, spacing_ijk: Sequence[float] = CANONICAL_SPACING):
    import ants  # antspyx, the bench extra

    # antspyx arrays are indexed [x, y, z]: the canonical [k, j, i] transposed
    arr = np.ascontiguousarray(np.asarray(image_kji, np.float32).transpose(2, 1, 0))
    return ants.from_numpy(arr, origin=(0.0, 0.0, 0.0), spacing=tuple(float(s) for s in spacing_ijk))


def to_itk(image_kji: np.ndarray, spacing_ijk: Sequence[float] = CANONICAL_SPACING):
    import itk  # itk-elastix, the bench extra

    img = itk.image_from_array(np.ascontiguousarray(image_kji, np.float32))
    img.SetSpacing(tuple(float(s) for s in spacing_ijk))
    img.SetOrigin((0.0, 0.0, 0.0))
    return img


# --- converters -------------------------------------------------------------------------------------------------


def sitk_transform_to_field(
    transform: sitk.Transform, shape_kji: Sequence[int], spacing_ijk: Sequence[float] = CANONICAL_SPACING
) -> np.ndarray:
    """A SimpleITK transform (fixed point -> moving point, as registration returns it) sampled on the canonical
    grid: ``d(p) = T(p) - p``."""
    size = [int(n) for n in reversed(tuple(shape_kji))]
    field = sitk.TransformToDisplacementField(
        transform,
        sitk.sitkVectorFloat64,
        size,
        (0.0, 0.0, 0.0),
        tuple(float(s) for s in spacing_ijk),
        (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    )
    return displacement_mm_to_canonical(sitk.GetArrayFromImage(field), spacing_ijk)


def ants_transforms_to_field(
    fwdtransforms: Sequence[str], fixed, moving, spacing_ijk: Sequence[float] = CANONICAL_SPACING
) -> np.ndarray:
    """ANTs' forward transforms (``ants.registration(...)["fwdtransforms"]``: the SyN warp, then the affine) as
    one field. ANTs composes them itself (``antsApplyTransforms`` writing the composite displacement field on the
    fixed grid), so the order is ANTs' own; the file is an ITK displacement field in mm, pull."""
    import tempfile
    from pathlib import Path

    import ants

    with tempfile.TemporaryDirectory(prefix="oarmorph-ants-") as tmp:
        path = ants.apply_transforms(fixed, moving, list(fwdtransforms), compose=str(Path(tmp) / "bench"))
        if path is None:
            raise RuntimeError("antsApplyTransforms wrote no composite displacement field")
        field = ants.image_read(path)
        d_ijk = field.numpy()  # [x, y, z, 3]
    return displacement_mm_to_canonical(np.asarray(d_ijk).transpose(2, 1, 0, 3), spacing_ijk)


def elastix_parameters_to_field(
    moving_itk, transform_parameters, spacing_ijk: Sequence[float] = CANONICAL_SPACING
) -> np.ndarray:
    """elastix's result transform (a parameter object) as transformix's deformation field: on the fixed grid the
    parameter maps name, in mm, pull (fixed point p to moving point p + d(p))."""
    import tempfile

    import itk

    with tempfile.TemporaryDirectory(prefix="oarmorph-transformix-") as tmp:  # else it writes into the cwd
        field = itk.transformix_deformation_field(
            moving_itk, transform_parameters, output_directory=tmp, log_to_console=False
        )
        d = np.array(itk.array_from_image(field), copy=True)
    return displacement_mm_to_canonical(d, spacing_ijk)
