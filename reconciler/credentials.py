"""Credentials that rotate: a token given literally, or read from a file that an agent rewrites.

Vault Agent, nomad-credentials helpers and systemd's ``LoadCredential`` all hand a
service its token as a file that is replaced when the token is renewed. A
:class:`TokenSource` reads that file again whenever its modification time, size
or inode changed, so the reconciler picks up a new token without a restart and
pays only one ``stat`` per call when nothing changed.

Settings name the file (``NOMAD_TOKEN_FILE``, ``VAULT_TOKEN_FILE``,
``FORGE_TOKEN_FILE``); this module never reads the environment itself.
The token value is never logged nor put in an exception message.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from requests import PreparedRequest
from requests.auth import AuthBase

__all__ = ["CredentialError", "TokenSource", "HeaderAuth", "NOMAD_HEADER", "VAULT_HEADER"]

NOMAD_HEADER = "X-Nomad-Token"
VAULT_HEADER = "X-Vault-Token"


class CredentialError(RuntimeError):
    """A token file cannot be read or is empty; the message names the file and the fix (never the value)."""


@dataclass(frozen=True)
class _Stamp:
    """What identifies one version of the file: cheap to get with one ``stat``."""

    mtime_ns: int
    size: int
    inode: int


class TokenSource:
    """A token from a literal value or from a file, re-read when the file changes.

    Exactly one of ``value`` and ``path`` is used; ``path`` wins when both are
    given (a file is how rotation is configured). ``what`` names the credential
    in error messages (e.g. ``"NOMAD_TOKEN_FILE"``). Thread-safe.
    """

    def __init__(self, value: str | None = None, path: str | os.PathLike[str] | None = None, *, what: str = "token") -> None:
        self._literal = value or None
        self._path = Path(path) if path else None
        self._what = what
        self._lock = threading.Lock()
        self._stamp: _Stamp | None = None
        self._cached: str | None = None
        self.reloads = 0
        """How many times the file was (re-)read: lets tests and metrics see rotation."""

    @classmethod
    def of(cls, value: str | None, path: str | os.PathLike[str] | None, *, what: str = "token") -> "TokenSource | None":
        """A source when a value or a file is configured, else None (no token: the client sends none)."""
        if not value and not path:
            return None
        return cls(value, path, what=what)

    @property
    def path(self) -> Path | None:
        return self._path

    def __call__(self) -> str:
        return self.get()

    def __repr__(self) -> str:  # never show the value
        where = f"file {self._path}" if self._path else "literal"
        return f"TokenSource({self._what}, {where})"

    def get(self) -> str:
        """The current token: the literal, or the file's content (stripped), read again if the file changed.

        Raises :class:`CredentialError` when the file is missing, unreadable or
        empty and no earlier value was read; once a value was read, a file that
        is briefly absent (being replaced) keeps the last value.
        """
        if self._path is None:
            if self._literal is None:
                raise CredentialError(f"{self._what}: no token configured")
            return self._literal
        with self._lock:
            try:
                st = self._path.stat()
            except OSError as exc:
                if self._cached is not None:
                    return self._cached
                raise CredentialError(
                    f"{self._what}: cannot read token file {self._path} ({exc.strerror or exc}); "
                    "create it or fix the path"
                ) from None
            stamp = _Stamp(st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp != self._stamp or self._cached is None:
                self._load(stamp)
            assert self._cached is not None
            return self._cached

    def _load(self, stamp: _Stamp) -> None:
        assert self._path is not None
        try:
            text = self._path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            if self._cached is not None:
                return
            raise CredentialError(f"{self._what}: cannot read token file {self._path} ({type(exc).__name__})") from None
        if not text:
            if self._cached is not None:
                return  # a writer truncated the file and has not written yet: keep the last token
            raise CredentialError(f"{self._what}: token file {self._path} is empty; write the token into it")
        self._cached = text
        self._stamp = stamp
        self.reloads += 1


class HeaderAuth(AuthBase):
    """A ``requests`` auth that puts the *current* token in a header on every request.

    Set it as ``session.auth`` of the session a client is built with
    (``NomadClient(settings, session=s)``, ``VaultClient(settings, session=s)``):
    python-nomad and hvac pass no ``auth=`` of their own, so requests applies the
    session's, after their static header, and a rotated token is used from the
    next request on. ``prefix`` is put before the token (``"token "`` for Forgejo's
    ``Authorization`` header).
    """

    def __init__(self, source: Callable[[], str], header: str, *, prefix: str = "") -> None:
        self._source = source
        self._header = header
        self._prefix = prefix

    def __call__(self, request: PreparedRequest) -> PreparedRequest:
        request.headers[self._header] = self._prefix + self._source()
        return request

    def __repr__(self) -> str:
        return f"HeaderAuth({self._header})"
