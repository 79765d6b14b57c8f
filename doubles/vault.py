"""A protocol double of HashiCorp Vault, served over real HTTP on loopback.

hvac (and the reconciler's runner) talk to it unchanged. It implements the parts
of Vault the reconciler and its runner use, with the behaviour listed in
``docs/vault-facts.md`` (each fact with the Vault source file it follows):

* token auth (``X-Vault-Token``) with real ACL evaluation of HCL policies
  (exact paths, trailing ``*`` globs, ``+`` segment wildcards, ``deny``, the
  most specific rule wins), the ``default`` and ``root`` policies, TTLs,
  ``num_uses``, parent/child revocation;
* ``sys/policies/acl`` (names lower-cased), ``sys/health``, sealing;
* a KV version 2 engine at ``kv`` (versions, soft delete, destroy, metadata
  that survives deletion, LIST / ``?list=true``);
* the token store: roles with allowed/disallowed policies and globs, orphan,
  renewable, token type, explicit max TTL, num uses; create, lookup(-self,
  -accessor), revoke(-self, -accessor), renew-self;
* response wrapping (``X-Vault-Wrap-TTL``) and ``sys/wrapping/lookup|unwrap``
  (single use, expiring; ``racing_unwrap_500`` makes the loser of a second unwrap
  get Vault's 500);
* lazy revocation: with ``reap_delay`` a used-up or expired token stays visible,
  tainted, to ``lookup-accessor`` (``num_uses`` -1, ``ttl`` <= 0); revoke-accessor
  answers as current Vault (204 / 200 with a warning / 400 "token not found");
* ``kv/config`` and the key's ``delete_version_after`` (future deletion times);
* HTTPS (``serve_tls``) with a test CA (``doubles.tls_material``).

Time comes from the injected ``clock`` plus an offset moved by :meth:`advance`,
so TTL tests never sleep.

Besides HTTP, tests and the demo script the double directly (``put_secret``,
``put_policy``, ``put_role``, ``create_token``, ``token_by_accessor``, ...), and
:func:`reconciler.local_cluster.configure_factory` writes the factory's layout into it, as an operator would.
"""

from __future__ import annotations

import json
import re
import secrets as _secrets
import socket
import ssl
import string
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

from doubles.http import DoubleServer, Request, Response

# --------------------------------------------------------------------------- constants

PERMISSION_DENIED = "1 error occurred:\n\t* permission denied\n\n"
SEALED = "Vault is sealed"
INVALID_WRAPPING_TOKEN = "wrapping token is not valid or does not exist"

DEFAULT_TTL = 768 * 3600
"""The token mount's default and maximum TTL (32 days), as in a stock Vault."""
MAX_TTL = DEFAULT_TTL

KV_MOUNT = "kv"
CAPABILITIES = ("create", "read", "update", "patch", "delete", "list", "sudo", "deny")
_NON_ASSIGNABLE = ("response-wrapping", "control-group")

DEFAULT_POLICY = """\
# Allow tokens to look up their own properties
path "auth/token/lookup-self" {
    capabilities = ["read"]
}

# Allow tokens to renew themselves
path "auth/token/renew-self" {
    capabilities = ["update"]
}

# Allow tokens to revoke themselves
path "auth/token/revoke-self" {
    capabilities = ["update"]
}

# Allow a token to look up its own capabilities on a path
path "sys/capabilities-self" {
    capabilities = ["update"]
}

# Allow a token to manage its own cubbyhole
path "cubbyhole/*" {
    capabilities = ["create", "read", "update", "delete", "list"]
}

# Allow a token to wrap arbitrary values in a response-wrapping token
path "sys/wrapping/wrap" {
    capabilities = ["update"]
}

# Allow a token to look up the creation time and TTL of a given
# response-wrapping token
path "sys/wrapping/lookup" {
    capabilities = ["update"]
}

# Allow a token to unwrap a response-wrapping token
path "sys/wrapping/unwrap" {
    capabilities = ["update"]
}
"""



# --------------------------------------------------------------------------- helpers


class VaultHTTPError(Exception):
    """Raised inside the double to answer with ``{"errors": [...]}`` (or a given body)."""

    def __init__(self, status: int, errors: list[str] | None = None, body: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status}: {errors}")
        self.status = status
        self.errors = errors if errors is not None else []
        self.body = body

    def response(self) -> Response:
        return Response.json(self.body if self.body is not None else {"errors": self.errors}, self.status)


def _bad_request(message: str) -> VaultHTTPError:
    return VaultHTTPError(400, [message])


def _denied() -> VaultHTTPError:
    return VaultHTTPError(403, [PERMISSION_DENIED])


_ALNUM = string.ascii_letters + string.digits


def _random(n: int) -> str:
    return "".join(_secrets.choice(_ALNUM) for _ in range(n))


def rfc3339(ts: float) -> str:
    """``ts`` as RFC 3339 UTC with up to microsecond precision, as Vault prints times."""
    dt = datetime.fromtimestamp(ts, tz=timezone.utc)
    frac = f"{dt.microsecond:06d}".rstrip("0")
    base = dt.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{frac}Z" if frac else f"{base}Z"


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(value: Any, what: str = "duration") -> int:
    """Seconds from a Vault duration: ``300``, ``"300"``, ``"300s"``, ``"5m"``, ``"1h30m"``."""
    if value is None or value == "":
        return 0
    if isinstance(value, bool):
        raise _bad_request(f"invalid {what}: {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip()
        if re.fullmatch(r"-?\d+(\.\d+)?", text):
            seconds = float(text)
        else:
            pos, seconds = 0, 0.0
            for m in _DURATION_PART.finditer(text):
                if m.start() != pos:
                    raise _bad_request(f"invalid {what}: {value!r}")
                n, unit = float(m.group(1)), m.group(2)
                seconds += n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
                pos = m.end()
            if pos != len(text) or pos == 0:
                raise _bad_request(f"invalid {what}: {value!r}")
    if seconds < 0:
        raise _bad_request(f"{what} must be positive")
    return int(seconds)


def go_duration(seconds: int) -> str:
    """A whole number of seconds as Go's ``time.Duration.String()`` prints it (``720h0m0s``, ``0s``)."""
    if seconds <= 0:
        return "0s"
    h, rest = divmod(int(seconds), 3600)
    m, sec = divmod(rest, 60)
    if h:
        return f"{h}h{m}m{sec}s"
    if m:
        return f"{m}m{sec}s"
    return f"{sec}s"


def _as_bool(value: Any, default: bool = False) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("1", "true", "t", "yes"):
        return True
    if text in ("0", "false", "f", "no", ""):
        return False
    raise _bad_request(f"cannot parse {value!r} as a boolean")


def _as_int(value: Any, what: str) -> int:
    if value is None or value == "":
        return 0
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _bad_request(f"{what} must be an integer") from None


def _str_list(value: Any) -> list[str]:
    """A Vault list field: a JSON list or a comma-separated string."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [p.strip() for p in value.split(",") if p.strip()]
    if isinstance(value, (list, tuple)):
        return [str(p).strip() for p in value if str(p).strip()]
    raise _bad_request(f"expected a list, got {value!r}")


def sanitize_policies(policies: Iterable[str], add_default: bool) -> list[str]:
    """Vault's policy sanitising: lower-case, trim, de-duplicate, sort; ``root`` stands alone."""
    out = {p.strip().lower() for p in policies if p and p.strip()}
    if add_default:
        out.add("default")
    if "root" in out:
        return ["root"]
    return sorted(out)


def _glob_match(pattern: str, value: str) -> bool:
    """go-glob semantics used by token roles: ``*`` matches any run of characters, nothing else is special."""
    rx = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(rx, value) is not None


# --------------------------------------------------------------------------- ACL


class PolicyParseError(ValueError):
    """A policy text that is not valid HCL or JSON in Vault's policy shape."""


_LEGACY_POLICY = {
    "deny": ["deny"],
    "read": ["read", "list"],
    "write": ["create", "read", "update", "delete", "list"],
    "sudo": ["create", "read", "update", "delete", "list", "sudo"],
}


def _strip_comments(text: str) -> str:
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i : j + 1])
            i = j + 1
        elif c == "#" or text.startswith("//", i):
            while i < n and text[i] != "\n":
                i += 1
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _block_end(text: str, start: int) -> int:
    """Index just past the ``}`` closing the ``{`` at ``start``."""
    depth, i = 0, start
    while i < len(text):
        c = text[i]
        if c == '"':
            i += 1
            while i < len(text) and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise PolicyParseError("unbalanced braces")


