"""Pooled HTTP sessions for the Nomad, Vault and forge clients.

``requests`` re-reads the proxy, CA bundle and netrc settings of the process
environment on every request (``trust_env``): a tenth of the reconciler's CPU
under load. The environment of a running service does not change, so a
session takes the proxy (``HTTP(S)_PROXY``/``NO_PROXY``) and CA bundle
(``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``) once, for the address it talks to,
and then stops looking. ``~/.netrc`` is never used: every client authenticates
with its own token header.
"""

from __future__ import annotations

import os
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from reconciler.clients.tls_session import apply_tls
from reconciler.tls import TLSConfig


def pooled_session(url: str | None, *, auth: Any = None, pool: int = 32, tls: TLSConfig | None = None) -> requests.Session:
    """A session for ``url`` with ``pool`` keep-alive connections and the environment read once.

    ``tls`` (the system's ``*_CACERT`` ... settings) wins over ``REQUESTS_CA_BUNDLE``.
    """
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    if url:
        session.proxies.update(requests.utils.get_environ_proxies(url))
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if bundle:
            session.verify = bundle
        session.trust_env = False
    if tls is not None and tls.configured:
        apply_tls(tls, session, pool=pool)
    if auth is not None:
        session.auth = auth
    return session
