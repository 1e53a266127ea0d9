//! Criterion benches of lanshare's hot paths: chunk hashing, file indexing,
//! wire encoding, the download's chunk bookkeeping, and the Noise handshake
//! and records of peer connections.
//!
//! Run with `cargo bench --bench hot_paths` (about two minutes on two cores);
//! `cargo bench --bench hot_paths -- chunkmap` runs one group. Sample counts
//! and measurement times are kept small on purpose: these numbers are for
//! spotting regressions and comparing alternatives, not for publishing.

use std::hint::black_box;
use std::io::Write;
use std::time::Duration;

use criterion::{BatchSize, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use sha2::Digest;

use lanshare::chunkset::{Bitmap, ChunkSet};
use lanshare::fetch::state::ChunkMap;
use lanshare::id::{ContentId, NodeId};
use lanshare::identity::Identity;
use lanshare::manifest::{self, CHUNK_SIZE, Category, Manifest};
use lanshare::peer::noise;
use lanshare::peer::record::{self, Records};
use lanshare::store::ChunkBuf;
use lanshare::swarm::{Mode, SwarmKey};
use lanshare::wire::InventoryEntry;
use lanshare::wire::datagram::{Announce, Datagram};
use lanshare::wire::frame::{self, HEADER_LEN, MAX_RESPONSE_FRAME, Response, parse_header};

const MIB: usize = 1 << 20;

/// Deterministic incompressible bytes (BLAKE3 in XOF mode is fast and needs
/// no extra dependency).
fn pseudo_random(len: usize, seed: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(seed)
        .finalize_xof()
        .fill(&mut out);
    out
}

/// Per-chunk hashing of a 64 MiB buffer: the cost of indexing and of
/// verifying chunks as they arrive, without any I/O.
fn chunk_hashing(c: &mut Criterion) {
    let data = pseudo_random(64 * MIB, b"chunk hashing");
    let mut g = c.benchmark_group("hash_64MiB_per_1MiB_chunk");
    g.throughput(Throughput::Bytes(data.len() as u64))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g.bench_function("blake3", |b| {
        b.iter(|| {
            for chunk in data.chunks(MIB) {
                black_box(blake3::hash(black_box(chunk)));
            }
        })
    });
    g.bench_function("sha256", |b| {
        b.iter(|| {
            for chunk in data.chunks(MIB) {
                black_box(sha2::Sha256::digest(black_box(chunk)));
            }
        })
    });
    // What indexing does per byte in memory: BLAKE3 per chunk plus one
    // whole-buffer SHA-256, on one thread.
    g.bench_function("manifest_of (blake3 chunks + sha256 whole)", |b| {
        b.iter(|| black_box(manifest::manifest_of(black_box(&data), CHUNK_SIZE)))
    });
    // The fetcher's per-chunk check.
    let m = manifest::manifest_of(&data, CHUNK_SIZE);
    g.bench_function("chunk_matches (verify every chunk)", |b| {
        b.iter(|| {
            for (i, chunk) in data.chunks(MIB).enumerate() {
                assert!(m.chunk_matches(i as u32, black_box(chunk)));
            }
        })
    });
    g.finish();
}

/// `hash_file` on a 256 MiB file (in the page cache after the first read):
/// reading, BLAKE3 per chunk and the whole-file SHA-256 on its own thread.
fn file_hashing(c: &mut Criterion) {
    const SIZE: usize = 256 * MIB;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bench.bin");
    {
        let block = pseudo_random(16 * MIB, b"hash_file");
        let mut f = std::fs::File::create(&path).expect("create temp file");
        for i in 0..SIZE / block.len() {
            // Distinct blocks, so no two chunks are equal.
            let mut b = block.clone();
            b[..8].copy_from_slice(&(i as u64).to_le_bytes());
            f.write_all(&b).expect("write temp file");
        }
        f.sync_all().expect("sync temp file");
    }
    // Warm the page cache so every sample measures the same thing.
    let m = manifest::hash_file(&path, |_| {}).expect("hash_file");
    assert_eq!(m.size, SIZE as u64);

    let mut g = c.benchmark_group("hash_file_256MiB");
    g.throughput(Throughput::Bytes(SIZE as u64))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(4));
    g.bench_function("hash_file", |b| {
        b.iter(|| black_box(manifest::hash_file(black_box(&path), |_| {}).expect("hash_file")))
    });
    g.finish();
}

