"""The running sidecar's shutdown, as a real process: in-flight webhooks are not cut off."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from tests.fixtures.dovecot import Dovecot
from tests.fixtures.receiver import Receiver
from tests.pipeline.hostile import make_message
from tests.support.sidecar import SidecarProcess

Start = Callable[..., SidecarProcess]

_CONFIG = """\
[server]
drain_timeout = "500ms"
[imap]
timeout = "3s"
lease_ttl = "10s"
[webhook]
timeout = "6s"
backoff_initial = "50ms"
[health]
interval = "500ms"
"""


def _env(dovecot: Dovecot, receiver: Receiver, data: Path) -> dict[str, str]:
    # Both processes keep their state in one directory, as a container on its volume.
    return {**dovecot.env("alice"), "WEBHOOK_URL": receiver.url + "/hook",
            "OTEL_SDK_DISABLED": "true", "SIDECAR_DATA_DIR": str(data)}  # fmt: skip


async def test_sigterm_waits_for_the_answer_to_a_webhook_in_flight_and_records_it(
    dovecot: Dovecot, receiver: Receiver, sidecar_process: Start, tmp_path: Path
) -> None:
    """The app answers 200 after 2.5 s, past the drain timeout: the clean shutdown still takes
    that answer and records it, so the restarted process does not send the mail again."""
    env = _env(dovecot, receiver, tmp_path / "data")
    first = await asyncio.to_thread(sidecar_process, env=env, config=_CONFIG, name="first")
    receiver.hang = 2.5
    await asyncio.to_thread(dovecot.append, "alice", make_message(message_id="<slow@e2e>"))
    await receiver.wait_for(1, timeout=20)
    took = await asyncio.to_thread(first.terminate, 15.0)
    receiver.hang = 0.0
    second = await asyncio.to_thread(sidecar_process, env=env, config=_CONFIG, name="second")
    # Three poll intervals (0.5 s) after it leads: time enough to send the mail again.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        _, body = await asyncio.to_thread(second.get_json, "/health")
        poller = body["services"]["background_tasks"]["imap_poller"]
        box = poller.get("mailboxes", {}).get("default", {})
        if box.get("last_success"):
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.5)
    keys = [r.headers["Idempotency-Key"] for r in receiver.requests]
    assert len(keys) == 1, f"sent {len(keys)} times: {keys}"
    assert 2.0 < took < 2.5 + 4.5
