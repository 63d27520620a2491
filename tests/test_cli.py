"""The oarmorph CLI on real files: masks -> RTSTRUCT -> masks, canonical preprocessing, typed errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from imaging.ct_writer import CtSeriesInfo, write_ct_series
from imaging.io import read_mask, write_volume
from imaging.volume import Geometry, Volume
from oarmorph.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def small_ct(tmp_path_factory):
    """A small FFS CT series far from the origin with three structures (two of them clinical aliases)."""
    root = tmp_path_factory.mktemp("cli")
    g = Geometry((24, 64, 64), (1.5, 1.5, 2.5), (140.0, -300.0, 900.0), (-1, 0, 0, 0, 1, 0, 0, 0, -1))
    k, j, i = np.indices(g.shape)
    hu = np.where((j - 32) ** 2 + (i - 32) ** 2 < 28**2, 40.0, -1000.0).astype(np.float32)
    write_ct_series(Volume(hu, g), root / "ct", CtSeriesInfo(uid_seed="cli-test"))
    masks = {
        "LeftParotid": ((k - 12) ** 2 / 16 + (j - 30) ** 2 / 36 + (i - 44) ** 2 / 25) <= 1,
        "Spinal Cord": ((j - 45) ** 2 + (i - 32) ** 2 <= 4) & (k > 2),
        "Optic-Nerve-Rt": (np.abs(j - 20) <= 0) & (i > 10) & (i < 25) & (k == 8),
    }
    (root / "masks").mkdir()
    for name, m in masks.items():
        write_volume(Volume(m.astype(np.uint8), g), root / "masks" / f"{name}.nii.gz")
    return root, g, masks


def test_rtstruct_and_masks_round_trip(small_ct, tmp_path):
    root, g, masks = small_ct
    rs = tmp_path / "rs.dcm"
    result = runner.invoke(app, ["rtstruct", "--ct", str(root / "ct"), "--masks", str(root / "masks"), "-o", str(rs)])
    assert result.exit_code == 0, result.output
    assert "LeftParotid -> Parotid_L" in result.output and "Optic-Nerve-Rt -> OpticNrv_R" in result.output
    out = tmp_path / "back"
    result = runner.invoke(app, ["masks", "--ct", str(root / "ct"), "--rtstruct", str(rs), "-o", str(out)])
    assert result.exit_code == 0, result.output
    for alias, tg263 in [("LeftParotid", "Parotid_L"), ("Spinal Cord", "SpinalCord"), ("Optic-Nerve-Rt", "OpticNrv_R")]:
        back = read_mask(out / f"{tg263}.nii.gz", reference=g).array
        assert np.array_equal(back, masks[alias].astype(np.uint8)), tg263


def test_unknown_structure_names_are_refused_with_a_code(small_ct, tmp_path):
    root, g, _ = small_ct
    folder = tmp_path / "masks"
    folder.mkdir()
    write_volume(Volume(np.ones(g.shape, np.uint8), g), folder / "PTV70.nii.gz")
    result = runner.invoke(
        app, ["rtstruct", "--ct", str(root / "ct"), "--masks", str(folder), "-o", str(tmp_path / "x.dcm")]
    )
    assert result.exit_code == 2
    assert "UNKNOWN_STRUCTURE" in result.output
    result = runner.invoke(
        app,
        ["rtstruct", "--ct", str(root / "ct"), "--masks", str(folder), "-o", str(tmp_path / "x.dcm"), "--keep-unknown"],
    )
    assert result.exit_code == 0, result.output


def test_a_mask_on_another_grid_is_refused(small_ct, tmp_path):
    root, _g, _ = small_ct
    folder = tmp_path / "masks"
    folder.mkdir()
    other = Geometry((24, 64, 64), (1.5, 1.5, 2.5), (0.0, 0.0, 0.0))
    write_volume(Volume(np.ones(other.shape, np.uint8), other), folder / "Brainstem.nii.gz")
    result = runner.invoke(
        app, ["rtstruct", "--ct", str(root / "ct"), "--masks", str(folder), "-o", str(tmp_path / "x.dcm")]
    )
    assert result.exit_code == 2 and "GEOMETRY_MISMATCH" in result.output


def test_reading_a_folder_without_ct_fails_cleanly(tmp_path):
    (tmp_path / "notes.txt").write_text("not a CT")
    result = runner.invoke(app, ["info", str(tmp_path)])
    assert result.exit_code == 2 and "NO_CT_IMAGES" in result.output


def test_catalogue_lists_36(tmp_path):
    result = runner.invoke(app, ["catalogue", "--json"])
    assert result.exit_code == 0
    rows = json.loads(result.output)
    assert len(rows) == 36 and sum(r["paper_evaluated"] for r in rows) == 8
