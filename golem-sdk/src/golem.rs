//! The [`Golem`] handle: where tasks run, with which limits.

use std::sync::Arc;

use golem_runtime::local::LocalProviders;
use golem_runtime::sandbox::{Limits, SandboxConfig};

use crate::iterate::{Iterated, Until};
use crate::map_reduce::MapReduce;
use crate::par_for::{NoContext, ParFor};
use crate::{Error, Task};

/// A handle to the providers that run tasks. Cheap to clone.
///
/// Create one with [`Golem::local`] (providers in this process) or [`Golem::builder`].
#[derive(Debug, Clone)]
pub struct Golem {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) providers: LocalProviders,
    pub(crate) limits: Limits,
}

impl Golem {
    /// In-process providers, one per available core, with default limits.
    pub async fn local() -> Result<Self, Error> {
        Self::builder().build().await
    }

    /// [`Golem::local`] for programs that are not async.
    pub fn local_blocking() -> Result<Self, Error> {
        Self::builder().build_blocking()
    }

    /// Configures a [`Golem`].
    pub fn builder() -> GolemBuilder {
        GolemBuilder::default()
    }

    /// Number of providers.
    pub fn providers(&self) -> usize {
        self.inner.providers.workers()
    }

    /// The limits every subtask runs under, unless a call overrides them.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Runs `task` once per item, in sandboxes, and returns the outputs in input order.
    ///
    /// Await the returned builder (after [`ParFor::with`] for a task that takes a context), or
    /// call [`ParFor::run`] to block.
    pub fn par_for<T, I>(&self, items: I, task: T) -> ParFor<'_, T, NoContext>
    where
        T: Task,
        I: IntoIterator<Item = T::Input>,
    {
        ParFor::new(self, items.into_iter().collect(), task)
    }

    /// Runs `task` once per item in sandboxes, then folds the outputs in input order with
    /// `reduce`, starting from `identity()`, on this machine.
    pub fn map_reduce<T, I, A, Id, R>(
        &self,
        items: I,
        task: T,
        identity: Id,
        reduce: R,
    ) -> MapReduce<'_, T, NoContext, Id, R>
    where
        T: Task,
        I: IntoIterator<Item = T::Input>,
        Id: FnOnce() -> A,
        R: FnMut(A, T::Output) -> A,
    {
        MapReduce::new(self.par_for(items, task), identity, reduce)
    }

    /// Runs rounds until `until` says stop: each round, `step` gets this handle, the round
    /// number (from 0) and the last state, and returns the next state, typically by running a
    /// `par_for` whose results decide it.
    pub async fn iterate<S, F>(
        &self,
        init: S,
        mut step: F,
        until: Until<S>,
    ) -> Result<Iterated<S>, Error>
    where
        F: AsyncFnMut(&Golem, u32, &S) -> Result<S, Error>,
    {
        crate::iterate::run(init, until, async |round, state| {
            step(self, round, state).await
        })
        .await
    }

    /// [`Golem::iterate`] with a blocking `step`, for programs that are not async.
    pub fn iterate_blocking<S, F>(
        &self,
        init: S,
        mut step: F,
        until: Until<S>,
    ) -> Result<Iterated<S>, Error>
    where
        F: FnMut(&Golem, u32, &S) -> Result<S, Error>,
    {
        crate::blocking::block_on(self.iterate(
            init,
            async |golem, round, state| step(golem, round, state),
            until,
        ))
    }
}

/// Builds a [`Golem`].
#[derive(Debug, Clone, Default)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct GolemBuilder {
    providers: Option<usize>,
    limits: Limits,
    sandbox: Option<SandboxConfig>,
}

impl GolemBuilder {
    /// Number of in-process providers (default: the available cores).
    pub fn providers(mut self, providers: usize) -> Self {
        self.providers = Some(providers);
        self
    }

    /// Limits of every subtask (default: [`Limits::default`]).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Engine settings of the in-process providers (default: [`SandboxConfig::default`]
    /// sized for the providers).
    pub fn sandbox(mut self, config: SandboxConfig) -> Self {
        self.sandbox = Some(config);
        self
    }

    /// Starts the providers.
    pub async fn build(self) -> Result<Golem, Error> {
        self.build_blocking()
    }

    /// [`GolemBuilder::build`] for programs that are not async.
    pub fn build_blocking(self) -> Result<Golem, Error> {
        let providers = self.providers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
        });
        // Two instance slots per provider leave room for the module check at compile time.
        let slots = u32::try_from(providers.saturating_mul(2) + 2).unwrap_or(u32::MAX);
        let config = self
            .sandbox
            .unwrap_or_else(|| SandboxConfig::with_instances(slots));
        let providers = LocalProviders::start(providers, config)?;
        Ok(Golem {
            inner: Arc::new(Inner {
                providers,
                limits: self.limits,
            }),
        })
    }
}
