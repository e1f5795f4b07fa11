"""The model-control key: Triton's model-repository API (index, load, unload) and shared-memory API answer only
requests carrying it.

``exdd serve`` starts tritonserver with the model-repository API restricted (HTTP and gRPC) to requests with the
header ``exdd-admin-key: KEY``; ``exdd deploy`` sends it. Without it anyone reaching the port could unload a
product's scorer (an outage) or load a model from uploaded files (code execution in the server).

Where the key comes from, first found: ``$EXDD_ADMIN_KEY`` (the key itself: a k8s Secret as an env var), the
file ``--admin-key-file``, ``$EXDD_ADMIN_KEY_FILE``, else ``$XDG_CONFIG_HOME/exdd/admin-key``
(``~/.config/exdd/admin-key``). ``exdd serve`` generates that file (32 random bytes, mode 0600, in a 0700 folder)
when no key is given and the file is absent; a key file that others can read is refused.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from typing import Callable, List, Optional

HEADER = "exdd-admin-key"
KEY_ENV = "EXDD_ADMIN_KEY"
KEY_FILE_ENV = "EXDD_ADMIN_KEY_FILE"
KEY_RE = re.compile(r"[A-Za-z0-9._~-]{16,256}")  # what goes into the tritonserver flag and an HTTP header as is
# model-repository: index, load, unload (an unload is an outage; a load from uploaded files runs code);
# shared-memory: registering shared-memory regions, which exdd's clients never use and which the chain behind
# NVIDIA's August 2025 Python-backend fixes (CVE-2025-23319, -23320, -23334) starts from (SECURITY.md)
RESTRICTED = "model-repository,shared-memory"


class AdminKeyError(ValueError):
    """A key or key file that cannot be used; the message names it and says what to do."""


@dataclass(frozen=True)
class AdminKey:
    value: str
    source: str  # where it came from, for messages (never the key itself)

    def headers(self) -> dict:
        return {HEADER: self.value}


def default_key_file() -> str:
    """$EXDD_ADMIN_KEY_FILE, else $XDG_CONFIG_HOME/exdd/admin-key (~/.config/exdd/admin-key)."""
    if os.environ.get(KEY_FILE_ENV):
        return os.path.abspath(os.path.expanduser(os.environ[KEY_FILE_ENV]))
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(config, "exdd", "admin-key")


def check_key(value: str, where: str) -> str:
    if not KEY_RE.fullmatch(value):
        raise AdminKeyError(f"{where}: the model-control key must be 16-256 characters of A-Z a-z 0-9 . _ ~ -")
    return value


def read_key_file(path: str) -> AdminKey:
    """The key in path; AdminKeyError when unreadable, malformed or readable by group/others."""
    try:
        st = os.stat(path)
        with open(path) as f:
            value = f.read().strip()
    except OSError as e:
        raise AdminKeyError(f"{path}: cannot read the model-control key ({e.strerror})") from None
    if st.st_mode & 0o077:
        raise AdminKeyError(
            f"{path}: the model-control key file is readable by others (mode "
            f"{st.st_mode & 0o777:04o}): `chmod 600 {path}`"
        )
    return AdminKey(check_key(value, path), path)


def write_new_key(path: str) -> AdminKey:
    """A new random key written to path (mode 0600, its folder made 0700); never overwrites an existing file."""
    folder = os.path.dirname(path)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    value = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
        f.flush()
        os.fsync(f.fileno())
    return AdminKey(value, path)


def client_key(key_file: Optional[str] = None) -> Optional[AdminKey]:
    """The key a model-control client (exdd deploy) sends: $EXDD_ADMIN_KEY, key_file, the default file; None
    when there is none (the request then goes without it, and a restricted server refuses it)."""
    if os.environ.get(KEY_ENV):
        return AdminKey(check_key(os.environ[KEY_ENV].strip(), f"${KEY_ENV}"), f"${KEY_ENV}")
    path = os.path.abspath(os.path.expanduser(key_file)) if key_file else default_key_file()
    if key_file or os.path.exists(path):
        return read_key_file(path)
    return None


def server_key(key_file: Optional[str] = None, log: Callable[[str], None] = lambda s: None) -> AdminKey:
    """The key the server requires: as client_key, generating the default (or given) file when there is none."""
    found = client_key(key_file) if not key_file or os.path.exists(os.path.expanduser(key_file)) else None
    if found is not None:
        return found
    path = os.path.abspath(os.path.expanduser(key_file)) if key_file else default_key_file()
    key = write_new_key(path)
    log(f"model-control key: generated, stored in {path} (mode 0600); `exdd deploy` on this machine reads it there")
    return key


def restricted_args(key: AdminKey) -> List[str]:
    """tritonserver flags restricting the model-repository and shared-memory APIs (HTTP and gRPC) to requests
    carrying the key."""
    return [
        f"--http-restricted-api={RESTRICTED}:{HEADER}={key.value}",
        f"--grpc-restricted-protocol={RESTRICTED}:{HEADER}={key.value}",
    ]
