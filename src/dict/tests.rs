use super::*;
use crate::chunkset::{Bitmap, ChunkSet};
use crate::id::ContentId;
use crate::manifest::Category;
use crate::wire::InventoryEntry;
use std::time::SystemTime;

/// Records a sighting now.
#[allow(clippy::too_many_arguments)]
fn observe(
    d: &Dict,
    id: NodeId,
    name: &str,
    addr: SocketAddr,
    via: FoundVia,
    interval: Duration,
    digest: Digest,
    contents: u32,
) -> Observed {
    d.observe(
        Sighting {
            id,
            name,
            addr,
            via,
            interval,
            digest,
            contents,
        },
        Instant::now(),
    )
}

fn reached(d: &Dict, id: NodeId, addr: SocketAddr, digest: Digest, contents: u32) -> Observed {
    d.peers.reached(id, addr, digest, contents, Instant::now())
}

fn peer_views(d: &Dict) -> Vec<crate::api::PeerView> {
    d.peer_views(Instant::now(), SystemTime::now())
}

fn entry(id: u8, name: &str, chunks: ChunkSet) -> InventoryEntry {
    InventoryEntry {
        id: ContentId([id; 32]),
        name: name.into(),
        size: 3 << 20,
        category: Category::from_name(name),
        comment: String::new(),
        chunks,
    }
}

