"""``exdd serve REPO`` and the ``TritonServer`` class it (and the tests) use to run a local tritonserver.

What ``exdd serve`` promises (RELIABILITY.md, SECURITY.md; tests/test_serve_safety.py):

- model control is closed: the model-repository API (index, load, unload) answers only requests carrying the
  model-control key (admin_key.py), which ``exdd deploy`` sends;
- one product's files cannot stop the others: tritonserver runs with ``--exit-on-error=false``, so a scorer that
  refuses its banks (or a half-written version) leaves only that product UNAVAILABLE; ``serve`` names each product
  ready or not (with the server's reason) and ends only when no product or a shared model could load;
- ``/v2/health/ready`` answers 200 while the server runs (``--strict-readiness=false``): a product that cannot
  load must not take the healthy ones out of a load balancer. A product's readiness is
  ``/v2/models/exdd_<product>/ready`` (``/v2/models/exdd/ready`` for the default product), the shared models'
  ``/v2/models/exdd_features/ready`` (the k8s readiness probe);
- leftovers of a deploy killed mid-way (``.exdd-deploy-*`` folders) are removed at start (repo_lock.py).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from typing import BinaryIO, Dict, List, Optional, Sequence

import click

from exdd.cli_common import fail

from .serving_env import ServingEnv, ServingEnvError, resolve

LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
EXPLICIT_MODEL_CONTROL = ("--model-control-mode=explicit", "--load-model=*")
# a product that cannot load leaves the server up, serving the others, and /v2/health/ready answering
KEEP_SERVING = ("--strict-readiness=false",)


class TritonStartError(RuntimeError):
    """The server exited or did not become ready; the message carries the end of its log."""


def family(host: str) -> socket.AddressFamily:
    """AF_INET6 for an IPv6 address (``::1``, ``::``, ``[::1]``), else AF_INET."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def bare_host(host: str) -> str:
    """host without URL brackets: ``[::1]`` -> ``::1``."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def url_host(host: str) -> str:
    """host as it goes into a URL: IPv6 addresses bracketed (``::1`` -> ``[::1]``)."""
    host = bare_host(host)
    return f"[{host}]" if ":" in host else host


def free_port(host: str = "127.0.0.1") -> int:
    """A currently free TCP port on host (IPv4 or IPv6)."""
    host = bare_host(host)
    with socket.socket(family(host), socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    """Whether binding host:port fails (an IPv6 socket for an IPv6 host)."""
    host = bare_host(host)
    with socket.socket(family(host), socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


class TritonServer:
    """One tritonserver process on a model repository: start, wait_ready, stop (also a context manager)."""

    def __init__(
        self,
        repo: str,
        host: str = "127.0.0.1",
        http_port: int = 8000,
        grpc_port: int = 8001,
        metrics_port: int = 8002,
        env: Optional[ServingEnv] = None,
        log_path: Optional[str] = None,
        exit_on_error: bool = True,
        log_verbose: int = 0,
        extra_args: Sequence[str] = (),
        exit_timeout: int = 30,
    ):
        self.repo = os.path.abspath(repo)
        self.host = bare_host(host)
        self.http_port, self.grpc_port, self.metrics_port = int(http_port), int(grpc_port), int(metrics_port)
        self.env = env
        self.log_path = log_path
        self.exit_on_error = exit_on_error
        self.log_verbose = int(log_verbose)
        self.extra_args = list(extra_args)
        self.exit_timeout = int(exit_timeout)
        self.proc: Optional[subprocess.Popen] = None
        self._log_file: Optional[BinaryIO] = None

    @property
    def local_host(self) -> str:
        """The address clients on this machine use, as it goes into a URL (IPv6 bracketed)."""
        if self.host in ("0.0.0.0", "localhost", ""):
            return "127.0.0.1"
        return url_host("::1" if self.host == "::" else self.host)

    @property
    def http_url(self) -> str:
        return f"{self.local_host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.local_host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"{self.local_host}:{self.metrics_port}"

    def command(self) -> List[str]:
        """The tritonserver command line."""
        assert self.env is not None
        # IPv6: Triton's HTTP and metrics servers (libevhtp) take "ipv6:ADDR", its gRPC server "[ADDR]"
        evhtp = f"ipv6:{self.host}" if family(self.host) == socket.AF_INET6 else self.host
        return [
            self.env.tritonserver,
            f"--model-repository={self.repo}",
            f"--backend-directory={self.env.backend_dir}",
            f"--http-address={evhtp}",
            f"--http-port={self.http_port}",
            f"--grpc-address={url_host(self.host)}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={evhtp}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            f"--exit-on-error={'true' if self.exit_on_error else 'false'}",
            f"--exit-timeout-secs={self.exit_timeout}",
            f"--log-verbose={self.log_verbose}",
            *self.extra_args,
        ]

    def start(self) -> "TritonServer":
        """Launch the process (in its own session, so a terminal's Ctrl-C reaches only us)."""
        if self.env is None:
            self.env = resolve()
        for name, port in (("http", self.http_port), ("grpc", self.grpc_port), ("metrics", self.metrics_port)):
            if port_in_use(self.host, port):
                raise TritonStartError(f"{url_host(self.host)}:{port} is already in use (--{name}-port)")
        out: Optional[BinaryIO] = None
        if self.log_path:
            self._log_file = open(self.log_path, "ab")
            out = self._log_file
        self.proc = subprocess.Popen(
            self.command(),
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            env=self.env.environ(),
            start_new_session=True,
        )
        return self

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server log (when it goes to a file)."""
        if not self.log_path or not os.path.isfile(self.log_path):
            return ""
        with open(self.log_path, "rb") as f:
            return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])

    def problems(self) -> str:
        """The error lines of the log: failed models (UNAVAILABLE) and E-level messages."""
        if not self.log_path or not os.path.isfile(self.log_path):
            return ""
        with open(self.log_path, "rb") as f:
            lines = f.read().decode(errors="replace").splitlines()
        keep = [ln.strip(" |") for ln in lines if "UNAVAILABLE" in ln or (ln[:1] == "E" and ln[1:2].isdigit())]
        return "\n".join(keep[-20:])

    def model_states(self, headers: Optional[Dict[str, str]] = None) -> Dict[str, Dict[str, str]]:
        """The repository index: model name -> {state, reason} (the newest version's entry); headers: the
        model-control key when the API is restricted. urllib.error.HTTPError when the server refuses."""
        import json

        req = urllib.request.Request(
            f"http://{self.http_url}/v2/repository/index", data=b"{}", method="POST", headers=dict(headers or {})
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            rows = json.load(r)
        out: Dict[str, Dict[str, str]] = {}
        for e in rows:
            prev = out.get(e["name"])
            if prev is None or prev.get("state") != "READY":
                out[e["name"]] = {"state": e.get("state", ""), "reason": e.get("reason", "")}
        return out

    def _get(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except (urllib.error.URLError, OSError):
            return 0

    def wait_ready(self, timeout: float = 180.0, live_only: bool = False) -> "TritonServer":
        """Block until /v2/health/ready (or /live) answers 200; TritonStartError if it exits or times out."""
        assert self.proc is not None, "start() first"
        path = "/v2/health/live" if live_only else "/v2/health/ready"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise TritonStartError(
                    f"tritonserver exited with code {self.proc.returncode} before it was ready"
                    f"\n{self.problems() or self.log_tail()}"
                )
            if self._get(path) == 200:
                return self
            time.sleep(0.25)
        raise TritonStartError(
            f"tritonserver not {'live' if live_only else 'ready'} after {timeout:.0f}s\n{self.log_tail()}"
        )

    def poll(self) -> Optional[int]:
        """The exit code, or None while running."""
        return None if self.proc is None else self.proc.poll()

    def stop(self, timeout: Optional[float] = None) -> Optional[int]:
        """SIGINT (Triton's graceful shutdown), SIGKILL if still running after exit_timeout + 10 s; the exit code."""
        timeout = self.exit_timeout + 10.0 if timeout is None else timeout
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        try:  # Python-backend stubs left behind by a server that died (e.g. SIGKILL)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self._log_file:
            self._log_file.close()
            self._log_file = None
        return self.proc.returncode

    def __enter__(self) -> "TritonServer":
        return self.start().wait_ready()

    def __exit__(self, *exc) -> None:
        self.stop()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


@click.command()
@click.argument("repo", type=click.Path(exists=True, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback unless told).")
@click.option("--http-port", default=8000, show_default=True)
@click.option("--grpc-port", default=8001, show_default=True)
@click.option("--metrics-port", default=8002, show_default=True)
@click.option("--timeout", default=300, show_default=True, help="Seconds to wait for the server to be ready.")
@click.option("--log-verbose", default=0, show_default=True, help="tritonserver --log-verbose level.")
@click.option(
    "--admin-key-file",
    default=None,
    type=click.Path(dir_okay=False),
    help="The model-control key (load/unload/index need it; `exdd deploy` sends it). Default: "
    "$EXDD_ADMIN_KEY, else $EXDD_ADMIN_KEY_FILE, else ~/.config/exdd/admin-key, generated (0600) "
    "when absent.",
)
def serve(repo, host, http_port, grpc_port, metrics_port, timeout, log_verbose, admin_key_file):
    """Start a Triton server on the model repository REPO and wait until it is ready (Ctrl-C stops it)."""
    from .admin_key import AdminKeyError, restricted_args, server_key
    from .products import FEATURES_MODEL, PREPROCESS_MODEL, products_in
    from .repo_lock import alive, clean_leftovers, holder, problem

    products = products_in(repo)
    if not products:
        fail(
            f"{repo}: not an exdd model repository (no exdd/config.pbtxt nor exdd_NAME/config.pbtxt with its scorer); "
            "build one with `exdd export repository`"
        )
    if host not in LOOPBACK:
        click.echo(
            f"WARNING: binding {host}: the server (inference and metrics, no authentication; model control "
            "only with the key) is exposed to every machine that can reach this address",
            err=True,
        )
    try:
        key = server_key(admin_key_file, log=lambda s: click.echo(s, err=True))
    except (AdminKeyError, OSError) as e:
        fail(str(e))
    rec = holder(repo)
    if rec is not None and alive(rec) is not True:
        click.echo(f"warning: {problem(repo, rec)}", err=True)
    for p in clean_leftovers(repo):
        click.echo(f"removed the leftover of an unfinished deploy: {p}", err=True)
    try:
        env = resolve(log=lambda s: click.echo(s, err=True))
    except ServingEnvError as e:
        fail(str(e))
    click.echo(f"tritonserver: {env.source}", err=True)
    # explicit model control: every model loaded at start, `exdd deploy` swaps scorer versions through the API
    # (restricted to the key); a model that cannot load does not end the server (KEEP_SERVING)
    server = TritonServer(
        repo,
        host,
        http_port,
        grpc_port,
        metrics_port,
        env=env,
        log_verbose=log_verbose,
        exit_on_error=False,
        extra_args=(*EXPLICIT_MODEL_CONTROL, *KEEP_SERVING, *restricted_args(key)),
    )
    old = {s: signal.signal(s, _raise_interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        server.start().wait_ready(timeout)
        try:
            states = server.model_states(key.headers())
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise TritonStartError(f"cannot read the server's repository index ({e})") from None
        ok = lambda m: states.get(m, {}).get("state") == "READY"  # noqa: E731
        why = lambda m: states.get(m, {}).get("reason") or states.get(m, {}).get("state") or "not in the repository"  # noqa: E731
        for m in (PREPROCESS_MODEL, FEATURES_MODEL):
            if not ok(m):
                raise TritonStartError(f"{m} (shared by every product) is not ready: {why(m)}\n{server.problems()}")
        ready = [pm for pm in products if ok(pm.ensemble) and ok(pm.scorer)]
        for pm in products:
            if pm in ready:
                click.echo(
                    f"product {pm.display}: send IMAGE or IMAGE_BYTES to {pm.ensemble} (scorer {pm.scorer})", err=True
                )
            else:
                bad = pm.scorer if not ok(pm.scorer) else pm.ensemble
                others = "; the other products serve" if len(products) > 1 else ""
                click.echo(
                    f"product {pm.display}: NOT READY ({bad}: {why(bad)}){others}; fix its files and "
                    "`exdd deploy` new banks to it, or restart",
                    err=True,
                )
        known = {PREPROCESS_MODEL, FEATURES_MODEL} | {m for pm in products for m in (pm.ensemble, pm.scorer)}
        for m in sorted(set(states) - known):
            if not ok(m):
                click.echo(
                    f"warning: {os.path.join(repo, m)} is not an exdd model and did not load ({why(m)})", err=True
                )
        if not ready:
            raise TritonStartError("no product is ready (see above)")
        click.echo(
            f"ready: http {server.http_url}  grpc {server.grpc_url}  metrics "
            f"{server.metrics_url}/metrics  (Ctrl-C stops)",
            err=True,
        )
        while server.poll() is None:
            time.sleep(0.5)
        code = server.poll() or 0
        click.echo(f"error: tritonserver exited with code {code}", err=True)
    except TritonStartError as e:
        server.stop()
        fail(str(e))
    except KeyboardInterrupt:
        click.echo("stopping tritonserver ...", err=True)
    finally:
        rc = server.stop()
        for s, h in old.items():
            signal.signal(s, h)
    if code:
        raise SystemExit(code if code > 0 else 1)
    click.echo(f"stopped (exit code {rc})", err=True)
