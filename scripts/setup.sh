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

# Debian's own python3 ships CPython's test package (the conformance run's
# test.test_asyncio) apart, as libpython3.X-testsuite.
if ! "$python" -c 'import test.test_asyncio' 2>/dev/null; then
    version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if [ "$(dirname "$(readlink -f "$(command -v "$python")")")" = /usr/bin ]; then
        debian_install setup "libpython$version-testsuite"
    else
        echo "setup: $python has no test.test_asyncio (make conformance needs it)" >&2
    fi
fi

venv="$root/.venv"
stamp="$venv/.requirements-installed"
# A venv made from another interpreter (an earlier PYTHON=) is made anew.
identity='import sys; print(sys.base_prefix, sys.version)'
if [ -x "$venv/bin/python" ] &&
    [ "$("$venv/bin/python" -c "$identity" 2>/dev/null)" != "$("$python" -c "$identity")" ]; then
    echo "setup: .venv was made from another python; making it again from $python"
    rm -rf "$venv"
fi
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
if [ ! -f "$stamp" ] || ! cmp -s "$root/requirements-dev.txt" "$stamp"; then
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$root/requirements-dev.txt"
    cp "$root/requirements-dev.txt" "$stamp"
fi
