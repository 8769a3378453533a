//! k-means with `iterate`: each round assigns points to the nearest centroid in sandboxes (the
//! centroids are the shared context), then moves the centroids here; the round's results decide
//! whether another round runs.
//!
//! Run: `cargo run --release --example kmeans`

use golem::{Golem, Until};
use golem_examples::kmeans::{assign, initial_centroids, sample_points, shift, update};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let chunks = sample_points(8, 25_000, 5_000);
    let golem = Golem::local().await?;
    let result = golem
        .iterate(
            initial_centroids(&chunks, 8),
            async |golem, round, centroids| {
                let partials = golem
                    .par_for(chunks.clone(), assign)
                    .with(centroids)
                    .await?;
                let next = update(centroids, &partials);
                println!(
                    "round {round}: centroids moved {:.3e}",
                    shift(centroids, &next).sqrt()
                );
                Ok(next)
            },
            Until::converged(|previous: &Vec<[f64; 2]>, next: &Vec<[f64; 2]>| {
                shift(previous, next) < 1e-12
            })
            .max_rounds(50),
        )
        .await?;
    println!(
        "{} after {} rounds:",
        if result.converged {
            "converged"
        } else {
            "stopped"
        },
        result.rounds
    );
    for [x, y] in &result.state {
        println!("  ({x:7.3}, {y:7.3})");
    }
    Ok(())
}
