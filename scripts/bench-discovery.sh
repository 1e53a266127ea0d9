#!/usr/bin/env bash
# Discovery benchmark of lanshare: real nodes on loopback, each run with a
# multicast group and port of its own. It reports only what it measured.
#
#   scripts/bench-discovery.sh                  # everything (a few minutes)
#   SIZES="1 100" RUNS=3 scripts/bench-discovery.sh   # a quick run
#
# Measurements (medians of RUNS runs where a run is cheap):
#   1. discovery latency: a node is started (sharing one new file) -> an
#      already running node's `ls` lists that file. Also the start -> banner
#      time of the new node.
#   2. departure latency: clean stop (SIGTERM) -> the other node's `peers`
#      shows it offline; SIGKILL -> offline, at KILL_INTERVAL.
#   3. for each of SIZES shared files: announcement traffic of the sharing
#      node while its inventory is unchanged, over a WINDOW-second window
#      (`discovery_bytes_sent` from `status`, and the datagrams themselves,
#      counted by a socket joined to the group), the inventory bytes it
#      served meanwhile, the bytes served for the first (full) pull by a
#      peer, and after one file is added, the bytes served to bring that
#      peer up to date (the delta) and how long the peer took to list it:
#      once for a file written into shared/ (noticed through file-system
#      notifications, or else by the periodic scan, whose period grows with
#      the time a walk of the tree takes), once for a file added with
#      `lanshare share` (which rescans at once).
#
# Environment (all optional):
#   RUNS=5              runs of 1. and 2.
#   SIZES="1 100 100000"
#   INTERVAL=5          --announce-interval of 1. and 3. (lanshare's default)
#   KILL_INTERVAL=1     --announce-interval of the SIGKILL measurement
#   WINDOW=20           seconds of each idle-traffic window (>= 10)
#   WINDOWS=3           windows per size for sizes below 10,000 (median)
#   RESULTS=FILE        default target/bench/discovery.txt
#   BENCH_DIR=DIR       work dir (default: a new one under TMPDIR or /tmp)
#   KEEP=1              keep the work dir (homes, node logs)
#
# Network: every node is pinned to 127.0.0.1 (--interface, --listen) with
# --no-mdns and a group unique to this run, so nothing leaves loopback and
# mDNS is not measured. Every process started here is stopped on exit, by
# PID. Latencies are found by polling the CLI (`lanshare ls/peers --json`,
# a few ms a call), which bounds their resolution.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export RUNS=${RUNS:-5}
export SIZES=${SIZES:-"1 100 100000"}
export INTERVAL=${INTERVAL:-5}
export KILL_INTERVAL=${KILL_INTERVAL:-1}
export WINDOW=${WINDOW:-20}
export WINDOWS=${WINDOWS:-3}
export RESULTS=${RESULTS:-$ROOT/target/bench/discovery.txt}
export KEEP=${KEEP:-0}
export BIN=$ROOT/target/release/lanshare
export ROOT

if ! awk -v w="$WINDOW" 'BEGIN { exit !(w >= 10) }'; then
    echo "bench-discovery: WINDOW must be at least 10 seconds" >&2
    exit 2
fi
PY=$(python3 -c 'import sys; print(sys.executable)' 2>/dev/null) || {
    echo "bench-discovery: python3 is needed" >&2; exit 1; }

echo "[bench-discovery] building (cargo build --release)" >&2
(cd "$ROOT" && cargo build --release --quiet) || { echo "cargo build --release failed" >&2; exit 1; }
[[ -x "$BIN" ]] || { echo "no $BIN after the build" >&2; exit 1; }

