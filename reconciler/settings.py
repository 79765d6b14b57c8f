"""Settings, loaded once (by the CLI) and passed down as one frozen object.

Sources, weakest first: built-in defaults, an optional TOML file (``--config``
or ``RECONCILER_CONFIG``; the same keys in lower case), the environment. The
variable names are the ones the factory's shell dispatcher used, so the
reconciler is a drop-in replacement (see ``shared/docs/INTERFACE.md``).

No other module reads ``os.environ``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from reconciler.tls import TLSConfig, TLSConfigError

DEFAULT_SECRETS = ("CLAWHUB_TOKEN", "GITHUB_TOKEN", "CODEBERG_TOKEN", "DEPLOY_KEY", "NPM_TOKEN", "DOCKER_HUB_TOKEN")
DEFAULT_MOUNTS = ("ssh", "gpg", "sops")


class SettingsUsageError(ValueError):
    """A setting outside what the servers accept: a usage error (exit 2)."""


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it and the fix."""


@dataclass(frozen=True)
class NomadSettings:
    addr: str = "http://127.0.0.1:4646"
    token: str | None = None
    namespace: str = "default"
    region: str | None = None
    token_file: Path | None = None
    """A file holding the token, re-read when it changes (workload identity renews it)."""
    runner_job: str = "vault-runner"
    sidecar_job: str = "sidecar"
    timeout: float = 10.0
    """Seconds a single (non-blocking) HTTP call may take."""
    tls: TLSConfig = field(default_factory=TLSConfig)
    """``NOMAD_CACERT``, ``NOMAD_CAPATH``, ``NOMAD_CLIENT_CERT``/``_KEY``, ``NOMAD_TLS_SERVER_NAME``, ``NOMAD_SKIP_VERIFY``."""


@dataclass(frozen=True)
class VaultSettings:
    addr: str = "http://127.0.0.1:8200"
    token: str | None = None
    namespace: str | None = None
    token_file: Path | None = None
    token_role: str = "vault-runner"
    kv_mount: str = "kv"
    secret_prefix: str = "disinto/runner"
    timeout: float = 10.0
    tls: TLSConfig = field(default_factory=TLSConfig)
    """``VAULT_CACERT``, ``VAULT_CAPATH``, ``VAULT_CLIENT_CERT``/``_KEY``, ``VAULT_TLS_SERVER_NAME``, ``VAULT_SKIP_VERIFY``."""


@dataclass(frozen=True)
class ForgeSettings:
    url: str | None = None
    token: str | None = None
    admin_token: str | None = None
    token_file: Path | None = None
    ops_repo: str | None = None
    repo: str | None = None
    admin_users: tuple[str, ...] = ("vault-bot", "admin")
    """Names expected to be admins. They grant nothing: an approval counts only from a user the
    forge confirms is a site admin or an admin of the ops repo; ``doctor`` lists names that are not."""
    merger_approves: bool = False
    """Whether an admin who merged a pull request with a true merge commit may stand in for a review.

    Off by default: Forgejo also records as "merged by" an admin whose e-mail a pushed merge
    commit merely names (auto-detected manual merges), which the API cannot tell apart from a
    merge the admin performed. Safe to turn on only where nobody can push to the primary branch."""
    pr_comments: bool = False
    """Comment on an action's pull request when its result is reported (audit on the forge)."""
    timeout: float = 10.0


@dataclass(frozen=True)
class OpsRepoSettings:
    root: Path = Path("./ops")
    remote: str | None = None
    primary_branch: str = "main"
    author_name: str = "reconciler"
    author_email: str = "reconciler@localhost"


@dataclass(frozen=True)
class StoreSettings:
    db: Path = Path("./state/reconciler.db")


@dataclass(frozen=True)
class ActionSettings:
    factory_root: Path | None = None
    allowed_secrets: tuple[str, ...] = DEFAULT_SECRETS
    allowed_mounts: tuple[str, ...] = DEFAULT_MOUNTS
    max_timeout_minutes: int = 24 * 60
    max_file_bytes: int = 64 * 1024


