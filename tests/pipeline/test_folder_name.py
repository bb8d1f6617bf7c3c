"""Folder names in modified UTF-7, held to the examples of RFC 3501 section 5.1.3."""

from __future__ import annotations

import pytest

from agent.pipeline.folder_name import (
    FolderNameError,
    decode_folder,
    encode_folder,
    folder_name_problem,
)

# RFC 3501 5.1.3: "a mailbox name which mixes English, Chinese, and Japanese text".
RFC_NAME = "~peter/mail/\u53f0\u5317/\u65e5\u672c\u8a9e"
RFC_WIRE = "~peter/mail/&U,BTFw-/&ZeVnLIqe-"


def test_the_rfc_example_encodes_to_its_wire_form() -> None:
    assert encode_folder(RFC_NAME) == RFC_WIRE


def test_the_rfc_example_decodes_to_its_name() -> None:
    assert decode_folder(RFC_WIRE) == RFC_NAME


def test_the_rfc_correct_forms_decode_and_are_what_the_encoder_writes() -> None:
    # RFC 3501: '"&Jjo!" ... The correct form is "&Jjo-!"' and '"&U,BTFw-&ZeVnLIqe-" ... The
    # correct form is "&U,BTF2XlZyyKng-"'.
    assert decode_folder("&Jjo-!") == "\u263a!"
    assert encode_folder("\u263a!") == "&Jjo-!"
    assert decode_folder("&U,BTF2XlZyyKng-") == "\u53f0\u5317\u65e5\u672c\u8a9e"
    assert encode_folder("\u53f0\u5317\u65e5\u672c\u8a9e") == "&U,BTF2XlZyyKng-"


@pytest.mark.parametrize("wire", ["&Jjo!", "&U,BTFw-&ZeVnLIqe-"])
def test_the_rfc_invalid_forms_are_refused(wire: str) -> None:
    with pytest.raises(FolderNameError):
        decode_folder(wire)


@pytest.mark.parametrize(
    ("name", "wire"),
    [
        ("INBOX", "INBOX"),
        ("Pi\u00e8ces", "Pi&AOg-ces"),
        ("R&D", "R&-D"),
        ("a b/c~[x]", "a b/c~[x]"),
        ("\U0001f4c1 Archiv", "&2D3cwQ- Archiv"),
    ],
)
def test_names_round_trip_through_their_wire_form(name: str, wire: str) -> None:
    assert encode_folder(name) == wire
    assert decode_folder(wire) == name


@pytest.mark.parametrize(
    "wire",
    [
        "&AGE-",  # "a", which must stand for itself
        "&AOl-",  # stray bits after the last character
        "&AO-",  # half a UTF-16 code unit
        "&2D0-",  # a high surrogate without its low half
        "&AOk=-",  # base64 padding
        "caf\u00e9",  # raw non-ASCII on the wire
    ],
)
def test_malformed_wire_forms_are_refused(wire: str) -> None:
    with pytest.raises(FolderNameError):
        decode_folder(wire)


def test_a_lone_surrogate_cannot_be_encoded() -> None:
    with pytest.raises(FolderNameError, match="lone surrogate"):
        encode_folder("bad\udcc3name")


@pytest.mark.parametrize("name", ["INBOX", "Pi\u00e8ces", "R&D", "Q&A-list", "&-"])
def test_ordinary_names_have_no_problem(name: str) -> None:
    assert folder_name_problem(name) == ""


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "expected a folder name"),
        ("In\nbox", "control character"),
        ("bad\udcc3name", "lone surrogate"),
        ("Pi&AOg-ces", "write the folder as a mail client shows it: 'Pi\u00e8ces'"),
    ],
)
def test_malformed_names_say_what_is_wrong(name: str, why: str) -> None:
    assert why in folder_name_problem(name)