fn announce() -> Datagram {
    Datagram::Announce(Announce {
        node: NodeId([0x5a; 16]),
        name: "bench-node-with-a-longish-name".into(),
        tcp_port: 7373,
        interval_ms: 5000,
        inventory_digest: [0xab; 16],
        contents: 1234,
    })
}

fn datagrams(c: &mut Criterion) {
    let mut g = c.benchmark_group("datagram");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    let d = announce();
    let bytes = d.encode();
    g.throughput(Throughput::Elements(1));
    g.bench_function("announce encode", |b| {
        b.iter(|| black_box(black_box(&d).encode()))
    });
    g.bench_function("announce decode", |b| {
        b.iter(|| black_box(Datagram::decode(black_box(&bytes)).expect("decodes")))
    });
    g.bench_function("announce encode+decode", |b| {
        b.iter(|| {
            let bytes = black_box(&d).encode();
            black_box(Datagram::decode(&bytes).expect("decodes"))
        })
    });
    // Garbage is dropped cheaply: wrong magic, and right header with a bad body.
    let garbage = vec![0xffu8; 1200];
    let mut bad_body = bytes.clone();
    bad_body.truncate(10);
    g.bench_function("decode garbage (bad magic + truncated body)", |b| {
        b.iter(|| {
            black_box(Datagram::decode(black_box(&garbage)).is_err());
            black_box(Datagram::decode(black_box(&bad_body)).is_err())
        })
    });
    g.finish();
}

/// Splits an encoded frame into header and body and decodes it the way the
/// client does.
fn decode_frame(bytes: &[u8]) -> Response {
    let header: &[u8; HEADER_LEN] = bytes[..HEADER_LEN].try_into().expect("header");
    let (kind, body_len) = parse_header(header, MAX_RESPONSE_FRAME).expect("header parses");
    Response::decode(kind, &bytes[HEADER_LEN..], body_len).expect("frame decodes")
}

fn manifest_1gib() -> Manifest {
    // 1 GiB at 1 MiB chunks: 1024 chunk hashes (random, not hashed: only the
    // shape matters for the wire).
    let hashes = pseudo_random(1024 * 32, b"manifest");
    Manifest {
        size: 1 << 30,
        chunk_size: CHUNK_SIZE,
        sha256: [7; 32],
        chunks: hashes
            .chunks(32)
            .map(|h| lanshare::id::ChunkHash(h.try_into().expect("32 bytes")))
            .collect(),
    }
}

fn inventory(n: usize) -> Vec<InventoryEntry> {
    let ids = pseudo_random(n * 32, b"inventory");
    (0..n)
        .map(|i| InventoryEntry {
            id: ContentId(ids[i * 32..i * 32 + 32].try_into().expect("32 bytes")),
            name: format!("holiday-photo-{i:05}.jpg"),
            more_paths: Default::default(),
            size: 3_000_000 + i as u64 * 17,
            category: Category::Image,
            comment: if i % 10 == 0 {
                "from the summer trip".into()
            } else {
                String::new()
            },
            chunks: if i % 50 == 0 {
                let mut b = Bitmap::new(3);
                b.set(1);
                ChunkSet::Partial(b)
            } else {
                ChunkSet::Full
            },
        })
        .collect()
}

