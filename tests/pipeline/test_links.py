"""Delivery-link providers, the origin allowlist, and link extraction from mail text."""

from __future__ import annotations

import random
from urllib.parse import urlsplit

import pytest

from agent.config import Duration, LinkSettings, ParseSettings
from agent.pipeline.links import (
    DeliveryLink,
    LinkRegistry,
    host_refusal,
    is_ip_literal,
    normalize_host,
    parse_allowed_origins,
)
from agent.pipeline.parse import parse_email
from tests.pipeline import hostile
from tests.support.host_strategies import EDGE_ADDRESSES
from tests.support.hosts import HostCase, host_cases, reference_public

REGISTRY = LinkRegistry(LinkSettings())


def _provider(url: str, registry: LinkRegistry = REGISTRY) -> str | None:
    link = registry.classify(url)
    return link.provider if link else None


@pytest.mark.parametrize(
    "url",
    [
        "https://www.dropbox.com/s/abc123/file.zip?dl=0",
        "https://dropbox.com/s/abc123/file.zip",
        "https://www.dropbox.com/scl/fi/abc/file.zip?rlkey=k&dl=0",
        "https://www.dropbox.com/scl/fo/abc/def?rlkey=k&dl=0",
        "https://www.dropbox.com/sh/abc/def?dl=0",
        "https://dl.dropboxusercontent.com/s/abc/file.zip",
        "https://WWW.DROPBOX.COM./s/abc/file.zip",
    ],
)
def test_dropbox_share_links_are_dropbox(url: str) -> None:
    assert _provider(url) == "dropbox"


@pytest.mark.parametrize(
    "url",
    [
        "https://www.dropbox.com/",
        "https://www.dropbox.com/login",
        "https://www.dropbox.com/s/",
        "http://www.dropbox.com/s/abc/file.zip",
        "https://www.dropbox.com:8443/s/abc/file.zip",
        "https://dropbox.com.evil.example/s/abc/file.zip",
        "https://evildropbox.com/s/abc/file.zip",
        "https://www.dropbox.com@evil.example/s/abc/file.zip",
    ],
)
def test_non_share_or_lookalike_dropbox_urls_are_refused(url: str) -> None:
    assert _provider(url) is None


def test_dropbox_folder_link_gets_the_folder_timeout() -> None:
    link = DeliveryLink("dropbox", "https://www.dropbox.com/scl/fo/abc/def?rlkey=k&dl=0")
    assert REGISTRY.timeout_for(link) == 120.0


def test_dropbox_file_link_gets_the_default_timeout() -> None:
    link = DeliveryLink("dropbox", "https://www.dropbox.com/scl/fi/abc/file.zip?rlkey=k")
    assert REGISTRY.timeout_for(link) == 15.0


@pytest.mark.parametrize("url", ["https://fromsmash.com/AbC-dt", "https://eu.fromsmash.com/AbC-dt"])
def test_fromsmash_links_are_fromsmash(url: str) -> None:
    assert _provider(url) == "fromsmash"


@pytest.mark.parametrize(
    "url",
    [
        "https://fromsmash.com/",
        "https://fromsmash.com.evil.example/x",
        "https://notfromsmash.com/x",
    ],
)
def test_fromsmash_lookalikes_are_refused(url: str) -> None:
    assert _provider(url) is None


def test_fromsmash_timeout_comes_from_settings() -> None:
    registry = LinkRegistry(LinkSettings(timeout_fromsmash=Duration(42.0)))
    assert registry.timeout_for(DeliveryLink("fromsmash", "https://fromsmash.com/x")) == 42.0


@pytest.mark.parametrize(
    "url", ["https://www.swisstransfer.com/d/1234-abcd", "https://swisstransfer.com/d/1234"]
)
def test_swisstransfer_links_are_swisstransfer(url: str) -> None:
    assert _provider(url) == "swisstransfer"


@pytest.mark.parametrize(
    "url", ["https://evil.swisstransfer.com/d/1234", "https://swisstransfer.com.evil.example/d/1"]
)
def test_swisstransfer_other_hosts_are_refused(url: str) -> None:
    assert _provider(url) is None


def test_swisstransfer_timeout_is_thirty_seconds() -> None:
    link = DeliveryLink("swisstransfer", "https://www.swisstransfer.com/d/1")
    assert REGISTRY.timeout_for(link) == 30.0


@pytest.mark.parametrize(
    "url",
    [
        "https://wetransfer.com/downloads/abc/def",
        "https://acme.wetransfer.com/downloads/abc",
        "https://we.tl/t-AbCdEf",
    ],
)
def test_wetransfer_and_we_tl_links_are_wetransfer(url: str) -> None:
    assert _provider(url) == "wetransfer"


@pytest.mark.parametrize(
    "url", ["https://we.tl.evil.example/t-x", "https://wetransfer.co/downloads/x", "https://we.tl/"]
)
def test_wetransfer_lookalikes_are_refused(url: str) -> None:
    assert _provider(url) is None