fn inv(entries: Vec<InventoryEntry>) -> Inventory {
    Inventory::new(entries)
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
fn holdings_follow_inventories() {
    let d = Dict::new();
    let (a, b) = (NodeId([1; 16]), NodeId([2; 16]));
    let iv = Duration::from_secs(1);
    let a1 = inv(vec![entry(9, "photo.png", ChunkSet::Full)]);
    assert_eq!(
        observe(&d, a, "a", addr(1), FoundVia::Multicast, iv, a1.digest, 1),
        Observed::Pull
    );
    d.set_inventory(a, a1.clone());
    assert_eq!(
        observe(&d, a, "a", addr(1), FoundVia::Multicast, iv, a1.digest, 1),
        Observed::Known
    );
    observe(&d, b, "b", addr(2), FoundVia::Multicast, iv, [2; 16], 1);
    let mut bm = Bitmap::new(3);
    bm.set(0);
    d.set_inventory(b, inv(vec![entry(9, "photo.png", ChunkSet::Partial(bm))]));
    let v = d.view(&ContentId([9; 32]), false).unwrap();
    assert_eq!((v.complete, v.partial), (1, 1));
    assert_eq!(d.holders(&ContentId([9; 32])).len(), 2);

    // A changed inventory replaces the old holdings.
    assert_eq!(
        observe(&d, a, "a", addr(1), FoundVia::Multicast, iv, [3; 16], 1),
        Observed::Pull
    );
    d.set_inventory(a, inv(vec![entry(8, "song.mp3", ChunkSet::Full)]));
    assert_eq!(d.holders(&ContentId([9; 32])).len(), 1);

    d.set_offline(b);
    assert!(
        d.contents.content(&ContentId([9; 32])).is_none(),
        "no holder left: gone"
    );
    assert_eq!(d.list(None, None), vec![ContentId([8; 32])]);
    assert_eq!(
        d.list(Some("SONG"), Some(Category::Audio)),
        vec![ContentId([8; 32])]
    );
    assert!(d.list(None, Some(Category::Image)).is_empty());
    // An inventory arriving for an offline peer is ignored.
    d.set_inventory(b, inv(vec![entry(7, "x", ChunkSet::Full)]));
    assert!(d.contents.content(&ContentId([7; 32])).is_none());
}

#[test]
fn a_peer_keeps_every_address_and_prefers_the_one_that_answered() {
    let d = Dict::new();
    let a = NodeId([1; 16]);
    let iv = Duration::from_secs(1);
    let v6: SocketAddr = "[fe80::1%2]:7000".parse().unwrap();
    observe(&d, a, "a", addr(1), FoundVia::Multicast, iv, [1; 16], 0);
    observe(&d, a, "a", v6, FoundVia::Mdns, iv, [1; 16], 0);
    let p = d.peers.peer(&a).unwrap();
    assert_eq!(p.addrs(), vec![v6, addr(1)], "most recently seen first");
    reached(&d, a, addr(1), [1; 16], 0);
    assert_eq!(d.peers.peer(&a).unwrap().addrs(), vec![addr(1), v6]);
    d.peers.unreachable(a, addr(1));
    assert_eq!(d.peers.peer(&a).unwrap().preferred, None);
    for port in 10..30 {
        observe(&d, a, "a", addr(port), FoundVia::Tracker, iv, [1; 16], 0);
    }
    assert_eq!(d.peers.peer(&a).unwrap().addrs.len(), MAX_ADDRS);
}

#[test]
fn an_inventory_change_touches_only_what_changed() {
    let d = Dict::new();
    let a = NodeId([1; 16]);
    observe(
        &d,
        a,
        "a",
        addr(1),
        FoundVia::Multicast,
        Duration::from_secs(1),
        [0; 16],
        2,
    );
    d.set_inventory(
        a,
        inv(vec![
            entry(1, "one", ChunkSet::Full),
            entry(2, "two", ChunkSet::Full),
        ]),
    );
    d.set_inventory(
        a,
        inv(vec![
            entry(2, "two", ChunkSet::Full),
            entry(3, "three", ChunkSet::Full),
        ]),
    );
    assert!(d.contents.content(&ContentId([1; 32])).is_none());
    assert_eq!(d.holders(&ContentId([2; 32])).len(), 1);
    assert_eq!(d.holders(&ContentId([3; 32])).len(), 1);
    assert_eq!(d.peers.peer(&a).unwrap().contents, 2);
}

#[test]
fn a_lagging_tracker_digest_does_not_undo_a_fresher_hello() {
    let d = Dict::new();
    let a = NodeId([1; 16]);
    let iv = Duration::from_secs(10);
    let new = inv(vec![entry(2, "two", ChunkSet::Full)]);
    observe(&d, a, "a", addr(1), FoundVia::Tracker, iv, [1; 16], 1);
    // The peer itself says it changed, and we pull that version.
    reached(&d, a, addr(1), new.digest, 1);
    d.set_inventory(a, new.clone());
    // The tracker still lists the old digest: no flip-flop, no re-pull.
    assert_eq!(
        observe(&d, a, "a", addr(1), FoundVia::Tracker, iv, [1; 16], 1),
        Observed::Known
    );
    assert_eq!(d.peers.peer(&a).unwrap().announced_digest, new.digest);
    // A multicast announcement always counts.
    observe(&d, a, "a", addr(1), FoundVia::Multicast, iv, [3; 16], 1);
    assert_eq!(d.peers.peer(&a).unwrap().announced_digest, [3; 16]);
}

#[test]
fn contents_held_for_all_peers_are_bounded() {
    let d = Dict::with_limit(3);
    let (a, b) = (NodeId([1; 16]), NodeId([2; 16]));
    let iv = Duration::from_secs(1);
    let two = |x: u8| {
        inv(vec![
            entry(x, "x", ChunkSet::Full),
            entry(x + 1, "y", ChunkSet::Full),
        ])
    };
    let (small, big) = (two(1), two(10));
    observe(
        &d,
        a,
        "a",
        addr(1),
        FoundVia::Multicast,
        iv,
        small.digest,
        2,
    );
    observe(&d, b, "b", addr(2), FoundVia::Multicast, iv, big.digest, 2);
    d.set_inventory(a, small);
    d.set_inventory(b, big.clone());
    assert_eq!(
        d.holders(&ContentId([10; 32])).len(),
        0,
        "4 > 3: b not held"
    );
    assert!(d.peers.needing_pull().is_empty(), "and not pulled again");
    // Room made by a peer leaving lets it in.
    d.set_offline(a);
    d.set_inventory(b, big);
    assert_eq!(d.holders(&ContentId([10; 32])).len(), 1);
    assert_eq!(d.contents.held().entries, 2);
}

fn nid(i: u32) -> NodeId {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&i.to_le_bytes());
    id[15] = 0xaa;
    NodeId(id)
}

fn ip_addr(a: u8, b: u8, port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, a, b], port))
}

