"""How one setting is declared, converted and checked: its type, range, secrecy and sources."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args, get_origin
from urllib.parse import urlsplit

from agent.secret_files import SecretFileError, read_secret_file

MASK = "***"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_BOOL_WORDS = {
    "true": True,
    "1": True,
    "yes": True,
    "on": True,
    "false": False,
    "0": False,
    "no": False,
    "off": False,
}
# A secret setting `key` may instead be read from a file or from a named variable.
SECRET_FORMS = ("_file", "_env")


class ConfigError(ValueError):
    """A setting is missing, unknown or malformed; the message names the key and the file."""


class Duration(float):
    """Seconds, written in the file as "15s", "5m", "24h" (a bare number means seconds)."""


def parse_duration(value: object, *, key: str, source: str, secret: bool = False) -> Duration:
    """Reads "250ms", "15s", "5m", "24h", "1d" or a number of seconds."""
    shown = _shown(value, secret)
    if isinstance(value, bool):
        raise ConfigError(f'{source}: {key}: expected a duration such as "15s", got {shown}')
    if isinstance(value, int | float):
        if value < 0:
            raise ConfigError(f"{source}: {key}: expected a non-negative duration, got {shown}")
        return Duration(float(value))
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            return Duration(float(text))
        match = _DURATION.match(text)
        if match:
            return Duration(float(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    raise ConfigError(
        f'{source}: {key}: expected a duration such as "15s", "5m" or "24h", got {shown}'
    )


def format_duration(seconds: float) -> str:
    """Seconds in the largest unit that writes them whole: "1h", "15s", "250ms"."""
    if seconds == 0:
        return "0s"
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    if seconds < 1:
        return f"{round(seconds * 1000, 3):g}ms"
    return f"{seconds:g}s"


def _shown(value: object, secret: bool) -> str:
    """How an error quotes a value: a secret's is never shown, only its kind."""
    if not secret:
        return repr(value)
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    kind = kinds.get(type(value), "a list" if isinstance(value, list) else "a table")
    return f"{kind} (the value of a secret is not shown)"


# A check of one value: None when it is fine, else what was expected.
Check = Callable[[Any], str | None]


@dataclass(frozen=True)
class Bounds:
    """The allowed range of a number or duration setting, both ends included."""

    low: float
    high: float
    duration: bool

    def text(self, value: float) -> str:
        """A value as the file would write it."""
        if self.duration:
            return format_duration(value)
        return str(int(value)) if float(value).is_integer() else str(value)

    def describe(self) -> str:
        """The range in words: "1 to 65535", or "a duration from 100ms to 1h"."""
        span = f"{self.text(self.low)} to {self.text(self.high)}"
        return f"a duration from {span}" if self.duration else span


def _limit(value: float | str) -> tuple[float, bool]:
    if isinstance(value, str):
        return float(parse_duration(value, key="bounds", source="agent.config")), True
    return float(value), False


def setting(
    default: Any,
    env: str | None = None,
    *,
    secret: bool = False,
    doc: str = "",
    minimum: float | str | None = None,
    maximum: float | str | None = None,
    check: Check | None = None,
) -> Any:
    """A documented setting with its environment variable (the environment wins over the file).

    Numbers and durations declare their allowed range here (durations as "100ms", "1h"), so
    it is enforced and documented from one place; `check` validates other values.
    """
    bounds: Bounds | None = None
    if minimum is not None or maximum is not None:
        if minimum is None or maximum is None:
            raise TypeError("setting(): give both minimum and maximum")
        low, duration = _limit(minimum)
        high, _ = _limit(maximum)
        bounds = Bounds(low, high, duration)
    metadata = {"env": env, "secret": secret, "doc": doc, "bounds": bounds, "check": check}
    if isinstance(default, list | dict):
        factory = default.copy
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def bounds_of(f: dataclasses.Field[Any]) -> Bounds | None:
    """The declared range of a setting, if it has one."""
    bounds = f.metadata.get("bounds")
    return bounds if isinstance(bounds, Bounds) else None


