"""``reconciler doctor``: check every system the reconciler needs, before it runs.

Each check prints one line::

    ok   <system> <what>
    FAIL <system> <what> — <fix>

and ``run_doctor`` returns 0 when every check passed, 1 otherwise. A check that
cannot be made because an earlier one failed (Vault unreachable, so its policies
cannot be read) is not printed: the earlier failure already says what to fix.

Doctor is an edge, like the clients: it uses their verbs where they have them
(:class:`VaultClient`, :class:`NomadClient`, :class:`ForgeClient`) and a few
direct HTTP calls and one ``git ls-remote`` for what they lack. It never prints
a token, and it changes nothing anywhere.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, TextIO

import requests

from reconciler.clients.errors import PermanentError, ReconcilerError, TransientError
from reconciler.clients.git_env import MIN_GIT_VERSION, clean_env, git_auth, parse_git_version
from reconciler.clients.opsrepo import credential_hint, redact
from reconciler.credentials import CredentialError, TokenSource
from reconciler.clients.http import pooled_session
from reconciler.settings import Settings
from reconciler.tls import ssl_problem

__all__ = ["Check", "run_doctor", "checks", "granted_paths"]

DASH = "\u2014"


@dataclass(frozen=True)
class Check:
    """One verdict: ``ok`` or not, which system, what was checked, and (when failed) the fix."""

    ok: bool
    system: str
    what: str
    fix: str = ""

    def line(self) -> str:
        if self.ok:
            return f"ok   {self.system} {self.what}"
        return f"FAIL {self.system} {self.what} {DASH} {self.fix}"


def run_doctor(settings: Settings, *, out: TextIO, session: requests.Session | None = None, git_timeout: float = 20.0) -> int:
    """Run every check, print one line each to ``out``; 0 when all passed, else 1."""
    failed = 0
    for check in checks(settings, session=session, git_timeout=git_timeout):
        print(check.line(), file=out, flush=True)
        failed += not check.ok
    print(f"{'all checks passed' if not failed else f'{failed} check(s) failed'}", file=out, flush=True)
    return 0 if not failed else 1


def checks(settings: Settings, *, session: requests.Session | None = None, git_timeout: float = 20.0) -> Iterator[Check]:
    """Every check, in order: Nomad, Vault, the forge, the ops remote."""
    settings, problems = _resolve_token_files(settings)
    yield from problems
    # One session per system, each with that system's TLS settings (NOMAD_CACERT, VAULT_CACERT, ...).
    yield from _nomad_checks(settings, session or pooled_session(settings.nomad.addr, pool=4, tls=settings.nomad.tls))
    yield from _vault_checks(settings, session or pooled_session(settings.vault.addr, pool=4, tls=settings.vault.tls))
    yield from _forge_checks(settings, session or requests.Session())
    yield from _ops_checks(settings, git_timeout)


# --------------------------------------------------------------------------- helpers
def _resolve_token_files(settings: Settings) -> tuple[Settings, list[Check]]:
    """Settings with each ``token_file`` (``*_TOKEN_FILE``) read into ``token``, and a FAIL per unreadable file.

    Tolerates settings groups without a ``token_file`` field (older settings).
    """
    problems: list[Check] = []
    groups: dict[str, Any] = {}
    for group, system, var in (("nomad", "nomad", "NOMAD_TOKEN_FILE"), ("vault", "vault", "VAULT_TOKEN_FILE"), ("forge", "forge", "FORGE_TOKEN_FILE")):
        current = getattr(settings, group)
        path = getattr(current, "token_file", None)
        if not path:
            continue
        try:
            groups[group] = replace(current, token=TokenSource(path=path, what=var).get())
        except CredentialError as exc:
            problems.append(Check(False, system, f"token file unusable: {exc}", f"fix {var} or the file it names"))
    return (replace(settings, **groups) if groups else settings), problems


def _get(http: requests.Session, url: str, *, headers: dict[str, str], timeout: float, tls_prefix: str = "", **kw: Any) -> requests.Response | str:
    """A GET, or the reason there was no HTTP answer (a string; a TLS failure names its fix)."""
    try:
        return http.get(url, headers=headers, timeout=timeout, **kw)
    except requests.exceptions.SSLError as exc:
        return ssl_problem(exc, tls_prefix or "VAULT")
    except requests.exceptions.ConnectionError:
        return "connection refused or host unreachable"
    except requests.exceptions.Timeout:
        return f"no answer within {timeout:g} s"
    except requests.RequestException as exc:
        return type(exc).__name__


def _body_text(resp: requests.Response, limit: int = 200) -> str:
    return (resp.text or "").strip().replace("\n", " ")[:limit] or f"HTTP {resp.status_code}"


def _error_text(exc: ReconcilerError) -> str:
    return str(exc).rstrip(".")


# --------------------------------------------------------------------------- Nomad
def _nomad_checks(settings: Settings, http: requests.Session) -> Iterator[Check]:
    ns = settings.nomad
    addr = ns.addr.rstrip("/")
    headers = {"X-Nomad-Token": ns.token} if ns.token else {}
    params = {"region": ns.region} if ns.region else {}
    reply = _get(http, f"{addr}/v1/status/leader", headers=headers, timeout=ns.timeout, tls_prefix="NOMAD", params=params)
    if isinstance(reply, str) and reply.startswith("TLS"):
        problem, _, fix = reply.partition("; ")
        yield Check(False, "nomad", f"not usable at {addr}: {problem}", fix or "check NOMAD_CACERT")
        return
    if isinstance(reply, str):
        yield Check(False, "nomad", f"not reachable at {addr} ({reply})", "start Nomad there or set NOMAD_ADDR to its HTTP API")
        return
    if reply.status_code in (401, 403):
        # Real Nomad answers status/leader without a token; an ACL-guarded proxy or a strict agent may not.
        yield Check(False, "nomad", f"at {addr} refused the token ({_body_text(reply)})", "set NOMAD_TOKEN to a token of the reconciler's Nomad ACL policy")
        return
    if reply.status_code != 200:
        yield Check(False, "nomad", f"at {addr} answered status/leader with {_body_text(reply)}", "check NOMAD_ADDR points at a Nomad agent's HTTP API")
        return
    leader = reply.json() if reply.content else ""
    if not leader:
        yield Check(False, "nomad", f"at {addr} has no cluster leader", "wait for the servers to elect a leader (nomad server members)")
        return
    yield Check(True, "nomad", f"reachable at {addr} (leader {leader})")

    q = {"namespace": ns.namespace, "prefix": ns.runner_job, **params}
    reply = _get(http, f"{addr}/v1/jobs", headers=headers, timeout=ns.timeout, params=q)
    if isinstance(reply, str):
        yield Check(False, "nomad", f"stopped answering at {addr} ({reply})", "check the Nomad agent")
        return
    if reply.status_code in (401, 403):
        fix = "set NOMAD_TOKEN (or NOMAD_TOKEN_FILE)" if not ns.token else "NOMAD_TOKEN is unknown or expired, or its ACL policy lacks list-jobs"
        yield Check(
            False, "nomad", f"at {addr} refused the token in namespace {ns.namespace} ({_body_text(reply)})",
            f"{fix}; it needs the policy jobspecs/nomad-acl/reconciler.hcl (dispatch-job, read-job, list-jobs, read-logs, deregister-job) in namespace {ns.namespace}",
        )
        return
    if reply.status_code != 200:
        yield Check(False, "nomad", f"at {addr} cannot list jobs in namespace {ns.namespace}: {_body_text(reply)}", f"create namespace {ns.namespace} or set NOMAD_NAMESPACE")
        return
    yield Check(True, "nomad", f"token accepted in namespace {ns.namespace}")

    from reconciler.clients.nomad import NomadClient

    client = NomadClient(ns, session=http)
    parents = [ns.runner_job] + ([ns.sidecar_job] if settings.forge.repo else [])
    for name in parents:
        yield _parent_job_check(client, name, ns.namespace, addr)
    yield _variables_check(client, ns.namespace, addr)


def _variables_check(client: Any, namespace: str, addr: str) -> Check:
    """The durable claims and the leader lock live in Nomad Variables under ``reconciler/``."""
    path = "reconciler/leader"
    try:
        client.variable(path)
    except ReconcilerError as exc:
        return Check(
            False, "nomad", f"cannot read Nomad Variable {path} in namespace {namespace} at {addr}: {_error_text(exc)}",
            f'grant NOMAD_TOKEN\'s policy variables {{ path "reconciler/*" {{ capabilities = ["read", "write", "list", "destroy"] }} }} in namespace {namespace}',
        )
    return Check(True, "nomad", f"Nomad Variables reconciler/* readable in namespace {namespace}")


def _parent_job_check(client: Any, name: str, namespace: str, addr: str) -> Check:
    what = f"parent job {name} in namespace {namespace}"
    fix_register = f"register it: reconciler jobspecs apply (or nomad job run -namespace={namespace} jobspecs/{name}.hcl)"
    try:
        job = client.job(name)
    except ReconcilerError as exc:
        return Check(False, "nomad", f"cannot read {what} at {addr}: {_error_text(exc)}", "check NOMAD_TOKEN's policy grants read-job")
    if job is None:
        return Check(False, "nomad", f"{what} is not registered at {addr}", fix_register)
    if not (job.get("ParameterizedJob") or job.get("Parameterized")):
        return Check(False, "nomad", f"{what} is registered but not parameterized", f"it must have a parameterized block; {fix_register}")
    if job.get("Stop"):
        return Check(False, "nomad", f"{what} is stopped", fix_register)
    return Check(True, "nomad", f"{what} is registered and parameterized (version {job.get('Version', '?')})")


# --------------------------------------------------------------------------- Vault
def _vault_checks(settings: Settings, http: requests.Session) -> Iterator[Check]:
    vs = settings.vault
    addr = vs.addr.rstrip("/")
    from reconciler.clients.vault import VaultClient

    client = VaultClient(vs, attempts=1, session=http)
    try:
        client.health()
    except ReconcilerError as exc:
        text = _error_text(exc)
        if "TLS" in text:
            text, _, fix = text.partition("; ")
        elif "sealed" in text:
            fix = "unseal it (vault operator unseal)"
        elif "not initialized" in text:
            fix = "initialize and unseal it"
        else:
            fix = "start Vault there or set VAULT_ADDR to its HTTP API"
        yield Check(False, "vault", f"not usable at {addr}: {text}", fix)
        return
    yield Check(True, "vault", f"reachable and unsealed at {addr}")

    headers = {"X-Vault-Token": vs.token or ""}
    if vs.namespace:
        headers["X-Vault-Namespace"] = vs.namespace
    if not vs.token:
        yield Check(False, "vault", "no token configured", "set VAULT_TOKEN (or VAULT_TOKEN_FILE) to the reconciler's dispatcher token")
        return
    reply = _get(http, f"{addr}/v1/auth/token/lookup-self", headers=headers, timeout=vs.timeout)
    if isinstance(reply, str):
        yield Check(False, "vault", f"stopped answering at {addr} ({reply})", "check Vault")
        return
    if reply.status_code == 403:
        # Only the default policy grants lookup-self; a dispatcher token without it is normal. Vault
        # answers 403 for an unknown token too: a read the dispatcher policy grants tells them apart.
        try:
            client.policy_text("runner-claim")
        except ReconcilerError:
            yield Check(
                False, "vault", f"at {addr} refused the token ({_vault_errors(reply)})",
                "VAULT_TOKEN is expired, revoked or unknown: issue a new token with the reconciler-dispatcher policy",
            )
            return
        yield Check(True, "vault", "token valid (no default policy: lookup-self is not granted, which is fine)")
    elif reply.status_code != 200:
        yield Check(
            False, "vault", f"at {addr} refused the token ({_vault_errors(reply)})",
            "VAULT_TOKEN is expired, revoked or unknown: issue a new token with the reconciler-dispatcher policy",
        )
        return
    else:
        data = (reply.json() or {}).get("data") or {}
        policies = ", ".join(sorted(set(data.get("policies") or []) | set(data.get("identity_policies") or []))) or "none"
        ttl = data.get("ttl")
        ttl_text = "no expiry" if not ttl else f"expires in {int(ttl) // 3600} h {int(ttl) % 3600 // 60} min"
        yield Check(True, "vault", f"token valid (policies: {policies}; {ttl_text})")

    yield from _vault_capabilities(settings, http, headers, client)
    yield from _runner_policies(settings, client)
    yield _role_check(settings, client)


def _vault_errors(resp: requests.Response) -> str:
    try:
        errors = (resp.json() or {}).get("errors") or []
    except ValueError:
        errors = []
    text = "; ".join(str(e).strip() for e in errors if str(e).strip())
    return f"HTTP {resp.status_code}" + (f": {text}" if text else "")


def _needed_capabilities(settings: Settings) -> dict[str, str]:
    """Path → the capability the reconciler uses there (one representative path per rule)."""
    vs = settings.vault
    prefix = vs.secret_prefix.strip("/")
    sample = (settings.actions.allowed_secrets or ("GITHUB_TOKEN",))[0]
    return {
        f"{vs.kv_mount}/metadata/{prefix}/{sample}": "read",
        f"{vs.kv_mount}/data/{prefix}/{sample}": "read",
        f"sys/policies/acl/runner-{sample.lower()}": "read",
        f"auth/token/create/{vs.token_role}": "update",
        "auth/token/lookup-accessor": "update",
        "auth/token/revoke-accessor": "update",
        f"auth/token/roles/{vs.token_role}": "read",
    }
    # sys/wrapping/lookup is left out: it is unauthenticated, no capability applies to it.


def _vault_capabilities(settings: Settings, http: requests.Session, headers: dict[str, str], client: Any) -> Iterator[Check]:
    """Ask ``sys/capabilities-self``; where that endpoint is missing, probe with harmless calls instead."""
    addr = settings.vault.addr.rstrip("/")
    needed = _needed_capabilities(settings)
    try:
        reply = http.post(f"{addr}/v1/sys/capabilities-self", headers=headers, json={"paths": list(needed)}, timeout=settings.vault.timeout)
    except requests.RequestException as exc:
        yield Check(False, "vault", f"stopped answering at {addr} ({type(exc).__name__})", "check Vault")
        return
    if reply.status_code == 200:
        body = reply.json() or {}
        data = body.get("data") or body
        for path, cap in needed.items():
            caps = data.get(path)
            if caps is None and len(needed) == 1:
                caps = data.get("capabilities")
            yield _capability_check(path, cap, set(caps or []))
        return
    # Not available (an old Vault, a proxy, or the test double): probe instead.
    yield from _probe_capabilities(settings, http, headers, client, needed)


def _capability_check(path: str, cap: str, caps: set[str]) -> Check:
    if "root" in caps or (cap in caps and "deny" not in caps):
        return Check(True, "vault", f"token may {cap} {path}")
    return Check(
        False, "vault", f"token may not {cap} {path} (has: {', '.join(sorted(caps)) or 'nothing'})",
        f'add to the reconciler-dispatcher policy: path "{path}" {{ capabilities = ["{cap}"] }} (see jobspecs/)',
    )


def _probe_capabilities(settings: Settings, http: requests.Session, headers: dict[str, str], client: Any, needed: dict[str, str]) -> Iterator[Check]:
    """Harmless calls whose refusal (403) tells a missing capability from a mere missing object (400/404).

    Minting through the token role is not probed: the only way to know is to mint.
    """
    addr = settings.vault.addr.rstrip("/")
    vs = settings.vault
    probes: dict[str, Callable[[], requests.Response]] = {}
    for path, cap in needed.items():
        url = f"{addr}/v1/{path}"
        if path.startswith("auth/token/create/"):
            continue
        if cap == "read" and path.startswith(f"{vs.kv_mount}/data/"):
            # Never read a real secret value: an absent sibling under the same rule answers 404 (allowed) or 403.
            absent = f"{addr}/v1/{path.rsplit('/', 1)[0]}/doctor-probe-absent"
            probes[path] = lambda url=absent: http.get(url, headers=headers, timeout=vs.timeout)
        elif cap == "read":
            probes[path] = lambda url=url: http.get(url, headers=headers, timeout=vs.timeout)
        elif path.endswith("-accessor"):
            probes[path] = lambda url=url: http.post(url, headers=headers, json={"accessor": "doctor-probe-not-an-accessor"}, timeout=vs.timeout)
        elif path == "sys/wrapping/lookup":
            probes[path] = lambda url=url: http.post(url, headers=headers, json={"token": "doctor-probe-not-a-token"}, timeout=vs.timeout)
    for path, probe in probes.items():
        cap = needed[path]
        try:
            resp = probe()
        except requests.RequestException as exc:
            yield Check(False, "vault", f"stopped answering at {addr} ({type(exc).__name__})", "check Vault")
            return
        if resp.status_code == 403:
            yield _capability_check(path, cap, set())
        elif resp.status_code in (200, 204, 400, 404):
            yield Check(True, "vault", f"token may {cap} {path} (probed: sys/capabilities-self unavailable)")
        else:
            yield Check(False, "vault", f"probe of {path} answered {_vault_errors(resp)}", "check Vault's logs")


_PATH_BLOCK = re.compile(r'path\s+"([^"]+)"\s*\{([^{}]*)\}', re.S)
_CAPS = re.compile(r"capabilities\s*=\s*\[([^\]]*)\]")
_COMMENT = re.compile(r"(?m)^\s*(#|//).*$")


def granted_paths(policy_text: str) -> dict[str, set[str]]:
    """Path pattern → capabilities of a Vault ACL policy (HCL or JSON); deny-only rules are left out.

    Only what a policy *grants* matters here: a ``deny`` rule narrows, never widens.
    """
    rules: dict[str, set[str]] = {}
    text = policy_text.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict):
            paths = data.get("path") or {}
            items = paths.items() if isinstance(paths, dict) else []
            for pattern, body in items:
                rules[str(pattern)] = {str(c) for c in ((body or {}).get("capabilities") or [])}
            return {p: c for p, c in rules.items() if c - {"deny"} and "deny" not in c}
    for m in _PATH_BLOCK.finditer(_COMMENT.sub("", text)):
        caps_m = _CAPS.search(m.group(2))
        caps = {c.strip().strip('"').strip("'") for c in caps_m.group(1).split(",")} if caps_m else set()
        caps.discard("")
        rules.setdefault(m.group(1), set()).update(caps)
    return {p: c for p, c in rules.items() if c - {"deny"} and "deny" not in c}


def _role_check(settings: Settings, client: Any) -> Check:
    """The token role holds what ``jobspecs apply`` writes (a Vault < 1.9 silently drops the glob fields)."""
    from reconciler import jobspecs

    role = settings.vault.token_role
    try:
        live = client.token_role(role)
    except ReconcilerError as exc:
        return Check(False, "vault", f"cannot read token role {role}: {_error_text(exc)}", f'grant the token read on "auth/token/roles/{role}" (reconciler jobspecs apply)')
    if live is None:
        return Check(False, "vault", f"token role {role} does not exist", "create it: reconciler jobspecs apply")
    problem = jobspecs.role_problem(live, jobspecs.runner_role_fields(settings))
    if problem:
        return Check(False, "vault", f"token role {role} differs from the jobspecs: {problem}", "reconciler jobspecs apply (on Vault >= 1.9: older ones ignore the glob fields)")
    return Check(True, "vault", f"token role {role} holds what the jobspecs write")


def _runner_policies(settings: Settings, client: Any) -> Iterator[Check]:
    """Each ``runner-<NAME>`` grants exactly its secret's path; each ``runner-mount-<alias>`` exactly its mount."""
    vs = settings.vault
    prefix = vs.secret_prefix.strip("/")
    wanted: list[tuple[str, str, str]] = []
    for name in settings.actions.allowed_secrets:
        wanted.append((f"runner-{name}", f"{vs.kv_mount}/data/{prefix}/{name}", f"secret {name}"))
    for alias in settings.actions.allowed_mounts:
        wanted.append((f"runner-mount-{alias}", f"{vs.kv_mount}/data/{prefix}/mounts/{alias}", f"mount {alias}"))
    for policy, path, what in wanted:
        yield _policy_check(client, policy, path, what)
    yield _claim_policy_check(client)