/// Announces `n` peers, each from its own address `10.0.x.y`, and
/// proves them (a hello answered).
fn proven_peers(d: &Dict, n: u32) {
    let iv = Duration::from_secs(60);
    for i in 0..n {
        let a = ip_addr((i / 250) as u8, (i % 250) as u8 + 1, 7000);
        observe(d, nid(i), "p", a, FoundVia::Multicast, iv, [0; 16], 0);
        reached(d, nid(i), a, [0; 16], 0);
    }
}

#[test]
fn peer_table_is_bounded() {
    let d = Dict::new();
    proven_peers(&d, MAX_PEERS as u32 + 10);
    assert_eq!(peer_views(&d).len(), MAX_PEERS);
    // An offline peer makes room for a new one.
    d.set_offline(nid(0));
    assert_eq!(
        observe(
            &d,
            NodeId([0xff; 16]),
            "new",
            addr(2),
            FoundVia::Multicast,
            Duration::from_secs(1),
            [1; 16],
            0
        ),
        Observed::Pull
    );
    assert_eq!(peer_views(&d).len(), MAX_PEERS);
    assert!(d.peers.peer(&nid(0)).is_none());
}

#[test]
fn unproven_peers_never_push_out_proven_ones() {
    // The same whether the fakes come by multicast or from a tracker.
    for via in [FoundVia::Multicast, FoundVia::Tracker] {
        unproven_flood(via);
    }
}

fn unproven_flood(via: FoundVia) {
    let d = Dict::new();
    let iv = Duration::from_secs(300);
    proven_peers(&d, 100);
    // A flood of made-up ids from many addresses, claiming 300 s.
    for i in 0..1100u32 {
        let a = ip_addr(200 + (i % 40) as u8, 1, 7000);
        observe(&d, nid(10_000 + i), "fake", a, via, iv, [9; 16], 0);
    }
    let views = peer_views(&d);
    assert_eq!(views.len(), 100 + MAX_UNPROVEN);
    for i in 0..100 {
        assert!(
            d.peers.peer(&nid(i)).is_some_and(|p| p.online),
            "proven peer {i} kept"
        );
    }
    assert_eq!(
        d.peers.peer(&nid(10_000 + 1099)).unwrap().interval,
        MAX_INTERVAL,
        "the claimed interval is clamped"
    );
    // A real newcomer still gets in (the oldest fake makes room), and
    // stays once it proves itself.
    let real = NodeId([0x77; 16]);
    let at = ip_addr(99, 9, 7373);
    assert_eq!(
        observe(
            &d,
            real,
            "real",
            at,
            FoundVia::Multicast,
            Duration::from_secs(1),
            [1; 16],
            0
        ),
        Observed::Pull
    );
    reached(&d, real, at, [1; 16], 0);
    for i in 0..1100u32 {
        let a = ip_addr(200 + (i % 40) as u8, 2, 7000);
        observe(&d, nid(20_000 + i), "fake", a, via, iv, [9; 16], 0);
    }
    assert!(d.peers.peer(&real).unwrap().proven);
    assert_eq!(peer_views(&d).len(), 101 + MAX_UNPROVEN);
}

#[test]
fn one_address_holds_a_bounded_number_of_peers() {
    let d = Dict::new();
    let iv = Duration::from_secs(60);
    let real = NodeId([0x77; 16]);
    observe(
        &d,
        real,
        "real",
        addr(7373),
        FoundVia::Multicast,
        iv,
        [1; 16],
        0,
    );
    reached(&d, real, addr(7373), [1; 16], 0);
    for i in 0..500u32 {
        observe(
            &d,
            nid(i),
            "fake",
            addr(9),
            FoundVia::Multicast,
            iv,
            [9; 16],
            0,
        );
    }
    assert_eq!(peer_views(&d).len(), MAX_PEERS_PER_IP);
    assert!(d.peers.peer(&real).is_some(), "the proven peer stays");
    // The newest fakes are the ones kept.
    assert!(d.peers.peer(&nid(499)).is_some() && d.peers.peer(&nid(0)).is_none());
    // Another address is not affected.
    let other = SocketAddr::from(([127, 0, 0, 2], 1));
    assert_eq!(
        observe(
            &d,
            NodeId([0x78; 16]),
            "b",
            other,
            FoundVia::Multicast,
            iv,
            [1; 16],
            0
        ),
        Observed::Pull
    );
}

