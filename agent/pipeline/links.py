"""Decides which URLs are delivery links, which provider serves each, and which origins are safe."""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import SplitResult, unquote, urlsplit

from agent.config import LinkSettings

_DEFAULT_PORTS = {"http": 80, "https": 443}
# Characters that end a URL in running text (RFC 3986 excludes them, mail clients stop there).
_URL_CHARS = r"[^\s<>\"'`{}|\\^\x00-\x1f\x7f]"
_URL_RUN = re.compile(_URL_CHARS + "*")
_TRAILING = ".,;:!?'\"*"
_CLOSING = {")": "(", "]": "["}
_HOST_CHARS = re.compile(r"[a-z0-9.\-_]+")
_NUMERIC_LABEL = re.compile(r"(0x[0-9a-f]*|[0-9]+)")
_UNSAFE = re.compile(r"[\x00-\x20\x7f]")
# Distinct URLs examined per message: classifying one takes ~11 µs, so at most ~0.25 s of CPU,
# while a 25 MB message of nothing but URLs holds about a million. A newsletter has hundreds.
MAX_CANDIDATES = 20_000

# Names that never lead to a public file server: each, and every name under it, is refused.
# At most two labels each (the check looks at a host's last one and last two).
_RESERVED_NAMES = (
    "localhost",  # RFC 6761
    "test",  # RFC 6761
    "invalid",  # RFC 6761
    "example",  # RFC 6761 (example.com and friends are ordinary names)
    "local",  # RFC 6762, multicast DNS
    "onion",  # RFC 7686
    "home.arpa",  # RFC 8375
    "alt",  # RFC 9476
    "internal",  # reserved by ICANN for private use (2024); metadata.google.internal
    "intranet",  # RFC 6762 appendix G: used privately, never to be delegated
    "private",
    "corp",
    "home",
    "lan",
)
_RESERVED = frozenset(_RESERVED_NAMES)
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Not public, though this Python's ipaddress table may not say so (its table depends on the
# Python release): IETF protocol assignments, documentation (RFC 9637), SRv6 SIDs (RFC 9602),
# and every IPv6 form that embeds an IPv4 address, refused whole whatever it embeds (no file
# server is reachable only through one): compatible, mapped, translated, NAT64, Teredo, 6to4.
_ALSO_NOT_PUBLIC = tuple(
    ipaddress.ip_network(network)
    for network in (
        "192.0.0.0/24",
        "3fff::/20",
        "5f00::/16",
        "::/96",
        "::ffff:0:0/96",
        "::ffff:0:0:0/96",
        "64:ff9b::/96",
        "64:ff9b:1::/48",
        "2001::/23",
        "2002::/16",
    )
)


@dataclass(frozen=True)
class DeliveryLink:
    """A URL a provider serves files from."""

    provider: str
    url: str


@dataclass(frozen=True)
class Origin:
    """A (scheme, host, port) triple with the host normalised."""

    scheme: str
    host: str
    port: int


class Provider(Protocol):
    """One file-delivery service: which URLs it serves and how long a transfer may take."""

    id: str

    def match(self, url: SplitResult | str) -> bool:
        """True when the URL is one of this provider's delivery links."""
        ...

    def timeout_for(self, url: str) -> float:
        """Seconds a transfer of this URL may take."""
        ...


class AllowedOrigins:
    """Origins named in an allowlist; everything else, IP literals included, is refused."""

    def __init__(self, origins: Iterable[Origin] = ()) -> None:
        self._origins = frozenset(origins)

    @property
    def origins(self) -> frozenset[Origin]:
        """The allowed origins."""
        return self._origins

    def allows(self, url: str) -> bool:
        """True when url is http(s), has no userinfo, and its origin is exactly one listed."""
        if not self._origins:
            return False  # the common case, and a URL split saved per candidate
        origin = url_origin(url)
        return origin is not None and origin in self._origins

    def __bool__(self) -> bool:
        return bool(self._origins)


def parse_allowed_origins(entries: Iterable[str]) -> AllowedOrigins:
    """Reads `host`, `host:port` (HTTPS) and `scheme://host:port` entries; raises ValueError."""
    origins: list[Origin] = []
    for entry in entries:
        text = entry.strip()
        if not text:
            continue
        url = text if "://" in text else f"https://{text}"
        origin = url_origin(url)
        if origin is None or _has_path(url):
            raise ValueError(f"{entry!r} is not host[:port] or scheme://host:port")
        origins.append(origin)
    return AllowedOrigins(origins)


