"""The shared host cases (tests/cases/reserved_hosts.json) and the reference verdict."""

from __future__ import annotations

import functools
import ipaddress
import json
from dataclasses import dataclass

from tests.support.components import ROOT

CASES_FILE = ROOT / "tests" / "cases" / "reserved_hosts.json"
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class HostCase:
    """A source URL and whether a fetch may go to its host."""

    url: str
    public: bool


@functools.cache
def _data() -> dict[str, object]:
    data: dict[str, object] = json.loads(CASES_FILE.read_text(encoding="utf-8"))
    return data


@functools.cache
def _beyond_ipaddress() -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    networks = _data()["not_public_beyond_ipaddress"]
    assert isinstance(networks, dict)
    return tuple(ipaddress.ip_network(network) for network in networks)


def reference_public(address: Address) -> bool:
    """Python's ipaddress says it is a global unicast address, outside the listed extra ranges."""
    special = (
        not address.is_global
        or address.is_private
        or address.is_reserved
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_unspecified
        or (isinstance(address, ipaddress.IPv6Address) and address.is_site_local)
    )
    return not special and not any(
        network.version == address.version and address in network for network in _beyond_ipaddress()
    )


def host_cases() -> list[HostCase]:
    """Every case: names with their written verdict, addresses with the reference verdict."""
    names = _data()["names"]
    addresses = _data()["addresses"]
    assert isinstance(names, list)
    assert isinstance(addresses, list)
    cases = [HostCase(case["url"], bool(case["public"])) for case in names]
    cases += [
        HostCase(case["url"], reference_public(ipaddress.ip_address(case["address"])))
        for case in addresses
    ]
    return cases
