"""git's environment: isolated, secret-free, and a token only through the askpass file."""

from __future__ import annotations

import os
import stat
import subprocess

from reconciler.clients.git_env import GitAuth, clean_env, origin_of, parse_git_version


def test_secrets_and_foreign_config_are_stripped_and_isolation_added():
    env = clean_env({
        "PATH": "/usr/bin", "HOME": "/home/r", "SSH_AUTH_SOCK": "/tmp/agent",
        "VAULT_TOKEN": "s.x", "NOMAD_TOKEN": "n", "FORGE_TOKEN": "f", "FORGE_TOKEN_FILE": "/run/t",
        "GITHUB_TOKEN": "g", "AWS_SECRET_ACCESS_KEY": "a", "DB_PASSWORD": "p",
        "GIT_ASKPASS": "/usr/bin/ksshaskpass", "GIT_CONFIG_KEY_0": "url.x.insteadOf", "GIT_CONFIG_VALUE_0": "y",
        "GIT_TRACE_CURL": "1", "GIT_CURL_VERBOSE": "1",
    })
    assert env["PATH"] == "/usr/bin" and env["HOME"] == "/home/r" and env["SSH_AUTH_SOCK"] == "/tmp/agent"
    for gone in ("VAULT_TOKEN", "NOMAD_TOKEN", "FORGE_TOKEN", "FORGE_TOKEN_FILE", "GITHUB_TOKEN",
                 "AWS_SECRET_ACCESS_KEY", "DB_PASSWORD", "GIT_ASKPASS", "GIT_CONFIG_KEY_0", "GIT_CONFIG_VALUE_0",
                 "GIT_TRACE_CURL", "GIT_CURL_VERBOSE"):
        assert gone not in env, gone
    assert env["GIT_CONFIG_GLOBAL"] == os.devnull and env["GIT_CONFIG_NOSYSTEM"] == "1"
    assert env["GIT_NO_REPLACE_OBJECTS"] == "1" and env["GIT_TERMINAL_PROMPT"] == "0"


def test_user_config_does_not_reach_git(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text("[log]\n\tshowSignature = true\n[user]\n\tname = Surprise\n")
    env = clean_env({"PATH": os.environ["PATH"], "HOME": str(home)})
    proc = subprocess.run(["git", "config", "--get", "user.name"], env=env, capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stdout == ""


def test_origin_and_version_parsing():
    assert origin_of("https://Forge.example:3000/factory/ops.git") == "https://forge.example:3000"
    assert origin_of("http://user:pw@h/x") == "http://h"
    assert origin_of("file:///srv/ops.git") is None and origin_of(None) is None
    assert parse_git_version("git version 2.39.5") == (2, 39, 5)
    assert parse_git_version("git version 2.45.1.windows.1") == (2, 45, 1)
    assert parse_git_version("nonsense") is None


def _ask(env: dict[str, str], prompt: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([env["GIT_ASKPASS"], prompt], env=env, capture_output=True, text=True)


def test_literal_token_goes_to_a_private_file_that_close_removes():
    auth = GitAuth("http://127.0.0.1:3000/o/r.git", "http://127.0.0.1:3000", lambda: "t0ken")
    env = auth.env()
    assert "t0ken" not in "".join(env.values())
    path = env["RECONCILER_GIT_TOKEN_FILE"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert _ask(env, "Password for 'http://reconciler@127.0.0.1:3000': ").stdout == "t0ken\n"
    assert _ask(env, "Username for 'http://127.0.0.1:3000': ").stdout == "reconciler\n"
    other = _ask(env, "Password for 'http://reconciler@evil.example': ")
    assert other.returncode != 0 and other.stdout == ""
    auth.close()
    assert not os.path.exists(path)


def test_token_file_is_read_at_each_prompt(tmp_path):
    token_file = tmp_path / "forge-token"
    token_file.write_text("first\n")
    auth = GitAuth("https://forge.example/o/r.git", "https://forge.example", lambda: "unused", token_file=token_file)
    env = auth.env()
    assert env["RECONCILER_GIT_TOKEN_FILE"] == str(token_file)
    assert _ask(env, "Password for 'https://reconciler@forge.example': ").stdout == "first\n"
    token_file.write_text("second")
    assert _ask(env, "Password for 'https://reconciler@forge.example': ").stdout == "second\n"
    auth.close()


def test_no_askpass_for_a_remote_off_the_forge():
    assert GitAuth("https://github.com/o/r.git", "https://forge.example", lambda: "t").env() == {}
    assert GitAuth("file:///srv/ops.git", "https://forge.example", lambda: "t").env() == {}
    assert GitAuth("https://forge.example/o/r.git", "https://forge.example", None).env() == {}
