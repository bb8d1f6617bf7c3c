"""Hypothesis strategies for mail: MIME trees written by the stdlib, links planted in text parts."""

from __future__ import annotations

import html
from collections.abc import Iterator
from dataclasses import dataclass
from email import policy
from email.charset import BASE64, QP, Charset
from email.message import Message
from email.mime.application import MIMEApplication
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

from hypothesis import strategies as st

_TOKEN = st.text(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", min_size=4, max_size=24
)

# Delivery links of every provider's shape.
delivery_links = st.one_of(
    _TOKEN.map(lambda t: f"https://we.tl/t-{t}"),
    _TOKEN.map(lambda t: f"https://wetransfer.com/downloads/{t}"),
    _TOKEN.map(lambda t: f"https://fromsmash.com/{t}"),
    _TOKEN.map(lambda t: f"https://www.swisstransfer.com/d/{t}"),
    st.tuples(_TOKEN, _TOKEN).map(
        lambda t: f"https://www.dropbox.com/scl/fi/{t[0]}/file.zip?rlkey={t[1]}&dl=0"
    ),
)

# (charset, body encoding): base64, quoted-printable, or the bytes as they are (7bit, 8bit).
_ENCODINGS = st.sampled_from(
    [("utf-8", BASE64), ("utf-8", QP), ("utf-8", None), ("us-ascii", None),
     ("iso-8859-1", QP), ("utf-16", BASE64)]
)  # fmt: skip
# A marker in a leaf's words where a link goes: NUL never occurs in filler.
_MARK = "\0"


def _words(charset: str) -> st.SearchStrategy[list[str]]:
    """Filler words this charset can carry; no colon, so that no filler word is a URL."""
    if charset == "us-ascii":
        alphabet = st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=":")
    else:
        codec = "latin-1" if charset == "iso-8859-1" else "utf-8"
        alphabet = st.characters(
            codec=codec, exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp"), exclude_characters=":"
        )
    return st.lists(st.text(alphabet, min_size=1, max_size=12), max_size=40)


@dataclass
class Leaf:
    """A text part: filler words (with link markers once planted) and how it is written."""

    subtype: str
    charset: str
    encoding: str | None
    words: list[str]
    attachment: bool


Node = Leaf | bytes | tuple[str, list["Node"]]


@st.composite
def _leaf(draw: st.DrawFn) -> Leaf:
    charset, encoding = draw(_ENCODINGS)
    return Leaf(
        subtype=draw(st.sampled_from(["plain", "html"])),
        charset=charset,
        encoding=encoding,
        words=draw(_words(charset)),
        attachment=draw(st.sampled_from([False, False, False, True])),
    )


def _node(depth: int) -> st.SearchStrategy[Node]:
    leaves: st.SearchStrategy[Node] = st.one_of(_leaf(), st.binary(max_size=64))
    if depth <= 0:
        return leaves
    containers: st.SearchStrategy[Node] = st.tuples(
        st.sampled_from(["mixed", "alternative", "related", "rfc822"]),
        st.lists(_node(depth - 1), min_size=1, max_size=4),
    )
    return st.one_of(leaves, leaves, containers)


@dataclass
class Tree:
    """A drawn MIME tree and its text parts."""

    root: Node
    leaves: list[Leaf]


@st.composite
def trees(draw: st.DrawFn, max_depth: int = 4) -> Tree:
    """A MIME tree nested at most max_depth containers deep, with at least one text part."""
    root = draw(_node(max_depth))
    leaves = _leaves(root)
    if not leaves:
        extra = draw(_leaf())
        root = ("mixed", [root, extra])
        leaves = [extra]
    return Tree(root, leaves)


def _leaves(node: Node) -> list[Leaf]:
    if isinstance(node, Leaf):
        return [node]
    if isinstance(node, bytes):
        return []
    return [leaf for child in node[1] for leaf in _leaves(child)]


def plant(draw: st.DrawFn, tree: Tree, count: int) -> None:
    """Marks count places, each in a drawn text part at a drawn word (as an href in HTML or not)."""
    for index in range(count):
        leaf = draw(st.sampled_from(tree.leaves))
        href = leaf.subtype == "html" and draw(st.booleans())
        position = draw(st.integers(0, len(leaf.words)))
        leaf.words.insert(position, f"{_MARK}{index}{'a' if href else 't'}{_MARK}")


def render(tree: Tree, links: list[str]) -> bytes:
    """The message as the stdlib writes it (CRLF line ends), links in place of the markers."""
    message = _render(tree.root, links, iter(range(10_000)))
    message["Subject"] = "fuzzed"
    message["From"] = "sender@example.org"
    message["Message-ID"] = "<fuzzed@example.org>"
    return message.as_bytes(policy=policy.SMTP)


def _render(node: Node, links: list[str], numbers: Iterator[int]) -> Message:
    if isinstance(node, bytes):
        blob = MIMEApplication(node)
        blob.add_header("Content-Disposition", "attachment", filename="blob.bin")
        return blob
    if isinstance(node, Leaf):
        return _render_leaf(node, links)
    kind, children = node
    if kind != "rfc822":
        return _multipart(kind, children, links, numbers)
    if len(children) == 1:
        inner = _render(children[0], links, numbers)
    else:
        inner = _multipart("mixed", children, links, numbers)
    inner["Subject"] = "forwarded"
    return MIMEMessage(inner)


def _multipart(
    kind: str, children: list[Node], links: list[str], numbers: Iterator[int]
) -> Message:
    # A colon never occurs in filler or in encoded bodies, so no body line is a delimiter.
    container = MIMEMultipart(kind, boundary=f"b:{next(numbers)}:")
    for child in children:
        container.attach(_render(child, links, numbers))
    return container


def _render_leaf(leaf: Leaf, links: list[str]) -> Message:
    is_html = leaf.subtype == "html"
    out: list[str] = []
    for word in leaf.words:
        if not word.startswith(_MARK):
            out.append(html.escape(word) if is_html else word)
            continue
        url = links[int(word.strip(_MARK)[:-1])]
        if word.strip(_MARK).endswith("a"):
            out.append(f'<a href="{html.escape(url)}">download</a>')
        else:
            out.append(html.escape(url) if is_html else url)
    body = " ".join(out)
    if is_html:
        body = f"<html><body><p>{body}</p></body></html>"
    charset = Charset(leaf.charset)
    charset.body_encoding = leaf.encoding
    part = MIMEText(body, leaf.subtype, charset)
    if leaf.attachment:
        part.add_header("Content-Disposition", "attachment", filename=f"notes.{leaf.subtype}")
    return part