fn frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));

    let manifest = manifest_1gib();
    let id = manifest.content_id();
    let resp = Response::Manifest {
        req: 42,
        manifest: manifest.clone(),
    };
    let bytes = resp.encode();
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("manifest 1GiB (1024 chunks) encode", |b| {
        b.iter(|| black_box(black_box(&resp).encode()))
    });
    g.bench_function("manifest 1GiB (1024 chunks) decode", |b| {
        b.iter(|| black_box(decode_frame(black_box(&bytes))))
    });
    // What the fetcher does with a manifest it receives.
    g.bench_function("manifest 1GiB (1024 chunks) decode+verify id", |b| {
        b.iter(|| match decode_frame(black_box(&bytes)) {
            Response::Manifest { manifest, .. } => manifest.verify(&id).expect("verifies"),
            _ => unreachable!(),
        })
    });

    let entries = inventory(1000);
    let resp = Response::Inventory(lanshare::wire::frame::InventoryPage {
        req: 7,
        digest: [0; 16],
        base: None,
        entries: entries.clone(),
        removed: Vec::new(),
        more: false,
    });
    let bytes = resp.encode();
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("inventory 1000 entries encode", |b| {
        b.iter(|| black_box(black_box(&resp).encode()))
    });
    g.bench_function("inventory 1000 entries decode+check", |b| {
        b.iter(|| black_box(decode_frame(black_box(&bytes))))
    });
    g.finish();
}

fn chunk_map(c: &mut Criterion) {
    const N: u32 = 10_000;
    let mut g = c.benchmark_group("chunkmap_10000_chunks");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .throughput(Throughput::Elements(N as u64));

    let empty = Bitmap::new(N);
    // One peer with every chunk: acquire then complete each in turn.
    g.bench_function("1 peer acquire+complete all", |b| {
        b.iter_batched_ref(
            || ChunkMap::new(N, &empty),
            |map| {
                while let Some(i) = map.acquire(0, |_| true) {
                    assert!(map.complete(i, 0));
                }
                assert!(map.is_complete());
            },
            BatchSize::SmallInput,
        )
    });
    // Four peers with every chunk, each keeping 4 requests in flight as the
    // fetch workers do, completing in round-robin order.
    g.bench_function("4 peers x 4 in flight", |b| {
        b.iter_batched_ref(
            || ChunkMap::new(N, &empty),
            |map| {
                let mut inflight: [Vec<u32>; 4] = Default::default();
                loop {
                    let mut progressed = false;
                    for (peer, q) in inflight.iter_mut().enumerate() {
                        while q.len() < 4 {
                            match map.acquire(peer as u32, |_| true) {
                                Some(i) => q.push(i),
                                None => break,
                            }
                        }
                        if !q.is_empty() {
                            let i = q.remove(0);
                            assert!(map.complete(i, peer as u32));
                            progressed = true;
                        }
                    }
                    if !progressed {
                        break;
                    }
                }
                assert!(map.is_complete());
            },
            BatchSize::SmallInput,
        )
    });
    // A partial holder that has only the second half, next to a full holder
    // working from the start: each of the partial holder's acquires scans
    // from the lowest missing chunk, so this shows the scan's cost.
    g.bench_function("full holder + second-half holder", |b| {
        b.iter_batched_ref(
            || ChunkMap::new(N, &empty),
            |map| {
                loop {
                    let a = map.acquire(0, |_| true);
                    let b = map.acquire(1, |i| i >= N / 2);
                    if let Some(i) = a {
                        assert!(map.complete(i, 0));
                    }
                    if let Some(i) = b {
                        assert!(map.complete(i, 1));
                    }
                    if a.is_none() && b.is_none() {
                        break;
                    }
                }
                assert!(map.is_complete());
            },
            BatchSize::SmallInput,
        )
    });
    // Resume: building the map from a half-full bitmap.
    let mut half = Bitmap::new(N);
    for i in (0..N).step_by(2) {
        half.set(i);
    }
    g.bench_function("new from half-done bitmap", |b| {
        b.iter(|| black_box(ChunkMap::new(N, black_box(&half))))
    });
    g.finish();
}
/// What a fetcher does with each 1 MiB chunk of a 64 MiB download, on one
/// thread: the BLAKE3 check, the write into a file (the page cache), and the
/// whole-file SHA-256, either from the buffer just written (how the follower
/// hashes chunks handed over by the workers) or from a read of the file
/// back (how it hashes a chunk that arrived too far out of order).
fn chunk_landing(c: &mut Criterion) {
    use std::os::unix::fs::FileExt;
    let data = pseudo_random(64 * MIB, b"chunk landing");
    let m = manifest::manifest_of(&data, CHUNK_SIZE);
    let file = tempfile::tempfile().expect("temp file");
    file.set_len(data.len() as u64).expect("size temp file");
    let mut buf = vec![0u8; MIB];
    let mut g = c.benchmark_group("chunk_landing_64MiB");
    g.throughput(Throughput::Bytes(data.len() as u64))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let land = |sha: &mut sha2::Sha256, re_read: Option<&mut Vec<u8>>| {
        let mut re_read = re_read;
        for (i, chunk) in data.chunks(MIB).enumerate() {
            assert!(m.chunk_matches(i as u32, chunk));
            let at = (i * MIB) as u64;
            file.write_all_at(chunk, at).expect("write");
            match re_read.as_deref_mut() {
                Some(buf) => {
                    file.read_exact_at(buf, at).expect("read back");
                    sha.update(&buf[..]);
                }
                None => sha.update(chunk),
            }
        }
    };
    g.bench_function("verify+write", |b| {
        b.iter(|| {
            for (i, chunk) in data.chunks(MIB).enumerate() {
                assert!(m.chunk_matches(i as u32, chunk));
                file.write_all_at(chunk, (i * MIB) as u64).expect("write");
            }
        })
    });
    g.bench_function("verify+write+sha256 of the buffer", |b| {
        b.iter(|| {
            let mut sha = sha2::Sha256::new();
            land(&mut sha, None);
            black_box(sha.finalize())
        })
    });
    g.bench_function("verify+write+read back+sha256", |b| {
        b.iter(|| {
            let mut sha = sha2::Sha256::new();
            land(&mut sha, Some(&mut buf));
            black_box(sha.finalize())
        })
    });
    g.bench_function(
        "staged: verify+write on 2 threads, sha256 on a third",
        |b| b.iter(|| black_box(land_staged(&data, &m, &file))),
    );
    g.finish();
}