WORK=${BENCH_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/lanshare-bench-discovery.XXXXXX")}
export WORK
mkdir -p "$WORK" "$(dirname "$RESULTS")"

set +e
"$PY" - <<'PYTHON'
import atexit, json, os, random, signal, socket, statistics, struct
import subprocess, sys, threading, time

BIN = os.environ["BIN"]
WORK = os.environ["WORK"]
RUNS = int(os.environ["RUNS"])
SIZES = [int(s) for s in os.environ["SIZES"].split()]
INTERVAL = float(os.environ["INTERVAL"])
KILL_INTERVAL = float(os.environ["KILL_INTERVAL"])
WINDOW = float(os.environ["WINDOW"])
WINDOWS = int(os.environ["WINDOWS"])
RESULTS = os.environ["RESULTS"]

PROCS = []  # every node process started here


def log(msg):
    print(f"[bench-discovery {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cleanup():
    for p in PROCS:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for p in PROCS:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


atexit.register(cleanup)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
signal.signal(signal.SIGINT, lambda *_: sys.exit(130))

_groups = 0


def unique_group():
    """A group address from our PID and a counter, and a free UDP port."""
    global _groups
    _groups += 1
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    pid = os.getpid()
    return f"239.255.{20 + (pid >> 8) % 200}.{1 + (pid + _groups) % 250}:{port}"


class Node:
    def __init__(self, name, group, interval, files=()):
        self.name = name
        self.home = os.path.join(WORK, name)
        os.makedirs(os.path.join(self.home, "shared"), exist_ok=True)
        for fname, data in files:
            with open(os.path.join(self.home, "shared", fname), "wb") as f:
                f.write(data)
        self.log_path = self.home + ".log"
        cmd = [BIN, "up", "--home", self.home, "--name", name,
               "--listen", "127.0.0.1:0", "--interface", "127.0.0.1", "--no-mdns",
               "--group", group, "--announce-interval", str(interval)]
        self.t_spawn = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=open(self.log_path, "wb"))
        PROCS.append(self.proc)
        line = self.proc.stdout.readline().decode(errors="replace")
        self.t_banner = time.monotonic()
        if "listening on " not in line:
            raise SystemExit(f"node {name} did not start; see {self.log_path}")
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for _ in self.proc.stdout:
            pass

    def cli(self, *args):
        out = subprocess.run([BIN, *args, "--home", self.home], capture_output=True)
        if out.returncode != 0:
            raise SystemExit(f"lanshare {' '.join(args)} on {self.name} failed: {out.stderr.decode()}")
        return json.loads(out.stdout)

    def status(self):
        return self.cli("status", "--json")

    def ls(self, query=None):
        return self.cli("ls", *([query] if query else []), "--json")

    def peers(self):
        return self.cli("peers", "--json")

    def online(self, name):
        return any(p["name"] == name and p["online"] for p in self.peers())

    def lists(self, fname):
        return any(v["name"] == fname for v in self.ls(fname))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def wait(cond, timeout, what, period=0.0):
    """Polls cond until true; returns the monotonic time it became true."""
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout} s waiting for {what}")
        if period:
            time.sleep(period)


class Sniffer:
    """Counts the datagrams sent to a group on loopback, per node id
    (bytes 6..22 of every lanshare datagram), from a socket of its own."""

    def __init__(self, group):
        ip, port = group.rsplit(":", 1)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind(("", int(port)))
        mreq = struct.pack("4s4s", socket.inet_aton(ip), socket.inet_aton("127.0.0.1"))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        s.setsockopt(socket.IPPROTO_IP, 49, 0)  # IP_MULTICAST_ALL off: this group only
        s.settimeout(0.2)
        self.sock = s
        self.counts = {}  # node id hex -> [datagrams, bytes]
        self.lock = threading.Lock()
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while self.running:
            try:
                data = self.sock.recv(2048)
            except socket.timeout:
                continue
            if len(data) < 22 or data[:4] != b"LNSH":
                continue
            node = data[6:22].hex()
            with self.lock:
                c = self.counts.setdefault(node, [0, 0])
                c[0] += 1
                c[1] += len(data)

    def of(self, node_id):
        with self.lock:
            return tuple(self.counts.get(node_id, (0, 0)))

    def close(self):
        self.running = False
        self.thread.join()
        self.sock.close()


def med(xs):
    return statistics.median(xs)


def secs(xs):
    return f"{med(xs):.3f} s" if xs else "-"


def spread(xs):
    return f"median of {len(xs)}; min {min(xs):.3f}, max {max(xs):.3f}"


ROWS = []  # (measurement, value, note)


def row(what, value, note=""):
    ROWS.append((what, value, note))
    log(f"{what}: {value}  {note}")


###########################################################################
# 1. discovery latency, and 2a. clean departure
###########################################################################
log(f"1. discovery latency and clean departure, {RUNS} runs, interval {INTERVAL:g} s")
group = unique_group()
observer = Node("observer", group, INTERVAL)
found, banner, clean = [], [], []
for r in range(RUNS):
    fname = f"discover-{r}.txt"
    a = Node(f"newcomer{r}", group, INTERVAL, [(fname, f"run {r}\n".encode())])
    t_found = wait(lambda: observer.lists(fname), 30, f"the observer to list {fname}")
    found.append(t_found - a.t_spawn)
    banner.append(a.t_banner - a.t_spawn)
    time.sleep(0.5 + random.random() * INTERVAL)
    t0 = time.monotonic()
    a.proc.send_signal(signal.SIGTERM)
    t_off = wait(lambda: not observer.online(a.name), 30, f"{a.name} to go offline")
    clean.append(t_off - t0)
    a.stop()
    log(f"run {r}: listed after {found[-1]:.3f} s (banner {banner[-1]:.3f} s), offline {clean[-1]:.3f} s after SIGTERM")