def test_wetransfer_timeout_is_the_default() -> None:
    assert REGISTRY.timeout_for(DeliveryLink("wetransfer", "https://we.tl/t-x")) == 15.0


def test_unlisted_host_is_not_a_delivery_link() -> None:
    assert _provider("https://files.example.com/a.zip") is None


def test_listed_host_is_generic_with_the_default_timeout() -> None:
    registry = LinkRegistry(LinkSettings(allowed_hosts=["files.example.com"]))
    link = registry.classify("https://files.example.com/a.zip")
    assert link == DeliveryLink("generic", "https://files.example.com/a.zip")
    assert registry.timeout_for(link) == 15.0


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://files.example.com/a", True),
        ("https://FILES.Example.COM./a", True),
        ("https://files.example.com:443/a", True),
        ("https://files.example.com:8443/a", False),
        ("http://files.example.com/a", False),
        ("https://sub.files.example.com/a", False),
    ],
)
def test_bare_host_entry_allows_https_on_port_443_only(url: str, allowed: bool) -> None:
    assert parse_allowed_origins(["files.example.com"]).allows(url) is allowed


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://files.example.com:8443/a", True),
        ("https://files.example.com/a", False),
        ("http://files.example.com:8443/a", False),
    ],
)
def test_host_port_entry_allows_https_on_that_port(url: str, allowed: bool) -> None:
    assert parse_allowed_origins(["files.example.com:8443"]).allows(url) is allowed


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://127.0.0.1:8000/file.zip", True),
        ("http://127.0.0.1:8001/file.zip", False),
        ("https://127.0.0.1:8000/file.zip", False),
        ("http://localhost:8000/file.zip", False),
        ("http://2130706433:8000/file.zip", False),
    ],
)
def test_scheme_origin_entry_allows_exactly_that_origin(url: str, allowed: bool) -> None:
    registry = LinkRegistry(LinkSettings(allowed_hosts=["http://127.0.0.1:8000"]))
    assert (registry.classify(url) is not None) is allowed


def test_listed_ipv6_origin_is_allowed_in_any_spelling() -> None:
    origins = parse_allowed_origins(["[::1]:8443"])
    assert origins.allows("https://[0:0:0:0:0:0:0:1]:8443/x")


def test_scheme_entry_without_port_uses_the_scheme_default() -> None:
    assert parse_allowed_origins(["http://files.example.com"]).allows("http://files.example.com/x")


@pytest.mark.parametrize(
    "entry", ["ftp://files.example.com", "https://files.example.com/path", "host:notaport", "a@b"]
)
def test_malformed_allowlist_entry_raises_value_error(entry: str) -> None:
    with pytest.raises(ValueError, match="host"):
        parse_allowed_origins([entry])


def test_idna_hostname_entry_matches_its_punycode_url() -> None:
    origins = parse_allowed_origins(["bücher.example"])
    assert origins.allows("https://xn--bcher-kva.example/a")


def test_invalid_idna_hostname_is_refused_without_raising() -> None:
    assert _provider("https://a\u0301" + "x" * 70 + ".dropbox.com/s/x") is None


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x",
        "https://10.0.0.1/x",
        "https://[::1]/x",
        "https://[fd00::1]/x",
        "http://2130706433/x",
        "http://0x7f.1/x",
        "http://0177.0.0.1/x",
        "http://127.1/x",
        "http://169.254.169.254/latest/meta-data/",
    ],
)
def test_ip_literals_are_refused_unless_listed(url: str) -> None:
    assert _provider(url) is None


@pytest.mark.parametrize("host", ["2130706433", "0x7f.1", "0177.0.0.1", "127.1", "::1", "1.2.3.4"])
def test_numeric_hosts_are_ip_literals(host: str) -> None:
    assert is_ip_literal(host)


@pytest.mark.parametrize("host", ["dropbox.com", "1.example.com", "x0.example"])
def test_names_are_not_ip_literals(host: str) -> None:
    assert not is_ip_literal(host)


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://www.dropbox.com/s/abc/f",
        "javascript:alert(1)",
        "https://user:pw@www.dropbox.com/s/abc/f",
        "https://www.dropbox.com\\@evil.example/s/x",
        "https://www.drop\nbox.com/s/abc/f",
        "https://[zz/",
        "https://www.dropbox.com:99999/s/x",
    ],
)
def test_unsafe_or_malformed_urls_are_refused(url: str) -> None:
    assert _provider(url) is None


def test_url_over_max_url_length_is_refused() -> None:
    url = "https://we.tl/t-" + "a" * 2100
    assert REGISTRY.classify(url) is None


def test_text_urls_lose_trailing_punctuation() -> None:
    links = REGISTRY.find_links(
        ["Files: https://we.tl/t-abc. Also (https://www.dropbox.com/s/x/f.zip?dl=0), ok?"],
        [],
        max_links=10,
        max_url_length=2048,
    )
    assert [link.url for link in links] == [
        "https://we.tl/t-abc",
        "https://www.dropbox.com/s/x/f.zip?dl=0",
    ]


