"""A 3-D image and its place in DICOM patient space.

Conventions (the same as SimpleITK's, so a ``Volume`` converts to and from ``sitk.Image`` without
copies of meaning):

* ``array`` is indexed ``[k, j, i]`` (slice, row, column); ``shape`` is ``(nk, nj, ni)``.
* ``spacing``, ``origin`` and the columns of ``direction`` are given in index order ``(i, j, k)``.
* Physical space is DICOM patient space, LPS, millimetres. Voxel ``(i, j, k)`` is centred at
  ``origin + direction @ (spacing * (i, j, k))``. Nothing is assumed axis-aligned or at origin 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True)
class Geometry:
    """Where a voxel grid sits in patient space."""

    shape: tuple[int, int, int]  # (nk, nj, ni), array order
    spacing: tuple[float, float, float]  # mm along i, j, k
    origin: tuple[float, float, float]  # LPS mm of voxel (0, 0, 0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)  # row-major 3x3

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "origin", tuple(float(s) for s in self.origin))
        object.__setattr__(self, "direction", tuple(float(s) for s in np.ravel(self.direction)))
        if len(self.shape) != 3 or len(self.spacing) != 3 or len(self.origin) != 3 or len(self.direction) != 9:
            raise ValueError("a Geometry is 3-D: shape, spacing and origin of 3 values, direction of 9")
        if min(self.spacing) <= 0:
            raise ValueError(f"voxel spacing must be positive, got {self.spacing}")

    @property
    def direction_matrix(self) -> np.ndarray:
        """3x3 matrix whose columns are the unit directions of i, j and k in LPS."""
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def size_ijk(self) -> tuple[int, int, int]:
        return (self.shape[2], self.shape[1], self.shape[0])

    @property
    def index_to_physical_matrix(self) -> np.ndarray:
        """4x4 homogeneous matrix M with ``[x, y, z, 1] = M @ [i, j, k, 1]``."""
        m = np.eye(4)
        m[:3, :3] = self.direction_matrix * np.asarray(self.spacing)[None, :]
        m[:3, 3] = self.origin
        return m

    @property
    def physical_to_index_matrix(self) -> np.ndarray:
        return np.linalg.inv(self.index_to_physical_matrix)

    def index_to_physical(self, ijk: np.ndarray) -> np.ndarray:
        """Continuous indices ``(..., 3)`` in (i, j, k) order to LPS points ``(..., 3)``."""
        m = self.index_to_physical_matrix
        return np.asarray(ijk, dtype=np.float64) @ m[:3, :3].T + m[:3, 3]

    def physical_to_index(self, xyz: np.ndarray) -> np.ndarray:
        """LPS points ``(..., 3)`` to continuous indices ``(..., 3)`` in (i, j, k) order."""
        m = self.physical_to_index_matrix
        return np.asarray(xyz, dtype=np.float64) @ m[:3, :3].T + m[:3, 3]

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    def corners_physical(self) -> np.ndarray:
        """The 8 corner voxel centres, ``(8, 3)`` LPS."""
        ni, nj, nk = self.size_ijk
        corners = np.array([[i, j, k] for i in (0, ni - 1) for j in (0, nj - 1) for k in (0, nk - 1)], float)
        return self.index_to_physical(corners)

    def same_grid(self, other: Geometry, tol_mm: float = 1e-3) -> bool:
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=tol_mm)
            and np.allclose(self.origin, other.origin, atol=tol_mm)
            and np.allclose(self.direction, other.direction, atol=1e-5)
        )

    def sub_grid(self, start_kji: tuple[int, int, int], stop_kji: tuple[int, int, int]) -> Geometry:
        """The geometry of ``array[k0:k1, j0:j1, i0:i1]``."""
        k0, j0, i0 = start_kji
        k1, j1, i1 = stop_kji
        origin = self.index_to_physical(np.array([i0, j0, k0], float))
        return replace(self, shape=(k1 - k0, j1 - j0, i1 - i0), origin=tuple(origin))

    def to_dict(self) -> dict:
        return {
            "shape": list(self.shape),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Geometry:
        return cls(tuple(d["shape"]), tuple(d["spacing"]), tuple(d["origin"]), tuple(d["direction"]))

    def reference_image(self, pixel_type: int = sitk.sitkUInt8) -> sitk.Image:
        """A zero-filled SimpleITK image on this grid: a resampling reference (it allocates the whole grid)."""
        img = sitk.Image(list(self.size_ijk), pixel_type)
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img


def nonzero_box(mask: np.ndarray, pad: int = 0) -> tuple[slice, ...] | None:
    """The bounding box of ``mask``'s non-zero voxels grown by ``pad`` per side (within the array), as slices;
    None when it has none."""
    box = []
    for axis in range(mask.ndim):
        rows = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if rows.size == 0:
            return None
        box.append(slice(max(int(rows[0]) - pad, 0), min(int(rows[-1]) + pad + 1, mask.shape[axis])))
    return tuple(box)


@dataclass
class Volume:
    """A voxel array on a ``Geometry``. CT volumes hold Hounsfield units; masks hold 0/1 (uint8)."""

    array: np.ndarray
    geometry: Geometry
    meta: dict = field(default_factory=dict)  # e.g. DICOM UIDs in slice order, provenance

    def __post_init__(self) -> None:
        if tuple(self.array.shape) != tuple(self.geometry.shape):
            raise ValueError(f"array shape {self.array.shape} does not match geometry shape {self.geometry.shape}")

    def to_sitk(self) -> sitk.Image:
        arr = self.array.astype(np.uint8) if self.array.dtype == bool else self.array
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(self.geometry.spacing)
        img.SetOrigin(self.geometry.origin)
        img.SetDirection(self.geometry.direction)
        return img

    @classmethod
    def from_sitk(cls, img: sitk.Image, meta: dict | None = None) -> Volume:
        if img.GetDimension() != 3:
            raise ValueError(f"expected a 3-D image, got {img.GetDimension()}-D")
        arr = sitk.GetArrayFromImage(img)
        geom = Geometry(arr.shape, img.GetSpacing(), img.GetOrigin(), img.GetDirection())
        return cls(arr, geom, dict(meta or {}))

    def with_array(self, array: np.ndarray) -> Volume:
        return Volume(array, self.geometry, dict(self.meta))
