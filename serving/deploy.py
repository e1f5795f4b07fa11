"""``exdd deploy NEW_BANKS --repository REPO [--product NAME] [--url HOST:PORT]``: a new scorer version, no downtime.

The assembled repository keeps numbered versions of each product's scorer (``exdd_scorer`` for the
default product, ``exdd_<NAME>_scorer`` for product NAME: ``1/``, ``2/``, ...), each a complete copy
(model.py, exdd_scoring/, features.json, banks/). Deploying to one product touches no other model:

1. verifies the new banks (checksums) and refuses banks whose features differ from the shared
   extractor's fingerprint (``exdd_features``' ``features.json``, and the product scorer's latest
   ``features.json``) -- nothing is written then;
2. writes ``<scorer>/N+1/`` atomically and durably (staged in ``<scorer>/.exdd-deploy-*``, a folder
   Triton ignores, fsync'd, then renamed into place), with the new banks' calibrated threshold for the
   served mode in the scorer config unless told to keep it;
3. with ``--url``: asks the server (started with ``--model-control-mode=explicit``, as
   ``exdd serve`` does, its model-repository API restricted to the model-control key: admin_key.py,
   which deploy sends) to load that scorer. Triton loads version N+1 while N keeps serving,
   and unloads N once N+1 is ready (version policy: latest 1); the ensemble's step has
   ``model_version: -1`` and so takes the new version from then on. Every request is answered by
   one version. If the server fails to load N+1, the version directory is removed again (the old
   version was never unloaded and keeps serving) and the error names the server's reason.

Older versions beyond ``--keep`` are removed after a successful load. One deploy at a time per repository:
the whole deployment holds ``REPO/.exdd-deploy.lock`` (repo_lock.py); a second one is refused, naming the holder.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import click

from exdd.cli_common import fail
from exdd.fileio import atomic_write, fsync_dir, fsync_tree

from .admin_key import AdminKey, AdminKeyError, client_key
from .products import FEATURES_MODEL, ProductError, ProductModels, find
from .repo_lock import STAGE_PREFIX, RepositoryLocked, repository_lock

SCORER = ProductModels(None).scorer  # the default product's scorer
DEPLOY_RECORD = "deploy.json"


class DeployError(ValueError):
    """A deployment that cannot proceed; nothing is left half-done. The message names the cause."""


@dataclass
class Deployed:
    """What a deployment did."""

    version: int
    previous: int
    loaded: bool
    threshold: Optional[float]
    removed: List[int]
    model: str = SCORER  # the scorer model the version belongs to


def versions(model_dir: str) -> List[int]:
    """The numbered version directories of a model, ascending."""
    if not os.path.isdir(model_dir):
        return []
    return sorted(int(n) for n in os.listdir(model_dir) if n.isdigit() and os.path.isdir(os.path.join(model_dir, n)))


def _parse_config(text: str, model: str = SCORER):
    """A config.pbtxt text as Triton's ModelConfig message (protobuf text format)."""
    from .configs import protobuf

    mc, text_format = protobuf()
    try:
        return text_format.Parse(text, mc.ModelConfig())
    except text_format.ParseError as e:
        raise DeployError(f"{model}/config.pbtxt is not a valid model config: {e}") from None


def config_parameter(text: str, key: str, model: str = SCORER) -> Optional[str]:
    """The string_value of parameter key in a config.pbtxt text, or None."""
    params = _parse_config(text, model).parameters
    return params[key].string_value if key in params else None


def set_config_parameter(text: str, key: str, value: Optional[str], model: str = SCORER) -> str:
    """config.pbtxt text with parameter key set to value (added if absent), or removed when value is None."""
    from .configs import to_text

    c = _parse_config(text, model)
    if value is None:
        c.parameters.pop(key, None)
    else:
        c.parameters[key].string_value = value
    return to_text(c)


