# Part h) of scripts/bench.sh (sourced by it; uses its helpers and WORK):
# a folder of many small files. A tree of FOLDER_N files of 0-16 KiB in
# nested folders (FOLDER_DIRS folders, two levels) plus FOLDER_BIG files of
# 4 MiB, fetched by its folder name over loopback (`lanshare fetch tree`,
# every file verified, durable and logged) from one holder, then from two,
# each into a fresh node; best of REPS. Reference in the same run: the
# same tree through `tar -c | TCP (python3 socket relay) | tar -x` over
# loopback (one stream, nothing verified, nothing synced), best of REPS.
# Reports files/s and total time; ratio = tar time / lanshare time. With
# BASE_BIN, the fetchers of that binary run too (the holders are this
# build), so a change of the folder scheduling shows side by side.
# Environment: FOLDER_N=2000 FOLDER_DIRS=40 FOLDER_BIG=3;
# FOLDER_FETCH_DIR=DIR puts the fetchers' homes there (default: the work
# dir). Landing a group of files ends with syncfs(2), which writes back
# every dirty page of the file system, other programs' too: on a disk
# shared with builds that dominates and varies from run to run. A tmpfs
# (FOLDER_FETCH_DIR=/dev/shm) takes the disk out and leaves the transfer,
# the checks and the scheduling to compare (one holder against two).

FOLDER_N=${FOLDER_N:-2000}
FOLDER_DIRS=${FOLDER_DIRS:-40}
FOLDER_BIG=${FOLDER_BIG:-3}
FOLDER_FETCH_DIR=${FOLDER_FETCH_DIR:-$WORK}

# folder_holders NS HOME NAME FILES: the complete holders of the folder
# NAME as the node lists it, once it lists FILES files in it (else 0).
folder_holders() {
    in_ns "$1" "$BIN" ls --home "$2" --json 2>/dev/null | "$PY" -c '
import json, sys
name, files = sys.argv[1], int(sys.argv[2])
rows = [v for v in json.load(sys.stdin) if v.get("kind") == "folder" and v["name"] == name]
print(max([v["complete"] for v in rows if v["files"] >= files] or [0]))
' "$3" "$4"
}
has_folder() { [[ "$(folder_holders "$1" "$2" "$3" "$4")" -ge "$5" ]]; }

log "h) creating a tree of $FOLDER_N files of 0-16 KiB in $FOLDER_DIRS folders + $FOLDER_BIG of 4 MiB"
H_TREE=$WORK/h-seed0/shared/tree
"$PY" - "$H_TREE" "$FOLDER_N" "$FOLDER_DIRS" "$FOLDER_BIG" <<'PYEOF'
import os, random, sys
root, n, dirs, big = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(12)
paths = [f"{root}/d{d // 8:02}/sub{d % 8}" for d in range(dirs)]
for p in paths:
    os.makedirs(p, exist_ok=True)
os.makedirs(f"{root}/empty/inside", exist_ok=True)
for i in range(n):
    with open(f"{paths[i % dirs]}/f{i:05}.dat", "wb") as f:
        f.write(os.urandom(rng.randint(0, 16 << 10)))
for i in range(big):
    with open(f"{root}/big{i}.bin", "wb") as f:
        f.write(os.urandom(4 << 20))
PYEOF
H_FILES=$((FOLDER_N + FOLDER_BIG))
H_BYTES=$(du -sb --apparent-size "$H_TREE" | cut -f1)
mkdir -p "$WORK/h-seed1/shared"
cp -a "$H_TREE" "$WORK/h-seed1/shared/tree"
sync

# The reference: tar through one loopback TCP stream, best of REPS.
H_RELAY=$WORK/h-relay.py
cat >"$H_RELAY" <<'PYEOF'
import socket, sys
# listen: accept one connection, copy it to stdout; send PORT: stdin to it.
if sys.argv[1] == "listen":
    s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)
    print(s.getsockname()[1], file=sys.stderr, flush=True)
    c, _ = s.accept()
    while True:
        b = c.recv(1 << 20)
        if not b: break
        sys.stdout.buffer.write(b)
    sys.stdout.buffer.flush()
else:
    c = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
    while True:
        b = sys.stdin.buffer.read1(1 << 20)
        if not b: break
        c.sendall(b)
    c.close()
