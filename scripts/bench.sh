#!/usr/bin/env bash
# Whole-system benchmark of lanshare. Reports RATIOS measured in the same run
# against well-known tools on the same machine; it never asserts times.
#
#   scripts/bench.sh                 # 1 GiB loopback fetch, indexing, RSS, namespaces
#   SIZE_MB=256 scripts/bench.sh     # smaller file for a quick run
#   BIG=1 scripts/bench.sh           # also peak RSS for a 10 GiB file (needs ~20 GiB disk)
#
# Measurements:
#   a) SIZE_MB file from one seeder over loopback to disk with `lanshare fetch`
#      (everything verified) vs `python3 -m http.server` + `curl -o` (nothing
#      verified). Ratio = lanshare throughput / curl throughput (aim 1.0x).
#   b) indexing the file with lanshare::manifest::hash_file (benches/index_file.rs)
#      vs `openssl dgst -sha256`. Ratio = openssl time / lanshare time (aim 0.9x).
#   c) peak RSS (VmHWM) of the seeder and the fetcher node at the end of the
#      transfer, for SIZE_MB and, with BIG=1, BIG_MB (aim: <= 32 MiB, flat).
#   d) in network namespaces (root, `ip` and `tc` only): 4 seeders each shaped
#      to NETNS_RATE vs 1 seeder, NETNS_MB file. Ratio = speedup (aim 3.95x).
#   e) encryption cost: SIZE_MB file over loopback from a seeder in a private
#      swarm (a key from `lanshare key new`, --swarm-key-file: Noise-encrypted
#      TCP) vs from an open seeder (plaintext fetch) vs `python3 -m
#      http.server` + `curl -o`, interleaved in the same run (each rep runs
#      the three, in an order that rotates), best of REPS each. Ratios =
#      private / plaintext throughput (aim >= 0.8x) and private / curl
#      (aim >= 0.75x). CPU seconds per GiB of the seeder and of the fetcher
#      (utime+stime from /proc/PID/stat before and after the run; for curl:
#      http.server, and curl itself from /usr/bin/time), least of the runs.
#      With BASE_BIN=PATH (another build of lanshare, say of the commit
#      before a change), its open and private seeders and fetchers run too,
#      interleaved in the same rotation: ratios new / base show what a change
#      did on the same machine in the same minutes.
#   f) FILES_N (100,000) files of 1-4 KiB: indexing vs `find | xargs
#      sha256sum`, peak RSS of the sharing node and of a peer that pulled
#      them, and that peer's rise during `ls --json` (scripts/bench/files.sh).
#   g) in network namespaces (root, `ip`): two LANs joined by a router, a
#      tracker on the router; a new holder on one LAN, then a new file on
#      it: the time until a node across the router lists each (through the
#      tracker) and until a node on its own LAN does (multicast), median
#      and max of G_REPS (7); with BASE_BIN, the same with that binary
#      (scripts/bench/tracker.sh).
#   h) over loopback: a folder of FOLDER_N (2,000) files of 0-16 KiB plus a
#      few of 4 MiB fetched by its name from one holder, then two, vs the
#      same tree through `tar -c | TCP | tar -x`; files/s; with BASE_BIN,
#      that binary's fetchers too (scripts/bench/folders.sh).
#
# Environment (all optional):
#   SIZE_MB=1024     file size for a), b), c)
#   REPS=3           runs of each side of a) (best is reported) and of b)
#   BIG=0 BIG_MB=10240
#   PARTS=abde       which of a) (with c) RSS), b), d), e), f), g), h) to run
#   FILES_N=100000 FILES_DIRS=100   for f)
#   NETNS=auto       auto: run d) when possible; 0: skip it
#   NETNS_MB=200 NETNS_RATE=200mbit NETNS_SEEDERS=4
#   BASE_BIN=PATH    e) and g) also run this lanshare binary (A/B against a build
#                    of another commit; copy its target/release/lanshare)
#   E_THREADS=1      e) also prints the CPU seconds of each thread of the
#                    seeder and the fetcher during each fetch
#   BENCH_DIR=DIR    where the work files go (default: a new dir under TMPDIR or /tmp)
#   KEEP=1           keep the work dir (logs, homes) after the run
#   RESULTS=FILE     where the summary is also written
#                    (default target/bench/summary-<date>.txt)
#
# Fairness: the file is read once before each timed run (both read it from
# the page cache), each run's output is fsynced outside the timing, and
# fresh guest memory is touched before each run (see prime_memory).
#
# Network: every node is pinned to 127.0.0.1 (--interface, --listen) with
# --no-mdns and a multicast group/port unique to this run, or runs inside
# namespaces this script creates and deletes. Every process it starts is
# stopped on exit, by PID.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SIZE_MB=${SIZE_MB:-1024}
REPS=${REPS:-3}
BIG=${BIG:-0}
BIG_MB=${BIG_MB:-10240}
NETNS=${NETNS:-auto}
NETNS_MB=${NETNS_MB:-200}
NETNS_RATE=${NETNS_RATE:-200mbit}
NETNS_SEEDERS=${NETNS_SEEDERS:-4}
PARTS=${PARTS:-abde}
KEEP=${KEEP:-0}
BIN=$ROOT/target/release/lanshare
BASE_BIN=${BASE_BIN:-}
# The python3 interpreter itself, not a pyenv-style shim script (~0.1 s a call).
PY=$(python3 -c 'import sys; print(sys.executable)' 2>/dev/null) || {
    echo "bench.sh: "$PY" is needed" >&2; exit 1; }

# Unique per run: group address and ports derived from our PID.
TAG=$$
GROUP_IP="239.255.$(( (TAG >> 8) % 200 + 20 )).$(( TAG % 250 + 1 ))"
PORT_BASE=$(( 30000 + (TAG % 3000) * 10 ))

