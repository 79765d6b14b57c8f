"""The reconciler's Nomad client: a few verbs over python-nomad, with the server's rules where the library is wrong.

Where python-nomad 2.1 disagrees with the Nomad server (``shared/docs/CONTRACTS.md``),
this module follows the server:

* **Idempotency token.** python-nomad 2.1's ``Job.dispatch_job`` with its idempotency-token argument sends the body key
  ``idempotency_token``, which the server silently ignores. :meth:`NomadClient.dispatch`
  sends the token as the query parameter ``?idempotency_token=``.
* **A 200 does not prove the child exists** (issue 26690). :meth:`NomadClient.dispatch`
  reads the child back; on 404 it dispatches once more with the same token to learn the
  real child's ID and reads that back. Only a confirmed child is returned.
* **Namespace.** python-nomad adds ``namespace=`` only for some endpoints (not ``/v1/var``,
  ``/v1/vars``, ``/v1/evaluation``); every call here passes it explicitly.
* **Environment.** python-nomad falls back to ``NOMAD_ADDR``/``NOMAD_TOKEN``/... from
  ``os.environ`` for any argument left empty, and disables TLS verification by default.
  The client pins the settings it was given on every endpoint object instead.
* **Blocking queries** get a timeout longer than their ``wait`` (python-nomad's default is 5 s).
* **List filters are go-bexpr** (no ``>``): "what changed since index N" is an unfiltered list
  compared client side, or the event stream (:meth:`NomadClient.event_stream`).
* **Errors are classified by message, not status** (:func:`classify`): almost every write
  failure is an HTTP 500; "no leader" is transient, "parameterized job not found" is not.

Errors raised: :class:`~reconciler.clients.errors.TransientError` (``system="nomad"``),
:class:`~reconciler.clients.errors.PermanentError`, :class:`~reconciler.clients.errors.NotFoundError`,
and :class:`CasConflict` (a ``TransientError`` carrying the variable that won) from
:meth:`NomadClient.put_variable` / :meth:`NomadClient.delete_variable`.
"""

from __future__ import annotations

import base64
import time
import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping, TypeVar

import nomad
import requests
from nomad.api.base import Requester
from nomad.api.exceptions import BaseNomadException

from reconciler.clients.errors import ConflictError, NotFoundError, PermanentError, ReconcilerError, TransientError
from reconciler.clients.http import pooled_session
from reconciler.clients.nomad_events import EVENT_HEARTBEAT, TOPICS, EventStream
from reconciler.settings import NomadSettings
from reconciler.tls import TLSConfig, ssl_problem

__all__ = ["NomadClient", "DispatchResult", "CasConflict", "classify", "translate"]

SYSTEM = "nomad"
READ_ATTEMPTS = 3
"""Tries of an idempotent read before a transient failure is passed on."""
T = TypeVar("T")


# -- errors --------------------------------------------------------------------------------


class CasConflict(ConflictError):
    """A Variables write lost a check-and-set race; ``current`` is the variable as it now is (or None)."""

    def __init__(self, message: str, current: dict[str, Any] | None) -> None:
        super().__init__(message, system=SYSTEM)
        self.current = current


#: Ordered (first match wins): lower-case substrings of the server's message -> error class.
#: Signs of an unhealthy cluster come first, so "rpc error: No cluster leader" stays transient;
#: then the messages that say the request itself is wrong. Any other 5xx is transient.
ERROR_PATTERNS: tuple[tuple[str, type[ReconcilerError]], ...] = (
    ("no cluster leader", TransientError),
    ("no leader", TransientError),
    ("leadership lost", TransientError),
    ("not the leader", TransientError),
    ("no path to region", TransientError),
    ("raft apply failed", TransientError),
    ("timed out", TransientError),
    ("i/o timeout", TransientError),
    ("connection refused", TransientError),
    ("connection reset", TransientError),
    ("unexpected eof", TransientError),
    ("too many requests", TransientError),
    ("rate limit", TransientError),
    ("parameterized job not found", PermanentError),
    ("parent job not found", PermanentError),
    ("job not found", PermanentError),
    ("not a parameterized job", PermanentError),
    ("is stopped", PermanentError),
    ("job stopped", PermanentError),
    ("unpermitted metadata", PermanentError),
    ("required meta", PermanentError),
    ("duplicate key", PermanentError),
    ("payload", PermanentError),
    ("enforcing job modify index", PermanentError),
    ("can't be submitted", PermanentError),
    ("cannot update", PermanentError),
    ("is read-only", PermanentError),
    ("missing job", PermanentError),
    ("permission denied", PermanentError),
    ("acl token not found", PermanentError),
)