def url_origin(url: str) -> Origin | None:
    """The normalised origin of an http(s) URL without userinfo, or None."""
    parts = _split(url)
    if parts is None or parts.scheme not in _DEFAULT_PORTS or "@" in parts.netloc:
        return None
    host = normalize_host(parts.hostname or "")
    if host is None:
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    return Origin(parts.scheme, host, port if port is not None else _DEFAULT_PORTS[parts.scheme])


def normalize_host(host: str) -> str | None:
    """Percent-escapes and IDNA decoded, lower case, one trailing dot dropped, IPv6 compressed.

    None when the host is unusable (empty labels, forbidden characters, an IPv6 zone).
    """
    host = host.strip()
    if ":" in host:
        if "%" in host:
            return None
        try:
            return ipaddress.IPv6Address(host).compressed
        except ValueError:
            return None
    if "%" in host:
        try:
            host = unquote(host, errors="strict")
        except UnicodeDecodeError:
            return None
    host = host.lower()
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii").lower()
        except (UnicodeError, ValueError):
            return None
    if host.endswith("."):
        host = host[:-1]
    if not _HOST_CHARS.fullmatch(host) or len(host) > 253:
        return None
    if ".." in host or host.startswith(".") or host.endswith("."):
        return None  # an empty label
    return host


def is_ip_literal(host: str) -> bool:
    """True for IPv6 and for any host a browser reads as IPv4 (127.1, 2130706433, 0x7f.1)."""
    if ":" in host:
        return True
    last = host.rstrip(".").rsplit(".", 1)[-1]
    return bool(_NUMERIC_LABEL.fullmatch(last))


def host_address(host: str) -> IPAddress | None:
    """The address a normalised IP-literal host names, in any form a browser reads; else None."""
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            return None
    if not is_ip_literal(host):
        return None
    try:
        # inet_aton reads the same forms as the WHATWG URL parser: 127.1, 0x7f.1, 0177.0.0.1.
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def is_public_address(address: IPAddress) -> bool:
    """True only for a global unicast address outside every special-purpose range."""
    special = (
        not address.is_global
        or address.is_private
        or address.is_reserved
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_unspecified
        or (isinstance(address, ipaddress.IPv6Address) and address.is_site_local)
    )
    return not special and not any(
        address.version == network.version and address in network for network in _ALSO_NOT_PUBLIC
    )


def host_refusal(host: str) -> str | None:
    """Why no fetch may go to this host (a reserved name, a non-public address), or None."""
    name = normalize_host(host)
    if name is None:
        return "not a valid host name"
    return _refusal(name)


def _refusal(name: str) -> str | None:
    """host_refusal for a host normalize_host already returned."""
    if is_ip_literal(name):
        address = host_address(name)
        if address is None:
            return "not a valid IP address"
        return None if is_public_address(address) else "not a public address"
    labels = name.rsplit(".", 2)
    for suffix in (labels[-1], ".".join(labels[-2:])):
        if suffix in _RESERVED:
            return f"a reserved name (.{suffix})"
    if "." not in name:
        return "a single-label name"
    return None


def _split(url: str) -> SplitResult | None:
    try:
        parts = urlsplit(url.strip())
        # urlsplit validates ports and brackets lazily; touch them here.
        _ = parts.port
        _ = parts.hostname
    except ValueError:
        return None
    return parts


def _has_path(url: str) -> bool:
    parts = urlsplit(url)
    return parts.path not in ("", "/") or bool(parts.query) or bool(parts.fragment)


def _as_parts(url: SplitResult | str) -> SplitResult | None:
    return url if isinstance(url, SplitResult) else _split(url)


def _provider_host(url: SplitResult | str) -> tuple[str, str] | None:
    """(host, path) of an https URL on the default port without userinfo, else None."""
    parts = _as_parts(url)
    return None if parts is None else _https_host(parts)


# Every provider asks this of the same URL in turn: the cache answers all but the first.
@functools.lru_cache(maxsize=16)
def _https_host(parts: SplitResult) -> tuple[str, str] | None:
    if parts.scheme != "https" or "@" in parts.netloc:
        return None
    try:
        if parts.port not in (None, 443):
            return None
    except ValueError:
        return None
    host = normalize_host(parts.hostname or "")
    if host is None:
        return None
    return host, parts.path


def _under(host: str, domain: str) -> bool:
    return host == domain or host.endswith("." + domain)


