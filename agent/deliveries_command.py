"""`signal-sidecar deliveries`: the delivery log searched from a shell, for scripts and hosts."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from agent.config import Settings
from agent.delivery_search import entry, parse_query
from agent.telemetry.masking import Masker

FILTERS = ("mailbox", "outcome", "status", "since", "until", "q", "limit")
# Table columns and their widths: what reads at a glance; everything else is in --json.
_COLUMNS = (
    ("RECORDED", 20),
    ("OUTCOME", 13),
    ("SENDER", 30),
    ("SUBJECT", 36),
    ("LINKS", 26),
    ("LAG", 8),
    ("EMAIL ID", 32),
)


async def deliveries_command(settings: Settings, args: argparse.Namespace) -> int:
    """Prints up to --pages pages of the search, newest first, as a table or JSON lines."""
    from agent.store.base import StoreError
    from agent.store.factory import open_store

    given = {name: str(value) for name in FILTERS if (value := getattr(args, name)) is not None}
    try:
        query = parse_query(given)
    except ValueError as exc:
        print(f"signal-sidecar deliveries: --{exc}", file=sys.stderr)
        return 2
    masker = Masker(settings.secrets())
    jaeger = settings.dashboard.jaeger_ui_url
    store = open_store(settings, tool=True)
    printed = 0
    try:
        await store.start()
        for _ in range(args.pages):
            page = await store.search_deliveries(query)
            for record in page.records:
                shown = entry(record, masker, jaeger)
                if args.json:
                    print(json.dumps(shown, ensure_ascii=False))
                else:
                    if not printed:
                        print(_line([title for title, _ in _COLUMNS]))
                    print(_row(shown))
                printed += 1
            if page.next_cursor is None:
                break
            query = dataclasses.replace(query, cursor=page.next_cursor)
    except StoreError as exc:
        print(f"signal-sidecar: the state store is unavailable: {exc}", file=sys.stderr)
        return 1
    finally:
        await store.close()
    if not printed and not args.json:
        print("no deliveries match")
    return 0


def _row(shown: dict[str, Any]) -> str:
    links = shown["links"]
    summary = ", ".join(f"{link['provider']} {link['status']}" for link in links) or "no links"
    lag = shown["lag_seconds"]
    return _line(
        [
            str(shown["recorded_at"])[:19].replace("T", " ") + "Z",
            shown["outcome"],
            shown["sender"],
            shown["subject"],
            summary,
            "" if lag is None else _duration(lag),
            shown["email_id"],
        ]
    )


def _line(cells: list[str]) -> str:
    out = []
    for cell, (_, width) in zip(cells, _COLUMNS, strict=True):
        text = " ".join(cell.split())  # a header's newlines and tabs never break the table
        out.append(text[: width - 1] + "…" if len(text) > width else text.ljust(width))
    return "  ".join(out).rstrip()


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"