calls = []
for _ in range(20):
    t = time.monotonic()
    observer.lists("no-such-file")
    calls.append(time.monotonic() - t)
row("discovery latency: start -> peer's ls lists the file", secs(found), spread(found))
row("  of which start -> banner (listening)", secs(banner), spread(banner))
row("departure latency, clean stop (SIGTERM) -> offline", secs(clean), spread(clean))
row("  poll resolution: one `lanshare ls/peers --json` call", secs(calls),
    "latencies above are measured to within about this")
observer.stop()

###########################################################################
# 2b. departure after SIGKILL
###########################################################################
log(f"2. SIGKILL departure, {RUNS} runs, interval {KILL_INTERVAL:g} s")
group = unique_group()
observer = Node("observer-kill", group, KILL_INTERVAL)
killed = []
for r in range(RUNS):
    fname = f"killed-{r}.txt"
    a = Node(f"victim{r}", group, KILL_INTERVAL, [(fname, f"victim {r}\n".encode())])
    wait(lambda: observer.lists(fname), 30, f"the observer to list {fname}")
    # A random phase against the victim's announcements.
    time.sleep(2 * KILL_INTERVAL + random.random() * KILL_INTERVAL)
    t0 = time.monotonic()
    a.kill()
    t_off = wait(lambda: not observer.online(a.name), 120, f"{a.name} to go offline")
    killed.append(t_off - t0)
    log(f"run {r}: offline {killed[-1]:.3f} s after SIGKILL")
row(f"departure latency, SIGKILL -> offline (interval {KILL_INTERVAL:g} s)", secs(killed),
    spread(killed) + f"; = {med(killed) / KILL_INTERVAL:.2f} intervals")
observer.stop()