def _policy_check(client: Any, policy: str, path: str, what: str) -> Check:
    try:
        text = client.policy_text(policy)
    except ReconcilerError as exc:
        return Check(False, "vault", f"cannot read policy {policy}: {_error_text(exc)}", 'grant the token read on "sys/policies/acl/runner-*"')
    if text is None:
        return Check(
            False, "vault", f"policy {policy} does not exist ({what} cannot be used by any action)",
            f'write it: path "{path}" {{ capabilities = ["read"] }} (or drop it from RECONCILER_ALLOWED_SECRETS/MOUNTS)',
        )
    granted = granted_paths(text)
    if set(granted) == {path}:
        return Check(True, "vault", f"policy {policy} grants exactly {path}")
    if not granted:
        return Check(False, "vault", f"policy {policy} grants nothing", f"it must grant exactly {path} (read)")
    listed = ", ".join(sorted(granted))
    return Check(False, "vault", f"policy {policy} grants {listed} {DASH} it must grant exactly {path}", f"rewrite it to the single rule path \"{path}\" {{ capabilities = [\"read\"] }}")


def _claim_policy_check(client: Any) -> Check:
    policy = "runner-claim"
    want = "auth/token/revoke-self"
    try:
        text = client.policy_text(policy)
    except ReconcilerError as exc:
        return Check(False, "vault", f"cannot read policy {policy}: {_error_text(exc)}", 'grant the token read on "sys/policies/acl/runner-*"')
    if text is None:
        return Check(False, "vault", f"policy {policy} does not exist (every claim carries it)", f"write it: a policy that grants exactly {want} (update); see jobspecs/")
    granted = granted_paths(text)
    if set(granted) != {want}:
        listed = ", ".join(sorted(granted)) or "nothing"
        return Check(
            False, "vault", f"policy {policy} grants {listed} {DASH} it must grant exactly {want}",
            f'rewrite it to the single rule path "{want}" {{ capabilities = ["update"] }} (runners revoke their own claim with it)',
        )
    return Check(True, "vault", f"policy {policy} grants exactly {want}")


