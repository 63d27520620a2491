"""``oarmorph train CONFIG``: train a cascade on a cached cohort, resumable, with validation Dice and logs.

Each step registers the atlas (moving) to ``batch_size`` training patients (fixed), with the paper's loss (Eq. 5):
MI after the affine block and after each dense block, 100 x MSE between the warped atlas OARs and the OARs the
patient has (Eq. 20), and 0.05 x the KL term of each dense block (Eq. 21) (or the smoothness / MMD terms of the
baselines). Checkpoints (latest, best), a CSV log and TensorBoard events go to the run folder; an interrupted run
resumes there.

On a GPU the networks run under bf16 autocast (the geometry and every loss stay fp32). Launched by torchrun
(``WORLD_SIZE`` > 1) the model is wrapped in DistributedDataParallel: each rank draws its own patients (its own
seed), gradients are averaged, and rank 0 alone validates, logs and writes checkpoints.
"""

from __future__ import annotations

import contextlib
import csv
import inspect
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel

from .cache import load_cached
from .cascade import Cascade, CascadeConfig, DenseBlockConfig
from .data import CaseTensors, choose_atlas, load_split
from .fine_masks import fine_dice, fine_soft_dice
from .losses import gradient_smoothness, kl_divergence, mi_loss, mmd, segmentation_mse, segmentation_soft_dice

SEG_LOSSES = {"mse": segmentation_mse, "dice": segmentation_soft_dice}
TERMS = ("total", "mi", "seg", "kl", "smooth", "mmd")
FINE_TERMS = ("seg_fine",)  # logged (after the validation columns) only by runs that have the term
_DDP_ARGS = inspect.signature(DistributedDataParallel.__init__).parameters


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
    # "constant", or "cosine": from lr down to lr_min over the run's steps (a function of the step, so a resumed run
    # continues the curve; extending --steps stretches it). The shipped OpenKBP run plateaued at 5e-4 and gained
    # 0.01 validation Dice within 250 steps at 1.5e-4.
    lr_schedule: str = "constant"
    lr_min: float = 0.0
    steps: int = 20000
    seed: int = 0
    weight_mi: float = 1.0
    weight_seg: float = 100.0
    seg_loss: str = "mse"  # "mse": the paper's Eq. 20; "dice": soft Dice (segmentation_soft_dice, CPU recipe)
    # The OAR terms (seg loss, validation Dice) only where the patient's CT holds data (its "known" mask): a scan
    # shorter than the canonical window cuts its contours at the scan's end, and the atlas OAR beyond it is no
    # error (the inference path clips there too: the patient's grid ends). Off: the runs before it was added.
    seg_within_known: bool = False
    # The OAR term again at the canonical 128^3 resolution on each OAR's box grown by seg_fine_margin voxels
    # (training.fine_masks; seg_fine_points of a box at most, drawn each step), weight_seg_fine; 0: off. When on,
    # validation also scores every OAR on the whole 128^3 grid ("fine"), and best.pt is the best of that.
    weight_seg_fine: float = 0.0
    seg_fine_margin: int = 6
    seg_fine_points: int | None = 8192
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
    # only these parts learn (parameter-name prefixes, e.g. ["dense_nets.1"]); the rest keeps its weights. None: all
    train_only: list[str] | None = None
    batch_size: int = 1  # fixed patients stacked per step (per process under torchrun)
    device: str = "auto"  # auto (cuda when available), cpu or cuda
    bf16: bool = True  # bf16 autocast of the networks on CUDA; ignored on a CPU (fp32 there)
    tensorboard: bool = True  # events in <run_dir>/<name>/tb
    progress: str = "auto"  # auto: a tqdm bar when stdout is a terminal, else plain log lines; or bar, log

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


