"""Properties of parse_email on generated and mangled mail: no raise, bounds hold, links found."""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from agent.config import LinkSettings, ParseSettings
from agent.pipeline.links import LinkRegistry
from agent.pipeline.parse import ParsedEmail, parse_email
from tests.pipeline import hostile
from tests.pipeline.mime_strategies import delivery_links, plant, render, trees

LIMITS = ParseSettings()
REGISTRY = LinkRegistry(LinkSettings())
_LIMIT_NAMES = {
    "message_bytes",
    "header_bytes",
    "mime_parts",
    "depth",
    "text_bytes",
    "html_bytes",
    "urls",
}

small_limits = st.builds(
    lambda parts, depth, links, url, html, header, message: dataclasses.replace(
        LIMITS,
        max_mime_parts=parts,
        max_depth=depth,
        max_links=links,
        max_url_length=url,
        max_html_bytes=html,
        max_header_bytes=header,
        max_message_bytes=message,
    ),
    st.integers(1, 12),
    st.integers(1, 6),
    st.integers(1, 6),
    st.integers(20, 300),
    st.integers(256, 4096),
    st.integers(256, 4096),
    st.integers(1024, 64 * 1024),
)


@st.composite
def mail_with_links(draw: st.DrawFn, max_links: int = 6) -> tuple[bytes, list[str]]:
    """A generated message and the distinct delivery links planted in its text parts."""
    tree = draw(trees())
    links = draw(st.lists(delivery_links, min_size=1, max_size=max_links, unique=True))
    plant(draw, tree, len(links))
    return render(tree, links), links


@st.composite
def mangled(draw: st.DrawFn) -> bytes:
    """A generated message, or a known hostile one, with bytes changed, inserted or cut off."""
    raw, _ = draw(mail_with_links())
    data = bytearray(draw(st.sampled_from([raw, raw, hostile.forwarded(), hostile.apple_mail()])))
    for _ in range(draw(st.integers(0, 8))):
        position = draw(st.integers(0, len(data)))
        noise = draw(st.binary(min_size=1, max_size=8))
        if draw(st.booleans()):
            data[position : position + len(noise)] = noise
        else:
            data[position:position] = noise
    if draw(st.booleans()):
        del data[draw(st.integers(0, len(data))) :]
    return bytes(data)


def _assert_bounded(parsed: ParsedEmail, limits: ParseSettings) -> None:
    assert parsed.parts_seen <= limits.max_mime_parts
    assert len(parsed.links) <= limits.max_links
    assert all(len(link.url) <= limits.max_url_length for link in parsed.links)
    assert all(REGISTRY.classify(link.url) == link for link in parsed.links)
    # Text is cut at max_html_bytes of input: at most one character per byte comes out.
    assert len(parsed.text) <= limits.max_html_bytes
    assert len(parsed.html_text) <= limits.max_html_bytes
    assert set(parsed.limits_hit) <= _LIMIT_NAMES
    assert len(parsed.defects) <= 20
    assert all(len(defect) <= 80 for defect in parsed.defects)
    assert max(len(parsed.subject), len(parsed.from_), len(parsed.message_id)) <= 2048
    assert len(parsed.to) <= 100


@given(raw=st.binary(max_size=4096), limits=small_limits)
def test_random_bytes_never_raise_and_stay_within_every_bound(
    raw: bytes, limits: ParseSettings
) -> None:
    _assert_bounded(parse_email(raw, limits, links=REGISTRY), limits)


@given(raw=mangled(), limits=small_limits)
def test_mangled_mail_never_raises_and_stays_within_every_bound(
    raw: bytes, limits: ParseSettings
) -> None:
    _assert_bounded(parse_email(raw, limits, links=REGISTRY), limits)


@given(mail=mail_with_links())
def test_a_link_planted_in_any_text_part_is_found(mail: tuple[bytes, list[str]]) -> None:
    raw, links = mail
    parsed = parse_email(raw, LIMITS, links=REGISTRY)
    assert sorted(link.url for link in parsed.links) == sorted(links)
    assert parsed.limits_hit == []


@given(mail=mail_with_links(max_links=8), max_links=st.integers(1, 8))
def test_at_most_max_links_of_the_planted_links_are_kept(
    mail: tuple[bytes, list[str]], max_links: int
) -> None:
    raw, links = mail
    parsed = parse_email(raw, dataclasses.replace(LIMITS, max_links=max_links), links=REGISTRY)
    found = [link.url for link in parsed.links]
    assert len(found) == min(max_links, len(links))
    assert set(found) <= set(links)
