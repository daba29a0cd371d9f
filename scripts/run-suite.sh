#!/usr/bin/env bash
# Runs one test suite: run-suite.sh SUMMARY_REGEX COMMAND [ARG...]
#
# The suite fails when COMMAND fails, when it runs past its time (a hang
# that also stops pytest-timeout, whose thread needs the GIL: LESSONS 3),
# or when it exits 0 without printing its summary line (SUMMARY_REGEX, an
# extended regex): the NIF can end the whole VM, and a test of ours that
# ended it with status 0 (py_nif:exit_now) would otherwise pass the run
# with the rest of its suite unrun.
set -uo pipefail

summary=$1
shift
limit=${SUITE_TIME_LIMIT:-1200}
log=$(mktemp)
trap 'rm -f "$log"' EXIT

timeout -k 30 "$limit" "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    echo "run-suite: '$*' ran past ${limit} s and was stopped" >&2
    exit 1
elif [ "$status" -ne 0 ]; then
    exit "$status"
elif ! sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -Eq "$summary"; then
    echo "run-suite: '$*' exited 0 without its summary line (/$summary/): it ended early" >&2
    exit 1
fi