/// A download's writes to disk, made durable at the end (the shape of
/// `store::partial::write` and `Partial::finish`): 64 MiB in 1 MiB chunks
/// of 64 KiB `pwrite`s, then `fdatasync`; with and without each chunk's
/// writeback started at once (`sync_file_range(SYNC_FILE_RANGE_WRITE)`);
/// and as direct writes from aligned buffers, where the file system takes
/// them (what a download does on ext4 and XFS). The file is in the
/// current folder (the target folder's disk, not a
/// tmpfs), a new one per run.
fn disk_landing(c: &mut Criterion) {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let data = pseudo_random(64 * MIB, b"disk landing");
    let dir = tempfile::tempdir_in(".").expect("temp dir");
    let mut g = c.benchmark_group("disk_landing_64MiB");
    g.throughput(Throughput::Bytes(data.len() as u64))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    let land = |start_writeback: bool| {
        let path = dir.path().join("part");
        let file = std::fs::File::create(&path).expect("create");
        for (i, chunk) in data.chunks(MIB).enumerate() {
            let at = (i * MIB) as u64;
            for (k, piece) in chunk.chunks(64 << 10).enumerate() {
                file.write_all_at(piece, at + (k * (64 << 10)) as u64)
                    .expect("write");
            }
            if start_writeback {
                // SAFETY: an open descriptor; no memory of ours is read.
                let _ = unsafe {
                    libc::sync_file_range(
                        file.as_raw_fd(),
                        at as i64,
                        chunk.len() as i64,
                        libc::SYNC_FILE_RANGE_WRITE,
                    )
                };
            }
        }
        file.sync_data().expect("sync");
        drop(file);
        std::fs::remove_file(&path).expect("remove");
    };
    g.bench_function("pwrite 64 KiB pieces, fdatasync at the end", |b| {
        b.iter(|| land(false))
    });
    g.bench_function("+ writeback started per chunk (sync_file_range)", |b| {
        b.iter(|| land(true))
    });
    // What a download does on ext4 and XFS: each chunk written directly
    // (O_DIRECT) from an aligned buffer, none through the page cache.
    let chunks: Vec<ChunkBuf> = data.chunks(MIB).map(ChunkBuf::from).collect();
    let land_direct = |direct: &std::fs::File| {
        for (i, chunk) in chunks.iter().enumerate() {
            direct
                .write_all_at(chunk, (i * MIB) as u64)
                .expect("direct write");
        }
    };
    let path = dir.path().join("probe");
    let probe = std::fs::File::create(&path).expect("create");
    if lanshare::platform::open_direct(&probe).is_some() {
        g.bench_function("direct writes from aligned buffers (O_DIRECT)", |b| {
            b.iter(|| {
                // Sized first, as a download's `.part` is: the writes fill
                // holes, as they do there.
                let path = dir.path().join("part");
                let file = std::fs::File::create(&path).expect("create");
                file.set_len(data.len() as u64).expect("size");
                let direct = lanshare::platform::open_direct(&file).expect("direct");
                land_direct(&direct);
                file.sync_data().expect("sync");
                drop((direct, file));
                std::fs::remove_file(&path).expect("remove");
            })
        });
    } else {
        eprintln!("disk_landing: no direct writes on this folder's file system; skipped");
    }
    g.finish();
}

