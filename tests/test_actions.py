"""Tests for reconciler.actions: the action file format, tiers and run ids (pure, no I/O but tmp files)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from reconciler.actions import (
    ACTIONS_DIR,
    ALLOWED_KEYS,
    TIERS,
    Action,
    ActionInvalid,
    TiersInvalid,
    action_id_from_file_name,
    content_hash,
    dispatch_problem,
    effective_tier,
    is_action_path,
    is_result_path,
    parse_action,
    parse_tiers,
    result_path,
    run_id_for,
)
from reconciler.settings import DEFAULT_SECRETS, ActionSettings

FIXTURES = Path(__file__).resolve().parent.parent / "reconciler" / "demo"
SAMPLES = sorted((FIXTURES / "ops-repo" / "vault" / "actions").glob("*.toml"))
SETTINGS = ActionSettings(factory_root=FIXTURES)

VALID = b"""
id = "x"
formula = "release"
context = "why"
secrets = ["DEPLOY_KEY"]
"""


def toml(**fields: object) -> bytes:
    """A small TOML document (JSON scalars and arrays are valid TOML values)."""
    return "\n".join(f"{key} = {json.dumps(value)}" for key, value in fields.items()).encode()


def base(**over: object) -> dict[str, object]:
    fields: dict[str, object] = {"id": "x", "formula": "release", "context": "why", "secrets": []}
    fields.update(over)
    return {k: v for k, v in fields.items() if v is not None}


def problems_of(file_name: str, data: bytes, settings: ActionSettings = SETTINGS) -> list[str]:
    with pytest.raises(ActionInvalid) as info:
        parse_action(file_name, data, settings)
    assert info.value.problems, "ActionInvalid must carry at least one problem"
    return info.value.problems


# --------------------------------------------------------------------------- valid files


@pytest.mark.parametrize("path", SAMPLES, ids=[p.name for p in SAMPLES])
def test_sample_actions_validate(path: Path) -> None:
    action = parse_action(path.name, path.read_bytes(), SETTINGS)
    assert action.id == path.stem
    assert set(action.secrets) <= set(DEFAULT_SECRETS)
    assert action.dispatch_mode == "pr"


def test_there_are_four_samples() -> None:
    assert len(SAMPLES) == 4


def test_release_sample_fields_and_defaults() -> None:
    path = FIXTURES / "ops-repo/vault/actions/release-v120.toml"
    action = parse_action(path.name, path.read_bytes(), SETTINGS)
    assert action.formula == "release"
    assert action.secrets == ("GITHUB_TOKEN", "CODEBERG_TOKEN")
    assert action.mounts == ("ssh",)
    assert action.timeout_minutes == 60
    assert action.model is None and action.blast_radius is None and action.tools == ()


def test_all_optional_fields() -> None:
    data = toml(**base(mounts=["ssh", "gpg"], model="sonnet", tools=["docker"], timeout_minutes=1440,
                       blast_radius="medium", dispatch_mode="direct"))
    action = parse_action("x.toml", data, SETTINGS)
    assert action.mounts == ("ssh", "gpg")
    assert action.timeout_minutes == 1440
    assert action.blast_radius == "medium"
    assert action.dispatch_mode == "direct"


def test_action_is_frozen_and_hashable() -> None:
    action = parse_action("x.toml", VALID, SETTINGS)
    with pytest.raises(Exception):
        action.id = "y"  # type: ignore[misc]
    assert hash(action) == hash(parse_action("x.toml", VALID, SETTINGS))


def test_formula_found_as_shell_script(tmp_path: Path) -> None:
    (tmp_path / "formulas").mkdir()
    (tmp_path / "formulas" / "deploy.sh").write_text("#!/bin/sh\n")
    action = parse_action("x.toml", toml(**base(formula="deploy")), ActionSettings(factory_root=tmp_path))
    assert action.formula == "deploy"


def test_configured_allow_lists_extend_the_defaults() -> None:
    custom = ActionSettings(factory_root=FIXTURES, allowed_secrets=DEFAULT_SECRETS + ("AWS_KEY",),
                            allowed_mounts=("ssh", "kube"))
    action = parse_action("x.toml", toml(**base(secrets=["AWS_KEY"], mounts=["kube"])), custom)
    assert action.secrets == ("AWS_KEY",) and action.mounts == ("kube",)


def test_default_timeout_is_clamped_to_a_lower_maximum() -> None:
    low_max = ActionSettings(factory_root=FIXTURES, max_timeout_minutes=30)
    assert parse_action("x.toml", VALID, low_max).timeout_minutes == 30
    assert parse_action("x.toml", VALID, SETTINGS).timeout_minutes == 60


def test_ids_with_dots_dashes_underscores_are_safe() -> None:
    action = parse_action("rel_1.2-3.toml", toml(**base(id="rel_1.2-3")), SETTINGS)
    assert action.id == "rel_1.2-3"


# --------------------------------------------------------------------------- invalid files


@pytest.mark.parametrize(
    ("file_name", "data", "expected"),
    [
        pytest.param("x.toml", b"id = \"x\nformula = ", "not valid TOML: ", id="malformed-toml"),
        pytest.param("x.toml", VALID + b"secretz = []\n", "unknown key 'secretz' (allowed: id, formula,", id="unknown-key"),
        pytest.param("x.toml", toml(**base(secrets=["AWS_KEY"])),
                     "secret 'AWS_KEY' is not in the allow-list (CLAWHUB_TOKEN, GITHUB_TOKEN, CODEBERG_TOKEN, "
                     "DEPLOY_KEY, NPM_TOKEN, DOCKER_HUB_TOKEN); add it with RECONCILER_ALLOWED_SECRETS",
                     id="unknown-secret"),
        pytest.param("x.toml", toml(**base(mounts=["nfs"])),
                     "mount 'nfs' is not in the allow-list (ssh, gpg, sops); add it with RECONCILER_ALLOWED_MOUNTS",
                     id="unknown-mount"),
        pytest.param("y.toml", VALID, "id 'x' does not match the file name 'y.toml'", id="id-not-file-name"),
        pytest.param("x.toml", toml(**base(id="../x")), "id '../x' is not a safe name", id="id-dotdot"),
        pytest.param("x.toml", toml(**base(id="a/b")), "id 'a/b' is not a safe name", id="id-slash"),
        pytest.param("x.toml", toml(**base(id=".x")), "must not start with '.'", id="id-leading-dot"),
        pytest.param("x.toml", toml(**base(formula="../x")), "formula '../x' is not a safe name", id="formula-dotdot"),
        pytest.param("x.toml", toml(**base(formula="a/b")), "formula 'a/b' is not a safe name", id="formula-slash"),
        pytest.param("x.toml", toml(**base(formula="nope")),
                     "formula 'nope' not found: neither formulas/nope.toml nor formulas/nope.sh exists "
                     f"under FACTORY_ROOT={FIXTURES}", id="missing-formula"),
        pytest.param("x.toml", toml(**base(timeout_minutes=0)), "timeout_minutes must be between 1 and 1440, got 0",
                     id="timeout-zero"),
        pytest.param("x.toml", toml(**base(timeout_minutes=-5)), "timeout_minutes must be between 1 and 1440, got -5",
                     id="timeout-negative"),
        pytest.param("x.toml", toml(**base(timeout_minutes=1441)),
                     "timeout_minutes must be between 1 and 1440, got 1441; raise the limit with "
                     "RECONCILER_MAX_TIMEOUT_MINUTES", id="timeout-over-max"),
        pytest.param("x.toml", toml(**base(timeout_minutes="30")), "timeout_minutes must be an integer, got string '30'",
                     id="timeout-string"),
        pytest.param("x.toml", toml(**base(timeout_minutes=True)), "timeout_minutes must be an integer, got boolean True",
                     id="timeout-bool"),
        pytest.param("x.toml", toml(**base(timeout_minutes=30.0)), "timeout_minutes must be an integer, got float 30.0",
                     id="timeout-float"),
        pytest.param("x.toml", VALID.replace(b"why", b"\xff"), None, id="non-utf8"),
        pytest.param("x.toml", toml(**base(secrets=None)), "missing required key 'secrets'", id="missing-secrets"),
        pytest.param("x.toml", toml(**base(context="")), "context must be a non-empty string", id="empty-context"),
        pytest.param("x.toml", toml(**base(context="   ")), "context must be a non-empty string", id="blank-context"),
        pytest.param("x.toml", toml(**base(model="")), "model must be a non-empty string", id="empty-model"),
        pytest.param("x.toml", toml(**base(secrets="DEPLOY_KEY")), "secrets must be an array, got string 'DEPLOY_KEY'",
                     id="secrets-not-array"),
        pytest.param("x.toml", toml(**base(secrets=[1])), "secrets[0] must be a string, got integer 1",
                     id="secret-not-string"),
        pytest.param("x.toml", toml(**base(secrets=["DEPLOY_KEY", "DEPLOY_KEY"])),
                     "secrets lists 'DEPLOY_KEY' more than once", id="duplicate-secret"),
        pytest.param("x.toml", toml(**base(mounts=["ssh", "ssh"])), "mounts lists 'ssh' more than once",
                     id="duplicate-mount"),
        pytest.param("x.toml", toml(**base(blast_radius="huge")),
                     "blast_radius must be one of 'low', 'medium' or 'high', got 'huge'", id="bad-blast-radius"),
        pytest.param("x.toml", toml(**base(dispatch_mode="yolo")),
                     "dispatch_mode must be one of 'pr' or 'direct', got 'yolo'", id="bad-dispatch-mode"),
        pytest.param("x.toml", VALID + b"[extra]\na = 1\n", "unknown key 'extra'", id="unknown-table"),
        pytest.param("x.txt", VALID, "file name 'x.txt' is not <id>.toml", id="file-name-not-toml"),
    ],
)
def test_invalid_file_names_the_problem(file_name: str, data: bytes, expected: str | None) -> None:
    problems = problems_of(file_name, data)
    if expected is None:  # non-UTF-8: the exact offset is computed below
        offset = data.index(b"\xff")
        assert problems == [f"file is not UTF-8 (invalid byte 0xff at offset {offset})"]
    else:
        assert any(expected in p for p in problems), problems


def test_non_utf8_message_is_exact() -> None:
    data = b'id = "abcd"\n' + b"\xff"
    assert problems_of("abcd.toml", data) == ["file is not UTF-8 (invalid byte 0xff at offset 12)"]


def test_ten_megabyte_file_is_rejected_before_decoding() -> None:
    data = b"\xff" * (10 * 1024 * 1024)  # not UTF-8 either: size must be reported, not encoding
    assert problems_of("x.toml", data) == ["file is 10485760 bytes; the limit is 65536"]


def test_file_at_the_limit_is_read() -> None:
    data = VALID + b"#" * (SETTINGS.max_file_bytes - len(VALID))
    assert len(data) == SETTINGS.max_file_bytes
    assert parse_action("x.toml", data, SETTINGS).id == "x"


def test_all_problems_are_collected() -> None:
    data = toml(id="x", formula="nope", secrets=["AWS_KEY", "DEPLOY_KEY", "GPG"], mounts=["nfs"],
                timeout_minutes=0, secretz=1)
    problems = problems_of("y.toml", data)
    joined = "\n".join(problems)
    for expected in ("missing required key 'context'", "secret 'AWS_KEY'", "secret 'GPG'", "mount 'nfs'",
                     "timeout_minutes must be between 1 and 1440, got 0", "unknown key 'secretz'",
                     "id 'x' does not match the file name 'y.toml'", "formula 'nope' not found"):
        assert expected in joined, joined
    assert len(problems) == 8, problems


def test_missing_factory_root_fails_closed() -> None:
    problems = problems_of("x.toml", VALID, ActionSettings(factory_root=None))
    assert problems == [
        "formula 'release' cannot be checked: FACTORY_ROOT is not set; "
        "set FACTORY_ROOT to the checkout that holds formulas/"
    ]


def test_formula_directory_entry_is_not_a_formula(tmp_path: Path) -> None:
    (tmp_path / "formulas" / "deploy.toml").mkdir(parents=True)
    problems = problems_of("x.toml", toml(**base(formula="deploy")), ActionSettings(factory_root=tmp_path))
    assert problems == [
        "formula 'deploy' not found: neither formulas/deploy.toml nor formulas/deploy.sh exists "
        f"under FACTORY_ROOT={tmp_path}"
    ]


def test_deeply_nested_toml_is_invalid_not_a_crash() -> None:
    problems = problems_of("x.toml", b"a = " + b"[" * 20000)
    assert problems[0].startswith("not valid TOML")


def test_huge_integer_is_invalid_not_a_crash() -> None:
    problems = problems_of("x.toml", VALID + b"timeout_minutes = " + b"9" * 5000 + b"\n")
    assert problems[0].startswith("not valid TOML")


def test_max_timeout_comes_from_settings() -> None:
    strict = ActionSettings(factory_root=FIXTURES, max_timeout_minutes=90)
    assert problems_of("x.toml", toml(**base(timeout_minutes=91)), strict)[0].startswith(
        "timeout_minutes must be between 1 and 90, got 91"
    )


def test_problems_are_joined_in_the_exception_text() -> None:
    with pytest.raises(ActionInvalid) as info:
        parse_action("y.toml", toml(**base(secrets=["AWS_KEY"])), SETTINGS)
    assert "AWS_KEY" in str(info.value) and "y.toml" in str(info.value)


_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=8,
)


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_only_raise_action_invalid(data: bytes) -> None:
    try:
        action = parse_action("x.toml", data, SETTINGS)
    except ActionInvalid as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
    else:
        assert action.id == "x"


@hsettings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(ALLOWED_KEYS + ("secretz", "x")), _JSONISH, max_size=8))
def test_arbitrary_documents_only_raise_action_invalid(fields: dict[str, object]) -> None:
    lines = [f"{k} = {json.dumps(v)}" for k, v in fields.items() if v is not None]
    try:
        action = parse_action("x.toml", "\n".join(lines).encode(), SETTINGS)
    except ActionInvalid as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
    else:
        assert action.id == "x" and set(action.secrets) <= set(DEFAULT_SECRETS)
        assert 1 <= action.timeout_minutes <= SETTINGS.max_timeout_minutes


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("release-v120.toml", "release-v120"),
        ("rel_1.2.toml", "rel_1.2"),
        (".hidden.toml", None),
        ("a/b.toml", None),
        ("x.result.json", None),
        ("x.TOML", None),
        (".toml", None),
        ("x y.toml", None),
        ("é.toml", None),
    ],
)
def test_action_id_from_file_name(name: str, expected: str | None) -> None:
    assert action_id_from_file_name(name) == expected


def test_result_and_action_paths() -> None:
    assert ACTIONS_DIR == "vault/actions"
    assert result_path("release-v120") == "vault/actions/release-v120.result.json"
    assert is_action_path("vault/actions/release-v120.toml")
    assert not is_action_path("vault/actions/sub/release-v120.toml")
    assert not is_action_path("vault/actions/release-v120.result.json")
    assert not is_action_path("vault/policy.toml")
    assert not is_action_path("other/vault/actions/x.toml")
    assert is_result_path("vault/actions/release-v120.result.json")
    assert not is_result_path("vault/actions/release-v120.toml")
    assert not is_result_path("vault/actions/.x.result.json")
    assert not is_result_path("vault/actions/a/b.result.json")


# --------------------------------------------------------------------------- tiers


def test_parse_fixture_tiers() -> None:
    tiers = parse_tiers((FIXTURES / "ops-repo/vault/policy.toml").read_bytes())
    assert tiers["triage"] == "low"
    assert tiers["run-supervisor"] == "medium"
    assert tiers["release"] == "high"
    assert set(tiers.values()) <= set(TIERS)


def test_parse_tiers_without_table_maps_nothing() -> None:
    assert parse_tiers(b"# nothing yet\n") == {}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"[tiers\n", "vault/policy.toml is not valid TOML"),
        (b"tiers = 3\n", "'tiers' must be a table, got integer"),
        (b'[tiers]\nrelease = "huge"\ndev = 1\n', "bad entries: 'release' = 'huge', 'dev' = 1"),
        (b"\xff", "vault/policy.toml is not UTF-8 (invalid byte 0xff at offset 0)"),
    ],
)
def test_parse_tiers_rejects_bad_files(data: bytes, expected: str) -> None:
    with pytest.raises(TiersInvalid, match=re.escape(expected)):
        parse_tiers(data)


def test_unknown_formula_is_high() -> None:
    assert effective_tier("never-heard-of", None, {"triage": "low"}) == "high"


@pytest.mark.parametrize("base_tier", TIERS)
@pytest.mark.parametrize("blast", (None,) + TIERS)
def test_blast_radius_raises_but_never_lowers(base_tier: str, blast: str | None) -> None:
    tier = effective_tier("f", blast, {"f": base_tier})
    expected = max([base_tier] + ([blast] if blast else []), key=TIERS.index)
    assert tier == expected


# --------------------------------------------------------------------------- direct dispatch


def _action(**over: object) -> Action:
    return parse_action("x.toml", toml(**base(**over)), SETTINGS)


def test_pr_mode_has_no_dispatch_problem() -> None:
    assert dispatch_problem(_action(secrets=["DEPLOY_KEY"]), "high") is None


def test_direct_low_without_secrets_or_mounts_is_fine() -> None:
    assert dispatch_problem(_action(dispatch_mode="direct"), "low") is None


@pytest.mark.parametrize(
    ("over", "tier", "expected"),
    [
        ({}, "medium", "its tier is 'medium'"),
        ({}, "high", "its tier is 'high'"),
        ({"secrets": ["DEPLOY_KEY"]}, "low", "it declares secrets (DEPLOY_KEY)"),
        ({"mounts": ["ssh"]}, "low", "it declares mounts (ssh)"),
    ],
)
def test_direct_problems(over: dict[str, object], tier: str, expected: str) -> None:
    problem = dispatch_problem(_action(dispatch_mode="direct", **over), tier)
    assert problem is not None and expected in problem
    assert problem.startswith('dispatch_mode = "direct" is not allowed')


# --------------------------------------------------------------------------- run ids

NOMAD_VARIABLE_PATH = re.compile(r"^[a-zA-Z0-9\-_~/]{1,128}$")  # nomad/structs/variables.go


def test_content_hash_is_sha256_hex() -> None:
    assert content_hash(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_run_id_is_deterministic_and_pins_content() -> None:
    h1, h2 = content_hash(b"a"), content_hash(b"b")
    assert run_id_for("release-v120", h1) == run_id_for("release-v120", h1) == f"release-v120-{h1[:12]}"
    assert run_id_for("release-v120", h1) != run_id_for("release-v120", h2)


@given(st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,300}", fullmatch=True), st.binary(max_size=64))
def test_run_id_is_safe_everywhere(action_id: str, data: bytes) -> None:
    run_id = run_id_for(action_id, content_hash(data))
    assert re.fullmatch(r"[A-Za-z0-9_-]+", run_id)  # Vault display_name keeps it, git ref-safe
    assert len(run_id) <= 77
    assert NOMAD_VARIABLE_PATH.match(f"reconciler/runs/{run_id}")
    assert NOMAD_VARIABLE_PATH.match(f"reconciler/runs/{run_id}/3")  # idempotency token shape too
