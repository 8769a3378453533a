//! One-item jobs over QUIC on loopback, back to back: the round trip `compare` reports, alone,
//! for profiling (`perf record` on this binary).
//!
//! Run: `cargo bench -p golem-benches --bench roundtrip` (`GOLEM_TRIPS` sets the count).

use std::time::{Duration, Instant};

use golem::Golem;
use golem_fixture::double;

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing and expects speed.
    let quick = !std::env::args().any(|arg| arg == "--bench");
    let trips: usize = std::env::var("GOLEM_TRIPS")
        .ok()
        .and_then(|trips| trips.parse().ok())
        .unwrap_or(if quick { 20 } else { 20_000 });
    let golem = Golem::local_blocking().expect("local providers");
    for _ in 0..100.min(trips) {
        golem.par_for([21u64], double).run().expect("one task");
    }
    let mut times: Vec<Duration> = (0..trips)
        .map(|_| {
            let started = Instant::now();
            golem.par_for([21u64], double).run().expect("one task");
            started.elapsed()
        })
        .collect();
    times.sort();
    println!(
        "one task over QUIC on loopback, {trips} trips: median {:.0} µs, p99 {:.0} µs",
        times[times.len() / 2].as_secs_f64() * 1e6,
        times[times.len() * 99 / 100].as_secs_f64() * 1e6
    );
}
