"""Bounded MIME parsing and HTML-to-text on ordinary and hostile mail."""

from __future__ import annotations

import dataclasses
import tracemalloc

import pytest

from agent.config import LinkSettings, ParseSettings
from agent.pipeline import links as links_module
from agent.pipeline.links import DeliveryLink, LinkRegistry
from agent.pipeline.parse import ParsedEmail, html_to_text, parse_email
from tests.pipeline import hostile

LIMITS = ParseSettings()
REGISTRY = LinkRegistry(LinkSettings())


@pytest.fixture(scope="module")
def ordinary() -> ParsedEmail:
    return parse_email(hostile.ordinary(), LIMITS, links=REGISTRY)


def test_message_id_is_read(ordinary: ParsedEmail) -> None:
    assert ordinary.message_id == "<ordinary-1@mail.example>"


def test_from_keeps_display_name_and_address(ordinary: ParsedEmail) -> None:
    assert ordinary.from_ == "Alice Example <alice@example.com>"


def test_to_lists_every_address(ordinary: ParsedEmail) -> None:
    assert ordinary.to == ["bob@example.org", "carol@example.net"]


def test_subject_is_read(ordinary: ParsedEmail) -> None:
    assert ordinary.subject == "Your files are ready"


def test_date_is_iso_8601_with_offset(ordinary: ParsedEmail) -> None:
    assert ordinary.date == "2025-03-04T10:15:30+01:00"


def test_text_part_is_decoded_from_base64(ordinary: ParsedEmail) -> None:
    assert "your files are ready:" in ordinary.text
    assert hostile.DROPBOX_URL in ordinary.text


def test_html_text_drops_script_style_and_head(ordinary: ParsedEmail) -> None:
    assert ordinary.html_text.startswith("Files\nHello Bob,\nyour files are ready.")
    assert "alert" not in ordinary.html_text
    assert "color" not in ordinary.html_text


def test_links_are_the_delivery_links_in_document_order(ordinary: ParsedEmail) -> None:
    assert ordinary.links == [
        DeliveryLink("dropbox", hostile.DROPBOX_URL),
        DeliveryLink("wetransfer", hostile.WETRANSFER_URL),
    ]


def test_without_a_registry_no_links_are_collected() -> None:
    assert parse_email(hostile.ordinary(), LIMITS).links == []


def test_forwarded_message_link_is_found_in_its_rfc822_part() -> None:
    parsed = parse_email(hostile.forwarded(), LIMITS, links=REGISTRY)
    assert parsed.links == [DeliveryLink("wetransfer", hostile.WETRANSFER_URL)]


def test_forwarded_message_excerpt_is_the_note_before_it() -> None:
    parsed = parse_email(hostile.forwarded(), LIMITS, links=REGISTRY)
    assert parsed.excerpt(100) == "Bob, see the files below."


@pytest.mark.parametrize("html", [False, True], ids=["plain", "html"])
def test_link_in_the_text_after_an_inline_image_is_found(html: bool) -> None:
    parsed = parse_email(hostile.apple_mail(html=html), LIMITS, links=REGISTRY)
    assert parsed.links == [DeliveryLink("swisstransfer", hostile.SWISSTRANSFER_URL)]


def test_apple_mail_excerpt_is_the_first_text_fragment() -> None:
    parsed = parse_email(hostile.apple_mail(), LIMITS, links=REGISTRY)
    assert parsed.excerpt(100) == "Hi Bob, the photo:"


def test_text_attachment_is_searched_for_links_but_is_not_the_body() -> None:
    raw = (
        b"Subject: a\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
        b"Content-Type: text/plain\r\n\r\nthe body\r\n--b\r\n"
        b"Content-Type: text/plain\r\nContent-Disposition: attachment; filename=links.txt\r\n\r\n"
        b"https://we.tl/t-attached\r\n--b--\r\n"
    )
    parsed = parse_email(raw, LIMITS, links=REGISTRY)
    assert (parsed.text, parsed.links) == (
        "the body",
        [DeliveryLink("wetransfer", "https://we.tl/t-attached")],
    )


