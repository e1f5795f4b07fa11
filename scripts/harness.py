"""The bench harness every benchmark, study and tool uses: one result record, one latency summary, one serving chain.

- BenchResult: name, parameters, metrics, machine, commit and date of one run, written by one `save` (JSON, atomic);
- latency_stats: the latency summary (n, mean, p50, p90, p95, p99 in ms) of a list of seconds, one key scheme;
- serve_chain: `exdd offline build` -> `exdd export onnx` -> `exdd export repository` through the real command line;
- start_server: a ready tritonserver on free loopback ports (tests/triton_util.py uses it too).

Imports only exdd's public API, lazily, and scripts.common; the package never imports this module.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np

from scripts.common import ROOT, exdd, save_json

# ----------------------------------------------------------------------------- the result record

PROVENANCE = ("name", "params", "machine", "commit", "date")


def machine() -> Dict[str, Any]:
    """What ran a figure: CPU model, cores, memory (GiB), GPU (None without nvidia-smi), host name."""
    cpu = platform.processor() or platform.machine()
    mem_gib = None
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
        with open("/proc/meminfo") as f:
            kb = next(int(ln.split()[1]) for ln in f if ln.startswith("MemTotal:"))
        mem_gib = round(kb / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        pass
    gpu = None
    if shutil.which("nvidia-smi"):
        p = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
        names = [n.strip() for n in p.stdout.splitlines() if n.strip()] if p.returncode == 0 else []
        gpu = ", ".join(names) or None
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem_gib, "gpu": gpu, "host": platform.node()}


def commit() -> str:
    """`git rev-parse HEAD` of the checkout (suffixed -dirty when it has uncommitted changes), or 'unknown'."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=ROOT, capture_output=True).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty else "")


def now() -> str:
    """UTC now, to the second (the record's date)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclasses.dataclass
class BenchResult:
    """One run of a benchmark or study. Its JSON is the metrics at the top level (where each script always wrote
    them, so earlier readers keep working) after the provenance: name, params, machine, commit, date."""

    name: str
    params: Dict[str, Any]
    metrics: Dict[str, Any] = dataclasses.field(default_factory=dict)
    machine: Dict[str, Any] = dataclasses.field(default_factory=machine)
    commit: str = dataclasses.field(default_factory=commit)
    date: str = dataclasses.field(default_factory=now)

    def record(self) -> Dict[str, Any]:
        clash = sorted(set(PROVENANCE) & set(self.metrics))
        if clash:
            raise ValueError(f"{self.name}: metrics may not use the record's own keys {clash}")
        return {
            "name": self.name,
            "params": self.params,
            "machine": self.machine,
            "commit": self.commit,
            "date": self.date,
            **self.metrics,
        }

    def save(self, path: str, indent: Optional[int] = 1) -> str:
        """Write the record atomically (folders made): a run read mid-way never shows half a file."""
        return save_json(path, self.record(), indent=indent)

    def dumps(self, indent: Optional[int] = 1) -> str:
        return json.dumps(self.record(), indent=indent)


def metrics_in(record: Dict[str, Any]) -> Dict[str, Any]:
    """The metrics of a saved record (its provenance keys left out), e.g. to continue an earlier run."""
    return {k: v for k, v in record.items() if k not in PROVENANCE}


def params_of(args: Any) -> Dict[str, Any]:
    """An argparse namespace (or dict) as the record's params."""
    return dict(vars(args)) if not isinstance(args, dict) else dict(args)


# ----------------------------------------------------------------------------- latency


