"""Turns untrusted raw mail into bounded text, links and headers without ever raising."""

from __future__ import annotations

import binascii
import re
import threading
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import parsedate_to_datetime

from lxml import etree

from agent.config import ParseSettings
from agent.pipeline.links import DeliveryLink, LinkCollector, LinkRegistry

# Elements whose content is never text a reader sees.
_SKIPPED = ("script", "style", "head", "title", "noscript", "template", "object", "iframe")
# Elements that start and end a line.
_BLOCK_NAMES = (
    "address article aside blockquote br caption center dd div dl dt fieldset figcaption figure "
    "footer form h1 h2 h3 h4 h5 h6 header hr li main nav ol p pre section table tbody tfoot "
    "thead tr ul"
)
_BLOCKS = tuple(_BLOCK_NAMES.split())
# Cells are separated by a space so "<td>a</td><td>b</td>" does not read "ab".
_CELLS = ("td", "th")

# The text is produced by libxslt in C: a Python iterwalk over a 1 MB document took ~90 ms
# here, the stylesheet ~5 ms.
_STYLESHEET = f"""<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
<xsl:output method="text" encoding="utf-8"/>
<xsl:template match="{"|".join(_SKIPPED)}"/>
<xsl:template match="{"|".join(_BLOCKS)}">
<xsl:text>&#xE000;</xsl:text><xsl:apply-templates/><xsl:text>&#xE000;</xsl:text>
</xsl:template>
<xsl:template match="{"|".join(_CELLS)}">
<xsl:text> </xsl:text><xsl:apply-templates/><xsl:text> </xsl:text>
</xsl:template>
</xsl:stylesheet>"""

# The stylesheet marks block edges with a private-use character, so source newlines and
# spaces can be collapsed by str.split() (C speed) while block edges become line breaks.
_BLOCK_EDGE = "\ue000"
_WORD = re.compile(r"\S+")
_SPACES = re.compile(r"\s+")
_SQUEEZE_BY_SPLIT = 64 * 1024
_TAG = re.compile(r"<[^<>]{0,4096}>")

_ENCODED_WORD = re.compile(r"=\?([^?\s]{1,64})\?([bBqQ])\?([^?\s]*)\?=")
_FOLD = re.compile(r"\r?\n[ \t]*")
_ADDRESS = re.compile(r"[^\s<>,;:\"()\[\]@]{1,64}@[^\s<>,;:\"()\[\]@]{1,255}")
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_NOT_BASE64 = bytes(
    b
    for b in range(256)
    if chr(b) not in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
)

_MAX_HEADER_CHARS = 2048
_MAX_ADDRESSES = 100
_MAX_DEFECTS = 20
_MAX_DEFECT_CHARS = 80
_MAX_BOUNDARY = 200

_local = threading.local()


@dataclass(frozen=True)
class ParsedEmail:
    """What the pipeline needs from one message, every field bounded."""

    message_id: str = ""
    from_: str = ""
    to: list[str] = field(default_factory=list)
    subject: str = ""
    date: str = ""
    text: str = ""
    html_text: str = ""
    links: list[DeliveryLink] = field(default_factory=list)
    html_truncated: bool = False
    html_bytes: int = 0
    parts_seen: int = 0
    limits_hit: list[str] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)

    def excerpt(self, chars: int) -> str:
        """The first chars characters of the whitespace-collapsed text, else of the HTML text."""
        return _collapsed_prefix(self.text, chars) or _collapsed_prefix(self.html_text, chars)


def html_to_text(
    html: str | bytes, max_bytes: int, *, max_hrefs: int | None = None
) -> tuple[str, bool, list[str]]:
    """Readable text, whether the input was cut at max_bytes, and the hrefs of <a> elements."""
    data, truncated = _utf8_prefix(html, max_bytes)
    if not data.strip():
        return "", truncated, []
    try:
        root = etree.fromstring(data, _html_parser())
    except etree.LxmlError:
        return _fallback_text(data.decode("utf-8")), truncated, []
    if root is None:
        return "", truncated, []
    hrefs: list[str] = []
    if max_hrefs is None or max_hrefs > 0:
        for anchor in root.iter("a"):
            href = anchor.get("href")
            if href:
                hrefs.append(href.strip())
                if max_hrefs is not None and len(hrefs) >= max_hrefs:
                    break
    try:
        raw_text = str(_stylesheet()(root))
    except etree.XSLTApplyError:
        # libxslt refused the tree (its recursion guard); the flat text is still readable.
        etree.strip_elements(root, *_SKIPPED, with_tail=False)
        raw_text = etree.tostring(root, method="text", encoding=str)
    return _collapse(raw_text), truncated, hrefs


