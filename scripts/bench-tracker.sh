#!/usr/bin/env bash
# Benchmark of `lanshare tracker` alone: a tracker on 127.0.0.1 with a
# fresh database, loaded by examples/tracker_load.rs with NODES nodes holding
# FILES files in total. Reports, as measured in this run: registrations,
# announces (initial full load, full with 3% changed, incremental),
# heartbeats, searches (by name: common word and rare string; by category)
# and peer lists per second with latency percentiles; the tracker's peak
# RSS (VmHWM from /proc/PID/status) and the database size on disk.
# Every node has its own Ed25519 key and signs each change (X-Lanshare-Sig,
# docs/tracker.md), so register, announce and heartbeat rates include one
# signature check on the tracker per request (and one signing in the load
# generator, which shares the machine).
#
#   scripts/bench-tracker.sh                     # 3000 nodes, 1,000,000 files
#   NODES=300 FILES=100000 scripts/bench-tracker.sh   # a quick run
#
# Environment (all optional):
#   NODES=3000 FILES=1000000   the registered load
#   CONCURRENCY=16             requests in flight from the load generator
#   SECS=10                    length of each timed phase (peer lists: half)
#   KEEP=1                     keep the work directory (database, logs)
#   RESULTS=FILE               where the summary goes (default target/bench/tracker.txt)
#
# The tracker runs with --heartbeat 600 --offline-after 3600 so no node goes
# offline between phases, with --max-files raised to FILES + 10%, and with
# --max-nodes-per-address raised to NODES + 100 (every node registers from
# 127.0.0.1).
# Network: 127.0.0.1 only. The script stops the tracker it started, by PID.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NODES=${NODES:-3000}
FILES=${FILES:-1000000}
CONCURRENCY=${CONCURRENCY:-16}
SECS=${SECS:-10}
KEEP=${KEEP:-0}
RESULTS=${RESULTS:-$ROOT/target/bench/tracker.txt}
BIN=$ROOT/target/release/lanshare
LOAD=$ROOT/target/release/examples/tracker_load

log() { printf '[bench-tracker %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

TRACKER_PID=""
WORK=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n "$TRACKER_PID" ]] && kill -0 "$TRACKER_PID" 2>/dev/null; then
        kill -TERM "$TRACKER_PID" 2>/dev/null || true
        wait "$TRACKER_PID" 2>/dev/null || true
    fi
    if [[ -n "$WORK" ]]; then
        if [[ "$KEEP" == 1 ]]; then log "work files kept in $WORK"; else rm -rf "$WORK"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT INT TERM

log "building (release): lanshare and the tracker_load example"
(cd "$ROOT" && cargo build --release --quiet --bin lanshare --example tracker_load) \
    || die "cargo build failed"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/lanshare-bench-tracker.XXXXXX")
DB=$WORK/tracker.db
MAX_FILES=$(( FILES + FILES / 10 + 1000 ))

"$BIN" tracker --listen 127.0.0.1:0 --db "$DB" --heartbeat 600 --offline-after 3600 \
    --max-nodes $(( NODES + 100 )) --max-nodes-per-address $(( NODES + 100 )) \
    --max-files "$MAX_FILES" \
    >"$WORK/tracker.out" 2>"$WORK/tracker.err" &
TRACKER_PID=$!
URL=""
for _ in $(seq 1 200); do
    URL=$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$WORK/tracker.out" 2>/dev/null | head -1 || true)
    [[ -n "$URL" ]] && break
    kill -0 "$TRACKER_PID" 2>/dev/null || die "the tracker exited: $(cat "$WORK/tracker.err")"
    sleep 0.05
done
[[ -n "$URL" ]] || die "the tracker printed no address"
log "tracker PID $TRACKER_PID at $URL, database $DB"

rss_kib() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$TRACKER_PID/status"; }
log "load: $NODES nodes, $FILES files, $CONCURRENCY in flight, ${SECS} s per timed phase"
"$LOAD" --url "$URL" --nodes "$NODES" --files "$FILES" --concurrency "$CONCURRENCY" \
    --secs "$SECS" | tee "$WORK/load.txt"

HWM=$(rss_kib VmHWM)
RSS=$(rss_kib VmRSS)
db_bytes() { local t=0 f; for f in "$DB" "$DB-wal" "$DB-shm"; do
    [[ -e "$f" ]] && t=$(( t + $(stat -c %s "$f") )); done; echo "$t"; }
LIVE_DB=$(db_bytes)
kill -TERM "$TRACKER_PID"
wait "$TRACKER_PID" || die "the tracker did not exit cleanly: $(tail -5 "$WORK/tracker.err")"
TRACKER_PID=""
FINAL_DB=$(db_bytes)
FAILED=$(grep -c 'FAILED' "$WORK/load.txt" || true)

mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
mkdir -p "$(dirname "$RESULTS")"
{
    echo "lanshare tracker benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) CPUs ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), load generator on the same machine"
    echo "command: NODES=$NODES FILES=$FILES CONCURRENCY=$CONCURRENCY SECS=$SECS scripts/bench-tracker.sh"
    echo
    cat "$WORK/load.txt"
    echo
    echo "tracker peak RSS (VmHWM): $(awk -v k="$HWM" 'BEGIN { printf "%.1f MiB", k / 1024 }')  (RSS at the end: $(awk -v k="$RSS" 'BEGIN { printf "%.1f MiB", k / 1024 }'))"
    echo "database on disk: $(mib "$LIVE_DB") while running (db + wal + shm), $(mib "$FINAL_DB") after a clean stop (checkpointed)"
    if [[ "$FAILED" != 0 ]]; then echo "WARNING: $FAILED phase(s) had failed requests (see above)"; fi
} >"$RESULTS"
echo
cat "$RESULTS"
log "summary written to $RESULTS"