def test_twenty_thousand_linked_parts_give_max_links_from_the_first_parts() -> None:
    parsed = parse_email(hostile.many_parts(20_000, linked=True), LIMITS, links=REGISTRY)
    assert [link.url for link in parsed.links] == [
        hostile.part_link(index) for index in range(LIMITS.max_links)
    ]


def test_links_beyond_max_mime_parts_are_not_searched() -> None:
    limits = dataclasses.replace(LIMITS, max_links=1000)
    parsed = parse_email(hostile.many_parts(20_000, linked=True), limits, links=REGISTRY)
    # The container is one of the max_mime_parts parts walked.
    walked = LIMITS.max_mime_parts - 1
    assert [link.url for link in parsed.links] == [hostile.part_link(i) for i in range(walked)]
    assert (parsed.parts_seen, parsed.limits_hit) == (LIMITS.max_mime_parts, ["mime_parts"])


def test_parse_memory_does_not_grow_with_parts_beyond_the_bound() -> None:
    small = _peak_bytes(hostile.many_parts(1_000, linked=True))
    large = _peak_bytes(hostile.many_parts(20_000, linked=True))
    assert large < small * 1.25


def test_later_html_part_over_max_html_bytes_is_flagged_truncated() -> None:
    limits = dataclasses.replace(LIMITS, max_html_bytes=1000)
    raw = (
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
        b"Content-Type: text/html\r\n\r\n<p>small</p>\r\n--b\r\n"
        b"Content-Type: text/html\r\n\r\n<p>" + b"a" * 2000 + b"</p>\r\n--b--\r\n"
    )
    parsed = parse_email(raw, limits, links=REGISTRY)
    assert (parsed.html_text, parsed.html_truncated, parsed.html_bytes) == ("small", True, 2007)


def test_html_size_is_recorded_without_truncation(ordinary: ParsedEmail) -> None:
    assert ordinary.html_bytes > 100
    assert ordinary.html_truncated is False


def test_parts_seen_counts_the_container_and_its_parts(ordinary: ParsedEmail) -> None:
    assert ordinary.parts_seen == 3


def test_ordinary_mail_hits_no_limit_and_has_no_defect(ordinary: ParsedEmail) -> None:
    assert ordinary.limits_hit == []
    assert ordinary.defects == []


def test_excerpt_collapses_whitespace_and_is_bounded(ordinary: ParsedEmail) -> None:
    assert ordinary.excerpt(24) == "Hello Bob, your files ar"


def test_excerpt_falls_back_to_html_text() -> None:
    parsed = ParsedEmail(text=" \r\n ", html_text="Only\nhtml   here")
    assert parsed.excerpt(100) == "Only html here"


def test_rfc2047_subject_is_decoded_across_charsets() -> None:
    parsed = parse_email(hostile.rfc2047_subject(), LIMITS)
    assert parsed.subject == "Café ☕ filesfür dich"


def test_make_message_round_trips_a_non_ascii_subject() -> None:
    raw = hostile.make_message(subject="Überweisung – 日本", message_id="<x@y>")
    assert parse_email(raw, LIMITS).subject == "Überweisung – 日本"


def test_html_only_message_has_html_text_and_empty_text() -> None:
    raw = hostile.make_message(text=None, html="<p>Hi <b>there</b></p>", message_id="<h@y>")
    parsed = parse_email(raw, LIMITS)
    assert (parsed.text, parsed.html_text) == ("", "Hi there")


def test_attachment_text_part_is_not_taken_as_the_body() -> None:
    raw = (
        b"Subject: a\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
        b"Content-Type: text/plain\r\nContent-Disposition: attachment; filename=x.txt\r\n\r\n"
        b"attached\r\n--b\r\nContent-Type: text/plain\r\n\r\nthe body\r\n--b--\r\n"
    )
    assert parse_email(raw, LIMITS).text == "the body"


