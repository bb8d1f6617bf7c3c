"""Builders of ordinary and hostile mail as raw bytes, for parse, link and end-to-end tests."""

from __future__ import annotations

import base64
import random
from collections.abc import Sequence
from email.header import Header

DROPBOX_URL = "https://www.dropbox.com/scl/fi/a1b2c3d4/report.zip?rlkey=k9x8&dl=0"
WETRANSFER_URL = "https://we.tl/t-AbCdEf1234"
SWISSTRANSFER_URL = "https://www.swisstransfer.com/d/8a7b6c5d-1234"
MEGABYTE = 1024 * 1024

_HEADERS = (
    "From: Alice Example <alice@example.com>\r\n"
    "To: Bob <bob@example.org>, carol@example.net\r\n"
    "Date: Tue, 04 Mar 2025 10:15:30 +0100\r\n"
    "MIME-Version: 1.0\r\n"
)


def _message_id(token: str) -> str:
    return f"<{token}@hostile.example>"


def make_message(
    subject: str = "Your files are ready",
    text: str | None = "Hello,\r\nyour files are ready.",
    html: str | None = None,
    links: Sequence[str] = (),
    message_id: str = "<ordinary-1@mail.example>",
) -> bytes:
    """A well-formed message; each link is appended to the text part and as an <a> in the HTML."""
    encoded_subject = (
        subject if subject.isascii() else Header(subject, "utf-8").encode(maxlinelen=998)
    )
    headers = f"{_HEADERS}Subject: {encoded_subject}\r\nMessage-ID: {message_id}\r\n"
    bodies: list[tuple[str, str]] = []
    if text is not None:
        body = text + "".join(f"\r\n{link}" for link in links)
        bodies.append(("text/plain", body))
    if html is not None:
        anchors = "".join(f'<p><a href="{link}">Download</a></p>' for link in links)
        if "</body>" in html:
            body = html.replace("</body>", anchors + "</body>", 1)
        else:
            body = html + anchors
        bodies.append(("text/html", body))
    if len(bodies) == 1:
        ctype, body = bodies[0]
        return _single(headers, ctype, body)
    boundary = "==ordinary-boundary=="
    out = [f'{headers}Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n']
    for ctype, body in bodies:
        out.append(f"--{boundary}\r\n")
        out.append(_part_headers(ctype))
        out.append(_b64(body))
    out.append(f"--{boundary}--\r\n")
    return "".join(out).encode("ascii")


def _single(headers: str, ctype: str, body: str) -> bytes:
    return (headers + _part_headers(ctype) + _b64(body)).encode("ascii")


def _part_headers(ctype: str) -> str:
    return f'Content-Type: {ctype}; charset="utf-8"\r\nContent-Transfer-Encoding: base64\r\n\r\n'


def _b64(body: str) -> str:
    return base64.encodebytes(body.encode("utf-8")).decode("ascii").replace("\n", "\r\n")


def ordinary() -> bytes:
    """Plain and HTML alternatives, each with a Dropbox and a WeTransfer link."""
    html = (
        "<html><head><style>p { color: red }</style><title>t</title></head><body>"
        "<h1>Files</h1><div>Hello <b>Bob</b>,</div><p>your files are ready.</p>"
        "<script>alert(1)</script></body></html>"
    )
    return make_message(
        subject="Your files are ready",
        text="Hello Bob,\r\nyour files are ready:",
        html=html,
        links=[DROPBOX_URL, WETRANSFER_URL],
        message_id="<ordinary-1@mail.example>",
    )


def rfc2047_subject() -> bytes:
    """A subject in RFC 2047 encoded words (UTF-8, base64 and quoted-printable)."""
    raw = (
        f"{_HEADERS}Subject: =?utf-8?B?Q2Fmw6kg4piVIGZpbGVz?= =?iso-8859-1?Q?f=FCr_dich?=\r\n"
        f"Message-ID: {_message_id('rfc2047')}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\nbody\r\n"
    )
    return raw.encode("ascii")