def _capabilities_of(body: str, path: str) -> list[str]:
    caps: list[str] = []
    m = re.search(r"\bcapabilities\s*=\s*\[([^\]]*)\]", body)
    if m:
        caps.extend(re.findall(r'"([^"]*)"', m.group(1)))
    legacy = re.search(r'\bpolicy\s*=\s*"([^"]*)"', body)
    if legacy:
        if legacy.group(1) not in _LEGACY_POLICY:
            raise PolicyParseError(f'path "{path}": invalid policy "{legacy.group(1)}"')
        caps.extend(_LEGACY_POLICY[legacy.group(1)])
    return caps


def parse_policy(text: str) -> list[tuple[str, list[str]]]:
    """``[(path pattern, capabilities)]`` of a Vault ACL policy in HCL or JSON."""
    stripped = text.strip()
    rules: list[tuple[str, list[str]]] = []
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
        except ValueError as exc:
            raise PolicyParseError(f"failed to parse policy: {exc}") from None
        paths = data.get("path", {}) if isinstance(data, dict) else {}
        if not isinstance(paths, dict):
            raise PolicyParseError("failed to parse policy: 'path' must be an object")
        for pattern, body in paths.items():
            body = body or {}
            caps = list(body.get("capabilities", []))
            if "policy" in body:
                caps.extend(_LEGACY_POLICY.get(body["policy"], []))
            rules.append((pattern, caps))
    else:
        clean = _strip_comments(text)
        pos = 0
        for m in re.finditer(r'path\s+"((?:[^"\\]|\\.)*)"\s*\{', clean):
            if m.start() < pos:
                continue
            if clean[pos : m.start()].strip():
                raise PolicyParseError(f"failed to parse policy: unexpected {clean[pos:m.start()].strip()[:40]!r}")
            end = _block_end(clean, m.end() - 1)
            rules.append((m.group(1), _capabilities_of(clean[m.end() : end - 1], m.group(1))))
            pos = end
        if clean[pos:].strip():
            raise PolicyParseError(f"failed to parse policy: unexpected {clean[pos:].strip()[:40]!r}")
    out = []
    for pattern, caps in rules:
        for cap in caps:
            if cap not in CAPABILITIES:
                raise PolicyParseError(f'path "{pattern}": invalid capability "{cap}"')
        out.append((pattern.lstrip("/"), caps))
    return out


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    glob = pattern.endswith("*")
    base = pattern[:-1] if glob else pattern
    rx = "/".join("[^/]+" if seg == "+" else re.escape(seg) for seg in base.split("/"))
    return re.compile(rx + (".*" if glob else ""), re.DOTALL)


def _priority(pattern: str) -> tuple[int, int, int, int, str]:
    """Vault's rule order: later first wildcard, no trailing glob, fewer ``+``, longer, larger."""
    positions = [i for i, c in enumerate(pattern) if c in "+*"]
    first = positions[0] if positions else len(pattern)
    plus = sum(1 for seg in pattern.split("/") if seg == "+")
    return (first, 0 if pattern.endswith("*") else 1, -plus, len(pattern), pattern)


class ACL:
    """The merged rules of a set of policies, evaluated the way Vault does."""

    def __init__(self, rules: Iterable[tuple[str, list[str]]], root: bool = False) -> None:
        self.root = root
        merged: dict[str, set[str]] = {}
        for pattern, caps in rules:
            merged.setdefault(pattern, set()).update(caps)
        self._rules = [(p, _pattern_regex(p), caps) for p, caps in merged.items()]

    def capabilities(self, path: str) -> set[str]:
        """Capabilities of the single most specific rule matching ``path``."""
        if self.root:
            return {"root"}
        matching = [(p, caps) for p, rx, caps in self._rules if rx.fullmatch(path)]
        if not matching:
            return set()
        _, caps = max(matching, key=lambda pc: _priority(pc[0]))
        return {"deny"} if "deny" in caps else set(caps)

    def allows(self, path: str, capability: str) -> bool:
        caps = self.capabilities(path)
        return "root" in caps or capability in caps


# --------------------------------------------------------------------------- records


@dataclass
class TokenRecord:
    """One token the double issued (service, batch or response-wrapping)."""

    token: str
    accessor: str
    policies: list[str]
    type: str
    display_name: str
    meta: dict[str, str] | None
    num_uses: int
    orphan: bool
    renewable: bool
    ttl: int
    """TTL at creation (seconds); 0 = never expires."""
    explicit_max_ttl: int
    creation_time: float
    expire_time: float | None
    path: str
    parent: str | None = None
    role: str | None = None
    revoked: bool = False
    revoked_at: float | None = None
    wrapping: bool = False
    creation_path: str = ""
    wrapped_accessor: str = ""
    response: dict[str, Any] | None = None
    used: bool = False
    used_at: float | None = None
    """When the token's last use was spent (unwrap, or the N-th of ``num_uses``): it is tainted from then on."""


@dataclass
class _Version:
    data: dict[str, Any] | None
    created_time: float
    deletion_time: float | None = None
    destroyed: bool = False


@dataclass
class _Secret:
    created_time: float
    updated_time: float
    versions: dict[int, _Version] = field(default_factory=dict)
    current_version: int = 0
    max_versions: int = 0
    cas_required: bool = False
    custom_metadata: dict[str, str] | None = None
    delete_version_after: int = 0
    """Seconds; 0 = the mount's ``kv/config`` setting alone decides."""

    def version_meta(self, n: int) -> dict[str, Any]:
        v = self.versions[n]
        return {
            "created_time": rfc3339(v.created_time),
            "custom_metadata": self.custom_metadata,
            "deletion_time": rfc3339(v.deletion_time) if v.deletion_time is not None else "",
            "destroyed": v.destroyed,
            "version": n,
        }


_ROLE_DEFAULTS: dict[str, Any] = {
    "allowed_policies": [],
    "allowed_policies_glob": [],
    "disallowed_policies": [],
    "disallowed_policies_glob": [],
    "allowed_entity_aliases": [],
    "orphan": False,
    "renewable": True,
    "path_suffix": "",
    "token_type": "default-service",
    "token_no_default_policy": False,
    "token_explicit_max_ttl": 0,
    "token_num_uses": 0,
    "token_period": 0,
    "token_bound_cidrs": [],
}
_ROLE_LISTS = ("allowed_policies", "allowed_policies_glob", "disallowed_policies", "disallowed_policies_glob")
_ROLE_DURATIONS = ("token_explicit_max_ttl", "token_period")
# vault/token_store.go: token roles take only these tokenutil fields (AddTokenFieldsWithAllowList);
# there is no token_ttl / token_max_ttl, and unknown fields are ignored with a warning.
_TOKEN_TYPES = ("service", "batch", "default-service", "default-batch", "default")


@dataclass
class _Ctx:
    """What a route handler gets: the request, its API path, route params, caller and body."""

    req: Request
    path: str
    params: dict[str, str]
    caller: TokenRecord | None
    op: str
    body: dict[str, Any]


Handler = Callable[[_Ctx], Response]

_OPEN_PATHS = ("sys/health", "sys/seal-status")
_UNAUTHENTICATED = ("sys/health", "sys/seal-status", "sys/wrapping/lookup")
_WRAPPING_PATHS = ("sys/wrapping/unwrap", "sys/wrapping/lookup")


# --------------------------------------------------------------------------- the double


