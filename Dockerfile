# syntax=docker/dockerfile:1
#
# extauthz: Envoy/Istio external authorization server.
#   docker build -t extauthz:0.1.0 .
#   docker run --rm -p 9191:9191 -p 9464:9464 extauthz:0.1.0
#
# The base image is pinned by its exact version tag. For reproducible builds pin its
# digest too (python:3.11.14-slim-bookworm@sha256:...) after checking it against the
# registry; both stages must use the same image, since the venv links to its python.

# ---------------------------------------------------------------- build
FROM python:3.11.14-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# The C compiler and libc headers for the compiled build (mypyc). Versions are pinned to
# Debian bookworm's: gcc exactly, libc6-dev to bookworm's glibc 2.36-9 with whichever
# security update is current (it must match the image's libc6, which updates alike).
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc=4:12.2.0-3 'libc6-dev=2.36-9+deb12u*' \
 && rm -rf /var/lib/apt/lists/*

# The "compile" extra: mypyc and the build backend, for a build without isolation.
RUN python -m pip install 'mypy[mypyc]==2.4.1' 'setuptools==84.2.1' 'wheel==0.45.1'

WORKDIR /src
# .dockerignore admits only what the wheel is built from (pyproject.toml, setup.py,
# README.md, src/) and the default policies.
COPY . .

# Build the project's wheel alone, compiled (EXTAUTHZ_COMPILE=1: the modules listed in
# src/extauthz/compiled.py become C extensions), then install it with its dependencies (and
# uvloop, the "fast" extra) into a venv that the runtime stage copies whole. pip compiles
# the bytecode here, because the runtime root filesystem is read-only.
RUN EXTAUTHZ_COMPILE=1 python -m pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
 && python -m venv /opt/venv \
 && /opt/venv/bin/python -m pip install /wheels/extauthz-*.whl 'uvloop>=0.19'

# ---------------------------------------------------------------- runtime
FROM python:3.11.14-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="extauthz" \
      org.opencontainers.image.description="External authorization for Envoy and Istio" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    EXTAUTHZ_METRICS_LISTEN=0.0.0.0:9464

COPY --from=build /opt/venv /opt/venv
# The default policy directory; mount a ConfigMap over it, or use --redis-url.
COPY policies/ /etc/extauthz/policies/

# Numeric uid:gid with no passwd entry, so Kubernetes can verify runAsNonRoot.
USER 10001:10001
WORKDIR /tmp

EXPOSE 9191 9464

# grpc.health.v1.Health/Check; exits 0 only when SERVING. Exec form: no shell needed.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["/opt/venv/bin/extauthz", "health", "--address", "127.0.0.1:9191"]

ENTRYPOINT ["/opt/venv/bin/extauthz"]
CMD ["serve", "--policies", "/etc/extauthz/policies"]
