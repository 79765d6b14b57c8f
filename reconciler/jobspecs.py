"""The project's Nomad jobspecs, Vault policies, token role and Nomad ACL policies: render, apply, guard.

What lives where:

* ``jobspecs/*.hcl`` (beside this package, or the installed ``jobspecs`` package) are the
  jobs: ``vault-runner`` and ``sidecar`` (parameterized, dispatched by the reconciler) and
  ``reconciler`` (the service itself). Their HCL2 ``variable`` blocks are filled from the
  settings (:func:`job_variables`); Nomad itself parses them (``/v1/jobs/parse``).
* The Vault policies, the ``vault-runner`` token role and the Nomad ACL policies are
  **generated here** - this module is their single source. ``jobspecs/vault/`` and
  ``jobspecs/nomad-acl/`` hold the same texts rendered with default settings and namespace
  ``runners`` (plus templates of ``runner-<NAME>`` and ``runner-mount-<alias>``), for operators
  to read; a test keeps them equal to :func:`render`.

Three entry points:

* :func:`render` - every file by name, as the CLI prints them (``reconciler jobspecs render``).
* :func:`apply` - registers the jobs and writes policies and the role, idempotently, saying
  ``created``, ``updated``, ``unchanged`` or ``skipped`` per item; records what it registered
  in the Nomad Variable ``reconciler/jobspecs/<job>`` (``JobModifyIndex`` and a hash of the
  canonical job).
* :func:`check_parent` - the drift guard called before each dispatch: a parent job whose
  live ``JobModifyIndex`` differs from the recorded one (and whose content differs) was
  changed behind the reconciler's back, and dispatching it is refused.

Vault and the Nomad ACL endpoints are reached with a tiny HTTP helper (:class:`VaultHTTP`,
:class:`NomadACLHTTP`) because the reconciler's own clients deliberately have no verbs to
write policies: the reconciler's tokens must not be able to, only the operator's.
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, TextIO

from reconciler.clients.errors import NotFoundError, PermanentError, TransientError
from reconciler.settings import Settings
from reconciler.tls import TLSConfig

__all__ = [
    "RUNNER_META_REQUIRED",
    "RUNNER_META_OPTIONAL",
    "SIDECAR_META_REQUIRED",
    "SIDECAR_META_OPTIONAL",
    "DISPATCHER_POLICY",
    "RUNNER_CLAIM_POLICY",
    "SIDECAR_POLICY",
    "RECONCILER_FORGE_POLICY",
    "NOMAD_RECONCILER_POLICY",
    "NOMAD_OPERATOR_POLICY",
    "RECORD_PREFIX",
    "jobspec_dir",
    "jobspec_text",
    "job_variables",
    "runner_policy_name",
    "runner_policy_text",
    "mount_policy_name",
    "mount_policy_text",
    "runner_claim_policy_text",
    "dispatcher_policy_text",
    "sidecar_policy_text",
    "reconciler_forge_policy_text",
    "runner_role_fields",
    "nomad_reconciler_policy_text",
    "nomad_operator_policy_text",
    "vault_policies",
    "vault_policy_file",
    "nomad_acl_policies",
    "render",
    "canonical_hash",
    "ApplyItem",
    "ApplyReport",
    "ParentCheck",
    "VaultAdmin",
    "VaultHTTP",
    "NomadACLHTTP",
    "apply",
    "check_parent",
]

# -- names and contracts --------------------------------------------------------------------

RUNNER_META_REQUIRED: tuple[str, ...] = ("run_id", "attempt", "action_id", "formula", "timeout_seconds", "wrapped_accessor")
"""Meta keys every ``vault-runner`` dispatch carries (``reconciler.steps.step_bound``)."""
RUNNER_META_OPTIONAL: tuple[str, ...] = ("secrets", "mounts")
"""Meta keys a ``vault-runner`` dispatch may carry (comma-separated names; may be empty)."""
SIDECAR_META_REQUIRED: tuple[str, ...] = ("issue_number", "formula", "project", "run_id", "attempt")
"""Meta keys every ``sidecar`` dispatch carries."""
SIDECAR_META_OPTIONAL: tuple[str, ...] = ()

JOB_FILES: dict[str, str] = {"vault-runner": "vault-runner.hcl", "sidecar": "sidecar.hcl", "reconciler": "reconciler.hcl"}
"""Job name -> jobspec file; the names here are the jobspecs' own ``job`` labels."""

KV_MOUNT = "kv"
RUNNER_ROLE = "vault-runner"
RUNNER_PREFIX = "disinto/runner"
DISPATCHER_POLICY = "reconciler-dispatcher"
RUNNER_CLAIM_POLICY = "runner-claim"
SIDECAR_POLICY = "sidecar"
RECONCILER_FORGE_POLICY = "reconciler-forge"
SIDECAR_FORGE_PATH = "disinto/sidecar/forge"
RECONCILER_FORGE_PATH = "disinto/reconciler/forge"
NOMAD_RECONCILER_POLICY = "reconciler"
NOMAD_OPERATOR_POLICY = "operator-register"
RECORD_PREFIX = "reconciler/jobspecs/"
"""Nomad Variable path prefix of the registration records (``reconciler/jobspecs/<job>``)."""

