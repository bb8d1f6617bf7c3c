"""IMAP folder names as they travel on the wire: modified UTF-7 (RFC 3501 section 5.1.3)."""

# Written here rather than taken from a library: imapclient's imap_utf7 module is not part of
# that library's documented API, and its built-in encoding (IMAPClient.folder_encode) only
# covers the folder commands it knows. The client switches that off, so folder names go through
# encode_folder() here and nowhere else, and are never encoded twice.
#
# The rule: printable US-ASCII (0x20-0x7e) stands for itself, except "&", written "&-". Every
# other run of characters is UTF-16 (big-endian, with surrogate pairs beyond the BMP), encoded
# in base64 with "," instead of "/" and without "=" padding, between "&" and "-".

from __future__ import annotations

import base64
import re
import unicodedata

_SHIFT = re.compile(r"&([^-]*)-")
_MODIFIED_BASE64 = re.compile(r"[A-Za-z0-9+,]+")


class FolderNameError(ValueError):
    """A folder name that cannot be sent to an IMAP server, or a malformed encoded one."""


def _direct(char: str) -> bool:
    return 0x20 <= ord(char) <= 0x7E


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",")


def encode_folder(name: str) -> str:
    """The wire form of a folder name: `Pièces` -> `Pi&AOg-ces`, `R&D` -> `R&-D`."""
    out: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            try:
                raw = "".join(run).encode("utf-16-be")
            except UnicodeEncodeError:
                raise FolderNameError(
                    f"folder name {name!r} holds a lone surrogate, which is not text"
                ) from None
            out.append(f"&{_b64(raw)}-")
            run.clear()

    for char in name:
        if _direct(char):
            flush()
            out.append("&-" if char == "&" else char)
        else:
            run.append(char)
    flush()
    return "".join(out)


def decode_folder(wire: str) -> str:
    """The folder name a wire form stands for; raises FolderNameError when it is malformed."""
    out: list[str] = []
    pos = 0
    after_run = False
    while pos < len(wire):
        char = wire[pos]
        if not _direct(char):
            raise FolderNameError(f"{wire!r}: {char!r} may not appear in an encoded folder name")
        if char != "&":
            out.append(char)
            pos += 1
            after_run = False
            continue
        match = _SHIFT.match(wire, pos)
        if match is None:
            raise FolderNameError(f"{wire!r}: '&' at {pos} opens a sequence that is never closed")
        chunk = match.group(1)
        if chunk and after_run:
            # RFC 3501: two encoded runs in a row are one run written with a superfluous shift.
            raise FolderNameError(f"{wire!r}: &{chunk}- follows another encoded run")
        out.append(_decode_run(wire, chunk))
        after_run = bool(chunk)
        pos = match.end()
    return "".join(out)


def _decode_run(wire: str, chunk: str) -> str:
    if chunk == "":
        return "&"
    if not _MODIFIED_BASE64.fullmatch(chunk):
        raise FolderNameError(f"{wire!r}: &{chunk}- is not modified base64")
    padded = chunk.replace(",", "/") + "=" * (-len(chunk) % 4)
    try:
        raw = base64.b64decode(padded, validate=True)
    except ValueError:
        raise FolderNameError(f"{wire!r}: &{chunk}- is not modified base64") from None
    # Canonical form only: no stray bits, whole UTF-16 code units, no padding characters.
    if len(raw) % 2 or _b64(raw) != chunk:
        raise FolderNameError(f"{wire!r}: &{chunk}- does not hold whole UTF-16 characters")
    try:
        text = raw.decode("utf-16-be")
    except UnicodeDecodeError:
        raise FolderNameError(f"{wire!r}: &{chunk}- holds a broken surrogate pair") from None
    if any(_direct(char) for char in text):
        raise FolderNameError(f"{wire!r}: &{chunk}- encodes characters that stand for themselves")
    return text


def folder_name_problem(name: str) -> str:
    """Why `name` is not usable as a configured folder name, or "" when it is.

    The setting is the name a person reads in a mail client (`Pièces`), never its wire form: a
    name that already is well-formed modified UTF-7 with an encoded run (`Pi&AOg-ces`) would be
    encoded a second time and name another folder, so it is refused with the name to write.
    """
    if not name:
        return "expected a folder name, got an empty string"
    for char in name:
        category = unicodedata.category(char)
        if category == "Cc":
            return f"{name!r} holds the control character {char!r}"
        if category == "Cs":
            return f"{name!r} holds a lone surrogate (invalid UTF-8 in the setting?)"
    if _SHIFT.search(name) and any(m.group(1) for m in _SHIFT.finditer(name)):
        try:
            decoded = decode_folder(name)
        except FolderNameError:
            return ""
        return (
            f"{name!r} is already encoded as IMAP modified UTF-7; write the folder as a mail "
            f"client shows it: {decoded!r}"
        )
    return ""
