#!/usr/bin/env python3
"""Helper of tests/netns/private.rs: a pcap reader and a raw UDP sender,
in plain python (struct and socket only: no scapy, nothing to install).

  scan PCAP NEEDLES_JSON
      NEEDLES_JSON maps a label to a hex string. Every TCP flow in the
      capture is reassembled (payloads placed at their sequence offset, so
      a needle split across segments is still found), and every needle is
      searched in each flow, in each UDP payload and in the raw file.
      Prints one JSON object: {"packets", "tcp_flows": [{"flow", "bytes"}],
      "udp_datagrams", "udp_bytes", "hits": {label: [where, ...]}}.

  udp PCAP DPORT
      Prints one JSON object: {"datagrams": [{"ts", "src", "sport", "dst",
      "dport", "hex"}]} for every IPv4/IPv6 UDP datagram to DPORT, in
      capture order.

  send SRC DST DPORT [--spoof FAKE_SRC SPORT] HEX...
      Sends each HEX payload as one UDP datagram to DST:DPORT (a multicast
      group or a unicast address), from SRC (bound: the send fails unless
      SRC is an address of this namespace). With --spoof, the datagrams go
      through a raw socket (IP_HDRINCL) with FAKE_SRC:SPORT as their source
      instead, out of the interface that holds SRC. Prints {"sent": n}.
"""

import json
import socket
import struct
import sys

ETH_IPV4, ETH_IPV6, ETH_VLAN = 0x0800, 0x86DD, 0x8100
PROTO_TCP, PROTO_UDP = 6, 17
# Most bytes kept per reassembled TCP flow (the tests move a few MiB).
FLOW_CAP = 256 << 20


