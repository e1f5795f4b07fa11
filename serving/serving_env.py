"""Where a ``tritonserver`` comes from: a Triton container's (on PATH) or the one in the nvidia-pytriton wheel.

The bundled server lives in a serving venv of its own (default ``~/.cache/exdd/serve-venv``, or
``$EXDD_SERVE_VENV``), created on first use with ``numpy<2``, onnxruntime, openvino and faiss-cpu at pinned
versions (SERVING_PACKAGES) and Pillow
(the very version of this exdd's Python, so the server's exdd_preprocess decodes a JPEG exactly as the client
does), and nvidia-pytriton
installed with ``--no-deps``. The Python-backend stub runs model.py with the packages of the venv
whose ``bin/`` is first on PATH when the server starts, so that venv goes first on PATH; it must
have numpy<2 (the 2.51 stub corrupts tensors with numpy 2). The stub links the system
``libpythonX.Y`` (Debian/Ubuntu package ``libpythonX.Y``). The server's own libraries resolve
through the wheel's RPATH (``nvidia_pytriton.libs``), so no LD_LIBRARY_PATH is needed.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

PYTRITON = "nvidia-pytriton==0.7.0"
VENV_ENV = "EXDD_SERVE_VENV"
DEFAULT_VENV = os.path.join("~", ".cache", "exdd", "serve-venv")
CONTAINER_BACKENDS = "/opt/tritonserver/backends"

Log = Callable[[str], None]


class ServingEnvError(RuntimeError):
    """No usable tritonserver; the message says what to do."""


@dataclass
class ServingEnv:
    """A tritonserver binary, its backend directory and the environment to start it in."""

    tritonserver: str
    backend_dir: str
    source: str
    path_prepend: List[str] = field(default_factory=list)

    def environ(self, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        """The process environment for the server: the serving venv's bin first on PATH."""
        env = dict(os.environ if base is None else base)
        if self.path_prepend:
            env["PATH"] = os.pathsep.join(self.path_prepend + [env.get("PATH", "")])
            env.pop("PYTHONHOME", None)
            env.pop("PYTHONPATH", None)
        return env


def venv_dir() -> str:
    """The serving venv's location ($EXDD_SERVE_VENV or ~/.cache/exdd/serve-venv)."""
    return os.path.abspath(os.path.expanduser(os.environ.get(VENV_ENV) or DEFAULT_VENV))


def _run(cmd: List[str], what: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-10:])
        raise ServingEnvError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return proc.stdout


def venv_python(venv: str) -> str:
    """The venv's python executable."""
    return os.path.join(venv, "bin", "python")


#: what model.py files import in the serving venv: module -> (distribution, pinned version); numpy<2 is installed
#: with them. The pins are the versions the suite runs the server with (RELIABILITY.md); PIL (exdd_preprocess) is
#: pinned to this Python's Pillow at install time (None here), so the server decodes as the client does.
SERVING_PACKAGES = {
    "onnxruntime": ("onnxruntime", "1.32.0"),
    "openvino": ("openvino", "2026.4.1"),
    "faiss": ("faiss-cpu", "1.15.1"),
    "PIL": ("pillow", None),
}


def pinned_version(module: str) -> str:
    """The version a SERVING_PACKAGES module must have in the serving venv (Pillow: this Python's)."""
    dist, version = SERVING_PACKAGES[module]
    if version is None:
        import PIL

        return PIL.__version__
    return version


def pillow_requirement() -> str:
    """pillow==<the Pillow of this Python>: the server decodes and resizes with the client's own Pillow."""
    return requirement("PIL")


def requirement(module: str) -> str:
    """The pinned pip requirement installing a SERVING_PACKAGES module."""
    return f"{SERVING_PACKAGES[module][0]}=={pinned_version(module)}"


def add_missing_packages(venv: str, missing: List[str], log: Log) -> None:
    """Install into an existing serving venv the SERVING_PACKAGES modules it lacks or has at another version than
    the pinned one (venvs from older exdd)."""
    if missing:
        reqs = [requirement(m) for m in missing]
        log(f"adding {', '.join(reqs)} to the serving venv {venv}")
        _run(
            [venv_python(venv), "-m", "pip", "install", "--disable-pip-version-check", "-q", "numpy<2", *reqs],
            f"installing {', '.join(reqs)} into the serving venv",
        )


