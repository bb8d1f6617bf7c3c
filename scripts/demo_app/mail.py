"""Realistic demo mail with delivery links, appended to the demo mailbox over IMAP."""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import itertools
import random
import time
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

_SENDERS = (
    ("Lena Hofmann", "lena.hofmann@studio-hofmann.example"),
    ("Marco Rossi", "marco@rossi-architetti.example"),
    ("Claire Dubois", "c.dubois@atelier-dubois.example"),
    ("Sam Patel", "sam.patel@northwind-print.example"),
)
_SUBJECTS = (
    ("Final photos from the shoot", "shoot-final-photos.zip", 2_400_000),
    ("Revised floor plans (v3)", "floor-plans-v3.pdf", 850_000),
    ("Print-ready artwork for the brochure", "brochure-print-ready.pdf", 5_200_000),
    ("Contract scan, signed", "contract-signed.pdf", 310_000),
    ("Video rough cut for review", "rough-cut-v1.mp4", 9_800_000),
)


@dataclass(frozen=True)
class DemoMail:
    """One generated message and the file its link points to."""

    raw: bytes
    subject: str
    filename: str


def compose_mail(number: int, origin: str, to: str = "inbox@demo.example") -> DemoMail:
    """The number-th demo mail: HTML and text parts, a link to origin/files/..., a signature."""
    name, address = _SENDERS[number % len(_SENDERS)]
    subject, filename, size = _SUBJECTS[number % len(_SUBJECTS)]
    link = f"{origin}/files/{size}/{filename}"
    message = EmailMessage()
    message["From"] = f"{name} <{address}>"
    message["To"] = to
    message["Subject"] = f"{subject} (#{number})"
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid(domain="demo.example")
    text = (
        f"Hello,\n\nhere are the files you asked for: {link}\n"
        "The link stays valid for 7 days.\n\n"
        f"Our website: https://www.{address.split('@')[1]}\n\nBest regards,\n{name}\n"
    )
    html = (
        "<html><body>"
        "<p>Hello,</p>"
        f'<p>here are the files you asked for: <a href="{link}">{filename}</a>.</p>'
        "<p>The link stays valid for 7 days.</p>"
        f"<p>Best regards,<br>{name}</p>"
        f'<p style="color:#888"><a href="https://www.{address.split("@")[1]}">Website</a></p>'
        "</body></html>"
    )
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return DemoMail(raw=message.as_bytes(), subject=str(message["Subject"]), filename=filename)


@dataclass(frozen=True)
class ImapTarget:
    """Where the demo mail goes."""

    host: str
    port: int
    username: str
    password: str
    folder: str = "INBOX"


def append_mail(target: ImapTarget, raw: bytes) -> None:
    """Delivers one message with IMAP APPEND (plain IMAP: the demo mailbox is on loopback)."""
    conn = imaplib.IMAP4(target.host, target.port, timeout=10.0)
    try:
        conn.login(target.username, target.password)
        typ, data = conn.append(target.folder, None, imaplib.Time2Internaldate(time.time()), raw)
        if typ != "OK":
            raise RuntimeError(f"APPEND to {target.folder} failed: {data!r}")
    finally:
        with contextlib.suppress(OSError, imaplib.IMAP4.error):
            conn.logout()


async def feed_mailbox(
    target: ImapTarget, origin: str, *, interval: float, stop: asyncio.Event, first: int = 0
) -> None:
    """Appends one demo mail, then one every interval seconds (with jitter), until stop is set."""
    for number in itertools.count(first):
        mail = compose_mail(number, origin)
        try:
            await asyncio.to_thread(append_mail, target, mail.raw)
            print(f"demo-app: appended mail #{number}: {mail.subject}", flush=True)
        except (OSError, imaplib.IMAP4.error, RuntimeError) as exc:
            # The mailbox may still be starting (compose) or restarting; try again next round.
            print(f"demo-app: could not append mail #{number}: {exc}", flush=True)
        delay = interval * random.uniform(0.7, 1.3)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)
        if stop.is_set():
            return
