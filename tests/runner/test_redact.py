"""Redaction: known values, secret-shaped strings, streams and log tails."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.redact import (
    GENERIC_MARK,
    MIN_SECRET_LENGTH,
    PATTERN_HOLDBACK,
    SECRET_PATTERNS,
    Redactor,
    StreamRedactor,
    redacted_tail,
)

B62 = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "QyNTUxOQAAACDxEXAMPLEKEYMATERIALxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxAAAAJgx\n"
    "ab\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)


def stream(redactor: StreamRedactor, chunks: list[str]) -> str:
    """Everything a stream redactor emits for ``chunks``, flush included."""
    return "".join(redactor.feed(c) for c in chunks) + redactor.flush()


def chunked(text: str, cuts: list[int]) -> list[str]:
    """``text`` split at the (sorted, deduplicated) positions ``cuts``."""
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(text)}), len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


# -- secret-shaped strings -----------------------------------------------------------

SHAPED = {
    "vault service token": "hvs.CAESIJ3xq0d9k7Zr2mYp5vT8wL1nB4cF6gH0jK2lM9oP3qR5sT",
    "vault batch token": "hvb.AAAAAQKx9Zr2mYp5vT8wL1nB4cF6gH0jK2lM9oP3qR5sTuVwXyZ012345",
    "vault recovery token": "hvr.AAAAAQKx9Zr2mYp5vT8wL1nB4cF6gH0jK2",
    "legacy vault token": "s.Zr2mYp5vT8wL1nB4cF6gH0jK",
    "github classic token": "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8",
    "github oauth token": "gho_" + "a" * 36,
    "github user-to-server token": "ghu_" + "B" * 36,
    "github server-to-server token": "ghs_" + "0" * 36,
    "github refresh token": "ghr_" + "z9" * 18,
    "github fine-grained token": "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH",
    "npm token": "npm_" + "x1Y2" * 9,
    "docker hub pat": "dckr_pat_" + "Ab3-dEf_6gHiJkLmNoPqRsTuVwX",
    "slack bot token": "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
    "slack user token": "xoxp-1234567890-1234567890-1234567890-abcdef",
    "aws access key id": "AKIAIOSFODNN7EXAMPLE",
    "gitlab token": "glpat-" + "xYz_12-abcDEF34567890",
}


@pytest.mark.parametrize("token", SHAPED.values(), ids=SHAPED.keys())
def test_secret_shaped_strings_are_redacted_in_context(token: str) -> None:
    text = f"step 3: using {token} for the push\nnext line"
    out = Redactor().redact(text)
    assert token not in out
    assert out == f"step 3: using {GENERIC_MARK} for the push\nnext line"


@pytest.mark.parametrize("token", SHAPED.values(), ids=SHAPED.keys())
def test_secret_shaped_strings_are_redacted_at_text_edges_and_in_quotes(token: str) -> None:
    assert Redactor().redact(token) == GENERIC_MARK
    assert Redactor().redact(f'token="{token}"') == f'token="{GENERIC_MARK}"'
    assert Redactor().redact(f"url=https://x:{token}@host/") == f"url=https://x:{GENERIC_MARK}@host/"


@pytest.mark.parametrize(
    "header",
    [
        "Authorization: Bearer abc.def-ghi",
        "authorization: token 0123456789abcdef",
        "AUTHORIZATION:Bearer\tq",
        "-H 'Authorization: Basic dXNlcjpwYXNz'",
    ],
)
def test_authorization_header_keeps_the_scheme_and_hides_the_credential(header: str) -> None:
    out = Redactor().redact(header)
    credential = header.split()[-1].split("\t")[-1].strip("'")
    assert credential not in out
    assert GENERIC_MARK in out
    assert out.lower().startswith(header.lower()[: header.lower().index("authorization") + len("authorization")])


def test_private_key_block_is_redacted_whole() -> None:
    text = "before\n" + PRIVATE_KEY + "after\n"
    assert Redactor().redact(text) == "before\n" + GENERIC_MARK + "\nafter\n"


@pytest.mark.parametrize(
    "label", ["RSA PRIVATE KEY", "EC PRIVATE KEY", "PRIVATE KEY", "ENCRYPTED PRIVATE KEY", "PGP PRIVATE KEY BLOCK"]
)
def test_private_key_block_variants(label: str) -> None:
    block = f"-----BEGIN {label}-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END {label}-----"
    assert Redactor().redact(f"x {block} y") == f"x {GENERIC_MARK} y"


def test_unterminated_private_key_block_is_redacted_to_the_end() -> None:
    text = "log line\n-----BEGIN RSA PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\ntruncated"
    assert Redactor().redact(text) == "log line\n" + GENERIC_MARK


def test_public_keys_and_certificates_are_left_alone() -> None:
    text = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n"
    assert Redactor().redact(text) == text


ORDINARY = [
    "commit 3f786850e387550fdab836ed7e6dc881de23001b",
    "HEAD is now at 9fceb02d0ae598e95dc970b74767f19372d61af8 Merge pull request '#12' from fix/x into main",
    "Successfully installed requests-2.31.0 hvac-2.1.0",
    "this.is.fine and os.environ and process.stdout.write",
    "see https://github.com/disinto/factory/pull/42 and git@codeberg.org:x/y.git",
    "uuid 123e4567-e89b-12d3-a456-426614174000, sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "npm notice publishing @scope/pkg@1.2.3; ghp_short; xoxb-1; hvs.short; AKIA1234",
    "Authorization header missing; the token was rejected",
    "dispatch-1700000000-deadbeef finished: exit=0 reason=ok",
    "base64 payload eyJ2ZXJzaW9uIjogMX0= written",
]


@pytest.mark.parametrize("line", ORDINARY)
def test_ordinary_log_lines_are_left_alone(line: str) -> None:
    assert Redactor().redact(line) == line


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789 \n,", max_size=300))
def test_text_without_secret_shapes_passes_unchanged(text: str) -> None:
    assert Redactor().redact(text) == text


def test_every_pattern_is_exercised_by_an_example() -> None:
    for rx in SECRET_PATTERNS:
        examples = list(SHAPED.values()) + [PRIVATE_KEY, "Authorization: Bearer x"]
        assert any(rx.search(e) for e in examples), rx.pattern


# -- known values ---------------------------------------------------------------------


def test_known_value_is_replaced_with_its_name() -> None:
    r = Redactor({"NPM_TOKEN": "plain-looking-value", "DEPLOY_KEY": "another one"})
    assert r.redact("a plain-looking-value b another one c") == "a [REDACTED:NPM_TOKEN] b [REDACTED:DEPLOY_KEY] c"


def test_every_occurrence_is_replaced() -> None:
    r = Redactor({"T": "s3cr3t"})
    assert r.redact("s3cr3t,s3cr3t s3cr3ts3cr3t") == "[REDACTED:T],[REDACTED:T] [REDACTED:T][REDACTED:T]"


def test_longest_value_wins_when_one_contains_another() -> None:
    r = Redactor({"SHORT": "abcd", "LONG": "xxabcdyy"})
    assert r.redact("1 xxabcdyy 2 abcd") == "1 [REDACTED:LONG] 2 [REDACTED:SHORT]"


def test_overlapping_values_leave_no_fragment_of_either() -> None:
    r = Redactor({"A": "xxab", "B": "abcdefgh"})
    out = r.redact("<xxabcdefgh>")
    assert out == "<[REDACTED:B]>"


def test_value_inside_a_pattern_match_takes_the_value_name() -> None:
    token = SHAPED["github classic token"]
    assert Redactor({"GITHUB_TOKEN": token}).redact(f"x {token} y") == "x [REDACTED:GITHUB_TOKEN] y"


@pytest.mark.parametrize("value", ["", "a", "ab", "abc"])
def test_values_shorter_than_the_minimum_are_ignored(value: str) -> None:
    assert len(value) < MIN_SECRET_LENGTH
    assert Redactor({"TINY": value}).redact("a cab abc") == "a cab abc"


def test_value_with_surrounding_whitespace_is_also_found_stripped() -> None:
    r = Redactor({"T": "  tok-en-value\n"})
    assert r.redact("got tok-en-value!") == "got [REDACTED:T]!"


def test_multi_line_value_is_redacted_whole_and_line_by_line() -> None:
    r = Redactor({"mount:ssh/id": PRIVATE_KEY})
    assert r.redact("k=" + PRIVATE_KEY) == "k=[REDACTED:mount:ssh/id]"
    body = PRIVATE_KEY.splitlines()[1:-1]
    # Its body printed reformatted (reordered, indented, CRLF), so that neither
    # the whole value nor the key-block pattern matches: every line still goes.
    out = r.redact("".join(f"  {line}\r\n" for line in reversed(body)))
    expected = "".join(
        "  [REDACTED:mount:ssh/id]\r\n" if len(line) >= MIN_SECRET_LENGTH else f"  {line}\r\n"
        for line in reversed(body)
    )
    assert out == expected


def test_redact_of_empty_text_is_empty() -> None:
    assert Redactor({"T": "value"}).redact("") == ""


# -- streams --------------------------------------------------------------------------


def test_complete_lines_are_emitted_at_once() -> None:
    s = StreamRedactor({"T": "secret-value"})
    assert s.feed("hello\nwor") == "hello\n"
    assert s.feed("ld\n") == "world\n"
    assert s.flush() == ""


def test_a_line_without_newline_is_emitted_at_flush() -> None:
    s = StreamRedactor()
    assert s.feed("Password: ") == ""
    assert s.flush() == "Password: "


def test_a_long_line_is_emitted_except_its_last_holdback_characters() -> None:
    s = StreamRedactor()
    out = s.feed("x" * (PATTERN_HOLDBACK + 100))
    assert out == "x" * 100
    assert s.pending == PATTERN_HOLDBACK


def test_value_split_across_chunks_is_caught() -> None:
    s = StreamRedactor({"T": "split-secret"})
    assert s.feed("a\nb split-se") == "a\n"
    assert s.feed("cret c\n") == "b [REDACTED:T] c\n"


def test_value_split_across_a_newline_boundary_is_caught_whole() -> None:
    # Lines of this value are too short to be redacted one by one: only the
    # whole value protects it, so the stream must not cut inside it.
    value = "ab\ncd\nef"
    s = StreamRedactor({"T": value})
    assert stream(s, ["x ab\n", "cd\n", "ef y\n"]) == "x [REDACTED:T] y\n"


def test_a_prefix_that_turns_out_not_to_be_the_value_is_released() -> None:
    s = StreamRedactor({"T": "secret-value"})
    assert s.feed("sec") == ""
    assert s.feed("ond\n") == "second\n"


def test_token_split_across_chunks_is_caught() -> None:
    token = SHAPED["vault service token"]
    s = StreamRedactor()
    out = stream(s, ["x\n" + token[:10], token[10:30], token[30:] + " y\n"])
    assert out == f"x\n{GENERIC_MARK} y\n"


def test_private_key_block_across_many_chunks_is_held_until_its_end() -> None:
    s = StreamRedactor()
    pieces = ["start\n"] + [line + "\n" for line in PRIVATE_KEY.splitlines()] + ["done\n"]
    emitted = [s.feed(p) for p in pieces]
    assert emitted[0] == "start\n"
    assert all(e == "" for e in emitted[1:-2])
    assert "".join(emitted) + s.flush() == f"start\n{GENERIC_MARK}\ndone\n"


def test_over_long_key_block_is_swallowed_until_its_end_line() -> None:
    s = StreamRedactor(max_pending=1000)
    body = "".join(f"{'Q' * 60}{i:04d}\n" for i in range(100))
    chunks = ["a\n-----BEGIN RSA PRIVATE KEY-----\n", *chunked(body, list(range(0, len(body), 333)))]
    chunks += ["-----END RSA PRI", "VATE KEY-----\nb\n"]
    out = stream(s, chunks)
    assert out == f"a\n{GENERIC_MARK}\nb\n"
    assert "QQQQ" not in out


def test_unterminated_key_block_at_end_of_stream_is_redacted() -> None:
    s = StreamRedactor()
    assert stream(s, ["ok\n-----BEGIN EC PRIVATE KEY-----\n", "MHcCAQEEIBk\n"]) == "ok\n" + GENERIC_MARK


def test_pending_is_bounded() -> None:
    s = StreamRedactor(max_pending=2000)
    token_body = "a" * 10_000
    out = s.feed("hvs." + token_body)
    assert s.pending <= 2000
    assert out.startswith(GENERIC_MARK)


# -- properties -----------------------------------------------------------------------

SECRET_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
FILLER_ALPHABET = " \t\n.,;:!?=()<>{}XYZ-"
"""Disjoint from the secrets' alphabet and unable to form a secret-shaped string."""