def parse_email(
    raw: bytes,
    limits: ParseSettings,
    *,
    partial: bool = False,
    links: LinkRegistry | None = None,
) -> ParsedEmail:
    """Parses one raw message within limits; partial means raw is only the message's start.

    With links, the delivery links of every text/plain and text/html part are collected.
    """
    walker = _MimeWalker(limits, links)
    try:
        if partial:
            walker.limit("message_bytes")
        if len(raw) > limits.max_message_bytes:
            walker.limit("message_bytes")
            raw = raw[: limits.max_message_bytes]
        walker.parse(raw)
    except Exception as exc:  # the boundary: hostile bytes must never stop the pipeline
        walker.defect(f"parse_error:{type(exc).__name__}")
    return walker.result()


class _MimeWalker:
    """Walks one message's MIME tree, keeping what it found so far if a part breaks it."""

    def __init__(self, limits: ParseSettings, links: LinkRegistry | None) -> None:
        self.limits = limits
        self.fields: dict[str, str | list[str]] = {}
        self.text = ""
        self.html_text = ""
        self.links: LinkCollector | None = (
            links.collector(max_links=limits.max_links, max_url_length=limits.max_url_length)
            if links is not None
            else None
        )
        self.html_truncated = False
        self.html_bytes = 0
        self.parts_seen = 0
        self.limits_hit: list[str] = []
        self.defects: list[str] = []
        self.have_text = False
        self.have_html = False

    def limit(self, name: str) -> None:
        if name not in self.limits_hit:
            self.limits_hit.append(name)

    def defect(self, text: str) -> None:
        text = text[:_MAX_DEFECT_CHARS]
        if text not in self.defects and len(self.defects) < _MAX_DEFECTS:
            self.defects.append(text)

    def result(self) -> ParsedEmail:
        if self.links is not None and self.links.candidates_exhausted:
            self.limit("urls")
        to = self.fields.get("to", [])
        return ParsedEmail(
            message_id=str(self.fields.get("message_id", "")),
            from_=str(self.fields.get("from", "")),
            to=list(to) if isinstance(to, list) else [],
            subject=str(self.fields.get("subject", "")),
            date=str(self.fields.get("date", "")),
            text=self.text,
            html_text=self.html_text,
            links=[] if self.links is None else list(self.links.links),
            html_truncated=self.html_truncated,
            html_bytes=self.html_bytes,
            parts_seen=self.parts_seen,
            limits_hit=self.limits_hit,
            defects=self.defects,
        )

    def parse(self, raw: bytes) -> None:
        headers, body_start = self.headers_at(raw, 0, len(raw))
        self.read_top_headers(headers)
        self.walk(raw, headers, body_start, len(raw))

    def headers_at(self, raw: bytes, start: int, end: int) -> tuple[Message, int]:
        """The header block of the part at raw[start:end] (capped) and where its body starts."""
        if raw.startswith(b"\n", start) or raw.startswith(b"\r\n", start):
            return _parse_headers(b""), min(end, start + (1 if raw[start] == 0x0A else 2))
        match = _HEADER_END.search(raw, start, end)
        header_end = match.start() if match is not None else end
        body_start = match.end() if match is not None else end
        cap = self.limits.max_header_bytes
        if header_end - start > cap:
            self.limit("header_bytes")
            block = raw[start : start + cap]
            block = block[: block.rfind(b"\n") + 1]
        else:
            block = raw[start:header_end]
        headers = _parse_headers(block)
        for defect in headers.defects:
            self.defect(type(defect).__name__)
        return headers, body_start

    def read_top_headers(self, headers: Message) -> None:
        values = _first_values(headers, ("message-id", "from", "to", "subject", "date"))
        self.fields["message_id"] = _header_text(values.get("message-id", ""), self)
        self.fields["from"] = _header_text(values.get("from", ""), self)
        self.fields["subject"] = _header_text(values.get("subject", ""), self)
        to_text = _header_text(values.get("to", ""), self, cap=_MAX_HEADER_CHARS * 32)
        addresses: list[str] = []
        for match in _ADDRESS.finditer(to_text):
            if match.group() not in addresses:
                addresses.append(match.group())
            if len(addresses) >= _MAX_ADDRESSES:
                break
        self.fields["to"] = addresses
        self.fields["date"] = _iso_date(_header_text(values.get("date", ""), self), self)

    def walk(self, raw: bytes, headers: Message, body_start: int, end: int) -> None:
        """Visits parts depth-first with an explicit stack, within the part and depth limits."""
        stack: list[tuple[Message, int, int, int]] = [(headers, body_start, end, 0)]
        while stack:
            part, start, stop, depth = stack.pop()
            if self.parts_seen >= self.limits.max_mime_parts:
                self.limit("mime_parts")
                return
            self.parts_seen += 1
            try:
                children = self.visit(raw, part, start, stop, depth)
            except Exception as exc:  # one broken part must not hide the others
                self.defect(f"part_error:{type(exc).__name__}")
                continue
            if children and depth + 1 > self.limits.max_depth:
                self.limit("depth")
                continue
            for child_headers, child_start, child_stop in reversed(children):
                stack.append((child_headers, child_start, child_stop, depth + 1))

    def visit(
        self, raw: bytes, part: Message, start: int, stop: int, depth: int
    ) -> list[tuple[Message, int, int]]:
        """Reads a leaf, or returns a container's children as (headers, start, stop)."""
        ctype = part.get_content_type()
        maintype = ctype.split("/", 1)[0]
        if maintype == "multipart":
            return self.split_multipart(raw, part, start, stop, depth)
        if ctype == "message/rfc822":
            child, child_start = self.headers_at(raw, start, stop)
            return [(child, child_start, stop)]
        # The first inline text/plain and text/html parts are the body (the excerpt's text);
        # every text part, attachments included, is searched for links.
        if ctype == "text/plain":
            body = not self.have_text and not _is_attachment(part)
            self.have_text |= body
            if body or self.searching:
                self.read_text(*self.body(raw, start, stop, part), part, body=body)
        elif ctype == "text/html":
            body = not self.have_html and not _is_attachment(part)
            self.have_html |= body
            if body or self.searching:
                self.read_html(*self.body(raw, start, stop, part), part, body=body)
        return []

    @property
    def searching(self) -> bool:
        """Whether later text parts are still read for links."""
        return self.links is not None and not self.links.full

    def split_multipart(
        self, raw: bytes, part: Message, start: int, stop: int, depth: int
    ) -> list[tuple[Message, int, int]]:
        boundary = part.get_boundary()
        if not boundary or len(boundary) > _MAX_BOUNDARY:
            self.defect("multipart_without_boundary")
            return []
        if depth + 1 > self.limits.max_depth:
            # Deeper parts are not walked; say so without scanning for them.
            self.limit("depth")
            return []
        delimiter = re.compile(
            b"^--" + re.escape(boundary.encode("utf-8", "surrogateescape")) + rb"(--)?[ \t]*\r?$",
            re.MULTILINE,
        )
        children: list[tuple[Message, int, int]] = []
        budget = self.limits.max_mime_parts - self.parts_seen
        previous: re.Match[bytes] | None = None
        closed = False
        for match in delimiter.finditer(raw, start, stop):
            if previous is not None:
                self.add_child(raw, children, previous.end(), match.start())
            if match.group(1):
                closed = True
                break
            if len(children) >= budget:
                self.limit("mime_parts")
                return children
            previous = match
        if previous is None:
            self.defect("missing_boundary")
        elif not closed:
            self.defect("missing_close_boundary")
            self.add_child(raw, children, previous.end(), stop)
        return children

    def add_child(
        self, raw: bytes, children: list[tuple[Message, int, int]], start: int, stop: int
    ) -> None:
        """Adds the part between two delimiters (minus their line endings) to children."""
        if raw.startswith(b"\r\n", start):
            start += 2
        elif raw.startswith(b"\n", start):
            start += 1
        if stop > start and raw[stop - 1] == 0x0A:
            stop -= 2 if stop - start >= 2 and raw[stop - 2] == 0x0D else 1
        stop = max(start, stop)
        headers, body_start = self.headers_at(raw, start, stop)
        children.append((headers, body_start, stop))

    def body(self, raw: bytes, start: int, stop: int, part: Message) -> tuple[bytes, int]:
        """At most max_html_bytes of the decoded body, and the decoded body's full size."""
        cap = self.limits.max_html_bytes
        encoding = str(part.get("content-transfer-encoding", "")).strip().lower()
        if encoding not in ("base64", "quoted-printable"):
            # Identity encodings: only the kept prefix is copied out of the message.
            return raw[start : min(stop, start + cap)], stop - start
        encoded = raw[start:stop]
        data = _base64(encoded, self) if encoding == "base64" else binascii.a2b_qp(encoded)
        return data[:cap], len(data)

    def read_text(self, data: bytes, size: int, part: Message, *, body: bool) -> None:
        """Searches a text/plain part for links; the message's body text is kept."""
        if size > len(data):
            self.limit("text_bytes")
        text = _decode(data, part.get_content_charset(), self)
        if body:
            self.text = text
        if self.links is not None:
            self.links.add_text(text)

    def read_html(self, data: bytes, size: int, part: Message, *, body: bool) -> None:
        """Converts a text/html part and searches it for links; the body's text is kept."""
        cap = self.limits.max_html_bytes
        self.html_bytes = max(self.html_bytes, size)
        charset = part.get_content_charset()
        # UTF-8 and ASCII bytes go to the parser as they are: no decoded copy of the body.
        html: str | bytes = data if _is_utf8(charset) else _decode(data, charset, self)
        # Every href while links are searched: the collector bounds the distinct ones examined,
        # and the hrefs of at most max_html_bytes of HTML take less memory than its tree.
        try:
            text, truncated, hrefs = html_to_text(
                html, cap, max_hrefs=None if self.searching else 0
            )
        except Exception as exc:  # the fallback: a short plain-text excerpt still goes out
            self.defect(f"html_error:{type(exc).__name__}")
            plain = html if isinstance(html, str) else html.decode("utf-8", "replace")
            text, truncated, hrefs = _fallback_text(plain), False, []
        if body:
            self.html_text = text
        if truncated or size > cap:
            self.html_truncated = True
            self.limit("html_bytes")
        if self.links is not None:
            self.links.add_text(text)
            self.links.add_hrefs(hrefs)