VOLATILE_JOB_FIELDS = frozenset(
    {
        "Status",
        "StatusDescription",
        "CreateIndex",
        "ModifyIndex",
        "JobModifyIndex",
        "SubmitTime",
        "Version",
        "Stable",
    }
)
"""Fields Nomad changes without the job's spec changing; left out of :func:`canonical_hash`."""


# -- jobspec files ----------------------------------------------------------------------------


def jobspec_dir() -> Path:
    """The folder holding the jobspecs: the checkout's ``jobspecs/``, else the installed package."""
    here = Path(__file__).resolve().parent.parent / "jobspecs"
    if (here / JOB_FILES["vault-runner"]).is_file():
        return here
    import jobspecs  # installed as a package (pyproject package-data)

    return Path(jobspecs.__file__).resolve().parent


def jobspec_text(job: str) -> str:
    """The jobspec file of ``job`` (``vault-runner``, ``sidecar``, ``reconciler``), verbatim."""
    if job not in JOB_FILES:
        raise ValueError(f"unknown job {job!r}; known: {', '.join(JOB_FILES)}")
    return (jobspec_dir() / JOB_FILES[job]).read_text(encoding="utf-8")


def _path_text(value: Path | None) -> str:
    return str(value) if value is not None else ""


def job_variables(settings: Settings, job: str) -> dict[str, str]:
    """The HCL2 variable values ``job`` is registered with, from the settings (no secret among them).

    Only variables the jobspec declares are set; the rest keep the jobspec's defaults.
    """
    ns = settings.nomad.namespace
    if job == "vault-runner":
        tls = settings.vault.tls
        return {
            "namespace": ns,
            "vault_addr": settings.vault.addr,
            "vault_cacert": tls.cacert or "",
            "vault_capath": tls.capath or "",
            "vault_client_cert": tls.client_cert or "",
            "vault_client_key": tls.client_key or "",
            "vault_tls_server_name": tls.server_name or "",
            "factory_root": _path_text(settings.actions.factory_root) or "/opt/factory",
        }
    if job == "sidecar":
        return {
            "namespace": ns,
            "forge_url": settings.forge.url or "",
            "forge_repo": settings.forge.repo or "",
        }
    if job == "reconciler":
        return {
            "namespace": ns,
            "nomad_addr": settings.nomad.addr,
            "vault_addr": settings.vault.addr,
            "forge_url": settings.forge.url or "",
            "forge_ops_repo": settings.forge.ops_repo or "",
            "forge_repo": settings.forge.repo or "",
            "primary_branch": settings.ops.primary_branch,
            "factory_root": _path_text(settings.actions.factory_root) or "/factory",
            "runner_job": settings.nomad.runner_job,
            "sidecar_job": settings.nomad.sidecar_job,
        }
    raise ValueError(f"unknown job {job!r}; known: {', '.join(JOB_FILES)}")


def _variables_header(variables: Mapping[str, str]) -> str:
    lines = ["# Rendered by `reconciler jobspecs render`: HCL2 variable values this job is registered with", "#"]
    width = max((len(k) for k in variables), default=0)
    lines += [f"#   {k.ljust(width)} = {json.dumps(v)}" for k, v in variables.items()]
    return "\n".join(lines) + "\n\n"


# -- Vault policies and role --------------------------------------------------------------------


def runner_policy_name(secret: str) -> str:
    """Policy name of one runner secret, as written (Vault stores it lower-cased)."""
    return f"runner-{secret}"


def runner_policy_text(secret: str, *, mount: str = KV_MOUNT, prefix: str = RUNNER_PREFIX) -> str:
    """``runner-<NAME>``: read exactly ``<mount>/data/<prefix>/<NAME>``, nothing else."""
    return f'path "{mount}/data/{prefix}/{secret}" {{\n  capabilities = ["read"]\n}}\n'


def mount_policy_name(alias: str) -> str:
    """Policy name of one credential mount (``ssh``, ``gpg``, ``sops``)."""
    return f"runner-mount-{alias}"


def mount_policy_text(alias: str, *, mount: str = KV_MOUNT, prefix: str = RUNNER_PREFIX) -> str:
    """``runner-mount-<alias>``: read exactly ``<mount>/data/<prefix>/mounts/<alias>``, nothing else."""
    return f'path "{mount}/data/{prefix}/mounts/{alias}" {{\n  capabilities = ["read"]\n}}\n'


def runner_claim_policy_text(*, mount: str = KV_MOUNT, prefix: str = RUNNER_PREFIX) -> str:
    """``runner-claim``: carried by every claim token; it grants ``auth/token/revoke-self`` and nothing else.

    Claim tokens have no ``default`` policy, and only ``default`` grants revoke-self: without
    this the runner could not end its own token right after reading its secrets.
    """
    return (
        "# Carried by every claim token: the runner revokes its own token before the formula starts.\n"
        'path "auth/token/revoke-self" {\n  capabilities = ["update"]\n}\n'
    )


