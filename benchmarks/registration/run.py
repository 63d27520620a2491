"""Run the methods on the cohorts: one fixed image per patient, one warp and one set of metrics for every method.

Per patient: the CT is read, its canonical image made once (``pipeline.segment.align_window`` when the cohort's
model was trained with window alignment, as ``segment_ct`` does; every method gets that very image), then for
each method: its ``register`` (wall and CPU seconds), ``pipeline.segment.warp_atlas`` of the atlas OARs onto the
patient's own grid, ``imaging.metrics.folded_fraction`` of the field, and ``training.evaluate.compare`` of every
OAR against the patient's mask (Dice, HD95 mm). Seconds per case = the shared preprocessing + the method's
registration + its warp. Summaries are ``training.evaluate.summarise`` plus medians and time ratios.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

import numpy as np

from imaging.canonical import to_canonical
from imaging.metrics import folded_fraction
from model_export.card import ModelBundleError
from pipeline.atlas import SegmentationAtlas, load_atlas
from pipeline.segment import align_window, warp_atlas
from training.evaluate import compare, summarise, table_oars

from . import methods as M
from .cases import REPO, Cohort

Log = Callable[[str], None]
VERSIONED = (
    "numpy",
    "scipy",
    "SimpleITK",
    "antspyx",
    "itk-elastix",
    "itk",
    "onnxruntime",
    "onnxruntime-gpu",
    "torch",
)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def hardware() -> dict:
    model, cores = platform.processor() or "unknown", os.cpu_count()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                model = value.strip()
            elif key.strip() == "CPU(s)":
                cores = int(value.strip())
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    info = {"cpu_model": model, "cores": cores, "python": platform.python_version(), "platform": platform.platform()}
    if M.gpu_available():
        import torch

        info["gpu"] = torch.cuda.get_device_name()
    return info


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class LoadedCohort:
    """A cohort's atlas, its window alignment and the ONNX model when there is one (with why not, when not)."""

    def __init__(self, cohort: Cohort, threads: int, want_model: bool) -> None:
        self.register = None
        self.model_reason: str | None = None
        self.model_name: str | None = None
        self.mask_thresholds: dict[str, float] | None = None  # the model's calibrated levels, if its card has them
        self.align_windows = True  # what the trained models do; without a model, kept for every method alike
        if cohort.model_dir is not None and want_model:
            from model_export.bundle import load_model_dir
            from model_export.card import ModelBundleError, read_card, resolve_atlas_dir

            try:
                loaded = load_model_dir(cohort.model_dir, threads=threads, device="cpu")
                self.atlas: SegmentationAtlas = loaded.atlas
                self.align_windows = loaded.align_windows
                self.register = loaded.register
                self.model_name = loaded.name
                self.mask_thresholds = loaded.mask_thresholds
            except ModelBundleError as exc:  # e.g. model.onnx not rebuilt: the atlas the card names still serves
                self.model_reason = str(exc)
                card = read_card(cohort.model_dir)
                self.atlas = load_atlas(resolve_atlas_dir(cohort.model_dir, card, None), card["atlas"]["sha256"])
                self.align_windows = bool(card["align_windows"])
        elif cohort.model_dir is not None:
            from model_export.card import read_card, resolve_atlas_dir

            card = read_card(cohort.model_dir)
            self.atlas = load_atlas(resolve_atlas_dir(cohort.model_dir, card, None), card["atlas"]["sha256"])
            self.align_windows = bool(card["align_windows"])
        else:
            self.model_reason = "no oarmorph model for this cohort yet"
            self.atlas = load_atlas(cohort.atlas_dir)


def prepare_fixed(ct, atlas: SegmentationAtlas, align_windows: bool):
    """The fixed canonical image and its frame, exactly as ``pipeline.segment_ct`` makes them."""
    if align_windows:
        return align_window(ct, atlas)
    can = to_canonical(ct)
    return can.image, can.frame, (0, 0)


def run_case(
    case,
    adapters: dict[str, Callable],
    atlas,
    align_windows: bool,
    log: Log,
    levels: dict[str, dict[str, float] | None] | None = None,
) -> tuple[list, list]:
    """Every method on one patient; ``levels``: per method, the mask level per OAR it warps at (absent or None:
    0.5 for every OAR)."""
    levels = levels or {}
    ct = case.read_ct()
    truth = case.read_truth(ct)
    t0 = time.perf_counter()
    image, frame, shift = prepare_fixed(ct, atlas, align_windows)
    prep = time.perf_counter() - t0
    records, failures = [], []
    for name, register in adapters.items():
        try:
            c0, t1 = time.process_time(), time.perf_counter()
            field = np.asarray(register(image), np.float32)
            reg, cpu = time.perf_counter() - t1, time.process_time() - c0
            t2 = time.perf_counter()
            masks = warp_atlas(atlas, frame, field, ct.geometry, levels.get(name))
            warp = time.perf_counter() - t2
        except Exception as exc:  # a tool failing on one patient is a result, not the end of the run
            failures.append({"method": name, "case": case.case_id, "error": f"{type(exc).__name__}: {exc}"})
            log(f"  {case.case_id} {name}: FAILED ({type(exc).__name__}: {exc})")
            continue
        rec = {
            "method": name,
            "case": case.case_id,
            "seconds": prep + reg + warp,
            "stage_seconds": {"preprocessing": prep, "registration": reg, "warping": warp},
            "registration_cpu_seconds": cpu,
            "nonpositive_jacobian_percent": 100.0 * folded_fraction(field),
            "window_shift": list(shift),
            "oars": {o: compare(masks[o], truth[o], ct.geometry) for o in masks if o in truth},
        }
        records.append(rec)
        mean = np.mean([v["dice"] for v in rec["oars"].values()]) if rec["oars"] else float("nan")
        log(f"  {case.case_id} {name}: mean Dice {mean:.3f}, registration {reg:.1f} s (CPU {cpu:.1f} s)")
    return records, failures