def _parse_headers(block: bytes) -> Message:
    return BytesHeaderParser(policy=compat32).parsebytes(block + b"\n\n")


def _first_values(headers: Message, names: tuple[str, ...]) -> dict[str, str]:
    values: dict[str, str] = {}
    for name, value in headers.raw_items():
        key = name.lower()
        if key in names and key not in values:
            values[key] = str(value)
    return values


def _is_attachment(part: Message) -> bool:
    disposition = str(part.get("content-disposition", "")).split(";", 1)[0].strip().lower()
    return disposition == "attachment"


def _header_text(value: str, walker: _MimeWalker, *, cap: int = _MAX_HEADER_CHARS) -> str:
    """A raw header value (undecodable bytes as surrogates) as readable, unfolded text."""
    data = value.encode("utf-8", "surrogateescape")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        walker.defect("header_not_utf8")
        text = data.decode("utf-8", "replace")
    text = _FOLD.sub(" ", text)
    if "=?" in text:
        text = _decode_words(text, walker)
    return " ".join(text.split())[:cap]


def _decode_words(text: str, walker: _MimeWalker) -> str:
    """Decodes RFC 2047 encoded words; whitespace between two of them is dropped."""
    out: list[str] = []
    pending: list[tuple[bytes, str]] = []
    position = 0

    def flush() -> None:
        if pending:
            charset = pending[0][1]
            out.append(_decode(b"".join(data for data, _ in pending), charset, walker))
            pending.clear()

    for match in _ENCODED_WORD.finditer(text):
        gap = text[position : match.start()]
        if gap and not (pending and gap.isspace()):
            flush()
            out.append(gap)
        charset = match.group(1).split("*", 1)[0].lower()
        payload = match.group(3).encode("ascii", "replace")
        if match.group(2) in "bB":
            data = _base64(payload, walker)
        else:
            data = binascii.a2b_qp(payload, header=True)
        if pending and pending[-1][1] != charset:
            flush()
        pending.append((data, charset))
        position = match.end()
    flush()
    out.append(text[position:])
    return "".join(out)


