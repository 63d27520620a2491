"""Pseudo-labels (paper, Sec. "Dataset"): a separately trained supervised CNN fills in the OARs a patient lacks.

A small 3D U-Net (one sigmoid channel per OAR: OARs may overlap, so the labels are multi-label, not a softmax)
sees a cached canonical case at a low resolution (the image and its "known" mask as two channels) and is trained
on the OARs each patient has: masked soft Dice + BCE, counted only on the channels the patient has, so a patient
without an OAR gives that channel no gradient. ``fill_cache`` then predicts the OARs each case of a cache lacks,
upsamples them to the 128^3 canonical grid and writes a new cache (same format, readable by
``training.data.load_split``) whose clinical masks are those of the source, byte for byte, plus the filled ones;
``pseudolabels.json`` in it (and a ``pseudo_labels`` key in each case's meta, which ``load_cached`` ignores) says
which OARs are pseudo-labels. Training uses them by pointing a config's ``cache_train`` at the filled cache.

Checkpoints (``latest.pt``, ``best.pt``), ``log.csv`` and ``validation.json`` go to the output folder; an
interrupted run resumes from ``latest.pt``.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .cache import CachedCase, load_cached, save_cached
from .data import CaseTensors, cache_paths, load_split
from .networks import unet_features

DEFAULT_OARS = ["Bone_Mandible", "Parotid_L", "Parotid_R", "SpinalCord", "Brainstem", "Esophagus_S", "Larynx_SG"]
RECORD = "pseudolabels.json"


@dataclass
class PseudoLabelConfig:
    cache: str = "cache/openkbp/train"
    validation: str | None = "cache/openkbp/validation"
    out: str = "runs/pseudolabel"
    oars: list[str] = field(default_factory=lambda: list(DEFAULT_OARS))
    shape: tuple[int, int, int] = (64, 64, 64)
    widths: tuple[int, ...] = (8, 16, 32, 64)
    lr: float = 1e-3
    steps: int = 2000
    batch_size: int = 1
    bce_weight: float = 1.0
    max_shift: int = 3  # augmentation: random whole-voxel shift of each training case, at most this per axis
    seed: int = 0
    threads: int = 1
    validate_every: int = 100
    checkpoint_every: int = 25

    def __post_init__(self) -> None:
        self.shape = tuple(self.shape)
        self.widths = tuple(self.widths)
        self.oars = list(self.oars)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, padding=1),
        nn.InstanceNorm3d(cout, affine=True),
        nn.LeakyReLU(0.1),
        nn.Conv3d(cout, cout, 3, padding=1),
        nn.InstanceNorm3d(cout, affine=True),
        nn.LeakyReLU(0.1),
    )


class SegUNet(nn.Module):
    """A plain 3D U-Net to one logit per OAR (two convolutions with instance norm per level)."""

    def __init__(self, n_oars: int, widths: tuple[int, ...] = (8, 16, 32, 64), in_channels: int = 2) -> None:
        super().__init__()
        self.enc = nn.ModuleList()
        cin = in_channels
        for w in widths[:-1]:
            self.enc.append(_block(cin, w))
            cin = w
        self.bottom = _block(cin, widths[-1])
        self.dec = nn.ModuleList()
        cin = widths[-1]
        for w in reversed(widths[:-1]):
            self.dec.append(_block(cin + w, w))
            cin = w
        self.head = nn.Conv3d(cin, n_oars, 1)
        nn.init.constant_(self.head.bias, -2.0)  # OARs are small: start with low probabilities

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(unet_features(self.enc, self.bottom, self.dec, x))


def masked_dice_bce(
    logits: torch.Tensor, target: torch.Tensor, present: torch.Tensor, bce_weight: float = 1.0, eps: float = 1.0
) -> dict[str, torch.Tensor]:
    """Soft Dice + ``bce_weight`` x BCE per (case, OAR), averaged over the OARs the cases have.

    ``logits``, ``target``: [b, n_oars, k, j, i]; ``present``: [b, n_oars] 0/1. An absent OAR's terms are
    multiplied by 0, so its channel gets no gradient from that case. A batch without any OAR gives 0.
    """
    dims = (2, 3, 4)
    p = torch.sigmoid(logits)
    dice = 1.0 - (2.0 * (p * target).sum(dims) + eps) / (p.sum(dims) + target.sum(dims) + eps)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dims)
    count = present.sum().clamp_min(1.0)
    terms = {"dice": (dice * present).sum() / count, "bce": (bce * present).sum() / count}
    terms["total"] = terms["dice"] + bce_weight * terms["bce"]
    return terms


def _inputs(case: CaseTensors) -> torch.Tensor:
    return torch.cat([case.image.float(), case.known.float()], dim=0)  # [2, k, j, i]


def _shifted(x: torch.Tensor, shift: tuple[int, int, int]) -> torch.Tensor:
    """``x`` [c, k, j, i] moved by whole voxels (zeros come in)."""
    out = x
    for axis, d in enumerate(shift):
        if d == 0:
            continue
        dim = axis + 1
        n = out.shape[dim]
        pad = torch.zeros_like(out.narrow(dim, 0, abs(d)))
        out = (
            torch.cat([pad, out.narrow(dim, 0, n - d)], dim)
            if d > 0
            else torch.cat([out.narrow(dim, -d, n + d), pad], dim)
        )
    return out


def _batch(cases: list[CaseTensors], cfg: PseudoLabelConfig, gen: torch.Generator):
    xs, ys, ps = [], [], []
    for _ in range(cfg.batch_size):
        case = cases[int(torch.randint(len(cases), (1,), generator=gen))]
        x, y = _inputs(case), case.masks.float()
        if cfg.max_shift:
            s = tuple(int(v) for v in torch.randint(-cfg.max_shift, cfg.max_shift + 1, (3,), generator=gen))
            x, y = _shifted(x, s), _shifted(y, s)
        xs.append(x)
        ys.append(y)
        ps.append(case.present)
    return torch.stack(xs), torch.stack(ys), torch.stack(ps)


def _dice(a: torch.Tensor, b: torch.Tensor) -> float:
    denom = float(a.sum() + b.sum())
    return 2.0 * float((a & b).sum()) / denom if denom else 1.0


def _summary(per: dict[str, list[float]]) -> dict:
    means = {o: float(np.mean(v)) for o, v in per.items() if v}
    return {
        "per_oar": means,
        "n": {o: len(v) for o, v in per.items() if v},
        "mean": float(np.mean(list(means.values()))) if means else 0.0,
    }


def evaluate_low_res(model: SegUNet, cases: list[CaseTensors], oars: list[str]) -> dict:
    """Mean Dice per OAR at the training resolution (threshold 0.5), over the cases that have it."""
    model.eval()
    per: dict[str, list[float]] = {o: [] for o in oars}
    with torch.no_grad():
        for case in cases:
            pred = model(_inputs(case)[None])[0] >= 0.0
            for n, o in enumerate(oars):
                if case.present[n] > 0:
                    per[o].append(_dice(pred[n], case.masks[n].float() >= 0.5))
    model.train()
    return _summary(per)


def train_pseudolabel(cfg: PseudoLabelConfig, log: Callable[[str], None] = print) -> Path:
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_cases = [c for c in load_split(cfg.cache, cfg.oars, cfg.shape) if c.present.sum() > 0]
    val_cases = load_split(cfg.validation, cfg.oars, cfg.shape) if cfg.validation else []
    log(f"{len(train_cases)} training and {len(val_cases)} validation cases at {cfg.shape}")
    model = SegUNet(len(cfg.oars), cfg.widths)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    state = {"step": 0, "best": -1.0, "history": []}
    latest = out / "latest.pt"
    if latest.is_file():
        ckpt = torch.load(latest, weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
        gen.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["torch_rng"])
        log(f"resumed at step {state['step']} (best validation Dice {state['best']:.3f})")

    def save(path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "state": state,
                "generator": gen.get_state(),
                "torch_rng": torch.get_rng_state(),
                "config": asdict(cfg),
            },
            tmp,
        )
        tmp.replace(path)

    log_path = out / "log.csv"
    new_log = not log_path.is_file()
    with log_path.open("a", newline="") as fh:
        writer = csv.writer(fh)
        if new_log:
            writer.writerow(["step", "seconds", "total", "dice", "bce", "val_dice"])
        start, first_step = time.perf_counter(), state["step"]
        while state["step"] < cfg.steps:
            x, y, present = _batch(train_cases, cfg, gen)
            terms = masked_dice_bce(model(x), y, present, cfg.bce_weight)
            opt.zero_grad(set_to_none=True)
            terms["total"].backward()
            opt.step()
            state["step"] += 1
            step = state["step"]
            row = [step, round(time.perf_counter() - start, 2)] + [
                round(float(terms[k].detach()), 5) for k in ("total", "dice", "bce")
            ]
            val = ""
            last = step == cfg.steps
            if val_cases and (step % cfg.validate_every == 0 or last):
                summary = evaluate_low_res(model, val_cases, cfg.oars)
                val = round(summary["mean"], 4)
                state["history"].append({"step": step, **summary})
                (out / "validation.json").write_text(json.dumps(state["history"], indent=2))
                if summary["mean"] > state["best"]:
                    state["best"] = summary["mean"]
                    save(out / "best.pt")
                log(
                    f"step {step}: validation Dice {summary['mean']:.3f} "
                    + " ".join(f"{o}={d:.2f}" for o, d in summary["per_oar"].items())
                )
            writer.writerow([*row, val])
            if step % 10 == 0 or last:
                value = {k: float(v.detach()) for k, v in terms.items()}
                fh.flush()
                per_step = (time.perf_counter() - start) / max(step - first_step, 1)
                eta = int(per_step * (cfg.steps - step))
                log(
                    f"step {step}/{cfg.steps} loss {value['total']:.4f} dice {value['dice']:.4f} "
                    f"bce {value['bce']:.4f} ({per_step:.2f} s/step, ETA {eta // 3600}:{eta % 3600 // 60:02d} h)"
                )
            if step % cfg.checkpoint_every == 0 or last:
                save(latest)
                if not val_cases:
                    save(out / "best.pt")  # without a validation split, the best is the latest
    return out


def load_model(path: str | Path) -> tuple[SegUNet, PseudoLabelConfig]:
    ckpt = torch.load(path, weights_only=False)
    cfg = PseudoLabelConfig(**ckpt["config"])
    model = SegUNet(len(cfg.oars), cfg.widths)
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model, cfg


def _to_shape(x: np.ndarray, shape: tuple[int, int, int]) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None]
    if tuple(t.shape[2:]) != tuple(shape):
        t = F.interpolate(t, size=shape, mode="area")  # as training.data.load_case
    return t[0]


def predict_logits(model: SegUNet, cfg: PseudoLabelConfig, case: CachedCase, oars: list[str]) -> torch.Tensor:
    """The logits of ``oars`` on the case's own (canonical, 128^3) grid: predicted at the model's resolution and
    upsampled trilinearly (a logit of 0 is probability 0.5)."""
    x = torch.cat([_to_shape(case.image, cfg.shape), _to_shape(case.known, cfg.shape)])[None]
    with torch.no_grad():
        logits = model(x)[:, [cfg.oars.index(o) for o in oars]]
        if tuple(logits.shape[2:]) != case.image.shape:
            logits = F.interpolate(logits, size=case.image.shape, mode="trilinear", align_corners=False)
    return logits[0]


def pseudo_masks(
    model: SegUNet,
    cfg: PseudoLabelConfig,
    case: CachedCase,
    oars: list[str],
    threshold: float = 0.5,
    soft: bool = False,
) -> dict[str, np.ndarray]:
    """The predicted masks of ``oars`` on the case's grid, kept inside the voxels its CT holds (clinical OpenKBP
    masks lie there too): binary (probability >= threshold) or, with ``soft``, the probabilities."""
    if not oars:
        return {}
    prob = torch.sigmoid(predict_logits(model, cfg, case, oars)).numpy()
    inside = case.known >= 0.5
    out = {}
    for n, o in enumerate(oars):
        out[o] = (prob[n] * inside if soft else (prob[n] >= threshold) & inside).astype(np.float32)
    return out


def evaluate_pseudolabel(
    model_path: str | Path, cache_dir: str | Path, threshold: float = 0.5, threads: int = 1, progress=None
) -> dict:
    """Dice per OAR of the network's masks (exactly those ``fill_cache`` writes) against the clinical masks of a
    split, on the 128^3 canonical grid (threshold 0.5 on both)."""
    torch.set_num_threads(threads)
    model, cfg = load_model(model_path)
    per: dict[str, list[float]] = {o: [] for o in cfg.oars}
    for n, path in enumerate(cache_paths(cache_dir)):
        case = load_cached(path)
        have = [o for o in cfg.oars if o in case.masks]
        for o, m in pseudo_masks(model, cfg, case, have, threshold).items():
            per[o].append(_dice(torch.from_numpy(m >= 0.5), torch.from_numpy(case.masks[o] >= 0.5)))
        if progress:
            progress(n, case.case_id)
    return _summary(per)


def fill_cache(
    model_path: str | Path,
    cache_dir: str | Path,
    out_dir: str | Path,
    threshold: float = 0.5,
    min_voxels: int = 20,
    soft: bool = False,
    threads: int = 1,
    progress: Callable[[int, str, list[str]], None] | None = None,
) -> dict:
    """Write a copy of a cache where every OAR of the model a case lacks is filled by the network's mask.

    Clinical masks, image, known mask and frame are kept as they are (cases with nothing to fill are copied
    file for file). A prediction with fewer than ``min_voxels`` voxels (e.g. an OAR outside the kept CT) is not
    added: an empty "label" would tell the registration the OAR is nowhere. Returns (and writes as
    ``pseudolabels.json``) the record: for each case the OARs filled, and those left out as empty.
    """
    torch.set_num_threads(threads)
    source, out = Path(cache_dir), Path(out_dir)
    if source.resolve() == out.resolve():
        raise ValueError("the filled cache must be a new folder, not the source cache")
    model, cfg = load_model(model_path)
    out.mkdir(parents=True, exist_ok=True)
    record: dict = {
        "source": str(source),
        "model": str(model_path),
        "oars": cfg.oars,
        "threshold": threshold,
        "soft": soft,
        "min_voxels": min_voxels,
        "cases": {},
        "left_empty": {},
    }
    for n, path in enumerate(cache_paths(source)):
        case = load_cached(path)
        missing = [o for o in cfg.oars if o not in case.masks]
        predicted = pseudo_masks(model, cfg, case, missing, threshold, soft)
        filled = {o: m for o, m in predicted.items() if int((m >= 0.5).sum()) >= min_voxels}
        target = out / path.name
        tmp = target.with_suffix(".tmp.npz")
        if filled:
            full = CachedCase(case.case_id, case.image, case.known, {**case.masks, **filled}, case.frame)
            save_cached(full, tmp, extra_meta={"pseudo_labels": sorted(filled)})
        else:
            shutil.copyfile(path, tmp)
        tmp.replace(target)
        record["cases"][case.case_id] = sorted(filled)
        empty = sorted(set(missing) - set(filled))
        if empty:
            record["left_empty"][case.case_id] = empty
        if progress:
            progress(n, case.case_id, sorted(filled))
    (out / RECORD).write_text(json.dumps(record, indent=2))
    return record
