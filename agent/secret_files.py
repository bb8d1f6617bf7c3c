"""Reads a secret from a file, as Kubernetes and Docker mount them: bounded, with plain reasons."""

from __future__ import annotations

import os
import stat
from pathlib import Path

MAX_SECRET_BYTES = 64 * 1024


class SecretFileError(Exception):
    """The file cannot serve as a secret; the message names the path, never the content."""


def read_secret_file(path: Path) -> str:
    """The file's text without its trailing line breaks (`echo secret > file` adds one)."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            # A FIFO or a device could block the start-up or never end.
            raise SecretFileError(f"{path} is not a regular file")
        with path.open("rb") as handle:
            data = handle.read(MAX_SECRET_BYTES + 1)
    except FileNotFoundError:
        raise SecretFileError(f"{path}: no such file") from None
    except PermissionError:
        raise SecretFileError(f"{path}: permission denied") from None
    except OSError as exc:
        raise SecretFileError(f"{path}: {os.strerror(exc.errno or 0)}") from None
    if len(data) > MAX_SECRET_BYTES:
        raise SecretFileError(f"{path} is larger than {MAX_SECRET_BYTES // 1024} KiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretFileError(f"{path} is not UTF-8 text") from None
    text = text.rstrip("\r\n")
    if not text:
        raise SecretFileError(f"{path} is empty")
    return text
