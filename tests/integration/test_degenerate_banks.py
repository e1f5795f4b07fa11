"""A degenerate positive bank built by the real CLI (issue 26): the bounded scale holds and the build warns.

The one test that does not use the tiny world (tiny_world.py): its claim is a ratio of the training images' scores
(max / median) with a patch sitting on a positive-bank vector, and at the tiny world's size (9 training images,
d = 16) neither side shows: the float32 kNN leaves the one-row bank's own patch ~5e-3 away (the unbounded dual
stays at 75x its median, no explosion), and 3 duplicated defects among 9 images put the bounded max at 119x its
median. So it builds the 20-image, d = 32 world it was written on (SOURCE, BUILD_ARGS below).
"""

import numpy as np
import pytest
import tiny_world

from exdd_scoring import Scorer

SOURCE = {"n_train_normal": 14, "n_train_defect": 6, "n_test_normal": 6, "n_test_defect": 6, "size_hw": (160, 80)}
BUILD_ARGS = (
    "--weights",
    tiny_world.WEIGHTS,
    "--input-size",
    f"{tiny_world.HW[0]}x{tiny_world.HW[1]}",
    "--d",
    "32",
    "--min-bank",
    "40",
)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    from exdd.offline.surfaces import generate

    root = tmp_path_factory.mktemp("degenerate") / "source"
    generate(str(root), seed=0, **SOURCE)
    return root


def _degenerate_defects(src, dst, kind):
    """A copy of the source dataset whose training defects give a positive bank of one row ('one': a single defect
    image, its mask one patch cell) or of duplicated rows ('dups': every defect image a copy of the first)."""
    import shutil

    from PIL import Image

    shutil.copytree(src, dst)
    train = dst / "train"
    masks = sorted(p for p in train.glob("*_GT.png") if np.asarray(Image.open(p)).any())
    first, first_img = masks[0], train / masks[0].name.replace("_GT", "")
    for m in masks[1:]:
        if kind == "dups":
            shutil.copy(first, m)
            shutil.copy(first_img, train / m.name.replace("_GT", ""))
        else:
            Image.fromarray(np.zeros_like(np.asarray(Image.open(m)))).save(m)
    if kind == "one":  # 160x80 source -> 128x64 input (x0.8): rows 40-50, cols 20-30 are exactly cell (4, 2)
        cell = np.zeros_like(np.asarray(Image.open(first)))
        cell[40:50, 20:30] = 255
        Image.fromarray(cell).save(first)
    return dst


@pytest.mark.parametrize("kind", ["one", "dups"])
def test_a_degenerate_positive_bank_keeps_the_bounded_scale_and_the_build_warns(kind, source, tmp_path):
    """Issue 26: a positive bank of one row, or of duplicated rows, has spacing 0 (eps_b was 1e-6: no bounded scale).
    Built by the real CLI, the build warns, the spacing is floored at POS_SCALE_FLOOR_REL x the negative bank's, and
    the served default's scores of the training images (the defect equal to the bank's rows among them) stay within
    a small multiple of their median, while the unbounded dual's explode."""
    import json

    from conftest import run_exdd

    from exdd_scoring.bank import load_banks
    from exdd_scoring.scores import POS_SCALE_FLOOR_REL, bank_scale

    data = _degenerate_defects(source, tmp_path / "data", kind)
    banks = tmp_path / "banks"
    p = run_exdd("offline", "build", str(data), "--out", str(banks), *BUILD_ARGS)
    assert "warning: the positive bank is too small or degenerate" in p.stderr, p.stderr
    pair = load_banks(str(banks))
    pos, neg = pair.positive, pair.negative
    assert bank_scale(pos.vectors, pos.neighbors, np) == 0.0
    if kind == "one":
        assert pos.vectors.shape[0] == 1
    else:
        assert np.unique(pos.vectors, axis=0).shape[0] < pos.vectors.shape[0]
    floor = POS_SCALE_FLOOR_REL * bank_scale(neg.vectors, neg.neighbors, np)
    assert Scorer(pair).params["pos_scale"] == pytest.approx(floor)
    out = tmp_path / "r.json"
    run_exdd(
        "offline",
        "evaluate",
        str(data),
        "--banks",
        str(banks),
        "--split",
        "train",
        "--keep-duplicates",
        "--no-pixel",
        "--out",
        str(out),
    )
    images = json.loads(out.read_text())["images"]
    bounded = np.array([im["scores"]["dual_bounded"] for im in images])
    dual = np.array([im["scores"]["dual"] for im in images])
    assert np.isfinite(bounded).all()
    print(kind, "bounded max/median", bounded.max() / np.median(bounded), "dual", dual.max() / np.median(dual))
    assert bounded.max() / np.median(bounded) < 100
    assert dual.max() / np.median(dual) > 1e3  # what the floor bounds: the 1e-6 scale of the same banks
