#!/usr/bin/env bash
# Installs what `make bench` needs beyond `make build`: wrk (Debian), the HTTP
# load generator of the ASGI benchmark. uvloop, uvicorn and Starlette come
# with the venv (requirements-dev.txt). Idempotent.
set -euo pipefail

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "bench-deps: need root (or sudo) to run: $*" >&2; exit 1; fi
}

if ! command -v wrk >/dev/null; then
    echo "bench-deps: installing wrk from Debian"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk
fi