def test_quoted_printable_body_is_decoded() -> None:
    raw = (
        b"Subject: qp\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9 =\r\nau lait\r\n"
    )
    assert parse_email(raw, LIMITS).text.startswith("café au lait")


def test_forwarded_message_body_is_walked() -> None:
    raw = (
        b"Subject: fwd\r\nContent-Type: message/rfc822\r\n\r\n"
        b"Subject: inner\r\nContent-Type: text/plain\r\n\r\ninner body\r\n"
    )
    parsed = parse_email(raw, LIMITS)
    assert (parsed.subject, parsed.text.strip(), parsed.parts_seen) == ("fwd", "inner body", 2)


def test_html_bomb_is_truncated_and_flagged() -> None:
    parsed = parse_email(hostile.html_bomb(), LIMITS)
    assert parsed.html_truncated is True
    assert "html_bytes" in parsed.limits_hit
    assert parsed.html_bytes > 10_000_000
    assert len(parsed.html_text.encode("utf-8")) <= LIMITS.max_html_bytes


def test_html_bomb_keeps_the_link_at_its_start() -> None:
    parsed = parse_email(hostile.html_bomb(), LIMITS, links=REGISTRY)
    assert parsed.links == [DeliveryLink("dropbox", hostile.DROPBOX_URL)]


def test_html_just_over_the_cap_is_flagged_truncated() -> None:
    limits = dataclasses.replace(LIMITS, max_html_bytes=1000)
    over = parse_email(hostile.make_message(text=None, html="<p>" + "a" * 1000 + "</p>"), limits)
    under = parse_email(hostile.make_message(text=None, html="<p>" + "a" * 900 + "</p>"), limits)
    assert (over.html_truncated, under.html_truncated) == (True, False)


def _peak_bytes(raw: bytes) -> int:
    parse_email(raw, LIMITS, links=REGISTRY)  # warm caches so only the parse itself is measured
    tracemalloc.start()
    try:
        parse_email(raw, LIMITS, links=REGISTRY)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_html_bomb_memory_does_not_grow_with_the_body() -> None:
    small = _peak_bytes(hostile.html_bomb(2 * hostile.MEGABYTE))
    large = _peak_bytes(hostile.html_bomb(10 * hostile.MEGABYTE))
    assert large < small * 1.25


def test_many_parts_stop_at_max_mime_parts() -> None:
    parsed = parse_email(hostile.many_parts(5000), LIMITS)
    assert parsed.parts_seen == LIMITS.max_mime_parts
    assert "mime_parts" in parsed.limits_hit
    assert parsed.text == "part 0"


def test_parts_within_the_limit_are_not_flagged() -> None:
    parsed = parse_email(hostile.many_parts(10), LIMITS)
    assert (parsed.parts_seen, parsed.limits_hit) == (11, [])


def test_nesting_bomb_stops_at_max_depth() -> None:
    parsed = parse_email(hostile.nesting_bomb(1000), LIMITS)
    assert "depth" in parsed.limits_hit
    assert parsed.parts_seen == LIMITS.max_depth + 1
    assert parsed.subject == "nesting bomb"


def test_nesting_within_max_depth_reaches_the_bottom_part() -> None:
    parsed = parse_email(hostile.nesting_bomb(5), LIMITS)
    assert (parsed.text.strip(), parsed.limits_hit) == ("the bottom", [])


def test_huge_header_block_is_capped_and_flagged() -> None:
    parsed = parse_email(hostile.huge_headers(), LIMITS)
    assert "header_bytes" in parsed.limits_hit
    assert parsed.subject == "huge headers"
    assert parsed.text.strip() == "small body"


def test_message_over_max_message_bytes_is_cut_and_flagged() -> None:
    limits = dataclasses.replace(LIMITS, max_message_bytes=2000)
    parsed = parse_email(hostile.many_links(200), limits)
    assert "message_bytes" in parsed.limits_hit
    assert parsed.subject == "many links"


