"""The TLS leg: Vault and Nomad doubles on HTTPS with a CA generated for the test.

The reconciler (hvac, python-nomad, plain requests), the runner entry step (run by the Nomad
double as a process, its VAULT_CACERT passed in by the vault-runner jobspec) and ``doctor`` all
read the CLI variables (``VAULT_CACERT``, ``NOMAD_CACERT``, ...; reconciler/tls.py).
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from reconciler.doctor import checks
from reconciler.tls import TLSConfig
from tests.conftest import Harness

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from reconciler.local_cluster import LocalCluster

    c = LocalCluster(tmp_path_factory.mktemp("tls-factory"), tls=True).start()
    yield c
    c.stop()


@pytest.fixture
def harness(cluster, tmp_path):
    h = Harness(cluster, tmp_path)
    yield h
    h.close()


def result(cluster, action_id: str) -> dict | None:
    raw = cluster.remote_file(f"vault/actions/{action_id}.result.json")
    return json.loads(raw) if raw else None


def test_sample_actions_are_reported_over_tls(cluster, harness):
    assert cluster.vault.address.startswith("https://") and cluster.nomad.address.startswith("https://")
    samples = cluster.sample_actions()
    for action_id, data in samples.items():
        cluster.merge_action(action_id, data)
    harness.until_idle(timeout=120)
    for action_id in samples:
        res = result(cluster, action_id)
        assert res is not None, f"no result for {action_id}"
        assert res["outcome"] == "success" and res["exit_code"] == 0, res
        assert "permission denied" not in res["logs"].lower()
    # Each runner reached Vault over TLS with the jobspec's VAULT_CACERT (its unwrap is in the double's log).
    assert len(cluster.vault.calls_to("POST", r"/v1/sys/wrapping/unwrap")) >= len(samples)


def test_doctor_passes_with_the_ca_and_names_the_certificate_problem_without_it(cluster):
    good = [c for c in checks(cluster.settings()) if c.system in ("nomad", "vault")]
    assert good and all(c.ok for c in good[:2]), [c.line() for c in good]

    bare = cluster.settings()
    bare = replace(bare, vault=replace(bare.vault, tls=TLSConfig()), nomad=replace(bare.nomad, tls=TLSConfig()))
    found = {c.system: c for c in checks(bare) if c.system in ("nomad", "vault") and not c.ok}
    for system, var in (("vault", "VAULT_CACERT"), ("nomad", "NOMAD_CACERT")):
        check = found[system]
        assert "certificate verify failed" in check.what, check.line()
        assert var in check.fix, check.line()
