"""offline.stability.verdict_agreement: whether two builds decide the same images (issue 25, `--stability`)."""

import numpy as np

from exdd.offline.stability import verdict_agreement


def test_each_build_decides_at_its_own_threshold_and_the_flips_are_named_in_order():
    a = {"m": np.array([0.1, 0.5, 0.9, 0.6]), "uncal": np.array([1.0, 2.0, 3.0, 4.0])}
    b = {"m": np.array([0.1, 0.7, 0.9, 0.4]), "uncal": np.array([1.0, 2.0, 3.0, 4.0])}
    names = ["w.png", "x.png", "y.png", "z.png"]
    got = verdict_agreement(a, b, {"m": 0.55}, {"m": 0.65}, names)
    assert set(got) == {"m"}  # a mode without thresholds in both builds has no verdicts to compare
    # build a: x no, z yes; build b (its own, higher threshold): x yes, z no; w and y agree
    assert got["m"] == {"same": 2, "images": 4, "thresholds": [0.55, 0.65], "flips": ["x.png", "z.png"]}
    at_equal = verdict_agreement(a, a, {"m": 0.55}, {"m": 0.55}, names)["m"]
    assert at_equal["same"] == 4 and at_equal["flips"] == []
    boundary = verdict_agreement({"m": np.array([0.5])}, {"m": np.array([0.5])}, {"m": 0.5}, {"m": 0.50001}, ["v"])
    assert boundary["m"]["flips"] == ["v"]  # score >= threshold is a defect: at the first, not at the second
