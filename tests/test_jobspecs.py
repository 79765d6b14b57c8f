"""Jobspecs, Vault and Nomad ACL policies, render/apply against the doubles, and the drift guard."""

from __future__ import annotations

import re

import ast
import io
import json
from pathlib import Path
from typing import Any, Iterator

import hcl2
import pytest
from hcl2 import SerializationOptions

from reconciler import jobspecs
from reconciler.clients.errors import PermanentError, TransientError
from reconciler.clients.nomad import NomadClient
from reconciler.clients.vault import VaultClient
from doubles.nomad import NomadDouble
from doubles.vault import VaultDouble, parse_policy
from reconciler.settings import KNOWN_KEYS, NomadSettings, Settings, VaultSettings

REPO = Path(__file__).resolve().parent.parent
SPECS = REPO / "jobspecs"
NAMESPACE = "runners"
NOMAD_TOKEN = "operator-nomad-token"
_OPTIONS = SerializationOptions(with_comments=False, strip_string_quotes=True)


@pytest.fixture(autouse=True)
def _no_cluster_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """python-nomad and hvac fall back to these; the tests must not depend on the developer's shell."""
    for name in ("NOMAD_ADDR", "NOMAD_TOKEN", "NOMAD_NAMESPACE", "NOMAD_REGION", "VAULT_ADDR", "VAULT_TOKEN"):
        monkeypatch.delenv(name, raising=False)


# ----------------------------------------------------------------------------- helpers


def load(name: str) -> dict[str, Any]:
    return hcl2.loads((SPECS / name).read_text(encoding="utf-8"), serialization_options=_OPTIONS)


def block(body: dict[str, Any], name: str) -> list[dict[str, Any]]:
    raw = body.get(name) or []
    return [b for b in (raw if isinstance(raw, list) else [raw])]


