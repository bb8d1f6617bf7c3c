"""`make image`: the sidecar and demo-app images from the Dockerfile, built once per content hash.

The engine is Docker where a Docker engine answers and podman otherwise (`CONTAINER_ENGINE`
chooses). The base is the Dockerfile's pinned PYTHON_IMAGE where it can be pulled; where no
registry answers, a Debian bookworm root filesystem is bootstrapped from Debian's packages with
mmdebstrap, cached per machine like the Jaeger binary, and passed as PYTHON_IMAGE
(`IMAGE_BASE=pinned|debian` forces one). An image whose inputs (the files the Dockerfile copies,
the Dockerfile itself and the base image) did not change is not built again.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
CACHE_DIR = Path(
    os.environ.get("SIDECAR_TOOLS_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "signal-sidecar"
)
# What the Dockerfile copies into the images, plus the Dockerfile and .dockerignore themselves.
INPUTS = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "agent", "scripts/demo_app")
CONTENT_LABEL = "io.signal-sidecar.content"
BUILD_TIMEOUT = 1800.0
PULL_TIMEOUT = 300.0
# Content tags kept per repository: a few, so worktrees at different commits do not rebuild in turn.
KEEP_BUILDS = 3


class ImageError(RuntimeError):
    """A build step failed; the message says which and how to fix it."""


@dataclass(frozen=True)
class Engine:
    """The container engine's command line (docker or podman)."""

    command: str

    @property
    def name(self) -> str:
        """docker or podman."""
        return Path(self.command).name

    def run(
        self, *args: str, timeout: float = 120.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Runs one engine command and returns its output; raises ImageError when it fails."""
        try:
            result = subprocess.run(
                [self.command, *args], capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise ImageError(f"{self.name} {args[0]} took longer than {timeout:.0f} s") from exc
        if check and result.returncode != 0:
            raise ImageError(f"{self.name} {' '.join(args[:2])} failed:\n{result.stderr[-4000:]}")
        return result

    def has_image(self, ref: str) -> bool:
        """Whether the engine's storage holds the image."""
        return self.run("image", "inspect", ref, check=False).returncode == 0

    def inspect(self, ref: str, template: str) -> str:
        """One field of `image inspect` (a Go template)."""
        return self.run("image", "inspect", "--format", template, ref).stdout.strip()


def find_engine() -> Engine:
    """CONTAINER_ENGINE if set; else Docker when its daemon answers; else podman."""
    wanted = os.environ.get("CONTAINER_ENGINE", "")
    candidates = [wanted] if wanted else ["docker", "podman"]
    for name in candidates:
        path = shutil.which(name)
        if path is None:
            continue
        probe = subprocess.run(
            [path, "info"], capture_output=True, text=True, timeout=60, check=False
        )
        if probe.returncode == 0:
            return Engine(path)
    raise ImageError(
        f"no container engine answers ({' or '.join(candidates)}): install podman and runc "
        "(`make system`) or start Docker"
    )


@dataclass(frozen=True)
class DebianBase:
    """A Debian root filesystem with Python, made by mmdebstrap from Debian's own packages."""

    suite: str = "bookworm"
    packages: tuple[str, ...] = ("python3", "python3-venv", "ca-certificates")
    sources: tuple[str, ...] = (
        "deb http://deb.debian.org/debian bookworm main",
        "deb http://deb.debian.org/debian bookworm-updates main",
        "deb http://deb.debian.org/debian-security bookworm-security main",
    )
    # Documentation and translations are not needed in a container (as in Debian's slim images).
    excludes: tuple[str, ...] = (
        "path-exclude=/usr/share/man/*",
        "path-exclude=/usr/share/info/*",
        "path-exclude=/usr/share/locale/*",
        "path-exclude=/usr/share/doc/*",
        "path-include=/usr/share/doc/*/copyright",
    )

    def mmdebstrap_args(self, target: Path) -> list[str]:
        """mmdebstrap's command line, writing a tarball to target."""
        args = [
            "--variant=apt",
            f"--include={','.join(self.packages)}",
            # Bookworm is merged-/usr: the hook makes it so without installing usrmerge and perl.
            "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
        ]
        args += [f"--dpkgopt={option}" for option in self.excludes]
        return [*args, self.suite, str(target), *self.sources]

    @property
    def digest(self) -> str:
        """Changes whenever the command line does."""
        spec = "\n".join(self.mmdebstrap_args(Path("base.tar")))
        return hashlib.sha256(spec.encode()).hexdigest()[:16]

    @property
    def ref(self) -> str:
        """The image this base is imported as."""
        return f"localhost/signal-sidecar-base:{self.suite}-{self.digest}"

    @property
    def tarball(self) -> Path:
        """The per-machine cache of the root filesystem."""
        return CACHE_DIR / f"debian-{self.suite}-python-{self.digest}.tar"

    def ensure(self, engine: Engine, log: Log) -> str:
        """The base image in the engine's storage: imported from the cache, or built first."""
        if engine.has_image(self.ref):
            return self.ref
        if not self.tarball.exists():
            self.bootstrap(log)
        with log.step(f"importing {self.tarball.name}"):
            engine.run(
                "import", "--change", 'CMD ["/bin/bash"]', str(self.tarball), self.ref,
                timeout=600,
            )  # fmt: skip
        return self.ref

    def bootstrap(self, log: Log) -> None:
        """Builds the root filesystem tarball into the cache (about 30 s)."""
        mmdebstrap = shutil.which("mmdebstrap")
        if mmdebstrap is None:
            raise ImageError("mmdebstrap is not installed (`make system` installs it)")
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        partial = self.tarball.with_suffix(".partial.tar")
        with log.step(f"bootstrapping Debian {self.suite} with mmdebstrap (once per machine)"):
            result = subprocess.run(
                [mmdebstrap, "--quiet", *self.mmdebstrap_args(partial)],
                capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False,
            )  # fmt: skip
            if result.returncode != 0:
                partial.unlink(missing_ok=True)
                raise ImageError(f"mmdebstrap failed:\n{result.stderr[-4000:]}")
            partial.replace(self.tarball)


@dataclass(frozen=True)
class Build:
    """One image: a target of a Containerfile, tagged by the hash of everything it is made of."""

    repository: str
    containerfile: Path
    context: Path
    inputs: tuple[Path, ...]
    target: str = ""
    build_args: tuple[tuple[str, str], ...] = ()
    tags: tuple[str, ...] = ()
    base_arg: str = "PYTHON_IMAGE"

    def digest(self, base_id: str) -> str:
        """sha256 over the inputs' paths and bytes, the target, the arguments and the base's id."""
        h = hashlib.sha256()
        for key, value in (("target", self.target), ("base", base_id), *self.build_args):
            h.update(f"{key}={value}\n".encode())
        for path in sorted(_files(self.inputs)):
            h.update(str(path.relative_to(self.context)).encode() + b"\0")
            h.update(hashlib.sha256(path.read_bytes()).digest())
        return h.hexdigest()[:16]


@dataclass(frozen=True)
class Built:
    """An image ready in the engine's storage."""

    ref: str
    size_bytes: int
    seconds: float
    cached: bool


@dataclass
class Log:
    """Progress on stderr, timed."""

    quiet: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    def note(self, what: str) -> None:
        """Prints one line."""
        if not self.quiet:
            print(f"image: {what}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def step(self, what: str) -> Iterator[None]:
        """Prints what is done and, afterwards, how long it took."""
        if not self.quiet:
            print(f"image: {what} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        yield
        self.timings[what] = time.monotonic() - started
        if not self.quiet:
            print(f"image: {what}: {self.timings[what]:.1f} s", file=sys.stderr, flush=True)


def _files(inputs: Sequence[Path]) -> Iterator[Path]:
    for path in inputs:
        if path.is_dir():
            for child in path.rglob("*"):
                if child.is_file() and "__pycache__" not in child.parts:
                    yield child
        elif path.is_file():
            yield path


def pinned_base() -> str:
    """The PYTHON_IMAGE default the Dockerfile pins."""
    match = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    if match is None:
        raise ImageError("Dockerfile has no `ARG PYTHON_IMAGE=...` line")
    return match.group(1)


def choose_base(engine: Engine, log: Log) -> str:
    """The pinned python image when it is there or can be pulled, else the Debian base."""
    wanted = os.environ.get("IMAGE_BASE", "")
    if wanted not in {"", "pinned", "debian"}:
        raise ImageError(f"IMAGE_BASE must be `pinned` or `debian`, not {wanted!r}")
    pinned = pinned_base()
    if wanted != "debian":
        if engine.has_image(pinned):
            return pinned
        with log.step(f"pulling {pinned}"):
            pulled = engine.run("pull", pinned, timeout=PULL_TIMEOUT, check=False)
        if pulled.returncode == 0:
            return pinned
        if wanted == "pinned":
            raise ImageError(f"{pinned} cannot be pulled:\n{pulled.stderr[-2000:]}")
        log.note(f"{pinned} cannot be pulled; the base is Debian {DebianBase.suite}, built here")
    return DebianBase().ensure(engine, log)


def ca_bundle() -> Path | None:
    """The CA bundle pip in the build should trust: this machine's (it may re-sign TLS)."""
    for name in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        value = os.environ.get(name)
        if value and Path(value).is_file():
            return Path(value)
    default = Path("/etc/ssl/certs/ca-certificates.crt")
    return default if default.is_file() else None


def ensure_image(engine: Engine, build: Build, base: str, log: Log) -> Built:
    """The image for these inputs: found by its content tag, or built and tagged."""
    base_id = engine.inspect(base, "{{.Id}}")
    ref = f"{build.repository}:src-{build.digest(base_id)}"
    started = time.monotonic()
    cached = engine.has_image(ref)
    if not cached:
        args = ["build", "--file", str(build.containerfile), "--tag", ref]
        args += ["--label", f"{CONTENT_LABEL}={ref.rsplit(':', 1)[1]}"]
        if engine.name == "podman":
            # OCI image configs have no HEALTHCHECK; the Docker format keeps it.
            args += ["--format", "docker"]
        if build.target:
            args += ["--target", build.target]
        for key, value in ((build.base_arg, base), *build.build_args):
            args += ["--build-arg", f"{key}={value}"]
        bundle = ca_bundle()
        if bundle is not None:
            args += ["--secret", f"id=pip-cert,src={bundle}"]
        with log.step(f"building {ref}"):
            engine.run(*args, str(build.context), timeout=BUILD_TIMEOUT)
        _forget_old_builds(engine, build.repository)
    for tag in build.tags:
        engine.run("tag", ref, tag)
    size = int(engine.inspect(ref, "{{.Size}}"))
    return Built(ref, size, time.monotonic() - started, cached)


def _forget_old_builds(engine: Engine, repository: str) -> None:
    """Untags all but the newest KEEP_BUILDS content tags, so storage does not grow per change.

    An image a container still uses stays (the engine refuses to remove it).
    """
    listed = engine.run(
        "images", "--filter", f"reference={repository}:src-*", "--format", "{{.Tag}}"
    )
    tags = [tag for tag in listed.stdout.split() if tag.startswith("src-")]
    for tag in tags[KEEP_BUILDS:]:
        engine.run("rmi", f"{repository}:{tag}", check=False)


def project_version() -> str:
    """The version in pyproject.toml: the tag the Kubernetes kustomization pins."""
    match = re.search(r'^version = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    if match is None:
        raise ImageError("pyproject.toml has no version")
    return match.group(1)


def project_builds() -> tuple[Build, Build]:
    """The sidecar image and the demo-app image, tagged with the project version and latest."""
    inputs = tuple(ROOT / name for name in INPUTS)
    version = project_version()

    def build(name: str, target: str) -> Build:
        return Build(
            repository=f"localhost/{name}",
            containerfile=DOCKERFILE,
            context=ROOT,
            inputs=inputs,
            target=target,
            tags=(f"localhost/{name}:{version}", f"localhost/{name}:latest"),
        )

    return build("signal-sidecar", "sidecar"), build("signal-sidecar-demo-app", "demo-app")


@contextlib.contextmanager
def machine_lock() -> Iterator[None]:
    """One build at a time per machine: the base tarball and the engine's tags are shared."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with (CACHE_DIR / "image.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_project_images(log: Log, engine: Engine) -> tuple[str, Built, Built]:
    """Base, sidecar image and demo-app image, each built only when its inputs changed."""
    with machine_lock():
        base = choose_base(engine, log)
        sidecar, demo_app = (ensure_image(engine, b, base, log) for b in project_builds())
    return base, sidecar, demo_app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="image", description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    log = Log()
    started = time.monotonic()
    try:
        engine = find_engine()
        base, sidecar, demo_app = build_project_images(log, engine)
    except ImageError as exc:
        print(f"image: {exc}", file=sys.stderr)
        return 1
    print(f"engine {engine.name}, base {base}")
    for built, tags in zip((sidecar, demo_app), (b.tags for b in project_builds()), strict=True):
        state = "unchanged" if built.cached else f"built in {built.seconds:.0f} s"
        print(f"{built.ref}  {built.size_bytes / 1e6:.0f} MB  ({state}; also {', '.join(tags)})")
    print(f"image: done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