#[test]
fn goodbye_counts_only_from_where_the_peer_is() {
    let d = Dict::new();
    let iv = Duration::from_secs(1);
    let a = NodeId([1; 16]);
    let home = SocketAddr::from(([10, 0, 0, 1], 7373));
    let forger: IpAddr = [10, 0, 0, 66].into();
    observe(&d, a, "a", home, FoundVia::Multicast, iv, [1; 16], 0);
    // Not proven yet: any address it was heard at counts.
    assert!(!d.depart(a, forger));
    assert!(d.peers.peer(&a).unwrap().online);
    reached(&d, a, home, [1; 16], 0);
    // The forger announces the victim's id from its own address first.
    observe(
        &d,
        a,
        "a",
        SocketAddr::new(forger, 7373),
        FoundVia::Multicast,
        iv,
        [1; 16],
        0,
    );
    assert!(!d.depart(a, forger), "an unproven address does not count");
    assert!(d.peers.peer(&a).unwrap().online);
    // It is only a claim: the peer is probed, and stays if it answers.
    assert!(d.peers.peer(&a).unwrap().departure_claimed);
    reached(&d, a, home, [1; 16], 0);
    assert!(!d.peers.peer(&a).unwrap().departure_claimed);
    assert!(d.depart(a, "10.0.0.1".parse().unwrap()));
    assert!(!d.peers.peer(&a).unwrap().online);
    // IPv4-mapped IPv6 addresses are the same address.
    observe(&d, a, "a", home, FoundVia::Multicast, iv, [1; 16], 0);
    reached(&d, a, home, [1; 16], 0);
    assert!(d.depart(a, "::ffff:10.0.0.1".parse().unwrap()));
}

#[test]
fn a_claimed_departure_takes_effect_only_when_the_peer_does_not_answer() {
    let d = Dict::new();
    let iv = Duration::from_secs(1);
    let a = NodeId([1; 16]);
    let home = SocketAddr::from(([10, 0, 0, 1], 7373));
    observe(&d, a, "a", home, FoundVia::Mdns, iv, [1; 16], 0);
    reached(&d, a, home, [1; 16], 0);
    let now = Instant::now();
    assert!(d.peers.to_probe(now).is_empty(), "just heard from");
    // A removed mDNS record (anyone can remove one naming any id).
    d.peers.claim_departure(a);
    assert!(
        d.peers.peer(&a).unwrap().online,
        "a claim alone changes nothing"
    );
    assert_eq!(d.peers.to_probe(now).len(), 1, "it is probed at once");
    // The peer answers: the claim is void.
    reached(&d, a, home, [1; 16], 0);
    assert!(d.peers.to_probe(now).is_empty());
    d.probe_failed(a);
    assert!(
        d.peers.peer(&a).unwrap().online,
        "an unclaimed failure is for expiry"
    );
    // Claimed again, and this time nobody answers as `a`: gone at once.
    d.peers.claim_departure(a);
    d.probe_failed(a);
    assert!(!d.peers.peer(&a).unwrap().online);
}

#[test]
fn a_claim_from_elsewhere_neither_renames_nor_keeps_alive_a_proven_peer() {
    let d = Dict::new();
    let iv = Duration::from_secs(1);
    let a = NodeId([1; 16]);
    let home = SocketAddr::from(([10, 0, 0, 1], 7373));
    let forger = SocketAddr::from(([10, 0, 0, 66], 7373));
    observe(&d, a, "alice", home, FoundVia::Multicast, iv, [1; 16], 0);
    reached(&d, a, home, [1; 16], 0);
    let seen = d.peers.peer(&a).unwrap().last_seen;
    std::thread::sleep(Duration::from_millis(5));
    let long = Duration::from_secs(60);
    assert_eq!(
        observe(
            &d,
            a,
            "mallory",
            forger,
            FoundVia::Multicast,
            long,
            [9; 16],
            0
        ),
        Observed::Known
    );
    let p = d.peers.peer(&a).unwrap();
    assert_eq!(p.name, "alice");
    assert_eq!(p.interval, iv);
    assert_eq!(p.last_seen, seen, "no extra life from a forger");
    assert_eq!(p.announced_digest, [1; 16]);
    assert!(p.addrs.iter().any(|x| x.addr == forger && !x.proven));
    // The same claim from where the peer proved itself counts in full.
    observe(&d, a, "alice2", home, FoundVia::Multicast, iv, [2; 16], 0);
    assert_eq!(d.peers.peer(&a).unwrap().name, "alice2");
}

