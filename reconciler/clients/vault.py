"""The reconciler's only door to Vault: a few verbs in the project's own words.

``VaultClient`` checks that the policies and KV secrets an action needs exist,
mints the single-use, response-wrapped claim token of one attempt through the
``vault-runner`` token role, follows and revokes claims by accessor, and reports
Vault's health. It is built on hvac, and works around hvac where hvac and the
server disagree (``docs/vault-facts.md``):

* hvac's ``auth.token.create`` sends ``renewable=True`` and
  ``no_default_policy=False`` unless told otherwise: both are always sent
  explicitly here;
* hvac has no ``sys/wrapping/lookup`` method: it is posted directly;
* Vault lower-cases policy names, so names are compared case-insensitively;
* Vault answers ``400 invalid accessor`` for a token that is already gone: for
  ``revoke_accessor`` that is success, for ``lookup_accessor`` it is ``None``.

Errors become the project's own (``reconciler.clients.errors``), original
chained: unreachable, timed out, sealed or 5xx -> ``TransientError``; 403 ->
``PermanentError`` naming the path; 400 -> ``PermanentError`` with Vault's
message; 404 -> ``NotFoundError``. No message ever carries a token or a secret
value. Idempotent single calls are retried a few times with a short backoff;
minting is never retried blindly (a retried mint could leave a second live
token), the caller decides.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, TypeVar

import hvac
import hvac.exceptions as hvac_exc
import requests
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from reconciler.clients.errors import NotFoundError, PermanentError, ReconcilerError, TransientError
from reconciler.clients.http import pooled_session
from reconciler.settings import VaultSettings
from reconciler.tls import TLSConfig, ssl_problem

log = logging.getLogger(__name__)

SYSTEM = "vault"
T = TypeVar("T")

_INVALID_ACCESSOR = ("invalid accessor", "token not found")
_INVALID_WRAPPING = "wrapping token is not valid or does not exist"


@dataclass(frozen=True)
class WrappedClaim:
    """What minting one attempt's claim produced; the reconciler keeps only the accessors.

    The wrapping token itself travels once, in the dispatch payload, and is not stored.
    """

    wrapping_token: str
    """The response-wrapping token (single use, expires after ``ttl`` seconds). Secret."""
    wrapping_accessor: str
    """Accessor of the wrapping token."""
    token_accessor: str
    """Accessor of the claim token inside (``wrap_info.wrapped_accessor``): look up and revoke by it."""
    creation_path: str
    """Where the wrapped response came from (``auth/token/create/<role>``); the runner checks it."""
    ttl: int
    """Seconds the wrapping token lives."""
    created_at: str
    """When Vault created the wrapping token, RFC 3339 UTC (``YYYY-MM-DDTHH:MM:SSZ``)."""

    def __repr__(self) -> str:  # never print the wrapping token
        return (
            f"WrappedClaim(wrapping_accessor={self.wrapping_accessor!r}, token_accessor={self.token_accessor!r}, "
            f"creation_path={self.creation_path!r}, ttl={self.ttl}, created_at={self.created_at!r})"
        )


def _rfc3339_utc(value: str) -> str:
    """Vault's RFC 3339 time (any precision or offset) as ``YYYY-MM-DDTHH:MM:SSZ``."""
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return value
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _errors_text(exc: hvac_exc.VaultError) -> str:
    """Vault's error list as one line (Vault never echoes tokens in these)."""
    errors = exc.errors if isinstance(exc.errors, list) else ([exc.errors] if exc.errors else [])
    text = "; ".join(" ".join(str(e).replace("*", " ").split()) for e in errors)
    return text or f"HTTP {type(exc).__name__}"