def create_venv(venv: str, log: Log) -> None:
    """python -m venv, then numpy<2 + onnxruntime + openvino + faiss-cpu + Pillow, then nvidia-pytriton without its
    dependencies."""
    log(f"creating the serving venv {venv} (first use; a few minutes)")
    os.makedirs(os.path.dirname(venv), exist_ok=True)
    _run([sys.executable, "-m", "venv", venv], "creating the serving venv")
    pip = [venv_python(venv), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    # openvino: the optional bf16 CPU extractor (--features-backend python-openvino);
    # faiss-cpu: the CPU scorer's optional HNSW index (exdd export repository --index hnsw);
    # Pillow: exdd_preprocess (decode + resize on the server), the client's own version
    reqs = [requirement(m) for m in SERVING_PACKAGES]
    _run(pip + ["numpy<2", *reqs], f"installing numpy<2, {', '.join(reqs)} into the serving venv")
    _run(pip + ["--no-deps", PYTRITON], f"installing {PYTRITON} into the serving venv")


def venv_info(venv: str) -> Dict[str, Any]:
    """Python version, numpy version, site-packages of the venv and the SERVING_PACKAGES modules it lacks (one at
    another version than its pin counts as missing: it is reinstalled at the pinned version)."""
    code = (
        "import sys, sysconfig, numpy, importlib.util, importlib.metadata as md; "
        "print(f'{sys.version_info[0]}.{sys.version_info[1]}'); "
        "print(numpy.__version__); print(sysconfig.get_paths()['purelib']); "
        "want = [a.split('=') for a in sys.argv[1:]]; "
        "print(' '.join(m for m, d, v in want if importlib.util.find_spec(m) is None or md.version(d) != v))"
    )
    pins = [f"{m}={SERVING_PACKAGES[m][0]}={pinned_version(m)}" for m in SERVING_PACKAGES]
    out = _run([venv_python(venv), "-c", code, *pins], f"inspecting the serving venv {venv}").split("\n")
    return {"python": out[0], "numpy": out[1], "site": out[2], "missing": out[3].split()}


def check_libpython(stub: str, pyver: str, log: Log) -> None:
    """Make sure the stub's libpython resolves; apt-get install it when root, else say how."""

    def missing() -> List[str]:
        out = subprocess.run(["ldd", stub], capture_output=True, text=True).stdout
        return [ln.split()[0] for ln in out.splitlines() if "not found" in ln]

    gone = missing()
    if not gone:
        return
    pkg = f"libpython{pyver}"
    if os.geteuid() == 0 and shutil.which("apt-get") and any("libpython" in g for g in gone):
        log(f"installing {pkg} with apt-get (the Python-backend stub links it)")
        subprocess.run(["apt-get", "install", "-y", "-q", pkg], capture_output=True, text=True)
        gone = missing()
    if gone:
        raise ServingEnvError(
            f"the Python-backend stub {stub} cannot find {', '.join(gone)}: install the system "
            f"package {pkg} (e.g. `sudo apt-get install {pkg}`) and run again"
        )


def prepare_bundled(venv: str, log: Log) -> ServingEnv:
    """The wheel's tritonserver with the stub of the venv's Python copied beside libtriton_python.so."""
    info = venv_info(venv)
    if int(info["numpy"].split(".")[0]) >= 2:
        raise ServingEnvError(
            f"the serving venv {venv} has numpy {info['numpy']}; the bundled Triton 2.51 Python "
            f"backend needs numpy<2: run `{venv_python(venv)} -m pip install 'numpy<2'`"
        )
    add_missing_packages(venv, info["missing"], log)
    root = os.path.join(info["site"], "pytriton", "tritonserver")
    binary = os.path.join(root, "bin", "tritonserver")
    if not os.path.isfile(binary):
        raise ServingEnvError(f"{venv} has no {binary}: `{venv_python(venv)} -m pip install --no-deps {PYTRITON}`")
    backends = os.path.join(root, "backends")
    stub_dst = os.path.join(backends, "python", "triton_python_backend_stub")
    stub_src = os.path.join(root, "python_backend_stubs", info["python"], "triton_python_backend_stub")
    if not os.path.isfile(stub_dst):
        if not os.path.isfile(stub_src):
            have = sorted(os.path.basename(p) for p in glob.glob(os.path.join(root, "python_backend_stubs", "*")))
            raise ServingEnvError(
                f"no Python-backend stub for Python {info['python']} in {root} (has {have}): "
                f"create the serving venv with one of those Python versions"
            )
        shutil.copy2(stub_src, stub_dst)
        os.chmod(stub_dst, 0o755)
    check_libpython(stub_dst, info["python"], log)
    return ServingEnv(binary, backends, f"nvidia-pytriton wheel in {venv}", [os.path.join(venv, "bin")])


def resolve(log: Log = lambda s: None, create: bool = True) -> ServingEnv:
    """A container's tritonserver if on PATH, else the bundled one (creating its venv on first use)."""
    found = shutil.which("tritonserver")
    if found:
        backends = (
            CONTAINER_BACKENDS
            if os.path.isdir(CONTAINER_BACKENDS)
            else os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(found))), "backends")
        )
        return ServingEnv(found, backends, f"tritonserver on PATH ({found})")
    venv = venv_dir()
    if not os.path.isfile(venv_python(venv)):
        if not create:
            raise ServingEnvError(f"no tritonserver on PATH and no serving venv at {venv}")
        create_venv(venv, log)
    return prepare_bundled(venv, log)