def test_partial_fetch_is_flagged_as_message_bytes() -> None:
    parsed = parse_email(hostile.ordinary()[:600], LIMITS, partial=True)
    assert parsed.limits_hit == ["message_bytes"]


def test_many_links_mail_finds_the_one_delivery_link_among_ten_thousand() -> None:
    parsed = parse_email(hostile.many_links(10000), LIMITS, links=REGISTRY)
    assert (parsed.links, parsed.limits_hit) == ([DeliveryLink("dropbox", hostile.DROPBOX_URL)], [])


def _after_other_urls(count: int) -> bytes:
    """A text part with count distinct non-delivery URLs, then a WeTransfer link."""
    urls = [f"https://example.com/{index}" for index in range(count)]
    return hostile.make_message(text="\r\n".join([*urls, hostile.WETRANSFER_URL]))


def test_a_link_after_max_candidates_other_urls_is_not_examined_and_flagged() -> None:
    parsed = parse_email(_after_other_urls(links_module.MAX_CANDIDATES), LIMITS, links=REGISTRY)
    assert (parsed.links, parsed.limits_hit) == ([], ["urls"])


def test_a_link_that_is_the_last_of_max_candidates_urls_is_found() -> None:
    raw = _after_other_urls(links_module.MAX_CANDIDATES - 1)
    parsed = parse_email(raw, LIMITS, links=REGISTRY)
    assert (parsed.links, parsed.limits_hit) == (
        [DeliveryLink("wetransfer", hostile.WETRANSFER_URL)],
        [],
    )


def test_an_href_after_many_repeats_of_one_other_url_is_found() -> None:
    repeats = '<a href="https://example.com/same">x</a>' * (links_module.MAX_CANDIDATES + 5)
    raw = hostile.make_message(text=None, html=f"<p>{repeats}</p>", links=[hostile.WETRANSFER_URL])
    parsed = parse_email(raw, LIMITS, links=REGISTRY)
    assert (parsed.links, parsed.limits_hit) == (
        [DeliveryLink("wetransfer", hostile.WETRANSFER_URL)],
        [],
    )


def test_href_longer_than_max_url_length_is_skipped() -> None:
    long_url = "https://we.tl/t-" + "a" * LIMITS.max_url_length
    raw = hostile.make_message(text=None, html="<p>x</p>", links=[long_url, hostile.WETRANSFER_URL])
    parsed = parse_email(raw, LIMITS, links=REGISTRY)
    assert parsed.links == [DeliveryLink("wetransfer", hostile.WETRANSFER_URL)]


def test_invalid_utf8_headers_decode_with_replacement() -> None:
    parsed = parse_email(hostile.invalid_utf8_headers(), LIMITS)
    assert parsed.from_ == "\ufffd\ufffd Mallory <mallory@example.com>"
    assert parsed.subject.startswith("caf\ufffd")
    assert parsed.to == ["victim@example.org"]
    assert "header_not_utf8" in parsed.defects


def test_unparseable_date_is_empty_and_recorded() -> None:
    parsed = parse_email(hostile.invalid_utf8_headers(), LIMITS)
    assert parsed.date == ""
    assert "invalid_date" in parsed.defects


def test_lying_charset_decodes_with_replacement() -> None:
    parsed = parse_email(hostile.lying_charset(), LIMITS)
    assert parsed.text.strip() == "caf\ufffd \ufffd\ufffd ok"
    assert parsed.html_text == "na\ufffdve été"
    assert "unknown_charset:x-no-such-charset" in parsed.defects


def test_missing_close_boundary_keeps_the_last_part() -> None:
    raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nunterminated"
    parsed = parse_email(raw, LIMITS)
    assert (parsed.text, parsed.defects) == ("unterminated", ["missing_close_boundary"])