def is_secret(f: dataclasses.Field[Any]) -> bool:
    """Whether the setting holds a secret (masked everywhere, never quoted in errors)."""
    return bool(f.metadata.get("secret"))


def ip_or_host_name(value: str) -> str | None:
    """An IP address or a host name (RFC 1123); "999.1.1.1" is neither."""
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        ipaddress.ip_address(text)
        return None
    except ValueError:
        pass
    expected = "expected an IP address or a host name"
    labels = text.rstrip(".").split(".")
    if not text or len(text) > 253:
        return f"{expected}, got {value!r}"
    if all(label.isdigit() for label in labels):
        return f"{expected}, got {value!r}, which is not a valid IPv4 address"
    if not all(_HOST_LABEL.fullmatch(label) for label in labels) or labels[-1].isdigit():
        return f"{expected}, got {value!r}"
    return None


def url_check(*schemes: str) -> Check:
    """A check that a non-empty value is a URL with one of these schemes."""
    wanted = " or ".join(f"{s}://" for s in schemes)
    pattern = re.compile(rf"^({'|'.join(schemes)})://[^\s/]+")

    def check(value: str) -> str | None:
        if value and not pattern.match(value):
            return f"expected a URL starting with {wanted}"
        return None

    return check


def redis_url(value: str) -> str | None:
    """A URL the Redis client accepts; the reasons given never quote the URL (it is secret)."""
    if not value:
        return None
    wanted = "expected a URL starting with redis://, rediss:// or unix://"
    if not re.match(r"^(redis|rediss|unix)://", value):
        return wanted
    try:
        parts = urlsplit(value)
        _ = parts.port  # reading the port validates it
    except ValueError:
        # urlsplit's own messages may quote parts of the URL: say what is wrong in our words.
        if "[" in value or "]" in value:
            return "not a valid URL: the brackets around its IPv6 address do not match"
        return "not a valid URL: its port is not a number from 0 to 65535"
    from redis.asyncio import ConnectionPool  # the client's own parser, imported when needed

    try:
        ConnectionPool.from_url(value)
    except ValueError as exc:
        reason = str(exc).replace(value, MASK)
        if parts.password:
            reason = reason.replace(parts.password, MASK)
        return f"the Redis client refuses it: {reason}"
    return None


