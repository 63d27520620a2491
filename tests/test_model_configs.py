"""One config per model of the paper's Table 2, each within 15 % of the table's parameter count."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")

from training.networks import count_parameters
from training.train import TrainConfig, build_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TABLE_2 = {
    "proposed_cpu.yaml": 127_000,
    "baseline3_g_add_unet.yaml": 143_000,
    "baseline2_ng_uadd.yaml": 568_000,
    "baseline1_ng_uad.yaml": 340_000,
    "infovae_g_add.yaml": 924_000,
}


@pytest.mark.parametrize(("name", "expected"), TABLE_2.items())
def test_parameter_count_matches_table_2(name, expected):
    model = build_model(TrainConfig.load(CONFIGS / name))
    assert abs(count_parameters(model) - expected) / expected <= 0.15, count_parameters(model)