def _has_id(path: str) -> bool:
    return path.strip("/") != ""


class Dropbox:
    """Dropbox shared files and folders; folders are zipped on the fly and take longer."""

    id = "dropbox"
    _HOSTS = frozenset({"www.dropbox.com", "dropbox.com"})
    _PREFIXES = ("/s/", "/scl/fi/", "/scl/fo/", "/sh/")

    def __init__(self, settings: LinkSettings) -> None:
        self._folder_timeout = float(settings.timeout_dropbox_folder)
        self._timeout = float(settings.timeout_default)

    def match(self, url: SplitResult | str) -> bool:
        """Shared links on dropbox.com and direct links on dl.dropboxusercontent.com."""
        found = _provider_host(url)
        if found is None:
            return False
        host, path = found
        if host in self._HOSTS:
            return any(path.startswith(p) and len(path) > len(p) for p in self._PREFIXES)
        return host == "dl.dropboxusercontent.com" and _has_id(path)

    def timeout_for(self, url: str) -> float:
        """The folder timeout for /scl/fo/ links, the default otherwise."""
        parts = _split(url)
        if parts is not None and parts.path.startswith("/scl/fo/"):
            return self._folder_timeout
        return self._timeout


class _SimpleProvider:
    """A provider known by its domain, with one timeout (the R2 Worker resolves its links)."""

    id = ""

    def __init__(self, timeout: float) -> None:
        self._timeout = float(timeout)

    def match(self, url: SplitResult | str) -> bool:
        """True for https links with a path on this provider's hosts."""
        found = _provider_host(url)
        return found is not None and self._host_matches(found[0]) and _has_id(found[1])

    def _host_matches(self, host: str) -> bool:
        raise NotImplementedError

    def timeout_for(self, url: str) -> float:
        """This provider's timeout."""
        return self._timeout


class FromSmash(_SimpleProvider):
    """FromSmash transfers (fromsmash.com and its subdomains)."""

    id = "fromsmash"

    def __init__(self, settings: LinkSettings) -> None:
        super().__init__(settings.timeout_fromsmash)

    def _host_matches(self, host: str) -> bool:
        return _under(host, "fromsmash.com")


class SwissTransfer(_SimpleProvider):
    """SwissTransfer transfers (swisstransfer.com and www.swisstransfer.com)."""

    id = "swisstransfer"

    def __init__(self, settings: LinkSettings) -> None:
        super().__init__(settings.timeout_swisstransfer)

    def _host_matches(self, host: str) -> bool:
        return host in ("swisstransfer.com", "www.swisstransfer.com")


class WeTransfer(_SimpleProvider):
    """WeTransfer transfers (wetransfer.com, its subdomains, and we.tl short links)."""

    id = "wetransfer"

    def __init__(self, settings: LinkSettings) -> None:
        super().__init__(settings.timeout_default)

    def _host_matches(self, host: str) -> bool:
        return _under(host, "wetransfer.com") or host == "we.tl"


class Generic:
    """Any URL whose origin is exactly one listed in LINK_ALLOWED_HOSTS."""

    id = "generic"

    def __init__(self, settings: LinkSettings, origins: AllowedOrigins) -> None:
        self._origins = origins
        self._timeout = float(settings.timeout_default)

    def match(self, url: SplitResult | str) -> bool:
        """True when the URL's origin is allowed."""
        if not self._origins:
            return False
        text = url.geturl() if isinstance(url, SplitResult) else url
        return self._origins.allows(text)

    def timeout_for(self, url: str) -> float:
        """The default timeout."""
        return self._timeout


