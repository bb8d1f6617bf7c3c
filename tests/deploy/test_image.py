"""`make image`: what goes into the images, what stays out, and when they are built again."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from types import ModuleType

import pytest

from tests.deploy.conftest import ProjectImages
from tests.deploy.podman import Podman
from tests.support.components import ROOT

# The session fixture that builds the images may run in any test here.
pytestmark = pytest.mark.timeout(1200)
# The images measure about 190 MB on the Debian base; a compiler or a second Python would not fit.
SIZE_BUDGET_MB = 250
# Anything here in an image means a build tool, a cache or the test suite got into it.
FORBIDDEN = (
    "command -v gcc cc c++ make pip pip3",
    "ls -d /root/.cache /src /opt/venv/bin/pip /opt/venv/lib/python3*/site-packages/tests",
    "find / -xdev -name conftest.py",
)


@pytest.mark.parametrize("which", ["sidecar", "demo_app"])
def test_the_image_runs_as_the_non_root_user(
    podman: Podman, project_images: ProjectImages, which: str
) -> None:
    image = getattr(project_images, which)
    assert podman.run("image", "inspect", "--format", "{{.Config.User}}", image).stdout.strip() == (
        "10001:10001"
    )
    result = podman.run("run", "--rm", "--entrypoint", "id", image, "-u")
    assert result.stdout.strip() == "10001"


@pytest.mark.parametrize("probe", FORBIDDEN)
def test_the_sidecar_image_holds_no_compiler_pip_cache_or_tests(
    podman: Podman, project_images: ProjectImages, probe: str
) -> None:
    result = podman.run(
        "run", "--rm", "--entrypoint", "sh", project_images.sidecar, "-c", f"{probe} 2>/dev/null",
        check=False,
    )  # fmt: skip
    assert result.stdout.strip() == "", result.stdout


def test_the_sidecar_image_stays_within_its_size_budget(
    podman: Podman, project_images: ProjectImages
) -> None:
    size = int(
        podman.run("image", "inspect", "--format", "{{.Size}}", project_images.sidecar).stdout
    )
    assert size / 1e6 < SIZE_BUDGET_MB


def test_make_image_finds_the_built_images_and_prints_their_size(
    project_images: ProjectImages,
    image_script: ModuleType,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONTAINER_ENGINE", "podman")
    assert image_script.main([]) == 0
    out = capsys.readouterr().out
    for ref in (project_images.sidecar, project_images.demo_app):
        assert re.search(rf"^{re.escape(ref)}  \d+ MB  \(unchanged", out, re.MULTILINE), out


def test_every_file_the_dockerfile_copies_is_an_input_of_the_content_tag(
    image_script: ModuleType,
) -> None:
    sources = re.findall(r"^COPY (?!--from)(?:--\S+ )*(.+) \S+$", (ROOT / "Dockerfile").read_text(),
                         re.MULTILINE)  # fmt: skip
    copied = {path for line in sources for path in line.split()}
    assert copied
    for path in copied:
        assert any(path == i or path.startswith(f"{i}/") for i in image_script.INPUTS), path


def _build(image_script: ModuleType, context: Path) -> object:
    return image_script.Build(
        repository="localhost/x", containerfile=context / "Dockerfile", context=context,
        inputs=(context / "Dockerfile", context / "agent"),
    )  # fmt: skip


def test_the_content_tag_changes_with_any_input_byte(
    image_script: ModuleType, tmp_path: Path
) -> None:
    (tmp_path / "agent").mkdir()
    (tmp_path / "Dockerfile").write_text("FROM base\n")
    (tmp_path / "agent" / "cli.py").write_text("a = 1\n")
    build = _build(image_script, tmp_path)
    before = build.digest("sha256:base")  # type: ignore[attr-defined]
    (tmp_path / "agent" / "cli.py").write_text("a = 2\n")
    assert build.digest("sha256:base") != before  # type: ignore[attr-defined]


def test_the_content_tag_changes_with_the_base_and_ignores_bytecode(
    image_script: ModuleType, tmp_path: Path
) -> None:
    (tmp_path / "agent" / "__pycache__").mkdir(parents=True)
    (tmp_path / "Dockerfile").write_text("FROM base\n")
    build = _build(image_script, tmp_path)
    before = build.digest("sha256:base")  # type: ignore[attr-defined]
    (tmp_path / "agent" / "__pycache__" / "cli.cpython-311.pyc").write_bytes(b"\0")
    assert build.digest("sha256:base") == before  # type: ignore[attr-defined]
    assert build.digest("sha256:other") != before  # type: ignore[attr-defined]


def test_the_debian_base_is_cached_under_a_name_that_changes_with_its_packages(
    image_script: ModuleType,
) -> None:
    base = image_script.DebianBase()
    more = image_script.DebianBase(packages=(*base.packages, "curl"))
    assert base.tarball.parent == image_script.CACHE_DIR
    assert base.tarball != more.tarball
    assert base.ref != more.ref


def test_mmdebstrap_is_named_when_it_is_missing(
    image_script: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(image_script, "CACHE_DIR", tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert shutil.which("mmdebstrap") is None
    with pytest.raises(image_script.ImageError, match="mmdebstrap is not installed"):
        image_script.DebianBase().bootstrap(image_script.Log(quiet=True))