#[test]
fn announcing_an_id_from_elsewhere_never_pushes_out_its_proven_address() {
    let d = Dict::new();
    let iv = Duration::from_secs(1);
    let a = NodeId([1; 16]);
    let home = SocketAddr::from(([10, 0, 0, 1], 7373));
    observe(&d, a, "a", home, FoundVia::Multicast, iv, [1; 16], 0);
    reached(&d, a, home, [1; 16], 0);
    d.peers.unreachable(a, home);
    for i in 0..40 {
        let x = SocketAddr::from(([10, 0, 1, i], 7373));
        observe(&d, a, "a", x, FoundVia::Multicast, iv, [1; 16], 0);
    }
    let p = d.peers.peer(&a).unwrap();
    assert_eq!(p.addrs.len(), MAX_ADDRS);
    assert!(p.addrs.iter().any(|x| x.addr == home && x.proven));
}

#[test]
fn bytes_held_for_all_peers_are_bounded() {
    let iv = Duration::from_secs(1);
    let big = |x: u8| {
        let mut e = entry(
            x,
            "big",
            ChunkSet::Partial(Bitmap::from_bytes(vec![0; 4096])),
        );
        e.size = 1 << 40;
        e
    };
    let cost = entry_cost(&big(1));
    assert_eq!(cost, ENTRY_OVERHEAD + 6 + 4096);
    let d = Dict::with_limits(1000, cost * 3);
    let (a, b) = (NodeId([1; 16]), NodeId([2; 16]));
    for (p, port) in [(a, 1), (b, 2)] {
        observe(&d, p, "p", addr(port), FoundVia::Multicast, iv, [0; 16], 0);
        reached(&d, p, addr(port), [0; 16], 0);
    }
    d.set_inventory(a, inv(vec![big(1), big(2)]));
    d.set_inventory(b, inv(vec![big(3), big(4)]));
    assert_eq!(d.holders(&ContentId([1; 32])).len(), 1);
    assert!(
        d.holders(&ContentId([3; 32])).is_empty(),
        "4 x cost > 3 x cost"
    );
    assert_eq!(d.contents.held().bytes, 2 * cost);
    // The holder's chunks share the inventory's bitmap.
    let held = d.contents.inventory(&a).unwrap();
    let (ChunkSet::Partial(x), ChunkSet::Partial(y)) = (
        &held.entries[0].chunks,
        &d.contents.content(&ContentId([1; 32])).unwrap().holders[&a],
    ) else {
        panic!("partial")
    };
    assert!(std::ptr::eq(x.as_bytes(), y.as_bytes()));
    // A pull is admitted page by page against what is left, counting
    // other pulls in progress; what the pulled peer holds is replaced.
    let mut pa = d.contents.pull_budget(a);
    assert!(pa.admit(&[big(5), big(6)]));
    assert!(pa.admit(&[big(7)]));
    assert!(!pa.admit(&[big(9)]));
    let mut pb = d.contents.pull_budget(b);
    assert!(!pb.admit(&[big(8)]), "a's pull reserved the rest");
    drop(pa);
    assert!(pb.admit(&[big(8)]));
    drop(pb);
    assert_eq!(
        d.contents.held().reserved,
        0,
        "reservations end with the pull"
    );
    d.refuse_inventory(a, [0; 16], Refusal::OverBytes);
    assert_eq!(d.contents.held(), Held::default());
    assert!(d.peers.needing_pull().iter().all(|p| p.id != a));
}