def trainable_parameters(model: torch.nn.Module, prefixes: list[str] | None) -> list[torch.nn.Parameter]:
    """The parameters the optimizer gets: all, or those named by ``prefixes`` (the others are frozen, e.g. the
    affine block and the first dense block while a refined last block learns on top of them)."""
    if not prefixes:
        return list(model.parameters())
    chosen = []
    for name, param in model.named_parameters():
        keep = any(name == q or name.startswith(q + ".") for q in prefixes)
        param.requires_grad_(keep)
        if keep:
            chosen.append(param)
    if not chosen:
        names = sorted({n.split(".")[0] for n, _ in model.named_parameters()})
        raise ValueError(f"train_only {prefixes} names no parameter of the model (its parts: {', '.join(names)})")
    return chosen


# --- device, precision, processes -------------------------------------------------------------------------------


LR_SCHEDULES = ("constant", "cosine")


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """The learning rate of the optimizer step taken after ``step`` steps (0: the first)."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    if cfg.lr_schedule == "cosine":
        t = min(max(step / max(cfg.steps - 1, 1), 0.0), 1.0)
        return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {cfg.lr_schedule!r}")


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: the GPU when torch sees one, else the CPU; ``cuda`` is this process's GPU (its local rank)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError("device: cuda was asked for, but torch sees no CUDA device")
        return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)
    raise ValueError(f"device must be auto, cpu or cuda, not {name!r}")


def uses_bf16(device: torch.device, bf16: bool = True) -> bool:
    """bf16 autocast only on CUDA and only when the config asks (CPU training stays fp32)."""
    return bool(bf16) and device.type == "cuda"


def autocast_context(device: torch.device, bf16: bool = True):
    """The context of the forward pass: bf16 autocast on CUDA when asked, a no-op anywhere else."""
    if uses_bf16(device, bf16):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def rank_seed(seed: int, rank: int) -> int:
    """A process's seed: the config's on rank 0 (a one-process run is unchanged by torchrun), a fixed other one
    per further rank, so that each rank draws its own patients and noise, the same ones run after run."""
    return seed if rank == 0 else seed + 1_000_003 * rank


def resume_seed(seed: int, rank: int, step: int) -> int:
    """The seed of a rank whose random state a checkpoint does not hold (another world size, another device)."""
    return rank_seed(seed, rank) + 104_729 * (step + 1)


@dataclass
class Processes:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this module initialised the process group (and destroys it at the end)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_processes(device_name: str = "auto") -> tuple[Processes, torch.device]:
    """One process, or one of torchrun's (``WORLD_SIZE`` > 1): the process group is initialised here with nccl on
    CUDA and gloo on a CPU, unless the caller did it already."""
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Processes(), resolve_device(device_name)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    owns = False
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group(backend="nccl", device_id=device)
        else:
            dist.init_process_group(backend="gloo")
        owns = True
    return Processes(dist.get_rank(), dist.get_world_size(), local_rank, owns), device


def progress_mode(mode: str = "auto", stream=None) -> str:
    """``bar`` (tqdm) or ``log`` (a plain line every 10 steps); ``auto``: a bar only when stdout is a terminal (of
    some size: tqdm draws nothing on a pty of 0 x 0, as some log captures are)."""
    if mode == "auto":
        if stream is None:
            return "bar" if sys.stdout.isatty() and _terminal_columns() > 0 else "log"
        return "bar" if getattr(stream, "isatty", lambda: False)() else "log"
    if mode not in ("bar", "log"):
        raise ValueError(f"progress must be auto, bar or log, not {mode!r}")
    return mode


def _terminal_columns() -> int:
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


def _unwrap(model) -> Cascade:
    return model.module if isinstance(model, DistributedDataParallel) else model


# --- losses and validation --------------------------------------------------------------------------------------


def dice_per_oar(warped: torch.Tensor, target: torch.Tensor, present: torch.Tensor) -> dict[int, float]:
    out = {}
    for n in range(target.shape[0]):
        if present[n] > 0:
            a, b = warped[n] >= 0.5, target[n] >= 0.5
            denom = float(a.sum() + b.sum())
            out[n] = 2.0 * float((a & b).sum()) / denom if denom else 1.0
    return out


def evaluate(
    model: Cascade, atlas: CaseTensors, cases: list[CaseTensors], oars: list[str], within_known: bool = False
) -> dict:
    """Mean Dice per OAR (canonical grid, threshold 0.5) for the full cascade and the affine stage alone;
    ``within_known``: inside each patient's known mask only (``TrainConfig.seg_within_known``). When the cases
    and the atlas carry their 128^3 crops (``TrainConfig.weight_seg_fine``), also the cascade's on the 128^3
    grid ("fine", ``training.fine_masks.fine_dice``)."""
    model = _unwrap(model)
    model.eval()
    scores: dict[str, dict[str, list[float]]] = {"cascade": {o: [] for o in oars}, "affine": {o: [] for o in oars}}
    fine = atlas.fine is not None and all(c.fine is not None and c.fine_known is not None for c in cases)
    if fine:
        scores["fine"] = {o: [] for o in oars}
    with torch.no_grad():
        moving = atlas.image.float()[None]
        masks = atlas.masks.float()[None]
        for case in cases:
            out = model(case.image.float()[None], moving)
            for stage, f in (("cascade", out.field), ("affine", out.affine_field)):
                warped, target = model.warp(masks, f)[0], case.masks.float()
                if within_known:
                    warped, target = warped * case.known.float(), target * case.known.float()
                for n, d in dice_per_oar(warped, target, case.present).items():
                    scores[stage][oars[n]].append(d)
            if fine:
                known = case.fine_known.float() / 255.0
                for n, d in fine_dice(out.field.float(), case.fine, known, atlas.fine, within_known).items():
                    scores["fine"][oars[n]].append(d)
    model.train()
    summary = {}
    for stage, per in scores.items():
        means = {o: float(np.mean(v)) for o, v in per.items() if v}
        summary[stage] = {"per_oar": means, "mean": float(np.mean(list(means.values()))) if means else 0.0}
    return summary


def stage_of_note(summary: dict) -> str:
    """The validation the run ranks checkpoints by: the 128^3 Dice when the run has it, else the canonical."""
    return "fine" if "fine" in summary else "cascade"


def loss_terms(
    model,
    cfg: TrainConfig,
    fixed: CaseTensors | Sequence[CaseTensors],
    atlas: CaseTensors,
    gen,
    autocast=None,
) -> dict:
    """The loss terms of one step on one fixed patient or a batch of them (stacked; the atlas is broadcast).

    ``autocast`` (``autocast_context``) covers the model's forward pass only: the warps and losses are fp32.
    """
    cases = [fixed] if isinstance(fixed, CaseTensors) else list(fixed)
    b = len(cases)
    core = _unwrap(model)
    f_img = torch.stack([c.image for c in cases]).float()
    m_img = atlas.image.float()[None].expand(b, -1, -1, -1, -1)
    with autocast if autocast is not None else contextlib.nullcontext():
        out = model(f_img, m_img, sample=True)
    terms: dict[str, torch.Tensor] = {}
    known_f = torch.stack([c.known for c in cases]).float()
    known_m = atlas.known.float()[None].expand(b, -1, -1, -1, -1)
    mi = 0.0
    for f in out.stage_fields:
        f = f.float()
        warped = core.warp(m_img, f)
        weight = known_f * core.warp(known_m, f)
        mi = mi + mi_loss(f_img, warped, weight, samples=cfg.mi_samples, generator=gen)
    terms["mi"] = mi
    warped_masks = core.warp(atlas.masks.float()[None].expand(b, -1, -1, -1, -1), out.field.float())
    target = torch.stack([c.masks for c in cases]).float()
    if cfg.seg_within_known:
        warped_masks, target = warped_masks * known_f, target * known_f
    present = torch.stack([c.present for c in cases])
    terms["seg"] = SEG_LOSSES[cfg.seg_loss](warped_masks, target, present)
    if cfg.weight_seg_fine:
        terms["seg_fine"] = fine_soft_dice(
            out.field.float(),
            [c.fine for c in cases],
            atlas.fine,
            present,
            cfg.seg_within_known,
            cfg.seg_fine_points,
            gen,
        )
    if cfg.weight_kl:
        terms["kl"] = sum(
            kl_divergence(mu.float(), lv.float(), cfg.prior_lambda)
            for mu, lv in zip(out.means, out.log_vars, strict=True)
            if lv is not None
        )
    if cfg.weight_smooth:
        terms["smooth"] = sum(gradient_smoothness(v.float()) for v in out.velocities)
    if cfg.weight_mmd:
        terms["mmd"] = sum(mmd(v.float(), generator=gen) for v in out.velocities)
    weights = {
        "mi": cfg.weight_mi,
        "seg": cfg.weight_seg,
        "seg_fine": cfg.weight_seg_fine,
        "kl": cfg.weight_kl,
        "smooth": cfg.weight_smooth,
        "mmd": cfg.weight_mmd,
    }
    terms["total"] = sum(weights[k] * v for k, v in terms.items())
    return terms


# --- random state in checkpoints ---------------------------------------------------------------------------------


def _rng_state(gen: torch.Generator) -> dict:
    state = {
        "generator": gen.get_state(),
        "generator_device": gen.device.type,
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
    }
    if gen.device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(gen.device)
    return state


def _set_rng_state(state: dict, gen: torch.Generator, fallback_seed: int) -> None:
    """Restore a rank's random state; the generator of another device kind (a CPU run resumed on a GPU) is
    reseeded instead. Checkpoints of the first layout (no ``generator_device``) are CPU ones."""
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["python_rng"])
    if "cuda_rng" in state and gen.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"], gen.device)
    if state.get("generator_device", "cpu") == gen.device.type:
        gen.set_state(state["generator"])
    else:
        gen.manual_seed(fallback_seed)


def _seed_all(seed: int, gen: torch.Generator) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    gen.manual_seed(seed)


# --- the loop ----------------------------------------------------------------------------------------------------


def _summary_writer(path: Path, purge_step: int | None, log):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboard is in the train extra
        log("tensorboard is not installed: no TensorBoard events (pip install -e '.[train]')")
        return None
    return SummaryWriter(str(path), purge_step=purge_step)


def train(cfg: TrainConfig, log=print, on_step: Callable[[dict], None] | None = None) -> Path:
    """Train (or resume) the run ``<run_dir>/<name>``; returns its folder.

    ``on_step`` (tests, instrumentation) is called on every rank after each optimizer step with the step, rank,
    world size, the fixed case ids, this rank's own loss and the (unwrapped) model.
    """
    procs, device = init_processes(cfg.device)
    try:
        return _train(cfg, log if procs.main else (lambda *_: None), on_step, procs, device)
    finally:
        if procs.owns_group:
            dist.destroy_process_group()


def _train(cfg: TrainConfig, log, on_step, procs: Processes, device: torch.device) -> Path:
    torch.set_num_threads(cfg.threads)
    run = Path(cfg.run_dir) / cfg.name
    if procs.main:
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    gen = torch.Generator(device=device)
    _seed_all(cfg.seed, gen)  # every rank: the same initial weights
    atlas_path = (
        Path(cfg.cache_train) / f"{cfg.atlas_case}.npz" if cfg.atlas_case else choose_atlas(cfg.cache_train, cfg.oars)
    )
    align_to = load_cached(atlas_path) if cfg.align_windows else None
    # the data pipeline: cached canonical cases, resized once, held in memory and moved to the device once
    fine_margin = cfg.seg_fine_margin if cfg.weight_seg_fine else None
    train_cases = [c.to(device) for c in load_split(cfg.cache_train, cfg.oars, cfg.image_shape, align_to, fine_margin)]
    val_cases = (
        [c.to(device) for c in load_split(cfg.cache_validation, cfg.oars, cfg.image_shape, align_to, fine_margin, True)]
        if procs.main
        else []
    )
    atlas = next(c for c in train_cases if c.case_id == atlas_path.stem)
    fixed_pool = [c for c in train_cases if c.case_id != atlas.case_id]
    log(f"atlas {atlas.case_id}; {len(fixed_pool)} training and {len(val_cases)} validation patients")
    amp = uses_bf16(device, cfg.bf16)
    log(f"device {device}{' (bf16 autocast)' if amp else ''}, {procs.world_size} process(es) x batch {cfg.batch_size}")
    model = build_model(cfg).to(device)
    if procs.rank:
        _seed_all(rank_seed(cfg.seed, procs.rank), gen)
    opt = torch.optim.Adam(trainable_parameters(model, cfg.train_only), lr=learning_rate(cfg, 0))  # checks the schedule
    state = {"step": 0, "best": -1.0, "history": []}
    latest = run / "latest.pt"
    if procs.distributed:
        dist.barrier()  # rank 0 made the run folder
    resumed = latest.is_file()
    if resumed:
        ckpt = torch.load(latest, map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
        ranks = ckpt.get("rank_rng")
        fallback = resume_seed(cfg.seed, procs.rank, state["step"])
        if ranks is not None and len(ranks) == procs.world_size:
            _set_rng_state(ranks[procs.rank], gen, fallback)
        elif procs.main:
            _set_rng_state(ckpt, gen, fallback)
        else:
            _seed_all(fallback, gen)
        log(f"resumed at step {state['step']} (best validation Dice {state['best']:.3f})")
    elif cfg.init_from:
        model.load_state_dict(torch.load(cfg.init_from, map_location="cpu", weights_only=False)["model"])
        log(f"weights from {cfg.init_from}")
    core = model
    if procs.distributed:
        # the buffers (identity grids, kernels) are constants: no broadcast before each forward pass
        sync = "forward_sync_buffers" if "forward_sync_buffers" in _DDP_ARGS else "broadcast_buffers"
        model = DistributedDataParallel(
            core, device_ids=[device.index] if device.type == "cuda" else None, **{sync: False}
        )

    def save(path: Path, rank_states: list[dict] | None = None) -> None:
        tmp = path.with_suffix(".tmp")
        ckpt = {
            "model": core.state_dict(),
            "optimizer": opt.state_dict(),
            "state": state,
            **_rng_state(gen),  # generator, torch_rng, python_rng (rank 0's), generator_device, [cuda_rng]
            "config": asdict(cfg),
            "atlas_case": atlas.case_id,
            "world_size": procs.world_size,
        }
        if rank_states is not None:
            ckpt["rank_rng"] = rank_states
        torch.save(ckpt, tmp)
        tmp.replace(path)

    writer = None
    if procs.main and cfg.tensorboard:
        writer = _summary_writer(run / "tb", state["step"] + 1 if resumed else None, log)
    mode = progress_mode(cfg.progress) if procs.main else "log"
    bar = None
    if mode == "bar":
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover - tqdm is in the train extra
            mode = "log"
        else:
            bar = tqdm(
                total=cfg.steps,
                initial=state["step"],
                desc=cfg.name,
                unit="step",
                dynamic_ncols=True,
                file=sys.stdout,
            )
            plain_log = log

            def log(message: str) -> None:
                with tqdm.external_write_mode(file=sys.stdout):
                    plain_log(message)

    log_path = run / "log.csv"
    fh = None
    try:
        if procs.main:
            new_log = not log_path.is_file()
            fh = log_path.open("a", newline="")
            csv_writer = csv.writer(fh)
            if new_log:
                csv_writer.writerow(
                    ["step", "seconds", *TERMS, "val_dice", "val_affine"]
                    + ([*FINE_TERMS, "val_fine"] if cfg.weight_seg_fine else [])
                )
        start = time.perf_counter()
        first_step = state["step"]
        last_val = None
        while state["step"] < cfg.steps:
            chosen = [random.choice(fixed_pool) for _ in range(cfg.batch_size)]
            terms = loss_terms(model, cfg, chosen, atlas, gen, autocast_context(device, cfg.bf16))
            opt.zero_grad(set_to_none=True)
            terms["total"].backward()
            # set on every step: a resumed run follows the config's schedule, not the rate in the optimizer state
            lr = learning_rate(cfg, state["step"])
            for group in opt.param_groups:
                group["lr"] = lr
            opt.step()
            state["step"] += 1
            step = state["step"]
            keys = [k for k in (*TERMS, *FINE_TERMS) if k in terms]
            local = torch.stack([torch.as_tensor(terms[k], device=device).detach().float() for k in keys])
            mean = local.clone()
            if procs.distributed:  # the logs show the mean over the ranks' patients
                dist.all_reduce(mean)
                mean /= procs.world_size
            value = dict(zip(keys, mean.tolist(), strict=True))
            if on_step is not None:
                on_step(
                    {
                        "step": step,
                        "rank": procs.rank,
                        "world_size": procs.world_size,
                        "cases": [c.case_id for c in chosen],
                        "loss": float(local[0]),
                        "model": core,
                    }
                )
            if not procs.main:
                if step % cfg.validate_every == 0 or step == cfg.steps:
                    dist.barrier()  # rank 0 validates
                if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                    dist.all_gather_object([None] * procs.world_size, _rng_state(gen))
                    dist.barrier()  # rank 0 writes the checkpoint
                continue
            seconds = time.perf_counter() - start
            row = [step, round(seconds, 2)] + [round(value[k], 5) if k in value else "" for k in TERMS]
            if writer is not None:
                for k, v in value.items():
                    writer.add_scalar(f"loss/{k}", v, step)
                writer.add_scalar("lr", lr, step)
            val = ["", ""]
            fine_row = [round(value[k], 5) if k in value else "" for k in FINE_TERMS] + [""]
            if step % cfg.validate_every == 0 or step == cfg.steps:
                summary = evaluate(core, atlas, val_cases, cfg.oars, cfg.seg_within_known)
                val = [round(summary["cascade"]["mean"], 4), round(summary["affine"]["mean"], 4)]
                stages = [k for k in ("cascade", "affine", "fine") if k in summary]
                ranked = summary[stage_of_note(summary)]["mean"]
                last_val = round(ranked, 4)
                fine_row[-1] = round(summary["fine"]["mean"], 4) if "fine" in summary else ""
                state["history"].append({"step": step, **summary})
                (run / "validation.json").write_text(json.dumps(state["history"], indent=2))
                if ranked > state["best"]:
                    state["best"] = ranked
                    save(run / "best.pt")
                if writer is not None:
                    for stage in stages:
                        tag = {"cascade": "dice", "affine": "affine_dice", "fine": "fine_dice"}[stage]
                        writer.add_scalar(f"val/{tag}_mean", summary[stage]["mean"], step)
                        for o, d in summary[stage]["per_oar"].items():
                            writer.add_scalar(f"val/{tag}/{o}", d, step)
                fine_note = f", at 128^3 {summary['fine']['mean']:.3f}" if "fine" in summary else ""
                log(
                    f"step {step}: validation Dice {val[0]:.3f} (affine {val[1]:.3f}{fine_note}) "
                    + " ".join(f"{o}={d:.2f}" for o, d in summary[stage_of_note(summary)]["per_oar"].items())
                )
                if procs.distributed:
                    dist.barrier()
            csv_writer.writerow(row + val + (fine_row if cfg.weight_seg_fine else []))
            per_step = seconds / max(step - first_step, 1)
            if bar is not None:
                post = {"loss": f"{value['total']:.4f}", "mi": f"{value['mi']:.3f}", "seg": f"{value['seg']:.4f}"}
                if last_val is not None:
                    post["val"] = f"{last_val:.3f}"
                bar.set_postfix(post, refresh=False)
                bar.update(1)
            if step % 10 == 0:
                fh.flush()
                if bar is None:
                    eta = int(per_step * (cfg.steps - step))
                    log(
                        f"step {step}/{cfg.steps} loss {value['total']:.4f} mi {value['mi']:.3f} "
                        f"seg {value['seg']:.4f} ({per_step:.2f} s/step, ETA {eta // 3600}:{eta % 3600 // 60:02d} h)"
                    )
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                rank_states = None
                if procs.distributed:
                    rank_states = [None] * procs.world_size
                    dist.all_gather_object(rank_states, _rng_state(gen))
                save(latest, rank_states)
                if writer is not None:
                    writer.flush()
                if procs.distributed:
                    dist.barrier()
    finally:
        if fh is not None:
            fh.close()
        if writer is not None:
            writer.close()
        if bar is not None:
            bar.close()
    return run