# --------------------------------------------------------------------------- forge
def _forge_checks(settings: Settings, http: requests.Session) -> Iterator[Check]:
    fs = settings.forge
    if not fs.url or not fs.token:
        yield Check(False, "forge", "not configured (approvals of pull-request actions cannot be confirmed)", "set FORGE_URL and FORGE_TOKEN (or FORGE_TOKEN_FILE)")
        return
    base = fs.url.rstrip("/")
    if base.endswith("/api/v1"):
        base = base[: -len("/api/v1")]
    shown = redact(base)
    from reconciler.clients.forge import ForgeClient

    client = ForgeClient(fs, session=http, attempts=1)
    try:
        login = client.own_login()
    except TransientError as exc:
        yield Check(False, "forge", f"not reachable at {shown}: {_error_text(exc)}", "start Forgejo there or set FORGE_URL (its base URL, without /api/v1)")
        return
    except PermanentError as exc:
        yield Check(False, "forge", f"at {shown} refused the token: {_error_text(exc)}", "FORGE_TOKEN is revoked or wrong: create a new token for the reconciler's user")
        return
    yield Check(True, "forge", f"token valid at {shown} (user {login})")

    headers = {"Authorization": f"token {fs.token}", "Accept": "application/json"}
    repos = [(fs.ops_repo, "FORGE_OPS_REPO")] + ([(fs.repo, "FORGE_REPO")] if fs.repo else [])
    for repo, var in repos:
        if not repo:
            yield Check(False, "forge", f"{var} is not set", f"set {var} to owner/name of the ops repo")
            continue
        yield _repo_check(http, base, shown, headers, repo, login, fs.timeout, need_push=var == "FORGE_OPS_REPO")
    yield from _scope_checks(settings, http, base, shown, login)
    if fs.ops_repo:
        yield from _admin_checks(settings, client, login)


