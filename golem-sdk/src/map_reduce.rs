//! [`MapReduce`]: one task over many items, folded into one value.

use std::future::{Future, IntoFuture};
use std::pin::Pin;

use golem_runtime::sandbox::Limits;

use crate::par_for::{ContextFor, NoContext, ParFor, WithContext};
use crate::{Error, Task};

/// A `map_reduce` being set up; await it (or call [`run`](Self::run)) to run it.
///
/// The map runs in sandboxes; the reduce runs here, over the outputs in input order, so the
/// result is the same however the work was spread.
#[must_use = "a map_reduce does nothing until it is awaited or run"]
pub struct MapReduce<'g, T: Task, C, Id, R> {
    map: ParFor<'g, T, C>,
    identity: Id,
    reduce: R,
}

impl<T: Task, C, Id, R> std::fmt::Debug for MapReduce<'_, T, C, Id, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapReduce")
            .field("map", &self.map)
            .finish_non_exhaustive()
    }
}

impl<'g, T: Task, C, Id, R> MapReduce<'g, T, C, Id, R> {
    pub(crate) fn new(map: ParFor<'g, T, C>, identity: Id, reduce: R) -> Self {
        Self {
            map,
            identity,
            reduce,
        }
    }
}

impl<'g, T: Task, Id, R> MapReduce<'g, T, NoContext, Id, R> {
    /// Gives the map task's shared context, as [`ParFor::with`] does.
    pub fn with<'c>(
        self,
        context: &'c T::Context,
    ) -> MapReduce<'g, T, WithContext<'c, T::Context>, Id, R> {
        MapReduce {
            map: self.map.with(context),
            identity: self.identity,
            reduce: self.reduce,
        }
    }
}

impl<'g, T, C, A, Id, R> MapReduce<'g, T, C, Id, R>
where
    T: Task,
    C: ContextFor<T>,
    Id: FnOnce() -> A,
    R: FnMut(A, T::Output) -> A,
{
    /// Overrides the limits of each map subtask, as [`ParFor::limits`] does.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.map = self.map.limits(limits);
        self
    }

    /// Seeds the sandboxes' randomness, as [`ParFor::seed`] does.
    pub fn seed(mut self, seed: u64) -> Self {
        self.map = self.map.seed(seed);
        self
    }

    /// Reports map progress, as [`ParFor::progress`] does.
    pub fn progress(mut self, progress: impl Fn(usize, usize) + Send + Sync + 'static) -> Self {
        self.map = self.map.progress(progress);
        self
    }

    /// Runs to completion, blocking this thread. Do not call it from async code: await instead.
    pub fn run(self) -> Result<A, Error> {
        Ok(self
            .map
            .run()?
            .into_iter()
            .fold((self.identity)(), self.reduce))
    }
}

impl<'g, T, C, A, Id, R> IntoFuture for MapReduce<'g, T, C, Id, R>
where
    T: Task,
    C: ContextFor<T>,
    Id: FnOnce() -> A + Send + 'g,
    R: FnMut(A, T::Output) -> A + Send + 'g,
{
    type Output = Result<A, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<A, Error>> + Send + 'g>>;

    fn into_future(self) -> Self::IntoFuture {
        let Self {
            map,
            identity,
            reduce,
        } = self;
        let outputs = map.into_future();
        Box::pin(async move { Ok(outputs.await?.into_iter().fold(identity(), reduce)) })
    }
}
