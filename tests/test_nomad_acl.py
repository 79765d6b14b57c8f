"""The shipped Nomad ACL policies grant what the code calls (reconciler.nomad_acl.CALLS), no less.

Policies are read as Nomad reads them (the double's ``acl/policy.go`` parser); each call of the
table must be allowed by the policy of whoever makes it, in the runners namespace.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler import jobspecs, nomad_acl
from doubles.nomad_acl import ACL, parse_policy
from doubles.nomad_hcl import parse_jobspec

REPO = Path(__file__).resolve().parents[1]
NS = "runners"
POLICY_OF = {"reconciler": ["reconciler.hcl", "reconciler-nomad1.hcl"], "operator": ["operator-register.hcl"]}


def _acl(file: str) -> ACL:
    return ACL.of([parse_policy((REPO / "jobspecs" / "nomad-acl" / file).read_text(encoding="utf-8"))])


def _allowed(acl: ACL, call: nomad_acl.NomadCall) -> bool:
    if call.scope == "none":
        return True
    if call.scope == "management":
        return acl.management
    if call.scope == "namespace":
        return acl.allow_ns(NS, *call.any_of)
    if call.scope == "variable":
        return all(acl.allow_variable(NS, call.path, cap) for cap in call.any_of)
    if call.scope == "host_volume":
        return acl.allow_host_volume(call.path, *call.any_of)
    raise AssertionError(call.scope)


@pytest.mark.parametrize("who", sorted(POLICY_OF))
def test_shipped_policies_cover_every_call(who: str) -> None:
    for file in POLICY_OF[who]:
        acl = _acl(file)
        missing = [c for c in nomad_acl.calls_of(who) if c.scope != "management" and not _allowed(acl, c)]
        assert not missing, f"jobspecs/nomad-acl/{file} lacks: " + "; ".join(f"{c.http} ({c.call}): {c.any_of}" for c in missing)


def test_reconciler_policy_grants_nothing_beyond_the_table() -> None:
    """Exactly what the code calls: every namespace capability granted is the first (narrowest) of some call."""
    granted = parse_policy((REPO / "jobspecs" / "nomad-acl" / "reconciler.hcl").read_text(encoding="utf-8")).namespaces[NS]
    wanted = {c.any_of[0] for c in nomad_acl.calls_of("reconciler") if c.scope == "namespace"}
    assert granted == wanted
    assert "submit-job" not in granted and "purge-job" not in granted, "stopping takes the narrowest capability"


def test_management_calls_are_not_granted_by_a_policy() -> None:
    assert not any(_allowed(_acl(f), c) for files in POLICY_OF.values() for f in files for c in nomad_acl.CALLS if c.scope == "management")


def test_host_volumes_of_the_table_are_those_the_jobspecs_mount() -> None:
    """nomad/job_endpoint.go doRegister checks each host volume's Source: the table must name them all."""
    mounted: dict[str, bool] = {}
    for job in jobspecs.JOB_FILES:
        parsed = parse_jobspec(jobspecs.jobspec_text(job), variables={})
        for tg in parsed.get("TaskGroups") or []:
            for vol in (tg.get("Volumes") or {}).values():
                if vol.get("Type") == "host":
                    mounted[vol["Source"]] = mounted.get(vol["Source"], True) and bool(vol.get("ReadOnly"))
    table = {c.path: c.any_of for c in nomad_acl.calls_of("operator") if c.scope == "host_volume"}
    assert set(table) == set(mounted)
    for source, read_only in mounted.items():
        assert table[source][0] == ("mount-readonly" if read_only else "mount-readwrite"), source
    assert jobspecs.HOST_VOLUMES == {s: caps[0] for s, caps in table.items()}
