"""Security promises (SECURITY.md): no unpickling on any load path, no path escapes, no code from requests."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from exdd.client.heatmaps import heatmap_name
from exdd.offline.weights import WeightsError, load_backbone

ROOT = Path(__file__).resolve().parents[2]  # the checkout (tests/unit/..)
CODE_DIRS = ("exdd", "offline", "export", "client", "model_repository", "scripts")
FORBIDDEN = [
    r"pickle\.loads?\(",
    r"allow_pickle\s*=\s*True",
    r"weights_only\s*=\s*False",
    r"(?<![.\w])eval\(",
    r"(?<![.\w])exec\(",
    r"torch\.load\((?![^)]*weights_only=True)",
    r"yaml\.load\(",
    r"shell\s*=\s*True",
]


def test_no_unpickling_eval_or_shell_in_the_code():
    hits = []
    for d in CODE_DIRS:
        for p in (ROOT / d).rglob("*.py"):
            text = p.read_text()
            for pat in FORBIDDEN:
                for m in re.finditer(pat, text):
                    hits.append(f"{p.relative_to(ROOT)}: {m.group(0)}")
    assert not hits, hits


class Canary:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_pickled_checkpoint_is_refused(tmp_path):
    canary = tmp_path / "pwned"
    bad = tmp_path / "evil.pth"
    torch.save({"conv1.weight": Canary(str(canary))}, str(bad))
    with pytest.raises(WeightsError, match="unreadable checkpoint"):
        load_backbone(str(bad))
    assert not canary.exists()


def test_heatmap_names_stay_inside_their_folder():
    for p in ("../../etc/passwd", "/abs/../../x.png", "dir/..\\..\\y.png", "név mit leerzeichen.png", ".."):
        name = heatmap_name(p)
        assert "/" not in name and "\\" not in name and not name.startswith(".") and name.endswith(".png")
