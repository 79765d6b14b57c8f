"""Before ``reconciler run`` enters its loop: do Nomad, Vault and the forge answer?

The parts of ``doctor`` that need no operator token and take no time: the first check of
each system (reachable, unsealed, token accepted by the forge), and the ops remote through
the reconciler's own git client and credentials (its clone made ready, ``git ls-remote``). A failure is logged at
ERROR with the address and the fix, and the checks are retried with backoff until they
pass or the service is told to stop; the loop never starts against a server it cannot
reach (a wrong ``NOMAD_ADDR`` would otherwise look like "another reconciler leads").
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Iterator

import requests

from reconciler import doctor
from reconciler.clients.errors import PermanentError, TransientError
from reconciler.clients.opsrepo import redact
from reconciler.settings import Settings

log = logging.getLogger("reconciler.preflight")

BACKOFF_START = 1.0
BACKOFF_MAX = 30.0


def failures(
    settings: Settings, *, session: requests.Session | None = None, ops: Any = None, check_servers: bool = True
) -> list[doctor.Check]:
    """The failed first checks of Nomad, Vault, (when configured) the forge, and (given ``ops``, the
    reconciler's ops repo client) the ops remote."""
    http = session or requests.Session()
    settings, problems = doctor._resolve_token_files(settings)
    out = [c for c in problems if not c.ok]
    firsts: list[Iterator[doctor.Check]] = []
    if check_servers:
        firsts += [doctor._nomad_checks(settings, http), doctor._vault_checks(settings, http)]
    if check_servers and settings.forge.url and settings.forge.token:
        firsts.append(doctor._forge_checks(settings, http))
    for checks in firsts:
        first = next(checks, None)
        if first is not None and not first.ok:
            out.append(first)
    if ops is not None:
        try:
            ops.ensure_ready()
            if ops.remote_head() is None:
                out.append(doctor.Check(False, "git", f"ops remote {redact(settings.ops_remote or '')} has no branch {settings.ops.primary_branch}", "push the branch or set PRIMARY_BRANCH"))
        except (TransientError, PermanentError) as exc:
            out.append(doctor.Check(False, "git", f"ops remote {redact(settings.ops_remote or '')} not reachable: {exc}", "check OPS_REPO_REMOTE and the credentials git uses for it"))
    return out


def wait_until_reachable(
    settings: Settings,
    stop: threading.Event,
    *,
    check: Callable[[Settings], list[doctor.Check]] = failures,
    backoff_max: float = BACKOFF_MAX,
) -> bool:
    """Check until everything answers (True) or ``stop`` is set (False); ERROR per failure, backoff between."""
    delay = BACKOFF_START
    while not stop.is_set():
        failed = check(settings)
        if not failed:
            return True
        for c in failed:
            log.error("start-up check failed: %s %s; fix: %s (retrying in %g s)", c.system, c.what, c.fix, delay)
        if stop.wait(delay):
            return False
        delay = min(backoff_max, delay * 2)
    return False