@dataclass(frozen=True)
class LoopSettings:
    interval: float = 10.0
    placement_deadline: int = 600
    """Seconds a dispatched attempt may wait to start; also the wrap TTL."""
    max_in_flight: int = 50
    max_attempts: int = 3
    """Attempts per run before a placement failure becomes final."""
    token_grace: int = 300
    """Seconds added to placement deadline + timeout for the claim token's max TTL."""
    retry_unknown: bool = False
    """Whether a vault action whose outcome is unknown (lost node) is retried automatically."""
    max_sidecars: int = 5
    """Sidecar runs (reproduce, triage, verify) active at once."""
    kind_limits: tuple[tuple[str, int], ...] = ()
    """Per-kind caps on runs in flight, e.g. ``vault-action=40,reproduce=5``."""
    exclusive: tuple[str, ...] = ()
    """Mutual exclusion: ``formula:<name>`` or ``secret:<NAME>`` entries that run one at a time."""
    metrics_addr: str | None = None
    """``host:port`` for ``/metrics`` and ``/healthz`` (off when unset)."""
    leader_lock: bool = True
    """Take the cluster-wide leadership lock (Nomad variable ``reconciler/leader``) before acting."""
    lock_ttl: float = 15.0
    """Seconds; Nomad takes 10 s to 24 h. Another instance takes over ~2 x TTL + LockDelay after the leader died."""
    lock_delay: float = 15.0
    resync: float = 90.0
    """Seconds after which a run in flight is looked at although no watch reported a change for it (a guard
    against a change nobody reported; its own deadlines - placement, timeout, a retry - come sooner)."""
    watch_fallback: float = 5.0
    """Seconds between two listings of the namespace's allocations while the Nomad watch is failing."""
    store_poll: float = 1.0
    """Seconds between two checks for what other processes (``cancel``, ``retry``, ``pause``) wrote to the store."""
    report_every: float = 0.5
    """Seconds between the starts of two result pushes at least: results finishing together share one push."""
    workers: int = 32
    """Runs stepped at once; new dispatches (pending runs) take at most half of them."""


