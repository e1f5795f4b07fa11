"""offline.calibrate: the build's F1 threshold on the held-out and the cross-fitted defective images (issue 25,
rule 7)."""

import numpy as np

from exdd.metrics import f1_max
from exdd.offline.calibrate import crossfit_threshold, threshold


def test_weighted_f1_max_is_f1_max_with_unit_weights_and_counts_weights():
    rng = np.random.default_rng(0)
    s, y = rng.uniform(0, 1, 40), (rng.uniform(0, 1, 40) < 0.3).astype(int)
    assert f1_max(s, y, np.ones(40)) == f1_max(s, y)
    s2, y2 = np.r_[0.1, 0.5, 0.9], np.r_[0, 1, 1]
    # the defect at 0.5 weighs nothing: flagging only 0.9 is then perfect
    assert f1_max(s2, y2, np.r_[1.0, 0.0, 1.0]) == (1.0, 0.9)


def test_crossfit_defects_join_the_held_out_at_its_share_of_defects_and_only_for_f1():
    held_s, held_y = np.r_[0.1, 0.2, 0.3, 0.9], np.r_[0, 0, 0, 1]  # one held-out defect, far above the normals
    cf = np.r_[0.25, 0.25, 0.25]  # three cross-fitted defects among the normals: they pull the threshold down
    t = crossfit_threshold(held_s, held_y, cf, "f1", 0.01)
    # every defect weighs 1/4: at 0.25, TP 1, FP 1 (0.3), FN 0 -> F1 2/3, above 0.9's 0.4
    assert t["value"] == 0.25 and t["crossfit_defects"] == 3 and t["defect_weight"] == 0.25
    assert np.isclose(t["calibration_f1"], 2 / 3) and np.isclose(t["heldout_f1"], 2 / 3)  # held: TP 1, FP 1
    assert threshold(held_s, held_y, "f1", 0.01)["value"] == 0.9
    same = threshold(held_s, held_y, "f1", 0.01)
    for no_cf in (None, np.zeros(0)):
        assert crossfit_threshold(held_s, held_y, no_cf, "f1", 0.01) == same
    assert crossfit_threshold(held_s, held_y, cf, "fpr", 0.01) == threshold(held_s, held_y, "fpr", 0.01)
    normals_only = np.zeros(4, int)  # no held-out defect: nothing to keep the share of, the build's own rule
    assert crossfit_threshold(held_s, normals_only, cf, "f1", 0.01) == threshold(held_s, normals_only, "f1", 0.01)