@st.composite
def text_with_secrets(draw: st.DrawFn, multi_line: bool = False) -> tuple[dict[str, str], str]:
    """Secrets and a text that embeds them (and prefixes of them) among filler."""
    alphabet = SECRET_ALPHABET + ("\n" if multi_line else "")
    secrets = draw(
        st.lists(st.text(alphabet=alphabet, min_size=MIN_SECRET_LENGTH, max_size=40), min_size=1, max_size=3)
    )
    values = {f"SECRET_{chr(65 + i)}": v for i, v in enumerate(secrets)}
    parts = draw(
        st.lists(
            st.one_of(
                st.text(alphabet=FILLER_ALPHABET, max_size=30),
                st.sampled_from(secrets),
            ),
            max_size=12,
        )
    )
    return values, "".join(parts)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text_with_secrets(multi_line=True), st.lists(st.integers(min_value=0, max_value=600), max_size=30))
def test_stream_output_equals_redacting_the_whole_text(case: tuple[dict[str, str], str], cuts: list[int]) -> None:
    values, text = case
    out = stream(StreamRedactor(values), chunked(text, cuts))
    assert out == Redactor(values).redact(text)


@settings(max_examples=150, deadline=None)
@given(text_with_secrets(multi_line=True), st.lists(st.integers(min_value=0, max_value=600), max_size=30))
def test_stream_leaks_no_character_of_any_secret(case: tuple[dict[str, str], str], cuts: list[int]) -> None:
    values, text = case
    out = stream(StreamRedactor(values), chunked(text, cuts))
    for value in values.values():
        assert value not in out
    # Filler never contains a secret character: any one in the output would be a fragment.
    assert not set(out) & set(SECRET_ALPHABET)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.text(alphabet=SECRET_ALPHABET, min_size=4, max_size=20), min_size=1, max_size=2),
    st.lists(st.text(alphabet=SECRET_ALPHABET + FILLER_ALPHABET, max_size=20), max_size=8),
    st.lists(st.integers(min_value=0, max_value=400), max_size=30),
)
def test_stream_never_emits_a_secret_even_among_its_own_fragments(
    secrets: list[str], noise: list[str], cuts: list[int]
) -> None:
    # Noise shares the secrets' alphabet and includes their prefixes and suffixes.
    values = {f"S{i}": v for i, v in enumerate(secrets)}
    pieces = []
    for i, n in enumerate(noise):
        s = secrets[i % len(secrets)]
        pieces += [n, s[: len(n) % len(s)], s, s[len(n) % len(s) :]]
    text = "".join(pieces)
    out = stream(StreamRedactor(values), chunked(text, cuts))
    assert out == Redactor(values).redact(text)
    for value in secrets:
        assert value not in out


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(sorted(SHAPED.values())),
    st.text(alphabet=" \n.,;:!?()<>{}", max_size=400),
    st.integers(min_value=0, max_value=400),
    st.lists(st.integers(min_value=0, max_value=900), max_size=40),
)
def test_stream_catches_secret_shaped_strings_under_any_chunking(
    token: str, filler: str, at: int, cuts: list[int]
) -> None:
    at = min(at, len(filler))
    text = filler[:at] + " " + token + " " + filler[at:]
    out = stream(StreamRedactor(), chunked(text, cuts))
    assert token not in out
    assert out == Redactor().redact(text)


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=" \n.,;:!?()<>{}", max_size=300), st.lists(st.integers(min_value=0, max_value=4000), max_size=40))
def test_stream_catches_a_private_key_under_any_chunking(filler: str, cuts: list[int]) -> None:
    text = filler + PRIVATE_KEY + filler
    out = stream(StreamRedactor(), chunked(text, cuts))
    assert out == Redactor().redact(text)
    assert "EXAMPLEKEYMATERIAL" not in out