def latency_stats(seconds: Sequence[float]) -> Dict[str, Any]:
    """n and mean, p50 (the median), p90, p95, p99 latency in ms of per-request wall seconds; None when empty."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000
    out: Dict[str, Any] = {"n": int(ms.size)}
    out["mean_ms"] = float(ms.mean()) if ms.size else None
    for q in (50, 90, 95, 99):
        out[f"p{q}_ms"] = float(np.percentile(ms, q)) if ms.size else None
    return out


# ----------------------------------------------------------------------------- banks -> ONNX -> repository


@dataclasses.dataclass
class Chain:
    """What serve_chain made and the wall seconds of each step it ran ('build', 'onnx', 'repository')."""

    banks: str
    onnx: str
    repo: str
    seconds: Dict[str, float]


def build_banks(dataset: str, banks: str, *args: str, log: Optional[Callable[[str], None]] = None) -> float:
    """`exdd offline build DATASET --out BANKS *args`; wall seconds."""
    return exdd("offline", "build", dataset, "--out", banks, *args, log=log)


def export_onnx(
    banks: str, onnx: str, *args: str, log: Optional[Callable[[str], None]] = None, ok: Sequence[int] = (0,)
) -> float:
    """`exdd export onnx --banks BANKS --out ONNX *args`; wall seconds. ok: the accepted exit codes (3: a reduced
    precision's parity check failed, the file still written)."""
    return exdd("export", "onnx", "--banks", banks, "--out", onnx, *args, log=log, ok=ok)


def export_repository(
    onnx: str,
    repo: str,
    *args: str,
    banks: Optional[str] = None,
    products: Optional[Dict[str, str]] = None,
    log: Optional[Callable[[str], None]] = None,
) -> float:
    """`exdd export repository --onnx ONNX --banks BANKS` (or `--product NAME=BANKS` for each product)
    `--out REPO *args`; wall seconds."""
    which = ["--banks", banks] if banks else [v for p, b in (products or {}).items() for v in ("--product", f"{p}={b}")]
    return exdd("export", "repository", "--onnx", onnx, *which, "--out", repo, *args, log=log)


def serve_chain(
    work: str,
    *,
    dataset: Optional[str] = None,
    banks: Optional[str] = None,
    onnx: Optional[str] = None,
    repo: Optional[str] = None,
    build: Sequence[str] = (),
    export: Sequence[str] = (),
    repository: Sequence[str] = (),
    log: Optional[Callable[[str], None]] = None,
    export_ok: Sequence[int] = (0,),
) -> Chain:
    """Banks -> ONNX -> repository: build_banks of dataset (skipped without one: the banks exist), export_onnx,
    export_repository, each with its extra arguments; by default WORK/{banks,f32.onnx,repo}."""
    banks = banks or os.path.join(work, "banks")
    onnx = onnx or os.path.join(work, "f32.onnx")
    repo = repo or os.path.join(work, "repo")
    secs: Dict[str, float] = {}
    if dataset is not None:
        secs["build"] = build_banks(dataset, banks, *build, log=log)
    secs["onnx"] = export_onnx(banks, onnx, *export, log=log, ok=export_ok)
    secs["repository"] = export_repository(onnx, repo, *repository, banks=banks, log=log)
    return Chain(banks, onnx, repo, secs)


# ----------------------------------------------------------------------------- a local server


def start_server(
    repo: str,
    log_path: Optional[str] = None,
    timeout: float = 300.0,
    wait: str = "ready",
    env: Any = None,
    **server_options: Any,
):
    """A started tritonserver on free loopback ports, logging to log_path (default REPO/../<repo>.log), in env (default:
    the configured serving venv); waited for 'ready', 'live' or not at all (''), stopped again when that fails."""
    from exdd.serving.serve import TritonServer, free_port
    from exdd.serving.serving_env import resolve

    repo_dir = os.path.normpath(repo)
    log_path = log_path or os.path.join(os.path.dirname(repo_dir), os.path.basename(repo_dir) + ".log")
    srv = TritonServer(
        repo,
        "127.0.0.1",
        free_port(),
        free_port(),
        free_port(),
        env=env or resolve(),
        log_path=log_path,
        **server_options,
    )
    srv.start()
    try:
        if wait:
            srv.wait_ready(timeout, live_only=(wait == "live"))
    except BaseException:
        srv.stop()
        raise
    return srv