PIDS=()          # every background process we started
NAMESPACES=()    # every namespace we created
WORK=""
SUMMARY=()       # "measurement|value|note" rows

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now() { echo "$EPOCHREALTIME"; }
# calc EXPR: floating point arithmetic through python3 (always present here).
calc() { "$PY" -c "print($1)"; }
fmt() { "$PY" -c "print(f'{$1:$2}')"; }
row() { SUMMARY+=("$1|$2|${3:-}"); }

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    local ns
    for ns in "${NAMESPACES[@]}"; do
        ip netns del "$ns" 2>/dev/null || log "could not delete namespace $ns"
    done
    if [[ -n "$WORK" && -d "$WORK" ]]; then
        if [[ "$KEEP" == 1 ]]; then
            log "work dir kept: $WORK"
        elif [[ $rc -ne 0 ]]; then
            # Keep the logs for a post-mortem, not the big data files.
            find "$WORK" -type f \( -name '*.bin' -o -name '*.part' -o -name '*.tmp' \) -delete 2>/dev/null || true
            log "failed (exit $rc); logs kept in $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# stop_pid PID: SIGTERM (a clean stop says goodbye to peers), then SIGKILL.
stop_pid() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    local keep=() p
    for p in "${PIDS[@]}"; do [[ "$p" == "$pid" ]] || keep+=("$p"); done
    PIDS=("${keep[@]+"${keep[@]}"}")
}

# wait_for SECS DESCRIPTION CMD...: polls CMD every 0.1 s until it succeeds.
wait_for() {
    local secs=$1 what=$2; shift 2
    local deadline
    deadline=$(calc "$(now) + $secs")
    until "$@" >/dev/null 2>&1; do
        if "$PY" -c "import sys,time; sys.exit(0 if time.time() > $deadline else 1)"; then
            die "timed out after ${secs}s waiting for: $what"
        fi
        sleep 0.1
    done
}

# cpu_ticks PID: user + system CPU time of a process, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
CLK_TCK=$(getconf CLK_TCK)

vmhwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
mib_of_kib() { fmt "$1 / 1024" .1f; }

# start_node NS HOME NAME ADDR GROUP: starts `lanshare up`, sets NODE_PID.
# NS is "-" for the root namespace (then ADDR must be 127.0.0.1). Flags in
# the array NODE_EXTRA (such as --swarm-key-file F) are added; NODE_BIN, when
# set, is the binary started instead of $BIN.
NODE_EXTRA=()
NODE_BIN=""
start_node() {
    local ns=$1 home=$2 name=$3 addr=$4 group=$5
    mkdir -p "$home/shared"
    local cmd=("${NODE_BIN:-$BIN}" up --home "$home" --name "$name" --listen "$addr:0"
        --interface "$addr" --group "$group" --announce-interval 1 --no-mdns
        "${NODE_EXTRA[@]+"${NODE_EXTRA[@]}"}")
    if [[ "$ns" == "-" ]]; then
        "${cmd[@]}" >"$home.up.log" 2>&1 &
    else
        # `ip netns exec` execs the command, so $! is lanshare's PID.
        ip netns exec "$ns" "${cmd[@]}" >"$home.up.log" 2>&1 &
    fi
    NODE_PID=$!
    PIDS+=("$NODE_PID")
    wait_for 20 "node $name to start (see $home.up.log)" grep -q "listening on" "$home.up.log"
    kill -0 "$NODE_PID" 2>/dev/null || die "node $name exited: $(cat "$home.up.log")"
}

# in_ns NS CMD...: runs CMD in namespace NS ("-" = here).
in_ns() {
    local ns=$1; shift
    if [[ "$ns" == "-" ]]; then "$@"; else ip netns exec "$ns" "$@"; fi
}

# shared_contents NS HOME: prints the node's shared_contents.
shared_contents() {
    in_ns "$1" "$BIN" status --home "$2" --json 2>/dev/null |
        "$PY" -c 'import json,sys; print(json.load(sys.stdin)["shared_contents"])'
}
has_shared() { [[ "$(shared_contents "$1" "$2")" -ge "$3" ]]; }

# holders NS HOME FILE: prints how many complete holders the node sees for FILE.
holders() {
    in_ns "$1" "$BIN" ls --home "$2" --json 2>/dev/null | "$PY" -c '
import json, sys
name = sys.argv[1]
views = json.load(sys.stdin)
print(max([v["complete"] for v in views if v["name"] == name or name in v["names"]] or [0]))
' "$3"
}
has_holders() { [[ "$(holders "$1" "$2" "$3")" -ge "$4" ]]; }

# make_file PATH MB: a file of MB MiB from a repeated 64 MiB random block
# (chunks are hashed independently, so repetition changes nothing).
make_file() {
    local path=$1 mb=$2
    local block=$WORK/block64.bin
    [[ -f "$block" ]] || head -c $((64 << 20)) /dev/urandom >"$block"
    : >"$path"
    local left=$mb
    while (( left >= 64 )); do cat "$block" >>"$path"; left=$((left - 64)); done
    if (( left > 0 )); then head -c $((left << 20)) "$block" >>"$path"; fi
    # No writeback of this file may overlap a timed run.
    sync "$path"
}