def dispatcher_policy_text(*, role: str = RUNNER_ROLE, mount: str = KV_MOUNT, prefix: str = RUNNER_PREFIX) -> str:
    """``reconciler-dispatcher``: check secrets and policies, mint claims through the role, follow and revoke them."""
    return f"""\
# See which runner secrets and mounts exist (metadata) and read their values for redaction.
path "{mount}/metadata/{prefix}/*" {{
  capabilities = ["read"]
}}
path "{mount}/data/{prefix}/*" {{
  capabilities = ["read"]
}}

# Check that the runner policies exist.
path "sys/policies/acl/runner-*" {{
  capabilities = ["read"]
}}

# Mint single-use claims through the role, and nothing else.
path "auth/token/create/{role}" {{
  capabilities = ["update"]
}}

# Follow and revoke claims by accessor.
path "auth/token/lookup-accessor" {{
  capabilities = ["update"]
}}
path "auth/token/revoke-accessor" {{
  capabilities = ["update"]
}}

# Let `reconciler doctor` check the token role (read only).
path "auth/token/roles/{role}" {{
  capabilities = ["read"]
}}
"""


def sidecar_policy_text(*, mount: str = KV_MOUNT) -> str:
    """``sidecar``: the sidecar task's forge bot token, nothing else."""
    return f'path "{mount}/data/{SIDECAR_FORGE_PATH}" {{\n  capabilities = ["read"]\n}}\n'


def reconciler_forge_policy_text(*, mount: str = KV_MOUNT) -> str:
    """``reconciler-forge``: the reconciler task's own forge token (its template), nothing else."""
    return f'path "{mount}/data/{RECONCILER_FORGE_PATH}" {{\n  capabilities = ["read"]\n}}\n'


def runner_role_fields(settings: Settings | None = None) -> dict[str, Any]:
    """The ``vault-runner`` token role: ``runner-*`` policies only, orphan, service, not renewable, no default policy.

    ``token_explicit_max_ttl`` caps every claim: the longest a run may legitimately need
    (placement deadline + the largest allowed action timeout + grace), in seconds.

    ``root`` is the only literal in ``disallowed_policies``; the reconciler's and the
    sidecar's own policies are refused by ``disallowed_policies_glob`` (belt and braces:
    ``allowed_policies_glob`` already admits only ``runner-*``). Some Vault versions
    collapse a ``disallowed_policies`` list holding ``root`` to ``["root"]``, so more
    literals there would not survive a read-back.
    """
    s = settings or Settings()
    max_ttl = s.loop.placement_deadline + s.actions.max_timeout_minutes * 60 + s.loop.token_grace
    return {
        "allowed_policies": [],
        "allowed_policies_glob": ["runner-*"],
        "disallowed_policies": ["root"],
        "disallowed_policies_glob": ["default", "reconciler-*", f"{SIDECAR_POLICY}*"],
        "orphan": True,
        "renewable": False,
        "token_type": "service",
        "token_no_default_policy": True,
        "token_explicit_max_ttl": max_ttl,
    }


def vault_policies(settings: Settings) -> dict[str, str]:
    """Every Vault policy the factory needs, name -> text, for the allowed secrets and mounts."""
    mount, prefix = settings.vault.kv_mount, settings.vault.secret_prefix
    policies = {
        DISPATCHER_POLICY: dispatcher_policy_text(role=settings.vault.token_role, mount=mount, prefix=prefix),
        RUNNER_CLAIM_POLICY: runner_claim_policy_text(mount=mount, prefix=prefix),
    }
    for secret in settings.actions.allowed_secrets:
        policies[runner_policy_name(secret)] = runner_policy_text(secret, mount=mount, prefix=prefix)
    for alias in settings.actions.allowed_mounts:
        policies[mount_policy_name(alias)] = mount_policy_text(alias, mount=mount, prefix=prefix)
    policies[SIDECAR_POLICY] = sidecar_policy_text(mount=mount)
    policies[RECONCILER_FORGE_POLICY] = reconciler_forge_policy_text(mount=mount)
    return policies


def vault_policy_file(name: str) -> str:
    """The file (relative to ``jobspecs/``) holding Vault policy ``name``."""
    return "vault/dispatcher.hcl" if name == DISPATCHER_POLICY else f"vault/{name}.hcl"


# -- Nomad ACL policies ----------------------------------------------------------------------------


def nomad_reconciler_policy_text(namespace: str = "runners", *, nomad1: bool = False) -> str:
    """The reconciler's Nomad ACL policy: exactly the calls of :data:`reconciler.nomad_acl.CALLS`.

    ``nomad1``: the variant for Nomad 1.x, which knows no ``deregister-job`` and stops a job only
    for ``submit-job`` (``nomad/job_endpoint.go`` ``Deregister``).
    """
    stop = "submit-job" if nomad1 else "deregister-job"
    why = (
        "Nomad 1.x variant: stopping a job takes submit-job there (which also lets this token\n"
        "# register jobs); on Nomad >= 2.0 use reconciler.hcl (deregister-job) instead."
        if nomad1
        else "Stopping children (timeouts, lost copies, cancels) takes deregister-job (Nomad >= 2.0;\n"
        "# for 1.x see reconciler-nomad1.hcl). dispatch-job implies no stop."
    )
    return f"""\
# The reconciler's Nomad token (or its job's workload identity): nothing outside namespace
# "{namespace}", and there only what dispatching, watching and stopping runs takes.
# {why}
namespace "{namespace}" {{
  capabilities = ["dispatch-job", "read-job", "list-jobs", "read-logs", "{stop}"]

  variables {{
    path "reconciler/*" {{
      capabilities = ["read", "write", "list", "destroy"]
    }}
  }}
}}
"""


