"""``oarmorph train CONFIG``: train a cascade on a cached cohort, resumable, with validation Dice and logs.

Each step registers the atlas (moving) to one training patient (fixed), with the paper's loss (Eq. 5):
MI after the affine block and after each dense block, 100 x MSE between the warped atlas OARs and the OARs the
patient has (Eq. 20), and 0.05 x the KL term of each dense block (Eq. 21) (or the smoothness / MMD terms of the
baselines). Checkpoints (latest, best) and a CSV log go to the run folder; an interrupted run resumes there.
"""

from __future__ import annotations

import csv
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from .cache import load_cached
from .cascade import Cascade, CascadeConfig, DenseBlockConfig
from .data import CaseTensors, choose_atlas, load_split
from .losses import gradient_smoothness, kl_divergence, mi_loss, mmd, segmentation_mse, segmentation_soft_dice

SEG_LOSSES = {"mse": segmentation_mse, "dice": segmentation_soft_dice}


@dataclass
class TrainConfig:
    name: str = "proposed_cpu"
    cache_train: str = "cache/openkbp/train"
    cache_validation: str = "cache/openkbp/validation"
    oars: list[str] = field(
        default_factory=lambda: [
            "Bone_Mandible",
            "Parotid_L",
            "Parotid_R",
            "SpinalCord",
            "Brainstem",
            "Esophagus_S",
            "Larynx_SG",
        ]
    )
    atlas_case: str | None = None  # None: choose_atlas
    align_windows: bool = False  # shift each case's window onto the atlas's first (imaging.canonical.window_shift)
    image_shape: tuple[int, int, int] = (64, 64, 64)
    model: dict = field(default_factory=dict)  # CascadeConfig fields
    lr: float = 1e-4
    steps: int = 20000
    seed: int = 0
    weight_mi: float = 1.0
    weight_seg: float = 100.0
    seg_loss: str = "mse"  # "mse": the paper's Eq. 20; "dice": soft Dice (segmentation_soft_dice, CPU recipe)
    weight_kl: float = 0.05
    weight_smooth: float = 0.0
    weight_mmd: float = 0.0
    prior_lambda: float = 25.0
    mi_samples: int | None = 60000
    validate_every: int = 250
    checkpoint_every: int = 50
    threads: int = 2
    run_dir: str = "runs"
    init_from: str | None = None  # a checkpoint whose weights start a new run (warm start; not a resume)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        data = yaml.safe_load(Path(path).read_text())
        if "image_shape" in data:
            data["image_shape"] = tuple(data["image_shape"])
        return cls(**data)


def build_model(cfg: TrainConfig) -> Cascade:
    m = dict(cfg.model)
    blocks = [
        DenseBlockConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in b.items()})
        for b in m.pop("dense_blocks", [{}, {}])
    ]
    for key in ("net_shape", "affine_widths"):
        if key in m:
            m[key] = tuple(m[key])
    return Cascade(CascadeConfig(image_shape=tuple(cfg.image_shape), dense_blocks=blocks, **m))


def dice_per_oar(warped: torch.Tensor, target: torch.Tensor, present: torch.Tensor) -> dict[int, float]:
    out = {}
    for n in range(target.shape[0]):
        if present[n] > 0:
            a, b = warped[n] >= 0.5, target[n] >= 0.5
            denom = float(a.sum() + b.sum())
            out[n] = 2.0 * float((a & b).sum()) / denom if denom else 1.0
    return out


def evaluate(model: Cascade, atlas: CaseTensors, cases: list[CaseTensors], oars: list[str]) -> dict:
    """Mean Dice per OAR (canonical grid, threshold 0.5) for the full cascade and the affine stage alone."""
    model.eval()
    scores: dict[str, dict[str, list[float]]] = {"cascade": {o: [] for o in oars}, "affine": {o: [] for o in oars}}
    with torch.no_grad():
        moving = atlas.image.float()[None]
        masks = atlas.masks.float()[None]
        for case in cases:
            out = model(case.image.float()[None], moving)
            for stage, f in (("cascade", out.field), ("affine", out.affine_field)):
                warped = model.warp(masks, f)[0]
                for n, d in dice_per_oar(warped, case.masks.float(), case.present).items():
                    scores[stage][oars[n]].append(d)
    model.train()
    summary = {}
    for stage, per in scores.items():
        means = {o: float(np.mean(v)) for o, v in per.items() if v}
        summary[stage] = {"per_oar": means, "mean": float(np.mean(list(means.values()))) if means else 0.0}
    return summary