###########################################################################
# 3. announcement traffic and inventory bytes per inventory size
###########################################################################
for n in SIZES:
    log(f"3. {n} shared files, interval {INTERVAL:g} s")
    group = unique_group()
    sniffer = Sniffer(group)
    name = f"sharer{n}"
    shared = os.path.join(WORK, name, "shared")
    os.makedirs(shared, exist_ok=True)
    t = time.monotonic()
    for i in range(n):
        with open(os.path.join(shared, f"f{i:06}.txt"), "wb") as f:
            f.write(b"file %d\n" % i)
    log(f"created {n} files in {time.monotonic() - t:.1f} s")
    s = Node(name, group, INTERVAL)
    t_idx = wait(lambda: s.status()["shared_contents"] == n, 1800, f"{name} to index {n} files", 0.5)
    row(f"[{n} files] start -> all indexed and shared", f"{t_idx - s.t_spawn:.2f} s", "info")
    sid = s.status()["id"]

    peer = Node(f"peer{n}", group, INTERVAL)
    last = f"f{n - 1:06}.txt"
    t_pull = wait(lambda: peer.lists(last), 600, f"the peer to list {last}", 0.1 if n < 10000 else 1.0)
    listed = sum(1 for v in peer.ls() if v["name"].startswith("f"))
    if listed != n:
        raise SystemExit(f"the peer lists {listed} of {n} files")

    def served():
        return s.status()["inventory_bytes_served"]

    full = served()
    while True:  # until the first pull(s) are over
        time.sleep(1)
        now = served()
        if now == full:
            break
        full = now
    row(f"[{n} files] peer start -> its ls lists all {n}", f"{t_pull - peer.t_spawn:.2f} s", "initial pull")
    row(f"[{n} files] inventory bytes served for the initial pull", f"{full} B", f"{full / n:.1f} B per entry")

    rates, per_dgram, dgram_rates, idle_inv = [], [], [], []
    for w in range(WINDOWS if n < 10000 else 1):
        st0, c0, t0 = s.status(), sniffer.of(sid), time.monotonic()
        time.sleep(WINDOW)
        st1, c1, t1 = s.status(), sniffer.of(sid), time.monotonic()
        dt = t1 - t0
        rates.append((st1["discovery_bytes_sent"] - st0["discovery_bytes_sent"]) / dt)
        dgrams, dbytes = c1[0] - c0[0], c1[1] - c0[1]
        dgram_rates.append(dgrams / dt)
        if dgrams:
            per_dgram.append(dbytes / dgrams)
        idle_inv.append(st1["inventory_bytes_served"] - st0["inventory_bytes_served"])
        log(f"window {w}: {rates[-1]:.1f} B/s by status, {dgrams} datagrams / {dbytes} B on the group in {dt:.1f} s, "
            f"{idle_inv[-1]} inventory bytes served")
    note = f"median of {len(rates)} x {WINDOW:g} s windows" if len(rates) > 1 else f"one {WINDOW:g} s window"
    row(f"[{n} files] idle announcement traffic, sharing node", f"{med(rates):.1f} B/s",
        f"{note}; discovery_bytes_sent, interval {INTERVAL:g} s")
    row(f"[{n} files]   datagrams seen on the group from it", f"{med(dgram_rates):.3f} /s",
        f"{med(per_dgram):.0f} B each" if per_dgram else "none")
    row(f"[{n} files]   inventory bytes served while idle", f"{max(idle_inv)} B", "max over the windows")

    base = served()
    t0 = time.monotonic()
    with open(os.path.join(shared, "added-later.txt"), "wb") as f:
        f.write(b"one more file\n")
    t_seen = wait(lambda: peer.lists("added-later.txt"), 300, "the peer to list the added file", 0.02)
    time.sleep(1)
    delta = served() - base
    row(f"[{n} files] one file added -> peer lists it", f"{t_seen - t0:.2f} s",
        "includes the node noticing it (scan interval)")
    row(f"[{n} files] inventory bytes served for that update", f"{delta} B",
        f"{delta / full * 100:.3f}% of the initial full pull ({full} B)")

    # The same through `lanshare share`, which rescans at once: what is
    # left is the walk, the announcement and the delta pull.
    extra = os.path.join(WORK, f"shared-by-command-{n}.txt")
    with open(extra, "wb") as f:
        f.write(b"shared with lanshare share\n")
    base = served()
    t0 = time.monotonic()
    out = subprocess.run([BIN, "share", extra, "--home", s.home], capture_output=True)
    if out.returncode != 0:
        raise SystemExit(f"lanshare share failed: {out.stderr.decode()}")
    t_seen = wait(lambda: peer.lists(os.path.basename(extra)), 300, "the peer to list the shared file", 0.02)
    time.sleep(1)
    delta2 = served() - base
    row(f"[{n} files] `lanshare share FILE` -> peer lists it", f"{t_seen - t0:.2f} s",
        "rescan at once; no wait for the scan interval")
    row(f"[{n} files] inventory bytes served for that update", f"{delta2} B", "")
    peer.stop()
    s.stop()
    sniffer.close()

###########################################################################
# Summary
###########################################################################
load = open("/proc/loadavg").read().split()[:3]
COMMIT = subprocess.run(["git", "-C", os.environ["ROOT"], "rev-parse", "--short", "HEAD"],
                        capture_output=True, text=True).stdout.strip() or "?"
head = [
    f"lanshare discovery benchmark, {time.strftime('%Y-%m-%d %H:%M:%S %z')}",
    f"commit {COMMIT}; {os.cpu_count()} CPUs; load at end {' '.join(load)}",
    f"loopback, --no-mdns; RUNS={RUNS} INTERVAL={INTERVAL:g} KILL_INTERVAL={KILL_INTERVAL:g} WINDOW={WINDOW:g} WINDOWS={WINDOWS}",
    "",
]
w = max(len(r[0]) for r in ROWS)
v = max(len(r[1]) for r in ROWS)
lines = head + [f"{a:<{w}}  {b:>{v}}  {c}".rstrip() for a, b, c in ROWS]
text = "\n".join(lines) + "\n"
print(text)
with open(RESULTS, "w") as f:
    f.write(text)
log(f"written to {RESULTS}")
PYTHON
rc=$?
set -e
if [[ "$KEEP" == 1 ]]; then
    echo "[bench-discovery] work dir kept: $WORK" >&2
elif [[ $rc -ne 0 ]]; then
    # Keep the node logs for a post-mortem, not the many small files.
    rm -rf "$WORK"/sharer*/shared
    echo "[bench-discovery] failed (exit $rc); logs kept in $WORK" >&2
else
    rm -rf "$WORK"
fi
exit $rc