class VaultClient:
    """Vault, as the reconciler sees it: secrets and policies present, claims minted and revoked."""

    def __init__(
        self,
        settings: VaultSettings,
        *,
        attempts: int = 3,
        backoff: float = 0.2,
        session: requests.Session | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """``attempts``/``backoff``: retries of idempotent calls (seconds, doubled each time, capped at 2 s);
        ``clock``: Unix seconds, for comparing KV deletion times (default: the system clock)."""
        self._settings = settings
        wall = clock or (lambda: datetime.now(timezone.utc).timestamp())
        self._now: Callable[[], datetime] = lambda: datetime.fromtimestamp(wall(), timezone.utc)
        self._addr = settings.addr.rstrip("/")
        self._attempts = max(1, attempts)
        self._backoff = backoff
        # token="" rather than None: hvac would otherwise read VAULT_TOKEN from the environment itself.
        tls = getattr(settings, "tls", None) or TLSConfig()
        if session is None:
            session = pooled_session(self._addr, pool=10, tls=tls)
        # hvac maps 412 (a performance standby lacking state) to UnexpectedError: a response hook
        # turns it into a TransientError before hvac sees it, so idempotent calls retry it.
        session.hooks.setdefault("response", []).append(_standby_not_ready)
        # hvac passes verify/cert with every request (winning over the session's): hand it the same TLS settings.
        self._hvac = hvac.Client(
            url=self._addr,
            token=settings.token or "",
            namespace=settings.namespace or None,
            timeout=settings.timeout,
            session=session,
            verify=tls.verify(),
            cert=tls.cert(),
        )

    def close(self) -> None:
        """Release the HTTP connections (the client is unusable afterwards)."""
        self._hvac.adapter.close()

    # ------------------------------------------------------------------ verbs
    def policy_exists(self, name: str) -> bool:
        """Whether ACL policy ``name`` exists (case-insensitive: Vault stores names lower-cased)."""
        return self.policy_text(name) is not None

    def policy_text(self, name: str) -> str | None:
        """The text of ACL policy ``name``, or None when it does not exist."""
        key = name.strip().lower()
        path = f"sys/policies/acl/{key}"
        try:
            reply = self._read(f"read policy {key}", path, lambda: self._hvac.sys.read_acl_policy(key))
        except NotFoundError:
            return None
        data = reply.get("data") or {}
        text = data.get("policy", reply.get("policy"))
        return text if isinstance(text, str) else None

    def secret_present(self, name: str) -> bool:
        """Whether runner secret ``name`` is live: its current version exists, is not deleted or destroyed.

        Reads KV **metadata** only, so no secret value crosses the wire.
        """
        return self._kv_live(self._secret_path(name))

    def mount_present(self, alias: str) -> bool:
        """Whether credential mount ``alias`` is live at ``<prefix>/mounts/<alias>`` (same rule as secrets)."""
        return self._kv_live(f"{self._settings.secret_prefix.strip('/')}/mounts/{self._segment(alias, 'mount')}")

    def secret_values(self, names: Iterable[str]) -> dict[str, str]:
        """Field ``value`` of each runner secret, for redaction only: never log the result.

        A missing or deleted secret raises ``NotFoundError``; one without a string
        ``value`` field raises ``PermanentError`` (both name the secret, not its value).
        """
        values: dict[str, str] = {}
        for name in names:
            path = self._secret_path(name)
            mount = self._settings.kv_mount
            reply = self._read(
                f"read secret {name}",
                f"{mount}/data/{path}",
                lambda: self._hvac.secrets.kv.v2.read_secret_version(
                    path=path, mount_point=mount, raise_on_deleted_version=True
                ),
            )
            data = ((reply.get("data") or {}).get("data")) or {}
            value = data.get("value")
            if not isinstance(value, str):
                raise PermanentError(
                    f"Vault secret {mount}/data/{path} has no string field 'value'; write it with "
                    f"`vault kv put {mount}/{path} value=...`",
                    system=SYSTEM,
                )
            values[name] = value
        return values

    def mint_claim(
        self,
        policies: list[str],
        *,
        ttl: int,
        explicit_max_ttl: int,
        wrap_ttl: int,
        meta: dict[str, str],
        display_name: str,
    ) -> WrappedClaim:
        """Mint one attempt's claim through the token role, response-wrapped; returns accessors and the wrapping token.

        The token is asked for as not renewable, without the ``default`` policy and
        with an explicit max TTL (hvac's defaults say otherwise, so everything is
        explicit); the role decides orphan and service type. Not retried: a lost
        reply raises ``TransientError`` and the caller decides. The token minted
        behind a lost reply is unreachable (only the lost wrapping token leads to it)
        and dies at its explicit max TTL.
        """
        if not policies:
            raise PermanentError("mint_claim needs at least one policy (every claim carries runner-claim)", system=SYSTEM)
        role = self._settings.token_role
        path = f"auth/token/create/{role}"
        reply = self._call(
            f"mint a claim through role {role}",
            path,
            lambda: self._hvac.auth.token.create(
                role_name=role,
                policies=list(policies),
                meta=dict(meta),
                ttl=f"{int(ttl)}s",
                explicit_max_ttl=f"{int(explicit_max_ttl)}s",
                renewable=False,
                no_default_policy=True,
                display_name=display_name,
                num_uses=0,
                wrap_ttl=f"{int(wrap_ttl)}s",
            ),
        )
        return self._claim_from(reply, path)

    def lookup_accessor(self, accessor: str) -> dict[str, Any] | None:
        """The token behind ``accessor`` (``policies``, ``ttl``, ``meta``, ...), or None when it no longer exists."""
        try:
            reply = self._read(
                "look up a token by accessor",
                "auth/token/lookup-accessor",
                lambda: self._hvac.auth.token.lookup_accessor(accessor),
                gone=_INVALID_ACCESSOR,
            )
        except NotFoundError:
            return None
        return dict(reply.get("data") or {})

    def revoke_accessor(self, accessor: str) -> None:
        """Revoke the token behind ``accessor``; a token already revoked or expired is fine."""
        try:
            self._read(
                "revoke a token by accessor",
                "auth/token/revoke-accessor",
                lambda: self._hvac.auth.token.revoke_accessor(accessor),
                gone=_INVALID_ACCESSOR,
            )
        except NotFoundError:
            log.debug("token accessor %s already gone", accessor)

    def token_role(self, name: str) -> dict[str, Any] | None:
        """The fields of token role ``name`` (``auth/token/roles/<name>``), or None when it does not exist."""
        path = f"auth/token/roles/{name}"
        try:
            reply = self._read(f"read token role {name}", path, lambda: self._hvac.adapter.get(f"/v1/{path}"))
        except NotFoundError:
            return None
        return dict((reply or {}).get("data") or {}) if isinstance(reply, dict) else None

    def wrapping_lookup(self, token: str) -> dict[str, Any] | None:
        """``creation_path``, ``creation_ttl``, ``creation_time`` of a wrapping token, without using it; None when invalid."""
        try:
            reply = self._read(
                "look up a wrapping token",
                "sys/wrapping/lookup",
                lambda: self._hvac.adapter.post("/v1/sys/wrapping/lookup", json={"token": token}),
                gone=(_INVALID_WRAPPING,),
            )
        except NotFoundError:
            return None
        return dict(reply.get("data") or {})

    def health(self) -> dict[str, Any]:
        """``sys/health``: a dict when Vault is up; ``TransientError`` when sealed, uninitialised or unreachable."""

        def call() -> dict[str, Any]:
            resp = self._hvac.sys.read_health_status(method="GET")
            if isinstance(resp, dict):
                return resp
            body = _json_or_empty(resp)
            status = getattr(resp, "status_code", 0)
            if body.get("sealed") or status == 503:
                raise TransientError(f"Vault at {self._addr} is sealed; unseal it", system=SYSTEM)
            if status == 501 or body.get("initialized") is False:
                raise TransientError(f"Vault at {self._addr} is not initialized; initialize and unseal it", system=SYSTEM)
            if status in (429, 472, 473) and body:
                return body  # a standby node answers; it still serves
            raise TransientError(f"Vault at {self._addr} answered sys/health with HTTP {status}", system=SYSTEM)

        return self._read("check health", "sys/health", call)

    # ------------------------------------------------------------------ internals
    def _segment(self, name: str, what: str) -> str:
        if not name or "/" in name or name in (".", ".."):
            raise PermanentError(f"invalid {what} name {name!r}: one path segment expected", system=SYSTEM)
        return name

    def _secret_path(self, name: str) -> str:
        return f"{self._settings.secret_prefix.strip('/')}/{self._segment(name, 'secret')}"

    def _kv_live(self, path: str) -> bool:
        """A KV v2 secret is live when its current version is not destroyed and its ``deletion_time``
        is empty or still in the future (``delete_version_after`` on the mount or the key stamps a
        future one on every write; the data reads until then: vault-plugin-secrets-kv ``path_data.go``)."""
        mount = self._settings.kv_mount
        try:
            reply = self._read(
                f"read metadata of {mount}/{path}",
                f"{mount}/metadata/{path}",
                lambda: self._hvac.secrets.kv.v2.read_secret_metadata(path=path, mount_point=mount),
            )
        except NotFoundError:
            return False
        meta = reply.get("data") or {}
        current = meta.get("current_version") or 0
        version = (meta.get("versions") or {}).get(str(current))
        if not current or not version:
            return False
        return not version.get("destroyed") and not _deletion_passed(version.get("deletion_time"), self._now())

    def _claim_from(self, reply: Any, path: str) -> WrappedClaim:
        """The claim in a wrapped create reply; an unwrapped token is revoked at once and refused."""
        if not isinstance(reply, dict):
            raise PermanentError(f"Vault answered {path} without a JSON body", system=SYSTEM)
        info = reply.get("wrap_info")
        if not info:
            accessor = (reply.get("auth") or {}).get("accessor")
            if accessor:
                self.revoke_accessor(accessor)
            raise PermanentError(
                f"Vault returned an unwrapped token from {path} (revoked it); is a proxy stripping X-Vault-Wrap-TTL?",
                system=SYSTEM,
            )
        expected = f"auth/token/create/{self._settings.token_role}"
        if info.get("creation_path") != expected:
            raise PermanentError(
                f"wrapped claim came from {info.get('creation_path')!r}, expected {expected!r}", system=SYSTEM
            )
        return WrappedClaim(
            wrapping_token=info["token"],
            wrapping_accessor=info.get("accessor", ""),
            token_accessor=info.get("wrapped_accessor", ""),
            creation_path=info["creation_path"],
            ttl=int(info.get("ttl") or 0),
            created_at=_rfc3339_utc(info.get("creation_time", "")),
        )

    def _read(
        self,
        what: str,
        path: str,
        fn: Callable[[], T],
        gone: tuple[str, ...] = (),
    ) -> T:
        """``_call`` retried a few times on transient errors: only for idempotent calls."""
        retrying = Retrying(
            retry=retry_if_exception_type(TransientError),
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential(multiplier=self._backoff, max=2.0),
            reraise=True,
        )
        return retrying(self._call, what, path, fn, gone)

    def _call(self, what: str, path: str, fn: Callable[[], T], gone: tuple[str, ...] = ()) -> T:
        """Run one hvac call and translate its failures into the project's errors.

        ``gone``: messages of a 400 that mean "the object no longer exists" (raised as NotFoundError).
        """
        try:
            return fn()
        except ReconcilerError:
            raise
        except requests.exceptions.Timeout as exc:
            raise TransientError(
                f"Vault at {self._addr} timed out after {self._settings.timeout:g}s while trying to {what}",
                system=SYSTEM,
            ) from exc
        except requests.exceptions.SSLError as exc:
            raise TransientError(f"Vault at {self._addr} while trying to {what}: {ssl_problem(exc, 'VAULT')}", system=SYSTEM) from exc
        except requests.exceptions.ConnectionError as exc:
            raise TransientError(
                f"Vault at {self._addr} is unreachable while trying to {what}; check VAULT_ADDR and that Vault runs",
                system=SYSTEM,
            ) from exc
        except requests.exceptions.RequestException as exc:
            raise TransientError(
                f"HTTP to Vault at {self._addr} failed while trying to {what}: {type(exc).__name__}", system=SYSTEM
            ) from exc
        except hvac_exc.VaultError as exc:
            raise self._translate(exc, what, path, gone) from exc

    def _translate(self, exc: hvac_exc.VaultError, what: str, path: str, gone: tuple[str, ...]) -> ReconcilerError:
        message = _errors_text(exc)
        if isinstance(exc, hvac_exc.VaultDown):
            if "sealed" in message.lower():
                return TransientError(f"Vault at {self._addr} is sealed; unseal it", system=SYSTEM)
            return TransientError(f"Vault at {self._addr} is unavailable (503) while trying to {what}", system=SYSTEM)
        if isinstance(exc, hvac_exc.Forbidden):
            return PermanentError(
                f"Vault denied {path} (permission denied) while trying to {what}; check VAULT_TOKEN's policy",
                system=SYSTEM,
            )
        if isinstance(exc, hvac_exc.InvalidPath):
            return NotFoundError(f"Vault has nothing at {path} (404) while trying to {what}", system=SYSTEM)
        if isinstance(exc, hvac_exc.InvalidRequest):
            if any(g in message for g in gone):
                return NotFoundError(f"Vault: {message} ({path})", system=SYSTEM)
            return PermanentError(f"Vault rejected the request to {what} at {path}: {message}", system=SYSTEM)
        if isinstance(exc, hvac_exc.Unauthorized):
            return PermanentError(
                f"Vault refused {path} (401) while trying to {what}; check VAULT_TOKEN", system=SYSTEM
            )
        if isinstance(exc, (hvac_exc.InternalServerError, hvac_exc.BadGateway, hvac_exc.RateLimitExceeded, hvac_exc.PreconditionFailed)):
            # 429 (rate-limit quota) is retried, as Vault's client does (412: see _standby_not_ready).
            return TransientError(f"Vault at {self._addr} failed to {what} ({path}): {message}", system=SYSTEM)
        if isinstance(exc, hvac_exc.VaultNotInitialized):
            return TransientError(f"Vault at {self._addr} is not initialized; initialize and unseal it", system=SYSTEM)
        return PermanentError(f"Vault answered {path} unexpectedly while trying to {what}: {message}", system=SYSTEM)


def _standby_not_ready(resp: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
    """``requests`` response hook: 412 from Vault is transient (Vault's own client retries it)."""
    if resp.status_code == 412:
        raise TransientError(
            f"Vault answered HTTP 412 for {resp.request.method} {requests.utils.urlparse(resp.url).path}: "
            "a performance standby does not have the state yet; will try again",
            system=SYSTEM,
        )
    return resp


def _deletion_passed(value: Any, now: datetime) -> bool:
    """Whether a KV version's ``deletion_time`` (RFC 3339, "" for none) is at or before ``now``.

    An unreadable value counts as passed: a secret is only ever called live on evidence.
    """
    if not value:
        return False
    try:
        when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return True
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when <= now


def _json_or_empty(resp: Any) -> dict[str, Any]:
    try:
        body = resp.json()
    except Exception:  # a non-JSON body (HEAD, proxy page)
        return {}
    return body if isinstance(body, dict) else {}


__all__ = ["VaultClient", "WrappedClaim"]
