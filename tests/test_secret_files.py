"""Secret files as Kubernetes and Docker mount them: read bounded, never blocking, never quoted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.secret_files import MAX_SECRET_BYTES, SecretFileError, read_secret_file


def test_the_trailing_line_break_of_a_secret_file_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_bytes(b"  hunter2 \r\n")
    assert read_secret_file(path) == "  hunter2 "


def test_a_symlinked_secret_is_read_through_the_link(tmp_path: Path) -> None:
    # Kubernetes mounts each key as a symlink into a timestamped directory.
    (tmp_path / "..data").mkdir()
    (tmp_path / "..data" / "pw").write_text("linked-secret")
    (tmp_path / "pw").symlink_to(tmp_path / "..data" / "pw")
    assert read_secret_file(tmp_path / "pw") == "linked-secret"


def test_a_fifo_is_refused_instead_of_blocking_the_start(tmp_path: Path) -> None:
    path = tmp_path / "pipe"
    os.mkfifo(path)
    with pytest.raises(SecretFileError, match="is not a regular file"):
        read_secret_file(path)


def test_a_file_over_the_bound_is_refused_without_quoting_it(tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(b"s" * (MAX_SECRET_BYTES + 1))
    with pytest.raises(SecretFileError) as info:
        read_secret_file(path)
    assert str(info.value) == f"{path} is larger than 64 KiB"


def test_a_file_that_is_not_utf8_text_is_refused_without_quoting_it(tmp_path: Path) -> None:
    path = tmp_path / "binary"
    path.write_bytes(b"\xff\xfesecret-bytes")
    with pytest.raises(SecretFileError) as info:
        read_secret_file(path)
    assert "secret-bytes" not in str(info.value)
    assert str(info.value) == f"{path} is not UTF-8 text"


def test_a_path_through_a_regular_file_names_the_reason(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(SecretFileError) as info:
        read_secret_file(tmp_path / "file" / "pw")
    assert str(info.value) == f"{tmp_path}/file/pw: Not a directory"
