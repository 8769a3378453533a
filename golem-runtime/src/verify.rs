//! How a requestor decides that a provider's result is honest.
//!
//! Providers may return wrong results, on purpose or by fault. A job chooses a [`Verify`]
//! strategy:
//!
//! * [`Verify::None`]: trusted providers; the first result of each subtask is accepted.
//! * [`Verify::Redundant`]: every batch runs on `copies` distinct providers and is accepted
//!   when all copies agree byte for byte (outputs and fuel). When they disagree, the requestor
//!   re-runs the disputed subtasks in its own sandbox: the tie-breaker. Every provider that
//!   disagrees with it is caught; the batch then needs its copies again.
//! * [`Verify::SpotCheck`]: the requestor re-runs a random fraction of each provider's results
//!   in its own sandbox. The fraction falls as the provider's record of accepted results since
//!   its last failure grows and is back at its start after a failure, in the manner of BOINC's
//!   adaptive replication; see [`SpotCheck`] for the rate and the bound it gives.
//! * [`Verify::Custom`]: a user function checks every result (for instance, re-renders a few
//!   random pixels of a tile).
//!
//! Under every strategy but `None`, a deterministic failure a provider reports is re-run by the
//! requestor before it fails the job, so a provider cannot end a job by lying about one.
//!
//! A provider caught once is dropped and banned, is never paid for the bad result, and every
//! other result it returned in a running job is computed again elsewhere. Comparing results
//! byte for byte is sound only between equal engines: a job that re-runs results is scheduled
//! only on providers whose [engine fingerprint](crate::sandbox::EngineFingerprint) equals the
//! requestor's.

use std::fmt;
use std::sync::Arc;

use crate::sandbox::EngineFingerprint;

/// A user's check of one result: (subtask index, encoded input, encoded output) to `Ok` or
/// the reason the output is wrong.
pub type CheckFn = dyn Fn(u64, &[u8], &[u8]) -> Result<(), String> + Send + Sync;

/// A job's verification strategy.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum Verify {
    /// Accept the first result: the providers are trusted.
    #[default]
    None,
    /// Run every batch on `copies` distinct providers and accept byte-exact agreement; the
    /// requestor's own re-run breaks ties.
    Redundant {
        /// Copies per batch (at least 2 to mean anything).
        copies: u32,
    },
    /// Re-run an adaptive random fraction of the results locally.
    SpotCheck(SpotCheck),
    /// Check every result with a user function, on the requestor.
    Custom(Arc<CheckFn>),
}

impl Verify {
    /// `copies` copies of every batch on distinct providers.
    pub fn redundant(copies: u32) -> Self {
        Self::Redundant {
            copies: copies.max(1),
        }
    }

    /// Adaptive spot checks with the default rates.
    pub fn spot_check() -> Self {
        Self::SpotCheck(SpotCheck::default())
    }

    /// Every result checked by `check(index, input, output)`.
    pub fn custom(
        check: impl Fn(u64, &[u8], &[u8]) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        Self::Custom(Arc::new(check))
    }

    /// Copies of each batch that must agree.
    pub fn copies(&self) -> usize {
        match self {
            Self::Redundant { copies } => (*copies).max(1) as usize,
            _ => 1,
        }
    }

    /// Whether the requestor re-runs results in its own sandbox under this strategy (to check
    /// a sample, break a tie or confirm a failure).
    pub fn reruns(&self) -> bool {
        !matches!(self, Self::None)
    }

    /// Whether a provider whose engine is `theirs` may run a job under this strategy for a
    /// requestor whose sandbox engine is `ours`: results that are re-run are compared byte for
    /// byte, which holds only between equal engines. An engine not known is not refused.
    pub fn engine_fits(
        &self,
        ours: Option<EngineFingerprint>,
        theirs: Option<EngineFingerprint>,
    ) -> bool {
        match (ours, theirs) {
            (Some(ours), Some(theirs)) if self.reruns() => ours == theirs,
            _ => true,
        }
    }
}

impl fmt::Debug for Verify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Redundant { copies } => {
                f.debug_struct("Redundant").field("copies", copies).finish()
            }
            Self::SpotCheck(spot) => f.debug_tuple("SpotCheck").field(spot).finish(),
            Self::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// The rate of adaptive spot checks.
///
/// A provider with `streak` results accepted since its last failure (or ever, if it never
/// failed) has each result re-run with probability
/// `max(floor, initial × warmup / (warmup + streak))`.
///
/// The bound: every wrong result is re-run with probability at least `floor`, independently,
/// and a provider caught once has every result of the job recomputed. A provider that returns
/// `m` wrong results therefore spoils the final output with probability at most
/// `(1 − floor)^m`, and the expected number of wrong results it leaves in the output, over any
/// job and any way of cheating, is at most `max over m of m(1 − floor)^m ≤ 1 / (e · floor)`
/// ([`SpotCheck::expected_wrong_bound`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpotCheck {
    /// Rate for a provider with no record.
    pub initial: f64,
    /// Lowest rate, whatever the record.
    pub floor: f64,
    /// Accepted results over which the rate halves from `initial` (then thirds, and so on).
    pub warmup: u64,
}

impl Default for SpotCheck {
    fn default() -> Self {
        Self {
            initial: 0.5,
            floor: 0.01,
            warmup: 20,
        }
    }
}

impl SpotCheck {
    /// The probability that one result of a provider with this streak is re-run.
    pub fn rate(&self, streak: u64) -> f64 {
        let warmup = self.warmup.max(1) as f64;
        let adaptive = self.initial * warmup / (warmup + streak as f64);
        adaptive.max(self.floor).clamp(0.0, 1.0)
    }

    /// Upper bound on the expected number of wrong results one provider leaves in a job's
    /// output, however it cheats.
    pub fn expected_wrong_bound(&self) -> f64 {
        let miss = 1.0 - self.floor.clamp(f64::MIN_POSITIVE, 1.0);
        if miss <= 0.0 {
            return 0.0;
        }
        // m(1 − f)^m peaks at m = −1 / ln(1 − f).
        let peak = -1.0 / miss.ln();
        let value = |m: f64| m * miss.powf(m);
        value(peak.floor()).max(value(peak.ceil()))
    }

    /// The probability that a provider returning `wrong` wrong results is never caught.
    pub fn escape_probability(&self, wrong: u64) -> f64 {
        (1.0 - self.floor).powf(wrong as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_falls_with_the_streak_to_the_floor() {
        let spot = SpotCheck::default();
        assert_eq!(spot.rate(0), 0.5);
        assert_eq!(spot.rate(20), 0.25);
        assert!(spot.rate(100) < spot.rate(50));
        assert_eq!(spot.rate(1_000_000), spot.floor);
        // 1 / (e · 0.01) ≈ 36.8; the exact maximum of m · 0.99^m is just below it.
        let bound = spot.expected_wrong_bound();
        assert!(
            bound > 36.0 && bound <= 1.0 / (std::f64::consts::E * 0.01),
            "{bound}"
        );
        assert!((spot.escape_probability(100) - 0.99f64.powi(100)).abs() < 1e-12);
    }
}
