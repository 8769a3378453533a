//! Monte Carlo π: 64 subtasks each throw a million random points, using the `rand` crate inside
//! the task. The sandbox seeds randomness from (job, subtask), so every run prints the same
//! estimate; `.seed(n)` picks another stream.
//!
//! Run: `cargo run --release --example monte_carlo`

use golem::Golem;
use golem_examples::monte_carlo::{count_hits, estimate};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    const SUBTASKS: u64 = 64;
    const SAMPLES: u64 = 1_000_000;
    let golem = Golem::local().await?;
    let hits = golem
        .map_reduce(
            vec![SAMPLES; SUBTASKS as usize],
            count_hits,
            || 0,
            |sum, hits| sum + hits,
        )
        .await?;
    let pi = estimate(hits, SAMPLES * SUBTASKS);
    println!(
        "π ≈ {pi:.6} from {} samples (error {:.2e})",
        SAMPLES * SUBTASKS,
        (pi - std::f64::consts::PI).abs()
    );
    Ok(())
}
