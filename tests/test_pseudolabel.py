"""Pseudo-labels: the U-Net learns, ignores absent OARs, and fills exactly the missing OARs into a new cache."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from imaging.canonical import CanonicalFrame  # noqa: E402
from imaging.volume import Geometry  # noqa: E402
from oarmorph.cli import app  # noqa: E402
from training.cache import CachedCase, load_cached, save_cached  # noqa: E402
from training.data import load_split  # noqa: E402
from training.pseudolabel import (  # noqa: E402
    RECORD,
    PseudoLabelConfig,
    SegUNet,
    evaluate_pseudolabel,
    fill_cache,
    masked_dice_bce,
    train_pseudolabel,
)

SHAPE = (32, 32, 32)
OARS = ["Parotid_L", "Parotid_R"]


def _case(case_id: str, shift: tuple[int, int, int], oars: list[str]) -> CachedCase:
    k, j, i = np.indices(SHAPE)
    c = np.array([16, 16, 16]) + np.array(shift)
    body = ((k - c[0]) ** 2 / 100 + (j - c[1]) ** 2 / 64 + (i - c[2]) ** 2 / 81) <= 1
    left = ((k - c[0]) ** 2 + (j - c[1]) ** 2 + (i - c[2] - 4) ** 2) <= 9
    right = ((k - c[0]) ** 2 + (j - c[1]) ** 2 + (i - c[2] + 4) ** 2) <= 9
    image = np.where(body, 0.4, 0.0) + np.where(left | right, 0.4, 0.0)
    organs = {"Parotid_L": left, "Parotid_R": right}
    frame = CanonicalFrame(Geometry(SHAPE, (2.5, 2.5, 2.7), (0.0, 0.0, 0.0)), 0.0, False, (-300.0, 0.0), (-300.0, 0.0))
    masks = {name: organs[name].astype(np.float32) for name in oars}
    return CachedCase(case_id, image.astype(np.float32), np.ones(SHAPE, np.float32), masks, frame)


@pytest.fixture()
def caches(tmp_path):
    train = {
        "a": ((0, 0, 0), OARS),
        "b": ((2, -2, 1), OARS),
        "c": ((-2, 1, 2), ["Parotid_L"]),
        "d": ((1, 2, -2), ["Parotid_R"]),
    }
    (tmp_path / "train").mkdir()
    for cid, (s, oars) in train.items():
        save_cached(_case(cid, s, oars), tmp_path / "train" / f"{cid}.npz")
    (tmp_path / "validation").mkdir()
    save_cached(_case("v", (1, -1, 1), OARS), tmp_path / "validation" / "v.npz")
    return tmp_path


def _config(caches, steps: int, **kw) -> PseudoLabelConfig:
    return PseudoLabelConfig(
        cache=str(caches / "train"),
        validation=str(caches / "validation"),
        out=str(caches / "run"),
        oars=OARS,
        shape=(16, 16, 16),
        widths=(4, 8, 16),
        lr=1e-2,
        steps=steps,
        max_shift=1,
        validate_every=1000,
        checkpoint_every=10,
        **kw,
    )


def _losses(run) -> list[float]:
    with (run / "log.csv").open() as fh:
        return [float(r["total"]) for r in csv.DictReader(fh)]


def test_a_few_steps_reduce_the_loss_and_resume(caches):
    run = train_pseudolabel(_config(caches, 30), log=lambda *_: None)
    losses = _losses(run)
    assert len(losses) == 30
    assert np.mean(losses[-8:]) < np.mean(losses[:8])
    assert (run / "latest.pt").is_file() and (run / "best.pt").is_file()
    messages: list[str] = []
    train_pseudolabel(_config(caches, 35), log=messages.append)
    assert any("resumed at step 30" in m for m in messages)
    assert len(_losses(run)) == 35


def test_the_loss_ignores_absent_oars():
    torch.manual_seed(0)
    model = SegUNet(2, (4, 8))
    x = torch.rand(1, 2, 16, 16, 16)
    target = (torch.rand(1, 2, 16, 16, 16) > 0.8).float()
    present = torch.tensor([[1.0, 0.0]])
    logits = model(x)
    logits.retain_grad()
    loss = masked_dice_bce(logits, target, present)["total"]
    loss.backward()
    assert torch.count_nonzero(logits.grad[:, 1]) == 0 and torch.count_nonzero(logits.grad[:, 0]) > 0
    assert torch.count_nonzero(model.head.weight.grad[1]) == 0 and model.head.bias.grad[1] == 0
    other = target.clone()
    other[:, 1] = 1.0 - other[:, 1]  # whatever the absent channel holds, the loss is the same
    assert float(masked_dice_bce(logits, other, present)["total"].detach()) == float(loss.detach())
    assert float(masked_dice_bce(logits, target, torch.zeros(1, 2))["total"].detach()) == 0.0


def test_fill_adds_exactly_the_missing_oars(caches):
    run = train_pseudolabel(_config(caches, 10), log=lambda *_: None)
    out = caches / "train_pseudo"
    record = fill_cache(run / "best.pt", caches / "train", out, min_voxels=0)
    assert json.loads((out / RECORD).read_text()) == record
    filled = record["cases"]
    assert filled == {"a": [], "b": [], "c": ["Parotid_R"], "d": ["Parotid_L"]} and record["left_empty"] == {}
    for cid in "abcd":
        src, dst = np.load(caches / "train" / f"{cid}.npz"), np.load(out / f"{cid}.npz")
        meta = json.loads(bytes(dst["meta"]).decode())
        assert meta["oars"] == sorted(set(json.loads(bytes(src["meta"]).decode())["oars"]) | set(filled[cid]))
        assert meta.get("pseudo_labels", []) == filled[cid]
        assert set(dst.files) - set(src.files) == {f"mask_{o}" for o in filled[cid]}
        for key in src.files:
            if key != "meta":  # image, known and the clinical masks: byte for byte
                assert src[key].dtype == dst[key].dtype and src[key].tobytes() == dst[key].tobytes(), (cid, key)
    tensors = {c.case_id: c for c in load_split(out, OARS, (16, 16, 16))}
    assert set(tensors) == set("abcd")
    assert all(int(t.present.sum()) == 2 for t in tensors.values())
    assert (
        load_cached(out / "c.npz").masks["Parotid_L"].tobytes()
        == load_cached(caches / "train" / "c.npz").masks["Parotid_L"].tobytes()
    )
    with pytest.raises(ValueError):
        fill_cache(run / "best.pt", caches / "train", caches / "train")


def test_fill_leaves_out_empty_predictions(caches):
    run = train_pseudolabel(_config(caches, 2), log=lambda *_: None)
    out = caches / "none"
    record = fill_cache(run / "best.pt", caches / "train", out, min_voxels=10**9)
    assert all(v == [] for v in record["cases"].values())
    assert record["left_empty"] == {"c": ["Parotid_R"], "d": ["Parotid_L"]}
    for cid in "abcd":  # nothing to fill: the file itself
        assert (out / f"{cid}.npz").read_bytes() == (caches / "train" / f"{cid}.npz").read_bytes()


def test_cli_train_fill_evaluate(caches):
    runner = CliRunner()
    run = caches / "cli_run"
    args = ["pseudolabel", "train", "--cache", str(caches / "train"), "--validation", str(caches / "validation")]
    args += ["--out", str(run), "--steps", "6", "--shape", "16", "--widths", "4,8", "--threads", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (run / "best.pt").is_file()
    fill = ["pseudolabel", "fill", "--cache", str(caches / "train"), "--model", str(run / "best.pt")]
    result = runner.invoke(app, [*fill, "--out", str(caches / "filled"), "--min-voxels", "0"])
    assert result.exit_code == 0, result.output
    assert (caches / "filled" / RECORD).is_file()
    result = runner.invoke(
        app, ["pseudolabel", "evaluate", "--cache", str(caches / "validation"), "--model", str(run / "best.pt")]
    )
    assert result.exit_code == 0, result.output
    assert "Parotid_L" in result.output and "mean" in result.output
    summary = evaluate_pseudolabel(run / "best.pt", caches / "validation")
    assert set(summary["per_oar"]) == set(OARS) and summary["n"] == {"Parotid_L": 1, "Parotid_R": 1}
