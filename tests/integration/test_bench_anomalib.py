"""scripts/benchmarks/bench_anomalib.py: the same normals for both methods, exdd's pluggable side, the weights check."""

from __future__ import annotations

import numpy as np
import pytest
import tiny_world
from conftest import TINY_HW


def _bench():
    """The benchmark as a module (imported, so its dataclasses find their module)."""
    from scripts.benchmarks import bench_anomalib

    return bench_anomalib


def test_split_uses_the_negative_banks_normals_and_exdd_side_scores_every_mode(tiny_dataset, tmp_path):
    from exdd.datasets import holdout_split, load_split
    from exdd.offline.build import BuildConfig
    from exdd.offline.evaluate import score_split
    from exdd.offline.features import build_extractor
    from exdd_scoring import MODES, Scorer, load_banks

    b = _bench()
    cfg = BuildConfig(min_size=tiny_world.MIN_BANK)
    split = b.make_split(str(tiny_dataset), TINY_HW, cfg, None, None)
    kept, held = holdout_split(load_split(str(tiny_dataset), "train"), cfg.holdout, cfg.seed)
    assert [s.path for s in split.normals] == [s.path for s in kept if s.label == 0]
    assert not {s.path for s in held} & {s.path for s in split.normals}
    assert split.masks.shape == (len(split.test),) + TINY_HW and split.masks.any()
    sub = b.make_split(str(tiny_dataset), TINY_HW, cfg, 4, 4)
    assert len(sub.normals) == 4 and {s.path for s in sub.normals} <= {s.path for s in split.normals}
    assert len(sub.test) == 4 and 0 < sub.labels.sum() < 4

    modes, infer = b.exdd_modes(split, "random:0", TINY_HW, d=tiny_world.D, cfg=cfg, work=str(tmp_path))
    assert set(modes) == set(MODES)
    for r in modes.values():
        assert r.scores.shape == (len(split.test),) and np.isfinite(r.scores).all()
        assert r.maps.shape == split.masks.shape and np.isfinite(r.maps).all()
    # the same figures as the project's evaluator on the banks it built
    model, info = build_extractor("random:0", tiny_world.D, 0, TINY_HW)
    bank_dir = next(p for p in tmp_path.iterdir() if p.is_dir())
    ref = score_split(split.test, model, Scorer(load_banks(str(bank_dir), info)), TINY_HW)
    for m in MODES:
        np.testing.assert_allclose(modes[m].scores, ref.scores[m], rtol=1e-5)
    score, amap = infer([s.path for s in split.test[:2]])
    assert score.shape == (2,) and amap.shape == (2,) + TINY_HW
    met = b.metrics(modes["patchcore"], split, 50, 0)
    assert met["image_ci90"][0] <= met["image_auroc"] <= met["image_ci90"][1]
    assert met["pixel_ci90"][0] <= met["pixel_auroc"] <= met["pixel_ci90"][1]


def test_weights_go_into_anomalibs_backbone_completely():
    pytest.importorskip("anomalib")
    import torch

    b = _bench()
    model, _ = b.anomalib_model("random:3", (64, 64), 0.01)
    net = model.model.feature_extractor.feature_extractor
    from exdd.offline.weights import load_backbone

    ours, _ = load_backbone("random:3")
    w = ours.state_dict()["layer3.5.conv3.weight"]
    assert torch.equal(net.state_dict()["layer3.5.conv3.weight"], w)
    b.check_same_backbone(net, ours)  # passes: same weights
    with pytest.raises(RuntimeError, match="differs"):
        b.check_same_backbone(net, load_backbone("random:4")[0])
