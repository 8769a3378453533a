//! Monte Carlo estimate of π with the `rand` crate inside the task.
//!
//! `rand::rng()` seeds itself from the operating system; in the sandbox that is golem's
//! deterministic WASI, seeded from (job, subtask), so a job gives the same estimate every run.

use rand::RngExt;

/// Throws `samples` random points into the unit square and counts those inside the quarter
/// circle.
#[golem::task]
pub fn count_hits(samples: u64) -> u64 {
    let mut rng = rand::rng();
    let mut hits = 0;
    for _ in 0..samples {
        let (x, y): (f64, f64) = (rng.random(), rng.random());
        if x * x + y * y <= 1.0 {
            hits += 1;
        }
    }
    hits
}

/// π from `hits` out of `samples`.
pub fn estimate(hits: u64, samples: u64) -> f64 {
    4.0 * hits as f64 / samples as f64
}