# timed_fetch NS HOME NAME LOG: runs `lanshare fetch --json`, sets FETCH_SECS
# (command start to exit, as the user sees it), NODE_SECS (the node's own
# figure) and, from the time-stamped progress events (every 200 ms),
# FIRST_SECS (until the first progress event), RECV_SECS (until every byte
# was received and verified per chunk) and TAIL_SECS (from then to the end:
# the whole-file SHA-256 check catching up, and the rename).
timed_fetch() {
    local ns=$1 home=$2 name=$3 out=$4
    local t0 t1 rcs
    t0=$(now)
    set +e
    # Time-stamped by a bash builtin loop: no interpreter start-up in the way.
    in_ns "$ns" "$BIN" fetch "$name" --home "$home" --json 2>&1 |
        while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done >"$out"
    rcs=("${PIPESTATUS[@]}")
    set -e
    t1=$(now)
    [[ "${rcs[0]}" == 0 ]] || die "lanshare fetch $name failed (exit ${rcs[0]}): $(tail -5 "$out")"
    FETCH_SECS=$(calc "$t1 - $t0")
    read -r NODE_SECS FIRST_SECS RECV_SECS TAIL_SECS < <("$PY" -c '
import json, sys
t0, t1 = float(sys.argv[2]), float(sys.argv[3])
node = first = recv = done_t = float("nan")
for line in open(sys.argv[1]):
    ts, _, rest = line.partition(" ")
    try: ev, ts = json.loads(rest), float(ts)
    except ValueError: continue
    if not isinstance(ev, dict): continue
    if "Progress" in ev:
        p = ev["Progress"]
        if first != first: first = ts - t0
        if recv != recv and p["size"] and p["done"] >= p["size"]: recv = ts - t0
    if "Done" in ev:
        node, done_t = ev["Done"]["secs"], ts
        if recv != recv: recv = ts - t0
print(node, first, recv, (t1 - t0) - recv)
' "$out" "$t0" "$t1")
}

# prime_memory MB: writes and deletes a scratch file of MB MiB, outside any
# timing. On a VM with free page reporting (virtio_balloon; see
# /sys/module/page_reporting) or lazily backed RAM, writing into pages the
# host has not backed costs ~10x more (measured on the reference VM: `dd` of
# 1 GiB into new page cache 3.4 s, into just-freed pages 0.33 s); without
# this, whichever contender happens to get unbacked pages loses. It narrows
# that noise but cannot remove it: compare the best runs.
prime_memory() {
    head -c $(($1 << 20)) "$SRC" >"$WORK/prime.tmp"
    rm -f "$WORK/prime.tmp"
}

gibps() { fmt "$1 / 1024 / $2" .3f; }   # MB SECS -> GiB/s

########################################################################
# Setup
########################################################################

command -v curl >/dev/null || die "curl is needed"
command -v openssl >/dev/null || die "openssl is needed"

log "building (cargo build --release; for b) cargo bench --no-run --bench index_file)"
(cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
if [[ "$PARTS" == *b* ]]; then
    (cd "$ROOT" && cargo bench --no-run --quiet --bench index_file) || die "building benches/index_file.rs failed"
fi
[[ -x "$BIN" ]] || die "no $BIN after the build"

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
WORK=${BENCH_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/lanshare-bench.XXXXXX")}
mkdir -p "$WORK"
RESULTS=${RESULTS:-$ROOT/target/bench/summary-$(date +%Y%m%d-%H%M%S).txt}
mkdir -p "$(dirname "$RESULTS")"
log "work dir $WORK; group $GROUP_IP, ports from $PORT_BASE"

FILE_NAME=bench-${SIZE_MB}m.bin
SRC=$WORK/seed/shared/$FILE_NAME
mkdir -p "$WORK/seed/shared"
if [[ "$PARTS" == *[abe]* ]]; then
    log "creating a ${SIZE_MB} MiB file"
    make_file "$SRC" "$SIZE_MB"
    SIZE_BYTES=$(stat -c %s "$SRC")
fi

########################################################################
# a) + c) loopback fetch vs http.server + curl, with peak RSS
########################################################################
if [[ "$PARTS" == *a* ]]; then

GROUP_A="$GROUP_IP:$PORT_BASE"
log "a) seeder on 127.0.0.1, group $GROUP_A"
cat "$SRC" >/dev/null   # warm the page cache once, for both contenders
t0=$(now)
start_node - "$WORK/seed" seed 127.0.0.1 "$GROUP_A"
SEED_PID=$NODE_PID
wait_for 600 "the seeder to index $FILE_NAME" has_shared - "$WORK/seed" 1
SEED_READY=$(calc "$(now) - $t0")
log "seeder indexed ${SIZE_MB} MiB and is sharing after $(fmt "$SEED_READY" .2f) s"

# http.server on an ephemeral port, serving the seeder's shared dir.
"$PY" -u -m http.server 0 --bind 127.0.0.1 --directory "$WORK/seed/shared" \
    >"$WORK/http.log" 2>&1 &
HTTP_PID=$!
PIDS+=("$HTTP_PID")
wait_for 20 "http.server to start" grep -q "Serving HTTP" "$WORK/http.log"
HTTP_PORT=$(sed -n 's/.*port \([0-9]*\).*/\1/p' "$WORK/http.log" | head -1)
[[ -n "$HTTP_PORT" ]] || die "cannot read http.server's port: $(cat "$WORK/http.log")"

LS_BEST=""; CURL_BEST=""; LS_ALL=(); CURL_ALL=(); FETCH_HWM=0; SEED_HWM=0
LS_CPU_MIN=""; CURL_CPU_MIN=""
for rep in $(seq "$REPS"); do
    home=$WORK/fetch$rep
    start_node - "$home" "fetch$rep" 127.0.0.1 "$GROUP_A"
    fpid=$NODE_PID
    wait_for 30 "fetcher $rep to see $FILE_NAME" has_holders - "$home" "$FILE_NAME" 1
    cat "$SRC" >/dev/null
    prime_memory "$SIZE_MB"
    cpu0=$(( $(cpu_ticks "$fpid") + $(cpu_ticks "$SEED_PID") ))
    timed_fetch - "$home" "$FILE_NAME" "$WORK/fetch$rep.out"
    cpu=$(calc "($(cpu_ticks "$fpid") + $(cpu_ticks "$SEED_PID") - $cpu0) / $CLK_TCK")
    [[ -z "$LS_CPU_MIN" ]] || "$PY" -c "import sys; sys.exit(0 if $cpu < $LS_CPU_MIN else 1)" && LS_CPU_MIN=$cpu
    f_hwm=$(vmhwm_kib "$fpid"); s_hwm=$(vmhwm_kib "$SEED_PID")
    (( f_hwm > FETCH_HWM )) && FETCH_HWM=$f_hwm
    (( s_hwm > SEED_HWM )) && SEED_HWM=$s_hwm
    log "lanshare fetch $rep: $(fmt "$FETCH_SECS" .3f) s ($(gibps "$SIZE_MB" "$FETCH_SECS") GiB/s; node says $(fmt "$NODE_SECS" .3f) s; first progress $(fmt "$FIRST_SECS" .2f) s, all received $(fmt "$RECV_SECS" .2f) s, tail $(fmt "$TAIL_SECS" .2f) s; CPU $(fmt "$cpu" .2f) s); VmHWM fetcher $(mib_of_kib "$f_hwm") MiB, seeder $(mib_of_kib "$s_hwm") MiB"
    # Flush what the run wrote (outside the timing) so its writeback does not
    # slow the next run down; then check every byte.
    sync "$home/downloads/$FILE_NAME"
    cmp "$SRC" "$home/downloads/$FILE_NAME" || die "downloaded file differs from the original"
    LS_ALL+=("$(fmt "$FETCH_SECS" .3f)")
    if [[ -z "$LS_BEST" ]] || "$PY" -c "import sys; sys.exit(0 if $FETCH_SECS < $LS_BEST else 1)"; then
        LS_BEST=$FETCH_SECS
        LS_DETAIL="first progress $(fmt "$FIRST_SECS" .2f) s, all received $(fmt "$RECV_SECS" .2f) s, tail $(fmt "$TAIL_SECS" .2f) s"
    fi
    stop_pid "$fpid"
    rm -rf "$home"

    out=$WORK/curl$rep.bin
    cat "$SRC" >/dev/null
    prime_memory "$SIZE_MB"
    cpu0=$(cpu_ticks "$HTTP_PID")
    t0=$(now)
    /usr/bin/time -f '%U %S' -o "$WORK/curl.cpu" \
        curl -sS --fail -o "$out" "http://127.0.0.1:$HTTP_PORT/$FILE_NAME" || die "curl failed"
    t1=$(now)
    secs=$(calc "$t1 - $t0")
    cpu=$(calc "($(cpu_ticks "$HTTP_PID") - $cpu0) / $CLK_TCK + $(tail -1 "$WORK/curl.cpu" | tr ' ' '+')")
    [[ -z "$CURL_CPU_MIN" ]] || "$PY" -c "import sys; sys.exit(0 if $cpu < $CURL_CPU_MIN else 1)" && CURL_CPU_MIN=$cpu
    log "curl $rep: $(fmt "$secs" .3f) s ($(gibps "$SIZE_MB" "$secs") GiB/s; CPU $(fmt "$cpu" .2f) s)"
    sync "$out"
    [[ "$(stat -c %s "$out")" == "$SIZE_BYTES" ]] || die "curl got a short file"
    CURL_ALL+=("$(fmt "$secs" .3f)")
    [[ -z "$CURL_BEST" ]] || "$PY" -c "import sys; sys.exit(0 if $secs < $CURL_BEST else 1)" && CURL_BEST=$secs
    rm -f "$out"
done
stop_pid "$HTTP_PID"

LS_GIBPS=$(gibps "$SIZE_MB" "$LS_BEST")
CURL_GIBPS=$(gibps "$SIZE_MB" "$CURL_BEST")
FETCH_RATIO=$(fmt "$CURL_BEST / $LS_BEST" .2f)
row "a) lanshare fetch ${SIZE_MB} MiB, loopback, 1 seeder" "$LS_GIBPS GiB/s" "best of ${LS_ALL[*]} s; verified"
row "a) http.server + curl ${SIZE_MB} MiB" "$CURL_GIBPS GiB/s" "best of ${CURL_ALL[*]} s; unverified"
row "a) RATIO lanshare / curl throughput" "${FETCH_RATIO}x" "aim 1.0x"
row "   best lanshare run, phases" "" "$LS_DETAIL"
row "   CPU s, lanshare seeder+fetcher nodes" "$(fmt "$LS_CPU_MIN" .2f) s" "info: least of the runs (user+sys)"
row "   CPU s, http.server + curl" "$(fmt "$CURL_CPU_MIN" .2f) s" "info: least of the runs (user+sys)"
row "c) peak RSS seeder, ${SIZE_MB} MiB" "$(mib_of_kib "$SEED_HWM") MiB" "VmHWM incl. indexing; aim <= 32 MiB"
row "c) peak RSS fetcher, ${SIZE_MB} MiB" "$(mib_of_kib "$FETCH_HWM") MiB" "VmHWM; aim <= 32 MiB"
row "   seeder up -> sharing ${SIZE_MB} MiB" "$(fmt "$SEED_READY" .2f) s" "info: start + index, polled"
stop_pid "$SEED_PID"

fi  # PARTS a
########################################################################
# b) indexing: hash_file vs openssl dgst -sha256
########################################################################
if [[ "$PARTS" == *b* ]]; then

log "b) indexing ${SIZE_MB} MiB: hash_file vs openssl dgst -sha256"
cat "$SRC" >/dev/null
IDX_OUT=$WORK/index_file.out
(cd "$ROOT" && LANSHARE_BENCH_FILE="$SRC" LANSHARE_BENCH_REPEAT="$((REPS + 1))" \
    cargo bench --quiet --bench index_file) >"$IDX_OUT" 2>&1 || die "index_file bench failed: $(cat "$IDX_OUT")"
grep '^index_file run' "$IDX_OUT" >&2 || true
IDX_SECS=$(sed -n 's/^index_file bytes=.* median_secs=\([0-9.]*\).*/\1/p' "$IDX_OUT")
[[ -n "$IDX_SECS" ]] || die "no result from index_file: $(cat "$IDX_OUT")"
SSL_ALL=()
for _ in $(seq "$((REPS + 1))"); do
    t0=$(now)
    openssl dgst -sha256 "$SRC" >/dev/null
    t1=$(now)
    SSL_ALL+=("$(calc "$t1 - $t0")")
done
SSL_SECS=$("$PY" -c "import statistics,sys; print(statistics.median(map(float, sys.argv[1:])))" "${SSL_ALL[@]}")
log "openssl dgst -sha256 runs: ${SSL_ALL[*]} s"
INDEX_RATIO=$(fmt "$SSL_SECS / $IDX_SECS" .2f)
row "b) hash_file ${SIZE_MB} MiB (blake3 chunks + sha256)" "$(gibps "$SIZE_MB" "$IDX_SECS") GiB/s" "median, $(fmt "$IDX_SECS" .3f) s"
row "b) openssl dgst -sha256 ${SIZE_MB} MiB" "$(gibps "$SIZE_MB" "$SSL_SECS") GiB/s" "median, $(fmt "$SSL_SECS" .3f) s"
row "b) RATIO openssl time / lanshare time" "${INDEX_RATIO}x" "aim 0.9x"

fi  # PARTS b
########################################################################
# c) peak RSS with a big file (optional)
########################################################################

if [[ "$BIG" == 1 && "$PARTS" == *a* ]]; then
    GROUP_C="$GROUP_IP:$((PORT_BASE + 1))"
    BIG_NAME=bench-${BIG_MB}m.bin
    log "c) ${BIG_MB} MiB file for peak RSS (group $GROUP_C)"
    rm -rf "$WORK/seed"   # the SIZE_MB copy is no longer needed
    mkdir -p "$WORK/bigseed/shared"
    make_file "$WORK/bigseed/shared/$BIG_NAME" "$BIG_MB"
    t0=$(now)
    start_node - "$WORK/bigseed" bigseed 127.0.0.1 "$GROUP_C"
    bseed=$NODE_PID
    wait_for 1800 "the seeder to index $BIG_NAME" has_shared - "$WORK/bigseed" 1
    log "big seeder sharing after $(fmt "$(calc "$(now) - $t0")" .1f) s"
    start_node - "$WORK/bigfetch" bigfetch 127.0.0.1 "$GROUP_C"
    bfetch=$NODE_PID
    wait_for 30 "big fetcher to see $BIG_NAME" has_holders - "$WORK/bigfetch" "$BIG_NAME" 1
    timed_fetch - "$WORK/bigfetch" "$BIG_NAME" "$WORK/bigfetch.out"
    f_hwm=$(vmhwm_kib "$bfetch"); s_hwm=$(vmhwm_kib "$bseed")
    row "c) peak RSS seeder, ${BIG_MB} MiB" "$(mib_of_kib "$s_hwm") MiB" "aim: same as for ${SIZE_MB} MiB"
    row "c) peak RSS fetcher, ${BIG_MB} MiB" "$(mib_of_kib "$f_hwm") MiB" "fetch $(fmt "$FETCH_SECS" .1f) s, $(gibps "$BIG_MB" "$FETCH_SECS") GiB/s"
    stop_pid "$bfetch"; stop_pid "$bseed"
    rm -rf "$WORK/bigseed" "$WORK/bigfetch"
else
    row "c) peak RSS, ${BIG_MB} MiB" "skipped" "run with BIG=1 (needs ~$((BIG_MB * 2 / 1024)) GiB of disk)"
fi

########################################################################
# d) 4 shaped seeders vs 1, in network namespaces
########################################################################

netns_reason=""
if [[ "$NETNS" == 0 ]]; then netns_reason="NETNS=0"
elif [[ "$PARTS" != *d* ]]; then netns_reason="not in PARTS=$PARTS"
elif [[ $EUID -ne 0 ]]; then netns_reason="not root"
elif ! command -v ip >/dev/null; then netns_reason="no ip (iproute2)"
elif ! command -v tc >/dev/null; then netns_reason="no tc (iproute2)"
fi

if [[ -z "$netns_reason" ]]; then
    N=$NETNS_SEEDERS
    GROUP_D="$GROUP_IP:$((PORT_BASE + 2))"
    SW=lsb$TAG-sw
    BR=br0
    log "d) namespaces: switch $SW, 1 fetcher + $N seeders shaped to $NETNS_RATE, ${NETNS_MB} MiB file"
    ip netns add "$SW" || die "ip netns add failed"
    NAMESPACES+=("$SW")
    ip -n "$SW" link set lo up
    ip -n "$SW" link add "$BR" type bridge mcast_snooping 0
    ip -n "$SW" link set "$BR" multicast on up
    # host 0 is the fetcher (10.77.0.1), hosts 1..N the seeders (10.77.0.11..).
    HOST_NS=(); HOST_ADDR=()
    for i in $(seq 0 "$N"); do
        ns=lsb$TAG-h$i
        addr=10.77.0.$(( i == 0 ? 1 : 10 + i ))
        ip netns add "$ns"
        NAMESPACES+=("$ns")
        ip -n "$SW" link add "p$i" type veth peer name eth0 netns "$ns"
        ip -n "$SW" link set "p$i" master "$BR" multicast on up
        ip -n "$ns" link set lo up
        ip -n "$ns" addr add "$addr/24" dev eth0
        ip -n "$ns" link set eth0 multicast on up
        ip -n "$ns" route add 224.0.0.0/4 dev eth0
        if (( i > 0 )); then
            ip netns exec "$ns" tc qdisc add dev eth0 root tbf rate "$NETNS_RATE" burst 256kb latency 50ms
        fi
        HOST_NS+=("$ns"); HOST_ADDR+=("$addr")
    done

    NS_NAME=netns-${NETNS_MB}m.bin
    make_file "$WORK/$NS_NAME" "$NETNS_MB"
    cat "$WORK/$NS_NAME" >/dev/null
    SEEDER_PIDS=()
    for i in $(seq 1 "$N"); do
        mkdir -p "$WORK/ns-seed$i/shared"
        ln "$WORK/$NS_NAME" "$WORK/ns-seed$i/shared/$NS_NAME"
        start_node "${HOST_NS[$i]}" "$WORK/ns-seed$i" "seed$i" "${HOST_ADDR[$i]}" "$GROUP_D"
        SEEDER_PIDS+=("$NODE_PID")
    done
    for i in $(seq 1 "$N"); do
        wait_for 120 "seeder $i to index" has_shared "${HOST_NS[$i]}" "$WORK/ns-seed$i" 1
    done

    # All seeders online.
    start_node "${HOST_NS[0]}" "$WORK/ns-fetchA" fetchA "${HOST_ADDR[0]}" "$GROUP_D"
    fA=$NODE_PID
    wait_for 30 "the fetcher to see $N holders" has_holders "${HOST_NS[0]}" "$WORK/ns-fetchA" "$NS_NAME" "$N"
    timed_fetch "${HOST_NS[0]}" "$WORK/ns-fetchA" "$NS_NAME" "$WORK/ns-fetchA.out"
    T_ALL=$FETCH_SECS
    log "d) $N seeders: $(fmt "$T_ALL" .2f) s ($(fmt "$NETNS_MB * 8 * 1.048576 / $T_ALL" .0f) Mbit/s)"
    cmp "$WORK/$NS_NAME" "$WORK/ns-fetchA/downloads/$NS_NAME" || die "netns download differs"
    stop_pid "$fA"

    # Only seeder 1 online (the others stop cleanly and say goodbye).
    for i in $(seq 2 "$N"); do stop_pid "${SEEDER_PIDS[$((i - 1))]}"; done
    start_node "${HOST_NS[0]}" "$WORK/ns-fetchB" fetchB "${HOST_ADDR[0]}" "$GROUP_D"
    fB=$NODE_PID
    wait_for 30 "the fetcher to see seeder 1" has_holders "${HOST_NS[0]}" "$WORK/ns-fetchB" "$NS_NAME" 1
    sleep 1.5   # let any stale announcement of a stopped seeder show up
    seen=$(holders "${HOST_NS[0]}" "$WORK/ns-fetchB" "$NS_NAME")
    [[ "$seen" == 1 ]] || die "expected 1 holder, the fetcher sees $seen"
    timed_fetch "${HOST_NS[0]}" "$WORK/ns-fetchB" "$NS_NAME" "$WORK/ns-fetchB.out"
    T_ONE=$FETCH_SECS
    log "d) 1 seeder: $(fmt "$T_ONE" .2f) s ($(fmt "$NETNS_MB * 8 * 1.048576 / $T_ONE" .0f) Mbit/s)"
    cmp "$WORK/$NS_NAME" "$WORK/ns-fetchB/downloads/$NS_NAME" || die "netns download differs"
    stop_pid "$fB"; stop_pid "${SEEDER_PIDS[0]}"

    row "d) ${NETNS_MB} MiB from $N seeders @ $NETNS_RATE" "$(fmt "$T_ALL" .2f) s" "$(fmt "$NETNS_MB * 8 * 1.048576 / $T_ALL" .0f) Mbit/s"
    row "d) ${NETNS_MB} MiB from 1 seeder @ $NETNS_RATE" "$(fmt "$T_ONE" .2f) s" "$(fmt "$NETNS_MB * 8 * 1.048576 / $T_ONE" .0f) Mbit/s"
    row "d) RATIO speedup $N seeders / 1" "$(fmt "$T_ONE / $T_ALL" .2f)x" "aim 3.95x"
    for ns in "${HOST_NS[@]}" "$SW"; do ip netns del "$ns" || true; done
    NAMESPACES=()
else
    log "d) skipped: $netns_reason"
    row "d) namespaces, $NETNS_SEEDERS seeders vs 1" "skipped" "$netns_reason"
fi

########################################################################
# e) private swarm vs plaintext vs curl, interleaved, with CPU per GiB
########################################################################
if [[ "$PARTS" == *e* ]]; then

GIB=$(calc "$SIZE_MB / 1024")
# BIG=1 deleted the SIZE_MB file to make room.
[[ -f "$SRC" ]] || make_file "$SRC" "$SIZE_MB"
KEY_FILE=$WORK/swarm.key
"$BIN" key new >"$KEY_FILE" || die "lanshare key new failed"
# The lanshare contenders: this build's, and with BASE_BIN the base build's.
E_MODES=(private open)
if [[ -n "$BASE_BIN" ]]; then
    [[ -x "$BASE_BIN" ]] || die "BASE_BIN=$BASE_BIN is not an executable"
    E_MODES+=(base-private base-open)
fi
# e_group MODE / e_extra MODE: the group of a contender's nodes, and the
# extra flags and binary of its nodes (NODE_EXTRA, NODE_BIN).
e_group() {
    local i
    for i in "${!E_MODES[@]}"; do
        [[ "${E_MODES[$i]}" != "$1" ]] || { echo "$GROUP_IP:$((PORT_BASE + 3 + i))"; return; }
    done
    die "no contender $1"
}
e_extra() {
    NODE_EXTRA=(); NODE_BIN=""
    [[ $1 != *private ]] || NODE_EXTRA=(--swarm-key-file "$KEY_FILE")
    [[ $1 != base-* ]] || NODE_BIN=$BASE_BIN
}

log "e) seeders on 127.0.0.1: ${E_MODES[*]}"
cat "$SRC" >/dev/null
declare -A E_SEED_PID
for mode in "${E_MODES[@]}"; do
    mkdir -p "$WORK/e-seed-$mode/shared"
    ln -f "$SRC" "$WORK/e-seed-$mode/shared/$FILE_NAME"
    e_extra "$mode"
    start_node - "$WORK/e-seed-$mode" "e-seed-$mode" 127.0.0.1 "$(e_group "$mode")"
    E_SEED_PID[$mode]=$NODE_PID
done
NODE_EXTRA=(); NODE_BIN=""
for mode in "${E_MODES[@]}"; do
    wait_for 600 "the $mode seeder to index $FILE_NAME" has_shared - "$WORK/e-seed-$mode" 1
done
swarm=$("$BIN" status --home "$WORK/e-seed-private" --json | "$PY" -c 'import json,sys; print(json.load(sys.stdin).get("swarm", "?"))')
[[ "$swarm" == private ]] || die "the private seeder says its swarm is '$swarm'"
"$PY" -u -m http.server 0 --bind 127.0.0.1 --directory "$WORK/seed/shared" \
    >"$WORK/e-http.log" 2>&1 &
E_HTTP_PID=$!
PIDS+=("$E_HTTP_PID")
wait_for 20 "http.server to start" grep -q "Serving HTTP" "$WORK/e-http.log"
E_HTTP_PORT=$(sed -n 's/.*port \([0-9]*\).*/\1/p' "$WORK/e-http.log" | head -1)
[[ -n "$E_HTTP_PORT" ]] || die "cannot read http.server's port: $(cat "$WORK/e-http.log")"

declare -A E_BEST E_ALL E_SEED_CPU E_FETCH_CPU
# e_keep_min ARRAY MODE VALUE: ARRAY[MODE] = min(ARRAY[MODE], VALUE).
e_keep_min() {
    local -n arr=$1
    if [[ -z "${arr[$2]:-}" ]] || "$PY" -c "import sys; sys.exit(0 if $3 < ${arr[$2]} else 1)"; then
        arr[$2]=$3
    fi
}

# thread_ticks PID: "TID NAME TICKS" per thread (utime+stime; the name may
# hold spaces, so the fields are counted after its closing parenthesis).
thread_ticks() {
    local t
    for t in /proc/"$1"/task/*; do
        printf '%s %s %s\n' "${t##*/}" "$(tr ' ' _ <"$t/comm")" \
            "$(sed 's/.*) //' "$t/stat" | awk '{print $12 + $13}')"
    done 2>/dev/null
}
# thread_report BEFORE AFTER LABEL: CPU seconds per thread between two
# thread_ticks snapshots (threads that used at least 0.02 s).
thread_report() {
    "$PY" - "$1" "$2" "$3" "$CLK_TCK" <<'PYEOF'
import sys
before = {l.split()[0]: int(l.split()[2]) for l in sys.argv[1].splitlines() if l.strip()}
rows = []
for l in sys.argv[2].splitlines():
    if not l.strip():
        continue
    tid, name, t = l.split()
    d = (int(t) - before.get(tid, 0)) / int(sys.argv[4])
    if d >= 0.02:
        rows.append((d, tid, name))
print(f"e) {sys.argv[3]} threads (CPU s):", ", ".join(f"{n}[{t}] {d:.2f}" for d, t, n in sorted(rows, reverse=True)))
PYEOF
}

# e_lanshare MODE REP: one fetch from the MODE seeder by a new fetcher node.
# With E_THREADS=1, also the CPU of each thread of seeder and fetcher.
e_lanshare() {
    local mode=$1 rep=$2 home=$WORK/e-fetch-$1-$2
    local seed=${E_SEED_PID[$mode]}
    e_extra "$mode"
    start_node - "$home" "e-fetch-$mode-$rep" 127.0.0.1 "$(e_group "$mode")"
    NODE_EXTRA=(); NODE_BIN=""
    local fpid=$NODE_PID
    wait_for 60 "the $mode fetcher $rep to see $FILE_NAME" has_holders - "$home" "$FILE_NAME" 1
    cat "$SRC" >/dev/null
    prime_memory "$SIZE_MB"
    local s0 f0 s_cpu f_cpu
    s0=$(cpu_ticks "$seed"); f0=$(cpu_ticks "$fpid")
    local st0 ft0
    [[ "${E_THREADS:-0}" != 1 ]] || { st0=$(thread_ticks "$seed"); ft0=$(thread_ticks "$fpid"); }
    timed_fetch - "$home" "$FILE_NAME" "$WORK/e-fetch-$mode-$rep.out"
    if [[ "${E_THREADS:-0}" == 1 ]]; then
        thread_report "$st0" "$(thread_ticks "$seed")" "$mode seeder $rep" >&2
        thread_report "$ft0" "$(thread_ticks "$fpid")" "$mode fetcher $rep" >&2
    fi
    s_cpu=$(calc "($(cpu_ticks "$seed") - $s0) / $CLK_TCK")
    f_cpu=$(calc "($(cpu_ticks "$fpid") - $f0) / $CLK_TCK")
    log "e) $mode fetch $rep: $(fmt "$FETCH_SECS" .3f) s ($(gibps "$SIZE_MB" "$FETCH_SECS") GiB/s; all received $(fmt "$RECV_SECS" .2f) s, tail $(fmt "$TAIL_SECS" .2f) s); CPU seeder $(fmt "$s_cpu" .2f) s, fetcher $(fmt "$f_cpu" .2f) s"
    sync "$home/downloads/$FILE_NAME"
    cmp "$SRC" "$home/downloads/$FILE_NAME" || die "the $mode download differs from the original"
    E_ALL[$mode]="${E_ALL[$mode]:-}$(fmt "$FETCH_SECS" .3f) "
    e_keep_min E_BEST "$mode" "$FETCH_SECS"
    e_keep_min E_SEED_CPU "$mode" "$s_cpu"
    e_keep_min E_FETCH_CPU "$mode" "$f_cpu"
    stop_pid "$fpid"
    rm -rf "$home"
}

# e_curl REP: one `curl -o` from http.server.
e_curl() {
    local out=$WORK/e-curl$1.bin t0 t1 s0 secs s_cpu f_cpu
    cat "$SRC" >/dev/null
    prime_memory "$SIZE_MB"
    s0=$(cpu_ticks "$E_HTTP_PID")
    t0=$(now)
    /usr/bin/time -f '%U %S' -o "$WORK/e-curl.cpu" \
        curl -sS --fail -o "$out" "http://127.0.0.1:$E_HTTP_PORT/$FILE_NAME" || die "curl failed"
    t1=$(now)
    secs=$(calc "$t1 - $t0")
    s_cpu=$(calc "($(cpu_ticks "$E_HTTP_PID") - $s0) / $CLK_TCK")
    f_cpu=$(calc "$(tail -1 "$WORK/e-curl.cpu" | tr ' ' '+')")
    log "e) curl $1: $(fmt "$secs" .3f) s ($(gibps "$SIZE_MB" "$secs") GiB/s); CPU http.server $(fmt "$s_cpu" .2f) s, curl $(fmt "$f_cpu" .2f) s"
    sync "$out"
    [[ "$(stat -c %s "$out")" == "$SIZE_BYTES" ]] || die "curl got a short file"
    E_ALL[curl]="${E_ALL[curl]:-}$(fmt "$secs" .3f) "
    e_keep_min E_BEST curl "$secs"
    e_keep_min E_SEED_CPU curl "$s_cpu"
    e_keep_min E_FETCH_CPU curl "$f_cpu"
    rm -f "$out"
}

E_ORDER=("${E_MODES[@]}" curl)
E_N=${#E_ORDER[@]}
for rep in $(seq "$REPS"); do
    # Rotate the order, so no contender always runs first (or last).
    for i in $(seq 0 $((E_N - 1))); do
        what=${E_ORDER[$(( (i + rep - 1) % E_N ))]}
        if [[ "$what" == curl ]]; then e_curl "$rep"; else e_lanshare "$what" "$rep"; fi
    done
done
stop_pid "$E_HTTP_PID"
for mode in "${E_MODES[@]}"; do
    stop_pid "${E_SEED_PID[$mode]}"
    rm -rf "$WORK/e-seed-$mode"
done

for what in "${E_ORDER[@]}"; do
    case $what in
        private) label="lanshare fetch, private swarm (encrypted)"; note="verified";;
        open) label="lanshare fetch, open (plaintext)"; note="verified";;
        base-private) label="BASE_BIN fetch, private swarm"; note="verified";;
        base-open) label="BASE_BIN fetch, open (plaintext)"; note="verified";;
        curl) label="http.server + curl"; note="unverified";;
    esac
    row "e) $label ${SIZE_MB} MiB" "$(gibps "$SIZE_MB" "${E_BEST[$what]}") GiB/s" "best of ${E_ALL[$what]}s; $note"
