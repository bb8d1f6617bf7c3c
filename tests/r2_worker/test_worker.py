"""The R2 fetch Worker under Miniflare, driven over HTTP as the sidecar drives it (DESIGN.md §7)."""

from __future__ import annotations

import json
import re
import urllib.request
from datetime import UTC, datetime

import pytest
import requests

from tests.fixtures.fileserver import NAMED_FILENAME, FileServer, sha256_of
from tests.fixtures.miniflare import R2Worker, R2WorkerFactory
from tests.support.net import free_port

KB = 1024
MB = 1024 * 1024


def _assert_failure(response: requests.Response, status: int, retryable: bool) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False
    assert body["retryable"] is retryable
    assert body["error"]


def test_health_answers_ok_without_a_token(r2_worker: R2Worker) -> None:
    response = requests.get(r2_worker.url + "/health", timeout=10)

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.parametrize("size", [1 * KB, 5 * MB, 50 * MB], ids=["1KB", "5MB", "50MB"])
def test_file_is_copied_byte_for_byte(
    r2_worker: R2Worker, file_server: FileServer, size: int
) -> None:
    response = r2_worker.transfer(file_server.url(f"/bytes/{size}"), email_id=f"bytes-{size}")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    assert body["size"] == size
    assert r2_worker.object_sha256(body["key"]) == sha256_of(size)


@pytest.mark.parametrize("size", [100 * KB, 20 * MB], ids=["one-part", "multipart"])
def test_chunked_source_without_length_is_copied_byte_for_byte(
    r2_worker: R2Worker, file_server: FileServer, size: int
) -> None:
    response = r2_worker.transfer(file_server.url(f"/chunked/{size}"), email_id=f"chunked-{size}")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["size"] == size
    assert r2_worker.object_sha256(body["key"]) == sha256_of(size)


def test_content_type_and_content_disposition_filename_are_kept(
    r2_worker: R2Worker, file_server: FileServer
) -> None:
    body = r2_worker.transfer(file_server.url("/named/2048"), email_id="named").json()

    assert body["content_type"] == "application/pdf"
    assert body["original_filename"] == NAMED_FILENAME
    stored = r2_worker.fetch_object(body["key"])
    assert stored.headers["Content-Type"] == "application/pdf"
    assert "report%202026.pdf" in stored.headers["Content-Disposition"]


def test_key_is_utc_date_then_email_id_then_link_folder_then_filename(
    r2_worker: R2Worker, file_server: FileServer
) -> None:
    before = datetime.now(UTC).strftime("%Y/%m/%d")
    body = r2_worker.transfer(
        file_server.url("/bytes/10"), email_id="msg-42", filename="invoice.pdf"
    ).json()
    after = datetime.now(UTC).strftime("%Y/%m/%d")

    prefix, folder, name = body["key"].rsplit("/", 2)
    assert prefix in {f"{before}/msg-42", f"{after}/msg-42"}
    assert re.fullmatch(r"generic-[0-9a-f]{10}", folder), folder
    assert name == "invoice.pdf"
    assert body["r2_url"].endswith(f"/msg-42/{folder}/invoice.pdf")


def test_the_same_link_keeps_its_folder_and_another_link_gets_its_own(
    r2_worker: R2Worker, file_server: FileServer
) -> None:
    first = r2_worker.transfer(file_server.url("/bytes/11"), email_id="folders").json()["key"]
    again = r2_worker.transfer(file_server.url("/bytes/11"), email_id="folders").json()["key"]
    other = r2_worker.transfer(file_server.url("/hops/0/11"), email_id="folders").json()["key"]

    assert again == first
    assert other.rsplit("/", 2)[1] != first.rsplit("/", 2)[1]
    assert other.rsplit("/", 1)[1] == first.rsplit("/", 1)[1] == "11"


def test_path_traversal_in_filename_and_email_id_is_sanitised(
    r2_worker: R2Worker, file_server: FileServer
) -> None:
    body = r2_worker.transfer(
        file_server.url("/bytes/10"), email_id="../../x/<id>", filename="../../etc/passwd"
    ).json()

    key = body["key"]
    assert ".." not in key
    assert re.fullmatch(r"\d{4}/\d{2}/\d{2}/[A-Za-z0-9._-]+/generic-[0-9a-f]{10}/passwd", key), key
    assert r2_worker.object_sha256(key) == sha256_of(10)


def test_filename_falls_back_to_the_url_path(r2_worker: R2Worker, file_server: FileServer) -> None:
    body = r2_worker.transfer(file_server.url("/bytes/77"), email_id="fallback").json()

    assert body["original_filename"] == "77"
    assert re.search(r"/fallback/generic-[0-9a-f]{10}/77$", body["key"]), body["key"]


