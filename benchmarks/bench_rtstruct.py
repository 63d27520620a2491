"""How long writing and reading an RTSTRUCT takes, ours against rt-utils, on a clinical grid.

Why: a job's last step writes one structure set of ~36 OARs on a 512x512x200 CT, and it must not dominate the
job. rt-utils (the usual helper) is the point of comparison; its file is also read back with our reader, which
shows what tracing contours through boundary voxel centres costs in volume.

Run: ``.venv/bin/python benchmarks/bench_rtstruct.py`` (about a minute; writes a temporary CT series).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom

from imaging.ct_writer import CtSeriesInfo, write_ct_series
from imaging.rtstruct import DEFAULT_COLORS, CtReference, RoiSpec, read_rtstruct, write_rtstruct
from imaging.volume import Geometry, Volume


def ellipsoid_masks(geometry: Geometry, count: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` ellipsoids, volumes log-spaced from 0.1 cc (a lens) to 1400 cc (a brain), each drawn in its box."""
    rng = np.random.default_rng(seed)
    shape = np.array(geometry.shape)
    spacing_kji = np.array(geometry.spacing[::-1])
    masks = []
    for volume_cc in np.geomspace(0.1, 1400.0, count):
        radius_mm = (3 * volume_cc * 1000 / (4 * np.pi)) ** (1 / 3) * np.array([1.2, 0.8, 1.0])  # k, j, i
        half = np.ceil(radius_mm / spacing_kji).astype(int) + 1
        centre = np.array([rng.uniform(h, n - h) for h, n in zip(half, shape, strict=True)])
        lo = np.maximum(np.floor(centre - half).astype(int), 0)
        hi = np.minimum(np.ceil(centre + half).astype(int) + 1, shape)
        axes = np.ogrid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        inside = sum(((x - c) * s / r) ** 2 for x, c, s, r in zip(axes, centre, spacing_kji, radius_mm, strict=True))
        mask = np.zeros(geometry.shape, np.uint8)
        mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = inside <= 1.0
        masks.append(mask)
    return masks


def ct_reference(paths: list[Path], geometry: Geometry) -> CtReference:
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    return CtReference(
        geometry,
        tuple(h.SOPInstanceUID for h in headers),
        headers[0].SOPClassUID,
        headers[0].StudyInstanceUID,
        headers[0].SeriesInstanceUID,
        headers[0].FrameOfReferenceUID,
        {k: str(headers[0].get(k, "")) for k in ("PatientName", "PatientID", "StudyDate", "StudyTime", "StudyID")},
    )


def contour_statistics(path: Path, geometry: Geometry) -> tuple[int, dict[str, float]]:
    """The longest ContourData number (characters) and each ROI's volume from its polygon areas (voxels).

    The ellipsoids have no holes, so the areas simply add up; this is the volume a planning system reports.
    """
    ds = pydicom.dcmread(path)
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    longest = 0
    volumes = {}
    for roi_contour in ds.ROIContourSequence:
        area = 0.0
        for contour in roi_contour.get("ContourSequence", []):
            texts = contour.get_item(0x30060050).value.rstrip(b" ").split(b"\\")
            longest = max(longest, max(len(t) for t in texts))
            ij = geometry.physical_to_index(np.array(texts, float).reshape(-1, 3))[:, :2]
            x, y = ij[:, 0], ij[:, 1]
            area += 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
        volumes[names[int(roi_contour.ReferencedROINumber)]] = area
    return longest, volumes


def best_of(repeats: int, action) -> float:
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        timings.append(time.perf_counter() - start)
    return min(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rois", type=int, default=36)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-rt-utils", action="store_true")
    args = parser.parse_args()

    geometry = Geometry((args.slices, 512, 512), (0.98, 0.98, 2.5), (-250.0, -250.0, -700.0))
    masks = ellipsoid_masks(geometry, args.rois)
    voxels = [int(np.count_nonzero(m)) for m in masks]
    cc = geometry.voxel_volume_mm3 / 1000
    print(
        f"{args.rois} ellipsoids on {geometry.size_ijk} voxels of {geometry.spacing} mm: "
        f"{min(voxels) * cc:.2f} to {max(voxels) * cc:.0f} cc, {sum(voxels) * cc:.0f} cc in all"
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = write_ct_series(
            Volume(np.full(geometry.shape, -1000, np.int16), geometry),
            folder / "ct",
            CtSeriesInfo(uid_seed="bench"),
        )
        ct = ct_reference(paths, geometry)
        specs = [RoiSpec(f"OAR {n:02d}", DEFAULT_COLORS[n % len(DEFAULT_COLORS)]) for n in range(args.rois)]
        ours = folder / "ours.dcm"
        write_s = best_of(args.repeats, lambda: write_rtstruct(ct, dict(zip(specs, masks, strict=True)), ours))
        read_s = best_of(args.repeats, lambda: read_rtstruct(ours, ct))
        rows = [("oarmorph", write_s, read_s, ours)]

        if not args.skip_rt_utils:
            from rt_utils import RTStructBuilder

            theirs = folder / "rt_utils.dcm"
            start = time.perf_counter()
            builder = RTStructBuilder.create_new(dicom_series_path=str(folder / "ct"))
            load_s = time.perf_counter() - start
            start = time.perf_counter()
            for spec, mask in zip(specs, masks, strict=True):  # rt-utils wants [rows, columns, slices]
                builder.add_roi(mask=np.transpose(mask, (1, 2, 0)).astype(bool), color=list(spec.color), name=spec.name)
            add_s = time.perf_counter() - start
            start = time.perf_counter()
            builder.save(str(theirs))
            save_s = time.perf_counter() - start
            rows.append(("rt-utils 1.2.7", add_s + save_s, None, theirs))
            print(f"rt-utils: loading the CT series {load_s:.2f} s, add_roi x{args.rois} {add_s:.2f} s, ", end="")
            print(f"save {save_s:.2f} s")

        print()
        print(
            f"{'writer':15s} {'write s':>7s} {'read s':>6s} {'file MB':>7s} {'max DS':>6s}   volume / original volume"
        )
        for name, write_s, read_s, path in rows:
            back = read_rtstruct(path, ct)
            longest, polygon_volumes = contour_statistics(path, geometry)
            read_back = [np.count_nonzero(back.rois[s.name].mask) / v for s, v in zip(specs, voxels, strict=True)]
            polygons = [polygon_volumes[s.name] / v for s, v in zip(specs, voxels, strict=True)]
            read = f"{read_s:6.2f}" if read_s is not None else f"{'-':>6s}"
            print(
                f"{name:15s} {write_s:7.2f} {read} {path.stat().st_size / 1e6:7.2f} {longest:6d}   "
                f"mask read back: median {np.median(read_back):.3f}, min {np.min(read_back):.3f}; "
                f"polygons: median {np.median(polygons):.3f}, min {np.min(polygons):.3f}"
            )
    print(f"write: best of {args.repeats} for oarmorph, file included; rt-utils: add_roi for every mask + save.")
    print("read: oarmorph's reader, every ROI to a mask on the CT grid. max DS: longest ContourData number.")
    print("mask read back: voxels our reader fills / original voxels (centres exactly on an outline count on")
    print("left and top edges only); polygons: volume from the contour areas, as a planning system reports it.")


if __name__ == "__main__":
    main()
