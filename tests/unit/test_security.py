"""Security promises (SECURITY.md): no unpickling on any load path, no path escapes, no code from requests."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from exdd.client.heatmaps import heatmap_name
from exdd.offline.weights import WeightsError, load_backbone
from exdd_scoring import BankError, load_banks
from exdd_scoring.bank import sha256_file

ROOT = Path(__file__).resolve().parents[2]      # the checkout (tests/unit/..)
CODE_DIRS = ("exdd", "offline", "export", "client", "model_repository", "scripts")
FORBIDDEN = [r"pickle\.loads?\(", r"allow_pickle\s*=\s*True", r"weights_only\s*=\s*False", r"(?<![.\w])eval\(",
             r"(?<![.\w])exec\(",
             r"torch\.load\((?![^)]*weights_only=True)", r"yaml\.load\(", r"shell\s*=\s*True"]


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


def _copy_banks(src: Path, dst: Path) -> Path:
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_object_array_bank_is_refused(tiny_banks, tmp_path):
    banks = _copy_banks(tiny_banks, tmp_path / "b")
    np.save(banks / "positive.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    m = json.loads((banks / "manifest.json").read_text())
    m["files"]["positive.npy"]["sha256"] = sha256_file(str(banks / "positive.npy"))   # even with a forged checksum
    (banks / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BankError, match="not a plain .npy array"):
        load_banks(str(banks))


def test_manifest_paths_cannot_escape_the_bank_directory(tiny_banks, tmp_path):
    banks = _copy_banks(tiny_banks, tmp_path / "b")
    m = json.loads((banks / "manifest.json").read_text())
    m["files"]["../../negative.npy"] = m["files"].pop("negative.npy")
    (banks / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BankError, match="missing bank file|not a plain file name"):
        load_banks(str(banks))
    from exdd_scoring.manifest import safe_name
    for bad in ("../x.npy", "/etc/passwd", "a/b.npy", "..", ""):
        with pytest.raises(BankError):
            safe_name(bad, "here")


def test_heatmap_names_stay_inside_their_folder():
    for p in ("../../etc/passwd", "/abs/../../x.png", "dir/..\\..\\y.png", "név mit leerzeichen.png", ".."):
        name = heatmap_name(p)
        assert "/" not in name and "\\" not in name and not name.startswith(".") and name.endswith(".png")