@pytest.mark.parametrize("token", [None, "wrong-token"], ids=["missing", "wrong"])
def test_bad_token_is_401_and_not_retryable(
    r2_worker: R2Worker, file_server: FileServer, token: str | None
) -> None:
    headers = {} if token is None else {"X-R2-FETCH-TOKEN": token}
    job = {"source_url": file_server.url("/bytes/10"), "provider": "generic", "email_id": "auth"}

    response = requests.post(r2_worker.url + "/", json=job, headers=headers, timeout=10)

    _assert_failure(response, 401, retryable=False)


def test_object_read_needs_the_token(r2_worker: R2Worker, file_server: FileServer) -> None:
    key = r2_worker.transfer(file_server.url("/bytes/10"), email_id="read-auth").json()["key"]

    response = requests.get(f"{r2_worker.url}/object/{key}", timeout=10)

    assert response.status_code == 401


def test_missing_object_is_404(r2_worker: R2Worker) -> None:
    response = r2_worker.fetch_object("2020/01/01/nobody/nothing.bin")

    assert response.status_code == 404


def test_token_never_appears_in_logs(r2_worker: R2Worker, file_server: FileServer) -> None:
    requests.post(r2_worker.url + "/", json={}, headers={"X-R2-FETCH-TOKEN": "wrong-x"}, timeout=10)
    r2_worker.transfer(file_server.url("/bytes/10"), email_id="log-token")

    log = r2_worker.wait_for_log('"email_id":"log-token"')
    assert '"email_id":"log-token"' in log
    assert r2_worker.token not in log


def test_source_query_values_are_masked_in_logs(
    r2_worker: R2Worker, file_server: FileServer
) -> None:
    r2_worker.transfer(file_server.url("/bytes/10?sig=S3CR3T-SIG&dl=1"), email_id="mask")

    log = r2_worker.wait_for_log('"email_id":"mask"')
    assert "S3CR3T-SIG" not in log
    assert "sig=***&dl=***" in log


def test_a_client_deadline_stops_the_copy_with_a_retryable_504(
    r2_worker: R2Worker, file_server: FileServer
) -> None:
    job = {
        "source_url": file_server.url("/slow/2/100"),
        "provider": "generic",
        "email_id": "deadline-1",
        "deadline_ms": 500,
    }
    response = requests.post(
        r2_worker.url + "/", json=job, headers={"X-R2-FETCH-TOKEN": r2_worker.token}, timeout=30
    )
    assert response.status_code == 504
    body = response.json()
    assert body["retryable"] is True
    assert "client's deadline of 500 ms" in body["error"]


@pytest.mark.parametrize("deadline", [0, -1, 1.5, "soon", 86_400_001])
def test_a_malformed_deadline_is_a_bad_request(
    r2_worker: R2Worker, file_server: FileServer, deadline: object
) -> None:
    job = {
        "source_url": file_server.url("/bytes/10"),
        "provider": "generic",
        "email_id": "deadline-2",
        "deadline_ms": deadline,
    }
    response = requests.post(
        r2_worker.url + "/", json=job, headers={"X-R2-FETCH-TOKEN": r2_worker.token}, timeout=30
    )
    assert response.status_code == 400
    assert "deadline_ms" in response.json()["error"]


def test_traceparent_is_logged(r2_worker: R2Worker, file_server: FileServer) -> None:
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    # urllib, not requests: once the R2 client ran in this process, the requests
    # instrumentation replaces a caller's traceparent with the current span's.
    job = {"source_url": file_server.url("/bytes/10"), "provider": "generic", "email_id": "trace"}
    request = urllib.request.Request(
        r2_worker.url + "/",
        data=json.dumps(job).encode(),
        headers={
            "Content-Type": "application/json",
            "X-R2-FETCH-TOKEN": r2_worker.token,
            "traceparent": traceparent,
        },
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200

    logged = r2_worker.wait_for_records(lambda r: r.get("traceparent") == traceparent)
    assert logged
    assert logged[0]["outcome"] == "success"
    assert isinstance(logged[0]["duration_ms"], int)


@pytest.mark.parametrize(
    "source_url",
    [
        "https://169.254.169.254/latest/meta-data/",
        "http://169.254.169.254/latest/meta-data/",
        "https://127.0.0.1/",
        "https://2130706433/",
        "https://10.1.2.3/",
        "https://100.64.0.1/",
        "https://0.0.0.0/",
        "https://[::1]/",
        "https://[::ffff:127.0.0.1]/",
        "https://[fe80::1]/",
        "https://[fd00::1]/",
        "https://localhost/",
        "http://example.com/file.bin",
        "https://user:pass@example.com/file.bin",
        "file:///etc/passwd",
        "ftp://example.com/file.bin",
    ],
)
def test_unsafe_source_url_is_refused_with_403(r2_worker: R2Worker, source_url: str) -> None:
    response = r2_worker.transfer(source_url, email_id="ssrf")

    _assert_failure(response, 403, retryable=False)


def test_loopback_port_not_listed_is_refused(r2_worker: R2Worker) -> None:
    response = r2_worker.transfer(f"http://127.0.0.1:{free_port()}/bytes/10", email_id="ssrf")

    _assert_failure(response, 403, retryable=False)


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/",
        "https://10.0.0.1/x",
        "https://metadata.google.internal./computeMetadata/v1/",
        "https://localhost./x",
        "https://[2002:7f00:1::]/x",
    ],
)
def test_redirect_from_allowed_origin_to_private_address_is_refused(
    r2_worker: R2Worker, file_server: FileServer, target: str
) -> None:
    source = file_server.url(f"/redirect?to={requests.utils.quote(target, safe='')}")

    response = r2_worker.transfer(source, email_id="ssrf-redirect")

    _assert_failure(response, 403, retryable=False)


