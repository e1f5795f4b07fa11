"""A built bank folder (the tiny banks) tampered with is refused by the loader, naming the problem: malformed
features, an object-dtype array even with a forged checksum, a file entry escaping the folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from exdd_scoring import BankError, load_banks
from exdd_scoring.bank import sha256_file


def test_a_manifest_with_malformed_features_is_refused(tiny_banks, tmp_path):
    import shutil

    from exdd_scoring import load_banks

    bad = tmp_path / "b"
    shutil.copytree(tiny_banks, bad)
    m = json.loads((bad / "manifest.json").read_text())
    m["features"]["grid"] = "16x8"
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BankError, match="grid must be two positive integers"):
        load_banks(str(bad))


def _copy_banks(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_object_array_bank_is_refused(tiny_banks, tmp_path):
    banks = _copy_banks(tiny_banks, tmp_path / "b")
    np.save(banks / "positive.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    m = json.loads((banks / "manifest.json").read_text())
    m["files"]["positive.npy"]["sha256"] = sha256_file(str(banks / "positive.npy"))  # even with a forged checksum
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
