"""Wiring: settings in, a ready reconciler out. The only place clients are built."""

from __future__ import annotations

import time
from typing import Any, Callable

from reconciler.context import Context
from reconciler.loop import Reconciler
from reconciler.settings import Settings, SettingsError
from store.runs import RunStore


def open_store(settings: Settings, clock: Callable[[], float] = time.time) -> RunStore:
    return RunStore(settings.store.db, clock)


def build_context(settings: Settings, store: RunStore, clock: Callable[[], float] = time.time) -> Context:
    from reconciler.clients.forge import ForgeClient
    from reconciler.clients.nomad import NomadClient
    from reconciler.clients.git_env import git_auth
    from reconciler.clients.opsrepo import OpsRepo
    from reconciler.clients.vault import VaultClient

    remote = settings.ops_remote
    if not remote:
        raise SettingsError(
            "no ops repo remote: set OPS_REPO_REMOTE (any URL git accepts), or FORGE_URL and FORGE_OPS_REPO"
        )
    from reconciler.metrics import Metrics

    from reconciler.credentials import NOMAD_HEADER, VAULT_HEADER, HeaderAuth, TokenSource

    from reconciler.clients.http import pooled_session

    def session_for(url: str | None, path: Any, header: str, what: str, tls: Any = None) -> Any:
        """A pooled session sized for the step workers, with the system's TLS settings; with a
        token file, it sends the token current at each request (re-read when the file changes)."""
        source = TokenSource.of(None, path, what=what) if path else None
        return pooled_session(url, auth=HeaderAuth(source, header) if source is not None else None, tls=tls)

    nomad_session = session_for(settings.nomad.addr, settings.nomad.token_file, NOMAD_HEADER, "NOMAD_TOKEN_FILE", settings.nomad.tls)
    vault_session = session_for(settings.vault.addr, settings.vault.token_file, VAULT_HEADER, "VAULT_TOKEN_FILE", settings.vault.tls)
    forge_source = TokenSource.of(None, settings.forge.token_file, what="FORGE_TOKEN_FILE") if settings.forge.token_file else None
    forge = (
        ForgeClient(settings.forge, token_source=forge_source, session=session_for(settings.forge.url, None, "", "forge"))
        if settings.forge.url and (settings.forge.token or forge_source)
        else None
    )
    metrics = Metrics(interval=settings.loop.interval)
    store.observers.append(lambda run, trig, src, dest: metrics.transition(run.kind, trig, src, dest))
    return Context(
        metrics=metrics,
        settings=settings,
        store=store,
        nomad=NomadClient(settings.nomad, session=nomad_session),
        vault=VaultClient(settings.vault, session=vault_session),
        ops=OpsRepo(settings.ops, remote, auth=git_auth(settings, remote)),
        forge=forge,
        clock=clock,
    )


def build_reconciler(settings: Settings, clock: Callable[[], float] = time.time) -> Reconciler:
    store = open_store(settings, clock)
    return Reconciler(build_context(settings, store, clock))