def loss_terms(model: Cascade, cfg: TrainConfig, fixed: CaseTensors, atlas: CaseTensors, gen) -> dict:
    f_img = fixed.image.float()[None]
    m_img = atlas.image.float()[None]
    out = model(f_img, m_img, sample=True)
    terms: dict[str, torch.Tensor] = {}
    known_f = fixed.known.float()[None]
    known_m = atlas.known.float()[None]
    mi = 0.0
    for f in out.stage_fields:
        warped = model.warp(m_img, f)
        weight = known_f * model.warp(known_m, f)
        mi = mi + mi_loss(f_img, warped, weight, samples=cfg.mi_samples, generator=gen)
    terms["mi"] = mi
    warped_masks = model.warp(atlas.masks.float()[None], out.field)
    terms["seg"] = SEG_LOSSES[cfg.seg_loss](warped_masks, fixed.masks.float()[None], fixed.present[None])
    if cfg.weight_kl:
        terms["kl"] = sum(
            kl_divergence(mu, lv, cfg.prior_lambda)
            for mu, lv in zip(out.means, out.log_vars, strict=True)
            if lv is not None
        )
    if cfg.weight_smooth:
        terms["smooth"] = sum(gradient_smoothness(v) for v in out.velocities)
    if cfg.weight_mmd:
        terms["mmd"] = sum(mmd(v, generator=gen) for v in out.velocities)
    weights = {
        "mi": cfg.weight_mi,
        "seg": cfg.weight_seg,
        "kl": cfg.weight_kl,
        "smooth": cfg.weight_smooth,
        "mmd": cfg.weight_mmd,
    }
    terms["total"] = sum(weights[k] * v for k, v in terms.items())
    return terms


def train(cfg: TrainConfig, log=print) -> Path:
    torch.set_num_threads(cfg.threads)
    run = Path(cfg.run_dir) / cfg.name
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    atlas_path = (
        Path(cfg.cache_train) / f"{cfg.atlas_case}.npz" if cfg.atlas_case else choose_atlas(cfg.cache_train, cfg.oars)
    )
    align_to = load_cached(atlas_path) if cfg.align_windows else None
    train_cases = load_split(cfg.cache_train, cfg.oars, cfg.image_shape, align_to)
    val_cases = load_split(cfg.cache_validation, cfg.oars, cfg.image_shape, align_to)
    atlas = next(c for c in train_cases if c.case_id == atlas_path.stem)
    fixed_pool = [c for c in train_cases if c.case_id != atlas.case_id]
    log(f"atlas {atlas.case_id}; {len(fixed_pool)} training and {len(val_cases)} validation patients")
    model = build_model(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    state = {"step": 0, "best": -1.0, "history": []}
    latest = run / "latest.pt"
    if latest.is_file():
        ckpt = torch.load(latest, weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
        gen.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["torch_rng"])
        random.setstate(ckpt["python_rng"])
        log(f"resumed at step {state['step']} (best validation Dice {state['best']:.3f})")
    elif cfg.init_from:
        model.load_state_dict(torch.load(cfg.init_from, weights_only=False)["model"])
        log(f"weights from {cfg.init_from}")

    def save(path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "state": state,
                "generator": gen.get_state(),
                "torch_rng": torch.get_rng_state(),
                "python_rng": random.getstate(),
                "config": asdict(cfg),
                "atlas_case": atlas.case_id,
            },
            tmp,
        )
        tmp.replace(path)

    log_path = run / "log.csv"
    new_log = not log_path.is_file()
    with log_path.open("a", newline="") as fh:
        writer = csv.writer(fh)
        if new_log:
            writer.writerow(["step", "seconds", "total", "mi", "seg", "kl", "smooth", "mmd", "val_dice", "val_affine"])
        start = time.perf_counter()
        first_step = state["step"]
        while state["step"] < cfg.steps:
            fixed = random.choice(fixed_pool)
            terms = loss_terms(model, cfg, fixed, atlas, gen)
            opt.zero_grad(set_to_none=True)
            terms["total"].backward()
            opt.step()
            state["step"] += 1
            step = state["step"]
            row = [step, round(time.perf_counter() - start, 2)] + [
                round(float(terms[k].detach()), 5) if k in terms else ""
                for k in ("total", "mi", "seg", "kl", "smooth", "mmd")
            ]
            val = ["", ""]
            if step % cfg.validate_every == 0 or step == cfg.steps:
                summary = evaluate(model, atlas, val_cases, cfg.oars)
                val = [round(summary["cascade"]["mean"], 4), round(summary["affine"]["mean"], 4)]
                state["history"].append({"step": step, **summary})
                (run / "validation.json").write_text(json.dumps(state["history"], indent=2))
                if summary["cascade"]["mean"] > state["best"]:
                    state["best"] = summary["cascade"]["mean"]
                    save(run / "best.pt")
                log(
                    f"step {step}: validation Dice {val[0]:.3f} (affine {val[1]:.3f}) "
                    + " ".join(f"{o}={d:.2f}" for o, d in summary["cascade"]["per_oar"].items())
                )
            writer.writerow(row + val)
            if step % 10 == 0:
                fh.flush()
                elapsed = time.perf_counter() - start
                value = {k: float(v.detach()) for k, v in terms.items()}
                per_step = elapsed / max(step - first_step, 1)
                eta = int(per_step * (cfg.steps - step))
                log(
                    f"step {step}/{cfg.steps} loss {value['total']:.4f} mi {value['mi']:.3f} seg {value['seg']:.4f} "
                    f"({per_step:.2f} s/step, ETA {eta // 3600}:{eta % 3600 // 60:02d} h)"
                )
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save(latest)
    return run
