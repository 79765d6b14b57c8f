"""reconciler/tls.py: the CLI variables, read as the vault and nomad CLIs read them, against an HTTPS double."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from reconciler.clients.errors import TransientError
from reconciler.clients.vault import VaultClient
from doubles.tls_material import make_tls_material
from doubles.vault import VaultDouble
from reconciler.runner.vault_session import VaultCallError, VaultSession
from reconciler.settings import SettingsError, VaultSettings, load
from reconciler.tls import TLSConfig, TLSConfigError


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    return make_tls_material(tmp_path_factory.mktemp("tls"), names=("vault.test",))


@pytest.fixture(scope="module")
def vault(material):
    double = VaultDouble(root_token="root")
    double.serve_tls(str(material.server_cert), str(material.server_key))
    double.start()
    yield double
    double.stop()


def client(vault: VaultDouble, tls: TLSConfig) -> VaultClient:
    return VaultClient(VaultSettings(addr=vault.address, token="root", tls=tls), attempts=1)


def test_from_env_reads_the_six_variables_per_system(material) -> None:
    env = {
        "VAULT_CACERT": str(material.ca_cert),
        "VAULT_CLIENT_CERT": str(material.client_cert),
        "VAULT_CLIENT_KEY": str(material.client_key),
        "VAULT_TLS_SERVER_NAME": "vault.test",
        "NOMAD_SKIP_VERIFY": "true",
        "NOMAD_CAPATH": "",
    }
    vault_tls, nomad_tls = TLSConfig.from_env(env, "VAULT"), TLSConfig.from_env(env, "NOMAD")
    assert vault_tls.verify() == str(material.ca_cert) and vault_tls.cert() == (str(material.client_cert), str(material.client_key))
    assert vault_tls.server_name == "vault.test" and not vault_tls.skip_verify
    assert nomad_tls.verify() is False and nomad_tls.capath is None
    with pytest.raises(TLSConfigError, match="VAULT_SKIP_VERIFY"):
        TLSConfig.from_env({"VAULT_SKIP_VERIFY": "maybe"}, "VAULT")


def test_settings_load_the_tls_variables_and_refuse_a_missing_file(material, tmp_path: Path) -> None:
    settings = load({"VAULT_CACERT": str(material.ca_cert), "NOMAD_TLS_SERVER_NAME": "nomad.test"})
    assert settings.vault.tls.cacert == str(material.ca_cert) and settings.nomad.tls.server_name == "nomad.test"
    with pytest.raises(SettingsError, match="VAULT_CACERT=.* is not a readable file"):
        load({"VAULT_CACERT": str(tmp_path / "missing.pem")})
    with pytest.raises(SettingsError, match="go together"):
        load({"NOMAD_CLIENT_CERT": str(material.client_cert)})


def test_cacert_capath_and_server_name_reach_the_https_double(vault, material, tmp_path: Path) -> None:
    assert client(vault, TLSConfig(cacert=str(material.ca_cert))).policy_exists("default")
    capath = tmp_path / "cas"
    capath.mkdir()
    (capath / "our-ca.crt").write_text(material.ca_cert.read_text())  # no OpenSSL hash name, as the CLIs allow
    assert client(vault, TLSConfig(capath=str(capath))).policy_exists("default")
    assert client(vault, TLSConfig(cacert=str(material.ca_cert), server_name="vault.test")).policy_exists("default")
    with pytest.raises(TransientError, match="VAULT_TLS_SERVER_NAME"):
        client(vault, TLSConfig(cacert=str(material.ca_cert), server_name="elsewhere.test")).policy_exists("default")
    assert client(vault, TLSConfig(skip_verify=True)).policy_exists("default")


def test_without_the_ca_the_error_names_the_certificate_and_the_fix(vault) -> None:
    with pytest.raises(TransientError) as info:
        client(vault, TLSConfig()).policy_exists("default")
    assert "certificate verify failed" in str(info.value) and "VAULT_CACERT" in str(info.value)


def test_the_runner_session_honours_vault_cacert(vault, material) -> None:
    session = VaultSession(vault.address, tls=TLSConfig(cacert=str(material.ca_cert)), attempts=1)
    with pytest.raises(VaultCallError) as answered:
        session.kv_read("root", "kv/data/nothing-here")
    assert answered.value.status == 404  # Vault answered, over TLS
    bare = VaultSession(vault.address, attempts=1)
    with pytest.raises(VaultCallError) as info:
        bare.wrapping_lookup("hvs.nothing")
    assert info.value.status == 0 and "SSLError" in str(info.value)  # no answer: the handshake failed
    assert requests.get(f"{vault.address}/v1/sys/health", verify=str(material.ca_cert), timeout=5).status_code == 200


def test_client_certificate_for_a_mutual_tls_listener(material) -> None:
    double = VaultDouble(root_token="root")
    double.serve_tls(str(material.server_cert), str(material.server_key), client_ca=str(material.ca_cert))
    double.start()
    try:
        with_cert = TLSConfig(cacert=str(material.ca_cert), client_cert=str(material.client_cert), client_key=str(material.client_key))
        assert client(double, with_cert).policy_exists("default")
        session = VaultSession(double.address, tls=with_cert, attempts=1)
        with pytest.raises(VaultCallError) as answered:
            session.kv_read("root", "kv/data/nothing-here")
        assert answered.value.status == 404
        with pytest.raises(TransientError, match="VAULT_CLIENT_CERT"):  # the fix is named, whichever alert came first
            client(double, TLSConfig(cacert=str(material.ca_cert))).policy_exists("default")
    finally:
        double.stop()
