"""One TLS configuration for every HTTP client the project ships, read as the vault and nomad CLIs read it.

``VAULT_CACERT``, ``VAULT_CAPATH``, ``VAULT_CLIENT_CERT``, ``VAULT_CLIENT_KEY``,
``VAULT_TLS_SERVER_NAME``, ``VAULT_SKIP_VERIFY`` and the same six with ``NOMAD_``:

* ``CACERT``: a PEM file of the CA(s) to trust instead of the system roots; it wins over ``CAPATH``;
* ``CAPATH``: a directory of PEM files, every one loaded (no OpenSSL hash names needed,
  as with the CLIs); the bundle is built once per directory in a temporary file (CA
  certificates are public);
* ``CLIENT_CERT`` / ``CLIENT_KEY``: a client certificate for listeners that require one;
* ``TLS_SERVER_NAME``: the name sent as SNI and checked against the server certificate;
* ``SKIP_VERIFY``: a boolean (``1``, ``true``, ...); never verifies anything: for a lab only.

Plain data and the standard library only (the decision code may read settings that hold it);
``reconciler.clients.tls_session.apply_tls`` puts it on a ``requests`` session. ``verify``/``cert``
are also handed to libraries that pass them per request (hvac, python-nomad), which would
otherwise win over the session's.
"""

from __future__ import annotations

import functools
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping


_TRUE = ("1", "t", "true", "y", "yes", "on")
_FALSE = ("", "0", "f", "false", "n", "no", "off")


class TLSConfigError(ValueError):
    """A TLS setting names a file that is not there, or a value that is not a boolean."""


@dataclass(frozen=True)
class TLSConfig:
    cacert: str | None = None
    capath: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    server_name: str | None = None
    skip_verify: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str], prefix: str) -> "TLSConfig":
        """``<prefix>_CACERT`` ... ``<prefix>_SKIP_VERIFY`` (``prefix`` is ``VAULT`` or ``NOMAD``); empty means unset."""

        def get(name: str) -> str | None:
            value = (env.get(f"{prefix}_{name}") or "").strip()
            return value or None

        skip = (env.get(f"{prefix}_SKIP_VERIFY") or "").strip().lower()
        if skip not in _TRUE + _FALSE:
            raise TLSConfigError(f"{prefix}_SKIP_VERIFY={skip!r} is not a boolean (use true or false)")
        return cls(
            cacert=get("CACERT"),
            capath=get("CAPATH"),
            client_cert=get("CLIENT_CERT"),
            client_key=get("CLIENT_KEY"),
            server_name=get("TLS_SERVER_NAME"),
            skip_verify=skip in _TRUE,
        )

    @property
    def configured(self) -> bool:
        return self != TLSConfig()

    def problems(self, prefix: str) -> list[str]:
        """What is wrong with the named files (each problem names its variable)."""
        out = []
        for name, value, want_dir in (
            ("CACERT", self.cacert, False),
            ("CAPATH", self.capath, True),
            ("CLIENT_CERT", self.client_cert, False),
            ("CLIENT_KEY", self.client_key, False),
        ):
            if value and not (Path(value).is_dir() if want_dir else Path(value).is_file()):
                out.append(f"{prefix}_{name}={value} is not a readable {'directory' if want_dir else 'file'}")
        if bool(self.client_cert) != bool(self.client_key):
            out.append(f"{prefix}_CLIENT_CERT and {prefix}_CLIENT_KEY go together: set both or neither")
        return out

    def verify(self) -> bool | str:
        """What ``requests`` takes as ``verify``: False, a CA bundle file, or True (system roots)."""
        if self.skip_verify:
            return False
        if self.cacert:
            return self.cacert
        if self.capath:
            return _bundle_of(self.capath)
        return True

    def cert(self) -> tuple[str, str] | None:
        """What ``requests`` takes as ``cert``: (certificate, key) or None."""
        if self.client_cert and self.client_key:
            return (self.client_cert, self.client_key)
        return None

    def ssl_context(self) -> "ssl.SSLContext":
        """The same settings for the standard library (``urllib``): CA, client certificate, skip-verify."""
        context = ssl.create_default_context()
        verify = self.verify()
        if verify is False:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif isinstance(verify, str):
            context = ssl.create_default_context(cafile=verify)
        cert = self.cert()
        if cert is not None:
            context.load_cert_chain(*cert)
        return context


def ssl_problem(exc: BaseException, prefix: str) -> str:
    """A TLS failure in one line with the fix: which variable to set (``prefix``: ``VAULT`` or ``NOMAD``)."""
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        why = "certificate verify failed"
        for hint in ("self-signed certificate in certificate chain", "unable to get local issuer certificate", "self-signed certificate", "certificate has expired"):
            if hint in text:
                why += f" ({hint})"
                break
        return (
            f"TLS: {why}: the server's certificate is not signed by a CA this process trusts; "
            f"set {prefix}_CACERT to the CA certificate (PEM) that signed it, or {prefix}_CAPATH to a directory of them"
        )
    if "hostname" in text and ("mismatch" in text or "doesn't match" in text or "not valid for" in text):
        return (
            f"TLS: the server's certificate does not name the host dialled; use an address it names, "
            f"or set {prefix}_TLS_SERVER_NAME to a name in the certificate"
        )
    if "WRONG_VERSION_NUMBER" in text or "wrong version number" in text:
        return f"TLS: the server does not speak TLS there; use http:// in {prefix}_ADDR"
    if "certificate required" in text.lower() or "CERTIFICATE_REQUIRED" in text:
        return f"TLS: the server requires a client certificate; set {prefix}_CLIENT_CERT and {prefix}_CLIENT_KEY"
    return f"TLS handshake failed ({type(exc).__name__}); check {prefix}_CACERT, {prefix}_CLIENT_CERT/{prefix}_CLIENT_KEY and {prefix}_TLS_SERVER_NAME"


@functools.lru_cache(maxsize=8)
def _bundle_of(directory: str) -> str:
    """Every PEM certificate in ``directory`` concatenated into one file (built once per process)."""
    pems = []
    for path in sorted(Path(directory).iterdir()):
        if path.is_file():
            try:
                text = path.read_text(encoding="ascii", errors="strict")
            except (OSError, UnicodeDecodeError):
                continue
            if "-----BEGIN CERTIFICATE-----" in text:
                pems.append(text.strip() + "\n")
    if not pems:
        raise TLSConfigError(f"CAPATH {directory} holds no PEM certificate")
    fd, name = tempfile.mkstemp(prefix="ca-bundle-", suffix=".pem")
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write("".join(pems))
    return name


__all__ = ["TLSConfig", "TLSConfigError", "ssl_problem"]