def labelled(body: dict[str, Any], name: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in block(body, name):
        for label, inner in item.items():
            if label != "__is_block__":
                out[label] = inner
    return out


def job_body(name: str) -> tuple[str, dict[str, Any]]:
    jobs = labelled(load(name), "job")
    assert len(jobs) == 1
    return next(iter(jobs.items()))


def only_group(job: dict[str, Any]) -> dict[str, Any]:
    groups = labelled(job, "group")
    assert len(groups) == 1
    return next(iter(groups.values()))


def only_task(group: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    tasks = labelled(group, "task")
    assert len(tasks) == 1
    return next(iter(tasks.items()))


def walk_keys(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield key
            yield from walk_keys(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from walk_keys(inner)


def step_bound_meta_keys(module: str = "steps.py") -> set[str]:
    """The keys of the ``meta`` dict literal ``reconciler.<module>.step_bound`` dispatches with."""
    tree = ast.parse((REPO / "reconciler" / module).read_text(encoding="utf-8"))
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "step_bound")
    for node in ast.walk(fn):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "meta" for t in node.targets):
            assert isinstance(node.value, ast.Dict)
            return {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
    raise AssertionError("step_bound builds no meta dict literal")


def runners_settings(**nomad: Any) -> Settings:
    return Settings(nomad=NomadSettings(namespace=NAMESPACE, **nomad))


# ----------------------------------------------------------------------------- jobspecs: static checks


@pytest.mark.parametrize("name", ["vault-runner.hcl", "sidecar.hcl"])
def test_dispatched_jobs_are_parameterized_batch_without_restart_or_reschedule(name: str) -> None:
    _, job = job_body(name)
    assert job["type"] == "batch"
    assert job["namespace"] == "${var.namespace}"
    assert labelled(load(name), "variable")["namespace"]["default"] == NAMESPACE
    group = only_group(job)
    assert group["count"] == 1
    (restart,) = block(group, "restart")
    assert restart["attempts"] == 0 and restart["mode"] == "fail"
    (reschedule,) = block(group, "reschedule")
    assert reschedule["attempts"] == 0 and reschedule["unlimited"] is False


def test_no_docker_socket_anywhere_in_jobspecs() -> None:
    files = [p for p in SPECS.rglob("*") if p.is_file() and p.suffix in (".hcl", ".json", ".md")]
    assert len(files) >= 10
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert "/var/run/docker.sock" not in text, path
        assert "docker.sock" not in text, path
    for name in jobspecs.JOB_FILES.values():
        assert "privileged" not in set(walk_keys(load(name))), name


def test_vault_runner_has_no_vault_block_no_template_and_no_volumes() -> None:
    name, job = job_body("vault-runner.hcl")
    assert name == "vault-runner"
    keys = set(walk_keys(job))
    assert not keys & {"vault", "template", "volume", "volume_mount", "identity"}
    group = only_group(job)
    task_name, task = only_task(group)
    assert task_name == "runner"
    (payload,) = block(task, "dispatch_payload")
    assert payload["file"] == "claim.json"
    (config,) = block(task, "config")
    assert config["command"] == "python3" and config["args"] == ["-m", "reconciler.runner"]
    declared = set(labelled(load("vault-runner.hcl"), "variable"))
    assert {"namespace", "vault_addr", "factory_root", "agent_command"} <= declared


def test_vault_runner_meta_declarations_equal_what_step_bound_sends() -> None:
    _, job = job_body("vault-runner.hcl")
    (param,) = block(job, "parameterized")
    assert param["payload"] == "required"
    assert tuple(param["meta_required"]) == jobspecs.RUNNER_META_REQUIRED
    assert tuple(param["meta_optional"]) == jobspecs.RUNNER_META_OPTIONAL
    assert set(param["meta_required"]) | set(param["meta_optional"]) == step_bound_meta_keys()


def test_sidecar_meta_vault_template_and_read_only_volumes() -> None:
    name, job = job_body("sidecar.hcl")
    assert name == "sidecar"
    (param,) = block(job, "parameterized")
    assert param["payload"] == "forbidden"
    assert set(param["meta_required"]) == {"issue_number", "formula", "project", "run_id", "attempt"}
    assert tuple(param["meta_required"]) == jobspecs.SIDECAR_META_REQUIRED
    if (REPO / "reconciler" / "sidecar_runs.py").exists():  # what the sidecar step really sends
        assert set(param["meta_required"]) == step_bound_meta_keys("sidecar_runs.py")
    assert not param.get("meta_optional")
    group = only_group(job)
    volumes = labelled(group, "volume")
    assert set(volumes) == {"factory", "projects"}
    assert all(v["type"] == "host" and v["read_only"] is True for v in volumes.values())
    _, task = only_task(group)
    assert all(m["read_only"] is True for m in block(task, "volume_mount"))
    (vault,) = block(task, "vault")
    assert vault["role"] == "${var.vault_role}"
    (template,) = block(task, "template")
    assert template["env"] is True and template["destination"].startswith("secrets/")
    assert 'secret "kv/data/disinto/sidecar/forge"' in template["data"].replace('\\"', '"')


def test_reconciler_job_state_volume_identity_env_and_no_tokens_in_env() -> None:
    name, job = job_body("reconciler.hcl")
    assert name == "reconciler" and job["type"] == "service"
    assert "parameterized" not in job
    group = only_group(job)
    assert group["count"] == 1
    (restart,) = block(group, "restart")
    assert restart["attempts"] >= 1
    volumes = labelled(group, "volume")
    assert volumes["state"]["type"] == "host" and volumes["state"]["source"] == "${var.state_volume}"
    assert labelled(load("reconciler.hcl"), "variable")["state_volume"]["default"] == "reconciler-state"
    _, task = only_task(group)
    (env,) = block(task, "env")
    env = {k: v for k, v in env.items() if k != "__is_block__"}
    assert set(env) <= set(KNOWN_KEYS), set(env) - set(KNOWN_KEYS)
    assert not {"NOMAD_TOKEN", "VAULT_TOKEN", "FORGE_TOKEN", "FORGE_ADMIN_TOKEN"} & set(env)
    state_mount = next(m for m in block(task, "volume_mount") if m["volume"] == "state")
    assert state_mount["read_only"] is False
    assert str(Path(env["RECONCILER_DB"]).parent) == state_mount["destination"]
    assert env["NOMAD_NAMESPACE"] == "${var.namespace}"
    (identity,) = block(task, "identity")
    assert identity["env"] is True
    (vault,) = block(task, "vault")
    assert vault["role"] == "${var.vault_role}"


# ----------------------------------------------------------------------------- Vault policies and role


def rules(text: str) -> dict[str, list[str]]:
    return {path: sorted(caps) for path, caps in parse_policy(text)}


def test_dispatcher_policy_paths_and_capabilities_exactly() -> None:
    assert rules(jobspecs.dispatcher_policy_text()) == {
        "kv/metadata/disinto/runner/*": ["read"],
        "kv/data/disinto/runner/*": ["read"],
        "sys/policies/acl/runner-*": ["read"],
        "auth/token/create/vault-runner": ["update"],
        "auth/token/lookup-accessor": ["update"],
        "auth/token/revoke-accessor": ["update"],
        "auth/token/roles/vault-runner": ["read"],
    }


def test_runner_policies_read_exactly_one_path_and_claim_only_revokes_itself() -> None:
    assert rules(jobspecs.runner_policy_text("GITHUB_TOKEN")) == {"kv/data/disinto/runner/GITHUB_TOKEN": ["read"]}
    assert rules(jobspecs.mount_policy_text("ssh")) == {"kv/data/disinto/runner/mounts/ssh": ["read"]}
    assert rules(jobspecs.runner_claim_policy_text()) == {"auth/token/revoke-self": ["update"]}
    assert rules(jobspecs.sidecar_policy_text()) == {"kv/data/disinto/sidecar/forge": ["read"]}
    assert rules(jobspecs.reconciler_forge_policy_text()) == {"kv/data/disinto/reconciler/forge": ["read"]}
    assert jobspecs.runner_policy_name("NPM_TOKEN") == "runner-NPM_TOKEN"
    assert jobspecs.mount_policy_name("gpg") == "runner-mount-gpg"


def test_runner_role_fields_exactly() -> None:
    fields = jobspecs.runner_role_fields(Settings())
    assert fields == {
        "allowed_policies": [],
        "allowed_policies_glob": ["runner-*"],
        "disallowed_policies": ["root"],
        "disallowed_policies_glob": ["default", "reconciler-*", "sidecar*"],
        "orphan": True,
        "renewable": False,
        "token_type": "service",
        "token_no_default_policy": True,
        "token_explicit_max_ttl": 600 + 24 * 3600 + 300,
    }
    on_disk = json.loads((SPECS / "vault" / "vault-runner-role.json").read_text())
    assert on_disk == fields


def test_vault_policies_cover_every_allowed_secret_and_mount() -> None:
    policies = jobspecs.vault_policies(Settings())
    for secret in Settings().actions.allowed_secrets:
        assert rules(policies[f"runner-{secret}"]) == {f"kv/data/disinto/runner/{secret}": ["read"]}
    for alias in Settings().actions.allowed_mounts:
        assert rules(policies[f"runner-mount-{alias}"]) == {f"kv/data/disinto/runner/mounts/{alias}": ["read"]}


# ----------------------------------------------------------------------------- Nomad ACL policies


def acl(text: str, *, host_volumes: bool = False) -> dict[str, Any]:
    doc = hcl2.loads(text, serialization_options=_OPTIONS)
    allowed = {"namespace", "host_volume"} if host_volumes else {"namespace"}
    assert set(doc) <= allowed and "namespace" in doc, "an ACL policy here grants nothing outside a namespace (and its host volumes)"
    return labelled(doc, "namespace")


def acl_variables(ns_body: dict[str, Any]) -> dict[str, list[str]]:
    (variables,) = block(ns_body, "variables")
    return {path: sorted(body["capabilities"]) for path, body in labelled(variables, "path").items()}


def test_nomad_reconciler_policy_exactly() -> None:
    namespaces = acl(jobspecs.nomad_reconciler_policy_text(NAMESPACE))
    assert set(namespaces) == {NAMESPACE}
    ns = namespaces[NAMESPACE]
    assert sorted(ns["capabilities"]) == sorted(["dispatch-job", "read-job", "list-jobs", "read-logs", "deregister-job"])
    assert set(ns) - {"__is_block__"} == {"capabilities", "variables"}
    assert acl_variables(ns) == {"reconciler/*": ["destroy", "list", "read", "write"]}
    nomad1 = acl(jobspecs.nomad_reconciler_policy_text(NAMESPACE, nomad1=True))[NAMESPACE]
    assert sorted(nomad1["capabilities"]) == sorted(["dispatch-job", "read-job", "list-jobs", "read-logs", "submit-job"])


def test_nomad_operator_policy_can_register_but_not_dispatch() -> None:
    text = jobspecs.nomad_operator_policy_text(NAMESPACE)
    namespaces = acl(text, host_volumes=True)
    ns = namespaces[NAMESPACE]
    volumes = labelled(hcl2.loads(text, serialization_options=_OPTIONS), "host_volume")
    assert {name: body["capabilities"] for name, body in volumes.items()} == {
        "reconciler-state": ["mount-readwrite"], "factory": ["mount-readonly"], "projects": ["mount-readonly"]
    }
    caps = set(ns["capabilities"])
    assert caps == {"submit-job", "parse-job", "read-job", "list-jobs"}
    assert "dispatch-job" not in caps and "read-logs" not in caps
    assert acl_variables(ns) == {"reconciler/jobspecs/*": ["list", "read", "write"]}


# ----------------------------------------------------------------------------- render


def test_files_on_disk_are_render_of_the_runners_settings() -> None:
    files = jobspecs.render(runners_settings())
    for name, text in files.items():
        if name.startswith(("vault/runner-", "vault/runner-mount-")) and name != "vault/runner-claim.hcl":
            continue
        if name.startswith(("vault/", "nomad-acl/")):
            assert (SPECS / name).read_text(encoding="utf-8") == text, f"jobspecs/{name} is stale: re-render it"
    template = (SPECS / "vault" / "runner-NAME.hcl").read_text()
    assert template.endswith(jobspecs.runner_policy_text("<NAME>"))
    assert (SPECS / "vault" / "runner-mount-ALIAS.hcl").read_text().endswith(jobspecs.mount_policy_text("<alias>"))


def test_render_names_every_file_and_shows_variable_values_without_secrets() -> None:
    settings = Settings(
        nomad=NomadSettings(namespace=NAMESPACE, token="nomad-secret-token"),
        vault=VaultSettings(addr="http://vault.example:8200", token="hvs.vault-secret-token"),
    )
    files = jobspecs.render(settings)
    for expected in (
        "vault-runner.hcl",
        "sidecar.hcl",
        "reconciler.hcl",
        "vault/dispatcher.hcl",
        "vault/runner-claim.hcl",
        "vault/runner-GITHUB_TOKEN.hcl",
        "vault/runner-mount-ssh.hcl",
        "vault/vault-runner-role.json",
        "nomad-acl/reconciler.hcl",
        "nomad-acl/reconciler-nomad1.hcl",
        "nomad-acl/operator-register.hcl",
    ):
        assert expected in files
    assert re.search(r'#   vault_addr +=  ?"http://vault\.example:8200"', files["vault-runner.hcl"]), files["vault-runner.hcl"][:600]
    assert files["vault-runner.hcl"].endswith(jobspecs.jobspec_text("vault-runner"))
    for text in files.values():
        assert "nomad-secret-token" not in text and "hvs.vault-secret-token" not in text
    for name in jobspecs.JOB_FILES.values():  # the rendered form is still a valid jobspec
        hcl2.loads(files[name], serialization_options=_OPTIONS)


# ----------------------------------------------------------------------------- apply and the drift guard


@pytest.fixture
def nomad(tmp_path: Path) -> Iterator[NomadDouble]:
    d = NomadDouble(token=NOMAD_TOKEN, mode="simulate", workdir=tmp_path / "nomad")
    d.simulate = lambda job: (0.05, 0, "ok\n")
    d.start()
    yield d
    d.stop()


@pytest.fixture
def vault() -> Iterator[VaultDouble]:
    d = VaultDouble().start()
    yield d
    d.stop()


def nomad_client(double: NomadDouble) -> NomadClient:
    return NomadClient(NomadSettings(addr=double.address, token=NOMAD_TOKEN, namespace=NAMESPACE))


def vault_admin(double: VaultDouble) -> jobspecs.VaultHTTP:
    return jobspecs.VaultHTTP(double.address, double.root_token)


def operator_token(nomad: NomadDouble) -> str:
    """What an admin does once with a management token: the shipped operator policy, and a token of it."""
    nomad.set_policy("operator-register", (SPECS / "nomad-acl" / "operator-register.hcl").read_text(encoding="utf-8"))
    return nomad.add_token(["operator-register"])


def test_apply_registers_writes_records_and_second_apply_is_unchanged(nomad: NomadDouble, vault: VaultDouble) -> None:
    """With ACLs enforced: the operator token (shipped operator-register policy) registers every job,
    host volumes included; the management token writes the ACL policies, keeping a JobACL."""
    settings = runners_settings(addr=nomad.address)
    client = NomadClient(NomadSettings(addr=nomad.address, token=operator_token(nomad), namespace=NAMESPACE))
    job_acl = {"Namespace": NAMESPACE, "JobID": "reconciler", "Group": "reconciler", "Task": "reconciler"}
    nomad.set_policy("reconciler", "namespace \"runners\" { capabilities = [\"read-job\"] }", job_acl=job_acl)
    management = jobspecs.NomadACLHTTP(nomad.address, NOMAD_TOKEN)
    lines: list[str] = []
    first = jobspecs.apply(settings, client, vault_admin(vault), out=lines.append, nomad_acl=management)
    for job in jobspecs.JOB_FILES:
        assert first.status_of("job", job) == "created"
        assert first.status_of("record", f"reconciler/jobspecs/{job}") == "created"
        live = nomad.job(job, namespace=NAMESPACE)
        assert live is not None
        record = client.variable(f"reconciler/jobspecs/{job}")
        assert record["Items"]["job_modify_index"] == str(live["JobModifyIndex"])
        assert record["Items"]["hash"] == jobspecs.canonical_hash(live)
    runner = nomad.job("vault-runner", namespace=NAMESPACE)
    assert runner["ParameterizedJob"]["MetaRequired"] == list(jobspecs.RUNNER_META_REQUIRED)
    assert first.status_of("vault-policy", "reconciler-dispatcher") == "created"
    assert first.status_of("vault-role", "vault-runner") == "created"
    assert vault_admin(vault).read_policy("runner-github_token") == jobspecs.runner_policy_text("GITHUB_TOKEN")
    assert first.status_of("nomad-acl-policy", "reconciler") == "updated"
    assert first.status_of("nomad-acl-policy", "operator-register") == "unchanged"
    assert nomad.acl_policies["reconciler"]["JobACL"] == job_acl, "apply kept the workload-identity binding"
    assert nomad.acl_policies["reconciler"]["Rules"] == jobspecs.nomad_reconciler_policy_text(NAMESPACE)
    assert lines == first.lines()
    kinds = [i.kind for i in first.items]
    assert kinds.index("job") > max(i for i, k in enumerate(kinds) if k in ("vault-policy", "vault-role", "nomad-acl-policy")), (
        "jobs come after every policy: a missing host-volume rule cannot leave Vault half-configured"
    )

    stream = io.StringIO()
    second = jobspecs.apply(settings, client, vault_admin(vault), out=stream, nomad_acl=management)
    assert not second.changed
    assert {i.status for i in second.items} == {"unchanged"}
    assert second.status_of("job", "reconciler") == "unchanged"  # a service job: its ModifyIndex moves, not its JobModifyIndex
    assert second.status_of("job", "vault-runner") == "unchanged"
    assert second.status_of("vault-role", "vault-runner") == "unchanged"
    assert "unchanged job vault-runner" in stream.getvalue()
    assert nomad.job("vault-runner", namespace=NAMESPACE)["JobModifyIndex"] == runner["JobModifyIndex"]


def test_check_parent_refuses_a_job_changed_behind_the_back_until_apply_runs_again(nomad: NomadDouble) -> None:
    settings = runners_settings(addr=nomad.address)
    client = nomad_client(nomad)
    jobspecs.apply(settings, client, None, jobs=["vault-runner"])
    ok = jobspecs.check_parent(client, "vault-runner")
    assert ok.warning is None and ok.modify_index == ok.registered_index
    registered = ok.registered_index

    # Someone re-registers the parent with another image, bypassing `jobspecs apply`.
    nomad.register_jobspec(SPECS / "vault-runner.hcl", variables={"image": "evil:latest"}, namespace=NAMESPACE)
    changed = nomad.job("vault-runner", namespace=NAMESPACE)["JobModifyIndex"]
    assert changed != registered
    with pytest.raises(PermanentError) as refused:
        jobspecs.check_parent(client, "vault-runner")
    assert str(refused.value) == (
        f"parent job vault-runner was changed behind the reconciler's back (modify index {changed}, "
        f"registered {registered}): re-run `reconciler jobspecs apply` after reviewing the change"
    )

    again = jobspecs.apply(settings, client, None, jobs=["vault-runner"])
    assert again.status_of("job", "vault-runner") == "updated"
    assert again.status_of("record", "reconciler/jobspecs/vault-runner") == "updated"
    assert nomad.job("vault-runner", namespace=NAMESPACE)["TaskGroups"][0]["Tasks"][0]["Config"]["image"] != "evil:latest"
    assert jobspecs.check_parent(client, "vault-runner").warning is None


def test_check_parent_without_record_warns_and_without_job_refuses(nomad: NomadDouble) -> None:
    client = nomad_client(nomad)
    with pytest.raises(PermanentError, match="not registered"):
        jobspecs.check_parent(client, "vault-runner")
    nomad.register_jobspec(SPECS / "vault-runner.hcl", namespace=NAMESPACE)
    result = jobspecs.check_parent(client, "vault-runner")
    assert result.registered_index is None and result.warning and "jobspecs apply" in result.warning
    jobspecs.apply(runners_settings(addr=nomad.address), client, None, jobs=["vault-runner"])
    nomad.stop_behind_back("vault-runner", purge=True, namespace=NAMESPACE)
    with pytest.raises(PermanentError, match="removed behind the reconciler's back"):
        jobspecs.check_parent(client, "vault-runner")


def test_dispatch_with_step_bound_meta_against_the_applied_jobspec(nomad: NomadDouble) -> None:
    """The parent is built from the jobspec file itself: a meta key drifting between code and jobspec fails here."""
    client = nomad_client(nomad)
    jobspecs.apply(runners_settings(addr=nomad.address), client, None, jobs=["vault-runner", "sidecar"])
    meta = {key: "x" for key in step_bound_meta_keys()}
    result = client.dispatch(
        "vault-runner",
        meta=meta,
        payload=json.dumps({"version": 1, "wrapping_token": "hvs.wrap"}).encode(),
        idempotency_token="run-1/1",
        id_prefix_template="act-1",
    )
    child = nomad.job(result.job_id, namespace=NAMESPACE)
    assert child["ParentID"] == "vault-runner" and child["Meta"] == meta

    sidecar_keys = step_bound_meta_keys("sidecar_runs.py") if (REPO / "reconciler" / "sidecar_runs.py").exists() else set(jobspecs.SIDECAR_META_REQUIRED)
    sidecar_meta = {key: "1" for key in sidecar_keys}
    side = client.dispatch("sidecar", meta=sidecar_meta, payload=b"", idempotency_token="side-1/1", id_prefix_template="")
    assert nomad.job(side.job_id, namespace=NAMESPACE)["Meta"] == sidecar_meta
    missing = {k: v for k, v in sidecar_meta.items() if k != "project"}
    with pytest.raises(PermanentError, match="required meta"):
        client.dispatch("sidecar", meta=missing, payload=b"", idempotency_token="side-2/1", id_prefix_template="")


def test_applied_vault_config_lets_the_dispatcher_mint_runner_claims_only(vault: VaultDouble) -> None:
    settings = Settings()
    report = jobspecs.apply(settings, _NoJobs(), vault_admin(vault), jobs=[], nomad_acl=_NoACL())
    assert report.status_of("vault-policy", "runner-mount-ssh") == "created"
    vault.put_secret("disinto/runner/GITHUB_TOKEN", {"value": "ghp_x"})
    token = vault.create_token([jobspecs.DISPATCHER_POLICY], display_name="reconciler")
    client = VaultClient(VaultSettings(addr=vault.address, token=token))
    assert client.policy_exists("runner-GITHUB_TOKEN") and client.secret_present("GITHUB_TOKEN")
    claim = client.mint_claim(
        ["runner-GITHUB_TOKEN"], ttl=60, explicit_max_ttl=60, wrap_ttl=30, meta={"run_id": "r"}, display_name="run-r"
    )
    info = client.lookup_accessor(claim.token_accessor)
    assert info is not None and info["policies"] == ["runner-github_token"]
    with pytest.raises(PermanentError):
        client.mint_claim(
            [jobspecs.DISPATCHER_POLICY], ttl=60, explicit_max_ttl=60, wrap_ttl=30, meta={}, display_name="bad"
        )


class _NoJobs:
    """A Nomad client that must not be used (``jobs=[]``)."""

    settings = NomadSettings()

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"Nomad was called ({name}) although no job was to be applied")


class _NoACL(jobspecs.NomadACLHTTP):
    def __init__(self) -> None:
        pass

    def read_policy_full(self, name: str) -> dict[str, Any] | None:
        raise jobspecs.NotFoundError("no ACL endpoint", system="nomad")


def test_vault_policy_files_parse_as_hcl_with_the_same_rules() -> None:
    files = sorted((SPECS / "vault").glob("*.hcl"))
    assert {p.name for p in files} >= {"dispatcher.hcl", "runner-claim.hcl", "runner-NAME.hcl", "runner-mount-ALIAS.hcl"}
    for path in files:
        text = path.read_text(encoding="utf-8")
        doc = hcl2.loads(text, serialization_options=_OPTIONS)
        assert set(doc) == {"path"}, path
        parsed = {p: sorted(body["capabilities"]) for p, body in labelled(doc, "path").items()}
        assert parsed == rules(text), path


def test_the_local_cluster_configures_the_vault_double_with_these_policies() -> None:
    """The doubles import nothing of the product: the cluster writes this module's texts into the
    Vault double through its operator API, as `jobspecs apply` writes them into a real Vault."""
    from reconciler.local_cluster import configure_factory

    double = VaultDouble(root_token="root")
    configure_factory(double, {"GITHUB_TOKEN": "value"}, {"ssh": {"id_ed25519": "key"}})
    assert double.policy("runner-GITHUB_TOKEN") == jobspecs.runner_policy_text("GITHUB_TOKEN")
    assert double.policy("runner-mount-ssh") == jobspecs.mount_policy_text("ssh")
    assert double.policy(jobspecs.RUNNER_CLAIM_POLICY) == jobspecs.runner_claim_policy_text()
    assert double.policy(jobspecs.DISPATCHER_POLICY) == jobspecs.dispatcher_policy_text()
    role = double.role("vault-runner")
    assert role is not None and all(role.get(k) == v for k, v in jobspecs.runner_role_fields().items() if k in role)


def test_apply_with_a_vault_token_that_may_not_write_policies_fails_loudly(vault: VaultDouble) -> None:
    token = vault.create_token(["default"], display_name="not-an-operator")
    with pytest.raises(PermanentError) as refused:
        jobspecs.apply(Settings(), _NoJobs(), jobspecs.VaultHTTP(vault.address, token), jobs=[], nomad_acl=_NoACL())
    assert str(refused.value) == (
        "vault refused read policy reconciler-dispatcher: HTTP 403: 1 error occurred: permission denied; "
        "check the operator token"
    )


class _PreGlobVault(jobspecs.VaultHTTP):
    """A Vault older than 1.9: it accepts the role but silently drops the *_glob fields."""

    def write_role(self, name, fields):
        super().write_role(name, {k: v for k, v in fields.items() if not k.endswith("_glob")})


def test_apply_reads_the_role_back_and_fails_loudly_when_the_globs_were_ignored(vault: VaultDouble) -> None:
    with pytest.raises(PermanentError) as refused:
        jobspecs.apply(Settings(), _NoJobs(), _PreGlobVault(vault.address, vault.root_token), jobs=[], nomad_acl=_NoACL())
    text = str(refused.value)
    assert "does not hold what was written" in text and "allowed_policies_glob" in text and "older than 1.9" in text
    # A server that keeps them: applied, and read back equal.
    report = jobspecs.apply(Settings(), _NoJobs(), jobspecs.VaultHTTP(vault.address, vault.root_token), jobs=[], nomad_acl=_NoACL())
    assert any(i.kind == "vault-role" and i.status == "updated" for i in report.items)


def test_apply_reaches_an_https_vault_with_vault_cacert(tmp_path) -> None:
    from doubles.tls_material import make_tls_material
    from reconciler.tls import TLSConfig

    material = make_tls_material(tmp_path / "tls")
    double = VaultDouble(root_token="root")
    double.serve_tls(str(material.server_cert), str(material.server_key))
    double.start()
    try:
        admin = jobspecs.VaultHTTP(double.address, "root", tls=TLSConfig(cacert=str(material.ca_cert)))
        jobspecs.apply(Settings(), _NoJobs(), admin, jobs=[], nomad_acl=_NoACL())
        assert double.role("vault-runner")["allowed_policies_glob"] == ["runner-*"]
        with pytest.raises(TransientError):
            jobspecs.VaultHTTP(double.address, "root").read_role("vault-runner")  # no CA: the handshake fails
    finally:
        double.stop()
def test_apply_without_host_volume_rules_names_them_and_writes_nothing(nomad: NomadDouble, vault: VaultDouble) -> None:
    """nomad/job_endpoint.go doRegister: a job mounting host volumes needs a host_volume rule per source.
    The first edition's operator policy had none and apply stopped half way; now it reads its own token
    (/v1/acl/token/self) and policies first, and says exactly what is missing before any write."""
    old = (SPECS / "nomad-acl" / "operator-register.hcl").read_text(encoding="utf-8").split("# Registering a job that mounts")[0]
    nomad.set_policy("operator-old", old)
    client = NomadClient(NomadSettings(addr=nomad.address, token=nomad.add_token(["operator-old"]), namespace=NAMESPACE))
    with pytest.raises(PermanentError) as refused:
        jobspecs.apply(runners_settings(addr=nomad.address), client, vault_admin(vault),
                       nomad_acl=jobspecs.NomadACLHTTP(nomad.address, NOMAD_TOKEN))
    message = str(refused.value)
    assert "nothing was written" in message
    assert 'host_volume "factory" { capabilities = ["mount-readonly"] } (job sidecar)' in message
    assert 'host_volume "projects" { capabilities = ["mount-readonly"] } (job sidecar)' in message
    assert 'host_volume "reconciler-state" { capabilities = ["mount-readwrite"] } (job reconciler)' in message
    assert "submit-job" not in message, "it has submit-job"
    assert vault_admin(vault).read_role("vault-runner") is None and nomad.job("vault-runner", namespace=NAMESPACE) is None
    assert "reconciler" not in nomad.acl_policies


def test_a_job_refused_anyway_names_what_registering_it_needs(nomad: NomadDouble) -> None:
    """When the pre-check cannot see a lack (e.g. a policy changed meanwhile), the 403 says what the job needs."""
    class Blind(jobspecs.NomadACLHTTP):
        def token_self(self):  # as with ACLs off: the server decides
            return None

    nomad.set_policy("submit-only", 'namespace "runners" { capabilities = ["submit-job", "parse-job", "read-job", "list-jobs"] }')
    client = NomadClient(NomadSettings(addr=nomad.address, token=nomad.add_token(["submit-only"]), namespace=NAMESPACE))
    original = jobspecs.NomadACLHTTP
    jobspecs.NomadACLHTTP = Blind  # type: ignore[misc]
    try:
        with pytest.raises(PermanentError, match=r'registering sidecar needs submit-job in namespace "runners", host_volume "factory"'):
            jobspecs.apply(runners_settings(addr=nomad.address), client, None, jobs=["sidecar"], nomad_acl=original(nomad.address, NOMAD_TOKEN))
    finally:
        jobspecs.NomadACLHTTP = original  # type: ignore[misc]


class _Nomad1ACL(jobspecs.NomadACLHTTP):
    """A Nomad 1.x ACL endpoint: refuses the capability it does not know (acl/policy.go v1.9.7)."""

    def __init__(self) -> None:
        self.written: dict[str, str] = {}

    def read_policy_full(self, name: str) -> dict[str, Any] | None:
        return None

    def write_policy(self, name: str, rules: str, description: str, job_acl: Any = None) -> None:
        if '"deregister-job"' in rules:  # in a capabilities list, not a comment
            raise PermanentError(
                "nomad refused write ACL policy reconciler: HTTP 400: policy 0 invalid: Invalid namespace capability 'deregister-job'",
                system="nomad",
            )
        self.written[name] = rules


def test_apply_on_nomad_1x_writes_the_submit_job_variant() -> None:
    acl = _Nomad1ACL()
    report = jobspecs.ApplyReport()
    jobspecs._apply_acl(runners_settings(), acl, report, lambda line: None)
    assert acl.written["reconciler"] == jobspecs.nomad_reconciler_policy_text(NAMESPACE, nomad1=True)
    item = [i for i in report.items if i.name == "reconciler"][0]
    assert item.status == "created" and "Nomad 1.x" in item.detail


def test_kill_timeouts_within_the_client_cap_and_lost_nodes_not_replaced() -> None:
    """Clients cap kill_timeout at max_kill_timeout (default 30 s); on Nomad >= 1.8 disconnect
    { replace = false } keeps an allocation on a lost node unknown instead of starting a second copy
    (scheduler/reconciler/filters.go)."""
    from doubles.nomad_hcl import parse_duration, parse_jobspec

    for job in jobspecs.JOB_FILES:
        parsed = parse_jobspec(jobspecs.jobspec_text(job), variables={})
        for tg in parsed["TaskGroups"]:
            for task in tg["Tasks"]:
                assert parse_duration(task.get("KillTimeout") or 0) <= 30 * 10**9, (job, task["Name"])
            if job in ("vault-runner", "sidecar"):
                assert tg.get("Disconnect", {}).get("Replace") is False, job
