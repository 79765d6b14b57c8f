"""The client-side reading of Nomad policies (reconciler.nomad_policy) agrees with the double's model
of acl/policy.go and acl/acl.go on the shipped policies and on globs, shorthands and deny."""

from __future__ import annotations

from pathlib import Path

from doubles.nomad_acl import ACL, parse_policy
from reconciler.nomad_policy import Grants

REPO = Path(__file__).resolve().parents[1]

CASES = [
    'namespace "runners" { policy = "write" }',
    'namespace "run*" { capabilities = ["submit-job"] }\nnamespace "runners" { capabilities = ["deny"] }',
    'namespace "*" { policy = "read" }\nhost_volume "fact*" { policy = "write" }\nhost_volume "factory" { capabilities = ["deny"] }',
    'host_volume "projects" { policy = "read" }\nnamespace "runners" { capabilities = ["parse-job"] }',
]


def test_client_grants_match_the_double_on_every_question_apply_asks() -> None:
    texts = [p.read_text(encoding="utf-8") for p in sorted((REPO / "jobspecs" / "nomad-acl").glob("*.hcl"))] + CASES
    questions_ns = [("submit-job",), ("parse-job", "submit-job"), ("read-job",), ("list-jobs",), ("dispatch-job",)]
    questions_hv = [("mount-readonly", "mount-readwrite"), ("mount-readwrite",)]
    for text in texts:
        ours, theirs = Grants.of([text]), ACL.of([parse_policy(text)])
        for ns in ("runners", "default", "other"):
            for caps in questions_ns:
                assert ours.allow_ns(ns, *caps) == theirs.allow_ns(ns, *caps), (text, ns, caps)
        for source in ("factory", "projects", "reconciler-state", "factory-b"):
            for caps in questions_hv:
                assert ours.allow_host_volume(source, *caps) == theirs.allow_host_volume(source, *caps), (text, source, caps)