def timing(records: list[dict], reference: str | None) -> dict:
    """Per method: median seconds per case (whole and registration), CPU per wall second, ratios to ``reference``."""
    out = {}
    for method in dict.fromkeys(r["method"] for r in records):
        mine = [r for r in records if r["method"] == method]
        reg = [r["stage_seconds"]["registration"] for r in mine]
        cpu = [r["registration_cpu_seconds"] for r in mine]
        out[method] = {
            "median_seconds": statistics.median(r["seconds"] for r in mine),
            "median_registration_seconds": statistics.median(reg),
            "registration_cpu_per_wall": sum(cpu) / max(sum(reg), 1e-9),
        }
    ref = out.get(reference) if reference else None
    for t in out.values():
        t["ratio_to_oarmorph"] = t["median_seconds"] / ref["median_seconds"] if ref else None
        t["registration_ratio_to_oarmorph"] = (
            t["median_registration_seconds"] / ref["median_registration_seconds"] if ref else None
        )
    return out


def run_cohort(
    cohort: Cohort, keys: Sequence[str], threads: int, log: Log = print, method_limits: dict[str, int] | None = None
) -> dict:
    """Every method on every patient of the cohort; a method in ``method_limits`` on its first N patients only."""
    limits = dict(method_limits or {})
    learned = [k for k in keys if M.METHODS[k].needs_model]
    loaded = LoadedCohort(cohort, threads, want_model=bool(learned))
    methods: dict[str, dict] = {}
    adapters: dict[str, Callable] = {}
    levels: dict[str, dict[str, float] | None] = {}
    for key in keys:
        info = M.METHODS[key]
        reason = M.unavailable(key, cohort.model_dir)
        if reason is None and info.needs_model and key != "oarmorph-gpu" and loaded.register is None:
            reason = loaded.model_reason or "the model could not be loaded"
        methods[info.name] = {"key": key, "kind": info.kind, "ran": reason is None, "reason": reason}
        calibrated = info.calibrated_levels and loaded.mask_thresholds is not None
        methods[info.name]["mask_levels"] = "calibrated per OAR (the model card)" if calibrated else "0.5"
        if calibrated:
            levels[info.name] = loaded.mask_thresholds
        if key in limits and limits[key] < len(cohort.cases):
            methods[info.name]["patients_limit"] = limits[key]
        if reason is not None:
            log(f"{cohort.key}: {info.name} skipped: {reason}")
            continue
        adapters[info.name] = M.build(key, loaded.atlas.image, threads, loaded.register, cohort.model_dir)
    log(f"{cohort.key}: {len(cohort.cases)} patients, atlas {loaded.atlas.name}, methods: {', '.join(adapters)}")
    records, failures = [], []
    for n, case in enumerate(cohort.cases):
        log(f"{cohort.key} {n + 1}/{len(cohort.cases)} {case.case_id}")
        here = {name: fn for name, fn in adapters.items() if n < limits.get(methods[name]["key"], len(cohort.cases))}
        recs, fails = run_case(case, here, loaded.atlas, loaded.align_windows, log, levels)
        records += recs
        failures += fails
    oars = table_oars(loaded.atlas.oars, records)
    reference = M.METHODS[M.REFERENCE].name
    return {
        "title": cohort.title,
        "note": cohort.note,
        "cases": [c.case_id for c in cohort.cases],
        "atlas": {"name": loaded.atlas.name, "sha256": loaded.atlas.sha256, "oars": loaded.atlas.oars},
        "model": loaded.model_name,
        "model_dir": str(cohort.model_dir) if cohort.model_dir else None,
        "align_windows": loaded.align_windows,
        "oars": oars,
        "methods": methods,
        "summary": summarise(records, oars),
        "timing": timing(records, reference if reference in adapters else None),
        "records": records,
        "failures": failures,
    }


def run_benchmark(
    cohorts: Sequence[Cohort],
    keys: Sequence[str],
    threads: int,
    quick: bool,
    skipped_cohorts: dict[str, str] | None = None,
    log: Log = print,
    note: str = "",
    method_limits: dict[str, int] | None = None,
) -> dict:
    started = dt.datetime.now(dt.UTC)
    load_before = os.getloadavg()
    result = {
        "meta": {
            "started_utc": started.isoformat(timespec="seconds"),
            "quick": quick,
            "threads": threads,
            "methods_requested": list(keys),
            "hardware": hardware(),
            "versions": {p: v for p in VERSIONED if (v := _version(p))},
            "git_commit": _git_commit(),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "load_average_start": [round(v, 2) for v in load_before],
            "note": note,
            "method_limits": dict(method_limits or {}),
        },
        "cohorts": {},
        "skipped_cohorts": dict(skipped_cohorts or {}),
    }
    for cohort in cohorts:
        try:
            result["cohorts"][cohort.key] = run_cohort(cohort, keys, threads, log, method_limits)
        except ModelBundleError as exc:  # its atlas is not there (e.g. the OpenKBP bundle not rebuilt)
            result["skipped_cohorts"][cohort.key] = str(exc)
            log(f"{cohort.key}: skipped: {exc}")
    result["meta"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    result["meta"]["wall_seconds"] = (dt.datetime.now(dt.UTC) - started).total_seconds()
    return result