HOST_VOLUMES: dict[str, str] = {"reconciler-state": "mount-readwrite", "factory": "mount-readonly", "projects": "mount-readonly"}
"""Host volume sources the jobspecs mount (their defaults) and what registering them needs."""


def nomad_operator_policy_text(namespace: str = "runners") -> str:
    """The operator's separate token for ``reconciler jobspecs apply``: register jobs (with their host
    volumes, ``nomad/job_endpoint.go`` ``doRegister``), record them."""
    volumes = "".join(
        f'\nhost_volume "{name}" {{\n  capabilities = ["{cap}"]\n}}\n' for name, cap in HOST_VOLUMES.items()
    )
    return f"""\
# The separate token that registers the project's jobspecs (`reconciler jobspecs apply`).
# The reconciler's own token cannot submit jobs; this one cannot dispatch them.
# Writing ACL policies themselves takes a management token (Nomad allows nothing less).
namespace "{namespace}" {{
  capabilities = ["submit-job", "parse-job", "read-job", "list-jobs"]

  variables {{
    path "reconciler/jobspecs/*" {{
      capabilities = ["read", "write", "list"]
    }}
  }}
}}

# Registering a job that mounts a host volume needs a rule for its source: the reconciler
# writes its store on reconciler-state; factory and projects are mounted read-only.
{volumes.lstrip()}"""


def nomad_acl_policies(settings: Settings) -> dict[str, str]:
    """Nomad ACL policies, name -> rules."""
    ns = settings.nomad.namespace
    return {
        NOMAD_RECONCILER_POLICY: nomad_reconciler_policy_text(ns),
        NOMAD_OPERATOR_POLICY: nomad_operator_policy_text(ns),
    }


# -- render ------------------------------------------------------------------------------------


def render(settings: Settings) -> dict[str, str]:
    """Every file by name (relative to ``jobspecs/``): jobspecs with their variable values, policies, role.

    Jobspecs get a header comment listing the HCL2 variable values they are registered
    with; Vault policies are ``vault/<name>.hcl``, the role ``vault/<role>-role.json``,
    Nomad ACL policies ``nomad-acl/<name>.hcl``.
    """
    files: dict[str, str] = {}
    for job, name in JOB_FILES.items():
        files[name] = _variables_header(job_variables(settings, job)) + jobspec_text(job)
    for name, text in vault_policies(settings).items():
        files[vault_policy_file(name)] = text
    role = settings.vault.token_role
    files[f"vault/{role}-role.json"] = json.dumps(runner_role_fields(settings), indent=2) + "\n"
    for name, text in nomad_acl_policies(settings).items():
        files[f"nomad-acl/{name}.hcl"] = text
    files[f"nomad-acl/{NOMAD_RECONCILER_POLICY}-nomad1.hcl"] = nomad_reconciler_policy_text(settings.nomad.namespace, nomad1=True)
    return files


# -- hashing ------------------------------------------------------------------------------------