def test_balanced_parentheses_stay_in_the_url() -> None:
    links = REGISTRY.find_links(
        ["https://www.dropbox.com/s/x/file_(1).zip"], [], max_links=10, max_url_length=2048
    )
    assert links[0].url == "https://www.dropbox.com/s/x/file_(1).zip"


def test_links_are_deduplicated_in_order_of_first_sight() -> None:
    links = REGISTRY.find_links(
        ["https://we.tl/t-1 https://fromsmash.com/2 https://we.tl/t-1"],
        ["https://fromsmash.com/2", "https://www.swisstransfer.com/d/3"],
        max_links=10,
        max_url_length=2048,
    )
    assert [link.provider for link in links] == ["wetransfer", "fromsmash", "swisstransfer"]


def test_links_are_capped_at_max_links() -> None:
    hrefs = [f"https://we.tl/t-{index}" for index in range(100)]
    links = REGISTRY.find_links([], hrefs, max_links=3, max_url_length=2048)
    assert [link.url for link in links] == hrefs[:3]


def test_text_url_over_the_limit_is_skipped_not_cut() -> None:
    text = "https://we.tl/t-" + "a" * 100 + " https://fromsmash.com/ok"
    links = REGISTRY.find_links([text], [], max_links=10, max_url_length=50)
    assert links == [DeliveryLink("fromsmash", "https://fromsmash.com/ok")]


def test_href_over_the_limit_is_skipped() -> None:
    hrefs = ["https://we.tl/t-" + "a" * 100, "https://we.tl/t-ok"]
    links = REGISTRY.find_links([], hrefs, max_links=10, max_url_length=50)
    assert links == [DeliveryLink("wetransfer", "https://we.tl/t-ok")]


def test_uppercase_scheme_in_text_is_found() -> None:
    links = REGISTRY.find_links(["HTTPS://WE.TL/t-x"], [], max_links=5, max_url_length=2048)
    assert links == [DeliveryLink("wetransfer", "HTTPS://WE.TL/t-x")]


def test_ordinary_mail_yields_its_dropbox_and_wetransfer_links() -> None:
    parsed = parse_email(hostile.ordinary(), ParseSettings(), links=REGISTRY)
    assert parsed.links == [
        DeliveryLink("dropbox", hostile.DROPBOX_URL),
        DeliveryLink("wetransfer", hostile.WETRANSFER_URL),
    ]


def test_classify_never_raises_on_random_url_like_strings() -> None:
    rng = random.Random(20250304)
    alphabet = "htps:/[]@%.:0123456789abcdefx\u00e9\u3002\uff0e\u0301\\?#&= \n\t-_"
    registry = LinkRegistry(LinkSettings(allowed_hosts=["a.example", "http://127.0.0.1:8000"]))
    for _ in range(5000):
        prefix = rng.choice(["https://", "http://", "HTTPS://", ""])
        url = prefix + "".join(rng.choice(alphabet) for _ in range(rng.randrange(30)))
        link = registry.classify(url)
        assert link is None or link.provider == "generic"


@pytest.mark.parametrize("case", host_cases(), ids=lambda case: case.url)
def test_host_rule_gives_the_shared_verdict(case: HostCase) -> None:
    host = urlsplit(case.url).hostname or ""
    assert (host_refusal(host) is None) is case.public, host_refusal(host)


def test_host_rule_gives_the_reference_verdict_at_every_special_range_edge() -> None:
    wrong = [
        address
        for address in EDGE_ADDRESSES
        if (host_refusal(str(address)) is None) is not reference_public(address)
    ]
    assert wrong == []


@pytest.mark.parametrize(
    ("host", "normal"),
    [
        ("LocalHost.", "localhost"),
        ("local%68ost", "localhost"),
        ("\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54", "localhost"),
        ("files\u3002example\u3002com\u3002", "files.example.com"),
        ("B\u00fccher.DE", "xn--bcher-kva.de"),
        ("0:0::1", "::1"),
    ],
)
def test_host_is_normalised_before_any_check(host: str, normal: str) -> None:
    assert normalize_host(host) == normal


@pytest.mark.parametrize("host", ["x.local..", ".x.com", "a..b", "local%ff", "fe80::1%25eth0", ""])
def test_unusable_host_is_none(host: str) -> None:
    assert normalize_host(host) is None


@pytest.mark.parametrize(
    "url",
    ["https://localhost.:8443/file.zip", "https://files.internal./a.zip", "https://[::1]:8443/x"],
)
def test_reserved_host_is_a_delivery_link_only_when_its_origin_is_listed(url: str) -> None:
    origin = urlsplit(url)
    listed = LinkRegistry(LinkSettings(allowed_hosts=[origin.netloc.replace(".:", ":")]))
    assert (REGISTRY.classify(url), listed.classify(url)) == (None, DeliveryLink("generic", url))