class VaultDouble(DoubleServer):
    """A Vault server double: token auth, ACLs, KV v2, token roles, response wrapping."""

    def __init__(
        self,
        root_token: str = "root",
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__("vault", host, port)
        # Accepted sockets inherit TCP_NODELAY: without it the reply body waits ~40 ms on
        # Nagle + delayed ACK after the separately written headers of a kept-alive connection.
        self._httpd.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._httpd.handle_error = self._handle_error  # type: ignore[method-assign]
        self.root_token = root_token
        self.sealed = False
        self.reap_delay = 0.0
        """Seconds a used-up or expired token stays in the token store before Vault's expiration
        manager revokes it (lazy revocation). Meanwhile ``lookup-accessor`` still answers for it,
        *tainted*: ``num_uses`` -1 when used up, ``ttl`` <= 0 when expired (``vault/token_store.go``
        ``lookupInternal(..., tainted=true)``); revoke-accessor of an expired one is 400 "token not found".
        0 reaps at once."""
        self.racing_unwrap_500 = False
        """When set, an unwrap of a wrapping token already used answers 500 "internal error", as the
        loser of two concurrent unwraps may on a real Vault (``vault/wrapping.go``)."""
        self._clock = clock
        self._offset = 0.0
        self._lock = threading.RLock()
        self._policies: dict[str, str] = {"default": DEFAULT_POLICY}
        self._parsed: dict[str, list[tuple[str, list[str]]]] = {"default": parse_policy(DEFAULT_POLICY)}
        self._kv: dict[str, _Secret] = {}
        self._kv_config: dict[str, Any] = {"max_versions": 0, "cas_required": False, "delete_version_after": 0}
        self._roles: dict[str, dict[str, Any]] = {}
        self._tokens: dict[str, TokenRecord] = {}
        self._by_accessor: dict[str, TokenRecord] = {}
        self._vroutes: list[tuple[tuple[str, ...], re.Pattern[str], Handler]] = []
        now = self.now()
        self._store(
            TokenRecord(
                token=root_token,
                accessor=_random(24),
                policies=["root"],
                type="service",
                display_name="root",
                meta=None,
                num_uses=0,
                orphan=True,
                renewable=False,
                ttl=0,
                explicit_max_ttl=0,
                creation_time=now,
                expire_time=None,
                path="auth/token/root",
            )
        )
        self._register_routes()

    def _handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet when a client went away before its reply (timeouts, held replies); report anything else."""
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError, ssl.SSLError)):
            return  # ssl.SSLError: a client that refused the certificate (no CA configured)
        type(self._httpd).handle_error(self._httpd, request, client_address)

    def start(self) -> "VaultDouble":
        """Serve in a daemon thread; a short poll interval makes ``stop()`` return in ~50 ms, not 500."""
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="vault-double", daemon=True
        )
        self._thread.start()
        return self

    # ------------------------------------------------------------------ clock
    def now(self) -> float:
        """The double's current time: the injected clock plus :meth:`advance` offsets."""
        return self._clock() + self._offset

    def advance(self, seconds: float) -> None:
        """Move the double's clock forward (tokens and wrapping tokens expire by it)."""
        with self._lock:
            self._offset += seconds

    # ------------------------------------------------------------------ scripting API
    def put_secret(self, path: str, data: dict[str, Any]) -> int:
        """Write a new version of ``kv/data/<path>``; returns the version number."""
        with self._lock:
            return self._kv_write(path.strip("/"), dict(data))

    def read_secret(self, path: str) -> dict[str, Any] | None:
        """The current version's data of ``<path>``, or None when missing, deleted or destroyed."""
        with self._lock:
            sec = self._kv.get(path.strip("/"))
            if sec is None or sec.current_version == 0:
                return None
            v = sec.versions[sec.current_version]
            return None if self._kv_deleted(v) else dict(v.data or {})

    def delete_secret(self, path: str) -> None:
        """Soft-delete the current version of ``<path>`` (metadata stays)."""
        with self._lock:
            sec = self._kv.get(path.strip("/"))
            if sec and sec.current_version:
                self._kv_soft_delete(sec, [sec.current_version])

    def destroy_secret(self, path: str, versions: list[int] | None = None) -> None:
        """Destroy ``versions`` (default: the current one) of ``<path>``."""
        with self._lock:
            sec = self._kv.get(path.strip("/"))
            if sec and sec.current_version:
                self._kv_destroy(sec, versions or [sec.current_version])

    def put_policy(self, name: str, text: str) -> None:
        """Write ACL policy ``name`` (stored lower-cased, as Vault does)."""
        with self._lock:
            self._policy_write(name, text)

    def policy(self, name: str) -> str | None:
        """The text of policy ``name`` (case-insensitive), or None."""
        with self._lock:
            return self._policies.get(name.strip().lower())

    def delete_policy(self, name: str) -> None:
        with self._lock:
            self._policies.pop(name.strip().lower(), None)
            self._parsed.pop(name.strip().lower(), None)

    def put_role(self, name: str, **fields: Any) -> None:
        """Create or update token role ``name`` with Vault's role fields."""
        with self._lock:
            self._role_write(name, fields)

    def role(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            role = self._roles.get(name.lower())
            return dict(role) if role else None

    def create_token(
        self,
        policies: list[str],
        ttl: int | str | None = None,
        *,
        no_default_policy: bool = False,
        renewable: bool = True,
        orphan: bool = True,
        explicit_max_ttl: int | str | None = None,
        num_uses: int = 0,
        meta: dict[str, str] | None = None,
        display_name: str = "",
        type: str = "service",
    ) -> str:
        """Mint a token directly (for the reconciler itself or a test); returns its value."""
        with self._lock:
            final = sanitize_policies(policies, add_default=not no_default_policy)
            explicit = parse_duration(explicit_max_ttl, "explicit_max_ttl")
            rec = self._new_token(
                policies=final,
                ttl=parse_duration(ttl, "ttl"),
                explicit_max_ttl=explicit,
                renewable=renewable,
                orphan=orphan,
                parent=None if orphan else self.root_token,
                num_uses=num_uses,
                meta=meta,
                display_name=display_name,
                token_type=type,
                path="auth/token/create",
                role=None,
            )
            return rec.token

    def token_by_accessor(self, accessor: str) -> dict[str, Any] | None:
        """The full record of the token with ``accessor`` (revoked and expired ones included)."""
        with self._lock:
            rec = self._by_accessor.get(accessor)
            return self._record(rec) if rec else None

    def token_record(self, token: str) -> dict[str, Any] | None:
        """The full record of token ``token``."""
        with self._lock:
            rec = self._tokens.get(token)
            return self._record(rec) if rec else None

    def tokens(self) -> list[dict[str, Any]]:
        """Every token ever issued (not wrapping tokens), revoked and expired ones included."""
        with self._lock:
            return [self._record(t) for t in self._tokens.values() if not t.wrapping]

    def live_tokens(self) -> list[dict[str, Any]]:
        """Tokens that still work: not revoked, not expired, not the root token."""
        return [t for t in self.tokens() if t["live"] and t["token"] != self.root_token]

    def wrapping_tokens(self) -> list[dict[str, Any]]:
        """Every response-wrapping token, with ``used`` and ``expired`` flags."""
        with self._lock:
            return [self._record(t) for t in self._tokens.values() if t.wrapping]

    def revoke_token(self, token: str) -> None:
        """Revoke ``token`` (and its non-orphan children)."""
        with self._lock:
            rec = self._tokens.get(token)
            if rec:
                self._revoke(rec)

    # ------------------------------------------------------------------ records
    def _record(self, rec: TokenRecord) -> dict[str, Any]:
        out = asdict(rec)
        out["expired"] = self._expired(rec)
        out["live"] = self._valid(rec)
        out["expire_time_rfc3339"] = rfc3339(rec.expire_time) if rec.expire_time is not None else None
        return out

    def _expired(self, rec: TokenRecord) -> bool:
        return rec.expire_time is not None and self.now() >= rec.expire_time

    def _valid(self, rec: TokenRecord | None) -> bool:
        return rec is not None and not rec.revoked and not rec.used and not self._expired(rec)

    def _store(self, rec: TokenRecord) -> TokenRecord:
        self._tokens[rec.token] = rec
        if rec.accessor:
            self._by_accessor[rec.accessor] = rec
        return rec

    def _revoke(self, rec: TokenRecord) -> None:
        if rec.revoked:
            return
        rec.revoked = True
        rec.revoked_at = self.now()
        for child in list(self._tokens.values()):
            if child.parent == rec.token and not child.revoked:
                self._revoke(child)

    def _acl(self, rec: TokenRecord) -> ACL:
        if "root" in rec.policies:
            return ACL([], root=True)
        rules: list[tuple[str, list[str]]] = []
        for name in rec.policies:
            rules.extend(self._parsed.get(name, []))
        return ACL(rules)

    # ------------------------------------------------------------------ HTTP plumbing
    def not_found(self, req: Request) -> Response:
        return Response.json({"errors": []}, 404)

    def injected_error(self, req: Request) -> Response:
        return Response.json({"errors": ["1 error occurred:\n\t* injected fault: internal error\n\n"]}, 500)

    def _on(self, methods: str, pattern: str, handler: Handler) -> None:
        self._vroutes.append((tuple(methods.split()), re.compile(pattern), handler))

    def _apply(self, req: Request) -> Response:
        with self._lock:
            try:
                return self._serve(req)
            except VaultHTTPError as err:
                return err.response()

    def _serve(self, req: Request) -> Response:
        if not req.path.startswith("/v1/"):
            return Response.json({"errors": []}, 404)
        path = req.path[len("/v1/") :]
        while "//" in path:
            path = path.replace("//", "/")
        if self.sealed and path not in _OPEN_PATHS:
            raise VaultHTTPError(503, [SEALED])
        wrap_ttl = self._wrap_ttl(req)
        op = self._operation(req, path)
        body = self._body(req)
        caller = self._authorize(req, path, op, body)
        method = "LIST" if op == "list" else ("POST" if req.method in ("POST", "PUT") else req.method)
        route_path = path.rstrip("/") if op == "list" else path
        resp: Response | None = None
        for methods, rx, handler in self._vroutes:
            m = rx.fullmatch(route_path)
            if m is None or method not in methods:
                continue
            params = {k: v for k, v in m.groupdict().items() if v is not None}
            resp = handler(_Ctx(req, path, params, caller, op, body))
            break
        if resp is None:
            if any(rx.fullmatch(route_path) for _, rx, _ in self._vroutes):
                raise VaultHTTPError(405, ["1 error occurred:\n\t* unsupported operation\n\n"])
            raise VaultHTTPError(404, [f'no handler for route "{path}". route entry not found.'])
        return self._maybe_wrap(wrap_ttl, path, resp)

    @staticmethod
    def _body(req: Request) -> dict[str, Any]:
        if not req.body:
            return {}
        try:
            data = req.json()
        except ValueError:
            raise _bad_request("failed to parse JSON input") from None
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise _bad_request("failed to parse JSON input: expected an object")
        return data

    def _operation(self, req: Request, path: str) -> str:
        method = req.method.upper()
        if method == "LIST" or (method == "GET" and (req.arg("list") or "").lower() in ("true", "1")):
            return "list"
        if method in ("GET", "HEAD"):
            return "read"
        if method == "DELETE":
            return "delete"
        if method in ("POST", "PUT", "PATCH"):
            return "create" if self._exists(path) is False else "update"
        return "update"

    def _exists(self, path: str) -> bool | None:
        """Vault's existence check: only paths that have one decide create vs update."""
        m = re.fullmatch(r"kv/(?:data|metadata)/(.+)", path)
        if m:
            return m.group(1) in self._kv
        return None

    def _authorize(self, req: Request, path: str, op: str, body: dict[str, Any]) -> TokenRecord | None:
        """Check the token and the ACL; returns the caller (None on unauthenticated paths)."""
        if path in _UNAUTHENTICATED:
            return None
        value = req.header("X-Vault-Token") or ""
        rec = self._tokens.get(value) if value else None
        if path in _WRAPPING_PATHS and rec is not None and rec.wrapping:
            return rec  # the wrapping token itself; validated by the handler
        if not self._valid(rec) or rec is None or rec.wrapping:
            raise _denied()
        acl_path = path if op != "list" or path.endswith("/") else path + "/"
        if not self._acl(rec).allows(acl_path, op):
            raise _denied()
        self._use(rec)
        return rec

    def _use(self, rec: TokenRecord) -> None:
        """Count one use of a limited-use token; the last use revokes it."""
        if rec.num_uses > 0:
            rec.num_uses -= 1
            if rec.num_uses == 0:
                rec.num_uses = -1  # Vault marks an exhausted token -1 until it is revoked
                rec.used_at = self.now()
                self._revoke(rec)

    def _envelope(
        self,
        data: Any = None,
        *,
        auth: dict[str, Any] | None = None,
        warnings: list[str] | None = None,
        top: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "request_id": str(uuid.uuid4()),
            "lease_id": "",
            "renewable": False,
            "lease_duration": 0,
            "data": data,
            "wrap_info": None,
            "warnings": warnings or None,
            "auth": auth,
        }
        if top:
            out.update(top)
        return out

    def _ok(self, data: Any = None, **kw: Any) -> Response:
        return Response.json(self._envelope(data, **kw))

    # ------------------------------------------------------------------ wrapping
    @staticmethod
    def _wrap_ttl(req: Request) -> int:
        """Seconds asked for by ``X-Vault-Wrap-TTL`` (0 = do not wrap); checked before anything runs."""
        header = req.header("X-Vault-Wrap-TTL")
        if not header:
            return 0
        try:
            ttl = parse_duration(header, "wrap TTL")
        except VaultHTTPError:
            raise _bad_request("error parsing wrap TTL") from None
        if ttl <= 0:
            raise _bad_request("error parsing wrap TTL")
        return ttl

    def _maybe_wrap(self, ttl: int, path: str, resp: Response) -> Response:
        """Replace a 200 reply carrying data or auth by a response-wrapping token when asked."""
        if not ttl or resp.status != 200 or not resp.body:
            return resp
        inner = json.loads(resp.body)
        if not isinstance(inner, dict) or (inner.get("data") is None and inner.get("auth") is None):
            return resp
        now = self.now()
        wrapped_accessor = (inner.get("auth") or {}).get("accessor", "") or ""
        rec = self._store(
            TokenRecord(
                token="hvs." + _random(24),
                accessor=_random(24),
                policies=["response-wrapping"],
                type="service",
                display_name="",
                meta=None,
                num_uses=1,
                orphan=True,
                renewable=False,
                ttl=ttl,
                explicit_max_ttl=0,
                creation_time=now,
                expire_time=now + ttl,
                path=path,
                wrapping=True,
                creation_path=path,
                wrapped_accessor=wrapped_accessor,
                response=inner,
            )
        )
        wrap_info = {
            "token": rec.token,
            "accessor": rec.accessor,
            "ttl": ttl,
            "creation_time": rfc3339(now),
            "creation_path": path,
            "wrapped_accessor": wrapped_accessor,
        }
        env = self._envelope(None)
        env["wrap_info"] = wrap_info
        return Response.json(env)

    def _wrapping_target(self, ctx: _Ctx) -> TokenRecord:
        """The wrapping token a lookup/unwrap is about: body ``token``, else the header token."""
        value = ctx.body.get("token") or (ctx.req.header("X-Vault-Token") or "")
        rec = self._tokens.get(str(value)) if value else None
        if rec is None or not rec.wrapping or not self._valid(rec):
            raise _bad_request(INVALID_WRAPPING_TOKEN)
        return rec

    def _h_wrapping_lookup(self, ctx: _Ctx) -> Response:
        rec = self._wrapping_target(ctx)
        return self._ok(
            {
                "creation_path": rec.creation_path,
                "creation_time": rfc3339(rec.creation_time),
                "creation_ttl": rec.ttl,
            }
        )

    def _h_wrapping_unwrap(self, ctx: _Ctx) -> Response:
        if ctx.caller is not None and ctx.caller.wrapping and ctx.body.get("token"):
            raise _bad_request("wrapping token in both header and body")  # Vault wants it in one place
        if self.racing_unwrap_500:
            value = ctx.body.get("token") or (ctx.req.header("X-Vault-Token") or "")
            used = self._tokens.get(str(value)) if value else None
            if used is not None and used.wrapping and used.used:
                raise VaultHTTPError(500, ["internal error"])
        rec = self._wrapping_target(ctx)
        rec.used = True
        rec.num_uses = -1  # tainted: revocation pending (vault/token_store.go UseToken)
        rec.used_at = self.now()
        rec.revoked = True
        rec.revoked_at = self.now()
        inner = dict(rec.response or {})
        inner["request_id"] = str(uuid.uuid4())
        return Response.json(inner)

    # ------------------------------------------------------------------ sys
    def _h_health(self, ctx: _Ctx) -> Response:
        body = {
            "initialized": True,
            "sealed": self.sealed,
            "standby": False,
            "performance_standby": False,
            "replication_performance_mode": "disabled",
            "replication_dr_mode": "disabled",
            "server_time_utc": int(self.now()),
            "version": "1.15.6",
            "cluster_name": "vault-double",
            "cluster_id": "00000000-0000-0000-0000-000000000000",
        }
        status = 200
        if self.sealed:
            status = _as_int(ctx.req.arg("sealedcode"), "sealedcode") or 503
        else:
            status = _as_int(ctx.req.arg("activecode"), "activecode") or 200
        return Response.json(body, status)

    def _h_seal_status(self, ctx: _Ctx) -> Response:
        return Response.json(
            {
                "type": "shamir",
                "initialized": True,
                "sealed": self.sealed,
                "t": 1,
                "n": 1,
                "progress": 0,
                "nonce": "",
                "version": "1.15.6",
                "migration": False,
                "recovery_seal": False,
                "storage_type": "inmem",
            }
        )

    # ------------------------------------------------------------------ policies
    def _policy_write(self, name: str, text: str) -> None:
        key = name.strip().lower()
        if not key:
            raise _bad_request("policy name must be provided")
        if key == "root":
            raise _bad_request('cannot update "root" policy')
        if key in _NON_ASSIGNABLE:
            raise _bad_request(f'cannot update "{key}" policy')
        try:
            parsed = parse_policy(text)
        except PolicyParseError as exc:
            raise _bad_request(f"failed to parse policy: {exc}") from None
        self._policies[key] = text
        self._parsed[key] = parsed

    def _policy_names(self) -> list[str]:
        return sorted(set(self._policies) | {"root"})

    def _h_policies_list(self, ctx: _Ctx) -> Response:
        keys = self._policy_names()
        return self._ok({"keys": keys, "policies": keys}, top={"keys": keys, "policies": keys})

    def _h_policy_read(self, ctx: _Ctx) -> Response:
        name = ctx.params["name"].strip().lower()
        text = self._policies.get(name)
        if text is None:
            raise VaultHTTPError(404, [])
        if "legacy" in ctx.params:
            data = {"name": name, "rules": text}
        else:
            data = {"name": name, "policy": text}
        return self._ok(data, top=dict(data))

    def _h_policy_write(self, ctx: _Ctx) -> Response:
        text = ctx.body.get("policy", ctx.body.get("rules"))
        if not isinstance(text, str):
            raise _bad_request("'policy' parameter not supplied or empty")
        self._policy_write(ctx.params["name"], text)
        return Response.empty(204)

    def _h_policy_delete(self, ctx: _Ctx) -> Response:
        name = ctx.params["name"].strip().lower()
        if name in ("root", "default"):
            raise _bad_request(f'cannot delete "{name}" policy')
        self._policies.pop(name, None)
        self._parsed.pop(name, None)
        return Response.empty(204)

    # ------------------------------------------------------------------ KV v2
    def _kv_write(self, path: str, data: dict[str, Any], cas: int | None = None) -> int:
        now = self.now()
        sec = self._kv.get(path)
        if cas is not None or (sec is not None and sec.cas_required) or self._kv_config["cas_required"]:
            current = sec.current_version if sec else 0
            if cas is None:
                raise _bad_request("check-and-set parameter required for this call")
            if cas != current:
                raise _bad_request("check-and-set parameter did not match the current version")
        if sec is None:
            sec = self._kv[path] = _Secret(created_time=now, updated_time=now)
        n = sec.current_version + 1
        sec.versions[n] = _Version(data=data, created_time=now, deletion_time=self._kv_deletion_time(sec, now))
        sec.current_version = n
        sec.updated_time = now
        return n

    def _kv_deleted(self, v: _Version) -> bool:
        """A version is readable unless destroyed or its deletion time has *passed* (a future one,
        stamped by ``delete_version_after``, still reads: vault-plugin-secrets-kv ``path_data.go``)."""
        return v.destroyed or (v.deletion_time is not None and v.deletion_time <= self.now())

    def _kv_soft_delete(self, sec: _Secret, versions: Iterable[int]) -> None:
        now = self.now()
        for n in versions:
            v = sec.versions.get(n)
            if v and not self._kv_deleted(v):
                v.deletion_time = now

    def _kv_deletion_time(self, sec: _Secret, created: float) -> float | None:
        """Creation plus the smallest non-zero ``delete_version_after`` of mount and key, or None
        (vault-plugin-secrets-kv ``delete_version_after.go`` ``deletionTime``)."""
        choices = [d for d in (int(self._kv_config["delete_version_after"]), sec.delete_version_after) if d > 0]
        return created + min(choices) if choices else None

    def _kv_destroy(self, sec: _Secret, versions: Iterable[int]) -> None:
        for n in versions:
            v = sec.versions.get(n)
            if v:
                v.destroyed = True
                v.data = None

    def _versions_arg(self, ctx: _Ctx) -> list[int]:
        raw = ctx.body.get("versions")
        versions = [_as_int(v, "versions") for v in _str_list(raw)] if raw is not None else []
        if not versions:
            raise _bad_request("no version number provided")
        return versions

    def _kv_metadata_body(self, sec: _Secret) -> dict[str, Any]:
        existing = [n for n in sec.versions]
        return {
            "cas_required": sec.cas_required,
            "created_time": rfc3339(sec.created_time),
            "current_version": sec.current_version,
            "custom_metadata": sec.custom_metadata,
            "delete_version_after": go_duration(sec.delete_version_after),
            "max_versions": sec.max_versions,
            "oldest_version": min(existing) if existing else 0,
            "updated_time": rfc3339(sec.updated_time),
            "versions": {
                str(n): {
                    "created_time": rfc3339(v.created_time),
                    "deletion_time": rfc3339(v.deletion_time) if v.deletion_time is not None else "",
                    "destroyed": v.destroyed,
                }
                for n, v in sorted(sec.versions.items())
            },
        }

    def _h_kv_read(self, ctx: _Ctx) -> Response:
        sec = self._kv.get(ctx.params["path"])
        if sec is None or sec.current_version == 0:
            raise VaultHTTPError(404, [])
        n = _as_int(ctx.req.arg("version"), "version") or sec.current_version
        v = sec.versions.get(n)
        if v is None:
            raise VaultHTTPError(404, [])
        meta = sec.version_meta(n)
        if self._kv_deleted(v):
            # Vault answers 404 but still shows the version's metadata.
            raise VaultHTTPError(404, body=self._envelope({"data": None, "metadata": meta}))
        return self._ok({"data": v.data, "metadata": meta})

    def _h_kv_write(self, ctx: _Ctx) -> Response:
        data = ctx.body.get("data")
        if not isinstance(data, dict):
            raise _bad_request("no data provided")
        options = ctx.body.get("options") or {}
        cas = options.get("cas") if isinstance(options, dict) else None
        n = self._kv_write(ctx.params["path"], data, None if cas is None else _as_int(cas, "cas"))
        return self._ok(self._kv[ctx.params["path"]].version_meta(n))

    def _h_kv_delete_latest(self, ctx: _Ctx) -> Response:
        sec = self._kv.get(ctx.params["path"])
        if sec and sec.current_version:
            self._kv_soft_delete(sec, [sec.current_version])
        return Response.empty(204)

    def _h_kv_delete_versions(self, ctx: _Ctx) -> Response:
        versions = self._versions_arg(ctx)
        sec = self._kv.get(ctx.params["path"])
        if sec:
            self._kv_soft_delete(sec, versions)
        return Response.empty(204)

    def _h_kv_undelete(self, ctx: _Ctx) -> Response:
        versions = self._versions_arg(ctx)
        sec = self._kv.get(ctx.params["path"])
        for n in versions:
            v = sec.versions.get(n) if sec else None
            if v and not v.destroyed:
                v.deletion_time = None
        return Response.empty(204)

    def _h_kv_destroy(self, ctx: _Ctx) -> Response:
        versions = self._versions_arg(ctx)
        sec = self._kv.get(ctx.params["path"])
        if sec:
            self._kv_destroy(sec, versions)
        return Response.empty(204)

    def _h_kv_metadata_read(self, ctx: _Ctx) -> Response:
        sec = self._kv.get(ctx.params.get("path", ""))
        if sec is None:
            raise VaultHTTPError(404, [])
        return self._ok(self._kv_metadata_body(sec))

    def _h_kv_metadata_write(self, ctx: _Ctx) -> Response:
        path = ctx.params.get("path", "")
        now = self.now()
        sec = self._kv.setdefault(path, _Secret(created_time=now, updated_time=now))
        if "max_versions" in ctx.body:
            sec.max_versions = _as_int(ctx.body["max_versions"], "max_versions")
        if "cas_required" in ctx.body:
            sec.cas_required = _as_bool(ctx.body["cas_required"])
        if "custom_metadata" in ctx.body:
            sec.custom_metadata = ctx.body["custom_metadata"]
        if "delete_version_after" in ctx.body:
            sec.delete_version_after = parse_duration(ctx.body["delete_version_after"], "delete_version_after")
        sec.updated_time = now
        return Response.empty(204)

    def _h_kv_config_read(self, ctx: _Ctx) -> Response:
        cfg = self._kv_config
        return self._ok(
            {
                "cas_required": cfg["cas_required"],
                "delete_version_after": go_duration(cfg["delete_version_after"]),
                "max_versions": cfg["max_versions"],
            }
        )

    def _h_kv_config_write(self, ctx: _Ctx) -> Response:
        """``kv/config``: the mount's ``max_versions``, ``cas_required``, ``delete_version_after``
        (vault-plugin-secrets-kv ``path_config.go``); later writes stamp future deletion times."""
        body = ctx.body
        if "max_versions" in body:
            self._kv_config["max_versions"] = _as_int(body["max_versions"], "max_versions")
        if "cas_required" in body:
            self._kv_config["cas_required"] = _as_bool(body["cas_required"])
        if "delete_version_after" in body:
            self._kv_config["delete_version_after"] = parse_duration(body["delete_version_after"], "delete_version_after")
        return Response.empty(204)

    def configure_kv(self, **fields: Any) -> None:
        """Write ``kv/config`` directly (``delete_version_after="720h"``, ...)."""
        with self._lock:
            for key, value in fields.items():
                if key == "delete_version_after":
                    value = parse_duration(value, key)
                self._kv_config[key] = value

    def _h_kv_metadata_delete(self, ctx: _Ctx) -> Response:
        self._kv.pop(ctx.params.get("path", ""), None)
        return Response.empty(204)

    def _h_kv_list(self, ctx: _Ctx) -> Response:
        folder = ctx.params.get("path", "").strip("/")
        prefix = folder + "/" if folder else ""
        keys: set[str] = set()
        for path in self._kv:
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :]
            keys.add(rest.split("/", 1)[0] + "/" if "/" in rest else rest)
        if not keys:
            raise VaultHTTPError(404, [])
        return self._ok({"keys": sorted(keys)})

    # ------------------------------------------------------------------ token roles
    def _role_write(self, name: str, fields: dict[str, Any]) -> list[str]:
        """Write the role; returns the fields Vault ignores (unknown to token roles)."""
        ignored: list[str] = []
        key = name.strip().lower()
        if not key:
            raise _bad_request("role name must be provided")
        role = dict(self._roles.get(key) or _ROLE_DEFAULTS)
        role["name"] = key
        for k, v in fields.items():
            if k in _ROLE_LISTS:
                values = _str_list(v)
                role[k] = sanitize_policies(values, False) if k in ("allowed_policies", "disallowed_policies") else [
                    p.lower() for p in values
                ]
            elif k in _ROLE_DURATIONS:
                role[k] = parse_duration(v, k)
            elif k == "explicit_max_ttl":
                role["token_explicit_max_ttl"] = parse_duration(v, k)
            elif k == "period":
                role["token_period"] = parse_duration(v, k)
            elif k in ("orphan", "renewable", "token_no_default_policy"):
                role[k] = _as_bool(v)
            elif k == "token_num_uses":
                role[k] = _as_int(v, k)
                if role[k] < 0:
                    raise _bad_request("token_num_uses cannot be negative")
            elif k == "token_type":
                if v not in _TOKEN_TYPES:
                    raise _bad_request(f"invalid 'token_type' value {v!r}")
                role[k] = "default-service" if v == "default" else v
            elif k in _ROLE_DEFAULTS:
                role[k] = v
            else:
                ignored.append(k)
        self._roles[key] = role
        return ignored

    def _role_view(self, role: dict[str, Any]) -> dict[str, Any]:
        out = dict(role)
        out["explicit_max_ttl"] = role["token_explicit_max_ttl"]
        out["period"] = role["token_period"]
        return out

    def _h_role_write(self, ctx: _Ctx) -> Response:
        ignored = self._role_write(ctx.params["role"], ctx.body)
        if ignored:
            # vault/logical/framework: unknown parameters are dropped, and the reply says so.
            return self._ok(None, warnings=[f"Endpoint ignored these unrecognized parameters: [{' '.join(sorted(ignored))}]"])
        return Response.empty(204)

    def _h_role_read(self, ctx: _Ctx) -> Response:
        role = self._roles.get(ctx.params["role"].lower())
        if role is None:
            raise VaultHTTPError(404, [])
        return self._ok(self._role_view(role))

    def _h_role_delete(self, ctx: _Ctx) -> Response:
        self._roles.pop(ctx.params["role"].lower(), None)
        return Response.empty(204)

    def _h_roles_list(self, ctx: _Ctx) -> Response:
        if not self._roles:
            raise VaultHTTPError(404, [])
        return self._ok({"keys": sorted(self._roles)})

    # ------------------------------------------------------------------ token store
    def _new_token(
        self,
        *,
        policies: list[str],
        ttl: int,
        explicit_max_ttl: int,
        renewable: bool,
        orphan: bool,
        parent: str | None,
        num_uses: int,
        meta: dict[str, str] | None,
        display_name: str,
        token_type: str,
        path: str,
        role: str | None,
        max_ttl: int = MAX_TTL,
    ) -> TokenRecord:
        if ttl == 0 and policies != ["root"]:
            ttl = DEFAULT_TTL
        if ttl:
            ttl = min(ttl, max_ttl)
        if explicit_max_ttl:
            ttl = min(ttl, explicit_max_ttl) if ttl else explicit_max_ttl
        if ttl == 0:
            renewable = False
        if token_type == "batch":
            renewable = False
        name = "token"
        if display_name:
            name = re.sub(r"[^a-zA-Z0-9-]", "-", "token-" + display_name).removesuffix("-")
        now = self.now()
        prefix = "hvb." if token_type == "batch" else "hvs."
        return self._store(
            TokenRecord(
                token=prefix + _random(24 if token_type == "service" else 40),
                accessor=_random(24) if token_type == "service" else "",
                policies=policies,
                type=token_type,
                display_name=name,
                meta=dict(meta) if meta else None,
                num_uses=num_uses,
                orphan=orphan,
                renewable=renewable,
                ttl=ttl,
                explicit_max_ttl=explicit_max_ttl,
                creation_time=now,
                expire_time=now + ttl if ttl else None,
                path=path,
                parent=parent,
                role=role,
            )
        )

    def _resolve_policies(
        self, body: dict[str, Any], role: dict[str, Any] | None, parent: TokenRecord
    ) -> list[str]:
        """The new token's policies, following Vault's token store rules."""
        requested = _str_list(body.get("policies"))
        no_default = _as_bool(body.get("no_default_policy"))
        parent_root = "root" in parent.policies
        if role is not None and (
            role["allowed_policies"] or role["allowed_policies_glob"] or role["disallowed_policies"]
            or role["disallowed_policies_glob"]
        ):
            # vault/token_store.go handleCreateCommon: only a role with lists may drop default itself
            # (token_no_default_policy, or default disallowed literally or by glob).
            no_default = no_default or role["token_no_default_policy"]
            add_default = (
                not no_default
                and "default" not in role["disallowed_policies"]
                and not any(_glob_match(g, "default") for g in role["disallowed_policies_glob"])
            )
            final = sanitize_policies(requested, add_default) if requested else []
            globs = role["allowed_policies_glob"]
            if role["allowed_policies"] or globs:
                # As in Vault: the role's literal list (plus default when it applies); globs are not expanded.
                allowed = sanitize_policies(role["allowed_policies"], add_default)
                if not final:
                    final = allowed
                else:
                    outside = [p for p in final if p not in allowed and not any(_glob_match(g, p) for g in globs)]
                    if outside:
                        raise _bad_request(
                            f"token policies ({_q(final)}) must be subset of the role's allowed policies "
                            f"({_q(allowed)}) or glob policies ({_q(globs)})"
                        )
            elif not final:
                final = sanitize_policies(parent.policies, add_default)
            for p in final:
                if p in role["disallowed_policies"] or any(_glob_match(g, p) for g in role["disallowed_policies_glob"]):
                    raise _bad_request(f'token policy "{p}" is disallowed by this role')
        elif not requested:
            final = sanitize_policies(parent.policies, False)
        else:
            final = sanitize_policies(requested, False)
            if not parent_root:
                if not set(final) <= set(sanitize_policies(parent.policies, False)):
                    raise _bad_request("child policies must be subset of parent")
                if not no_default and "default" in parent.policies:
                    final = sanitize_policies(final, True)
            elif not no_default:
                final = sanitize_policies(final, True)
        if no_default and "default" in final:
            final = [p for p in final if p != "default"]
        for p in final:
            if p in _NON_ASSIGNABLE:
                raise _bad_request(f'cannot assign policy "{p}"')
        if "root" in final and not parent_root:
            raise _bad_request("root tokens may not be created without parent token being root")
        return final

    @staticmethod
    def _token_type(body: dict[str, Any], role: dict[str, Any] | None) -> str:
        requested = str(body.get("type") or "")
        role_type = role["token_type"] if role else "default-service"
        if requested and requested not in ("service", "batch"):
            raise _bad_request(f"invalid 'type' value {requested!r}")
        if role_type in ("service", "batch"):
            if requested and requested != role_type:
                raise _bad_request(f"{requested} tokens may not be created with a role that issues {role_type} tokens")
            return role_type
        return requested or ("batch" if role_type == "default-batch" else "service")

    def _h_token_create(self, ctx: _Ctx) -> Response:
        parent = ctx.caller
        assert parent is not None
        body = ctx.body
        kind = ctx.params.get("kind", "create")
        role = None
        if "role" in ctx.params:
            role = self._roles.get(ctx.params["role"].lower())
            if role is None:
                raise _bad_request(f"unknown role {ctx.params['role']}")
        if parent.num_uses > 0:
            raise _bad_request("restricted use token cannot generate child tokens")
        num_uses = _as_int(body.get("num_uses"), "num_uses")
        if num_uses < 0:
            raise _bad_request("number of uses cannot be negative")
        meta = body.get("meta")
        if meta is not None and (
            not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
        ):
            raise _bad_request("Error decoding request: 'meta' must be a map of strings to strings")
        policies = self._resolve_policies(body, role, parent)
        parent_root = "root" in parent.policies
        if role is not None:
            orphan = bool(role["orphan"])
        elif kind == "create-orphan":
            orphan = True
        else:
            orphan = _as_bool(body.get("no_parent"))
            if orphan and not parent_root:
                raise _bad_request("root or sudo privileges required to create orphan token")
        token_type = self._token_type(body, role)
        if token_type == "batch" and policies == ["root"]:
            raise _bad_request("batch tokens cannot be root tokens")
        renewable = _as_bool(body.get("renewable"), default=True)
        explicit = parse_duration(body.get("explicit_max_ttl"), "explicit_max_ttl")
        ttl = parse_duration(body.get("ttl"), "ttl")
        max_ttl = MAX_TTL
        warnings: list[str] = []
        if role is not None:
            renewable = renewable and bool(role["renewable"])
            if role["token_explicit_max_ttl"]:
                if explicit:
                    warnings.append(
                        "Explicit max TTL specified both during creation call and in role; using the lesser value of "
                        f"{min(explicit, role['token_explicit_max_ttl'])} seconds"
                    )
                explicit = min(explicit or role["token_explicit_max_ttl"], role["token_explicit_max_ttl"])
            if role["token_num_uses"]:
                num_uses = min(num_uses or role["token_num_uses"], role["token_num_uses"])
        suffix = f"/{role['path_suffix']}" if role and role["path_suffix"] else ""
        rec = self._new_token(
            policies=policies,
            ttl=ttl,
            explicit_max_ttl=explicit,
            renewable=renewable,
            orphan=orphan,
            parent=None if orphan else parent.token,
            num_uses=num_uses,
            meta=meta,
            display_name=str(body.get("display_name") or ""),
            token_type=token_type,
            path=ctx.path + suffix,
            role=role["name"] if role else None,
            max_ttl=max_ttl,
        )
        warnings.extend(f'Policy "{p}" does not exist' for p in policies if p not in self._policies and p != "root")
        return self._ok(None, auth=self._auth_block(rec), warnings=warnings)

    @staticmethod
    def _auth_block(rec: TokenRecord) -> dict[str, Any]:
        return {
            "client_token": rec.token,
            "accessor": rec.accessor,
            "policies": list(rec.policies),
            "token_policies": list(rec.policies),
            "identity_policies": None,
            "metadata": rec.meta,
            "lease_duration": rec.ttl,
            "renewable": rec.renewable,
            "entity_id": "",
            "token_type": rec.type,
            "orphan": rec.orphan,
            "mfa_requirement": None,
            "num_uses": rec.num_uses,
        }

    def _lookup_data(self, rec: TokenRecord, show_id: bool) -> dict[str, Any]:
        remaining = 0 if rec.expire_time is None else max(0, int(rec.expire_time - self.now()))
        return {
            "accessor": rec.accessor,
            "creation_time": int(rec.creation_time),
            "creation_ttl": rec.ttl,
            "display_name": rec.display_name,
            "entity_id": "",
            "expire_time": rfc3339(rec.expire_time) if rec.expire_time is not None else None,
            "explicit_max_ttl": rec.explicit_max_ttl,
            "id": rec.token if show_id else "",
            "issue_time": rfc3339(rec.creation_time),
            "meta": rec.meta,
            "num_uses": rec.num_uses,
            "orphan": rec.orphan,
            "path": rec.path,
            "policies": list(rec.policies),
            "renewable": rec.renewable,
            "role": rec.role or "",
            "ttl": remaining,
            "type": rec.type,
        }

    def _by_live_accessor(self, ctx: _Ctx) -> TokenRecord:
        accessor = str(ctx.body.get("accessor") or "")
        if not accessor:
            raise _bad_request("missing accessor")
        rec = self._by_accessor.get(accessor)
        if not self._valid(rec) or rec is None:
            raise _bad_request("invalid accessor")
        return rec

    def _tainted(self, rec: TokenRecord | None) -> bool:
        """Used up or expired, but not yet reaped (see ``reap_delay``)."""
        if rec is None:
            return False
        now = self.now()
        if rec.used_at is not None:
            return now < rec.used_at + self.reap_delay
        if rec.revoked or rec.expire_time is None:
            return False
        return rec.expire_time <= now < rec.expire_time + self.reap_delay

    def _h_lookup_accessor(self, ctx: _Ctx) -> Response:
        accessor = str(ctx.body.get("accessor") or "")
        rec = self._by_accessor.get(accessor)
        if accessor and self._tainted(rec) and rec is not None:
            data = self._lookup_data(rec, show_id=False)
            if rec.expire_time is not None:
                data["ttl"] = int(rec.expire_time - self.now())  # <= 0 once expired
            return self._ok(data)
        return self._ok(self._lookup_data(self._by_live_accessor(ctx), show_id=False))

    def _h_revoke_accessor(self, ctx: _Ctx) -> Response:
        """204 for a live token; 400 "token not found" for an expired one not yet reaped; 200 with a
        warning for an unknown one (current Vault, ``vault/token_store.go`` ``handleUpdateRevokeAccessor``)."""
        accessor = str(ctx.body.get("accessor") or "")
        if not accessor:
            raise _bad_request("missing accessor")
        rec = self._by_accessor.get(accessor)
        if self._valid(rec) and rec is not None:
            self._revoke(rec)
            return Response.empty(204)
        if self._tainted(rec) and rec is not None:
            if rec.used_at is None:
                raise _bad_request("token not found")
            rec.used_at = None  # the pending revocation is done now
            return Response.empty(204)
        return self._ok(None, warnings=["No token found with this accessor"])

    def _h_lookup_self(self, ctx: _Ctx) -> Response:
        assert ctx.caller is not None
        return self._ok(self._lookup_data(ctx.caller, show_id=True))

    def _h_lookup(self, ctx: _Ctx) -> Response:
        value = str(ctx.body.get("token") or "")
        if not value:
            raise _bad_request("missing token ID")
        rec = self._tokens.get(value)
        if not self._valid(rec) or rec is None or rec.wrapping:
            raise VaultHTTPError(403, ["bad token"])
        return self._ok(self._lookup_data(rec, show_id=True))

    def _h_revoke_self(self, ctx: _Ctx) -> Response:
        assert ctx.caller is not None
        self._revoke(ctx.caller)
        return Response.empty(204)

    def _h_revoke(self, ctx: _Ctx) -> Response:
        value = str(ctx.body.get("token") or "")
        if not value:
            raise _bad_request("missing token ID")
        rec = self._tokens.get(value)
        if not self._valid(rec) or rec is None:
            raise _bad_request("token not found")
        if rec.type == "batch":
            raise _bad_request("batch tokens cannot be revoked")
        self._revoke(rec)
        return Response.empty(204)

    def _h_renew_self(self, ctx: _Ctx) -> Response:
        rec = ctx.caller
        assert rec is not None
        if not rec.renewable or rec.expire_time is None:
            raise _bad_request("lease is not renewable")
        now = self.now()
        increment = parse_duration(ctx.body.get("increment"), "increment") or rec.ttl
        new_expiry = now + increment
        limit = rec.creation_time + (rec.explicit_max_ttl or MAX_TTL)
        rec.expire_time = min(new_expiry, limit)
        auth = self._auth_block(rec)
        auth["lease_duration"] = max(0, int(rec.expire_time - now))
        return self._ok(None, auth=auth)

    # ------------------------------------------------------------------ routes
    def _register_routes(self) -> None:
        on = self._on
        on("GET HEAD", r"sys/health", self._h_health)
        on("GET", r"sys/seal-status", self._h_seal_status)
        on("POST", r"sys/wrapping/lookup", self._h_wrapping_lookup)
        on("POST", r"sys/wrapping/unwrap", self._h_wrapping_unwrap)
        # ACL policies (and the legacy sys/policy endpoints hvac also knows)
        on("LIST", r"sys/policies/acl", self._h_policies_list)
        on("GET", r"sys/policies/acl/(?P<name>[^/]+)", self._h_policy_read)
        on("POST", r"sys/policies/acl/(?P<name>[^/]+)", self._h_policy_write)
        on("DELETE", r"sys/policies/acl/(?P<name>[^/]+)", self._h_policy_delete)
        on("GET LIST", r"sys/policy", self._h_policies_list)
        on("GET", r"sys/policy/(?P<name>[^/]+)(?P<legacy>)", self._h_policy_read)
        on("POST", r"sys/policy/(?P<name>[^/]+)", self._h_policy_write)
        on("DELETE", r"sys/policy/(?P<name>[^/]+)", self._h_policy_delete)
        # KV v2 at "kv"
        on("GET", r"kv/config", self._h_kv_config_read)
        on("POST", r"kv/config", self._h_kv_config_write)
        on("GET", r"kv/data/(?P<path>.+)", self._h_kv_read)
        on("POST", r"kv/data/(?P<path>.+)", self._h_kv_write)
        on("DELETE", r"kv/data/(?P<path>.+)", self._h_kv_delete_latest)
        on("POST", r"kv/delete/(?P<path>.+)", self._h_kv_delete_versions)
        on("POST", r"kv/undelete/(?P<path>.+)", self._h_kv_undelete)
        on("POST", r"kv/destroy/(?P<path>.+)", self._h_kv_destroy)
        on("LIST", r"kv/metadata(?:/(?P<path>.*))?", self._h_kv_list)
        on("GET", r"kv/metadata/(?P<path>.+)", self._h_kv_metadata_read)
        on("POST", r"kv/metadata/(?P<path>.+)", self._h_kv_metadata_write)
        on("DELETE", r"kv/metadata/(?P<path>.+)", self._h_kv_metadata_delete)
        # token store
        on("POST", r"auth/token/(?P<kind>create|create-orphan)", self._h_token_create)
        on("POST", r"auth/token/create/(?P<role>[^/]+)", self._h_token_create)
        on("LIST", r"auth/token/roles", self._h_roles_list)
        on("GET", r"auth/token/roles/(?P<role>[^/]+)", self._h_role_read)
        on("POST", r"auth/token/roles/(?P<role>[^/]+)", self._h_role_write)
        on("DELETE", r"auth/token/roles/(?P<role>[^/]+)", self._h_role_delete)
        on("POST", r"auth/token/lookup-accessor", self._h_lookup_accessor)
        on("POST", r"auth/token/revoke-accessor", self._h_revoke_accessor)
        on("GET POST", r"auth/token/lookup-self", self._h_lookup_self)
        on("POST", r"auth/token/lookup", self._h_lookup)
        on("POST", r"auth/token/revoke-self", self._h_revoke_self)
        on("POST", r"auth/token/revoke", self._h_revoke)
        on("POST", r"auth/token/renew-self", self._h_renew_self)


def _q(values: Iterable[str]) -> str:
    """Go's ``%q`` of a string slice: ``["a" "b"]``."""
    return "[" + " ".join(json.dumps(v) for v in values) + "]"


__all__ = [
    "ACL",
    "DEFAULT_POLICY",
    "DEFAULT_TTL",
    "INVALID_WRAPPING_TOKEN",
    "PERMISSION_DENIED",
    "SEALED",
    "PolicyParseError",
    "TokenRecord",
    "VaultDouble",
    "VaultHTTPError",
    "parse_duration",
    "parse_policy",
    "sanitize_policies",
]