#[test]
fn silent_peers_expire() {
    let d = Dict::new();
    let a = NodeId([1; 16]);
    observe(
        &d,
        a,
        "a",
        addr(1),
        FoundVia::Multicast,
        Duration::from_millis(100),
        [1; 16],
        1,
    );
    d.set_inventory(a, inv(vec![entry(9, "photo.png", ChunkSet::Full)]));
    assert!(d.expire(Instant::now()).is_empty());
    let later = Instant::now() + Duration::from_secs(2);
    assert_eq!(d.expire(later), vec![a]);
    assert!(d.holders(&ContentId([9; 32])).is_empty());
    let views = peer_views(&d);
    assert_eq!(views.len(), 1);
    assert!(!views[0].online);
}

fn sighting(id: NodeId, addr: SocketAddr, interval: Duration) -> Sighting<'static> {
    Sighting {
        id,
        name: "p",
        addr,
        via: FoundVia::Multicast,
        interval,
        digest: [1; 16],
        contents: 0,
    }
}

/// Time is passed in: a peer expires exactly when more than
/// [`MISSED_ANNOUNCES`] intervals and [`EXPIRY_GRACE`] passed since it was
/// last heard, whatever the wall clock does meanwhile.
#[test]
fn a_peer_expires_exactly_after_three_intervals_and_a_half_second() {
    let d = Dict::new();
    let a = NodeId([1; 16]);
    let t0 = Instant::now();
    let iv = Duration::from_secs(2);
    d.observe(sighting(a, addr(1), iv), t0);
    let limit = iv * MISSED_ANNOUNCES + EXPIRY_GRACE;
    assert_eq!(limit, Duration::from_millis(6500));
    assert!(d.expire(t0 + limit).is_empty(), "not before the limit");
    assert!(d.peers.is_online(&a));
    // Heard again later: the clock restarts from then.
    let t1 = t0 + Duration::from_secs(5);
    d.observe(sighting(a, addr(1), iv), t1);
    assert!(d.expire(t0 + limit + Duration::from_millis(1)).is_empty());
    assert!(d.expire(t1 + limit).is_empty());
    assert_eq!(d.expire(t1 + limit + Duration::from_millis(1)), vec![a]);
    assert!(!d.peers.is_online(&a));
    // The view counts from the passed-in time too.
    let v = d.peer_views(
        t1 + Duration::from_secs(10),
        SystemTime::UNIX_EPOCH + Duration::from_secs(100),
    );
    assert_eq!(v[0].last_seen_secs, 10.0);
    assert_eq!(v[0].last_seen, "1970-01-01T00:01:30.000Z");
}

/// When the unproven class is full, the unproven peer heard least
/// recently makes room for a newcomer, one at a time.
#[test]
fn the_unproven_class_evicts_its_oldest_first() {
    let d = Dict::new();
    let t0 = Instant::now();
    let iv = Duration::from_secs(60);
    // Each from its own address, heard one millisecond apart, in an order
    // unrelated to their ids.
    let order: Vec<u32> = (0..MAX_UNPROVEN as u32).map(|i| (i * 37) % 256).collect();
    for (k, i) in order.iter().enumerate() {
        let at = ip_addr(1, *i as u8, 7000);
        let now = t0 + Duration::from_millis(k as u64);
        assert_eq!(d.observe(sighting(nid(*i), at, iv), now), Observed::Pull);
    }
    // The first one heard is heard again: now the second is the oldest.
    let later = t0 + Duration::from_secs(1);
    d.observe(
        sighting(nid(order[0]), ip_addr(1, order[0] as u8, 7000), iv),
        later,
    );
    for (k, newcomer) in (1000..1003u32).enumerate() {
        let now = later + Duration::from_millis(k as u64 + 1);
        let at = ip_addr(2, k as u8, 7000);
        assert_eq!(
            d.observe(sighting(nid(newcomer), at, iv), now),
            Observed::Pull
        );
        assert!(d.peers.peer(&nid(newcomer)).is_some());
        let gone = order[k + 1];
        assert!(
            d.peers.peer(&nid(gone)).is_none(),
            "the oldest ({gone}) went"
        );
        assert!(d.peers.peer(&nid(order[k + 2])).is_some(), "only it");
    }
    assert!(d.peers.peer(&nid(order[0])).is_some(), "heard again: kept");
    assert_eq!(d.peers.filtered(|_| true).len(), MAX_UNPROVEN);
}
