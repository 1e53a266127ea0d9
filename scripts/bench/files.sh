# Part f) of scripts/bench.sh (sourced by it; uses its helpers and WORK):
# many small files. Measures, in one run:
#   - indexing FILES_N files of 1-4 KiB in FILES_DIRS folders: a fresh node's
#     `up` until `status` says it shares them all, vs
#     `find DIR -type f -print0 | xargs -0 sha256sum` over the same tree
#     (both with the tree in the page cache). Ratio = lanshare / sha256sum
#     time (aim <= 3x).
#   - peak RSS (VmHWM) of the node that shares them (aim <= 64 MiB) and of a
#     second node that has pulled and lists them (aim <= 48 MiB), waited for
#     through `peers --json` so no listing inflates it;
#   - the rise of that second node's peak RSS while it answers
#     `ls --json` of every entry (aim <= +16 MiB).
# Environment: FILES_N=100000 FILES_DIRS=100.

FILES_N=${FILES_N:-100000}
FILES_DIRS=${FILES_DIRS:-100}

# peer_contents NS HOME: the largest contents count among the node's peers.
peer_contents() {
    in_ns "$1" "$BIN" peers --home "$2" --json 2>/dev/null |
        "$PY" -c 'import json,sys; print(max([p["contents"] for p in json.load(sys.stdin)] or [0]))'
}
has_peer_contents() { [[ "$(peer_contents "$1" "$2")" -ge "$3" ]]; }

log "f) creating $FILES_N files of 1-4 KiB in $FILES_DIRS folders"
MANY=$WORK/many
"$PY" - "$MANY/shared" "$FILES_N" "$FILES_DIRS" <<'PYEOF'
import os, random, sys
root, n, dirs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(14)
for d in range(dirs):
    os.makedirs(f"{root}/folder{d:03}", exist_ok=True)
for i in range(n):
    with open(f"{root}/folder{i % dirs:03}/file{i:06}.txt", "wb") as f:
        f.write(os.urandom(rng.randint(1024, 4096)))
PYEOF
sync

# The reference, cache warm (one untimed pass first), median of REPS.
find "$MANY/shared" -type f -print0 | xargs -0 cat >/dev/null
SHA_ALL=()
for _ in $(seq "$REPS"); do
    t0=$(now)
    find "$MANY/shared" -type f -print0 | xargs -0 sha256sum >/dev/null
    t1=$(now)
    SHA_ALL+=("$(calc "$t1 - $t0")")
done
SHA_SECS=$("$PY" -c "import statistics,sys; print(statistics.median(map(float, sys.argv[1:])))" "${SHA_ALL[@]}")
log "find | xargs sha256sum runs: ${SHA_ALL[*]} s"

GROUP_F="$GROUP_IP:$((PORT_BASE + 5))"
t0=$(now)
start_node - "$MANY" many 127.0.0.1 "$GROUP_F"
MANY_PID=$NODE_PID
wait_for 900 "the node to index $FILES_N files" has_shared - "$MANY" "$FILES_N"
INDEX_SECS=$(calc "$(now) - $t0")
SHARER_HWM=$(vmhwm_kib "$MANY_PID")
log "indexed $FILES_N files in $(fmt "$INDEX_SECS" .2f) s; sharer VmHWM $(mib_of_kib "$SHARER_HWM") MiB"

start_node - "$WORK/lister" lister 127.0.0.1 "$GROUP_F"
LISTER_PID=$NODE_PID
t0=$(now)
wait_for 600 "the lister to pull $FILES_N entries" has_peer_contents - "$WORK/lister" "$FILES_N"
PULL_SECS=$(calc "$(now) - $t0")
LISTER_HWM=$(vmhwm_kib "$LISTER_PID")
in_ns - "$BIN" ls --home "$WORK/lister" --json >"$WORK/ls.json"
LS_HWM=$(vmhwm_kib "$LISTER_PID")
LS_ROWS=$("$PY" -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' "$WORK/ls.json")
log "lister pulled in $(fmt "$PULL_SECS" .2f) s; VmHWM $(mib_of_kib "$LISTER_HWM") MiB, after ls --json ($LS_ROWS rows) $(mib_of_kib "$LS_HWM") MiB"
stop_pid "$LISTER_PID"
stop_pid "$MANY_PID"

row "f) index $FILES_N files (1-4 KiB, $FILES_DIRS folders), up -> sharing" "$(fmt "$INDEX_SECS" .2f) s" "polled every 0.1 s"
row "f) find + xargs sha256sum, same tree" "$(fmt "$SHA_SECS" .2f) s" "median of ${SHA_ALL[*]}"
row "f) RATIO lanshare / sha256sum time" "$(fmt "$INDEX_SECS / $SHA_SECS" .1f)x" "aim <= 3x"
row "f) peak RSS of the node sharing $FILES_N files" "$(mib_of_kib "$SHARER_HWM") MiB" "VmHWM; aim <= 64 MiB"
row "f) peak RSS of a peer that pulled them" "$(mib_of_kib "$LISTER_HWM") MiB" "VmHWM; aim <= 48 MiB; pull took $(fmt "$PULL_SECS" .2f) s"
row "f) rise of that peak during ls --json ($LS_ROWS rows)" "+$(mib_of_kib $((LS_HWM - LISTER_HWM))) MiB" "aim <= +16 MiB"