done
row "e) RATIO private / plaintext throughput" "$(fmt "${E_BEST[open]} / ${E_BEST[private]}" .2f)x" "aim >= 0.8x"
row "e) RATIO private / curl throughput" "$(fmt "${E_BEST[curl]} / ${E_BEST[private]}" .2f)x" "aim >= 0.75x"
row "e) RATIO plaintext / curl throughput" "$(fmt "${E_BEST[curl]} / ${E_BEST[open]}" .2f)x" "aim >= 0.9x"
row "e) RATIO CPU plaintext / curl (both sides)" "$(fmt "(${E_SEED_CPU[open]} + ${E_FETCH_CPU[open]}) / (${E_SEED_CPU[curl]} + ${E_FETCH_CPU[curl]})" .2f)x" "aim <= 1.3x"
if [[ -n "$BASE_BIN" ]]; then
    row "e) RATIO A/B plaintext: this / BASE_BIN throughput" "$(fmt "${E_BEST[base-open]} / ${E_BEST[open]}" .2f)x" "best against best"
    row "e) RATIO A/B private: this / BASE_BIN throughput" "$(fmt "${E_BEST[base-private]} / ${E_BEST[private]}" .2f)x" "best against best"
fi
for what in "${E_ORDER[@]}"; do
    case $what in
        curl) sides="http.server / curl";;
        *) sides="seeder / fetcher";;
    esac
    row "   CPU s per GiB, $what: $sides" "$(fmt "${E_SEED_CPU[$what]} / $GIB" .2f) / $(fmt "${E_FETCH_CPU[$what]} / $GIB" .2f)" "least of the runs (user+sys)"
