"""Draw the phantom atlas as one PNG sheet (docs/phantom/atlas.png) for people to judge it by eye.

Axial slices from the orbits to the shoulders, a mid-sagittal and a coronal slice through the cochleae in a
soft-tissue window (W400/L40), one bone window and one brain window, every OAR outlined in its catalogue
colour and labelled. Axial slices are seen from the feet (the patient's right on the image's left), the
coronal from the front, the sagittal from the patient's left (anterior on the left).

Drawn by ``oarmorph phantom sheets`` with the patient sheets (``phantom.sheets``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from anatomy.catalogue import BY_NAME, OARS

from .atlas import AtlasPhantom

SOFT_TISSUE = (400.0, 40.0)  # window width, level
BONE = (2000.0, 500.0)
BRAIN = (80.0, 35.0)

HEAD_BOX = ((-105.0, 105.0), (-128.0, 112.0))  # x, y ranges of the axial panels through head and neck
SHOULDER_BOX = ((-200.0, 200.0), (-130.0, 140.0))

# (title, plane, position mm, window, x range, y range, grid cell: rows, columns)
PANELS: tuple[tuple[str, str, float, tuple[float, float], tuple, tuple, tuple[slice, slice]], ...] = (
    ("mid-sagittal (x 0)", "sagittal", 0.0, SOFT_TISSUE, (-130.0, 140.0), (-400.0, 8.0), (slice(0, 3), slice(0, 2))),
    (
        "coronal through the cochleae (y -2)",
        "coronal",
        -2.0,
        SOFT_TISSUE,
        (-200.0, 200.0),
        (-400.0, 8.0),
        (slice(0, 3), slice(2, 5)),
    ),
    ("axial, orbits (z -108)", "axial", -108.0, SOFT_TISSUE, *HEAD_BOX, (0, 5)),
    ("axial, parotids and C1 (z -160)", "axial", -160.0, SOFT_TISSUE, *HEAD_BOX, (0, 6)),
    ("axial, oral cavity and C2 (z -182)", "axial", -182.0, SOFT_TISSUE, *HEAD_BOX, (1, 5)),
    ("axial, supraglottis and hyoid (z -222)", "axial", -222.0, SOFT_TISSUE, *HEAD_BOX, (1, 6)),
    ("axial, glottis (z -254)", "axial", -254.0, SOFT_TISSUE, *HEAD_BOX, (2, 5)),
    ("axial, thyroid (z -284)", "axial", -284.0, SOFT_TISSUE, *HEAD_BOX, (2, 6)),
    ("axial, thoracic inlet (z -310)", "axial", -310.0, SOFT_TISSUE, *SHOULDER_BOX, (3, 5)),
    ("axial, shoulders (z -345)", "axial", -345.0, SOFT_TISSUE, *SHOULDER_BOX, (3, 6)),
    ("axial, skull base (z -122)", "axial", -122.0, BONE, *HEAD_BOX, (3, 0)),
    ("axial, lateral ventricles (z -62)", "axial", -62.0, BRAIN, *HEAD_BOX, (3, 1)),
)
LEGEND_CELL = (3, slice(2, 5))
GRID_SHAPE = (4, 7)


def _plane(volume: np.ndarray, atlas: AtlasPhantom, plane: str, position: float) -> tuple[np.ndarray, list[float]]:
    """A slice with k, j or i fixed, oriented for display, and its extent (left, right, bottom, top) in mm."""
    g = atlas.ct.geometry
    s, o = g.spacing, g.origin
    nk, nj, ni = g.shape
    x0, x1 = o[0], o[0] + (ni - 1) * s[0]
    y0, y1 = o[1], o[1] + (nj - 1) * s[1]
    z0, z1 = o[2], o[2] + (nk - 1) * s[2]
    if plane == "axial":
        k = round((position - o[2]) / s[2])
        return volume[k], [x0, x1, y1, y0]  # rows run to posterior: anterior at the top
    if plane == "coronal":
        j = round((position - o[1]) / s[1])
        return volume[::-1, j, :], [x0, x1, z0, z1]  # k runs upwards: flip so the head is at the top
    i = round((position - o[0]) / s[0])
    return volume[::-1, :, i], [y0, y1, z0, z1]


def _mask_plane(atlas: AtlasPhantom, name: str, plane: str, position: float) -> np.ndarray | None:
    """The OAR's mask on the slice (on the CT grid), from its crop; None where the slice misses it."""
    crop, cg = atlas.masks[name]
    g = atlas.ct.geometry
    start = np.rint((np.asarray(cg.origin) - np.asarray(g.origin)) / np.asarray(g.spacing)).astype(int)
    i0, j0, k0 = start
    nk, nj, ni = crop.shape
    axis = {"axial": 2, "coronal": 1, "sagittal": 0}[plane]
    index = round((position - g.origin[axis]) / g.spacing[axis])
    lo = (i0, j0, k0)[axis]
    n = (ni, nj, nk)[axis]
    if not lo <= index < lo + n:
        return None
    if plane == "axial":
        out = np.zeros(g.shape[1:], np.uint8)
        out[j0 : j0 + nj, i0 : i0 + ni] = crop[index - k0]
        return out
    if plane == "coronal":
        out = np.zeros((g.shape[0], g.shape[2]), np.uint8)
        out[k0 : k0 + nk, i0 : i0 + ni] = crop[:, index - j0, :]
        return out[::-1]
    out = np.zeros((g.shape[0], g.shape[1]), np.uint8)
    out[k0 : k0 + nk, j0 : j0 + nj] = crop[:, :, index - i0]
    return out[::-1]


