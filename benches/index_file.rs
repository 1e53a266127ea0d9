//! Times `lanshare::manifest::hash_file` (what `lanshare up` does to index a
//! file) on a file named by an environment variable. No criterion: it is
//! driven by scripts/bench.sh, which compares it with `openssl dgst -sha256`
//! in the same run.
//!
//! ```text
//! LANSHARE_BENCH_FILE=/path/to/file [LANSHARE_BENCH_REPEAT=3] cargo bench --bench index_file
//! ```
//! Prints one line per run and a final machine-readable line:
//! `index_file bytes=N runs=R best_secs=S median_secs=S best_gib_per_s=G median_gib_per_s=G`.
//! Without LANSHARE_BENCH_FILE it says so and exits 0 (so `cargo bench` as a
//! whole still succeeds).

use std::path::PathBuf;
use std::time::Instant;

fn main() {
    let Some(path) = std::env::var_os("LANSHARE_BENCH_FILE").map(PathBuf::from) else {
        println!("index_file: set LANSHARE_BENCH_FILE=PATH to time hash_file on a file (skipped)");
        return;
    };
    let runs: usize = std::env::var("LANSHARE_BENCH_REPEAT")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|n| *n >= 1)
        .unwrap_or(3);
    let mut secs = Vec::with_capacity(runs);
    let mut size = 0;
    for run in 1..=runs {
        let t = Instant::now();
        let m = match lanshare::manifest::hash_file(&path, |_| {}) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("index_file: cannot hash {}: {e}", path.display());
                std::process::exit(1);
            }
        };
        let s = t.elapsed().as_secs_f64();
        size = m.size;
        println!(
            "index_file run {run}: {} bytes, {} chunks, {s:.3} s, {:.2} GiB/s, content id {}",
            m.size,
            m.chunks.len(),
            gib_per_s(m.size, s),
            m.content_id().short()
        );
        secs.push(s);
    }
    secs.sort_by(f64::total_cmp);
    let best = secs[0];
    let median = secs[secs.len() / 2];
    println!(
        "index_file bytes={size} runs={runs} best_secs={best:.4} median_secs={median:.4} best_gib_per_s={:.3} median_gib_per_s={:.3}",
        gib_per_s(size, best),
        gib_per_s(size, median)
    );
}

fn gib_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64 / secs.max(1e-9)
}
