"""What the Worker tests assert about a transfer answer and the bucket behind it."""

from __future__ import annotations

from typing import Any

import requests

from tests.fixtures.miniflare import R2Worker
from tests.fixtures.providers import StandInFile


def stored_under(worker: R2Worker, email_id: str) -> list[str]:
    """The bucket's keys of one mail (every test uses its own email_id)."""
    return sorted(key for key in worker.list_objects() if f"/{email_id}/" in key)


def assert_files_landed(
    worker: R2Worker, body: dict[str, Any], files: tuple[StandInFile, ...]
) -> None:
    """Each listed file is in the bucket byte for byte, in order, under one link folder."""
    assert body["success"] is True, body
    listed = body["files"]
    assert [(f["filename"], f["size"]) for f in listed] == [(f.name, f.size) for f in files]
    assert body["size"] == sum(f.size for f in files)
    assert len({f["key"].rsplit("/", 1)[0] for f in listed}) == 1
    for entry, file in zip(listed, files, strict=True):
        assert entry["content_type"] == file.content_type
        assert entry["r2_url"] == f"{worker.url}/object/{entry['key']}"
        assert worker.object_sha256(entry["key"]) == file.sha256, entry["key"]


def assert_failure(response: requests.Response, status: int, outcome: str, retryable: bool) -> str:
    """The answer is a failure with this status and outcome; returns its error text."""
    assert response.status_code == status, response.text
    body = response.json()
    assert (body["success"], body["outcome"], body["retryable"]) == (False, outcome, retryable)
    assert body["error"]
    return str(body["error"])
