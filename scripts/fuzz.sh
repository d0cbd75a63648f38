#!/usr/bin/env bash
# Runs Kitfleet's fuzz targets (fuzz/, cargo-fuzz + libFuzzer, nightly Rust) for a fixed time each and prints a table.
#
#   bash scripts/fuzz.sh [SECONDS] [TARGET…]    # default: 60 s for every target, one after the other
#   bash scripts/fuzz.sh --merge [TARGET…]      # fold what the runs found into fuzz/corpus/<target>, minimised
#   bash scripts/fuzz.sh --build [TARGET…]      # build (every) target, run none
#   bash scripts/fuzz.sh --list                 # the targets
#
# One libFuzzer process per target (its default; the same as -jobs=1), started from fuzz/corpus/<target>/ (checked in,
# read-only here); new inputs go to fuzz/corpus-run/<target>/ (ignored by git) and logs to fuzz/corpus-run/logs/.
# A finding (panic, failed assertion, timeout > 10 s, > 2 GiB RSS) stops that target, is saved under
# fuzz/artifacts/<target>/ and makes the script exit 1 after the others ran. Turn each finding into a regression test in
# the owning crate, fix it, and add the input to fuzz/corpus/<target>/ (the stable replay tests then keep it checked).
#
# Needs the nightly toolchain (`rustup toolchain install nightly`); cargo-fuzz is installed on first use into
# $KITFLEET_CACHE/fuzz-tools (outside the clone), builds go to $KITFLEET_CACHE/fuzz-target. No sanitizer by default
# (the code under test is safe Rust: coverage and debug assertions find its bugs, ASan would halve the executions);
# KITFLEET_FUZZ_SANITIZER=address turns AddressSanitizer on.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
cache="${KITFLEET_CACHE:-/var/cache/kitfleet}"
export CARGO_TARGET_DIR="$cache/fuzz-target"
sanitizer="${KITFLEET_FUZZ_SANITIZER:-none}"

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz.sh: the nightly toolchain is missing: rustup toolchain install nightly" >&2
  exit 2
fi
fuzz_bin="$cache/fuzz-tools/bin/cargo-fuzz"
if [[ ! -x "$fuzz_bin" ]]; then
  echo "fuzz.sh: installing cargo-fuzz into $cache/fuzz-tools" >&2
  cargo install cargo-fuzz --locked --root "$cache/fuzz-tools" >&2
fi
export PATH="$cache/fuzz-tools/bin:$PATH"
fuzz() { cargo +nightly fuzz "$@"; }
# Flags for every build, so `build`, `run` and `cmin` share one set of artefacts.
flags=(--sanitizer "$sanitizer" --debug-assertions)

targets() { fuzz list; }
# Each target builds with only its owning crate's feature (Cargo.toml: `required-features`).
feature() { awk -v t="$1" '$0 == "name = \"" t "\"" {f = 1} f && /^required-features/ {gsub(/[^a-z]/, "", $3); print $3; exit}' Cargo.toml; }
tflags() { echo "--no-default-features --features $(feature "$1")"; }

case "${1:-}" in
  --list)
    targets
    exit 0
    ;;
  --build)
    shift
    list=("$@")
    [[ ${#list[@]} -gt 0 ]] || mapfile -t list < <(targets)
    for t in "${list[@]}"; do
      # shellcheck disable=SC2046
      fuzz build "${flags[@]}" $(tflags "$t") "$t"
    done
    exit 0
    ;;
  --merge)
    shift
    list=("$@")
    [[ ${#list[@]} -gt 0 ]] || mapfile -t list < <(targets)
    for t in "${list[@]}"; do
      # The smallest set of inputs covering every edge the checked-in corpus and the runs reach (libFuzzer's
      # set-cover merge, without hit counters: `cargo fuzz cmin` keeps thousands of files for counter features).
      out=$(mktemp -d)
      dirs=("corpus/$t")
      [[ -d "corpus-run/$t" ]] && dirs+=("corpus-run/$t")
      # shellcheck disable=SC2046
      fuzz run "${flags[@]}" $(tflags "$t") "$t" "$out" "${dirs[@]}" -- -set_cover_merge=1 -use_counters=0 >/dev/null 2>&1
      rm -rf "corpus/$t"
      mv "$out" "corpus/$t"
      printf '%-26s %5d files %8d bytes\n' "$t" "$(find "corpus/$t" -type f | wc -l)" \
        "$(find "corpus/$t" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')"
    done
    exit 0
    ;;
esac

seconds=60
if [[ "${1:-}" =~ ^[0-9]+$ ]]; then
  seconds=$1
  shift
fi
list=("$@")
[[ ${#list[@]} -gt 0 ]] || mapfile -t list < <(targets)

mkdir -p corpus-run/logs
for t in "${list[@]}"; do
  # shellcheck disable=SC2046
  if ! fuzz build "${flags[@]}" $(tflags "$t") "$t" >>corpus-run/logs/build.log 2>&1; then
    tail -40 corpus-run/logs/build.log >&2
    exit 2
  fi
done
printf '%-26s %6s %12s %9s %7s %7s %s\n' target seconds executions exec/s cov corpus result
failed=0
for t in "${list[@]}"; do
  mkdir -p "corpus-run/$t" "corpus/$t"
  log="corpus-run/logs/$t.log"
  result=ok
  # shellcheck disable=SC2046
  fuzz run "${flags[@]}" $(tflags "$t") "$t" "corpus-run/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1 || true
  if grep -q 'Test unit written to' "$log"; then
    result="FINDING: $(grep -m1 -oE 'Test unit written to [^ ]+' "$log" | sed 's/Test unit written to //')"
    failed=1
  elif ! grep -q '^stat::number_of_executed_units' "$log"; then
    result="did not run (see $log)"
    failed=1
  fi
  execs=$(grep -oE '^stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || true)
  rate=$(grep -oE '^stat::average_exec_per_sec: *[0-9]+' "$log" | grep -oE '[0-9]+$' || true)
  cov=$( (grep -oE 'cov: [0-9]+' "$log" || true) | tail -1 | grep -oE '[0-9]+' || true)
  corpus=$(($(find "corpus-run/$t" -type f | wc -l) + $(find "corpus/$t" -type f | wc -l)))
  printf '%-26s %6s %12s %9s %7s %7s %s\n' "$t" "$seconds" "$execs" "$rate" "$cov" "$corpus" "$result"
done
exit "$failed"