def convert(
    value: object, hint: Any, *, key: str, source: str, from_env: bool, secret: bool = False
) -> Any:
    """The value as the setting's type; a string from the environment is read as that type."""
    shown = _shown(value, secret)
    origin = get_origin(hint)
    if hint is Duration:
        return parse_duration(value, key=key, source=source, secret=secret)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if from_env and isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.strip().lower()]
        raise ConfigError(f"{source}: {key}: expected true or false, got {shown}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_env and isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
            return int(value)
        raise ConfigError(f"{source}: {key}: expected an integer, got {shown}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{source}: {key}: expected a string, got {shown}")
    if origin is Literal:
        choices = get_args(hint)
        text = value.strip().lower() if isinstance(value, str) else value
        if text in choices:
            return text
        wanted = ", ".join(str(c) for c in choices)
        raise ConfigError(f"{source}: {key}: expected one of {wanted}, got {shown}")
    if origin is list:
        if from_env and isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return list(value)
        raise ConfigError(f"{source}: {key}: expected a list of strings, got {shown}")
    raise ConfigError(f"{source}: {key}: unsupported setting type {hint!r}")


def field_value(
    f: dataclasses.Field[Any], raw: object, hint: Any, *, key: str, source: str, from_env: bool
) -> Any:
    """Converts one setting and holds it to its declared range and check."""
    secret = is_secret(f)
    value = convert(raw, hint, key=key, source=source, from_env=from_env, secret=secret)
    bounds = bounds_of(f)
    if bounds is not None and not bounds.low <= value <= bounds.high:
        got = _shown(value, secret=True) if secret else bounds.text(value)
        raise ConfigError(f"{source}: {key}: expected {bounds.describe()}, got {got}")
    check = f.metadata.get("check")
    if check is not None:
        problem = check(value)
        if problem:
            raise ConfigError(f"{source}: {key}: {problem}")
    return value


class Raw(NamedTuple):
    """Where one setting's value came from, before conversion."""

    value: object
    key: str
    source: str
    from_env: bool


class Override(NamedTuple):
    """A value given on the command line, such as --port, which wins over everything."""

    flag: str
    value: str


def raw_value(
    f: dataclasses.Field[Any],
    table: Mapping[str, Any],
    *,
    prefix: str,
    source: str,
    env: Mapping[str, str],
    use_env: bool,
    override: Override | None,
    base: Path | None,
) -> Raw | None:
    """The setting's value from the command line, the environment or the file, in that order.

    A secret may also come from `VAR_FILE` in the environment, and from `key_file` (a path) or
    `key_env` (a variable's name) in the file; giving two forms in one place is an error.
    """
    key = f"{prefix}{f.name}"
    if override is not None:
        return Raw(override.value, f"{override.flag} ({key})", "command line", True)
    env_name = f.metadata.get("env")
    if use_env and env_name:
        found = _from_environment(f, str(env_name), key=key, env=env)
        if found is not None:
            return found
    return _from_table(f, table, key=key, prefix=prefix, source=source, env=env, base=base)


def _from_environment(
    f: dataclasses.Field[Any], name: str, *, key: str, env: Mapping[str, str]
) -> Raw | None:
    file_name = f"{name}_FILE"
    if is_secret(f) and file_name in env:
        label = f"{file_name} ({key})"
        if env.get(name):
            raise ConfigError(f"environment: {name} and {file_name} are both set; set only one")
        return Raw(_read(env[file_name], label, "environment", None), label, "environment", True)
    if name in env:
        return Raw(env[name], f"{name} ({key})", "environment", True)
    return None


def _from_table(
    f: dataclasses.Field[Any],
    table: Mapping[str, Any],
    *,
    key: str,
    prefix: str,
    source: str,
    env: Mapping[str, str],
    base: Path | None,
) -> Raw | None:
    forms = [f.name]
    if is_secret(f):
        forms += [f.name + suffix for suffix in SECRET_FORMS]
    given = [name for name in forms if name in table]
    if len(given) > 1:
        both = " and ".join(f"{prefix}{name}" for name in given)
        raise ConfigError(f"{source}: {both}: set only one of them")
    if not given:
        return None
    name = given[0]
    label = f"{prefix}{name}"
    if name == f.name:
        return Raw(table[name], key, source, False)
    reference = table[name]
    if not isinstance(reference, str) or not reference.strip():
        wanted = "a file path" if name.endswith("_file") else "the name of a variable"
        raise ConfigError(f"{source}: {label}: expected {wanted}, got {reference!r}")
    if name.endswith("_file"):
        return Raw(_read(reference, label, source, base), label, source, True)
    value = env.get(reference)
    if value is None:
        raise ConfigError(f"{source}: {label}: the variable {reference} is not set")
    if not value:
        raise ConfigError(f"{source}: {label}: the variable {reference} is empty")
    return Raw(value, f"{label} ({reference})", source, True)


def _read(path: str, label: str, source: str, base: Path | None) -> str:
    """A secret file's text; a relative path is read from the configuration file's directory."""
    if not path.strip():
        raise ConfigError(f"{source}: {label}: expected a file path, got an empty value")
    target = Path(path)
    if base is not None and not target.is_absolute():
        target = base / target
    try:
        return read_secret_file(target)
    except SecretFileError as exc:
        raise ConfigError(f"{source}: {label}: {exc}") from None