SCOPE_REFUSAL = "token does not have at least one of required scope(s)"
"""The start of Forgejo's 403 message for a token without a scope a route needs."""


def _scope_probes(settings: Settings) -> list[tuple[str, str, str, str, bool]]:
    """(method, API path, scope, the feature that needs it, with the admin token) for what is in use."""
    fs = settings.forge
    probes: list[tuple[str, str, str, str, bool]] = []
    if fs.ops_repo:
        probes.append(("GET", f"/repos/{fs.ops_repo}/collaborators/{{login}}/permission", "read:repository", "admin checks (collaborator permission)", True))
    if fs.repo:
        probes.append(("GET", f"/repos/{fs.repo}/issues?type=issues&limit=1", "read:issue", "sidecars (the issue scan)", False))
        # A comment on issue 0 cannot be stored: Forgejo checks the scope first, so 403 means the scope
        # is missing and anything else means it is there. Nothing is written either way.
        probes.append(("POST", f"/repos/{fs.repo}/issues/0/comments", "write:issue", "sidecar failure comments", False))
    if fs.pr_comments and fs.ops_repo:
        probes.append(("POST", f"/repos/{fs.ops_repo}/issues/0/comments", "write:issue", "RECONCILER_PR_COMMENTS", False))
    return probes


def _scope_checks(settings: Settings, http: requests.Session, base: str, shown: str, login: str) -> Iterator[Check]:
    """One line per token scope the features in use need: present, or missing with the fix."""
    fs = settings.forge
    for method, path, scope, feature, admin in _scope_probes(settings):
        token = (fs.admin_token or fs.token) if admin else fs.token
        var = "FORGE_ADMIN_TOKEN" if admin and fs.admin_token else "FORGE_TOKEN"
        headers = {"Authorization": f"token {token}", "Accept": "application/json"}
        url = base + "/api/v1" + path.replace("{login}", login)
        try:
            reply = http.request(method, url, headers=headers, json={} if method == "POST" else None, timeout=fs.timeout)
        except requests.RequestException as exc:
            yield Check(False, "forge", f"stopped answering at {shown} ({type(exc).__name__})", "check Forgejo")
            return
        if reply.status_code == 403 and SCOPE_REFUSAL in reply.text:
            yield Check(False, "forge", f"{var} lacks scope {scope}, needed for {feature}", f"create a token with {scope} for the reconciler's user")
        elif reply.status_code == 403:
            yield Check(False, "forge", f"{var} may not use {feature} at {shown}: {_body_text(reply)}", "give the token's user the access it needs")
        else:
            yield Check(True, "forge", f"{var} has scope {scope} ({feature})")


