#!/usr/bin/env bash
# Runs every libFuzzer target in fuzz/ (cargo fuzz) for a bounded time each, starting from
# the committed seeds (fuzz/seeds/TARGET) plus inputs that once crashed (fuzz/regressions/
# TARGET, replayed first). Fails on any crash, leak, timeout or out-of-memory, printing the
# input that caused it. Ends with "N passed, N failed".
#
# TRIBUTARY_FUZZ_SECONDS (default 60) is the time per target. The machine's stable toolchain
# builds the instrumented targets with RUSTC_BOOTSTRAP=1 (cargo fuzz passes nightly-only
# sanitizer flags); cargo-fuzz itself is installed from crates.io into the cache, keyed by
# its version.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache="${TRIBUTARY_CACHE:-/var/cache/tributary}"
fuzz_version=0.13.2
tools="$cache/tools/cargo-fuzz-$fuzz_version"
seconds="${TRIBUTARY_FUZZ_SECONDS:-60}"
target_dir="$cache/fuzz-target"

say() { printf '[fuzz %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

if [ ! -x "$tools/bin/cargo-fuzz" ]; then
  say "installing cargo-fuzz $fuzz_version (cargo install, about 2 minutes)"
  cargo install cargo-fuzz --version "$fuzz_version" --locked --root "$tools" --quiet
fi
export PATH="$tools/bin:$PATH" RUSTC_BOOTSTRAP=1

cd "$repo/fuzz"
say "building the instrumented targets (release, debug assertions, AddressSanitizer)"
cargo fuzz build -O -a --target-dir "$target_dir"

passed=0
failed=0
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for target in $(cargo fuzz list); do
  # Inputs that once crashed a target must keep passing.
  if [ -d "regressions/$target" ] && [ -n "$(ls -A "regressions/$target")" ]; then
    if ! cargo fuzz run -O -a --target-dir "$target_dir" "$target" "regressions/$target"/* \
      -- -runs=0 >"$scratch/$target.replay.log" 2>&1; then
      say "FAIL $target: an input in fuzz/regressions/$target crashes it again"
      tail -40 "$scratch/$target.replay.log"
      failed=$((failed + 1))
      continue
    fi
  fi
  corpus="$scratch/corpus-$target"
  mkdir -p "$corpus" "$scratch/artifacts-$target"
  say "$target: ${seconds} s from $(ls "seeds/$target" | wc -l) seeds"
  # The first corpus folder receives new inputs (scratch); the committed seeds stay as they are.
  if cargo fuzz run -O -a --target-dir "$target_dir" "$target" "$corpus" "seeds/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    -artifact_prefix="$scratch/artifacts-$target/" -print_final_stats=1 \
    >"$scratch/$target.log" 2>&1; then
    runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$scratch/$target.log" | grep -o '[0-9]*$' || true)"
    say "ok $target: ${runs:-?} inputs, corpus grew to $(ls "$corpus" | wc -l) entries, no crash"
    passed=$((passed + 1))
  else
    say "FAIL $target"
    tail -40 "$scratch/$target.log"
    for artifact in "$scratch/artifacts-$target"/*; do
      [ -e "$artifact" ] || continue
      mkdir -p "regressions/$target"
      cp "$artifact" "regressions/$target/"
      say "crashing input saved as fuzz/regressions/$target/$(basename "$artifact") (base64: $(base64 -w0 "$artifact" | head -c 400))"
    done
    failed=$((failed + 1))
  fi
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
