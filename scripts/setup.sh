#!/usr/bin/env bash
# Installs what erlang_python needs on a Debian machine that has Rust and
# CPython (with a shared libpython): Erlang/OTP and rebar3 from Debian, and a
# project venv with the Python packages of requirements-dev.txt. Idempotent.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"

# shellcheck source=scripts/debian.sh
. "$(dirname "${BASH_SOURCE[0]}")/debian.sh"

missing=()
command -v erl >/dev/null || missing+=(erlang-nox)
[ -n "$(ls /usr/lib/erlang/usr/include/erl_nif.h 2>/dev/null)" ] || missing+=(erlang-dev)
command -v rebar3 >/dev/null || missing+=(rebar3)
if [ "${#missing[@]}" -gt 0 ]; then
    debian_install setup "${missing[@]}"
fi

shared=$("$python" -c 'import sysconfig; print(sysconfig.get_config_var("Py_ENABLE_SHARED") or 0)')
if [ "$shared" != 1 ]; then
    echo "setup: $python has no shared libpython; set PYTHON to one that has" >&2
    exit 1
fi

venv="$root/.venv"
stamp="$venv/.requirements-installed"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
if [ ! -f "$stamp" ] || ! cmp -s "$root/requirements-dev.txt" "$stamp"; then
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$root/requirements-dev.txt"
    cp "$root/requirements-dev.txt" "$stamp"
fi
