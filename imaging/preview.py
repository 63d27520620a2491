"""Quick-look PNGs: three orthogonal slices of a volume, optionally with mask outlines.

For people, not for computation: demo output, phantom sheets, job QA pictures. Matplotlib is imported
lazily with the non-interactive Agg backend, so servers without a display can call it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .volume import Geometry


def _display_aspects(spacing_ijk: Sequence[float]) -> tuple[float, float, float]:
    si, sj, sk = spacing_ijk
    return sj / si, sk / si, sk / sj  # axial (j over i), coronal (k over i), sagittal (k over j)


def save_orthogonal_png(
    image: np.ndarray,
    path: str | Path,
    *,
    geometry: Geometry | None = None,
    masks: Mapping[str, tuple[np.ndarray, tuple[int, int, int]]] | None = None,
    centre_kji: Sequence[int] | None = None,
    window: tuple[float, float] | None = None,
    title: str = "",
    flip_k: bool = False,
) -> Path:
    """Axial, coronal and sagittal slices through ``centre_kji`` (default: the middle).

    ``masks``: name -> (mask [k, j, i] on the image grid, RGB colour 0..255); drawn as outlines.
    ``flip_k``: draw k upwards (for grids whose k runs from feet to head, so the head is at the top).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nk, nj, ni = image.shape
    ck, cj, ci = centre_kji if centre_kji is not None else (nk // 2, nj // 2, ni // 2)
    vmin, vmax = window if window is not None else (float(np.percentile(image, 1)), float(np.percentile(image, 99)))
    aspects = _display_aspects(geometry.spacing) if geometry is not None else (1.0, 1.0, 1.0)
    views = [
        ("axial", lambda a: a[ck], aspects[0]),
        ("coronal", lambda a: a[:, cj, :], aspects[1]),
        ("sagittal", lambda a: a[:, :, ci], aspects[2]),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.4), facecolor="black")
    for ax, (name, cut, aspect) in zip(axes, views, strict=True):
        plane = cut(image)
        origin = "lower" if (flip_k and name != "axial") else "upper"
        ax.imshow(plane, cmap="gray", vmin=vmin, vmax=vmax, aspect=aspect, origin=origin, interpolation="nearest")
        for mask_name, (mask, color) in (masks or {}).items():
            m = cut(mask)
            if m.any():
                ax.contour(
                    m.astype(float), levels=[0.5], colors=[tuple(c / 255 for c in color)], linewidths=0.8, origin=origin
                )
                del mask_name
        ax.set_title(name, color="white")
        ax.axis("off")
    if title:
        fig.suptitle(title, color="white")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90, facecolor="black")
    plt.close(fig)
    return out
