"""Properties of the link finder and the host rule: no raise, reference verdicts, links found."""

from __future__ import annotations

from urllib.parse import urlsplit

from hypothesis import given
from hypothesis import strategies as st

from agent.config import LinkSettings
from agent.pipeline.links import LinkRegistry, host_refusal, normalize_host
from tests.pipeline.mime_strategies import delivery_links
from tests.support.host_strategies import SpelledHost, hosts

REGISTRY = LinkRegistry(LinkSettings())
LISTED = LinkRegistry(LinkSettings(allowed_hosts=["files.example.com", "http://127.0.0.1:8000"]))
_PATHS = st.sampled_from(["/", "/t-AbCd", "/s/abc/file.zip", "/scl/fi/a/b.zip?dl=0", "/d/x"])
# Filler for running text: no colon, so no filler word is a URL.
_FILLER = st.text(st.characters(exclude_categories=("Cs",), exclude_characters=":"), max_size=30)
_SEPARATORS = st.sampled_from([" ", "\n", "\r\n", "\t", " (", ") ", "\u00a0"])


@given(host=hosts)
def test_host_rule_gives_the_reference_verdict_for_any_spelling(host: SpelledHost) -> None:
    hostname = urlsplit(f"https://{host.text}/").hostname or ""
    assert (host_refusal(hostname) is None) is host.public, host_refusal(hostname)


@given(host=hosts.filter(lambda host: not host.public), path=_PATHS)
def test_no_link_to_a_refused_host_is_ever_a_delivery_link(host: SpelledHost, path: str) -> None:
    assert REGISTRY.classify(f"https://{host.text}{path}") is None


@given(text=st.text(max_size=200))
def test_host_rule_never_raises(text: str) -> None:
    host_refusal(text)


@given(text=st.text(max_size=100))
def test_normalising_a_normal_host_changes_nothing(text: str) -> None:
    normal = normalize_host(text)
    if normal is not None:
        assert normalize_host(normal) == normal


@given(
    url=st.one_of(
        st.text(max_size=200),
        st.builds(
            "{}{}{}".format,
            st.sampled_from(["https://", "http://", "HTTPS://"]),
            st.text(max_size=40),
            _PATHS,
        ),
        st.builds("https://{}{}".format, hosts.map(lambda host: host.text), _PATHS),
    )
)
def test_an_accepted_link_has_a_public_host_or_a_listed_origin(url: str) -> None:
    for registry in (REGISTRY, LISTED):
        link = registry.classify(url)
        if link is None:
            continue
        hostname = urlsplit(link.url).hostname or ""
        assert host_refusal(hostname) is None or registry.origins.allows(link.url)


@st.composite
def _text_with_links(draw: st.DrawFn) -> tuple[str, list[str]]:
    links = draw(st.lists(delivery_links, min_size=1, max_size=6))
    pieces = [draw(_FILLER)]
    for link in links:
        pieces += [draw(_SEPARATORS), link, draw(_SEPARATORS), draw(_FILLER)]
    return "".join(pieces), links


@given(text_and_links=_text_with_links(), max_links=st.integers(1, 8))
def test_links_in_running_text_are_found_in_order_deduplicated_and_capped(
    text_and_links: tuple[str, list[str]], max_links: int
) -> None:
    text, links = text_and_links
    found = REGISTRY.find_links([text], [], max_links=max_links, max_url_length=2048)
    assert [link.url for link in found] == list(dict.fromkeys(links))[:max_links]
