"""The Dropbox resolver against the Dropbox stand-in, through the Worker."""

from __future__ import annotations

import zipfile
from io import BytesIO

from tests.fixtures.miniflare import R2Worker
from tests.fixtures.providers import (
    DROPBOX_FOLDER,
    DROPBOX_FOLDER_LINK,
    THREE_FILES,
    ProviderStandIns,
)
from tests.r2_worker.shares import assert_files_landed


def test_a_folder_link_becomes_one_zip_object(
    provider_worker: R2Worker, provider_stand_ins: ProviderStandIns
) -> None:
    response = provider_worker.transfer(DROPBOX_FOLDER_LINK, provider="dropbox", email_id="db-1")

    assert response.status_code == 200, response.text
    body = response.json()
    (only,) = body["files"]
    assert (only["filename"], only["content_type"]) == ("Site photos.zip", "application/zip")
    assert body["key"] == only["key"]
    stored = provider_worker.get_object(only["key"])
    assert stored == provider_stand_ins.dropbox_zip
    assert zipfile.ZipFile(BytesIO(stored)).namelist() == [f.name for f in DROPBOX_FOLDER]


def test_the_folder_is_asked_for_with_dl_1_and_its_other_parameters_kept(
    provider_worker: R2Worker, provider_stand_ins: ProviderStandIns
) -> None:
    before = len(provider_stand_ins.calls("GET", "/scl/fo/abc123def/"))

    provider_worker.transfer(DROPBOX_FOLDER_LINK, provider="dropbox", email_id="db-2")

    (asked,) = provider_stand_ins.calls("GET", "/scl/fo/abc123def/")[before:]
    assert asked.path == "/scl/fo/abc123def/AAB-folder-key?rlkey=k3y&st=x1&dl=1"


def test_a_file_link_with_dl_0_is_asked_for_with_dl_1_and_its_file_lands(
    provider_worker: R2Worker, provider_stand_ins: ProviderStandIns
) -> None:
    link = "https://www.dropbox.com/scl/fi/xyz789/brief.pdf?rlkey=k&dl=0"
    before = len(provider_stand_ins.calls("GET", "/scl/fi/xyz789/"))

    response = provider_worker.transfer(link, provider="dropbox", email_id="db-3")

    (asked,) = provider_stand_ins.calls("GET", "/scl/fi/xyz789/")[before:]
    assert asked.path == "/scl/fi/xyz789/brief.pdf?rlkey=k&dl=1"
    assert_files_landed(provider_worker, response.json(), THREE_FILES[:1])
