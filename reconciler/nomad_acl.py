"""Every Nomad call the project makes, and the ACL capability Nomad checks for it.

One table, so the shipped ACL policies (``jobspecs/nomad-acl/``) can be checked against what
the code really calls (``tests/test_nomad_acl.py``). Capabilities come from Nomad's source
(``acl/policy.go``, ``nomad/*_endpoint.go``; CONTRACTS.md's table): for each call, ``any_of``
lists the capabilities of which one suffices; the first is the one the shipped policy grants
(the narrowest the server supports).

Stopping a job: Nomad >= 2.0 checks ``submit-job``, ``purge-job`` or ``deregister-job``
(``nomad/job_endpoint.go`` ``Deregister``); Nomad 1.x only ``submit-job`` and refuses a policy
naming ``deregister-job`` ("Invalid namespace capability"). The shipped reconciler policy grants
``deregister-job``; ``reconciler-nomad1.hcl`` is the documented 1.x variant (``submit-job``, which
also lets the token register jobs), and ``jobspecs apply`` falls back to it on a 1.x server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Scope = Literal["namespace", "variable", "host_volume", "management", "none"]
Who = Literal["reconciler", "operator"]


@dataclass(frozen=True)
class NomadCall:
    who: Who
    """Whose token makes the call: the reconciler's own, or the operator's (``jobspecs apply``)."""
    call: str
    """The code's verb (``NomadClient`` method, or what calls the endpoint)."""
    http: str
    scope: Scope
    any_of: tuple[str, ...] = ()
    path: str = ""
    """For ``variable``: a variable path the call touches; for ``host_volume``: the volume source."""


CALLS: tuple[NomadCall, ...] = (
    # -- the reconciler's token -------------------------------------------------------------------
    NomadCall("reconciler", "status leader (doctor, start-up check)", "GET /v1/status/leader", "none"),
    NomadCall("reconciler", "dispatch", "POST /v1/job/<parent>/dispatch", "namespace", ("dispatch-job",)),
    NomadCall("reconciler", "job", "GET /v1/job/<id>", "namespace", ("read-job",)),
    NomadCall("reconciler", "children", "GET /v1/jobs?prefix=&meta=true", "namespace", ("list-jobs",)),
    NomadCall("reconciler", "allocations", "GET /v1/job/<id>/allocations", "namespace", ("read-job",)),
    NomadCall("reconciler", "evaluations", "GET /v1/job/<id>/evaluations", "namespace", ("read-job",)),
    NomadCall("reconciler", "allocation", "GET /v1/allocation/<id>", "namespace", ("read-job",)),
    NomadCall("reconciler", "allocation_changes / wait_allocation_changes", "GET /v1/allocations", "namespace", ("read-job",)),
    NomadCall("reconciler", "event stream (watch)", "GET /v1/event/stream", "namespace", ("read-job",)),
    NomadCall("reconciler", "log_tail", "GET /v1/client/fs/logs/<alloc>", "namespace", ("read-logs", "read-fs")),
    NomadCall("reconciler", "stop", "DELETE /v1/job/<id>", "namespace", ("deregister-job", "submit-job", "purge-job")),
    NomadCall("reconciler", "variable (claim)", "GET /v1/var/reconciler/runs/<run>", "variable", ("read",), "reconciler/runs/x"),
    NomadCall("reconciler", "put_variable (claim)", "PUT /v1/var/reconciler/runs/<run>", "variable", ("write",), "reconciler/runs/x"),
    NomadCall("reconciler", "delete_variable (claim)", "DELETE /v1/var/reconciler/runs/<run>", "variable", ("destroy",), "reconciler/runs/x"),
    NomadCall("reconciler", "variable_paths (claims)", "GET /v1/vars?prefix=reconciler/runs/", "variable", ("list",), "reconciler/runs/x"),
    NomadCall("reconciler", "lock_acquire / lock_renew / lock_release", "PUT /v1/var/reconciler/leader?lock-*", "variable", ("write",), "reconciler/leader"),
    NomadCall("reconciler", "variable (leader holder)", "GET /v1/var/reconciler/leader", "variable", ("read",), "reconciler/leader"),
    NomadCall("reconciler", "variable (jobspec record, drift guard)", "GET /v1/var/reconciler/jobspecs/<job>", "variable", ("read",), "reconciler/jobspecs/vault-runner"),
    # -- the operator's token (``reconciler jobspecs apply``) ----------------------------------------
    NomadCall("operator", "parse_hcl", "POST /v1/jobs/parse", "namespace", ("parse-job", "submit-job")),
    NomadCall("operator", "job", "GET /v1/job/<id>", "namespace", ("read-job",)),
    NomadCall("operator", "register", "POST /v1/jobs", "namespace", ("submit-job",)),
    NomadCall("operator", "register reconciler (state volume, writable)", "POST /v1/jobs", "host_volume", ("mount-readwrite",), "reconciler-state"),
    NomadCall("operator", "register reconciler, sidecar (factory volume, read-only)", "POST /v1/jobs", "host_volume", ("mount-readonly", "mount-readwrite"), "factory"),
    NomadCall("operator", "register sidecar (projects volume, read-only)", "POST /v1/jobs", "host_volume", ("mount-readonly", "mount-readwrite"), "projects"),
    NomadCall("operator", "variable (jobspec record)", "GET /v1/var/reconciler/jobspecs/<job>", "variable", ("read",), "reconciler/jobspecs/vault-runner"),
    NomadCall("operator", "put_variable (jobspec record)", "PUT /v1/var/reconciler/jobspecs/<job>", "variable", ("write",), "reconciler/jobspecs/vault-runner"),
    NomadCall("operator", "ACL policies (read, write)", "GET|POST /v1/acl/policy/<name>", "management"),
)


def calls_of(who: Who) -> list[NomadCall]:
    return [c for c in CALLS if c.who == who]