def classify(status: int | None, message: str) -> type[ReconcilerError]:
    """Which error a Nomad failure is: ``status`` None means no HTTP reply at all (transient)."""
    if status is None:
        return TransientError
    if status == 404:
        return NotFoundError
    if status in (401, 403):
        return PermanentError
    if status in (409, 429):
        return TransientError
    text = message.lower()
    if status >= 500:
        for needle, kind in ERROR_PATTERNS:
            if needle in text:
                return kind
        return TransientError
    return PermanentError


def translate(exc: Exception, *, what: str, addr: str) -> ReconcilerError:
    """A python-nomad or requests exception -> the project's error (the caller chains ``exc``)."""
    status, text = _reply_of(exc)
    kind = classify(status, text)
    if status in (401, 403):
        return PermanentError(
            f"Nomad at {addr} refused the token: {text or status} (during {what}); "
            "check NOMAD_TOKEN and its ACL policy",
            system=SYSTEM,
        )
    if status is None:
        cause = getattr(exc, "nomad_resp", None)
        ssl_error = next((e for e in (exc, cause) if isinstance(e, requests.exceptions.SSLError)), None)
        if ssl_error is not None:
            return TransientError(f"Nomad at {addr} during {what}: {ssl_problem(ssl_error, 'NOMAD')}", system=SYSTEM)
        return TransientError(f"Nomad at {addr} did not answer {what}: {text}; will try again", system=SYSTEM)
    if kind is NotFoundError:
        return NotFoundError(f"Nomad has no such object ({what}): {text or 'not found'}", system=SYSTEM)
    if kind is TransientError:
        return TransientError(
            f"Nomad at {addr} could not {what} right now: HTTP {status}: {text}; will try again", system=SYSTEM
        )
    return kind(f"Nomad refused to {what}: HTTP {status}: {text}", system=SYSTEM)


def _reply_of(exc: Exception) -> tuple[int | None, str]:
    resp = getattr(exc, "nomad_resp", None)
    if isinstance(resp, requests.Response):
        return resp.status_code, resp.text.strip()
    cause = resp if isinstance(resp, BaseException) else exc
    return None, f"{type(cause).__name__}: {cause}"


# -- results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DispatchResult:
    """A dispatch that Nomad confirmed by reading the child back."""

    job_id: str
    eval_id: str
    """Empty when Nomad returned a child that already carried the idempotency token."""
    existing: bool = False
    """True when no new child was created (the token matched an existing one)."""


# -- the client -------------------------------------------------------------------------------------


