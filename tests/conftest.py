"""Shared fixtures of tests/unit and tests/integration: the tiny world (tiny_world.py: a generated dataset and
banks built from it with a random-init backbone, the same folders as triton_util's) and a Triton server."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import tiny_world

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
EXDD = [sys.executable, "-m", "exdd.cli"]
TINY_HW = tiny_world.HW  # 16 x 8 patch grid: fast on CPU
TINY_ARGS = list(tiny_world.BUILD_ARGS)  # `exdd offline build` arguments of the tiny banks

# `exdd serve` keeps its model-control key (serving/admin_key.py) in a temporary file during the tests, never in the
# user's ~/.config; `exdd deploy` (in this process and in subprocesses) reads it there
_KEY_DIR = tempfile.mkdtemp(prefix="exdd-admin-key-")
atexit.register(shutil.rmtree, _KEY_DIR, True)
os.environ["EXDD_ADMIN_KEY_FILE"] = os.path.join(_KEY_DIR, "admin-key")
os.environ.pop("EXDD_ADMIN_KEY", None)


def run_exdd(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run the real `exdd` command line (in this process, tu.exdd_cli; in a subprocess when given
    subprocess arguments such as env or cwd); returns the completed process."""
    import triton_util as tu

    p = subprocess.run(EXDD + list(args), capture_output=True, text=True, **kw) if kw else tu.exdd_cli(*args)
    if check and p.returncode != 0:
        raise AssertionError(f"exdd {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


@pytest.fixture(scope="session")
def tiny_dataset() -> Path:
    """The tiny world's KSDD2-layout dataset of generated brushed-metal surfaces (tiny_world.py); read-only:
    copy it (copy_dataset) to change it."""
    import triton_util as tu

    return Path(tu.dataset())


@pytest.fixture(scope="session")
def tiny_banks(tiny_dataset) -> Path:
    """The banks built from tiny_dataset by the real CLI (tiny_world.BUILD_ARGS); read-only: copy them to change."""
    import triton_util as tu

    return Path(tu.banks())


@pytest.fixture(scope="module")
def server():
    """A Triton server on the tiny Python-backend repository (tests/triton_util.py), one per test module using it."""
    import triton_util as tu

    s = tu.start_server(tu.repository())
    yield s
    s.stop()


def copy_dataset(src: Path, dst: Path) -> Path:
    """A writable copy of a dataset folder."""
    shutil.copytree(src, dst)
    return dst


needs_shared = pytest.mark.skipif(
    not (SHARED / "data" / "magnetic_tile").is_dir(), reason="../shared/data/magnetic_tile is absent (fresh clone)"
)
