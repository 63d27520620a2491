"""A few training steps on CPU at 32^3 reduce the loss; an interrupted run resumes where it stopped, exactly, also
from a checkpoint of the first layout; TensorBoard events, the progress bar, batches and the precision helpers."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import itertools
import json
import shutil
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tiny_cohort import FIRST_LAYOUT, make_caches, one_thread, tiny_config_dict  # noqa: E402, F401

from training.data import load_split  # noqa: E402
from training.train import (  # noqa: E402
    TrainConfig,
    autocast_context,
    build_model,
    learning_rate,
    loss_terms,
    progress_mode,
    rank_seed,
    resolve_device,
    train,
    uses_bf16,
)


@pytest.fixture()
def caches(tmp_path):
    return make_caches(tmp_path)


def _config(caches, steps: int, **overrides) -> TrainConfig:
    data = tiny_config_dict(caches, steps, **overrides)
    data["image_shape"] = tuple(data["image_shape"])
    return TrainConfig(**data)


def _rows(run) -> list[dict]:
    with (run / "log.csv").open() as fh:
        return list(csv.DictReader(fh))


def _losses(run) -> list[float]:
    return [float(r["total"]) for r in _rows(run)]


def test_a_few_steps_reduce_the_loss(caches):
    run = train(_config(caches, 40), log=lambda *_: None)
    losses = _losses(run)
    assert len(losses) == 40
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    assert (run / "latest.pt").is_file() and (run / "best.pt").is_file()


def test_training_resumes_from_its_checkpoint(caches):
    cfg = _config(caches, 10)
    run = train(cfg, log=lambda *_: None)
    first = torch.load(run / "latest.pt", weights_only=False)
    assert first["state"]["step"] == 10
    messages = []
    train(dataclasses.replace(cfg, steps=20), log=messages.append)
    assert any("resumed at step 10" in m for m in messages)
    assert len(_losses(run)) == 20
    assert torch.load(run / "latest.pt", weights_only=False)["state"]["step"] == 20


def test_a_resumed_run_repeats_an_uninterrupted_one_also_from_the_first_checkpoint_layout(caches):
    quiet = lambda *_: None  # noqa: E731
    straight = train(_config(caches, 12, name="straight"), log=quiet)
    run = train(_config(caches, 7, name="resumed"), log=quiet)
    old = run.parent / "first_layout"
    shutil.copytree(run, old)
    ckpt = torch.load(old / "latest.pt", weights_only=False)
    assert FIRST_LAYOUT <= set(ckpt)
    torch.save({k: ckpt[k] for k in FIRST_LAYOUT}, old / "latest.pt")  # what the earlier code wrote
    messages = []
    train(_config(caches, 12, name="resumed"), log=quiet)
    train(_config(caches, 12, name="first_layout"), log=messages.append)
    assert any("resumed at step 7" in m for m in messages)
    assert _losses(run) == _losses(straight) == _losses(old)  # same seeds, same random state restored


def test_train_only_moves_the_named_parts_and_keeps_the_others_weights(caches):
    quiet = lambda *_: None  # noqa: E731
    start = train(_config(caches, 3, name="start"), log=quiet)
    begin = torch.load(start / "latest.pt", weights_only=False)["model"]
    cfg = _config(caches, 4, name="only", init_from=str(start / "latest.pt"), train_only=["dense_nets.1"])
    end = torch.load(train(cfg, log=quiet) / "latest.pt", weights_only=False)["model"]
    moved = {k for k in begin if not torch.equal(begin[k], end[k])}
    assert moved and all(k.startswith("dense_nets.1.") for k in moved), sorted(moved)
    with pytest.raises(ValueError, match="names no parameter"):
        train(_config(caches, 1, name="none", train_only=["dense_net"]), log=quiet)


def test_tensorboard_holds_the_losses_and_validation_dice_and_plain_logs_carry_the_eta(caches):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    messages = []
    run = train(_config(caches, 10, validate_every=5), log=messages.append)
    assert any(m.startswith("step 10/10 loss") and "ETA" in m for m in messages)
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/total", "loss/mi", "loss/seg", "loss/kl"} <= tags
    assert {"val/dice_mean", "val/dice/Parotid_L", "val/affine_dice_mean", "val/affine_dice/Parotid_L"} <= tags
    total = events.Scalars("loss/total")
    assert [e.step for e in total] == list(range(1, 11))
    assert [e.value for e in total] == pytest.approx(_losses(run), abs=1e-4)
    dice = {e.step: e.value for e in events.Scalars("val/dice_mean")}
    rows = {int(r["step"]): r for r in _rows(run)}
    assert sorted(dice) == [5, 10]
    assert dice[10] == pytest.approx(float(rows[10]["val_dice"]), abs=1e-4)


def test_the_cosine_schedule_runs_from_lr_to_lr_min_and_a_run_follows_it(caches):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = _config(caches, 9, lr=1e-3, lr_schedule="cosine", lr_min=1e-4)
    rates = [learning_rate(cfg, s) for s in range(cfg.steps)]
    assert rates[0] == pytest.approx(1e-3) and rates[-1] == pytest.approx(1e-4) and rates[4] == pytest.approx(5.5e-4)
    assert all(a > b for a, b in itertools.pairwise(rates))
    assert learning_rate(dataclasses.replace(cfg, lr_schedule="constant"), 7) == 1e-3
    with pytest.raises(ValueError, match="lr_schedule"):
        learning_rate(dataclasses.replace(cfg, lr_schedule="step"), 0)
    run = train(dataclasses.replace(cfg, steps=4), log=lambda *_: None)  # stopped early, then resumed to the end
    train(cfg, log=lambda *_: None)
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    assert [e.value for e in events.Scalars("lr")][4:] == pytest.approx(rates[4:], rel=1e-6)  # the resumed part


def test_a_terminal_gets_a_progress_bar_and_a_log_file_plain_lines(caches, capsys):
    class Tty:
        def isatty(self):
            return True

    assert progress_mode("auto", Tty()) == "bar"
    assert progress_mode("auto", io.StringIO()) == "log"  # a log file, a pipe
    assert progress_mode("log", Tty()) == "log"
    with pytest.raises(ValueError):
        progress_mode("fancy")
    messages = []
    run = train(_config(caches, 3, progress="bar", tensorboard=False), log=messages.append)
    out = capsys.readouterr().out
    assert "3/3" in out and "loss=" in out  # tqdm's bar with the loss as postfix (its ETA too)
    assert any("validation Dice" in m for m in messages)  # still logged, above the bar
    assert len(_losses(run)) == 3
    assert not (run / "tb").exists()


def test_a_batch_of_patients_is_the_mean_of_its_patients(caches):
    cfg = _config(
        caches,
        2,
        batch_size=2,
        weight_kl=0.0,
        model={**tiny_config_dict(caches, 1)["model"], "dense_blocks": [{"probabilistic": False}]},
    )
    cases = load_split(cfg.cache_train, cfg.oars, cfg.image_shape)
    atlas, a, b = cases[0], cases[1], cases[2]
    torch.manual_seed(0)
    model = build_model(cfg)
    gen = torch.Generator().manual_seed(0)
    both = loss_terms(model, cfg, [a, b], atlas, gen)
    one, two = loss_terms(model, cfg, a, atlas, gen), loss_terms(model, cfg, [b], atlas, gen)
    for key in ("mi", "seg", "total"):
        assert float(both[key].detach()) == pytest.approx(
            (float(one[key].detach()) + float(two[key].detach())) / 2, rel=1e-5
        )
    seen = []
    train(cfg, log=lambda *_: None, on_step=lambda info: seen.append(info["cases"]))
    assert [len(c) for c in seen] == [2, 2]


def test_seg_within_known_ignores_the_contours_where_the_scan_holds_no_data(caches):
    cfg = _config(
        caches,
        1,
        weight_kl=0.0,
        model={**tiny_config_dict(caches, 1)["model"], "dense_blocks": [{"probabilistic": False}]},
    )
    cases = load_split(cfg.cache_train, cfg.oars, cfg.image_shape)
    atlas, case = cases[0], cases[1]
    half = case.image.shape[1] // 2
    known = case.known.clone()
    known[:, half:] = 0  # a scan that ends half way down the window
    cut = dataclasses.replace(case, known=known)
    masks = case.masks.clone()
    masks[:, half:] = 1 - masks[:, half:]  # whatever lies beyond the scan's end
    garbled = dataclasses.replace(cut, masks=masks)
    torch.manual_seed(0)
    model = build_model(cfg)

    def seg(config, c):
        return float(loss_terms(model, config, c, atlas, torch.Generator().manual_seed(0))["seg"].detach())

    within = dataclasses.replace(cfg, seg_within_known=True)
    assert seg(within, cut) == pytest.approx(seg(within, garbled), rel=1e-6)  # beyond the scan: not counted
    assert seg(cfg, cut) != pytest.approx(seg(cfg, garbled), rel=1e-3)  # the runs before the option: counted
    assert seg(within, case) != pytest.approx(seg(within, cut), rel=1e-3)  # and the known mask is what decides


def test_the_oar_term_at_the_canonical_resolution_trains_validates_and_ranks_best_by_it(caches):
    """weight_seg_fine: a 16^3 run on the 32^3 cache scores its OARs at 32^3 too; the CSV and validation carry it."""
    model = {"net_shape": [8, 8, 8], "affine_widths": [8, 8, 8]}
    cfg = _config(
        caches, 20, image_shape=(16, 16, 16), model=model, weight_seg_fine=2.0, seg_fine_margin=2, validate_every=10
    )
    messages = []
    run = train(cfg, log=messages.append)
    rows = _rows(run)
    assert len(rows) == 20 and all(float(r["seg_fine"]) > 0 for r in rows)
    validated = [r for r in rows if r["val_fine"]]
    assert [int(r["step"]) for r in validated] == [10, 20]
    history = json.loads((run / "validation.json").read_text())
    fine = [h["fine"]["mean"] for h in history]
    assert all(0.0 < d <= 1.0 for d in fine) and [float(r["val_fine"]) for r in validated] == pytest.approx(
        fine, abs=1e-4
    )
    best = torch.load(run / "best.pt", weights_only=False)
    assert best["state"]["best"] == pytest.approx(max(fine))  # ranked by the 128^3 (here 32^3) Dice
    assert any("at 128^3" in m for m in messages)
    # the term is the OAR overlap: a still field on a shifted patient costs more than the atlas on itself
    cases = load_split(cfg.cache_train, cfg.oars, cfg.image_shape, fine_margin=2)
    torch.manual_seed(0)
    net = build_model(dataclasses.replace(cfg, model={**model, "dense_blocks": [{"probabilistic": False}]}))
    terms = [
        float(loss_terms(net, cfg, c, cases[0], torch.Generator().manual_seed(0))["seg_fine"].detach()) for c in cases
    ]
    assert terms[0] < 0.05 < min(terms[1:])


def test_bf16_autocast_is_for_cuda_only_and_a_cpu_config_resolves_to_none():
    cfg = TrainConfig()
    assert cfg.device == "auto" and cfg.bf16 is True and cfg.batch_size == 1
    cpu = resolve_device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert not uses_bf16(cpu, cfg.bf16)
    assert isinstance(autocast_context(cpu, True), contextlib.nullcontext)
    cuda = torch.device("cuda", 0)
    assert uses_bf16(cuda, True) and not uses_bf16(cuda, False)
    assert isinstance(autocast_context(cuda, False), contextlib.nullcontext)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available": torch disables the context it builds
        ctx = autocast_context(cuda, True)
    assert isinstance(ctx, torch.autocast) and ctx.device == "cuda" and ctx.fast_dtype == torch.bfloat16
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_device("cuda")
    with pytest.raises(ValueError):
        resolve_device("tpu")


def test_under_autocast_the_networks_run_in_bf16_and_the_geometry_stays_fp32(caches):
    cfg = _config(caches, 1)
    torch.manual_seed(0)
    model = build_model(cfg)
    dtypes = {}
    model.affine_net.register_forward_hook(lambda m, i, o: dtypes.update(affine=o.dtype))
    model.dense_nets[0].register_forward_hook(lambda m, i, o: dtypes.update(dense=o[0].dtype))
    x = torch.rand(1, 1, *cfg.image_shape)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the CPU stands in for CUDA's autocast here
        out = model(x, x.flip(2), sample=True)
    assert dtypes == {"affine": torch.bfloat16, "dense": torch.bfloat16}
    assert all(f.dtype == torch.float32 for f in [out.field, out.affine_field, *out.stage_fields])
    assert all(t.dtype == torch.float32 for t in [*out.means, *out.velocities, out.affine_params])


def test_each_rank_has_its_own_fixed_seed():
    assert rank_seed(7, 0) == 7  # a one-process run is unchanged
    seeds = [rank_seed(7, r) for r in range(8)]
    assert len(set(seeds)) == 8 and seeds == [rank_seed(7, r) for r in range(8)]


def test_the_train_command_stops_at_steps_and_resumes_to_the_configs_end(caches):
    """`oarmorph train CONFIG --steps N` spends a CPU budget: it stops at N, and the next run goes on from there."""
    import json

    from typer.testing import CliRunner

    from oarmorph.cli import app

    config = caches / "cfg.json"
    config.write_text(json.dumps(tiny_config_dict(caches, 12)))
    runner = CliRunner()
    first = runner.invoke(app, ["train", str(config), "--steps", "5"])
    assert first.exit_code == 0, first.output
    run = caches / "runs" / "t"
    assert torch.load(run / "latest.pt", weights_only=False)["state"]["step"] == 5
    second = runner.invoke(app, ["train", str(config)])
    assert second.exit_code == 0, second.output
    assert "resumed at step 5" in second.output
    assert torch.load(run / "latest.pt", weights_only=False)["state"]["step"] == 12
    assert len(_losses(run)) == 12
