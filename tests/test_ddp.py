"""Multi-process training (torchrun, DDP on gloo) on two CPU processes with the tiny 32^3 cohort: both ranks train,
each on its own patients, their gradients are averaged (identical weights after each step), rank 0 alone writes the
checkpoint, the CSV and the TensorBoard events, and that checkpoint resumes in a single process."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch.distributed.run")

from tiny_cohort import FIRST_LAYOUT, make_caches, one_thread, tiny_config_dict  # noqa: E402, F401

from training.data import load_split  # noqa: E402
from training.train import TrainConfig, build_model, loss_terms, rank_seed, train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("ddp_worker.py")
STEPS = 4
POOL = ["train1", "train2", "train3"]  # the tiny cohort's patients (train0 is the atlas)


def _config(data: dict) -> TrainConfig:
    return TrainConfig(**{**data, "image_shape": tuple(data["image_shape"])})


def _draws(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(POOL) for _ in range(n)]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    root = make_caches(tmp_path_factory.mktemp("ddp"))
    cfg = tiny_config_dict(root, STEPS, name="ddp", checkpoint_every=2, validate_every=2)
    config = root / "ddp.yaml"
    config.write_text(json.dumps(cfg))  # JSON is YAML
    out = root / "out"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*command, str(WORKER), str(config), str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    tensors = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    return root, cfg, ranks, tensors


def test_two_gloo_processes_train_on_their_own_patients_with_averaged_gradients(ddp_run):
    root, cfg, ranks, tensors = ddp_run
    seed = _config(cfg).seed
    for r, rank in enumerate(ranks):
        assert [s["step"] for s in rank["steps"]] == list(range(1, STEPS + 1))
        assert {s["world_size"] for s in rank["steps"]} == {2} and rank["rank"] == r
        # each rank draws its own patients from its own fixed seed (rank 0: the config's)
        assert [s["cases"][0] for s in rank["steps"]] == _draws(rank_seed(seed, r), STEPS)
    losses = [[s["loss"] for s in rank["steps"]] for rank in ranks]
    assert losses[0] != losses[1]  # different patients and noise ...
    assert torch.equal(tensors[0]["grad1"], tensors[1]["grad1"])  # ... the same (all-reduced) gradient
    for key, value in tensors[0]["state"].items():
        assert torch.equal(value, tensors[1]["state"][key]), key  # and the same weights after every step
    # the gradient is the mean of what each rank's patient alone gives (recomputed here in one process)
    tc = _config(cfg)
    cases = {c.case_id: c for c in load_split(tc.cache_train, tc.oars, tc.image_shape)}
    grads = []
    for r, rank in enumerate(ranks):
        gen = torch.Generator()
        random.seed(tc.seed), torch.manual_seed(tc.seed), gen.manual_seed(tc.seed)
        model = build_model(tc)
        if r:
            s = rank_seed(tc.seed, r)
            random.seed(s), torch.manual_seed(s), gen.manual_seed(s)
        fixed = [cases[c] for c in rank["steps"][0]["cases"]]
        terms = loss_terms(model, tc, fixed, cases["train0"], gen)
        assert float(terms["total"].detach()) == pytest.approx(rank["steps"][0]["loss"], rel=1e-5)
        terms["total"].backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert not torch.allclose(grads[0], grads[1])
    assert torch.allclose(tensors[0]["grad1"], (grads[0] + grads[1]) / 2, rtol=1e-4, atol=1e-9)
    # the CSV logs the mean loss over the ranks
    with (root / "runs" / "ddp" / "log.csv").open() as fh:
        logged = [float(row["total"]) for row in csv.DictReader(fh)]
    assert logged == pytest.approx([(a + b) / 2 for a, b in zip(*losses, strict=True)], abs=2e-5)


def test_only_rank_zero_writes_and_its_checkpoint_resumes_in_one_process(ddp_run):
    root, cfg, ranks, _ = ddp_run
    run = root / "runs" / "ddp"
    assert ranks[1]["saved"] == [] and ranks[1]["messages"] == []
    assert [Path(p).name for p in ranks[0]["saved"]].count("latest.tmp") == 2  # steps 2 and 4
    assert "best.tmp" in [Path(p).name for p in ranks[0]["saved"]]
    assert any("validation Dice" in m for m in ranks[0]["messages"])
    with (run / "log.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == list(range(1, STEPS + 1))  # one writer, one header
    assert [bool(r["val_dice"]) for r in rows] == [False, True, False, True]
    assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 1
    ckpt = torch.load(run / "latest.pt", weights_only=False)
    assert FIRST_LAYOUT <= set(ckpt) and ckpt["state"]["step"] == STEPS
    assert ckpt["world_size"] == 2 and len(ckpt["rank_rng"]) == 2
    # one process resumes it, carrying on rank 0's random stream
    messages, cases = [], []
    train(_config({**cfg, "steps": STEPS + 2}), log=messages.append, on_step=lambda i: cases.append(i["cases"][0]))
    assert any(f"resumed at step {STEPS}" in m for m in messages)
    assert cases == _draws(_config(cfg).seed, STEPS + 2)[STEPS:]
    assert torch.load(run / "latest.pt", weights_only=False)["state"]["step"] == STEPS + 2
    with (run / "log.csv").open() as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == list(range(1, STEPS + 3))
