"""Atlas bundles keep their content exactly and refuse tampering."""

from __future__ import annotations

import numpy as np
import pytest

from anatomy.bundle import BundleIntegrityError, load_bundle, write_bundle
from imaging.volume import Geometry, Volume


@pytest.fixture()
def bundle(tmp_path):
    g = Geometry((20, 30, 40), (1.0, 1.2, 2.5), (-20.0, 30.0, -400.0), (-1, 0, 0, 0, 1, 0, 0, 0, -1))
    ct = Volume(np.random.default_rng(0).integers(-1000, 1000, g.shape).astype(np.float32), g)
    k, j, i = np.indices(g.shape)
    masks = {
        "Parotid_R": ((k - 10) ** 2 + (j - 15) ** 2 + (i - 10) ** 2 <= 25).astype(np.uint8),
        "Brainstem": ((j - 15) ** 2 + (i - 20) ** 2 <= 9).astype(np.uint8),
    }
    return write_bundle(tmp_path / "atlas", "test atlas", ct, masks, {"source": "unit test"}), ct, masks


def test_bundle_round_trip_keeps_masks_in_place(bundle):
    written, ct, masks = bundle
    loaded = load_bundle(written.path, expected_sha256=written.sha256)
    assert loaded.oars == ["Brainstem", "Parotid_R"]  # catalogue order
    assert np.array_equal(loaded.ct.array, np.rint(ct.array))
    for name, full in masks.items():
        crop, geometry = loaded.masks[name]
        origin_index = np.rint(ct.geometry.physical_to_index(np.asarray(geometry.origin))).astype(int)[::-1]
        restored = np.zeros_like(full)
        sl = tuple(slice(o, o + n) for o, n in zip(origin_index, crop.shape, strict=True))
        restored[sl] = crop
        assert np.array_equal(restored, full), name


def test_a_changed_file_or_a_foreign_model_is_refused(bundle):
    written, _, _ = bundle
    with pytest.raises(BundleIntegrityError, match="do not belong together"):
        load_bundle(written.path, expected_sha256="0" * 64)
    mask_file = written.path / "masks" / "Brainstem.nii.gz"
    mask_file.write_bytes(mask_file.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(BundleIntegrityError, match="Brainstem"):
        load_bundle(written.path)
