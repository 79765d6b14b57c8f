"""TokenSource: literal tokens, token files, rotation picked up without a restart."""

from __future__ import annotations

import os

import pytest

from reconciler.credentials import CredentialError, TokenSource


def _write(path, text: str, *, bump: int = 0) -> None:
    path.write_text(text, encoding="utf-8")
    if bump:  # make the change visible even on file systems with coarse timestamps
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + bump))


def test_literal_token_is_returned_as_is():
    assert TokenSource("s.literal").get() == "s.literal"


def test_of_returns_none_when_nothing_is_configured(tmp_path):
    assert TokenSource.of(None, None) is None
    assert TokenSource.of("", "") is None
    assert isinstance(TokenSource.of(None, tmp_path / "t"), TokenSource)


def test_file_is_read_and_stripped(tmp_path):
    f = tmp_path / "token"
    _write(f, "  tok-1\n")
    assert TokenSource(path=f).get() == "tok-1"


def test_rewritten_file_is_picked_up_mid_run(tmp_path):
    f = tmp_path / "token"
    _write(f, "tok-1\n")
    source = TokenSource(path=f, what="VAULT_TOKEN_FILE")
    assert source() == "tok-1"
    assert source() == "tok-1"
    assert source.reloads == 1, "an unchanged file must not be read again"
    _write(f, "tok-2-longer\n", bump=1_000_000)
    assert source() == "tok-2-longer"
    # same size, different content: the mtime alone reveals the change
    _write(f, "tok-3-longer\n", bump=2_000_000)
    assert source() == "tok-3-longer"
    assert source.reloads == 3


def test_atomic_replace_by_rename_is_picked_up(tmp_path):
    f = tmp_path / "token"
    _write(f, "old-token\n")
    source = TokenSource(path=f)
    assert source() == "old-token"
    new = tmp_path / "token.new"
    _write(new, "new-token\n")
    os.replace(new, f)  # what Vault Agent's sink does
    assert source() == "new-token"


def test_file_briefly_missing_or_empty_keeps_the_last_token(tmp_path):
    f = tmp_path / "token"
    _write(f, "tok-1")
    source = TokenSource(path=f)
    assert source() == "tok-1"
    f.unlink()
    assert source() == "tok-1"
    _write(f, "", bump=1_000_000)
    assert source() == "tok-1"
    _write(f, "tok-2", bump=2_000_000)
    assert source() == "tok-2"


def test_missing_file_at_start_names_the_file_not_a_value(tmp_path):
    f = tmp_path / "absent"
    with pytest.raises(CredentialError) as err:
        TokenSource(path=f, what="NOMAD_TOKEN_FILE").get()
    assert "NOMAD_TOKEN_FILE" in str(err.value) and str(f) in str(err.value)


def test_empty_file_at_start_is_an_error(tmp_path):
    f = tmp_path / "token"
    _write(f, "\n")
    with pytest.raises(CredentialError, match="empty"):
        TokenSource(path=f).get()


def test_repr_never_shows_the_value(tmp_path):
    f = tmp_path / "token"
    _write(f, "very-secret")
    source = TokenSource("also-secret", f)
    source.get()
    assert "secret" not in repr(source).replace(str(f), "")


def test_header_auth_sends_the_rotated_token_on_each_request(tmp_path):
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    import requests

    from reconciler.credentials import NOMAD_HEADER, HeaderAuth

    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            seen.append(self.headers.get(NOMAD_HEADER))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        f = tmp_path / "nomad.token"
        _write(f, "tok-a")
        session = requests.Session()
        session.auth = HeaderAuth(TokenSource(path=f), NOMAD_HEADER)
        url = f"http://127.0.0.1:{server.server_address[1]}/v1/jobs"
        # a static header set by a library (python-nomad, hvac) is replaced by the current token
        session.get(url, headers={NOMAD_HEADER: "stale-static"}, timeout=5)
        _write(f, "tok-b", bump=1_000_000)
        session.get(url, timeout=5)
    finally:
        server.shutdown()
        server.server_close()
    assert seen == ["tok-a", "tok-b"]
