"""A :class:`reconciler.tls.TLSConfig` put on a ``requests`` session (the clients' and the runner's)."""

from __future__ import annotations

from typing import Any

import requests
from requests.adapters import HTTPAdapter

from reconciler.tls import TLSConfig


def apply_tls(tls: TLSConfig, session: requests.Session, *, pool: int = 10) -> requests.Session:
    """Set ``verify`` and ``cert`` on ``session``; with a server name, mount an adapter that sends and checks it."""
    session.verify = tls.verify()
    cert = tls.cert()
    if cert is not None:
        session.cert = cert
    if tls.server_name:
        session.mount("https://", _ServerNameAdapter(tls.server_name, pool_connections=4, pool_maxsize=pool))
    return session


class _ServerNameAdapter(HTTPAdapter):
    """Sends ``server_name`` as SNI and checks the certificate against it (``*_TLS_SERVER_NAME``)."""

    def __init__(self, server_name: str, **kw: Any) -> None:
        self._server_name = server_name
        super().__init__(**kw)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["server_hostname"] = self._server_name
        kwargs["assert_hostname"] = self._server_name
        super().init_poolmanager(*args, **kwargs)