def packets(path):
    """Yields (timestamp, link-layer type, frame bytes) of a classic pcap."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 24:
        raise SystemExit(f"{path}: not a pcap file ({len(data)} bytes)")
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        end = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        end = ">"
    else:
        raise SystemExit(f"{path}: not a classic pcap file (magic {magic.hex()})")
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    linktype = struct.unpack(end + "I", data[20:24])[0] & 0x0FFFFFFF
    off = 24
    while off + 16 <= len(data):
        sec, frac, incl, _orig = struct.unpack(end + "IIII", data[off:off + 16])
        off += 16
        frame = data[off:off + incl]
        off += incl
        yield sec + frac / (1e9 if nano else 1e6), linktype, frame


def network_layer(linktype, frame):
    """(ethertype, payload) of a frame, or None."""
    if linktype == 1:  # Ethernet
        if len(frame) < 14:
            return None
        etype, off = struct.unpack("!H", frame[12:14])[0], 14
        while etype == ETH_VLAN and len(frame) >= off + 4:
            etype, off = struct.unpack("!H", frame[off + 2:off + 4])[0], off + 4
        return etype, frame[off:]
    if linktype == 113:  # Linux cooked (SLL)
        return (struct.unpack("!H", frame[14:16])[0], frame[16:]) if len(frame) >= 16 else None
    if linktype == 276:  # Linux cooked v2 (SLL2)
        return (struct.unpack("!H", frame[0:2])[0], frame[20:]) if len(frame) >= 20 else None
    if linktype in (101, 12):  # raw IP
        if not frame:
            return None
        return (ETH_IPV4 if frame[0] >> 4 == 4 else ETH_IPV6), frame
    return None


def transport(etype, pkt):
    """(proto, src, dst, segment) of an IPv4/IPv6 packet, or None.
    IPv6 extension headers other than none are not followed (the nodes
    send none)."""
    if etype == ETH_IPV4 and len(pkt) >= 20:
        ihl = (pkt[0] & 0x0F) * 4
        total = struct.unpack("!H", pkt[2:4])[0]
        frag = struct.unpack("!H", pkt[6:8])[0]
        if frag & 0x1FFF:  # a later fragment: no transport header
            return None
        src, dst = socket.inet_ntop(socket.AF_INET, pkt[12:16]), socket.inet_ntop(socket.AF_INET, pkt[16:20])
        return pkt[9], src, dst, pkt[ihl:total]
    if etype == ETH_IPV6 and len(pkt) >= 40:
        plen = struct.unpack("!H", pkt[4:6])[0]
        src, dst = socket.inet_ntop(socket.AF_INET6, pkt[8:24]), socket.inet_ntop(socket.AF_INET6, pkt[24:40])
        return pkt[6], src, dst, pkt[40:40 + plen]
    return None


def segments(path):
    """Yields (ts, proto, src, sport, dst, dport, extra, payload)."""
    for ts, linktype, frame in packets(path):
        net = network_layer(linktype, frame)
        if net is None:
            continue
        t = transport(*net)
        if t is None:
            continue
        proto, src, dst, seg = t
        if proto == PROTO_UDP and len(seg) >= 8:
            sport, dport, ulen = struct.unpack("!HHH", seg[:6])
            yield ts, proto, src, sport, dst, dport, None, seg[8:max(8, ulen)]
        elif proto == PROTO_TCP and len(seg) >= 20:
            sport, dport, seq = struct.unpack("!HHI", seg[:8])
            doff = (seg[12] >> 4) * 4
            flags = seg[13]
            yield ts, proto, src, sport, dst, dport, (seq, flags), seg[doff:]


def reassemble(path):
    """TCP flows as {flow name: bytearray}, UDP payloads as a list, and
    the number of packets seen."""
    flows, udp, count = {}, [], 0
    for _ts, proto, src, sport, dst, dport, extra, payload in segments(path):
        count += 1
        if proto == PROTO_UDP:
            udp.append((f"udp {src}:{sport} > {dst}:{dport}", payload))
            continue
        seq, flags = extra
        name = f"tcp {src}:{sport} > {dst}:{dport}"
        flow = flows.setdefault(name, {"base": None, "data": bytearray()})
        if flags & 0x02:  # SYN: the data starts at seq + 1
            flow["base"] = (seq + 1) & 0xFFFFFFFF
            continue
        if not payload:
            continue
        if flow["base"] is None:  # capture started mid-flow
            flow["base"] = seq
        off = (seq - flow["base"]) & 0xFFFFFFFF
        if off >= FLOW_CAP:  # before the base (a retransmission), or huge
            continue
        data = flow["data"]
        end = off + len(payload)
        if len(data) < end:
            data.extend(b"\0" * (end - len(data)))
        data[off:end] = payload
    return {k: v["data"] for k, v in flows.items()}, udp, count


def scan(path, needles_path):
    with open(needles_path) as f:
        needles = {label: bytes.fromhex(h) for label, h in json.load(f).items()}
    flows, udp, count = reassemble(path)
    with open(path, "rb") as f:
        raw = f.read()
    hits = {}
    for label, needle in needles.items():
        where = [name for name, data in flows.items() if needle in data]
        where += sorted({name for name, payload in udp if needle in payload})
        if needle in raw:
            where.append("raw pcap bytes")
        if where:
            hits[label] = where
    print(json.dumps({
        "packets": count,
        "tcp_flows": [{"flow": k, "bytes": len(v)} for k, v in flows.items()],
        "udp_datagrams": len(udp),
        "udp_bytes": sum(len(p) for _, p in udp),
        "hits": hits,
    }))


def udp_to(path, dport):
    out = []
    for ts, proto, src, sport, dst, dp, _extra, payload in segments(path):
        if proto == PROTO_UDP and dp == dport:
            out.append({"ts": ts, "src": src, "sport": sport, "dst": dst, "dport": dp,
                        "hex": payload.hex()})
    print(json.dumps({"datagrams": out}))


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def spoofed(fake_src, sport, dst, dport, payload):
    """An IPv4 packet (header + UDP) from fake_src:sport, TTL 1."""
    src_b, dst_b = socket.inet_aton(fake_src), socket.inet_aton(dst)
    ulen = 8 + len(payload)
    pseudo = src_b + dst_b + struct.pack("!BBH", 0, PROTO_UDP, ulen)
    udp = struct.pack("!HHHH", sport, dport, ulen, 0) + payload
    csum = checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    # Version/IHL, TOS, total length, id (0: the kernel picks), flags,
    # TTL 1, UDP, checksum (the kernel fills it), addresses.
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + ulen, 0, 0, 1, PROTO_UDP, 0, src_b, dst_b)
    return ip + udp


def send(args):
    src, dst, dport = args[0], args[1], int(args[2])
    rest = args[3:]
    spoof = None
    if rest[:1] == ["--spoof"]:
        spoof, rest = (rest[1], int(rest[2])), rest[3:]
    payloads = [bytes.fromhex(h) for h in rest]
    sent = 0
    if spoof is None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((src, 0))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(src))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        for p in payloads:
            s.sendto(p, (dst, dport))
            sent += 1
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        # The raw socket's packets leave through the interface holding SRC.
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(src))
        for p in payloads:
            s.sendto(spoofed(spoof[0], spoof[1], dst, dport, p), (dst, 0))
            sent += 1
    print(json.dumps({"sent": sent}))


def main(argv):
    if len(argv) >= 3 and argv[0] == "scan":
        scan(argv[1], argv[2])
    elif len(argv) == 3 and argv[0] == "udp":
        udp_to(argv[1], int(argv[2]))
    elif len(argv) >= 4 and argv[0] == "send":
        send(argv[1:])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