def _admin_checks(settings: Settings, client: Any, login: str) -> Iterator[Check]:
    """Each name in FORGE_ADMIN_USERS that the forge does not confirm as an admin of the ops repo."""
    fs = settings.forge
    for name in fs.admin_users:
        if name.casefold() == login.casefold():
            yield Check(False, "forge", f"FORGE_ADMIN_USERS lists {name}, the reconciler's own user, whose approvals never count", f"remove {name} from FORGE_ADMIN_USERS")
            continue
        try:
            confirmed = client.is_admin(name, repo=fs.ops_repo)
        except ReconcilerError as exc:
            yield Check(False, "forge", f"cannot confirm FORGE_ADMIN_USERS entry {name}: {_error_text(exc)}", "give FORGE_ADMIN_TOKEN a site admin's or a repo admin's token")
            continue
        if confirmed:
            yield Check(True, "forge", f"{name} is an admin of {fs.ops_repo} (its approvals count)")
        else:
            yield Check(
                False, "forge", f"FORGE_ADMIN_USERS lists {name}, who is neither a site admin nor an admin of {fs.ops_repo}: its approvals do not count",
                f"grant {name} admin on {fs.ops_repo}, or remove it from FORGE_ADMIN_USERS",
            )


def _repo_check(
    http: requests.Session, base: str, shown: str, headers: dict[str, str], repo: str, login: str, timeout: float, *, need_push: bool = False
) -> Check:
    """The repository is readable by the token's user; for the ops repo also pushable by it
    (``permissions.push`` of ``GET /repos/{o}/{r}``: a Forgejo whose git supports proc-receive
    checks write permission only in the pre-receive hook, which ``git push --dry-run`` never reaches)."""
    reply = _get(http, f"{base}/api/v1/repos/{repo}", headers=headers, timeout=timeout)
    if isinstance(reply, str):
        return Check(False, "forge", f"stopped answering at {shown} ({reply})", "check Forgejo")
    if reply.status_code == 404:
        return Check(False, "forge", f"repo {repo} not found at {shown} or not readable by {login}", f"check the name, or give {login} read access to {repo}")
    if reply.status_code == 403 and SCOPE_REFUSAL in reply.text:
        return Check(
            False, "forge", f"FORGE_TOKEN lacks scope read:repository, needed for the approval gate and {repo}",
            "create a token with read:repository (and write:repository to push results) for the reconciler's user",
        )
    if reply.status_code != 200:
        return Check(False, "forge", f"cannot read repo {repo} at {shown}: {_body_text(reply)}", f"give {login} read access to {repo}")
    if need_push:
        try:
            push = bool(((reply.json() or {}).get("permissions") or {}).get("push"))
        except ValueError:
            push = True  # no JSON: the git push probe below still tells
        if not push:
            return Check(
                False, "forge", f"repo {repo} readable by {login}, who may not push to it: results cannot be pushed",
                f"make {login} a collaborator of {repo} with write access",
            )
    return Check(True, "forge", f"repo {repo} readable by {login}")


