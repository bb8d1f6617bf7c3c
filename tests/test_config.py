"""Configuration: file and environment, with errors naming key, file and expectation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import ConfigError, load_settings, parse_duration

INVALID = [
    ('[server]\nport = "eighty"\n', "server.port: expected an integer, got 'eighty'"),
    ("[server]\nport = 70000\n", "server.port: expected 1-65535, got 70000"),
    ("[server]\nprot = 8080\n", "server.prot: unknown key (expected one of:"),
    ("[srever]\nport = 8080\n", "srever: unknown section"),
    (
        '[imap]\ntimeout = "ten seconds"\n',
        'imap.timeout: expected a duration such as "15s", "5m" or "24h"',
    ),
    (
        '[[mailboxes]]\nhost = "imap.example.com"\ntls = "tls1.3"\nusername = "a"\n',
        "mailboxes[0].tls: expected one of ssl, starttls, none, got 'tls1.3'",
    ),
    (
        '[[mailboxes]]\nhost = "imap.example.com"\n',
        "mailboxes[0].username (IMAP_USERNAME): required",
    ),
    (
        '[[mailboxes]]\nhost = "a"\nusername = "u"\nflder = "INBOX"\n',
        "mailboxes[0].flder: unknown key",
    ),
    (
        '[webhook]\nurl = "ftp://app/hook"\n',
        "webhook.url (WEBHOOK_URL): expected a URL starting with http:// or https://",
    ),
    (
        '[store]\nredis_url = "localhost:6379"\n',
        "store.redis_url (REDIS_URL): expected a URL starting with redis://",
    ),
    (
        '[links]\nallowed_hosts = "files.example.com"\n',
        "links.allowed_hosts: expected a list of strings",
    ),
    (
        '[links]\nallowed_hosts = ["https://files example.com"]\n',
        "is not host[:port] or scheme://host:port",
    ),
    (
        '[server]\nenable_background_tasks = "yes"\n',
        "server.enable_background_tasks: expected true or false, got 'yes'",
    ),
    ("[imap]\nbatch_size = 0\n", "imap.batch_size: expected at least 1, got 0"),
    ("[imap]\nbatch_bytes = 0\n", "imap.batch_bytes: expected at least 1, got 0"),
    ("[parse]\nmax_bytes_in_flight = 0\n", "parse.max_bytes_in_flight: expected at least 1, got 0"),
    ("server = 3\n", "server: expected a table, got 3"),
    ("[server\nport = 1\n", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "expected"), INVALID, ids=[e for _, e in INVALID])
def test_invalid_file_names_key_file_and_expectation(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "sidecar.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    message = str(info.value)
    assert expected in message
    assert str(path) in message


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: file not found"):
        load_settings(tmp_path / "nope.toml", env={})


def test_environment_wins_over_file(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.toml"
    path.write_text('[server]\nport = 9000\nhost = "127.0.0.1"\n')
    settings = load_settings(path, env={"SIDECAR_PORT": "9100"})
    assert settings.server.port == 9100
    assert settings.server.host == "127.0.0.1"


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"environment: IMAP_POLL_INTERVAL \(poll_interval\)"):
        load_settings(
            None, env={"IMAP_HOST": "h", "IMAP_USERNAME": "u", "IMAP_POLL_INTERVAL": "often"}
        )


def test_sidecar_config_variable_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "from-env.toml"
    path.write_text("[server]\nport = 8181\n")
    assert load_settings(None, env={"SIDECAR_CONFIG": str(path)}).server.port == 8181


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("15s", 15.0), ("5m", 300.0), ("24h", 86400.0), ("250ms", 0.25), ("1d", 86400.0), (3, 3.0)],
)
def test_durations_are_read_in_seconds(text: str | int, seconds: float) -> None:
    assert parse_duration(text, key="k", source="s") == seconds


def test_imap_variables_describe_one_mailbox() -> None:
    settings = load_settings(
        None,
        env={
            "IMAP_HOST": "imap.example.com",
            "IMAP_USERNAME": "ops",
            "IMAP_PASSWORD": "pw-1234",
            "IMAP_TLS": "starttls",
            "IMAP_POLL_INTERVAL": "45",
        },
    )
    (box,) = settings.mailboxes
    assert (box.host, box.username, box.tls, box.poll_interval) == (
        "imap.example.com",
        "ops",
        "starttls",
        45.0,
    )
    assert box.effective_port == 143


def test_several_mailboxes_from_tables(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.toml"
    path.write_text(
        '[[mailboxes]]\nname = "sales"\nhost = "a"\nusername = "s"\n'
        '[[mailboxes]]\nname = "ops"\nhost = "b"\nusername = "o"\ntls = "none"\n'
    )
    settings = load_settings(path, env={})
    assert [b.name for b in settings.mailboxes] == ["sales", "ops"]
    assert settings.mailboxes[1].effective_port == 143


def test_duplicate_mailbox_names_are_an_error(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.toml"
    path.write_text(
        '[[mailboxes]]\nname = "x"\nhost = "a"\nusername = "s"\n'
        '[[mailboxes]]\nname = "x"\nhost = "b"\nusername = "o"\n'
    )
    with pytest.raises(ConfigError, match=r"mailboxes\[1\].name: duplicate name 'x'"):
        load_settings(path, env={})


def test_a_non_ascii_folder_name_is_accepted_as_written() -> None:
    env = {"IMAP_HOST": "imap.example", "IMAP_USERNAME": "ops", "IMAP_FOLDER": "Pi\u00e8ces"}
    assert load_settings(None, env=env).mailboxes[0].folder == "Pi\u00e8ces"


def test_an_already_encoded_folder_name_is_an_error_naming_the_key_and_the_fix() -> None:
    env = {"IMAP_HOST": "imap.example", "IMAP_USERNAME": "ops", "IMAP_FOLDER": "Pi&AOg-ces"}
    with pytest.raises(ConfigError) as caught:
        load_settings(None, env=env)
    message = str(caught.value)
    assert "mailboxes[0].folder (IMAP_FOLDER)" in message
    assert "'Pi\u00e8ces'" in message


def test_secrets_lists_every_configured_secret() -> None:
    settings = load_settings(
        None,
        env={
            "IMAP_HOST": "h",
            "IMAP_USERNAME": "u",
            "IMAP_PASSWORD": "imap-secret",
            "WEBHOOK_SECRET": "hook-secret",
            "R2_FETCH_TOKEN": "r2-token-value",
            "SIDECAR_API_TOKEN": "api-token-value",
            "REDIS_URL": "redis://:pw@127.0.0.1:1/0",
        },
    )
    assert set(settings.secrets()) == {
        "imap-secret",
        "hook-secret",
        "r2-token-value",
        "api-token-value",
        "redis://:pw@127.0.0.1:1/0",
    }


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_config_check_prints_effective_config_with_secrets_masked(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.toml"
    path.write_text('[webhook]\nurl = "https://app.example/hook"\n')
    env = {
        "PATH": "/usr/bin:/bin",
        "WEBHOOK_SECRET": "s3cr3t-hook",
        "IMAP_HOST": "imap.example",
        "IMAP_USERNAME": "ops",
        "IMAP_PASSWORD": "pa55-imap",
        "REDIS_URL": "redis://:redispw@127.0.0.1:6379/0",
    }
    result = _cli("config", "check", "--config", str(path), env=env)
    assert result.returncode == 0, result.stderr
    for secret in ("s3cr3t-hook", "pa55-imap", "redispw"):
        assert secret not in result.stdout
    assert '"url": "https://app.example/hook"' in result.stdout
    assert '"password": "***"' in result.stdout


def test_config_check_exits_non_zero_on_an_invalid_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[server]\nport = -1\n")
    result = _cli("config", "check", "--config", str(path), env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 1
    assert "server.port: expected a non-negative integer" in result.stderr
    assert str(path) in result.stderr