def canonical_hash(job: Mapping[str, Any]) -> str:
    """SHA-256 of the job's JSON without the fields Nomad changes on its own (status, indexes, version)."""
    stripped = {k: v for k, v in job.items() if k not in VOLATILE_JOB_FIELDS}
    text = json.dumps(stripped, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- report -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApplyItem:
    """What apply did to one object."""

    kind: str
    """``job``, ``vault-policy``, ``vault-role``, ``nomad-acl-policy``, ``record``."""
    name: str
    status: str
    """``created``, ``updated``, ``unchanged`` or ``skipped``."""
    detail: str = ""

    def line(self) -> str:
        """One line for the operator: ``<status> <kind> <name>[: detail]``."""
        return f"{self.status:<9} {self.kind} {self.name}" + (f": {self.detail}" if self.detail else "")


@dataclass
class ApplyReport:
    """Everything one :func:`apply` did, in order."""

    items: list[ApplyItem] = field(default_factory=list)

    def status_of(self, kind: str, name: str) -> str | None:
        """The status of one item, or None when apply did not touch it."""
        for item in self.items:
            if item.kind == kind and item.name == name:
                return item.status
        return None

    @property
    def changed(self) -> bool:
        """Whether anything was created or updated."""
        return any(i.status in ("created", "updated") for i in self.items)

    def lines(self) -> list[str]:
        return [i.line() for i in self.items]


# -- HTTP helpers for the admin endpoints -----------------------------------------------------------


class VaultAdmin(Protocol):
    """What :func:`apply` needs from Vault: read and write ACL policies and token roles."""

    def read_policy(self, name: str) -> str | None: ...

    def write_policy(self, name: str, text: str) -> None: ...

    def read_role(self, name: str) -> dict[str, Any] | None: ...

    def write_role(self, name: str, fields: Mapping[str, Any]) -> None: ...


@dataclass(frozen=True)
class _Reply:
    status: int
    text: str

    def json(self) -> Any:
        return json.loads(self.text) if self.text.strip() else {}


def _reply_text(reply: _Reply) -> str:
    """The server's message on one line: Vault's ``{"errors": [...]}`` joined, Nomad's plain text as is."""
    text = reply.text.strip()
    try:
        errors = json.loads(text).get("errors") if text.startswith("{") else None
    except ValueError:
        errors = None
    if isinstance(errors, list):
        text = "; ".join(" ".join(str(e).replace("*", " ").split()) for e in errors)
    return " ".join(text.split())[:300]


def _http_error(system: str, what: str, reply: _Reply) -> Exception:
    text = _reply_text(reply)
    status = reply.status
    if status in (401, 403):
        return PermanentError(f"{system} refused {what}: HTTP {status}: {text}; check the operator token", system=system)
    if status == 404:
        return NotFoundError(f"{system} has no {what}: {text or 'not found'}", system=system)
    if status >= 500 or status == 429:
        return TransientError(f"{system} could not {what} right now: HTTP {status}: {text}", system=system)
    return PermanentError(f"{system} refused {what}: HTTP {status}: {text}", system=system)


class _HTTP:
    """A few JSON requests with a token header; errors become the project's errors.

    Standard library only (``urllib``): the reconciler's steps import this module for
    :func:`check_parent`, and only ``reconciler.clients`` may import the HTTP libraries.
    """

    system = "http"

    def __init__(self, addr: str, headers: Mapping[str, str], timeout: float, context: Any = None) -> None:
        self.addr = addr.rstrip("/")
        self._headers = {"Accept": "application/json", **headers}
        self._timeout = timeout
        self._context = context
        """An ``ssl.SSLContext`` for HTTPS (``TLSConfig.ssl_context``), else the system defaults."""

    def request(self, method: str, path: str, what: str, *, body: Any = None) -> _Reply:
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = dict(self._headers)
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(f"{self.addr}{path}", data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self._timeout, context=self._context) as resp:  # noqa: S310 - operator-given URL
                reply = _Reply(resp.status, resp.read().decode("utf-8", errors="replace"))
        except urllib.error.HTTPError as exc:
            reply = _Reply(exc.code, exc.read().decode("utf-8", errors="replace"))
        except (urllib.error.URLError, OSError) as exc:
            raise TransientError(
                f"{self.system} at {self.addr} did not answer ({what}): {type(exc).__name__}", system=self.system
            ) from exc
        if reply.status >= 400:
            raise _http_error(self.system, what, reply)
        return reply


class VaultHTTP(_HTTP):
    """:class:`VaultAdmin` over Vault's HTTP API (the operator's token, not the reconciler's)."""

    system = "vault"

    def __init__(
        self,
        addr: str,
        token: str | None,
        *,
        namespace: str | None = None,
        timeout: float = 10.0,
        tls: TLSConfig | None = None,
    ) -> None:
        """``tls``: ``VAULT_CACERT`` & co. (``VAULT_TLS_SERVER_NAME`` is not supported here: urllib dials the address's host)."""
        headers = {"X-Vault-Token": token or ""}
        if namespace:
            headers["X-Vault-Namespace"] = namespace
        context = tls.ssl_context() if tls is not None and tls.configured else None
        super().__init__(addr, headers, timeout, context)

    def read_policy(self, name: str) -> str | None:
        try:
            data = self.request("GET", f"/v1/sys/policies/acl/{name}", f"read policy {name}").json()
        except NotFoundError:
            return None
        inner = data.get("data") or data
        return str(inner.get("policy") or inner.get("rules") or "")

    def write_policy(self, name: str, text: str) -> None:
        self.request("POST", f"/v1/sys/policies/acl/{name}", f"write policy {name}", body={"policy": text})

    def read_role(self, name: str) -> dict[str, Any] | None:
        try:
            data = self.request("GET", f"/v1/auth/token/roles/{name}", f"read token role {name}").json()
        except NotFoundError:
            return None
        return dict(data.get("data") or {})

    def write_role(self, name: str, fields: Mapping[str, Any]) -> None:
        self.request("POST", f"/v1/auth/token/roles/{name}", f"write token role {name}", body=dict(fields))


class NomadACLHTTP(_HTTP):
    """Nomad's ACL policy endpoints (``/v1/acl/policy/<name>``), which the reconciler's client lacks on purpose."""

    system = "nomad"

    def __init__(self, addr: str, token: str | None, *, timeout: float = 10.0) -> None:
        super().__init__(addr, {"X-Nomad-Token": token or ""}, timeout)

    def read_policy(self, name: str) -> str | None:
        policy = self.read_policy_full(name)
        return None if policy is None else str(policy.get("Rules") or "")

    def read_policy_full(self, name: str) -> dict[str, Any] | None:
        """The whole policy (``Rules``, ``Description``, ``JobACL``), or None."""
        try:
            return dict(self.request("GET", f"/v1/acl/policy/{name}", f"read ACL policy {name}").json() or {})
        except NotFoundError:
            return None

    def token_self(self) -> dict[str, Any] | None:
        """The caller's token (``Type``, ``Policies``); None when ACLs are off or the endpoint is missing."""
        try:
            return dict(self.request("GET", "/v1/acl/token/self", "read its own ACL token").json() or {})
        except NotFoundError:
            return None
        except PermanentError as exc:
            if "ACL support disabled" in str(exc):
                return None
            raise

    def write_policy(self, name: str, rules: str, description: str, job_acl: Mapping[str, Any] | None = None) -> None:
        """Write the policy. Nomad replaces the whole policy: ``job_acl`` (the binding to a job's
        workload identity, ``nomad acl policy apply -job``) must be sent back or it is dropped."""
        body: dict[str, Any] = {"Name": name, "Description": description, "Rules": rules}
        if job_acl:
            body["JobACL"] = dict(job_acl)
        self.request("POST", f"/v1/acl/policy/{name}", f"write ACL policy {name}", body=body)


# -- apply -----------------------------------------------------------------------------------------


class NomadJobs(Protocol):
    """The :class:`reconciler.clients.nomad.NomadClient` verbs apply and the drift guard use."""

    def parse_hcl(self, hcl: str, variables: Mapping[str, str] | None = None) -> dict[str, Any]: ...

    def register(self, job: Mapping[str, Any], *, enforce_index: int | None = None) -> dict[str, Any]: ...

    def job(self, job_id: str) -> dict[str, Any] | None: ...

    def variable(self, path: str) -> dict[str, Any] | None: ...

    def put_variable(self, path: str, items: Mapping[str, str], *, cas: int | None) -> dict[str, Any]: ...


Out = Callable[[str], Any] | TextIO | None


def _emitter(out: Out) -> Callable[[str], None]:
    """``out`` as a function of one line: a callable as is, a stream written line by line, None ignored."""

    def write(line: str) -> None:
        if out is None:
            return
        if callable(out):
            out(line)
            return
        out.write(line + "\n")
        out.flush()

    return write


def _same_policy(live: str | None, wanted: str) -> bool:
    return live is not None and live.strip() == wanted.strip()


def _same_role(live: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> bool:
    """Whether the live role already has every wanted field (Vault lower-cases and sorts policy lists)."""
    if live is None:
        return False
    for key, value in wanted.items():
        got = live.get(key)
        if isinstance(value, list):
            if sorted(str(v).lower() for v in value) != sorted(str(v).lower() for v in (got or [])):
                return False
        elif key == "token_type":
            if str(got) not in (value, f"default-{value}"):
                return False
        elif got != value:
            return False
    return True


def _apply_vault(settings: Settings, vault: VaultAdmin, report: ApplyReport, emit: Callable[[str], None]) -> None:
    for name, text in vault_policies(settings).items():
        live = vault.read_policy(name)
        if _same_policy(live, text):
            item = ApplyItem("vault-policy", name, "unchanged")
        else:
            vault.write_policy(name, text)
            item = ApplyItem("vault-policy", name, "created" if live is None else "updated")
        report.items.append(item)
        emit(item.line())
    role = settings.vault.token_role
    fields = runner_role_fields(settings)
    live_role = vault.read_role(role)
    if _same_role(live_role, fields):
        item = ApplyItem("vault-role", role, "unchanged")
    else:
        vault.write_role(role, fields)
        written = vault.read_role(role)
        if not _same_role(written, fields):
            # Vault < 1.9 ignores the *_glob fields: the role would allow any non-root policy.
            raise PermanentError(
                f"Vault token role {role} does not hold what was written (read back: {_role_difference(written, fields)}); "
                "Vault older than 1.9 ignores allowed_policies_glob/disallowed_policies_glob, leaving a role that allows "
                f"any non-root policy: upgrade Vault, or delete the role (vault delete auth/token/roles/{role})",
                system="vault",
            )
        item = ApplyItem("vault-role", role, "created" if live_role is None else "updated")
    report.items.append(item)
    emit(item.line())


def role_problem(live: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> str | None:
    """None when ``live`` holds every ``wanted`` field, else what differs (for ``doctor``)."""
    return None if _same_role(live, wanted) else _role_difference(live, wanted)


def _role_difference(live: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> str:
    """The wanted role fields the live role lacks or holds otherwise, for an error message."""
    if live is None:
        return "no role"
    wrong = [k for k in wanted if not _same_role({k: live.get(k)}, {k: wanted[k]})]
    return ", ".join(f"{k}={live.get(k)!r} (wanted {wanted[k]!r})" for k in wrong) or "differs"


def _apply_acl(settings: Settings, acl: NomadACLHTTP, report: ApplyReport, emit: Callable[[str], None]) -> None:
    for name, rules in nomad_acl_policies(settings).items():
        try:
            item = _apply_acl_policy(settings, acl, name, rules)
        except NotFoundError:
            item = ApplyItem(
                "nomad-acl-policy",
                name,
                "skipped",
                "this Nomad has no ACL policy endpoint (ACLs disabled, or a double); "
                f"apply jobspecs/nomad-acl/{name}.hcl with `nomad acl policy apply` and a management token",
            )
        except PermanentError as exc:
            if "ACL support disabled" in str(exc):
                item = ApplyItem("nomad-acl-policy", name, "skipped", "ACLs are disabled on this Nomad: no policy to write")
                report.items.append(item)
                emit(item.line())
                continue
            item = ApplyItem(
                "nomad-acl-policy",
                name,
                "skipped",
                f"{exc}; writing ACL policies takes a management token: "
                f"`nomad acl policy apply {name} jobspecs/nomad-acl/{name}.hcl`",
            )
        report.items.append(item)
        emit(item.line())


def _apply_acl_policy(settings: Settings, acl: NomadACLHTTP, name: str, rules: str) -> ApplyItem:
    """Write one policy unless it already says ``rules``, keeping its ``JobACL``; on a Nomad 1.x
    server (no ``deregister-job``) the reconciler's policy falls back to its 1.x variant."""
    live = acl.read_policy_full(name)
    live_rules = None if live is None else str(live.get("Rules") or "")
    variants = [rules]
    if name == NOMAD_RECONCILER_POLICY:
        variants.append(nomad_reconciler_policy_text(settings.nomad.namespace, nomad1=True))
    if any(_same_policy(live_rules, v) for v in variants):
        return ApplyItem("nomad-acl-policy", name, "unchanged")
    job_acl = (live or {}).get("JobACL") or None
    description = f"written by `reconciler jobspecs apply` ({name})"
    note = "JobACL kept" if job_acl else ""
    try:
        acl.write_policy(name, rules, description, job_acl)
    except PermanentError as exc:
        if len(variants) < 2 or "deregister-job" not in str(exc):
            raise
        acl.write_policy(name, variants[1], description, job_acl)  # Nomad 1.x: stopping takes submit-job
        note = "; ".join(filter(None, [note, "Nomad 1.x: wrote the submit-job variant (reconciler-nomad1.hcl)"]))
    return ApplyItem("nomad-acl-policy", name, "created" if live is None else "updated", note)


def register_needs(settings: Settings, job: Mapping[str, Any]) -> str:
    """What registering ``job`` takes on Nomad (``nomad/job_endpoint.go`` ``doRegister``), in words."""
    needs = [f'submit-job in namespace "{settings.nomad.namespace}"']
    for tg in job.get("TaskGroups") or []:
        for vol in (tg.get("Volumes") or {}).values():
            if (vol or {}).get("Type") == "host":
                cap = "mount-readonly" if vol.get("ReadOnly") else "mount-readwrite"
                needs.append(f'host_volume "{vol.get("Source")}" {{ capabilities = ["{cap}"] }}')
    return ", ".join(needs) + f" (see jobspecs/nomad-acl/{NOMAD_OPERATOR_POLICY}.hcl)"


def _record_path(job: str) -> str:
    return f"{RECORD_PREFIX}{job}"


def _apply_job(
    settings: Settings, nomad: NomadJobs, job: str, report: ApplyReport, emit: Callable[[str], None],
    parsed: Mapping[str, Any] | None = None,
) -> None:
    parsed = dict(parsed) if parsed is not None else nomad.parse_hcl(jobspec_text(job), job_variables(settings, job))
    job_id = str(parsed.get("ID") or job)
    before = nomad.job(job_id)
    enforce = int(before["JobModifyIndex"]) if before is not None else 0
    try:
        nomad.register(parsed, enforce_index=enforce)
    except PermanentError as exc:
        if "Permission denied" not in str(exc) and "403" not in str(exc):
            raise
        raise PermanentError(f"{exc}; registering {job_id} needs {register_needs(settings, parsed)}", system="nomad") from exc
    live = nomad.job(job_id)
    if live is None:
        raise TransientError(f"Nomad accepted job {job_id} but it cannot be read back; run apply again", system="nomad")
    # The register reply's JobModifyIndex is the job's ModifyIndex, which moves with a service job's
    # status: only the live JobModifyIndex before and after says whether the job changed.
    index = int(live.get("JobModifyIndex") or 0)
    if before is None:
        status = "created"
    elif index == enforce:
        status = "unchanged"
    else:
        status = "updated"
    item = ApplyItem("job", job_id, status, f"JobModifyIndex {index}")
    report.items.append(item)
    emit(item.line())
    _record(nomad, job_id, index, canonical_hash(live), report, emit)


def _record(
    nomad: NomadJobs, job_id: str, index: int, digest: str, report: ApplyReport, emit: Callable[[str], None]
) -> None:
    path = _record_path(job_id)
    items = {"job": job_id, "job_modify_index": str(index), "hash": digest}
    current = nomad.variable(path)
    if current is not None and dict(current.get("Items") or {}) == items:
        item = ApplyItem("record", path, "unchanged")
    else:
        cas = int(current["ModifyIndex"]) if current is not None else 0
        nomad.put_variable(path, items, cas=cas)
        item = ApplyItem("record", path, "created" if current is None else "updated", f"JobModifyIndex {index}")
    report.items.append(item)
    emit(item.line())


def apply(
    settings: Settings,
    nomad_client: NomadJobs,
    vault_client_or_http: VaultAdmin | None,
    *,
    out: Out = None,
    jobs: Iterable[str] | None = None,
    nomad_acl: NomadACLHTTP | None = None,
) -> ApplyReport:
    """Register the jobs and write the Vault policies, role and Nomad ACL policies; idempotent.

    ``nomad_client`` is a :class:`~reconciler.clients.nomad.NomadClient` built with the
    operator's token and the runners namespace (jobs land in its namespace).
    ``vault_client_or_http`` is a :class:`VaultAdmin` (e.g. :class:`VaultHTTP` with the
    operator's Vault token); None skips Vault. ``jobs`` limits which jobs are registered
    (default: all three). ``nomad_acl`` defaults to :class:`NomadACLHTTP` on the Nomad
    client's address and token. Each item is reported to ``out`` (a callable taking a
    line, or a text stream) as it is done, and returned in the :class:`ApplyReport`.
    """
    emit = _emitter(out)
    report = ApplyReport()
    if settings.nomad.namespace == "default":
        emit(
            "warning: NOMAD_NAMESPACE is 'default'; runner jobs should live in their own namespace "
            "(e.g. runners) that only the reconciler may dispatch into"
        )
    nomad_settings = getattr(nomad_client, "settings", None) or settings.nomad
    selected = list(jobs) if jobs is not None else list(JOB_FILES)
    parsed = {job: nomad_client.parse_hcl(jobspec_text(job), job_variables(settings, job)) for job in selected}
    own = NomadACLHTTP(nomad_settings.addr, nomad_settings.token, timeout=nomad_settings.timeout)
    missing = missing_permissions(settings, own, parsed) if parsed else []
    if missing:
        raise PermanentError(
            "the Nomad token of `jobspecs apply` lacks, so nothing was written: " + "; ".join(missing)
            + f" (see jobspecs/nomad-acl/{NOMAD_OPERATOR_POLICY}.hcl)",
            system="nomad",
        )
    # Order: what the jobs rely on first (Vault policies and role, Nomad ACL policies), then the
    # jobs, those without host volumes first. A missing permission on a job (host_volume rules)
    # then stops apply with the policies already in place and names exactly what is missing.
    if vault_client_or_http is not None:
        _apply_vault(settings, vault_client_or_http, report, emit)
    else:
        item = ApplyItem("vault-policy", "*", "skipped", "no Vault client given")
        report.items.append(item)
        emit(item.line())
    acl = nomad_acl
    if acl is None:
        acl = NomadACLHTTP(nomad_settings.addr, nomad_settings.token, timeout=nomad_settings.timeout)
    _apply_acl(settings, acl, report, emit)
    for job in selected:
        _apply_job(settings, nomad_client, job, report, emit, parsed[job])
    return report


def missing_permissions(settings: Settings, own: NomadACLHTTP, parsed: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """What the token behind ``own`` lacks to register ``parsed`` (job -> parsed job), exactly; [] when
    it lacks nothing, is a management token, or ACLs are off. Reads the token and its policies only."""
    from reconciler import nomad_acl
    from reconciler.nomad_policy import Grants

    token = own.token_self()
    if token is None or token.get("Type") == "management":
        return []
    rules = [own.read_policy(str(name)) or "" for name in token.get("Policies") or []]
    try:
        grants = Grants.of(rules)
    except ValueError:
        return []  # a policy we cannot read (JSON rules): the server decides, and 403s name the job
    ns = settings.nomad.namespace
    missing: list[str] = []
    for call in nomad_acl.calls_of("operator"):
        if call.scope == "namespace" and not grants.allow_ns(ns, *call.any_of):
            missing.append(f'namespace "{ns}" capability {" or ".join(call.any_of)} ({call.http})')
    for job_id, job in parsed.items():
        for tg in job.get("TaskGroups") or []:
            for vol in (tg.get("Volumes") or {}).values():
                if (vol or {}).get("Type") != "host":
                    continue
                caps = ("mount-readonly", "mount-readwrite") if vol.get("ReadOnly") else ("mount-readwrite",)
                line = f'host_volume "{vol.get("Source")}" {{ capabilities = ["{caps[0]}"] }} (job {job_id})'
                if not grants.allow_host_volume(str(vol.get("Source")), *caps) and line not in missing:
                    missing.append(line)
    return missing


# -- drift guard -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParentCheck:
    """The outcome of :func:`check_parent` when dispatching may go ahead."""

    job: str
    modify_index: int
    """The live parent's ``JobModifyIndex``."""
    registered_index: int | None
    """The ``JobModifyIndex`` recorded by ``jobspecs apply``; None when nothing was recorded."""
    warning: str | None = None
    """Set when dispatching is allowed without proof (no record: a fresh cluster or a double)."""


def check_parent(nomad_client: NomadJobs, job_name: str) -> ParentCheck:
    """Refuse to dispatch a parent job that changed since ``reconciler jobspecs apply`` registered it.

    Two reads (the job and its record). The live ``JobModifyIndex`` must equal the recorded
    one; if it differs but the canonical job hashes the same (re-registered unchanged), it
    passes. No record at all passes with a warning. Raises :class:`PermanentError` when the
    job changed, or when it is gone although a record says it was registered.
    """
    live = nomad_client.job(job_name)
    record = nomad_client.variable(_record_path(job_name))
    items = dict((record or {}).get("Items") or {})
    if live is None:
        if record is None:
            raise PermanentError(
                f"parent job {job_name} is not registered: run `reconciler jobspecs apply`", system="nomad"
            )
        raise PermanentError(
            f"parent job {job_name} was removed behind the reconciler's back (registered at modify index "
            f"{items.get('job_modify_index', '?')}): re-run `reconciler jobspecs apply` after reviewing the change",
            system="nomad",
        )
    index = int(live.get("JobModifyIndex") or 0)
    if record is None or "job_modify_index" not in items:
        return ParentCheck(
            job_name,
            index,
            None,
            warning=f"parent job {job_name} has no registration record ({_record_path(job_name)}); "
            "run `reconciler jobspecs apply` so changes behind the reconciler's back are caught",
        )
    registered = int(items["job_modify_index"])
    if index == registered:
        return ParentCheck(job_name, index, registered)
    if items.get("hash") and items["hash"] == canonical_hash(live):
        return ParentCheck(job_name, index, registered)
    raise PermanentError(
        f"parent job {job_name} was changed behind the reconciler's back (modify index {index}, registered "
        f"{registered}): re-run `reconciler jobspecs apply` after reviewing the change",
        system="nomad",
    )
