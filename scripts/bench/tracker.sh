# Part g) of scripts/bench.sh (sourced by it; uses its helpers, WORK,
# NAMESPACES and PIDS): how soon a new holder is visible through a tracker,
# across a router, against multicast on one LAN.
#
# Namespaces made here (and deleted by bench.sh's cleanup): a switch with
# two bridges, LAN A 10.201.0.0/24 and LAN B 10.201.1.0/24, a router (.254
# on both) that forwards unicast only, host a1 and a2 on A, b1 on B. The
# tracker runs on the router with its defaults (10 s heartbeat); node
# `near` runs on a1 and `far` on b1, both with --tracker. Each rep starts
# a new holder (a fresh home, so a new node id) on a2 sharing one small
# file under a new name, and polls `ls --json` of near and far every
# ~0.1 s: near lists it by multicast (the reference), far only through the
# tracker. Then a second file is written into the running holder's shared
# folder, and the same is timed for it (the holder is known on both sides
# by then: far hears of its new inventory only through the tracker).
# Reported: median and max over G_REPS of the time from the holder's start
# (from the second file's creation) to each listing. The holder then stops
# (a clean stop) and both must stop listing it before the next rep.
# With BASE_BIN, the same reps run with that binary (tracker and nodes),
# after this build's.
# Environment: G_REPS=7.

G_REPS=${G_REPS:-7}

g_reason=""
if [[ $EUID -ne 0 ]]; then g_reason="not root"
elif ! command -v ip >/dev/null; then g_reason="no ip (iproute2)"
fi

# g_lists NS HOME FILE: true when the node lists FILE.
g_lists() {
    in_ns "$1" "$G_BIN" ls --home "$2" --json 2>/dev/null | "$PY" -c '
import json, sys
name = sys.argv[1]
sys.exit(0 if any(v["name"] == name for v in json.load(sys.stdin)) else 1)
' "$3"
}

g_gone() { ! g_lists "$@"; }

# g_net: builds the two LANs and the router; sets G_NS_{A1,A2,B1,R}.
g_net() {
    local sw=lsb$TAG-gsw
    ip netns add "$sw"; NAMESPACES+=("$sw")
    ip -n "$sw" link set lo up
    local b
    for b in 0 1; do
        ip -n "$sw" link add "gbr$b" type bridge mcast_snooping 0
        ip -n "$sw" link set "gbr$b" multicast on up
    done
    G_NS_R=lsb$TAG-gr
    ip netns add "$G_NS_R"; NAMESPACES+=("$G_NS_R")
    ip -n "$G_NS_R" link set lo up
    for b in 0 1; do
        ip -n "$sw" link add "gr$b" type veth peer name "eth$b" netns "$G_NS_R"
        ip -n "$sw" link set "gr$b" master "gbr$b" up
        ip -n "$G_NS_R" addr add "10.201.$b.254/24" dev "eth$b"
        ip -n "$G_NS_R" link set "eth$b" up
    done
    ip netns exec "$G_NS_R" sysctl -qw net.ipv4.ip_forward=1
    local h ns addr b gw other
    for h in a1 a2 b1; do
        ns=lsb$TAG-g$h
        b=$([[ $h == b1 ]] && echo 1 || echo 0)
        other=$((1 - b))
        addr=10.201.$b.${h:1}
        ip netns add "$ns"; NAMESPACES+=("$ns")
        ip -n "$sw" link add "g$h" type veth peer name eth0 netns "$ns"
        ip -n "$sw" link set "g$h" master "gbr$b" up
        ip -n "$ns" link set lo up
        ip -n "$ns" addr add "$addr/24" dev eth0
        ip -n "$ns" link set eth0 multicast on up
        ip -n "$ns" route add 224.0.0.0/4 dev eth0
        gw=10.201.$b.254
        ip -n "$ns" route add "10.201.$other.0/24" via "$gw"
        printf -v "G_NS_${h^^}" '%s' "$ns"
    done
}

# g_time NAME: polls near and far until both list NAME; sets G_NEAR and
# G_FAR to the seconds since G_T0.
g_time() {
    local file=$1 t
    G_NEAR=""; G_FAR=""
    while [[ -z "$G_NEAR" || -z "$G_FAR" ]]; do
        t=$(now)
        if "$PY" -c "import sys; sys.exit(0 if $t - $G_T0 > 60 else 1)"; then
            die "g) $file: not listed within 60 s (near ${G_NEAR:-no}, far ${G_FAR:-no}); logs in $G_DIR"
        fi
        [[ -n "$G_NEAR" ]] || ! g_lists "$G_NS_A1" "$G_DIR/near" "$file" || G_NEAR=$(calc "$(now) - $G_T0")
        [[ -n "$G_FAR" ]] || ! g_lists "$G_NS_B1" "$G_DIR/far" "$file" || G_FAR=$(calc "$(now) - $G_T0")
        sleep 0.05
    done
}

