#!/usr/bin/env bash
# Builds all fuzz targets once, then runs them one after another with one
# libFuzzer worker each:
#   fuzz/run_all.sh [SECONDS_EACH] [TARGET...]
# NO_BUILD=1 skips the build and runs the binaries already in fuzz/target
# (useful while src/ is mid-edit and does not compile).
# Seeds from fuzz/seeds/<t>/ are copied into fuzz/corpus/<t>/ (git-ignored)
# first. libFuzzer's job logs (fuzz-0.log) are kept under
# fuzz/artifacts/logs/<t>-<time>/, crash inputs under fuzz/artifacts/<t>/.
set -euo pipefail
FUZZ_DIR="$(cd "$(dirname "$0")" && pwd)"
SECS="${1:-60}"
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    TARGETS=(startup_packet message_framing error_fields scram_verifier config_yaml units cache_entry sql_shape sql_template extended_messages session_sql)
fi
# cargo-fuzz passes nightly-only rustc flags (-Zsanitizer=address), so it
# needs the nightly toolchain; `+nightly` picks rustup's. TOOLCHAIN= (empty)
# together with RUSTC_BOOTSTRAP=1 uses the default stable toolchain instead.
TOOLCHAIN="${TOOLCHAIN-+nightly}"
TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
BIN_DIR="$FUZZ_DIR/target/$TRIPLE/release"

if [ "${NO_BUILD:-0}" != 1 ]; then
    (cd "$FUZZ_DIR/.." && cargo $TOOLCHAIN fuzz build --fuzz-dir "$FUZZ_DIR")
fi

for t in "${TARGETS[@]}"; do
    mkdir -p "$FUZZ_DIR/corpus/$t" "$FUZZ_DIR/artifacts/$t"
    cp -n "$FUZZ_DIR/seeds/$t/"* "$FUZZ_DIR/corpus/$t/"
    extra=()
    [ "$t" = startup_packet ] && extra=(-max_len=20000)
    logdir="$FUZZ_DIR/artifacts/logs/$t-$(date +%Y%m%d-%H%M%S)"
    mkdir -p "$logdir"
    echo "== $t for ${SECS}s (log: $logdir/fuzz-0.log)"
    # What `cargo fuzz run $t -- ...` runs, without its rebuild.
    (cd "$logdir" && "$BIN_DIR/$t" -artifact_prefix="$FUZZ_DIR/artifacts/$t/" \
        -jobs=1 -workers=1 -max_total_time="$SECS" "${extra[@]}" \
        "$FUZZ_DIR/corpus/$t" >"$logdir/libfuzzer.out" 2>&1) \
        && echo "   ok: $(grep -E '^Done [0-9]+ runs' "$logdir/fuzz-0.log" | tail -1)" \
        || echo "   FAILED (exit $?): see $logdir and $FUZZ_DIR/artifacts/$t/"
done
