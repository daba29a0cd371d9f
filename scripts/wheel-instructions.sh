#!/usr/bin/env bash
# Instructions per operation of the timer wheel, counted by callgrind: the
# figures to compare two versions of src/wheel by on a machine whose speed
# moves (criterion's times do). Installs valgrind from Debian if missing.
set -euo pipefail
# shellcheck source=scripts/debian.sh
. "$(dirname "${BASH_SOURCE[0]}")/debian.sh"
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v valgrind >/dev/null; then
    debian_install wheel-instructions valgrind
fi

cargo build --release --example wheel_instructions
binary=target/release/examples/wheel_instructions
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
for workload in expire-dense expire-sparse insert-cancel mixed; do
    valgrind --tool=callgrind --toggle-collect='wheel_instructions::measured_*' \
        --callgrind-out-file="$out/$workload" "$binary" "$workload" >"$out/$workload.stdout" 2>"$out/$workload.stderr"
    instructions=$(sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$out/$workload.stderr")
    operations=$(sed -n 's/^operations \([0-9]*\)$/\1/p' "$out/$workload.stdout")
    awk -v w="$workload" -v i="$instructions" -v o="$operations" \
        'BEGIN { printf "%-14s %6.1f instructions per %s\n", w, i / o, (w == "insert-cancel" ? "pair" : w == "mixed" ? "step" : "fired timer") }'
done
