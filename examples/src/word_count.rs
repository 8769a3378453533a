//! Word count as a map-reduce: each chunk of text is counted in the sandbox, the counts are
//! merged on the requestor.

use std::collections::BTreeMap;

/// Word frequencies.
pub type Counts = BTreeMap<String, u64>;

/// Counts the words of `text`: lowercase runs of alphanumeric characters.
#[golem::task]
pub fn count_words(text: String) -> Counts {
    let mut counts = Counts::new();
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
    {
        *counts.entry(word.to_lowercase()).or_default() += 1;
    }
    counts
}

/// Adds `part` into `total`.
pub fn merge(mut total: Counts, part: Counts) -> Counts {
    for (word, count) in part {
        *total.entry(word).or_default() += count;
    }
    total
}

/// Splits `text` into chunks of about `size` bytes at whitespace, so no word is cut.
pub fn chunks(text: &str, size: usize) -> Vec<String> {
    let mut chunks = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut end = size.min(rest.len());
        while end < rest.len() && !rest.is_char_boundary(end) {
            end += 1;
        }
        end = rest[end..]
            .find(char::is_whitespace)
            .map_or(rest.len(), |offset| end + offset);
        chunks.push(rest[..end].to_string());
        rest = &rest[end..];
    }
    chunks
}

/// A deterministic text of `words` words drawn from a small vocabulary with a skewed
/// distribution, so counts differ widely.
pub fn sample_text(words: usize) -> String {
    const VOCABULARY: &[&str] = &[
        "the",
        "golem",
        "runs",
        "tasks",
        "on",
        "other",
        "people's",
        "computers",
        "and",
        "pays",
        "them",
        "for",
        "work",
        "a",
        "sandbox",
        "keeps",
        "everyone",
        "safe",
        "results",
        "are",
        "verified",
        "before",
        "payment",
        "Rust",
        "WebAssembly",
    ];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut text = String::with_capacity(words * 7);
    for index in 0..words {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let draw = (state >> 33) as usize;
        // Squaring a uniform draw skews it towards the first words.
        let pick = (draw % 1000) * (draw % 1000) * VOCABULARY.len() / 1_000_000;
        text.push_str(VOCABULARY[pick]);
        text.push(if index % 12 == 11 { '\n' } else { ' ' });
    }
    text
}