def test_redirect_to_unlisted_loopback_port_is_refused(
    r2_worker: R2Worker, file_server: FileServer
) -> None:
    target = f"http://127.0.0.1:{free_port()}/bytes/10"
    source = file_server.url(f"/redirect?to={requests.utils.quote(target, safe='')}")

    response = r2_worker.transfer(source, email_id="ssrf-redirect")

    _assert_failure(response, 403, retryable=False)


def test_five_redirects_are_followed(r2_worker: R2Worker, file_server: FileServer) -> None:
    response = r2_worker.transfer(file_server.url("/hops/5/1000"), email_id="hops")

    assert response.status_code == 200, response.text
    assert r2_worker.object_sha256(response.json()["key"]) == sha256_of(1000)


def test_more_than_five_redirects_fail_without_retry(
    r2_worker: R2Worker, file_server: FileServer
) -> None:
    response = r2_worker.transfer(file_server.url("/hops/6/1000"), email_id="hops")

    _assert_failure(response, 502, retryable=False)


def test_source_404_is_not_retryable(r2_worker: R2Worker, file_server: FileServer) -> None:
    response = r2_worker.transfer(file_server.url("/status/404"), email_id="s404")

    _assert_failure(response, 502, retryable=False)


def test_source_503_is_retryable(r2_worker: R2Worker, file_server: FileServer) -> None:
    response = r2_worker.transfer(file_server.url("/status/503"), email_id="s503")

    _assert_failure(response, 502, retryable=True)


def test_invalid_json_is_400(r2_worker: R2Worker) -> None:
    response = requests.post(
        r2_worker.url + "/",
        data="{not json",
        headers={"X-R2-FETCH-TOKEN": r2_worker.token, "Content-Type": "application/json"},
        timeout=10,
    )

    _assert_failure(response, 400, retryable=False)


def test_missing_email_id_is_400(r2_worker: R2Worker, file_server: FileServer) -> None:
    response = requests.post(
        r2_worker.url + "/",
        json={"source_url": file_server.url("/bytes/10"), "provider": "generic"},
        headers={"X-R2-FETCH-TOKEN": r2_worker.token},
        timeout=10,
    )

    _assert_failure(response, 400, retryable=False)


def test_unreachable_listed_source_is_retryable(r2_worker_factory: R2WorkerFactory) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    worker = r2_worker_factory(allowed_hosts=closed)

    response = worker.transfer(f"{closed}/bytes/10", email_id="closed")

    _assert_failure(response, 502, retryable=True)


def test_source_slower_than_the_timeout_is_504_and_retryable(
    r2_worker_factory: R2WorkerFactory, file_server: FileServer
) -> None:
    worker = r2_worker_factory(UPSTREAM_TIMEOUT_MS="1000")

    response = worker.transfer(file_server.url("/slow/3/10"), email_id="slow")

    _assert_failure(response, 504, retryable=True)


def test_declared_length_above_max_bytes_is_413_and_stores_nothing(
    r2_worker_factory: R2WorkerFactory, file_server: FileServer
) -> None:
    worker = r2_worker_factory(max_bytes=1 * MB)

    response = worker.transfer(file_server.url(f"/bytes/{2 * MB}"), email_id="cap")

    _assert_failure(response, 413, retryable=False)
    assert worker.list_objects() == []


@pytest.mark.parametrize("size", [2 * MB, 30 * MB], ids=["one-part", "multipart"])
def test_chunked_body_above_max_bytes_is_aborted_and_stores_nothing(
    r2_worker_factory: R2WorkerFactory, file_server: FileServer, size: int
) -> None:
    worker = r2_worker_factory(max_bytes=size // 2)

    response = worker.transfer(file_server.url(f"/chunked/{size}"), email_id="cap")

    _assert_failure(response, 413, retryable=False)
    assert worker.list_objects() == []


def test_list_objects_sees_a_stored_object(
    r2_worker_factory: R2WorkerFactory, file_server: FileServer
) -> None:
    """Guards the emptiness checks above: the listing does see what the Worker stores."""
    worker = r2_worker_factory()

    key = worker.transfer(file_server.url("/bytes/10"), email_id="listed").json()["key"]

    assert worker.list_objects() == [key]