# g_row WHAT VALUES...: median and max as a summary row.
g_row() {
    local what=$1; shift
    local r
    r=$("$PY" -c "import statistics,sys; v=list(map(float,sys.argv[1:])); print(f'{statistics.median(v):.2f} s|max {max(v):.2f} s')" "$@")
    row "$what" "${r%%|*}" "median; ${r#*|}; all $*"
}

# g_run LABEL BIN: tracker + near + far with BIN, G_REPS holders; adds rows.
g_run() {
    local label=$1
    G_BIN=$2
    local group="$GROUP_IP:$((PORT_BASE + 6))"
    local dir=$WORK/g-$label
    G_DIR=$dir
    mkdir -p "$dir"
    ip netns exec "$G_NS_R" "$G_BIN" tracker --listen 0.0.0.0:7374 --db "$dir/tracker.db" \
        >"$dir/tracker.log" 2>&1 &
    local tracker=$!
    PIDS+=("$tracker")
    wait_for 20 "the $label tracker to start" grep -q "listening on" "$dir/tracker.log"
    NODE_BIN=$G_BIN
    NODE_EXTRA=(--tracker http://10.201.0.254:7374)
    start_node "$G_NS_A1" "$dir/near" near 10.201.0.1 "$group"
    local near=$NODE_PID
    NODE_EXTRA=(--tracker http://10.201.1.254:7374)
    start_node "$G_NS_B1" "$dir/far" far 10.201.1.1 "$group"
    local far=$NODE_PID
    # Both registered and past their first poll.
    sleep 3
    local tracker_all=() mcast_all=() file_tracker=() file_mcast=() rep
    for rep in $(seq "$G_REPS"); do
        local file=holder-$label-$rep.txt home=$dir/holder$rep
        mkdir -p "$home/shared"
        head -c 1024 /dev/urandom >"$home/shared/$file"
        # A holder starts at a random point of the others' heartbeats.
        sleep "$("$PY" -c 'import random; print(round(random.uniform(0.5, 3), 2))')"
        NODE_EXTRA=(--tracker http://10.201.0.254:7374)
        G_T0=$(now)
        start_node "$G_NS_A2" "$home" "holder$rep" 10.201.0.2 "$group"
        local holder=$NODE_PID
        g_time "$file"
        log "g) $label rep $rep, new holder: multicast $(fmt "$G_NEAR" .2f) s, tracker across the router $(fmt "$G_FAR" .2f) s"
        mcast_all+=("$(fmt "$G_NEAR" .2f)"); tracker_all+=("$(fmt "$G_FAR" .2f)")
        sleep "$("$PY" -c 'import random; print(round(random.uniform(0.5, 3), 2))')"
        G_T0=$(now)
        head -c 1024 /dev/urandom >"$home/shared/second-$file"
        g_time "second-$file"
        log "g) $label rep $rep, new file: multicast $(fmt "$G_NEAR" .2f) s, tracker across the router $(fmt "$G_FAR" .2f) s"
        file_mcast+=("$(fmt "$G_NEAR" .2f)"); file_tracker+=("$(fmt "$G_FAR" .2f)")
        stop_pid "$holder"
        wait_for 60 "near to drop $file" g_gone "$G_NS_A1" "$dir/near" "$file"
        wait_for 60 "far to drop $file" g_gone "$G_NS_B1" "$dir/far" "$file"
    done
    NODE_EXTRA=(); NODE_BIN=""
    stop_pid "$far"; stop_pid "$near"; stop_pid "$tracker"
    g_row "g) $label: new holder, listed across the router" "${tracker_all[@]}"
    g_row "g) $label: new holder, multicast on its LAN (ref.)" "${mcast_all[@]}"
    g_row "g) $label: new file, listed across the router" "${file_tracker[@]}"
    g_row "g) $label: new file, multicast on its LAN (ref.)" "${file_mcast[@]}"
}

if [[ -z "$g_reason" ]]; then
    log "g) tracker visibility: two LANs and a router in namespaces, $G_REPS holders"
    g_net
    g_run this "$BIN"
    if [[ -n "$BASE_BIN" ]]; then
        g_run base "$BASE_BIN"
    fi
else
    log "g) skipped: $g_reason"
    row "g) tracker visibility across a router" "skipped" "$g_reason"
fi
