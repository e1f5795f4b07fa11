"""exdd as a user installs it: a wheel in a fresh venv assembles a Triton repository (issue 12, defect 5).

The wheel is built without isolation from a clean copy of the checkout and installed without
dependencies into a new venv; the venv reaches this interpreter's packages (torch, onnx, ...)
through a .pth file written after the install, so the test stays fast and offline.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import triton_util as tu

ROOT = Path(tu.ROOT)
SKIP = shutil.ignore_patterns(
    ".git", ".venv*", "runs", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", ".pytest_cache", ".cache"
)


def test_wheel_in_a_fresh_venv_assembles_a_repository(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=SKIP)
    wheels = tmp_path / "wheels"
    p = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(src)],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    (whl,) = list(wheels.glob("exdd-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    p = subprocess.run(
        [sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "-q", str(whl)],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    site = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    parents = [q for q in sys.path if q.endswith("site-packages") and os.path.isdir(q)]
    with open(os.path.join(site, "zz_parent_packages.pth"), "w") as f:
        f.write("\n".join(parents) + "\n")
    out = tmp_path / "repo"
    code = "import sys, exdd; print(exdd.__file__); from exdd.cli import main; sys.exit(main())"
    run = subprocess.run(
        [
            py,
            "-c",
            code,
            "export",
            "repository",
            "--onnx",
            tu.onnx_fp32(),
            "--banks",
            tu.banks(),
            "--out",
            str(out),
            "--features-backend",
            "python",
        ],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.splitlines()[0].startswith(site), "exdd must come from the installed wheel"
    for rel in ("exdd_scorer/1/model.py", "exdd_features/1/model.py", "exdd_preprocess/1/model.py"):
        assert filecmp.cmp(out / rel, ROOT / "model_repository" / rel, shallow=False), rel
    from exdd.serving.model_files import scoring_modules

    for name in ("exdd_preprocess", "exdd_features", "exdd_scorer"):  # the scoring modules each model imports
        model_py = (ROOT / "model_repository" / name / "1" / "model.py").read_text()
        want = sorted(f"{m}.py" for m in scoring_modules(model_py))
        assert sorted(os.listdir(out / name / "1" / "exdd_scoring")) == want, name
    for name in ("exdd", "exdd_preprocess", "exdd_features", "exdd_scorer"):
        assert (out / name / "config.pbtxt").is_file()
    assert (out / "exdd_scorer" / "1" / "banks" / "manifest.json").is_file()
