//! Word count with `map_reduce`: chunks of text are counted in sandboxes, and the counts merged
//! here in input order. Pass a file to count it; without one, a generated text is counted.
//!
//! Run: `cargo run --release --example word_count [-- FILE]`

use golem::Golem;
use golem_examples::word_count::{Counts, chunks, count_words, merge, sample_text};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let text = match std::env::args().nth(1) {
        Some(path) => std::fs::read_to_string(path)?,
        None => sample_text(200_000),
    };
    let golem = Golem::local().await?;
    let counts = golem
        .map_reduce(chunks(&text, 64 << 10), count_words, Counts::new, merge)
        .await?;
    let mut top: Vec<_> = counts.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    println!("{} distinct words; the most frequent:", counts.len());
    for (word, count) in top.into_iter().take(10) {
        println!("{count:>8}  {word}");
    }
    Ok(())
}