# --------------------------------------------------------------------------- ops remote
def _ops_checks(settings: Settings, git_timeout: float) -> Iterator[Check]:
    """git's version, then the ops remote as the reconciler reaches it (same askpass, same
    isolated environment): readable (``ls-remote``) and writable (``push --dry-run`` of a
    throwaway branch: the forge checks the token's ``write:repository`` scope when git asks
    for the receive-pack advertisement, and nothing is sent)."""
    version = _git_version(git_timeout)
    if isinstance(version, str):
        yield Check(False, "git", version, "install git")
        return
    shown_version = ".".join(map(str, version))
    if version[:2] < MIN_GIT_VERSION:
        need = ".".join(map(str, MIN_GIT_VERSION))
        yield Check(False, "git", f"version {shown_version} is older than {need}", f"install git >= {need} (GIT_CONFIG_GLOBAL, --diff-merges=first-parent)")
        return
    yield Check(True, "git", f"version {shown_version}")
    remote = settings.ops_remote
    if not remote:
        yield Check(False, "git", "no ops remote configured", "set OPS_REPO_REMOTE, or FORGE_URL and FORGE_OPS_REPO")
        return
    shown = redact(remote)
    if shown != remote and re.search(r"://[^/@\s]*:[^/@\s]*@", remote):
        yield Check(
            False, "git", f"ops remote {shown} carries a password in its URL: it lands in .git/config and in every git argv",
            "remove it from OPS_REPO_REMOTE (or unset it): git gets FORGE_TOKEN / FORGE_TOKEN_FILE through its askpass",
        )
    branch = settings.ops.primary_branch
    auth = git_auth(settings, remote)
    try:
        env = {**clean_env(os.environ), "LC_ALL": "C", "GIT_SSH_COMMAND": os.environ.get("GIT_SSH_COMMAND", "ssh -oBatchMode=yes")}
        env.update(auth.env() if auth is not None else {})
        proc = _git(["ls-remote", "--heads", remote, f"refs/heads/{branch}"], env, git_timeout)
        if isinstance(proc, str):
            yield Check(False, "git", f"ops remote {shown} {proc}", "check the network path to it")
            return
        if proc.returncode != 0:
            message = _last_line(proc)
            yield Check(False, "git", f"ops remote {shown} not reachable: {message}{credential_hint(message, write=False)}", "check OPS_REPO_REMOTE and the credentials git uses for it")
            return
        if f"refs/heads/{branch}" not in proc.stdout.decode("utf-8", "replace"):
            yield Check(False, "git", f"ops remote {shown} has no branch {branch}", "push the branch or set PRIMARY_BRANCH")
            return
        yield Check(True, "git", f"ops remote {shown} reachable, branch {branch} present")
        yield _push_check(remote, shown, env, git_timeout)
    finally:
        if auth is not None:
            auth.close()


