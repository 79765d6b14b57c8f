"""The environment every git process of the reconciler runs in: isolated, secret-free, authenticated.

Isolation
    git reads no user or system configuration (``GIT_CONFIG_GLOBAL=/dev/null``,
    ``GIT_CONFIG_NOSYSTEM=1``; git >= 2.32), follows no replace refs
    (``GIT_NO_REPLACE_OBJECTS=1``) and gets none of the reconciler's own secrets:
    ``VAULT_*``, ``NOMAD_*``, ``FORGE_*`` and any variable whose name says it holds a
    token, secret or password are removed, since every git child (remote helpers, ssh,
    hooks) inherits the environment. What git needs to reach a remote (``PATH``,
    ``HOME``, the ssh agent, proxies) passes through.

Credentials
    Forgejo takes an API token as the HTTP Basic password, under any user name. The token
    never appears in a URL, an argument or a config file: git asks ``GIT_ASKPASS``, a
    small shell script written into a private (0700) directory (under ``$XDG_RUNTIME_DIR`` when
    set, else the temporary directory, which must not be mounted noexec), which prints the token
    from a file. With ``FORGE_TOKEN_FILE`` that file *is* the token file, so a rotated
    token reaches git on its next request, exactly as it reaches the API client; a
    literal ``FORGE_TOKEN`` is written once into a 0600 file in the private directory,
    removed by :meth:`GitAuth.close`. The script answers only prompts for the forge's own
    origin (scheme, host and port of ``FORGE_URL``): a remote or a redirect elsewhere gets
    no token, and git fails closed ("terminal prompts disabled").

    ``credential.helper`` is emptied on every command (``-c credential.helper=``), so no
    configured helper (``store``) copies the token to disk.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping
from urllib.parse import urlsplit

if TYPE_CHECKING:  # pragma: no cover
    from reconciler.settings import Settings

__all__ = ["git_auth", "GitAuth", "clean_env", "origin_of", "ISOLATION", "MIN_GIT_VERSION", "parse_git_version"]

MIN_GIT_VERSION = (2, 32)
"""``GIT_CONFIG_GLOBAL`` needs git 2.32; ``--diff-merges=first-parent`` needs 2.31."""

ISOLATION = {
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_NO_REPLACE_OBJECTS": "1",
    "GIT_TERMINAL_PROMPT": "0",
}

_SECRET_PREFIXES = (
    "VAULT_", "NOMAD_", "FORGE_", "RECONCILER_GIT_", "GIT_CONFIG_KEY_", "GIT_CONFIG_VALUE_",
    # traces that would print HTTP headers (Authorization) to git's stderr, which lands in messages
    "GIT_TRACE", "GIT_CURL_VERBOSE",
)
_SECRET_WORDS = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_?KEY|PRIVATE_KEY", re.IGNORECASE)
_KEEP = frozenset({"SSH_AUTH_SOCK"})
_ASKPASS_VARS = ("GIT_ASKPASS", "SSH_ASKPASS", "SSH_ASKPASS_REQUIRE")

# The prompt git gives GIT_ASKPASS is "Username for 'scheme://host:port': " or
# "Password for 'scheme://user@host:port': " (git's credential.c, credential_ask_one).
_ASKPASS_SCRIPT = """#!/bin/sh
# Written by the reconciler (reconciler/clients/git_env.py). Holds no secret: it prints the
# token from RECONCILER_GIT_TOKEN_FILE, only for the forge's origin.
url=${1#*\\'}
url=${url%%\\'*}
scheme=${url%%://*}
rest=${url#*://}
rest=${rest#*@}
host=${rest%%/*}
[ "$scheme://$host" = "$RECONCILER_GIT_ORIGIN" ] || exit 1
case "$1" in
  Username*) printf '%s\\n' "$RECONCILER_GIT_USERNAME" ;;
  Password*) read -r token < "$RECONCILER_GIT_TOKEN_FILE" || [ -n "$token" ] || exit 1
             printf '%s\\n' "$token" ;;
  *) exit 1 ;;
esac
"""


def clean_env(base: Mapping[str, str]) -> dict[str, str]:
    """``base`` minus secrets and askpass settings, plus the isolation variables."""
    env = {
        k: v
        for k, v in base.items()
        if k in _KEEP or not (k.startswith(_SECRET_PREFIXES) or _SECRET_WORDS.search(k) or k in _ASKPASS_VARS)
    }
    env.update(ISOLATION)
    return env


def origin_of(url: str | None) -> str | None:
    """``scheme://host[:port]`` of an http(s) URL (lower-cased, no user info), else None."""
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}".lower()


def parse_git_version(text: str) -> tuple[int, ...] | None:
    """``(2, 39, 5)`` from ``git version 2.39.5`` (or ``2.39.5.windows.1``); None if unparsable."""
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not m:
        return None
    return tuple(int(g) for g in m.groups() if g is not None)


class GitAuth:
    """Hands git the forge token through ``GIT_ASKPASS``, for remotes on the forge's origin only.

    ``token`` is the same callable source the API client uses (a :class:`TokenSource`);
    ``token_file`` is its file when rotation is configured. Without a token, or when
    ``remote`` is not on ``forge_url``'s origin, :meth:`env` adds nothing.
    """

    def __init__(
        self,
        remote: str,
        forge_url: str | None,
        token: Callable[[], str] | None,
        *,
        token_file: str | os.PathLike[str] | None = None,
        username: str = "reconciler",
    ) -> None:
        self._origin = origin_of(forge_url)
        remote_origin = origin_of(remote)
        self.active = bool(token is not None and self._origin and remote_origin == self._origin)
        self._token = token
        self._token_file = Path(token_file).absolute() if token_file else None
        self._username = username
        self._lock = threading.Lock()
        self._dir: Path | None = None

    def env(self) -> dict[str, str]:
        """Variables to add to git's environment (none of them holds the token)."""
        if not self.active:
            return {}
        with self._lock:
            directory = self._private_dir()
            token_file = self._token_file or self._literal_file(directory)
        return {
            "GIT_ASKPASS": str(directory / "askpass.sh"),
            "RECONCILER_GIT_ORIGIN": self._origin or "",
            "RECONCILER_GIT_USERNAME": self._username,
            "RECONCILER_GIT_TOKEN_FILE": str(token_file),
        }

    def _private_dir(self) -> Path:
        if self._dir is None or not (self._dir / "askpass.sh").exists():
            # $XDG_RUNTIME_DIR (per-user tmpfs) when there is one: git executes the script, and /tmp may be noexec.
            base = os.environ.get("XDG_RUNTIME_DIR")
            self._dir = Path(tempfile.mkdtemp(prefix="reconciler-git-", dir=base if base and os.path.isdir(base) else None))  # 0700
            script = self._dir / "askpass.sh"
            script.write_text(_ASKPASS_SCRIPT, encoding="utf-8")
            script.chmod(stat.S_IRWXU)
        return self._dir

    def _literal_file(self, directory: Path) -> Path:
        assert self._token is not None
        path = directory / "token"
        value = self._token()
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current != value:
            fd = os.open(path.with_suffix(".new"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(value)
            os.replace(path.with_suffix(".new"), path)
        return path

    def close(self) -> None:
        with self._lock:
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None

    def __repr__(self) -> str:
        return f"GitAuth(origin={self._origin}, active={self.active})"


def git_auth(settings: "Settings", remote: str | None) -> GitAuth | None:
    """The forge token for git, from the same source as the API client's (``FORGE_TOKEN_FILE``
    wins over ``FORGE_TOKEN``); None without a token or a remote."""
    from reconciler.credentials import TokenSource

    source = TokenSource.of(settings.forge.token, settings.forge.token_file, what="FORGE_TOKEN_FILE")
    if source is None or not remote:
        return None
    return GitAuth(remote, settings.forge.url, source, token_file=settings.forge.token_file)
