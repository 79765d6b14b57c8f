"""The runner's few Vault calls, over plain ``requests``.

The runner is a separate program inside the Nomad task, so it talks to Vault
itself rather than through ``reconciler.clients``. It needs five endpoints:
``sys/wrapping/lookup``, ``sys/wrapping/unwrap``, KV v2 reads and
``auth/token/revoke-self``. Every call has a timeout.

Reads that change nothing (lookup, KV reads) are retried a few times on a
dropped connection or a 5xx. The unwrap is **never** retried: it is the
runner's single-use claim, and a retry after a reply lost in transit would
find the claim "taken" - by ourselves.

Errors carry Vault's own ``errors`` strings (never a token or a secret value:
Vault does not echo them) and the HTTP status, 0 when no reply arrived.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import requests

from reconciler.clients.tls_session import apply_tls
from reconciler.tls import TLSConfig

#: 412: a performance standby lacks the state yet; 429: a rate-limit quota. Vault's own client retries both.
RETRYABLE_STATUS = (412, 429, 500, 502, 503, 504)


class VaultCallError(Exception):
    """A Vault call failed: ``status`` is the HTTP status (0 = no reply), ``errors`` Vault's messages."""

    def __init__(self, what: str, status: int, errors: list[str]):
        self.what = what
        self.status = status
        self.errors = errors
        detail = "; ".join(" ".join(e.split()) for e in errors) or "no details"
        super().__init__(f"{what}: HTTP {status}: {detail}" if status else f"{what}: no reply: {detail}")

    @property
    def denied(self) -> bool:
        return self.status == 403

    @property
    def not_found(self) -> bool:
        return self.status == 404


class VaultSession:
    """The runner's connection to Vault at ``addr`` (no token of its own: each call names one)."""

    def __init__(
        self,
        addr: str,
        *,
        namespace: str | None = None,
        timeout: float = 10.0,
        attempts: int = 3,
        backoff: float = 0.25,
        sleep: Callable[[float], None] = time.sleep,
        tls: TLSConfig | None = None,
    ) -> None:
        self._base = addr.rstrip("/") + "/v1/"
        self._namespace = namespace
        self._timeout = timeout
        self._attempts = max(1, attempts)
        self._backoff = backoff
        self._sleep = sleep
        self._http = requests.Session()
        self._http.trust_env = False  # no proxies or netrc credentials from the task's environment
        if tls is not None:
            apply_tls(tls, self._http)  # VAULT_CACERT & co.: a private CA, a client certificate, a server name

    def close(self) -> None:
        self._http.close()

    # -- the calls ------------------------------------------------------------------
    def wrapping_lookup(self, wrapping_token: str) -> dict[str, Any]:
        """``creation_path``, ``creation_time``, ``creation_ttl`` of a wrapping token, without using it."""
        body = self._call("look up the wrapping token", "POST", "sys/wrapping/lookup", json={"token": wrapping_token})
        return dict(body.get("data") or {})

    def unwrap(self, wrapping_token: str) -> dict[str, Any]:
        """Unwrap once (the wrapping token as ``X-Vault-Token``); returns the wrapped response."""
        return self._call("unwrap the claim", "POST", "sys/wrapping/unwrap", token=wrapping_token, retry=False)

    def kv_read(self, token: str, path: str) -> dict[str, Any]:
        """The data of the current version of KV v2 secret ``path`` (``kv/data/...``)."""
        body = self._call(f"read {path}", "GET", path, token=token)
        data = body.get("data") or {}
        return dict(data.get("data") or {})

    def revoke_self(self, token: str) -> None:
        """Revoke ``token`` (and so end every use of it)."""
        self._call("revoke the claim token", "POST", "auth/token/revoke-self", token=token, retry=False)

    # -- plumbing -------------------------------------------------------------------
    def _call(
        self,
        what: str,
        method: str,
        path: str,
        *,
        token: str | None = None,
        json: dict[str, Any] | None = None,
        retry: bool = True,
    ) -> dict[str, Any]:
        headers = {}
        if token:
            headers["X-Vault-Token"] = token
        if self._namespace:
            headers["X-Vault-Namespace"] = self._namespace
        attempts = self._attempts if retry else 1
        for attempt in range(1, attempts + 1):
            try:
                reply = self._http.request(method, self._base + path, headers=headers, json=json, timeout=self._timeout)
            except requests.RequestException as exc:
                error = VaultCallError(what, 0, [type(exc).__name__])
                error.__cause__ = exc
            else:
                if reply.status_code < 300:
                    return _json(reply)
                error = VaultCallError(what, reply.status_code, _errors(reply))
                if reply.status_code not in RETRYABLE_STATUS:
                    raise error
            if attempt < attempts:
                self._sleep(self._backoff * 2 ** (attempt - 1))
        raise error


def _json(reply: requests.Response) -> dict[str, Any]:
    if not reply.content:
        return {}
    try:
        body = reply.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _errors(reply: requests.Response) -> list[str]:
    body = _json(reply)
    errors = body.get("errors")
    if isinstance(errors, list):
        return [str(e) for e in errors]
    return []
