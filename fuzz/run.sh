#!/usr/bin/env bash
# Runs every fuzz target (or those named) for a bounded time, on stable Rust, then prints the
# executions and coverage of each and keeps a minimized corpus under fuzz/corpus/<target>.
# An input that crashes a target is copied to fuzz/regressions/<target>/, which `cargo test`
# replays (golem-fuzz/tests/corpus.rs): fix it, and keep it there.
#
#   fuzz/run.sh [seconds per target] [target ...]
#
# Each target stops at the time given (default 60 s) or at RUNS executions (default 10
# million), whichever comes first. Needs cargo-fuzz: `cargo install cargo-fuzz`.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:-60}
shift || true
case "$seconds" in
    ''|*[!0-9]*) echo "usage: fuzz/run.sh [seconds per target] [target ...]" >&2; exit 2 ;;
esac
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(frame message receipt output module smith_module)
fi
runs=${RUNS:-10000000}

if ! cargo fuzz --version > /dev/null 2>&1; then
    echo "cargo-fuzz is not installed: cargo install cargo-fuzz" >&2
    exit 2
fi

# Without a sanitizer, libFuzzer's coverage works on stable Rust.
cargo fuzz build -s none

summary=()
for target in "${targets[@]}"; do
    # Only this run's crashes are in artifacts/<target> afterwards.
    rm -rf "artifacts/$target"
    mkdir -p "corpus/$target" "artifacts/$target"
    log=$(mktemp)
    status=0
    cargo fuzz run -s none "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -runs="$runs" -print_final_stats=1 \
        -rss_limit_mb=4096 -timeout=20 > "$log" 2>&1 || status=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)
    cov=$(grep -oE '(DONE|#[0-9]+).*cov: [0-9]+' "$log" | tail -1 | grep -oE 'cov: [0-9]+' | grep -oE '[0-9]+' || true)
    if [ "$status" -ne 0 ]; then
        mkdir -p "regressions/$target"
        for crash in artifacts/"$target"/*; do
            [ -f "$crash" ] && cp "$crash" "regressions/$target/"
        done
        echo "== $target crashed: see $log and regressions/$target" >&2
        tail -40 "$log" >&2
    else
        rm -f "$log"
    fi
    # Keep the corpus small: only inputs that add coverage.
    cargo fuzz cmin -s none "$target" "corpus/$target" > /dev/null 2>&1 || true
    inputs=$(find "corpus/$target" -type f | wc -l)
    summary+=("$(printf '| %s | %s | %s | %s | %s |' "$target" "${execs:-?}" "${cov:-?}" "$inputs" \
        "$([ "$status" -eq 0 ] && echo ok || echo CRASH)")")
done

echo
echo "| target | executions | coverage (edges) | corpus inputs | result |"
echo "|---|---:|---:|---:|---|"
printf '%s\n' "${summary[@]}"