class NomadClient:
    """The reconciler's verbs on Nomad (see :class:`reconciler.ports.NomadAPI`)."""

    def __init__(self, settings: NomadSettings, *, session: requests.Session | None = None) -> None:
        self.settings = settings
        self.addr = settings.addr.rstrip("/")
        self._tls = getattr(settings, "tls", None) or TLSConfig()
        self._session = session or pooled_session(self.addr, pool=10, tls=self._tls)
        self._nomad = nomad.Nomad(
            address=self.addr,
            token=settings.token,
            namespace=settings.namespace,
            region=settings.region,
            timeout=settings.timeout,  # type: ignore[arg-type]
            verify=self._tls.verify(),
            session=self._session,
        )
        self._pin_settings()

    def _pin_settings(self) -> None:
        """Undo python-nomad's fallbacks to ``os.environ`` and its disabled TLS verification."""
        for requester in _requesters(self._nomad):
            requester.address = self.addr
            requester.token = self.settings.token
            requester.namespace = self.settings.namespace
            requester.region = self.settings.region
            requester.timeout = self.settings.timeout
            # python-nomad passes verify/cert per request (winning over the session's): the TLS settings, always.
            requester.verify = self._tls.verify()
            requester.cert = self._tls.cert() or ()
            requester.session = self._session

    # -- plumbing ------------------------------------------------------------------------

    def _lib(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call a python-nomad method, translating its exceptions."""
        try:
            return fn(*args, **kwargs)
        except (BaseNomadException, requests.RequestException) as exc:
            raise translate(exc, what=what, addr=self.addr) from exc

    def _lib_read(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``_lib`` for idempotent reads: a transient failure is tried again a few times, briefly."""
        delay = 0.1
        for attempt in range(READ_ATTEMPTS):
            try:
                return self._lib(what, fn, *args, **kwargs)
            except ConflictError:
                raise
            except TransientError:
                if attempt == READ_ATTEMPTS - 1:
                    raise
                time.sleep(delay)
                delay *= 3
        raise AssertionError("unreachable")

    def _raw(
        self,
        what: str,
        api: Requester,
        *path: str,
        method: str,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        timeout: float | None = None,
    ) -> requests.Response:
        """A request python-nomad cannot express, sent through its requester (token, region, errors).

        GETs are idempotent and retried briefly on transient failures; writes are not.
        """
        query = {"namespace": self.settings.namespace, **(params or {})}
        kwargs: dict[str, Any] = {"method": method, "params": query, "timeout": timeout or self.settings.timeout}
        if body is not None:
            kwargs["json"] = body
        call = self._lib_read if method.lower() == "get" else self._lib
        return call(what, api.request, *path, **kwargs)

    @staticmethod
    def _status(exc: ReconcilerError) -> int | None:
        cause = exc.__cause__
        status, _ = _reply_of(cause) if isinstance(cause, Exception) else (None, "")
        return status

    # -- dispatch ----------------------------------------------------------------------------

    def dispatch(
        self,
        parent: str,
        *,
        meta: dict[str, str],
        payload: bytes,
        idempotency_token: str,
        id_prefix_template: str,
    ) -> DispatchResult:
        """Dispatch ``parent`` once per ``idempotency_token`` and return the child Nomad confirms.

        The token travels as the query parameter. The call is not retried here: a
        transient failure raises, and the caller dispatches again later with the
        same token (safe while the child exists; after garbage collection the token
        protects nothing). A 200 is confirmed by reading the child back; on 404 the
        dispatch is repeated once with the same token to learn the real child's ID.
        """
        if not idempotency_token:
            raise ValueError("dispatch needs an idempotency token; without one a retry runs the work twice")
        first = self._dispatch_once(parent, meta, payload, idempotency_token, id_prefix_template)
        if self._confirm(parent, first.job_id, idempotency_token):
            return first
        second = self._dispatch_once(parent, meta, payload, idempotency_token, id_prefix_template)
        if self._confirm(parent, second.job_id, idempotency_token):
            return second
        raise TransientError(
            f"Nomad acknowledged dispatching {parent} with token {idempotency_token} as {first.job_id} and then "
            f"{second.job_id}, but neither child can be read back; dispatch again later with the same token",
            system=SYSTEM,
        )

    def _dispatch_once(
        self, parent: str, meta: dict[str, str], payload: bytes, token: str, template: str
    ) -> DispatchResult:
        body: dict[str, Any] = {"Meta": {k: str(v) for k, v in meta.items()}}
        if payload:
            body["Payload"] = base64.b64encode(payload).decode("ascii")
        if template:
            body["IdPrefixTemplate"] = template
        resp = self._raw(
            f"dispatch {parent}",
            self._nomad.job,
            parent,
            "dispatch",
            method="post",
            params={"idempotency_token": token},
            body=body,
        )
        reply = resp.json()
        eval_id = str(reply.get("EvalID") or "")
        return DispatchResult(job_id=str(reply["DispatchedJobID"]), eval_id=eval_id, existing=not eval_id)

    def _confirm(self, parent: str, job_id: str, token: str) -> bool:
        """Whether ``job_id`` exists as ``parent``'s child carrying ``token``."""
        child = self.job(job_id)
        if child is None:
            return False
        if child.get("ParentID") != parent or child.get("DispatchIdempotencyToken", token) != token:
            raise PermanentError(
                f"Nomad answered a dispatch of {parent} (token {token}) with {job_id}, "
                "which is not that dispatch's child",
                system=SYSTEM,
            )
        return True

    # -- reads ---------------------------------------------------------------------------------

    def job(self, job_id: str) -> dict[str, Any] | None:
        """The job, or None when Nomad has no such job (never registered, purged or garbage-collected)."""
        try:
            return self._lib_read(f"read job {job_id}", self._nomad.job.get_job, job_id, namespace=self.settings.namespace)
        except NotFoundError:
            return None

    def children(self, parent: str, *, meta: bool = True) -> list[dict[str, Any]]:
        """List stubs of ``parent``'s dispatched children (with ``Meta`` when ``meta``)."""
        stubs = self._lib_read(
            f"list children of {parent}",
            self._nomad.jobs.get_jobs,
            prefix=f"{parent}/dispatch-",
            namespace=self.settings.namespace,
            meta=True if meta else None,
        )
        return [s for s in stubs if s.get("ParentID") == parent]

    def allocations(self, job_id: str) -> list[dict[str, Any]]:
        """The job's allocation stubs (empty when the job is gone)."""
        try:
            return self._lib_read(
                f"list allocations of {job_id}",
                self._nomad.job.get_allocations,
                job_id,
                namespace=self.settings.namespace,
            )
        except NotFoundError:
            return []

    def allocation_changes(self, index: int) -> tuple[int, set[str]]:
        """Jobs whose allocations changed after ``index`` (one non-blocking list), and the new index.

        Lets the loop look only at the children that moved instead of polling every one. The list is
        unfiltered and the ``ModifyIndex`` comparison is ours: go-bexpr has no relational operators, and a
        real Nomad answers a filter comparing ``ModifyIndex`` that way with a 400 (go-bexpr ``grammar/grammar.peg``; Nomad
        ``nomad/state/paginator/paginator.go``).
        """
        resp = self._raw("list allocations", self._nomad.allocations, method="get", params={"task_states": "false"})
        new_index = int(resp.headers.get("X-Nomad-Index") or index)
        changed = {str(a.get("JobID")) for a in resp.json() or [] if int(a.get("ModifyIndex") or 0) > index}
        return new_index, changed

    def variable_paths(self, prefix: str) -> set[str]:
        """Paths of the variables under ``prefix`` (metadata only, one list)."""
        resp = self._raw("list variables", self._nomad.variables, method="get", params={"prefix": prefix})
        return {str(v.get("Path")) for v in resp.json() or []}

    def allocation(self, alloc_id: str) -> dict[str, Any] | None:
        """One full allocation, or None."""
        try:
            return self._raw(f"read allocation {alloc_id}", self._nomad.allocation, alloc_id, method="get").json()
        except NotFoundError:
            return None

    def evaluations(self, job_id: str) -> list[dict[str, Any]]:
        """The job's evaluations: why a dispatched job has not started (``FailedTGAllocs``)."""
        try:
            return self._lib_read(
                f"list evaluations of {job_id}",
                self._nomad.job.get_evaluations,
                job_id,
                namespace=self.settings.namespace,
            )
        except NotFoundError:
            return []

    def log_tail(self, alloc_id: str, task: str, *, type: str = "stdout", max_bytes: int = 4096) -> str:
        """The last ``max_bytes`` of a task's log; "" when the log does not exist (yet)."""
        try:
            resp = self._raw(
                f"read {type} of allocation {alloc_id}",
                self._nomad.client.stream_logs,
                alloc_id,
                method="get",
                params={"task": task, "type": type, "plain": "true", "origin": "end", "offset": max_bytes},
            )
        except NotFoundError:
            return ""
        text = resp.content[-max_bytes:].decode("utf-8", errors="replace")
        return text.lstrip("\ufffd")

    def wait_allocations(self, index: int, wait_seconds: float) -> int:
        """Block until any allocation changes past ``index`` (or ``wait_seconds`` pass); return the new index."""
        return self.wait_allocation_changes(index, wait_seconds)[0]

    def wait_allocation_changes(self, index: int, wait_seconds: float) -> tuple[int, dict[str, set[str]]]:
        """Block until any allocation changes past ``index`` (or ``wait_seconds`` pass): the new index
        and, for each job whose allocations changed, the client statuses they changed to.

        The blocking list is unfiltered and the ``ModifyIndex > index`` comparison is done here (a
        real Nomad refuses that filter with 400). An allocation only placed (``pending``) is left
        out: nothing about its run can be decided yet. The reconciler's own watch is the event
        stream (:meth:`event_stream`); this remains for callers that want one blocking read.
        """
        wait = max(1, int(wait_seconds))
        timeout = wait + wait / 16 + self.settings.timeout  # the server adds up to wait/16 of jitter
        since = max(0, int(index))
        resp = self._raw(
            "watch allocations",
            self._nomad.allocations,
            method="get",
            params={"index": since, "wait": f"{wait}s", "task_states": "false"},
            timeout=timeout,
        )
        new_index = int(resp.headers.get("X-Nomad-Index") or index)
        changed: dict[str, set[str]] = {}
        try:
            for alloc in resp.json() or []:
                status = str(alloc.get("ClientStatus") or "")
                if int(alloc.get("ModifyIndex") or 0) > since and status != "pending":
                    changed.setdefault(str(alloc.get("JobID")), set()).add(status)
        except ValueError:
            changed = {}
        return new_index, changed

    def event_stream(self, index: int) -> EventStream:
        """Open the namespace's ``Allocation`` and ``Job`` event stream from ``index`` (see :mod:`.nomad_events`).

        One connection serves every child; the read timeout is the server's heartbeat period plus
        slack, so a stream that went silent is noticed as a drop. Opening fails like any read
        (TransientError, PermanentError for 400/403); iterating raises TransientError on a drop.
        """
        params = {"topic": list(TOPICS), "namespace": self.settings.namespace, "index": max(0, int(index))}
        read_timeout = EVENT_HEARTBEAT + max(5.0, self.settings.timeout)
        resp = self._lib(
            "open the event stream",
            self._nomad.event.stream.request,
            method="get",
            params=params,
            stream=True,
            timeout=(self.settings.timeout, read_timeout),
        )
        return EventStream(resp, max(0, int(index)), system=SYSTEM)

    # -- writes --------------------------------------------------------------------------------

    def stop(self, job_id: str, *, purge: bool = False) -> None:
        """Stop the job (``purge``: remove it at once). A job that is already gone is fine."""
        try:
            self._lib(
                f"stop job {job_id}",
                self._nomad.job.deregister_job,
                job_id,
                namespace=self.settings.namespace,
                purge=True if purge else None,
            )
        except NotFoundError:
            return

    def parse_hcl(self, hcl: str, variables: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Nomad's own parse of a jobspec (canonicalized job JSON); ``variables`` override its defaults."""
        body = {"JobHCL": hcl, "Canonicalize": True, "Variables": _hcl_variables(variables or {})}
        return self._raw("parse a jobspec", self._nomad.jobs, "parse", method="post", body=body).json()

    def register(self, job: Mapping[str, Any], *, enforce_index: int | None = None) -> dict[str, Any]:
        """Register ``job``; ``enforce_index=0`` only creates, ``N`` only updates the version with that index.

        The job lands in this client's namespace: Nomad lets the ``namespace`` query
        parameter win over the job's own ``Namespace``.
        """
        body: dict[str, Any] = {"Job": dict(job)}
        if enforce_index is not None:
            body["EnforceIndex"] = True
            body["JobModifyIndex"] = int(enforce_index)
        return self._lib(f"register job {job.get('ID')}", self._nomad.jobs.register_job, body)

    # -- variables -------------------------------------------------------------------------------

    def variable(self, path: str) -> dict[str, Any] | None:
        """The variable at ``path`` (with ``Items`` and ``ModifyIndex``), or None."""
        try:
            return self._lib_read(
                f"read variable {path}", self._nomad.variable.get_variable, path, namespace=self.settings.namespace
            )
        except NotFoundError:
            return None

    def put_variable(self, path: str, items: Mapping[str, str], *, cas: int | None) -> dict[str, Any]:
        """Write the variable; ``cas=0`` creates only, ``cas=N`` updates only version N, None overwrites.

        Raises :class:`CasConflict` (with the current variable) when the check fails.
        """
        payload = {"Namespace": self.settings.namespace, "Path": path, "Items": {k: str(v) for k, v in items.items()}}
        try:
            return self._lib(
                f"write variable {path}",
                self._nomad.variable.create_variable,
                path,
                payload,
                namespace=self.settings.namespace,
                cas=cas,
            )
        except TransientError as exc:
            self._raise_conflict(exc, path)
            raise

    def delete_variable(self, path: str, *, cas: int | None = None) -> None:
        """Delete the variable (``cas=N``: only version N). Raises :class:`CasConflict` when the check fails."""
        try:
            self._lib(
                f"delete variable {path}",
                self._nomad.variable.delete_variable,
                path,
                namespace=self.settings.namespace,
                cas=cas,
            )
        except TransientError as exc:
            self._raise_conflict(exc, path)
            raise

    def _raise_conflict(self, exc: TransientError, path: str) -> None:
        if self._status(exc) != 409:
            return
        resp = getattr(exc.__cause__, "nomad_resp", None)
        current = None
        if isinstance(resp, requests.Response):
            try:
                current = resp.json()
            except ValueError:
                current = None
        held = current is None
        raise CasConflict(
            f"variable {path} changed under us (check-and-set failed"
            + ("; it is locked" if held else "")
            + "); read it again",
            current,
        ) from exc

    def lock_acquire(self, path: str, ttl: float, lock_delay: float, *, holder: str | None = None) -> str | None:
        """Take the lock on variable ``path``; its ID, or None when someone else holds it (or LockDelay runs).

        Acquiring overwrites the variable's Items (``nomad/locks.go``): ``holder`` is written as item
        ``holder`` so a standby can say who leads (Nomad shows the lock ID to nobody but its holder).
        """
        body: dict[str, Any] = {
            "Namespace": self.settings.namespace,
            "Path": path,
            "Lock": {"TTL": _seconds(ttl), "LockDelay": _seconds(lock_delay)},
        }
        if holder:
            body["Items"] = {"holder": holder}
        try:
            resp = self._raw(
                f"lock variable {path}",
                self._nomad.variable,
                path,
                method="put",
                params={"lock-acquire": ""},
                body=body,
            )
        except TransientError as exc:
            if self._status(exc) == 409:
                return None
            raise
        return str(((resp.json() or {}).get("Lock") or {}).get("ID") or "") or None

    def lock_renew(self, path: str, lock_id: str) -> bool:
        """Renew the lock; False when it is no longer ours (expired, released, taken)."""
        body = {"Namespace": self.settings.namespace, "Path": path, "Lock": {"ID": lock_id}}
        try:
            self._raw(
                f"renew lock on {path}", self._nomad.variable, path, method="put", params={"lock-renew": ""}, body=body
            )
        except (TransientError, NotFoundError) as exc:
            if self._status(exc) in (404, 409):
                return False
            raise
        return True

    def lock_release(self, path: str, lock_id: str) -> bool:
        """Release the lock; False when it was not ours any more (nothing to do then)."""
        body = {"Namespace": self.settings.namespace, "Path": path, "Lock": {"ID": lock_id}}
        try:
            self._raw(
                f"release lock on {path}",
                self._nomad.variable,
                path,
                method="put",
                params={"lock-release": ""},
                body=body,
            )
        except (TransientError, NotFoundError) as exc:
            if self._status(exc) in (404, 409):
                return False
            if self._status(exc) == 500 and "doesn't hold a lock" in str(exc):
                return False  # nomad/state/state_store_variables.go VarLockRelease: nobody holds it
            raise
        return True


# -- helpers -------------------------------------------------------------------------------------


def _requesters(client: Any) -> list[Requester]:
    """Every python-nomad endpoint object reachable from ``client`` (one level of nesting)."""
    found: list[Requester] = []
    for value in vars(client).values():
        if isinstance(value, Requester):
            found.append(value)
        elif hasattr(value, "__dict__") and not isinstance(value, (str, bytes, requests.Session)):
            found.extend(v for v in vars(value).values() if isinstance(v, Requester))
    return found


def _seconds(value: float) -> str:
    """Seconds -> a Go duration string."""
    if float(value).is_integer():
        return f"{int(value)}s"
    return f"{int(round(value * 1000))}ms"


def _hcl_variables(variables: Mapping[str, str]) -> str:
    """``name = "value"`` lines, escaped for HCL (``${`` and ``%{`` would be templates)."""
    lines = []
    for name, value in variables.items():
        literal = json.dumps(str(value)).replace("${", "$${").replace("%{", "%%{")
        lines.append(f"{name} = {literal}")
    return "\n".join(lines) + ("\n" if lines else "")