@settings(max_examples=150, deadline=None)
@given(text_with_secrets(), st.integers(min_value=0, max_value=200))
def test_redacted_tail_is_the_tail_of_the_redacted_text(case: tuple[dict[str, str], str], limit: int) -> None:
    values, text = case
    tail = redacted_tail(text, values, limit=limit)
    assert len(tail) <= limit
    assert tail == (Redactor(values).redact(text)[-limit:] if limit else "")
    # A secret straddling the cut leaves no fragment: the tail holds no
    # character of any secret at all (the filler has none of them).
    assert not set(tail) & set(SECRET_ALPHABET)


def test_redacted_tail_cut_inside_a_secret_leaves_no_fragment() -> None:
    secret = "0123456789abcdefghij"
    text = "x" * 50 + secret + "y" * 5
    # Cutting the raw text first would keep "fghij": redacting first does not.
    tail = redacted_tail(text, {"T": secret}, limit=10)
    assert tail == "[REDACTED:T]yyyyy"[-10:]
    assert not any(secret[i : i + 2] in tail for i in range(len(secret) - 1))


def test_redacted_tail_keeps_short_text_whole_and_redacts_patterns() -> None:
    token = SHAPED["npm token"]
    assert redacted_tail(f"published with {token}") == f"published with {GENERIC_MARK}"
    assert redacted_tail("abc", limit=0) == ""
