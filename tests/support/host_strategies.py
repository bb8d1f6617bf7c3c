"""Hypothesis strategies for hosts: addresses in every spelling a URL parser reads, and names."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from hypothesis import strategies as st

from tests.support.hosts import Address, reference_public

RESERVED_SUFFIXES = (
    "localhost", "test", "invalid", "example", "local", "onion", "home.arpa", "alt", "internal",
    "intranet", "private", "corp", "home", "lan",
)  # fmt: skip
_PUBLIC_SUFFIXES = ("com", "net", "org", "de", "ch", "io", "co.uk")
# The IANA special-purpose registries, the blocks Python's ipaddress reserves, and the ranges the
# host rule adds: an address rule goes wrong at the edges of these, so their edges are drawn.
_SPECIAL_NETWORKS = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.0.0/29", "192.0.0.8/32", "192.0.0.9/32", "192.0.0.10/32",
    "192.0.0.170/31", "192.0.2.0/24", "192.31.196.0/24", "192.52.193.0/24", "192.88.99.0/24",
    "192.168.0.0/16", "192.175.48.0/24", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24",
    "224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32",
    "::/128", "::1/128", "::/96", "::ffff:0:0/96", "::ffff:0:0:0/96", "64:ff9b::/96",
    "64:ff9b:1::/48", "100::/64", "2001::/23", "2001::/32", "2001:1::1/128", "2001:1::2/128",
    "2001:2::/48", "2001:3::/32", "2001:4:112::/48", "2001:10::/28", "2001:20::/28",
    "2001:30::/28", "2001:db8::/32", "2002::/16", "2620:4f:8000::/48", "3fff::/20", "5f00::/16",
    "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8", "2000::/3", "::/8", "100::/8", "fe00::/9",
)  # fmt: skip


def _edges(network: str) -> list[Address]:
    block = ipaddress.ip_network(network)
    top = (1 << block.max_prefixlen) - 1
    values = {int(block.network_address), int(block.broadcast_address)}
    values |= {
        value + step for value in list(values) for step in (-1, 1) if 0 <= value + step <= top
    }
    return [ipaddress.ip_address(value) if block.version == 4 else ipaddress.IPv6Address(value)
            for value in sorted(values)]  # fmt: skip


EDGE_ADDRESSES: tuple[Address, ...] = tuple(
    dict.fromkeys(address for network in _SPECIAL_NETWORKS for address in _edges(network))
)


@dataclass(frozen=True)
class SpelledHost:
    """A host as written in a URL, and whether a fetch may go to it."""

    text: str
    public: bool


def _ipv4_spellings(address: ipaddress.IPv4Address) -> st.SearchStrategy[str]:
    """127.0.0.1 as 2130706433, 0x7f000001, 0177.0.0.1, 127.1, 0x7f.0.1 and the like."""

    @st.composite
    def spell(draw: st.DrawFn) -> str:
        value = int(address)
        count = draw(st.integers(1, 4))
        octets = [(value >> (8 * (3 - i))) & 0xFF for i in range(count - 1)]
        last = value & ((1 << (8 * (5 - count))) - 1)
        parts = []
        for number in [*octets, last]:
            base = draw(st.sampled_from(["dec", "dec", "oct", "hex", "HEX"]))
            if base == "oct":
                parts.append("0" + format(number, "o"))
            elif base == "dec":
                parts.append(str(number))
            else:
                digits = format(number, "x")
                parts.append("0x" + (digits.upper() if base == "HEX" else digits))
        return ".".join(parts)

    return spell()


def _ipv6_spellings(address: ipaddress.IPv6Address) -> st.SearchStrategy[str]:
    """Compressed, exploded, upper case, or with the last 32 bits as a dotted quad."""
    tail = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    head = address.exploded.rsplit(":", 2)[0]
    return st.sampled_from(
        [address.compressed, address.exploded, address.compressed.upper(), f"{head}:{tail}"]
    ).map(lambda text: f"[{text}]")


@st.composite
def address_hosts(draw: st.DrawFn) -> SpelledHost:
    """Any address (the special-purpose ranges drawn often), spelled as a URL may spell it."""
    address: Address = draw(st.one_of(st.ip_addresses(), st.sampled_from(EDGE_ADDRESSES)))
    if isinstance(address, ipaddress.IPv4Address):
        text = draw(_ipv4_spellings(address))
        text += draw(st.sampled_from(["", "", "."]))
    else:
        text = draw(_ipv6_spellings(address))
    return SpelledHost(text, reference_public(address))


_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,14}[a-z0-9])?", fullmatch=True).filter(
    lambda label: label[2:4] != "--" and not label.isdigit()
)


@st.composite
def _disguised(draw: st.DrawFn, name: str) -> str:
    """The name in upper case, with a trailing dot, a percent-escape or a full-width letter."""
    chars = list(name)
    for index, char in enumerate(chars):
        if char.isalpha():
            how = draw(st.sampled_from(["", "", "", "upper", "percent", "fullwidth"]))
            if how == "upper":
                chars[index] = char.upper()
            elif how == "percent":
                chars[index] = f"%{ord(char):02X}"
            elif how == "fullwidth":
                chars[index] = chr(ord(char) - 0x61 + 0xFF41)
    return "".join(chars) + draw(st.sampled_from(["", "."]))


@st.composite
def name_hosts(draw: st.DrawFn) -> SpelledHost:
    """Names under a reserved suffix, single labels, and names under public suffixes, disguised."""
    labels = draw(st.lists(_LABEL, min_size=1, max_size=3))
    kind = draw(st.sampled_from(["reserved", "single", "public"]))
    if kind == "reserved":
        name, public = ".".join([*labels, draw(st.sampled_from(RESERVED_SUFFIXES))]), False
    elif kind == "single":
        name, public = labels[0], False
    else:
        name, public = ".".join([*labels, draw(st.sampled_from(_PUBLIC_SUFFIXES))]), True
    return SpelledHost(draw(_disguised(name)), public)


hosts = st.one_of(address_hosts(), name_hosts())
