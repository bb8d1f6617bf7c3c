# syntax=docker/dockerfile:1
# The sidecar image (default target) and the demo app (target demo-app), both on python:3.11-slim.
# Dependencies are installed into a virtual environment in a build stage; the final images get
# only that environment: no compiler, no pip cache, no build tools.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# Compilers only for dependencies without a wheel on this architecture; they stay in this stage.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent ./agent
RUN /opt/venv/bin/pip install --upgrade pip \
 && /opt/venv/bin/pip install .

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
COPY --chown=10001:10001 scripts/demo_app /opt/demo/demo_app
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