def _iso_date(value: str, walker: _MimeWalker) -> str:
    if not value:
        return ""
    try:
        return parsedate_to_datetime(value).isoformat()
    except (TypeError, ValueError, IndexError, OverflowError):
        walker.defect("invalid_date")
        return ""


def _base64(data: bytes, walker: _MimeWalker) -> bytes:
    """Lenient base64: foreign characters dropped, padding repaired."""
    cleaned = data.translate(None, _NOT_BASE64)
    if len(cleaned) % 4 == 1:
        walker.defect("invalid_base64")
        cleaned = cleaned[:-1]
    cleaned += b"=" * (-len(cleaned) % 4)
    try:
        return binascii.a2b_base64(cleaned)
    except binascii.Error:
        walker.defect("invalid_base64")
        return b""


def _charset(declared: str | None) -> str:
    """The codec name for a declared charset: ASCII and the unknown-8bit labels read as UTF-8."""
    name = (declared or "utf-8").strip().lower() or "utf-8"
    return "utf-8" if name in ("unknown-8bit", "x-unknown", "us-ascii", "ascii") else name


def _is_utf8(charset: str | None) -> bool:
    """Whether bytes in this declared charset can be read as UTF-8 (ASCII is a subset)."""
    return _charset(charset) in ("utf-8", "utf8")


