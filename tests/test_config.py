"""Configuration: file and environment, with errors naming key, file and expectation."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, get_type_hints

import pytest

from agent.config import (
    ConfigError,
    Duration,
    Override,
    effective_config,
    load_settings,
    parse_duration,
    section_types,
)
from agent.config_fields import Bounds, bounds_of

INVALID = [
    ('[server]\nport = "eighty"\n', "server.port: expected an integer, got 'eighty'"),
    ("[server]\nport = 70000\n", "server.port: expected 0 to 65535, got 70000"),
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
        "webhook.url: expected a URL starting with http:// or https://",
    ),
    (
        '[store]\nredis_url = "localhost:6379"\n',
        "store.redis_url: expected a URL starting with redis://",
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
    ("[imap]\nbatch_size = 0\n", "imap.batch_size: expected 1 to 10000, got 0"),
    ("[imap]\nbatch_bytes = 0\n", "imap.batch_bytes: expected 1 to 1073741824, got 0"),
    (
        "[parse]\nmax_bytes_in_flight = 0\n",
        "parse.max_bytes_in_flight: expected 1 to 4294967296, got 0",
    ),
    ("[health]\ninterval = 0\n", "health.interval: expected a duration from 100ms to 1h, got 0s"),
    (
        '[telemetry]\nlog_level = "loud"\n',
        "telemetry.log_level: expected one of debug, info, warning, warn, error, critical",
    ),
    (
        '[server]\nhost = "999.1.1.1"\n',
        "server.host: expected an IP address or a host name, got '999.1.1.1', which is not a "
        "valid IPv4 address",
    ),
    (
        '[imap]\nidle_keepalive = "5m"\nidle_renew = "2m"\n',
        "imap.idle_keepalive: expected less than imap.idle_renew (2m), got 5m",
    ),
    (
        '[webhook]\nbackoff_initial = "5s"\nbackoff_max = "1s"\n',
        "webhook.backoff_max: expected at least webhook.backoff_initial (5s), got 1s",
    ),
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


def test_a_poll_interval_longer_than_the_lease_ttl_is_accepted_because_resting_renews_it() -> None:
    settings = load_settings(None, env={"IMAP_HOST": "imap.example", "IMAP_USERNAME": "u",
                                        "IMAP_POLL_INTERVAL": "300"})  # fmt: skip
    assert settings.mailboxes[0].poll_interval == 300
    assert settings.imap.lease_ttl == 60
    assert settings.imap.idle


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


def _bounded_settings() -> list[tuple[str, dataclasses.Field[Any], Bounds]]:
    found = []
    for section, cls in section_types().items():
        for f in dataclasses.fields(cls):
            bounds = bounds_of(f)
            if bounds is not None:
                found.append((section, f, bounds))
    return found


BOUNDED = _bounded_settings()


def test_every_number_and_duration_declares_its_range() -> None:
    missing = [
        f"{section}.{f.name}"
        for section, cls in section_types().items()
        for f in dataclasses.fields(cls)
        if get_type_hints(cls)[f.name] in (int, Duration) and bounds_of(f) is None
    ]
    assert missing == []


@pytest.mark.parametrize(
    ("section", "f", "bounds"), BOUNDED, ids=[f"{s}.{f.name}" for s, f, _ in BOUNDED]
)
def test_every_default_lies_within_its_range(
    section: str, f: dataclasses.Field[Any], bounds: Bounds
) -> None:
    assert bounds.low <= f.default <= bounds.high


def _out_of_range(bounds: Bounds) -> list[float]:
    step = 0.001 if bounds.duration else 1
    values = [bounds.high + step]
    if bounds.low > 0:
        values.append(bounds.low - step)
    return values


def _toml_value(value: float, bounds: Bounds) -> str:
    return f'"{value}s"' if bounds.duration else str(int(value))


@pytest.mark.parametrize(
    ("section", "f", "bounds"), BOUNDED, ids=[f"{s}.{f.name}" for s, f, _ in BOUNDED]
)
def test_a_value_outside_its_range_names_the_key_and_the_range(
    tmp_path: Path, section: str, f: dataclasses.Field[Any], bounds: Bounds
) -> None:
    path = tmp_path / "sidecar.toml"
    for value in _out_of_range(bounds):
        line = f"{f.name} = {_toml_value(value, bounds)}\n"
        if section == "mailboxes":
            text = f'[[mailboxes]]\nhost = "h"\nusername = "u"\n{line}'
            key = f"mailboxes[0].{f.name}"
        else:
            text = f"[{section}]\n{line}"
            key = f"{section}.{f.name}"
        path.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_settings(path, env={})
        assert f"{path}: {key}: expected {bounds.describe()}, got " in str(info.value)


def test_a_value_out_of_range_in_the_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, env={"IMAP_HOST": "h", "IMAP_USERNAME": "u", "IMAP_POLL_INTERVAL": "0"})
    assert str(info.value) == (
        "environment: IMAP_POLL_INTERVAL (poll_interval): expected a duration from 100ms to 1d, "
        "got 0s"
    )


def test_a_command_line_value_is_held_to_the_same_range() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, env={}, overrides={"server.port": Override("--port", "99999")})
    assert str(info.value) == "command line: --port (server.port): expected 0 to 65535, got 99999"


def test_a_command_line_value_wins_over_environment_and_file(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.toml"
    path.write_text("[server]\nport = 9000\n")
    overrides = {"server.port": Override("--port", "0")}
    settings = load_settings(path, env={"SIDECAR_PORT": "9100"}, overrides=overrides)
    assert settings.server.port == 0


def _secret_settings() -> list[tuple[str, str]]:
    return [
        (section, f.name)
        for section, cls in section_types().items()
        for f in dataclasses.fields(cls)
        if f.metadata.get("secret")
    ]


SECRET_SETTINGS = _secret_settings()


@pytest.mark.parametrize(
    ("section", "name"), SECRET_SETTINGS, ids=[f"{s}.{n}" for s, n in SECRET_SETTINGS]
)
def test_an_error_about_a_secret_never_shows_its_value(
    tmp_path: Path, section: str, name: str
) -> None:
    path = tmp_path / "sidecar.toml"
    if section == "mailboxes":
        path.write_text(f'[[mailboxes]]\nhost = "h"\nusername = "u"\n{name} = 87654321\n')
    else:
        path.write_text(f"[{section}]\n{name} = 87654321\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    message = str(info.value)
    assert "87654321" not in message
    assert message.endswith(
        f"{name}: expected a string, got an integer (the value of a secret is not shown)"
    )


@pytest.mark.parametrize(
    "url",
    [
        "redis://:s3cret-pw-1@[::1",
        "redis://:s3cret-pw-1@[::1]:99999/0",
        "redis://127.0.0.1:s3cret-pw-1/0",
        "redis://:s3cret-pw-1@127.0.0.1/0?socket_timeout=s3cret-pw-1",
    ],
)
def test_a_malformed_redis_url_is_an_error_that_does_not_quote_it(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, env={"REDIS_URL": url})
    message = str(info.value)
    assert message.startswith("environment: REDIS_URL (store.redis_url): ")
    assert "s3cret-pw-1" not in message


def _secret_file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


FILE_VARIABLES = [
    ("IMAP_PASSWORD_FILE", "imap-secret-from-file"),
    ("WEBHOOK_SECRET_FILE", "hook-secret-from-file"),
    ("R2_FETCH_TOKEN_FILE", "r2-token-from-file"),
    ("SIDECAR_API_TOKEN_FILE", "api-token-from-file"),
    ("REDIS_URL_FILE", "redis://:pw-from-file@127.0.0.1:6379/0"),
    ("IMAP_ACCESS_TOKEN_FILE", "access-token-from-file"),
    ("IMAP_OAUTH_CLIENT_SECRET_FILE", "client-secret-from-file"),
    ("IMAP_OAUTH_REFRESH_TOKEN_FILE", "refresh-token-from-file"),
]


@pytest.mark.parametrize(("variable", "secret"), FILE_VARIABLES)
def test_each_secret_variable_has_a_file_twin_whose_value_is_masked(
    tmp_path: Path, variable: str, secret: str
) -> None:
    path = _secret_file(tmp_path, "secret", secret + "\n")
    env = {"IMAP_HOST": "h", "IMAP_USERNAME": "u", variable: str(path)}
    settings = load_settings(None, env=env)
    assert settings.secrets() == [secret]
    assert secret not in json.dumps(effective_config(settings))


def test_the_imap_password_file_overrides_the_first_mailbox_only(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.toml"
    path.write_text(
        '[[mailboxes]]\nname = "a"\nhost = "h"\nusername = "u"\npassword = "in-file-1"\n'
        '[[mailboxes]]\nname = "b"\nhost = "h"\nusername = "v"\npassword = "in-file-2"\n'
    )
    secret = _secret_file(tmp_path, "imap", "from-secret-mount")
    settings = load_settings(path, env={"IMAP_PASSWORD_FILE": str(secret)})
    assert [box.password for box in settings.mailboxes] == ["from-secret-mount", "in-file-2"]


def test_every_mailbox_reads_its_password_from_a_file_or_a_named_variable(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    _secret_file(tmp_path / "secrets", "sales", "sales-pw-from-file\r\n")
    path = tmp_path / "sidecar.toml"
    path.write_text(
        '[[mailboxes]]\nname = "sales"\nhost = "h"\nusername = "s"\n'
        'password_file = "secrets/sales"\n'
        '[[mailboxes]]\nname = "ops"\nhost = "h"\nusername = "o"\n'
        'password_env = "OPS_IMAP_PASSWORD"\n'
    )
    settings = load_settings(path, env={"OPS_IMAP_PASSWORD": "ops-pw-from-env"})
    assert [box.password for box in settings.mailboxes] == [
        "sales-pw-from-file",
        "ops-pw-from-env",
    ]
    assert set(settings.secrets()) == {"sales-pw-from-file", "ops-pw-from-env"}


def test_a_section_secret_reads_from_a_file_key(tmp_path: Path) -> None:
    _secret_file(tmp_path, "hook", "hook-secret-1234")
    path = tmp_path / "sidecar.toml"
    path.write_text('[webhook]\nsecret_file = "hook"\n')
    assert load_settings(path, env={}).webhook.secret == "hook-secret-1234"


def test_a_variable_and_its_file_twin_both_set_is_an_error(tmp_path: Path) -> None:
    path = _secret_file(tmp_path, "hook", "from-file")
    with pytest.raises(ConfigError) as info:
        load_settings(None, env={"WEBHOOK_SECRET": "from-env", "WEBHOOK_SECRET_FILE": str(path)})
    assert str(info.value) == (
        "environment: WEBHOOK_SECRET and WEBHOOK_SECRET_FILE are both set; set only one"
    )


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (
            'password = "x"\npassword_file = "/run/secrets/pw"\n',
            "mailboxes[0].password and mailboxes[0].password_file: set only one of them",
        ),
        (
            'password_env = "NOT_SET_ANYWHERE"\n',
            "mailboxes[0].password_env: the variable NOT_SET_ANYWHERE is not set",
        ),
        (
            'password_env = "EMPTY_ONE"\n',
            "mailboxes[0].password_env: the variable EMPTY_ONE is empty",
        ),
        ('password_file = ""\n', "mailboxes[0].password_file: expected a file path, got ''"),
        ("password_file = 3\n", "mailboxes[0].password_file: expected a file path, got 3"),
        ('password_file = "missing"\n', "mailboxes[0].password_file: {dir}/missing: no such file"),
        ('password_file = "empty"\n', "mailboxes[0].password_file: {dir}/empty is empty"),
        ('password_file = "dir"\n', "mailboxes[0].password_file: {dir}/dir is not a regular file"),
    ],
)
def test_a_bad_secret_source_names_the_key(tmp_path: Path, lines: str, expected: str) -> None:
    _secret_file(tmp_path, "empty", "\n")
    (tmp_path / "dir").mkdir()
    path = tmp_path / "sidecar.toml"
    path.write_text(f'[[mailboxes]]\nhost = "h"\nusername = "u"\n{lines}')
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={"EMPTY_ONE": ""})
    assert str(info.value) == f"{path}: " + expected.format(dir=tmp_path)


def test_a_missing_file_named_by_a_variable_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, env={"R2_FETCH_TOKEN_FILE": str(tmp_path / "nope")})
    assert str(info.value) == (
        f"environment: R2_FETCH_TOKEN_FILE (r2.fetch_token): {tmp_path}/nope: no such file"
    )


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


def test_config_check_exits_two_on_an_invalid_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[server]\nport = -1\n")
    result = _cli("config", "check", "--config", str(path), env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "server.port: expected 0 to 65535, got -1" in result.stderr
    assert str(path) in result.stderr


def test_an_oauth_mailbox_reads_its_refresh_token_and_client_secret_from_files(
    tmp_path: Path,
) -> None:
    (tmp_path / "secrets").mkdir()
    _secret_file(tmp_path / "secrets", "refresh", "rt-from-file\n")
    path = tmp_path / "sidecar.toml"
    path.write_text(
        '[[mailboxes]]\nname = "support"\nhost = "imap.example"\nusername = "s@example"\n'
        'auth = "xoauth2"\noauth_token_url = "https://login.example/token"\n'
        'oauth_client_id = "client-1"\noauth_refresh_token_file = "secrets/refresh"\n'
        'oauth_client_secret_env = "SUPPORT_CLIENT_SECRET"\n'
    )
    settings = load_settings(path, env={"SUPPORT_CLIENT_SECRET": "cs-from-env"})
    (box,) = settings.mailboxes
    assert (box.auth, box.oauth_refresh_token, box.oauth_client_secret) == (
        "xoauth2",
        "rt-from-file",
        "cs-from-env",
    )
    assert set(settings.secrets()) == {"rt-from-file", "cs-from-env"}
    shown = json.dumps(effective_config(settings))
    assert "rt-from-file" not in shown
    assert "cs-from-env" not in shown


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"IMAP_AUTH": "xoauth2"},
            "mailboxes[0].auth (IMAP_AUTH): xoauth2 needs access_token (IMAP_ACCESS_TOKEN) or "
            "the refresh-token grant",
        ),
        (
            {"IMAP_AUTH": "oauthbearer", "IMAP_OAUTH_REFRESH_TOKEN": "rt-1234"},
            "mailboxes[0].oauth_token_url (IMAP_OAUTH_TOKEN_URL): required by the refresh-token "
            "grant",
        ),
        (
            {"IMAP_AUTH": "sasl"},
            "IMAP_AUTH (auth): expected one of password, xoauth2, oauthbearer, got 'sasl'",
        ),
    ],
)
def test_an_incomplete_oauth_mailbox_is_one_error_naming_the_key(
    env: dict[str, str], expected: str
) -> None:
    base = {"IMAP_HOST": "imap.example", "IMAP_USERNAME": "u"}
    with pytest.raises(ConfigError) as raised:
        load_settings(None, env=base | env)
    assert expected in str(raised.value)
    assert "rt-1234" not in str(raised.value)


def test_the_oauth_variables_override_the_first_mailbox() -> None:
    env = {
        "IMAP_HOST": "imap.example",
        "IMAP_USERNAME": "u",
        "IMAP_AUTH": "OAUTHBEARER",
        "IMAP_ACCESS_TOKEN": "at-from-env",
        "IMAP_OAUTH_SCOPE": "https://mail.example/.default",
    }
    (box,) = load_settings(None, env=env).mailboxes
    assert (box.auth, box.access_token, box.oauth_scope) == (
        "oauthbearer",
        "at-from-env",
        "https://mail.example/.default",
    )
