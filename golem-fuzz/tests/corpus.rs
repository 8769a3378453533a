//! Replays what fuzzing saved: the corpus of every target (`fuzz/corpus/<target>/`) and each
//! input that once crashed one (`fuzz/regressions/<target>/`), through the same targets. What
//! fuzzing found stays fixed, and `cargo test` checks it without fuzzing again.

use std::path::{Path, PathBuf};

/// The files in `dir`, sorted; none when it does not exist.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("a corpus entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_saved_input_of_every_target_runs_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    for (name, target) in golem_fuzz::TARGETS {
        let corpus = inputs(&root.join("corpus").join(name));
        assert!(
            !corpus.is_empty(),
            "no saved corpus for target `{name}` under {}: run fuzz/run.sh",
            root.display()
        );
        let regressions = inputs(&root.join("regressions").join(name));
        for input in corpus.iter().chain(&regressions) {
            let bytes = std::fs::read(input).expect("a saved input");
            target(&bytes);
        }
        println!(
            "{name}: {} corpus inputs and {} regressions replayed",
            corpus.len(),
            regressions.len()
        );
    }
}
