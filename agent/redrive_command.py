"""`signal-sidecar redrive`: lists dead letters, or asks for one re-drive and waits for it."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

from agent.config import Settings
from agent.telemetry.masking import Masker


async def redrive_command(settings: Settings, args: argparse.Namespace) -> int:
    """Lists dead letters (--list), or requests one re-drive and waits up to --wait seconds."""
    from agent.pipeline.redrive import AWAITING, request_redrive, wait_for_outcome
    from agent.store.base import StoreError
    from agent.store.factory import open_store

    masker = Masker(settings.secrets())
    store = open_store(settings, tool=True)
    try:
        await store.start()
        if args.list:
            statuses = () if args.all else AWAITING
            letters = await store.dead_letters(
                mailbox=args.mailbox, statuses=statuses, limit=max(1, args.limit)
            )
            for letter in letters:
                row = dataclasses.asdict(letter)
                if args.json:
                    print(masker.mask(json.dumps(row)))
                    continue
                at = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(letter.at))
                why = f"{letter.error_type}: {letter.reason}" + (
                    f" ({letter.note})" if letter.note else ""
                )
                print(
                    masker.mask(
                        f"{letter.email_id}  {letter.mailbox}  UID {letter.uid}  {at}  "
                        f"{letter.status}  re-driven {letter.redrives}x  {why}"
                    )
                )
            if not letters and not args.json:
                print("no dead letters" if args.all else "no dead letters waiting for a re-drive")
            return 0
        # Without mailboxes in this configuration (a tooling host), nothing can be judged.
        mailboxes = [box.name for box in settings.mailboxes] or None
        request = await request_redrive(store, args.email_id, mailboxes=mailboxes)
        print(masker.mask(f"{args.email_id}: {request.describe()}"))
        if not request.accepted:
            return 0 if request.answer == "already_delivered" else 1
        if args.wait <= 0:
            return 0
        settled = await wait_for_outcome(store, args.email_id, seconds=args.wait)
        if settled is not None and settled.status == "delivered":
            print(f"{args.email_id}: delivered")
            return 0
        if settled is None or settled.status == "redrive_requested":
            print(
                f"{args.email_id}: still pending after {args.wait:g}s; it is delivered at the "
                "next cycle of whichever replica polls the mailbox"
            )
            return 1
        print(masker.mask(f"{args.email_id}: {settled.status}: {settled.note or settled.reason}"))
        return 1
    except StoreError as exc:
        print(f"signal-sidecar: the state store is unavailable: {exc}", file=sys.stderr)
        return 1
    finally:
        await store.close()
