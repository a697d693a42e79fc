#!/usr/bin/env bash
# Builds capsa's fuzz targets (fuzz/, cargo fuzz + libFuzzer) and runs each
# for a bounded time:
#
#     scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# 20 seconds and every target by default; `scripts/fuzz.sh 3600` is an hour
# per target (a soak). Exits non-zero if any target crashed, leaked, or
# timed out on an input; the input is saved in fuzz/artifacts/<target>/ and
# the log in fuzz/target/logs/<target>.log. See docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
shift || true
[[ $seconds =~ ^[0-9]+$ ]] || { echo "fuzz.sh: SECONDS_PER_TARGET must be a number" >&2; exit 2; }

export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# cargo fuzz passes -Z flags (sanitizer, coverage instrumentation) to rustc;
# only the stable toolchain is installed, so let it accept them.
export RUSTC_BOOTSTRAP=1
# AddressSanitizer when the toolchain has its runtime, else coverage alone.
sanitizer=address
probe=$(mktemp -d)
if ! echo 'fn main() {}' | rustc -Zsanitizer=address -o "$probe/probe" - >/dev/null 2>&1; then
    echo "fuzz.sh: no AddressSanitizer runtime; fuzzing without a sanitizer" >&2
    sanitizer=none
fi
rm -rf "$probe"
# Optimized, with debug assertions and overflow checks: an overflow the
# release build would silently wrap is a finding.
flags=(-O -a --sanitizer "$sanitizer")

if (($# == 0)); then
    mapfile -t targets < <(cargo fuzz list)
else
    targets=("$@")
fi

start=$SECONDS
cargo fuzz build "${flags[@]}"
echo "fuzz targets built in $((SECONDS - start)) s"

# Directories served by fuzz processes that crashed (a crash skips their
# cleanup; see fuzz/src/sandbox.rs).
for dir in /dev/shm/capsa-fuzz-*; do
    [[ -d $dir ]] || continue
    pid=${dir#/dev/shm/capsa-fuzz-}
    kill -0 "${pid%%-*}" 2>/dev/null || rm -rf "$dir"
done

logs=fuzz/target/logs
mkdir -p "$logs"
failed=()
for target in "${targets[@]}"; do
    # New inputs go to a working corpus outside git (the first directory);
    # the committed seeds are read only.
    work=fuzz/target/corpus/$target
    mkdir -p "$work" "fuzz/corpus/$target"
    log=$logs/$target.log
    if cargo fuzz run "${flags[@]}" "$target" "$work" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1; then
        result=ok
    else
        result=FAILED
        failed+=("$target")
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)
    printf '%-16s %-6s %10s runs %8s exec/s  corpus %s\n' \
        "$target" "$result" "${runs:-?}" "${rate:-?}" "$(find "$work" -type f | wc -l)"
    if [[ $result == FAILED ]]; then
        tail -n 60 "$log"
    fi
done

if ((${#failed[@]})); then
    echo "fuzz.sh: failed: ${failed[*]} (inputs in fuzz/artifacts/, logs in $logs/)" >&2
    exit 1
fi
