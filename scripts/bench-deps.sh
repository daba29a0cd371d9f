#!/usr/bin/env bash
# Installs what `make bench` needs beyond `make build`: wrk (Debian), the HTTP
# load generator of the ASGI benchmark. uvloop, rloop, uvicorn and Starlette come
# with the venv (requirements-dev.txt). Idempotent.
set -euo pipefail

# shellcheck source=scripts/debian.sh
. "$(dirname "${BASH_SOURCE[0]}")/debian.sh"

if ! command -v wrk >/dev/null; then
    debian_install bench-deps wrk
fi