def product_models(repo: str, product: Optional[str]) -> ProductModels:
    """The models of the product --product names in repo (None: the only product); DeployError listing the known
    ones."""
    try:
        return find(repo, product)
    except ProductError as e:
        raise DeployError(str(e)) from None


def _features_of(path: str) -> Optional[Dict[str, Any]]:
    """A features.json as a dict (None when the file is absent); DeployError when unreadable."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise DeployError(f"{path}: unreadable ({e})") from None


def served_features(repo: str, scorer_version_dir: str) -> List[Tuple[str, Dict[str, Any]]]:
    """(where, fingerprint) the new banks must match: the shared extractor's (latest exdd_features version with a
    features.json) and the product scorer's latest; DeployError when there is neither."""
    out = []
    feats = [
        v
        for v in versions(os.path.join(repo, FEATURES_MODEL))
        if os.path.isfile(os.path.join(repo, FEATURES_MODEL, str(v), "features.json"))
    ]
    if feats:
        shared = _features_of(os.path.join(repo, FEATURES_MODEL, str(feats[-1]), "features.json"))
        if shared is not None:  # present: listed above
            out.append((f"the shared extractor ({FEATURES_MODEL}/{feats[-1]})", shared))
    own = _features_of(os.path.join(scorer_version_dir, "features.json"))
    if own is not None:
        out.append(
            (
                f"the served scorer ({os.path.basename(os.path.dirname(scorer_version_dir))}/"
                f"{os.path.basename(scorer_version_dir)})",
                own,
            )
        )
    if not out:
        raise DeployError(
            f"{scorer_version_dir}/features.json: missing (and no {FEATURES_MODEL}/N/features.json): "
            "rebuild the repository with `exdd export repository`"
        )
    return out