done

fi  # PARTS e

########################################################################
# f) 100,000 small files: indexing vs sha256sum, RSS, ls --json
########################################################################
if [[ "$PARTS" == *f* ]]; then
    # shellcheck source=scripts/bench/files.sh
    source "$ROOT/scripts/bench/files.sh"
fi

########################################################################
# g) a new holder seen through a tracker across a router, vs multicast
########################################################################
if [[ "$PARTS" == *g* ]]; then
    # shellcheck source=scripts/bench/tracker.sh
    source "$ROOT/scripts/bench/tracker.sh"
fi

########################################################################
# h) a folder of many small files, one and two holders, vs tar over TCP
########################################################################
if [[ "$PARTS" == *h* ]]; then
    # shellcheck source=scripts/bench/folders.sh
    source "$ROOT/scripts/bench/folders.sh"
fi

########################################################################
# Summary
########################################################################

{
    echo "lanshare benchmark $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(nproc) cores, $(uname -r)"
    echo "cpu: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
    echo "load average (1/5/15 min) at start: $LOAD_START, at end: $(cut -d' ' -f1-3 /proc/loadavg) (more than ~0.5 means other work competed)"
    echo "commit: $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$ROOT" && git diff --quiet 2>/dev/null || echo ' (dirty tree)')"
    echo
    printf '%-52s %14s  %s\n' "measurement" "value" "note"
    printf '%-52s %14s  %s\n' "-----------" "-----" "----"
    for r in "${SUMMARY[@]}"; do
        IFS='|' read -r m v n <<<"$r"
        printf '%-52s %14s  %s\n' "$m" "$v" "$n"
    done
} | tee "$RESULTS"
log "summary written to $RESULTS"
