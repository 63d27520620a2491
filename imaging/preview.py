"""Quick-look PNGs: slices of a volume, optionally with mask outlines.

For people, not for computation: demo output, phantom sheets, job QA pictures. Matplotlib is imported
lazily with the non-interactive Agg backend, so servers without a display can call it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .volume import Geometry


@dataclass
class Panel:
    """One picture: a 2-D plane, its display aspect (row spacing / column spacing) and outlines to draw."""

    title: str
    image: np.ndarray
    aspect: float = 1.0
    masks: dict[str, tuple[np.ndarray, tuple[int, int, int]]] = field(default_factory=dict)  # name -> (2-D, RGB)
    flip_rows: bool = False  # draw row 0 at the bottom (e.g. k running from feet to head)
    window: tuple[float, float] | None = None


def save_panels_png(
    panels: Sequence[Panel], path: str | Path, *, title: str = "", columns: int | None = None, labels: bool = False
) -> Path:
    """A grid of panels on black, outlines in their colours; ``labels`` writes each outline's name once."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = columns or len(panels)
    rows = int(np.ceil(len(panels) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 5.2 * rows), facecolor="black", squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, panel in zip(axes.ravel(), panels, strict=False):
        origin = "lower" if panel.flip_rows else "upper"
        vmin, vmax = panel.window or (float(np.percentile(panel.image, 1)), float(np.percentile(panel.image, 99)))
        ax.imshow(
            panel.image, cmap="gray", vmin=vmin, vmax=vmax, aspect=panel.aspect, origin=origin, interpolation="nearest"
        )
        for name, (mask, color) in panel.masks.items():
            if not mask.any():
                continue
            rgb = tuple(c / 255 for c in color)
            rows, cols = np.arange(mask.shape[0]), np.arange(mask.shape[1])
            # explicit pixel coordinates: the outline lands on the image whichever way its rows are drawn
            ax.contour(cols, rows, mask.astype(float), levels=[0.5], colors=[rgb], linewidths=0.7)
            if labels:
                rr, cc = np.nonzero(mask)
                ax.text(cc.mean(), rr.mean(), name, color=rgb, fontsize=5, ha="center", va="center")
        ax.set_title(panel.title, color="white", fontsize=9)
    if title:
        fig.suptitle(title, color="white")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90, facecolor="black")
    plt.close(fig)
    return out


def orthogonal_panels(
    image: np.ndarray,
    *,
    geometry: Geometry | None = None,
    masks: Mapping[str, tuple[np.ndarray, tuple[int, int, int]]] | None = None,
    centre_kji: Sequence[int] | None = None,
    window: tuple[float, float] | None = None,
    flip_k: bool = False,
) -> list[Panel]:
    """Axial, coronal and sagittal panels through ``centre_kji`` (default: the middle) of a ``[k, j, i]`` volume."""
    nk, nj, ni = image.shape
    ck, cj, ci = centre_kji if centre_kji is not None else (nk // 2, nj // 2, ni // 2)
    si, sj, sk = geometry.spacing if geometry is not None else (1.0, 1.0, 1.0)
    cuts = [
        ("axial", lambda a: a[ck], sj / si, False),
        ("coronal", lambda a: a[:, cj, :], sk / si, flip_k),
        ("sagittal", lambda a: a[:, :, ci], sk / sj, flip_k),
    ]
    return [
        Panel(name, cut(image), aspect, {n: (cut(m), c) for n, (m, c) in (masks or {}).items()}, flip, window)
        for name, cut, aspect, flip in cuts
    ]


def save_orthogonal_png(image: np.ndarray, path: str | Path, *, title: str = "", **kwargs) -> Path:
    """Three orthogonal slices of a volume with optional outlines (see ``orthogonal_panels``)."""
    return save_panels_png(orthogonal_panels(image, **kwargs), path, title=title)
