"""Joining a Ray cluster for the ``--ray [ADDRESS]`` options (Ray is the optional ``ray`` extra).

``--ray`` alone (the value ``local``) starts a private local Ray on this machine, or joins the
cluster named by $RAY_ADDRESS when it is set; ``--ray ADDRESS`` joins that cluster
(``auto``, ``HOST:6379`` or ``ray://HOST:10001``). Every node must see the image files and the
weights at the same paths (shared storage), as a Ray batch job usually does.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

LOCAL = "local"


class RayUnavailable(RuntimeError):
    """Ray is not installed, or the cluster could not be joined."""


WORKER_NICENESS = "RAY_worker_niceness"  # read by the raylet when it starts workers


def ray_module():
    """The ray package, or RayUnavailable saying how to install it."""
    try:
        import ray
    except ImportError as e:
        raise RayUnavailable("--ray needs Ray: pip install 'exdd[ray]' (or pip install ray)") from e
    return ray


def connect(address: Optional[str] = LOCAL, num_cpus: Optional[int] = None):
    """ray, initialised for this process (joins once; later calls reuse the connection)."""
    ray = ray_module()
    if ray.is_initialized():
        return ray
    kw: Dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    # the workers import exdd from the driver's environment; keep them quiet and single-threaded per CPU
    kw["runtime_env"] = {"env_vars": {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}}
    local = address in (None, "", LOCAL)
    if not local and num_cpus is not None:
        raise RayUnavailable("--ray-cpus only sizes a local Ray; a cluster has its own CPUs")
    if local and not os.environ.get("RAY_ADDRESS"):
        # A local Ray does the whole job on this machine: its workers run at the driver's priority, not at
        # Ray's default niceness 15, under which any other load on the machine starves the build (Ray's own
        # job API does the same: RAY_worker_niceness=0). The raylet started by ray.init inherits it.
        os.environ.setdefault(WORKER_NICENESS, "0")
    for attempt in range(3):
        try:
            if local and not os.environ.get("RAY_ADDRESS"):
                ray.init(num_cpus=num_cpus, **kw)
            elif local:
                ray.init(**kw)
            else:
                ray.init(address=address, **kw)
            return ray
        except Exception as e:  # Ray raises ConnectionError, RuntimeError, ValueError ...
            # a local Ray gives its raylet 30 s to register: on an overloaded machine, start it again
            if local and "timed out during startup" in str(e) and attempt < 2:
                ray.shutdown()
                continue
            raise RayUnavailable(f"could not join the Ray cluster {address!r}: {e}") from e
    return ray


def cluster_cpus(ray) -> int:
    """CPUs of the joined cluster (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def ray_options(f):
    """The ``--ray [ADDRESS]`` and ``--ray-cpus N`` options of the commands that can run on Ray."""
    import click

    f = click.option(
        "--ray-cpus",
        "ray_cpus",
        type=int,
        default=None,
        help="With --ray (local): CPUs of the local Ray (default: all).",
    )(f)
    f = click.option(
        "--ray",
        "ray_address",
        is_flag=False,
        flag_value=LOCAL,
        default=None,
        metavar="[ADDRESS]",
        help="Run on Ray: alone, a local Ray (or $RAY_ADDRESS's cluster); with ADDRESS "
        "(auto, HOST:6379, ray://HOST:10001), that cluster. Needs the `ray` extra.",
    )(f)
    return f


def connect_or_fail(address: Optional[str], num_cpus: Optional[int]):
    """connect() for a command line: a clear one-line error (exit 2) instead of a traceback."""
    from exdd.cli_common import fail

    if address not in (None, LOCAL, "auto") and os.path.exists(address) and "://" not in address:
        fail(
            f"--ray took {address!r} as the cluster address, but it is a path: write `--ray local` "
            "(or --ray ADDRESS) before paths, or put --ray last"
        )
    try:
        return connect(address, num_cpus)
    except RayUnavailable as e:
        fail(str(e))