@pytest.mark.parametrize(
    "name",
    [
        "ordinary",
        "html_bomb",
        "many_parts",
        "nesting_bomb",
        "invalid_utf8_headers",
        "many_links",
        "lying_charset",
        "rfc2047_subject",
        "huge_headers",
        "forwarded",
        "apple_mail",
    ],
)
def test_hostile_mail_never_raises(name: str) -> None:
    raw = getattr(hostile, name)()
    assert isinstance(parse_email(raw, LIMITS, links=REGISTRY), ParsedEmail)


def test_random_bytes_never_raise() -> None:
    small = dataclasses.replace(LIMITS, max_mime_parts=50, max_depth=10)
    for raw in hostile.random_bytes(seed=20250304, count=300):
        parsed = parse_email(raw, small, links=REGISTRY)
        assert parsed.parts_seen <= small.max_mime_parts


def test_empty_input_gives_an_empty_result() -> None:
    assert parse_email(b"", LIMITS) == ParsedEmail(parts_seen=1)


def test_html_to_text_puts_blocks_on_their_own_lines() -> None:
    text, _, _ = html_to_text(
        "<div>one</div><p>two<br>three</p><ul><li>a</li><li>b</li></ul>", 1000
    )
    assert text == "one\ntwo\nthree\na\nb"


def test_html_to_text_collapses_whitespace_inside_a_line() -> None:
    text, _, _ = html_to_text("<p>a \t\n <b>bold</b>&nbsp;&nbsp; c</p>", 1000)
    assert text == "a bold c"


def test_html_to_text_separates_table_cells() -> None:
    text, _, _ = html_to_text(
        "<table><tr><td>a</td><td>b</td></tr><tr><td>c</td></tr></table>", 999
    )
    assert text == "a b\nc"


def test_html_to_text_drops_comments_scripts_and_styles() -> None:
    html = "<head><title>T</title></head><style>x{}</style><!-- c --><script>s()</script><p>k</p>"
    assert html_to_text(html, 1000)[0] == "k"


def test_html_to_text_collects_hrefs_in_document_order() -> None:
    _, _, hrefs = html_to_text(
        '<a href="https://a/1">1</a><p><a href=" https://b/&amp;2 ">2</a>', 999
    )
    assert hrefs == ["https://a/1", "https://b/&2"]


def test_html_to_text_cuts_at_max_bytes_on_a_character_boundary() -> None:
    text, truncated, _ = html_to_text("<p>" + "é" * 10, 8)
    assert (text, truncated) == ("éé", True)


def test_html_to_text_cuts_bytes_input_on_a_character_boundary() -> None:
    text, truncated, _ = html_to_text("<p>ééé</p>".encode(), 6)
    assert (text, truncated) == ("é", True)


def test_html_to_text_does_not_flag_input_at_exactly_max_bytes() -> None:
    html = "<p>abc</p>"
    assert html_to_text(html, len(html))[1] is False


def test_html_to_text_replaces_invalid_utf8_bytes() -> None:
    assert html_to_text(b"<p>caf\xe9</p>", 100)[0] == "caf\ufffd"


def test_html_to_text_of_nothing_is_empty() -> None:
    assert html_to_text("   ", 100) == ("", False, [])


def test_html_to_text_survives_deep_nesting() -> None:
    text, _, _ = html_to_text("<div>x" * 100_000, 2_000_000)
    assert text.startswith("x\nx")


def test_html_to_text_collapses_whitespace_the_same_way_on_a_very_long_line() -> None:
    words = [f"w{n}" for n in range(30_000)]
    spaced = "".join(f"{word}{' ' * (n % 3 + 1)}\u00a0\t\n" for n, word in enumerate(words))
    assert len(spaced) > 128 * 1024
    text, truncated, _ = html_to_text(f"<span>{spaced}</span><p>tail \u00a0 end</p>", 10**6)
    assert not truncated
    assert text == " ".join(words) + "\ntail end"