def _decode(data: bytes, charset: str | None, walker: _MimeWalker) -> str:
    """Bytes in a declared charset; unknown or non-text charsets fall back to UTF-8."""
    name = _charset(charset)
    try:
        return data.decode(name, "replace")
    except LookupError:
        walker.defect(f"unknown_charset:{name[:40]}")
    except (ValueError, TypeError):
        walker.defect(f"bad_charset:{name[:40]}")
    return data.decode("utf-8", "replace")


def _utf8_prefix(html: str | bytes, max_bytes: int) -> tuple[bytes, bool]:
    """At most max_bytes of valid UTF-8, cut on a character boundary, and whether it was cut."""
    limit = max(max_bytes, 0)
    if isinstance(html, str):
        # Each character is at least one byte: this slice holds every byte that can be kept.
        data = html[: limit + 1].encode("utf-8", "replace")
        truncated = len(data) > limit
    else:
        truncated = len(html) > limit
        data = html[: _char_boundary(html, limit)]
        if not data.isascii():
            data = data.decode("utf-8", "replace").encode("utf-8")
    if len(data) > limit:
        truncated = True
        data = data[: _char_boundary(data, limit)]
    return data, truncated


def _char_boundary(data: bytes, cut: int) -> int:
    """The largest position at or before cut that does not split a UTF-8 sequence."""
    if cut >= len(data):
        return len(data)
    while cut > 0 and data[cut] & 0xC0 == 0x80:
        cut -= 1
    return cut


def _fallback_text(html: str) -> str:
    """Tags stripped by a bounded pattern, for HTML that lxml could not read."""
    return _collapse(_TAG.sub(" ", html))


def _collapse(text: str) -> str:
    """Whitespace runs become one space; block edges become one line break."""
    return "\n".join(filter(None, map(_squeeze, text.split(_BLOCK_EDGE))))


def _squeeze(line: str) -> str:
    """One line with its whitespace runs collapsed.

    split() and join() are the fastest in C, but hold every word at once: a whole 1 MB
    document as words took about 9 MB. Long lines take the slower, copy-once substitution.
    """
    if len(line) <= _SQUEEZE_BY_SPLIT:
        return " ".join(line.split())
    return _SPACES.sub(" ", line).strip()


def _collapsed_prefix(text: str, chars: int) -> str:
    if chars <= 0:
        return ""
    words: list[str] = []
    size = 0
    for match in _WORD.finditer(text):
        words.append(match.group())
        size += len(match.group()) + 1
        if size > chars:
            break
    return " ".join(words)[:chars]


def _html_parser() -> etree.HTMLParser:
    """A parser per thread: lxml parsers must not be shared between threads."""
    parser: etree.HTMLParser | None = getattr(_local, "parser", None)
    if parser is None:
        parser = etree.HTMLParser(
            encoding="utf-8",
            remove_comments=True,
            remove_pis=True,
            no_network=True,
            collect_ids=False,
            huge_tree=False,
        )
        _local.parser = parser
    return parser


def _stylesheet() -> etree.XSLT:
    """The text stylesheet, compiled once per thread, with every file and network access denied."""
    transform: etree.XSLT | None = getattr(_local, "xslt", None)
    if transform is None:
        transform = etree.XSLT(
            etree.XML(_STYLESHEET.encode("utf-8")),
            access_control=etree.XSLTAccessControl.DENY_ALL,
        )
        _local.xslt = transform
    return transform
