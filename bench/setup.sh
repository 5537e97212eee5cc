#!/usr/bin/env bash
# Install what the benchmarks in bench/ need: h2load (nghttp2-client) for direct gRPC load,
# wrk for HTTP load through Envoy, and py-spy for sampling profiles of the server.
# Idempotent; run as root (or with sudo) on Debian/Ubuntu.
set -euo pipefail

need_apt=()
command -v h2load >/dev/null 2>&1 || need_apt+=(nghttp2-client)
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
if ((${#need_apt[@]})); then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need_apt[@]}"
fi

python3 -m pip install --quiet "py-spy>=0.3.14"
# uvloop: the event loop extauthz uses when installed (the "fast" extra); the bare server
# and extauthz pick it up alike.
python3 -m pip install --quiet "uvloop>=0.19"

h2load --version | head -1
wrk -v 2>&1 | head -1 || true
py-spy --version