/// The fetcher's stages as threads (the shape of `fetch::worker` and
/// `fetch::follow`): checks and writes of alternate chunks on two threads,
/// each chunk's index then handed to a hashing thread that hashes the
/// chunks in order as they arrive (from memory). Shows how much of the
/// work overlaps on this machine.
fn land_staged(data: &[u8], m: &Manifest, file: &std::fs::File) -> [u8; 32] {
    use std::os::unix::fs::FileExt;
    use std::sync::mpsc;
    let (done_tx, done_rx) = mpsc::sync_channel::<usize>(8);
    std::thread::scope(|s| {
        for lane in 0..2 {
            let done = done_tx.clone();
            s.spawn(move || {
                for (i, chunk) in data.chunks(MIB).enumerate().skip(lane).step_by(2) {
                    assert!(m.chunk_matches(i as u32, chunk));
                    for (k, piece) in chunk.chunks(64 << 10).enumerate() {
                        file.write_all_at(piece, (i * MIB + k * (64 << 10)) as u64)
                            .expect("write");
                    }
                    done.send(i).expect("hasher alive");
                }
            });
        }
        drop(done_tx);
        let hasher = s.spawn(move || {
            let mut sha = sha2::Sha256::new();
            let (mut next, mut ready) = (0, std::collections::BTreeSet::new());
            for i in done_rx {
                ready.insert(i);
                while ready.remove(&next) {
                    sha.update(&data[next * MIB..(next + 1) * MIB]);
                    next += 1;
                }
            }
            <[u8; 32]>::from(sha.finalize())
        });
        hasher.join().expect("hasher")
    })
}

/// Runs the three handshake messages in memory; the two transports
/// (client's, server's).
fn handshake_pair(
    client: &Identity,
    server: &Identity,
    mode: &Mode,
) -> (snow::TransportState, snow::TransportState) {
    const PRE: usize = frame::PREAMBLE_LEN;
    let mut c = noise::Initiator::new(client, mode).unwrap();
    let mut s = noise::Responder::new(server, mode).unwrap();
    let first = c.first(mode).unwrap();
    s.check_preamble(first[..PRE].try_into().unwrap()).unwrap();
    s.read_first(&first[PRE + 2..]).unwrap();
    let second = s
        .second(&noise::server_hello(server, "srv", [0; 16], 0))
        .unwrap();
    c.read_second(&second[2..]).unwrap();
    let (third, ct) = c.third(&noise::client_hello(client, "cli")).unwrap();
    let (_, st) = s.read_third(&third[2..]).unwrap();
    (ct, st)
}