def _label(ax, name: str, colour, mask: np.ndarray, extent: list[float], placed: list, outline) -> None:
    """Write ``name`` on its outline (its largest piece on the slice), or beside it where that would cover an
    earlier label."""
    pieces, n = ndimage.label(mask)
    largest = 1 + int(np.argmax(ndimage.sum(mask, pieces, index=range(1, n + 1))))
    rows, cols = np.nonzero(pieces == largest)
    width_mm = (extent[1] - extent[0]) / mask.shape[1]
    height_mm = (extent[3] - extent[2]) / mask.shape[0]

    def u_of(column: float) -> float:
        return extent[0] + (column + 0.5) * width_mm

    def v_of(row: float) -> float:
        return extent[3] - (row + 0.5) * height_mm

    centre = (u_of(cols.mean()), v_of(rows.mean()))
    candidates = [
        centre,
        (centre[0], v_of(rows.min()) + 6.0),
        (centre[0], v_of(rows.max()) - 6.0),
        (u_of(cols.max()) + 4.0 + 1.6 * len(name), centre[1]),
        (u_of(cols.min()) - 4.0 - 1.6 * len(name), centre[1]),
    ]
    half_w, half_h = 3.3 * len(name), 6.0  # label half extent in pixels (7 pt text at 100 dpi)

    def box_at(u: float, v: float) -> tuple[float, float, float, float]:
        px, py = ax.transData.transform((u, v))
        return px - half_w, py - half_h, px + half_w, py + half_h

    def free(box: tuple[float, float, float, float]) -> bool:
        return not any(b[0] < box[2] and box[0] < b[2] and b[1] < box[3] and box[1] < b[3] for b in placed)

    u, v = next((p for p in candidates if free(box_at(*p))), centre)
    placed.append(box_at(u, v))
    ax.text(u, v, name, color=colour, fontsize=7, ha="center", va="center", path_effects=outline, clip_on=True)


def atlas_sheet(atlas: AtlasPhantom, path: str | Path) -> Path:
    """Write the sheet of ``atlas`` to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patheffects as effects
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(28.0, 17.0), facecolor="black")
    grid = fig.add_gridspec(*GRID_SHAPE, left=0.005, right=0.995, bottom=0.005, top=0.955, wspace=0.02, hspace=0.1)
    outline = [effects.withStroke(linewidth=2.0, foreground="black")]
    for title, plane, position, (width, level), xr, yr, cell in PANELS:
        ax = fig.add_subplot(grid[cell])
        ax.set_facecolor("black")
        image, extent = _plane(atlas.ct.array, atlas, plane, position)
        ax.imshow(
            image, cmap="gray", vmin=level - width / 2, vmax=level + width / 2, extent=extent, interpolation="nearest"
        )
        ax.set_xlim(*xr)
        ax.set_ylim((yr[1], yr[0]) if plane == "axial" else yr)
        ax.set_aspect("equal")
        ax.axis("off")
        ax.set_title(f"{title}  W{width:.0f}/L{level:.0f}", color="white", fontsize=11)
        ax.apply_aspect()  # the data-to-pixel transform the labels are placed with
        placed: list[tuple[float, float, float, float]] = []
        for oar in OARS:
            mask = _mask_plane(atlas, oar.name, plane, position)
            if mask is None or not mask.any():
                continue
            colour = tuple(c / 255 for c in BY_NAME[oar.name].color)
            ax.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=1.0, extent=extent, origin="upper")
            _label(ax, oar.name, colour, mask, extent, placed, outline)
    legend_ax = fig.add_subplot(grid[LEGEND_CELL])
    legend_ax.axis("off")
    for n, oar in enumerate(OARS):
        colour = tuple(c / 255 for c in oar.color)
        legend_ax.text(
            0.02 + 0.25 * (n // 9),
            0.95 - (n % 9) * 0.1,
            f"\u25a0 {oar.name}",
            color=colour,
            fontsize=11,
            transform=legend_ax.transAxes,
            va="top",
        )
    g = atlas.ct.geometry
    fig.suptitle(
        f"oarmorph phantom atlas: {g.spacing[0]:g} mm grid {g.shape[2]}x{g.shape[1]}x{g.shape[0]}, "
        "36 OARs in catalogue colours (axial seen from the feet, coronal from the front)",
        color="white",
        fontsize=13,
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, facecolor="black")
    plt.close(fig)
    return out
