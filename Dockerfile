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

WORKDIR /src
# .dockerignore admits only what the wheel is built from (pyproject.toml, README.md,
# src/) and the default policies.
COPY . .

# Build the project's wheel alone, then install it with its dependencies (and uvloop, the
# "fast" extra) into a venv that the runtime stage copies whole. pip compiles the bytecode
# here, because the runtime root filesystem is read-only.
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
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
