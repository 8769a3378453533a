//! Rounds whose results decide the next round: [`Golem::iterate`](crate::Golem::iterate).

/// Decides from the previous and the next state whether a run has converged.
type ConvergenceTest<S> = Box<dyn FnMut(&S, &S) -> bool + Send>;

/// When [`Golem::iterate`](crate::Golem::iterate) stops.
#[must_use = "an `Until` does nothing until passed to `iterate`"]
pub struct Until<S> {
    max_rounds: u32,
    converged: Option<ConvergenceTest<S>>,
}

impl<S> std::fmt::Debug for Until<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Until")
            .field("max_rounds", &self.max_rounds)
            .field("has_convergence_test", &self.converged.is_some())
            .finish()
    }
}

impl<S> Until<S> {
    /// Exactly `rounds` rounds.
    pub fn rounds(rounds: u32) -> Self {
        Self {
            max_rounds: rounds,
            converged: None,
        }
    }

    /// Until `converged(previous, next)` holds after a round, or 100 rounds; change the cap with
    /// [`max_rounds`](Self::max_rounds).
    pub fn converged(converged: impl FnMut(&S, &S) -> bool + Send + 'static) -> Self {
        Self {
            max_rounds: 100,
            converged: Some(Box::new(converged)),
        }
    }

    /// Stops after at most `rounds` rounds even if not converged.
    pub fn max_rounds(mut self, rounds: u32) -> Self {
        self.max_rounds = rounds;
        self
    }
}

/// The outcome of [`Golem::iterate`](crate::Golem::iterate).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Iterated<S> {
    /// The last state.
    pub state: S,
    /// Rounds run.
    pub rounds: u32,
    /// Whether the convergence test held (false when stopped by the round cap).
    pub converged: bool,
}

pub(crate) async fn run<S, F, E>(
    init: S,
    mut until: Until<S>,
    mut step: F,
) -> Result<Iterated<S>, E>
where
    F: AsyncFnMut(u32, &S) -> Result<S, E>,
{
    let mut state = init;
    for round in 0..until.max_rounds {
        let next = step(round, &state).await?;
        let converged = until
            .converged
            .as_mut()
            .is_some_and(|converged| converged(&state, &next));
        tracing::debug!(round, converged, "golem iterate: round done");
        state = next;
        if converged {
            return Ok(Iterated {
                state,
                rounds: round + 1,
                converged: true,
            });
        }
    }
    Ok(Iterated {
        state,
        rounds: until.max_rounds,
        converged: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        crate::blocking::block_on(future)
    }

    #[test]
    fn stops_when_converged() {
        let done = block_on(run(
            10u32,
            Until::converged(|previous: &u32, next: &u32| previous == next),
            async |_, state: &u32| Ok::<_, ()>(state / 2 + 1),
        ))
        .expect("no error");
        // 10 -> 6 -> 4 -> 3 -> 2 -> 2
        assert_eq!((done.state, done.rounds, done.converged), (2, 5, true));
    }

    #[test]
    fn stops_at_the_round_cap() {
        let done = block_on(run(
            0u32,
            Until::converged(|_: &u32, _: &u32| false).max_rounds(7),
            async |round, state: &u32| Ok::<_, ()>(state + round),
        ))
        .expect("no error");
        assert_eq!((done.state, done.rounds, done.converged), (21, 7, false));
    }

    #[test]
    fn passes_errors_through() {
        let failed = block_on(run(0u32, Until::rounds(5), async |round, _: &u32| {
            if round == 2 { Err("boom") } else { Ok(round) }
        }));
        assert_eq!(failed, Err("boom"));
    }
}