def _git_version(timeout: float) -> tuple[int, ...] | str:
    try:
        proc = subprocess.run(["git", "--version"], capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return "git is not installed"
    except subprocess.TimeoutExpired:
        return "git --version did not answer"
    version = parse_git_version(proc.stdout.decode("utf-8", "replace"))
    return version if version else f"cannot tell git's version from {proc.stdout[:80]!r}"


def _git(args: list[str], env: dict[str, str], timeout: float, cwd: str | None = None) -> subprocess.CompletedProcess[bytes] | str:
    try:
        return subprocess.run(
            ["git", "-c", "credential.helper=", *args],
            capture_output=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL, start_new_session=True, cwd=cwd,
        )
    except subprocess.TimeoutExpired:
        return f"did not answer within {timeout:g} s"


def _last_line(proc: subprocess.CompletedProcess[bytes]) -> str:
    lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
    fatal = [ln for ln in lines if ln.startswith(("fatal:", "error:"))]
    return redact((fatal or lines or [f"exit {proc.returncode}"])[-1])


def _push_check(remote: str, shown: str, env: dict[str, str], timeout: float) -> Check:
    """``git push --dry-run`` of a new commit to a throwaway branch, from an empty scratch repository."""
    probe = "refs/heads/reconciler-doctor-probe"
    with tempfile.TemporaryDirectory(prefix="reconciler-doctor-") as scratch:
        ident = {"GIT_AUTHOR_NAME": "doctor", "GIT_AUTHOR_EMAIL": "doctor@localhost", "GIT_COMMITTER_NAME": "doctor", "GIT_COMMITTER_EMAIL": "doctor@localhost"}
        local = {**env, **ident, "GIT_DIR": scratch}
        subprocess.run(["git", "init", "--bare", "--quiet", scratch], capture_output=True, env=env, timeout=timeout)
        tree = subprocess.run(["git", "hash-object", "-w", "-t", "tree", "--stdin"], input=b"", capture_output=True, env=local, timeout=timeout)
        made = subprocess.run(["git", "commit-tree", "-m", "doctor probe", tree.stdout.decode().strip()], capture_output=True, env=local, timeout=timeout)
        commit = made.stdout.decode().strip()
        if made.returncode != 0 or not commit:
            return Check(False, "git", "cannot make a probe commit in a scratch repository", "check git works for this user (TMPDIR writable)")
        proc = _git(["-C", scratch, "push", "--dry-run", "--porcelain", remote, f"{commit}:{probe}"], env, timeout)
    if isinstance(proc, str):
        return Check(False, "git", f"push probe to {shown} {proc}", "check the network path to it")
    if proc.returncode != 0:
        message = _last_line(proc)
        return Check(False, "git", f"ops remote {shown} refuses pushes: {message}{credential_hint(message, write=True)}", "results cannot be pushed until this is fixed")
    return Check(True, "git", f"ops remote {shown} accepts pushes (dry run of a throwaway branch)")