@dataclass(frozen=True)
class Settings:
    nomad: NomadSettings = field(default_factory=NomadSettings)
    vault: VaultSettings = field(default_factory=VaultSettings)
    forge: ForgeSettings = field(default_factory=ForgeSettings)
    ops: OpsRepoSettings = field(default_factory=OpsRepoSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    actions: ActionSettings = field(default_factory=ActionSettings)
    loop: LoopSettings = field(default_factory=LoopSettings)
    projects_dir: Path | None = None

    @property
    def ops_remote(self) -> str | None:
        """The ops repo's git remote: explicit, or derived from the forge."""
        if self.ops.remote:
            return self.ops.remote
        if self.forge.url and self.forge.ops_repo:
            return f"{self.forge.url.rstrip('/')}/{self.forge.ops_repo}.git"
        return None


# name -> (group, field, converter)
def _csv(v: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in str(v).split(",") if p.strip())


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {v!r}")


def _kind_limits(v: Any) -> tuple[tuple[str, int], ...]:
    if isinstance(v, dict):
        pairs = list(v.items())
    else:
        pairs = []
        for part in _csv(v):
            kind, sep, n = part.partition("=")
            if not sep:
                raise ValueError(f"expected kind=N, got {part!r}")
            pairs.append((kind.strip(), n.strip()))
    out = []
    for kind, n in pairs:
        if kind not in ("vault-action", "reproduce", "triage", "verify"):
            raise ValueError(f"unknown run kind {kind!r} (vault-action, reproduce, triage, verify)")
        out.append((kind, _positive_int(n)))
    return tuple(out)


def _exclusive(v: Any) -> tuple[str, ...]:
    items = _list_or_csv(v)
    for item in items:
        if not (item.startswith("formula:") or item.startswith("secret:")) or item.endswith(":"):
            raise ValueError(f"expected formula:<name> or secret:<NAME>, got {item!r}")
    return items


def _positive_int(v: Any) -> int:
    n = int(v)
    if n <= 0:
        raise ValueError(f"must be a positive integer, got {v!r}")
    return n


def _positive_float(v: Any) -> float:
    n = float(v)
    if n <= 0:
        raise ValueError(f"must be a positive number, got {v!r}")
    return n


def _check_lock(loop: Mapping[str, Any], raw: Mapping[str, Any]) -> None:
    """Nomad refuses a lock TTL outside 10 s - 24 h (``nomad/structs/variables.go``) with 400 on every acquire."""
    ttl = loop.get("lock_ttl")
    if ttl is not None and not (10 <= ttl <= 86400):
        raise SettingsUsageError(
            f"RECONCILER_LOCK_TTL={raw.get('RECONCILER_LOCK_TTL')!r} is out of bounds: Nomad takes a lock TTL "
            "between 10 seconds and 24 hours (10 to 86400); the default is 15"
        )


def _list_or_csv(v: Any) -> tuple[str, ...]:
    if isinstance(v, (list, tuple)):
        return tuple(str(x) for x in v)
    return _csv(v)


_KEYS: dict[str, tuple[str | None, str, Any]] = {
    "NOMAD_ADDR": ("nomad", "addr", str),
    "NOMAD_TOKEN": ("nomad", "token", str),
    "NOMAD_NAMESPACE": ("nomad", "namespace", str),
    "NOMAD_REGION": ("nomad", "region", str),
    "NOMAD_TOKEN_FILE": ("nomad", "token_file", Path),
    "RECONCILER_RUNNER_JOB": ("nomad", "runner_job", str),
    "RECONCILER_SIDECAR_JOB": ("nomad", "sidecar_job", str),
    "VAULT_ADDR": ("vault", "addr", str),
    "VAULT_TOKEN": ("vault", "token", str),
    "VAULT_NAMESPACE": ("vault", "namespace", str),
    "VAULT_TOKEN_FILE": ("vault", "token_file", Path),
    "RECONCILER_TOKEN_ROLE": ("vault", "token_role", str),
    "FORGE_URL": ("forge", "url", str),
    "FORGE_TOKEN": ("forge", "token", str),
    "FORGE_ADMIN_TOKEN": ("forge", "admin_token", str),
    "FORGE_TOKEN_FILE": ("forge", "token_file", Path),
    "FORGE_OPS_REPO": ("forge", "ops_repo", str),
    "FORGE_REPO": ("forge", "repo", str),
    "FORGE_ADMIN_USERS": ("forge", "admin_users", _list_or_csv),
    "RECONCILER_PR_COMMENTS": ("forge", "pr_comments", _bool),
    "RECONCILER_MERGER_APPROVES": ("forge", "merger_approves", _bool),
    "OPS_REPO_ROOT": ("ops", "root", Path),
    "OPS_REPO_REMOTE": ("ops", "remote", str),
    "PRIMARY_BRANCH": ("ops", "primary_branch", str),
    "FACTORY_ROOT": ("actions", "factory_root", Path),
    "RECONCILER_ALLOWED_SECRETS": ("actions", "allowed_secrets", _list_or_csv),
    "RECONCILER_ALLOWED_MOUNTS": ("actions", "allowed_mounts", _list_or_csv),
    "RECONCILER_MAX_TIMEOUT_MINUTES": ("actions", "max_timeout_minutes", _positive_int),
    "PROJECTS_DIR": (None, "projects_dir", Path),
    "RECONCILER_DB": ("store", "db", Path),
    "RECONCILER_INTERVAL": ("loop", "interval", _positive_float),
    "RECONCILER_PLACEMENT_DEADLINE": ("loop", "placement_deadline", _positive_int),
    "RECONCILER_MAX_IN_FLIGHT": ("loop", "max_in_flight", _positive_int),
    "RECONCILER_MAX_ATTEMPTS": ("loop", "max_attempts", _positive_int),
    "RECONCILER_TOKEN_GRACE": ("loop", "token_grace", _positive_int),
    "RECONCILER_RETRY_UNKNOWN": ("loop", "retry_unknown", _bool),
    "RECONCILER_MAX_SIDECARS": ("loop", "max_sidecars", _positive_int),
    "RECONCILER_KIND_LIMITS": ("loop", "kind_limits", _kind_limits),
    "RECONCILER_EXCLUSIVE": ("loop", "exclusive", _exclusive),
    "RECONCILER_METRICS_ADDR": ("loop", "metrics_addr", str),
    "RECONCILER_LEADER_LOCK": ("loop", "leader_lock", _bool),
    "RECONCILER_LOCK_TTL": ("loop", "lock_ttl", _positive_float),
    "RECONCILER_LOCK_DELAY": ("loop", "lock_delay", _positive_float),
    "RECONCILER_RESYNC": ("loop", "resync", _positive_float),
    "RECONCILER_WATCH_FALLBACK": ("loop", "watch_fallback", _positive_float),
    "RECONCILER_STORE_POLL": ("loop", "store_poll", _positive_float),
    "RECONCILER_WORKERS": ("loop", "workers", _positive_int),
    "RECONCILER_REPORT_EVERY": ("loop", "report_every", _positive_float),
}

TLS_KEYS = tuple(
    f"{system}_{name}"
    for system in ("NOMAD", "VAULT")
    for name in ("CACERT", "CAPATH", "CLIENT_CERT", "CLIENT_KEY", "TLS_SERVER_NAME", "SKIP_VERIFY")
)
"""Read from the environment only (as the CLIs read them) into ``nomad.tls`` / ``vault.tls``."""

KNOWN_KEYS = tuple(_KEYS) + TLS_KEYS


def load(environ: Mapping[str, str], config_file: Path | None = None) -> Settings:
    """Build settings from a TOML file (optional) and the environment (wins)."""
    values: dict[str, Any] = {}
    path = config_file or (Path(environ["RECONCILER_CONFIG"]) if environ.get("RECONCILER_CONFIG") else None)
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SettingsError(f"config file {path} does not exist; fix --config or RECONCILER_CONFIG") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None
        for key, value in data.items():
            upper = key.upper()
            if upper not in _KEYS:
                raise SettingsError(
                    f"config file {path}: unknown key {key!r}; known keys: {', '.join(k.lower() for k in _KEYS)}"
                )
            values[upper] = value
    for key in _KEYS:
        if key in environ and environ[key] != "":
            values[key] = environ[key]

    groups: dict[str, dict[str, Any]] = {g: {} for g in ("nomad", "vault", "forge", "ops", "store", "actions", "loop")}
    top: dict[str, Any] = {}
    for key, raw in values.items():
        group, name, conv = _KEYS[key]
        try:
            value = conv(raw)
        except (TypeError, ValueError) as exc:
            raise SettingsError(f"{key}={raw!r} is not valid: {exc}") from None
        (groups[group] if group else top)[name] = value

    for group, prefix in (("nomad", "NOMAD"), ("vault", "VAULT")):
        try:
            tls = TLSConfig.from_env(environ, prefix)
        except TLSConfigError as exc:
            raise SettingsError(str(exc)) from None
        problems = tls.problems(prefix)
        if problems:
            raise SettingsError("; ".join(problems))
        groups[group]["tls"] = tls
    _check_lock(groups["loop"], values)
    forge = groups["forge"]
    if "admin_token" not in forge and "token" in forge:
        forge["admin_token"] = forge["token"]
    return Settings(
        nomad=NomadSettings(**groups["nomad"]),
        vault=VaultSettings(**groups["vault"]),
        forge=ForgeSettings(**forge),
        ops=OpsRepoSettings(**groups["ops"]),
        store=StoreSettings(**groups["store"]),
        actions=ActionSettings(**groups["actions"]),
        loop=LoopSettings(**groups["loop"]),
        **top,
    )


__all__ = [
    "Settings",
    "NomadSettings",
    "VaultSettings",
    "ForgeSettings",
    "OpsRepoSettings",
    "StoreSettings",
    "ActionSettings",
    "LoopSettings",
    "SettingsError",
    "SettingsUsageError",
    "load",
    "replace",
]