class LinkRegistry:
    """The providers in matching order, built from LinkSettings."""

    def __init__(self, settings: LinkSettings, *, max_url_length: int = 2048) -> None:
        self.origins = parse_allowed_origins(settings.allowed_hosts)
        self.max_url_length = max_url_length
        self.providers: tuple[Provider, ...] = (
            Dropbox(settings),
            FromSmash(settings),
            SwissTransfer(settings),
            WeTransfer(settings),
            Generic(settings, self.origins),
        )
        self._by_id = {provider.id: provider for provider in self.providers}

    def provider(self, provider_id: str) -> Provider:
        """The provider with this id; KeyError when unknown."""
        return self._by_id[provider_id]

    def classify(self, url: str, *, max_url_length: int | None = None) -> DeliveryLink | None:
        """The delivery link for url, or None when no provider may fetch it."""
        limit = self.max_url_length if max_url_length is None else max_url_length
        url = url.strip()
        if not url or len(url) > limit or not url[:8].lower().startswith(("http://", "https://")):
            return None
        if _UNSAFE.search(url):
            # urlsplit silently drops tabs and newlines; a URL carrying them is not taken.
            return None
        parts = _split(url)
        if parts is None or "@" in parts.netloc:
            return None
        host = normalize_host(parts.hostname or "")
        if host is None:
            return None
        if is_ip_literal(host) or _refusal(host) is not None:
            # Never a provider: only an exactly listed origin may be an IP literal or a
            # reserved host.
            return DeliveryLink("generic", url) if self.origins.allows(url) else None
        for provider in self.providers:
            if provider.match(parts):
                return DeliveryLink(provider.id, url)
        return None

    def collector(self, *, max_links: int, max_url_length: int) -> LinkCollector:
        """An empty collector of one message's delivery links."""
        return LinkCollector(self, max_links=max_links, max_url_length=max_url_length)

    def find_links(
        self,
        texts: Iterable[str],
        hrefs: Iterable[str],
        *,
        max_links: int,
        max_url_length: int,
    ) -> list[DeliveryLink]:
        """Delivery links in running text, then in hrefs: deduplicated, in order, capped."""
        collector = self.collector(max_links=max_links, max_url_length=max_url_length)
        for text in texts:
            collector.add_text(text)
        collector.add_hrefs(hrefs)
        return collector.links

    def timeout_for(self, link: DeliveryLink) -> float:
        """Seconds the transfer of this link may take."""
        return self.provider(link.provider).timeout_for(link.url)


class LinkCollector:
    """One message's delivery links, gathered part by part: deduplicated, in order, capped.

    At most max_links links are kept and at most MAX_CANDIDATES distinct URLs are examined.
    """

    def __init__(self, registry: LinkRegistry, *, max_links: int, max_url_length: int) -> None:
        self._registry = registry
        self._max_links = max_links
        self._max_url_length = max_url_length
        self._seen: set[str] = set()
        self.links: list[DeliveryLink] = []
        self.candidates_exhausted = False

    @property
    def full(self) -> bool:
        """True once nothing more will be kept: max_links found, or MAX_CANDIDATES examined."""
        return len(self.links) >= self._max_links or self.candidates_exhausted

    def add_text(self, text: str) -> None:
        """Examines the http(s) URLs in running text."""
        if self.full:
            return
        for url in _urls_in_text(text, self._max_url_length):
            self._examine(url)
            if self.full:
                return

    def add_hrefs(self, hrefs: Iterable[str]) -> None:
        """Examines link targets (HTML hrefs), each taken whole."""
        for href in hrefs:
            if self.full:
                return
            href = href.strip()
            if 0 < len(href) <= self._max_url_length:
                self._examine(href)

    def _examine(self, candidate: str) -> None:
        if candidate in self._seen:
            return
        if len(self._seen) >= MAX_CANDIDATES:
            self.candidates_exhausted = True
            return
        self._seen.add(candidate)
        link = self._registry.classify(candidate, max_url_length=self._max_url_length)
        if link is not None:
            self.links.append(link)


def _urls_in_text(text: str, max_url_length: int) -> Iterable[str]:
    """http(s) URLs in running text; longer ones are skipped whole, never cut to size."""
    pattern = _url_pattern(max_url_length)
    position = 0
    while True:
        match = pattern.search(text, position)
        if match is None:
            return
        position = match.end()
        run = _URL_RUN.match(text, position)
        if run is not None and run.end() > position:
            # The URL goes on past the limit: skip the rest of it.
            position = run.end()
            continue
        url = _strip_trailing(match.group())
        if len(url) > len("https://"):
            yield url


@functools.lru_cache(maxsize=8)
def _url_pattern(max_url_length: int) -> re.Pattern[str]:
    rest = max(max_url_length - len("http://"), 1)
    return re.compile(rf"(?i:https?://){_URL_CHARS}{{1,{rest}}}")


def _strip_trailing(url: str) -> str:
    """Drops sentence punctuation after a URL; a closing bracket stays when it is balanced."""
    while url and (url[-1] in _TRAILING or _unbalanced(url)):
        url = url[:-1]
    return url


def _unbalanced(url: str) -> bool:
    opening = _CLOSING.get(url[-1])
    return opening is not None and url.count(opening) < url.count(url[-1])
