"""Secret masking applied to every log event, span attribute, health answer and alert payload."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

from agent.config import MASK

# Query parameters whose values are credentials (compared case-insensitively).
TOKEN_PARAMETERS: tuple[str, ...] = (
    "token", "access_token", "refresh_token", "id_token", "dl_token", "key", "api_key", "apikey",
    "sig", "signature", "x-amz-signature", "x-amz-credential", "x-amz-security-token",
    "x-goog-signature", "x-goog-credential", "password", "passwd", "pwd", "secret",
    "client_secret", "auth", "code",
)  # fmt: skip

_MIN_SECRET_LENGTH = 4
_NUMBERS = (int, float)  # bool is an int

_USERINFO = r"(?P<scheme>\b[a-z][a-z0-9+.\-]*://)(?P<userinfo>[^\s/@?#]+)@"
# "Authorization: <scheme> value" in any quoting, and a bare "Bearer value" (8+ characters, so
# prose such as "Basic auth failed" stays readable).
_AUTH_HEADER = (
    r"(?P<header>\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?"
    r"(?:(?:bearer|basic|token|digest)\s+)?)[^\s\"',;]+"
)
_AUTH_SCHEME = r"(?P<auth>\b(?:bearer|basic|token)\s+)[A-Za-z0-9\-._~+/=%]{8,}"
# A credential as a JSON member or form field ("access_token": "..."), as a token endpoint's
# answer or request would quote it.
_JSON_MEMBER = (
    r"(?P<member>[\"']?(?:access_token|refresh_token|id_token|client_secret|password)[\"']?"
    r"\s*:\s*[\"'])[^\"']+"
)
_QUERY = (
    r"(?P<param>[?&;](?:" + "|".join(re.escape(name) for name in TOKEN_PARAMETERS) + r")=)"
    r"[^&#\s\"'<>]+"
)


class Masker:
    """Replaces configured secret values, URL credentials, token parameters and auth headers."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: tuple[str, ...] = ()
        self._pattern = _compile(())
        self._compile(secrets)

    def remember(self, secret: str) -> None:
        """Masks one more value from now on: a secret obtained at run time (an access token)."""
        known = self._secrets
        if isinstance(secret, str) and len(secret) >= _MIN_SECRET_LENGTH and secret not in known:
            self._compile((*known, secret))

    def _compile(self, secrets: Iterable[str]) -> None:
        values = tuple(
            sorted(
                {s for s in secrets if isinstance(s, str) and len(s) >= _MIN_SECRET_LENGTH},
                key=len,
                reverse=True,
            )
        )
        # Readers on other threads see the old pair or the new one, never a mix that misses.
        pattern = _compile(values)
        self._pattern = pattern
        self._secrets = values

    @property
    def secrets(self) -> tuple[str, ...]:
        """The literal values masked (length 4 or more), longest first."""
        return self._secrets

    def mask(self, text: str) -> str:
        """The text with every secret form replaced by ***."""
        if not text or not self._may_match(text):
            return text
        return self._pattern.sub(self._replace, text)

    def _may_match(self, text: str) -> bool:
        # Every form the pattern masks needs one of these substrings; checking them in C first
        # spares the regex scan for the ordinary strings that are most of what is exported.
        if "=" in text or ("@" in text and "://" in text):
            return True
        lower = text.lower()
        if "authorization" in lower or "bearer" in lower or "basic" in lower or "token" in lower:
            return True
        if "secret" in lower or "password" in lower:
            return True
        return any(secret in text for secret in self._secrets)

    def finds(self, value: Any) -> bool:
        """Whether masking may change this value (strings inside containers included).

        The strings of a container are searched once, joined by NUL: a match inside any one of
        them is a match in the whole, so nothing is missed; a match across a join only costs
        the caller a needless copy. For a single string the answer is exact.
        """
        texts: list[str] = []
        strings_in(texts, value)
        text = "\x00".join(texts)
        return bool(text) and self._may_match(text) and self._pattern.search(text) is not None

    def mask_url(self, url: str) -> str:
        """A URL with its userinfo, token parameters and secret values masked."""
        return self.mask(url)

    def mask_value(self, value: Any) -> Any:
        """Masks strings inside dicts, lists and tuples (recursively); other values unchanged."""
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, Mapping):
            return {key: self.mask_value(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.mask_value(item) for item in value]
        if isinstance(value, tuple):
            return tuple(self.mask_value(item) for item in value)
        return value

    def mask_event(self, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        """A log event with its secrets masked: the event itself when one search finds none."""
        if not self.finds(event):
            return event
        masked: dict[str, Any] = self.mask_value(event)
        return masked

    def mask_attributes(self, attributes: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of span or log attributes with every string value masked."""
        return {key: self.mask_value(value) for key, value in attributes.items()}

    @staticmethod
    def _replace(match: re.Match[str]) -> str:
        if match.group("scheme") is not None:
            return f"{match.group('scheme')}{MASK}@"
        if match.group("header") is not None:
            return f"{match.group('header')}{MASK}"
        if match.group("auth") is not None:
            return f"{match.group('auth')}{MASK}"
        if match.group("param") is not None:
            return f"{match.group('param')}{MASK}"
        if match.group("member") is not None:
            return f"{match.group('member')}{MASK}"
        return MASK


def _compile(values: tuple[str, ...]) -> re.Pattern[str]:
    # One alternation, longest literal first, so a secret containing another is masked whole.
    # Secrets match case-sensitively; the structural forms do not.
    parts = [f"(?:{'|'.join(re.escape(v) for v in values)})"] if values else []
    forms = (_USERINFO, _AUTH_HEADER, _AUTH_SCHEME, _QUERY, _JSON_MEMBER)
    parts += [f"(?i:{form})" for form in forms]
    return re.compile("|".join(parts))


def strings_in(out: list[str], value: Any) -> None:
    """Every string in value, in dict values, lists and tuples (recursively), appended to out."""
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, _NUMBERS) or value is None:
        # Most values are numbers; answering them here spares the ABC check for Mapping.
        return
    elif isinstance(value, Mapping):
        for item in value.values():
            # The common flat case without a call per value.
            if item.__class__ is str:
                out.append(item)
            elif item is not None and not isinstance(item, _NUMBERS):
                strings_in(out, item)
    elif isinstance(value, list | tuple):
        for item in value:
            strings_in(out, item)
