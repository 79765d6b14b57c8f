"""Wiring: settings in, a ready reconciler out. The only place clients are built."""

from __future__ import annotations

import time
from typing import Callable

from reconciler.context import Context
from reconciler.loop import Reconciler
from reconciler.settings import Settings, SettingsError
from store.runs import RunStore


def open_store(settings: Settings, clock: Callable[[], float] = time.time) -> RunStore:
    return RunStore(settings.store.db, clock)


def build_context(settings: Settings, store: RunStore, clock: Callable[[], float] = time.time) -> Context:
    from reconciler.clients.forge import ForgeClient
    from reconciler.clients.nomad import NomadClient
    from reconciler.clients.opsrepo import OpsRepo
    from reconciler.clients.vault import VaultClient

    remote = settings.ops_remote
    if not remote:
        raise SettingsError(
            "no ops repo remote: set OPS_REPO_REMOTE (any URL git accepts), or FORGE_URL and FORGE_OPS_REPO"
        )
    from reconciler.metrics import Metrics

    forge = ForgeClient(settings.forge) if settings.forge.url and settings.forge.token else None
    metrics = Metrics(interval=settings.loop.interval)
    store.observers.append(lambda run, trig, src, dest: metrics.transition(run.kind, trig, src, dest))
    return Context(
        metrics=metrics,
        settings=settings,
        store=store,
        nomad=NomadClient(settings.nomad),
        vault=VaultClient(settings.vault),
        ops=OpsRepo(settings.ops, remote),
        forge=forge,
        clock=clock,
    )


def build_reconciler(settings: Settings, clock: Callable[[], float] = time.time) -> Reconciler:
    store = open_store(settings, clock)
    return Reconciler(build_context(settings, store, clock))