def html_bomb(size: int = 10 * MEGABYTE) -> bytes:
    """One text/html part of about size bytes with a Dropbox link at the start."""
    chunk = '<div class="row"><span>filler text &amp; more</span><a href="#x">x</a></div>\n'
    repeats = max(1, size // len(chunk))
    html = f'<html><body><p><a href="{DROPBOX_URL}">files</a></p>{chunk * repeats}</body></html>'
    raw = (
        f"{_HEADERS}Subject: html bomb\r\nMessage-ID: {_message_id('html-bomb')}\r\n"
        "Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        f"{html}\r\n"
    )
    return raw.encode("utf-8")


def many_parts(count: int = 5000, *, linked: bool = False) -> bytes:
    """A flat multipart/mixed with count small text parts; linked: each holds its own link."""
    name = "linked parts" if linked else "many parts"
    boundary = f"=={name.replace(' ', '-')}=="
    out = [
        f"{_HEADERS}Subject: {name}\r\nMessage-ID: {_message_id(name.replace(' ', '-'))}\r\n"
        f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'
    ]
    for index in range(count):
        text = f"part {index}: {part_link(index)}" if linked else f"part {index}"
        out.append(f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n")
    out.append(f"--{boundary}--\r\n")
    return "".join(out).encode("ascii")


def part_link(index: int) -> str:
    """The WeTransfer link in part index of many_parts(linked=True)."""
    return f"https://we.tl/t-part{index}"


def nesting_bomb(levels: int = 1000) -> bytes:
    """Multipart/mixed nested levels deep, with one text part at the bottom."""
    out = [f"{_HEADERS}Subject: nesting bomb\r\nMessage-ID: {_message_id('nesting-bomb')}\r\n"]
    for level in range(levels):
        out.append(f'Content-Type: multipart/mixed; boundary="b{level}"\r\n\r\n--b{level}\r\n')
    out.append("Content-Type: text/plain\r\n\r\nthe bottom\r\n")
    for level in reversed(range(levels)):
        out.append(f"--b{level}--\r\n")
    return "".join(out).encode("ascii")


def invalid_utf8_headers() -> bytes:
    """Raw 8-bit bytes that are not UTF-8 in Subject, From and To, and a bad encoded word."""
    return (
        b"From: \xff\xfe Mallory <mallory@example.com>\r\n"
        b"To: \xc3\x28 victim@example.org\r\n"
        b"Subject: caf\xe9 \xed\xa0\x80 =?utf-8?B?/w==?= =?x-unknown?Q?abc?= =?utf-8?B?bad?=\r\n"
        b"Date: not a date at all\r\n"
        b"Message-ID: <invalid-utf8@hostile.example>\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
        b"body \xff\xfe text\r\n"
    )


def many_links(count: int = 10000) -> bytes:
    """Text and HTML parts with count distinct links each, a Dropbox link among them."""
    urls = [f"https://example.com/file/{index}" for index in range(count)]
    urls.insert(count // 2, DROPBOX_URL)
    text = "Links:\r\n" + "\r\n".join(urls)
    html = "<html><body>" + "".join(f'<a href="{url}">{url}</a><br>' for url in urls)
    return make_message(
        subject="many links",
        text=text,
        html=html + "</body></html>",
        message_id=_message_id("many-links"),
    )


def lying_charset() -> bytes:
    """Parts whose declared charsets lie: unknown names, and UTF-8 bytes that are not UTF-8."""
    boundary = "==lying=="
    raw = (
        _HEADERS.encode("ascii")
        + b"Subject: lying charset\r\n"
        + f"Message-ID: {_message_id('lying-charset')}\r\n".encode("ascii")
        + f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n'.encode("ascii")
        + f"--{boundary}\r\n".encode("ascii")
        + b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        + b"caf\xe9 \xff\xfe ok\r\n"
        + f"--{boundary}\r\n".encode("ascii")
        + b"Content-Type: text/html; charset=x-no-such-charset\r\n"
        + b"Content-Transfer-Encoding: 8bit\r\n\r\n"
        + b"<p>na\xefve \xc3\xa9t\xc3\xa9</p>\r\n"
        + f"--{boundary}--\r\n".encode("ascii")
    )
    return raw


def huge_headers(size: int = 2 * MEGABYTE) -> bytes:
    """A header block of about size bytes (thousands of X- headers) before a small body."""
    line = "X-Filler: " + "a" * 100 + "\r\n"
    filler = line * max(1, size // len(line))
    raw = (
        f"{_HEADERS}Subject: huge headers\r\nMessage-ID: {_message_id('huge-headers')}\r\n"
        f"{filler}Content-Type: text/plain\r\n\r\nsmall body\r\n"
    )
    return raw.encode("ascii")


def forwarded(link: str = WETRANSFER_URL) -> bytes:
    """A note (text and HTML), then the forwarded message as a message/rfc822 part with the link."""
    inner_html = f'<p>You received files.</p><p><a href="{link}">Get your files</a></p>'
    inner = (
        "From: WeTransfer <noreply@wetransfer.com>\r\nTo: alice@example.com\r\n"
        "Subject: You received files\r\nMessage-ID: <inner-1@wetransfer.example>\r\n"
        'MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary="inner"\r\n\r\n'
        "--inner\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        f"You received files.\r\nGet them here: {link}\r\n"
        f"--inner\r\n{_part_headers('text/html')}{_b64(inner_html)}--inner--\r\n"
    )
    raw = (
        f"{_HEADERS}Subject: Fwd: You received files\r\nMessage-ID: {_message_id('forwarded')}\r\n"
        'Content-Type: multipart/mixed; boundary="outer"\r\n\r\n'
        '--outer\r\nContent-Type: multipart/alternative; boundary="note"\r\n\r\n'
        "--note\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        "Bob, see the files below.\r\n"
        "--note\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        "<p>Bob, see the files below.</p>\r\n--note--\r\n"
        "--outer\r\nContent-Type: message/rfc822\r\n"
        'Content-Disposition: attachment; filename="You received files.eml"\r\n\r\n'
        f"{inner}--outer--\r\n"
    )
    return raw.encode("ascii")


def apple_mail(link: str = SWISSTRANSFER_URL, *, html: bool = False) -> bytes:
    """Text, an inline image, then more text that holds the link (as Apple Mail sends them).

    html: the two text fragments are text/html inside multipart/related, the link an <a>.
    """
    boundary = "Apple-Mail=_4C1F0A2B"
    image = base64.encodebytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4).decode("ascii")
    if html:
        ctype, first, second = (
            "text/html",
            "<html><body><div>Hi Bob, the photo:</div>",
            f'<div>and the files: <a href="{link}">SwissTransfer</a></div></body></html>',
        )
    else:
        ctype, first, second = "text/plain", "Hi Bob, the photo:", f"and the files: {link}"
    parts = [
        f"Content-Transfer-Encoding: 7bit\r\nContent-Type: {ctype};\r\n\tcharset=us-ascii\r\n"
        f"\r\n{first}\r\n",
        "Content-Transfer-Encoding: base64\r\nContent-Disposition: inline;\r\n"
        '\tfilename="photo.png"\r\nContent-Type: image/png;\r\n\tname="photo.png"\r\n'
        f"Content-Id: <photo@apple.example>\r\n\r\n{image}",
        f"Content-Transfer-Encoding: 7bit\r\nContent-Type: {ctype};\r\n\tcharset=us-ascii\r\n"
        f"\r\n{second}\r\n",
    ]
    container = "multipart/related" if html else "multipart/mixed"
    body = "".join(f"--{boundary}\r\n{part}" for part in parts)
    raw = (
        f"{_HEADERS}Subject: photo and files\r\nMessage-ID: {_message_id('apple-mail')}\r\n"
        f'Content-Type: {container};\r\n\tboundary="{boundary}"\r\n\r\n'
        f"{body}--{boundary}--\r\n"
    )
    return raw.encode("ascii")


def random_bytes(seed: int, count: int = 200, max_size: int = 4096) -> list[bytes]:
    """Deterministic random inputs: pure noise, and mail-like bytes with random corruption."""
    rng = random.Random(seed)
    seeds = [ordinary(), lying_charset(), invalid_utf8_headers(), nesting_bomb(30)]
    samples: list[bytes] = []
    for index in range(count):
        if index % 2:
            samples.append(rng.randbytes(rng.randrange(max_size)))
            continue
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(1, 40)):
            position = rng.randrange(len(data))
            data[position] = rng.randrange(256)
        if rng.random() < 0.3:
            del data[rng.randrange(len(data)) :]
        samples.append(bytes(data))
    return samples
