"""A degenerate positive bank built by the real CLI (issue 26): the bounded scale holds and the build warns."""
import numpy as np
import pytest

from exdd_scoring import Scorer


def _degenerate_defects(src, dst, kind):
    """A copy of the tiny dataset whose training defects give a positive bank of one row ('one': a single defect
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
    if kind == "one":     # a blob inside patch cell (4, 2) of the 16 x 8 grid, whatever the image's size
        cell = np.zeros_like(np.asarray(Image.open(first)))
        h, w = cell.shape[:2]
        ch, cw = h / 16, w / 8
        cell[int(4.25 * ch):int(4.75 * ch) + 1, int(2.25 * cw):int(2.75 * cw) + 1] = 255
        Image.fromarray(cell).save(first)
    return dst


@pytest.mark.parametrize("kind", ["one", "dups"])
def test_a_degenerate_positive_bank_keeps_the_bounded_scale_and_the_build_warns(kind, tiny_dataset, tmp_path):
    """Issue 26: a positive bank of one row, or of duplicated rows, has spacing 0 (eps_b was 1e-6: no bounded scale).
    Built by the real CLI, the build warns, the spacing is floored at POS_SCALE_FLOOR_REL x the negative bank's, and
    the served default's scores of the training images (the defect equal to the bank's rows among them) stay within
    a small multiple of their median, while the unbounded dual's explode."""
    import json

    from conftest import TINY_ARGS, run_exdd

    from exdd_scoring.bank import load_banks
    from exdd_scoring.scores import POS_SCALE_FLOOR_REL, bank_scale
    data = _degenerate_defects(tiny_dataset, tmp_path / "data", kind)
    banks = tmp_path / "banks"
    p = run_exdd("offline", "build", str(data), "--out", str(banks), *TINY_ARGS)
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
    run_exdd("offline", "evaluate", str(data), "--banks", str(banks), "--split", "train", "--keep-duplicates",
             "--no-pixel", "--out", str(out))
    images = json.loads(out.read_text())["images"]
    bounded = np.array([im["scores"]["dual_bounded"] for im in images])
    dual = np.array([im["scores"]["dual"] for im in images])
    assert np.isfinite(bounded).all()
    print(kind, "bounded max/median", bounded.max() / np.median(bounded), "dual", dual.max() / np.median(dual))
    assert bounded.max() / np.median(bounded) < 100
    assert dual.max() / np.median(dual) > 1e3          # what the floor bounds: the 1e-6 scale of the same banks
