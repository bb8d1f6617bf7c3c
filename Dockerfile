# syntax=docker/dockerfile:1
# The sidecar image (default target) and the demo app (target demo-app).
# PYTHON_IMAGE is the base: the pinned python slim image, or any Debian bookworm root filesystem
# with python3 and python3-venv (`make image` bootstraps one with mmdebstrap where no registry
# answers). Dependencies go into a virtual environment in a build stage; the final images get only
# that environment: no compiler, no pip, no pip cache, no tests.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# python3, not python: a plain Debian base has no `python` command (the slim image has both).
RUN python3 -m venv /opt/venv
WORKDIR /src
# Every dependency ships wheels for amd64 and arm64, so no compiler is needed. Behind a proxy that
# re-signs TLS, hand pip the CA bundle: --secret id=pip-cert,src=/etc/ssl/certs/ca-certificates.crt
# (`make image` does). The dependencies come first, in a layer that only pyproject.toml changes.
COPY pyproject.toml ./
RUN --mount=type=secret,id=pip-cert \
    if [ -s /run/secrets/pip-cert ]; then export PIP_CERT=/run/secrets/pip-cert; fi \
 && python3 -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")' > requirements.txt \
 && /opt/venv/bin/pip install --requirement requirements.txt
COPY README.md ./
COPY agent ./agent
# pip and setuptools leave the environment once the sidecar is in it.
RUN --mount=type=secret,id=pip-cert \
    if [ -s /run/secrets/pip-cert ]; then export PIP_CERT=/run/secrets/pip-cert; fi \
 && /opt/venv/bin/pip install --no-deps . \
 && /opt/venv/bin/pip uninstall --yes pip setuptools

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 sidecar \
 && useradd --system --uid 10001 --gid sidecar --home-dir /nonexistent --shell /usr/sbin/nologin sidecar \
 && mkdir -p /var/lib/signal-sidecar \
 && chown sidecar:sidecar /var/lib/signal-sidecar
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /var/lib/signal-sidecar

# The demo's stand-in for the email app (docker-compose.yml builds it with target: demo-app).
FROM runtime AS demo-app
COPY scripts/demo_app /opt/demo/demo_app
ENV PYTHONPATH=/opt/demo DEMO_APP_HOST=0.0.0.0 DEMO_APP_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/health', timeout=2)"]
CMD ["python", "-m", "demo_app"]

FROM runtime AS sidecar
ENV SIDECAR_DATA_DIR=/var/lib/signal-sidecar \
    SIDECAR_HOST=0.0.0.0 \
    SIDECAR_PORT=8080
VOLUME ["/var/lib/signal-sidecar"]
EXPOSE 8080
# `signal-sidecar check` asks the local /readyz and exits 0 when ready.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["signal-sidecar", "check", "--timeout", "3"]
# Docker's default stop signal is SIGTERM: readiness fails, work drains, telemetry flushes (~5 s).
ENTRYPOINT ["signal-sidecar"]
CMD ["run"]