def prepare(
    bank_dir: str, repo: str, keep_threshold: bool = False, product: Optional[str] = None, lock=None
) -> Dict[str, Any]:
    """Verify the banks against the served extractor and write the product's next scorer version (not loaded yet).
    The caller holds the repository's deploy lock (lock: its repo_lock.Lock, told what is being added)."""
    from exdd_scoring import BankError, load_banks
    from exdd_scoring.bank import check_features, sha256_file

    from .configs import line_parameters
    from .repository import choose_threshold, copy_banks

    pm = product_models(repo, product)
    scorer = pm.scorer
    model_dir = os.path.join(repo, scorer)
    have = versions(model_dir)
    cfg_path = os.path.join(model_dir, "config.pbtxt")
    if not have or not os.path.isfile(cfg_path):
        raise DeployError(f"{repo}: not an exdd model repository (no {scorer}/config.pbtxt with a numbered version)")
    latest = have[-1]
    latest_dir = os.path.join(model_dir, str(latest))
    for_product = "" if pm.product is None else f" of product {pm.product!r}"
    try:
        banks = load_banks(bank_dir)
        for where, served in served_features(repo, latest_dir):
            check_features(banks.manifest.features, served, f"{bank_dir}{for_product} vs {where}")
    except BankError as e:
        raise DeployError(f"refused: {e}") from None
    config = open(cfg_path).read()
    mode = config_parameter(config, "mode", scorer) or banks.manifest.default_mode
    new_thr = choose_threshold(banks.manifest, mode, None)
    new_config = config
    if not keep_threshold:
        new_config = set_config_parameter(config, "threshold", None if new_thr is None else repr(new_thr), scorer)
        band = line_parameters(banks.manifest, mode, new_thr, 0)["review_band"]  # issue 27: the band served
        new_config = set_config_parameter(new_config, "review_band", band, scorer)
    version = latest + 1
    if lock is not None:
        lock.note(f"adding {scorer} version {version} from {os.path.abspath(bank_dir)}")
    # staged inside the model folder under a name that is not a number: Triton never takes it for a model or a
    # version, whatever moment a kill leaves it behind (exdd serve removes it at start)
    tmp = tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=model_dir)
    try:
        shutil.copy2(os.path.join(latest_dir, "model.py"), tmp)
        shutil.copy2(os.path.join(latest_dir, "features.json"), tmp)
        shutil.copytree(
            os.path.join(latest_dir, "exdd_scoring"),
            os.path.join(tmp, "exdd_scoring"),
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
        copy_banks(bank_dir, os.path.join(tmp, "banks"), banks.manifest)
        record = {
            "version": version,
            "previous": latest,
            "model": scorer,
            "product": pm.label,
            "banks": os.path.abspath(bank_dir),
            "banks_manifest_sha256": sha256_file(os.path.join(bank_dir, "manifest.json")),
            "parent": None if banks.manifest.parent is None else dict(banks.manifest.parent),
            "mode": mode,
            "threshold": None if keep_threshold else new_thr,
            "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        with open(os.path.join(tmp, DEPLOY_RECORD), "w") as f:
            json.dump(record, f, indent=2)
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 -> a plain folder's mode
        fsync_tree(tmp)
        os.rename(tmp, os.path.join(model_dir, str(version)))
        fsync_dir(model_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if new_config != config:
        atomic_write(cfg_path, new_config, fsync=True)
    return {
        "version": version,
        "previous": latest,
        "config_before": config,
        "config_path": cfg_path,
        "threshold": None if keep_threshold else new_thr,
        "model": scorer,
        "product": pm,
    }


def rollback_prepared(repo: str, prep: Dict[str, Any]) -> None:
    """Undo prepare(): remove the new version directory and restore the scorer config."""
    shutil.rmtree(os.path.join(repo, prep.get("model", SCORER), str(prep["version"])), ignore_errors=True)
    atomic_write(prep["config_path"], prep["config_before"], fsync=True)


def _client(url: str, timeout_s: float):
    import tritonclient.http as http

    return http.InferenceServerClient(
        url.split("://", 1)[-1], network_timeout=timeout_s, connection_timeout=min(timeout_s, 30.0)
    )


def load(url: str, timeout_s: float = 600.0, model: str = SCORER, key: Optional[AdminKey] = None) -> None:
    """Ask the server to (re)load one scorer model (no other model), sending the model-control key when given;
    DeployError with the server's reason on failure."""
    from tritonclient.utils import InferenceServerException

    c = _client(url, timeout_s)
    try:
        c.load_model(model, headers=key.headers() if key else None)
    except InferenceServerException as e:
        msg = str(e)
        if "explicit" in msg.lower() and "not allowed" in msg.lower() or "polling" in msg.lower():
            msg += " (start the server with --model-control-mode=explicit, as `exdd serve` does)"
        elif "restricted" in msg.lower():
            msg += (
                " (the server requires the model-control key: give `exdd deploy` the server's key with "
                "--admin-key-file or $EXDD_ADMIN_KEY)"
                if key is None
                else f" (the key from {key.source} is not the server's)"
            )
        raise DeployError(f"{url}: loading {model} failed: {msg}") from None
    except Exception as e:  # connection problems, named
        raise DeployError(f"{url}: cannot reach the server ({e})") from None
    finally:
        c.close()


def ready_version(url: str, version: int, model: str = SCORER) -> bool:
    """Whether the server reports the scorer version ready."""
    c = _client(url, 30.0)
    try:
        return bool(c.is_model_ready(model, str(version)))
    except Exception:
        return False
    finally:
        c.close()


def prune(repo: str, keep: int, protect: int, model: str = SCORER) -> List[int]:
    """Remove all but the newest keep versions of a scorer (never protect); the versions removed."""
    model_dir = os.path.join(repo, model)
    have = versions(model_dir)
    drop = [v for v in have[:-keep] if v != protect] if keep > 0 else []
    for v in drop:
        shutil.rmtree(os.path.join(model_dir, str(v)), ignore_errors=True)
    return drop


def deploy(
    bank_dir: str,
    repo: str,
    url: Optional[str] = None,
    keep: int = 3,
    keep_threshold: bool = False,
    timeout_s: float = 600.0,
    product: Optional[str] = None,
    key: Optional[AdminKey] = None,
    key_file: Optional[str] = None,
) -> Deployed:
    """Add the banks as the next version of the product's scorer and, with url, load it on the running server
    (sending the model-control key: key, else admin_key.client_key(key_file)). Holds the repository's deploy lock
    throughout; DeployError when another deploy holds it."""
    repo = os.path.abspath(repo)
    if url and key is None:
        try:
            key = client_key(key_file)
        except AdminKeyError as e:
            raise DeployError(str(e)) from None
    try:
        held = repository_lock(repo) if os.path.isdir(repo) else nullcontext()
        with held as lock:
            return _deploy_locked(bank_dir, repo, url, keep, keep_threshold, timeout_s, product, key, lock)
    except RepositoryLocked as e:
        raise DeployError(f"refused: {e}") from None


def _deploy_locked(bank_dir, repo, url, keep, keep_threshold, timeout_s, product, key, lock) -> Deployed:
    prep = prepare(bank_dir, repo, keep_threshold, product, lock)
    model = prep["model"]
    loaded = False
    if url:
        try:
            load(url, timeout_s, model, key)
            if not ready_version(url, prep["version"], model):
                raise DeployError(f"{url}: {model} version {prep['version']} is not ready after the load")
        except DeployError:
            rollback_prepared(repo, prep)
            raise
        loaded = True
    removed = prune(repo, keep, prep["version"], model) if loaded else []
    return Deployed(prep["version"], prep["previous"], loaded, prep["threshold"], removed, model)


@click.command()
@click.argument("bank_dir", metavar="NEW_BANKS", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--repository",
    "repo",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="The served model repository (made by `exdd export repository`).",
)
@click.option(
    "--url",
    default=None,
    help="HTTP HOST:PORT of the server to load the new version on (explicit model "
    "control, as `exdd serve`); without it the version is only added.",
)
@click.option(
    "--product",
    default=None,
    metavar="NAME",
    help="The product whose scorer gets the banks (exdd_NAME_scorer); needed when REPO serves several.",
)
@click.option("--keep", default=3, show_default=True, help="Scorer versions kept on disk after a successful load.")
@click.option(
    "--keep-threshold", is_flag=True, help="Keep the served threshold instead of the new banks' calibrated one."
)
@click.option("--timeout", default=600, show_default=True, help="Seconds to wait for the load.")
@click.option(
    "--admin-key-file",
    default=None,
    type=click.Path(dir_okay=False),
    help="The server's model-control key (default: $EXDD_ADMIN_KEY, else $EXDD_ADMIN_KEY_FILE, else "
    "~/.config/exdd/admin-key, where `exdd serve` keeps it).",
)
def deploy_cmd(bank_dir, repo, product, url, keep, keep_threshold, timeout, admin_key_file):
    """Add NEW_BANKS as the next version of a product's scorer in REPO and load it on a running server without
    downtime."""
    try:
        d = deploy(bank_dir, repo, url, keep, keep_threshold, timeout, product, key_file=admin_key_file)
    except DeployError as e:
        fail(str(e))
    thr = "kept" if keep_threshold else ("none" if d.threshold is None else f"{d.threshold:.6g}")
    click.echo(f"{d.model}: version {d.version} added (previous {d.previous}); threshold {thr}")
    if d.loaded:
        click.echo(f"loaded on {url}: version {d.version} serving, version {d.previous} unloaded")
        if d.removed:
            click.echo(f"removed old versions: {', '.join(map(str, d.removed))}")
    else:
        click.echo(
            "not loaded (no --url): a server started on REPO now serves it; a running one after "
            f"`exdd deploy` with --url or a load of {d.model}"
        )


deploy_cmd.name = "deploy"