PYEOF
TAR_BEST=""; TAR_ALL=()
for rep in $(seq "$REPS"); do
    out=$WORK/h-tar$rep
    mkdir -p "$out"
    find "$H_TREE" -type f -print0 | xargs -0 cat >/dev/null
    t0=$(now)
    ( "$PY" "$H_RELAY" listen 2>"$WORK/h-relay.port" | tar -x -C "$out" ) &
    rx=$!
    for _ in $(seq 100); do [[ -s "$WORK/h-relay.port" ]] && break; sleep 0.02; done
    tar -c -C "$WORK/h-seed0/shared" tree | "$PY" "$H_RELAY" send "$(cat "$WORK/h-relay.port")"
    wait "$rx"
    t1=$(now)
    secs=$(calc "$t1 - $t0")
    diff -r "$H_TREE" "$out/tree" >/dev/null || die "tar copy differs"
    TAR_ALL+=("$(fmt "$secs" .3f)")
    [[ -z "$TAR_BEST" ]] || "$PY" -c "import sys; sys.exit(0 if $secs < $TAR_BEST else 1)" && TAR_BEST=$secs
    rm -rf "$out" "$WORK/h-relay.port"
done
log "tar | tcp | tar runs: ${TAR_ALL[*]} s"

GROUP_H="$GROUP_IP:$((PORT_BASE + 7))"
start_node - "$WORK/h-seed0" h-seed0 127.0.0.1 "$GROUP_H"
H_SEED0=$NODE_PID
wait_for 300 "h-seed0 to index the tree" has_shared - "$WORK/h-seed0" "$H_FILES"

# h_fetch LABEL BINARY HOLDERS: best of REPS fresh fetchers of the tree.
h_fetch() {
    local label=$1 bin=$2 want=$3 best="" all=() rep home secs
    for rep in $(seq "$REPS"); do
        home=$FOLDER_FETCH_DIR/h-fetch-$label-$rep-$TAG
        NODE_BIN=$bin start_node - "$home" "h-fetch-$label-$rep" 127.0.0.1 "$GROUP_H"
        local fpid=$NODE_PID
        wait_for 60 "$label fetcher to list the tree from $want holders" \
            has_folder - "$home" tree "$H_FILES" "$want"
        find "$H_TREE" -type f -print0 | xargs -0 cat >/dev/null
        timed_fetch - "$home" tree "$WORK/h-fetch-$label-$rep.out"
        secs=$FETCH_SECS
        diff -r "$H_TREE" "$home/downloads/tree" >/dev/null || die "$label: the fetched tree differs"
        log "h) $label run $rep: $(fmt "$secs" .3f) s, $(fmt "$H_FILES / $secs" .0f) files/s"
        all+=("$(fmt "$secs" .3f)")
        [[ -z "$best" ]] || "$PY" -c "import sys; sys.exit(0 if $secs < $best else 1)" && best=$secs
        stop_pid "$fpid"
        rm -rf "$home"
        [[ "$FOLDER_FETCH_DIR" == "$WORK" ]] || mv "$home.up.log" "$WORK/"
    done
    row "h) lanshare fetch tree, $label" "$(fmt "$H_FILES / $best" .0f) files/s" "best of ${all[*]} s; verified"
    row "   RATIO tar time / lanshare time, $label" "$(fmt "$TAR_BEST / $best" .2f)x" ""
}

row "h) tree" "$H_FILES files" "$(fmt "$H_BYTES / 1048576" .1f) MiB, $FOLDER_N of 0-16 KiB + $FOLDER_BIG of 4 MiB"
row "h) tar -c, tcp (python relay), tar -x" "$(fmt "$H_FILES / $TAR_BEST" .0f) files/s" "best of ${TAR_ALL[*]} s; unverified"
h_fetch one-holder "$BIN" 1
[[ -z "$BASE_BIN" ]] || h_fetch one-holder-base "$BASE_BIN" 1
start_node - "$WORK/h-seed1" h-seed1 127.0.0.1 "$GROUP_H"
H_SEED1=$NODE_PID
wait_for 300 "h-seed1 to index the tree" has_shared - "$WORK/h-seed1" "$H_FILES"
h_fetch two-holders "$BIN" 2
[[ -z "$BASE_BIN" ]] || h_fetch two-holders-base "$BASE_BIN" 2
stop_pid "$H_SEED1"
stop_pid "$H_SEED0"