/// Whole handshakes (both sides, one core): connections per second.
fn handshakes(c: &mut Criterion) {
    let (client, server) = (Identity::from_seed([1; 32]), Identity::from_seed([2; 32]));
    let private = Mode::private(&SwarmKey::from_bytes([3; 32]));
    let mut g = c.benchmark_group("noise_handshake");
    g.throughput(Throughput::Elements(1))
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g.bench_function("XX (open)", |b| {
        b.iter(|| black_box(handshake_pair(&client, &server, &Mode::Open)))
    });
    g.bench_function("XXpsk0 (private)", |b| {
        b.iter(|| black_box(handshake_pair(&client, &server, &private)))
    });
    g.finish();
}

/// Sealing and opening a 4 MiB chunk as records (AES-256-GCM via ring).
fn records(c: &mut Criterion) {
    let (client, server) = (Identity::from_seed([1; 32]), Identity::from_seed([2; 32]));
    let private = Mode::private(&SwarmKey::from_bytes([3; 32]));
    // Sealing alone needs no opener.
    let (_, st) = handshake_pair(&client, &server, &private);
    let mut sealer = Records::new(st);
    let chunk = pseudo_random(4 * MIB, b"records");
    let mut sealed = Vec::with_capacity(chunk.len() + chunk.len() / 1000 + 4096);
    let mut opened = vec![0u8; record::MAX_RECORD];
    let mut g = c.benchmark_group("records_4MiB");
    g.throughput(Throughput::Bytes(chunk.len() as u64))
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g.bench_function("seal", |b| {
        b.iter(|| {
            sealed.clear();
            for piece in chunk.chunks(record::MAX_PLAINTEXT) {
                sealer.seal(piece, &mut sealed).unwrap();
            }
            black_box(sealed.len())
        })
    });
    // Opening alone (the fetcher's share): the records are sealed in the
    // untimed setup of each batch, by a fresh pair of transports (the
    // benches above moved the first pair's nonces apart).
    let (ct, st) = handshake_pair(&client, &server, &private);
    let (mut sealer, mut opener) = (Records::new(st), Records::new(ct));
    g.bench_function("open", |b| {
        b.iter_batched_ref(
            || {
                let mut sealed = Vec::with_capacity(chunk.len() + chunk.len() / 1000 + 4096);
                for piece in chunk.chunks(record::MAX_PLAINTEXT) {
                    sealer.seal(piece, &mut sealed).unwrap();
                }
                sealed
            },
            |sealed| {
                let mut rest = sealed.as_slice();
                while rest.len() > record::LEN_PREFIX {
                    let len = record::record_len([rest[0], rest[1]]).unwrap();
                    let body = &rest[record::LEN_PREFIX..record::LEN_PREFIX + len];
                    black_box(opener.open(body, &mut opened).unwrap());
                    rest = &rest[record::LEN_PREFIX + len..];
                }
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("seal+open", |b| {
        b.iter(|| {
            sealed.clear();
            for piece in chunk.chunks(record::MAX_PLAINTEXT) {
                sealer.seal(piece, &mut sealed).unwrap();
            }
            let mut rest = sealed.as_slice();
            while rest.len() > record::LEN_PREFIX {
                let len = record::record_len([rest[0], rest[1]]).unwrap();
                let body = &rest[record::LEN_PREFIX..record::LEN_PREFIX + len];
                black_box(opener.open(body, &mut opened).unwrap());
                rest = &rest[record::LEN_PREFIX + len..];
            }
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    chunk_hashing,
    file_hashing,
    datagrams,
    frames,
    chunk_map,
    chunk_landing,
    disk_landing,
    handshakes,
    records
);
criterion_main!(benches);
