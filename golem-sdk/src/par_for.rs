//! [`ParFor`]: one task over many items.

use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;

use golem_runtime::node::{Blob, JobRequest, ProgressFn, RemoteJob};
use golem_runtime::proto::message::{BlobId, INLINE_INPUT_MAX, Input, JobSpec};
use golem_runtime::proto::requestor::{JobFailure, JobReport};
use golem_runtime::sandbox::{Limits, ModuleError};
use golem_runtime::verify::Verify;

use crate::error::Partial;
use crate::{Error, Golem, Task};

/// A `par_for` being set up; await it (or call [`run`](Self::run)) to run it.
///
/// Built by [`Golem::par_for`].
#[must_use = "a par_for does nothing until it is awaited or run"]
pub struct ParFor<'g, T: Task, C> {
    golem: &'g Golem,
    items: Vec<T::Input>,
    context: C,
    limits: Option<Limits>,
    seed: Option<u64>,
    progress: Option<ProgressFn>,
    verify: Option<Verify>,
    budget: Option<u128>,
    _task: PhantomData<T>,
}

impl<T: Task, C> std::fmt::Debug for ParFor<'_, T, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParFor")
            .field("task", &T::NAME)
            .field("items", &self.items.len())
            .finish_non_exhaustive()
    }
}

/// No context given yet; awaitable only for tasks whose context is `()`.
#[derive(Debug, Clone, Copy)]
pub struct NoContext;

/// The context given with [`ParFor::with`].
#[derive(Debug, Clone, Copy)]
pub struct WithContext<'c, X>(&'c X);

/// Supplies the shared context of task `T`.
#[diagnostic::on_unimplemented(
    message = "task `{T}` takes a shared context: call `.with(&context)` before running it",
    label = "the context of this task is missing"
)]
pub trait ContextFor<T: Task> {
    /// The context.
    fn context(&self) -> &T::Context;
}

impl<T: Task<Context = ()>> ContextFor<T> for NoContext {
    fn context(&self) -> &() {
        &()
    }
}

impl<T: Task> ContextFor<T> for WithContext<'_, T::Context> {
    fn context(&self) -> &T::Context {
        self.0
    }
}

impl<'g, T: Task> ParFor<'g, T, NoContext> {
    pub(crate) fn new(golem: &'g Golem, items: Vec<T::Input>, _task: T) -> Self {
        Self {
            golem,
            items,
            context: NoContext,
            limits: None,
            seed: None,
            progress: None,
            verify: None,
            budget: None,
            _task: PhantomData,
        }
    }

    /// Gives the shared context. It is encoded once and sent to each provider once, however
    /// many items there are.
    pub fn with<'c>(self, context: &'c T::Context) -> ParFor<'g, T, WithContext<'c, T::Context>> {
        ParFor {
            golem: self.golem,
            items: self.items,
            context: WithContext(context),
            limits: self.limits,
            seed: self.seed,
            progress: self.progress,
            verify: self.verify,
            budget: self.budget,
            _task: PhantomData,
        }
    }
}

impl<'g, T: Task, C: ContextFor<T>> ParFor<'g, T, C> {
    /// Overrides the limits of each subtask for this call.
    ///
    /// Providers were chosen for the limits the [`Golem`](crate::Golem) was built with; a
    /// provider runs a batch only if one of its flavors holds these limits too, and gives it
    /// back otherwise (the job fails with "the job's limits exceed every flavor" once no
    /// provider takes it).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = Some(limits);
        self
    }

    /// Seeds the sandboxes' randomness. By default the seed derives from the module, the task
    /// and the context, so the same job gives the same results every run; subtask `i` is always
    /// seeded from (job seed, `i`), whichever provider runs it.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Calls `progress(settled, total)` as batches of subtasks finish, from golem's network
    /// thread (keep it quick); `settled` grows with each call and the last one reports `total`,
    /// except that it falls back when a provider is caught cheating and the results it
    /// returned are computed again (see [`ParFor::verify`]).
    pub fn progress(mut self, progress: impl Fn(usize, usize) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(progress));
        self
    }

    /// How this call's results are verified (default: the [`Golem`]'s, see
    /// [`GolemBuilder::verify`](crate::GolemBuilder::verify)).
    pub fn verify(mut self, verify: Verify) -> Self {
        self.verify = Some(verify);
        self
    }

    /// Spends at most `budget` (in the smallest currency unit of the providers' prices) on this
    /// call. A subtask is sent only while what is spent plus the worst case of what runs (each
    /// subtask burning its whole fuel limit) fits, so set a fuel limit near what the task needs
    /// ([`limits`](Self::limits)). When no provider can be paid for another subtask the call
    /// ends with [`Error::Budget`], which keeps the outputs accepted so far.
    pub fn budget(mut self, budget: u128) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Verifies every result with `check(index, input, output)` on this machine, natively:
    /// `Err(reason)` rejects the result and catches the provider that returned it. Keep it
    /// cheaper than the task, for instance by recomputing a few random parts of the output.
    pub fn verify_with<F>(self, check: F) -> Self
    where
        F: Fn(usize, &T::Input, &T::Output) -> Result<(), String> + Send + Sync + 'static,
    {
        let task = T::NAME;
        self.verify(Verify::custom(move |index, input, output| {
            let index = usize::try_from(index).unwrap_or(usize::MAX);
            let input: T::Input = postcard::from_bytes(input)
                .map_err(|error| format!("the input of `{task}` does not decode: {error}"))?;
            let output: T::Output = postcard::from_bytes(output)
                .map_err(|error| format!("the output does not decode as `{task}`'s: {error}"))?;
            check(index, &input, &output)
        }))
    }

    /// Runs to completion, blocking this thread. Do not call it from async code: await instead.
    pub fn run(self) -> Result<Vec<T::Output>, Error> {
        crate::blocking::block_on(self.into_future())
    }

    /// Runs, and returns the outputs with the job's [`JobReport`]: providers caught cheating,
    /// what verification cost, the receipts of the accepted results.
    pub fn with_report(self) -> Reported<'g, T::Output> {
        let pending = self.start();
        Box::pin(async move { pending?.finish().await })
    }

    /// Encodes everything up front, so the future owns bytes only and is `Send` whatever the
    /// user's types are.
    fn start(self) -> Result<Pending<T>, Error> {
        let task = T::NAME;
        let module = T::module();
        if module.bytes().is_empty() {
            return Err(Error::Module {
                task,
                error: ModuleError::NotBuilt,
            });
        }
        let context = encode(self.context.context(), task, || "context".into())?;
        let context = Blob::new(context.into());
        let context_id = context.id();
        let mut blobs = vec![module.blob(), context];
        let mut inputs = Vec::with_capacity(self.items.len());
        for (index, item) in self.items.iter().enumerate() {
            let bytes = encode(item, task, || format!("item {index}"))?;
            // Large inputs travel as blobs, fetched by the providers that need them.
            inputs.push(if bytes.len() > INLINE_INPUT_MAX {
                let blob = Blob::new(bytes.into());
                let id = blob.id();
                blobs.push(blob);
                Input::Blob(id)
            } else {
                Input::Inline(bytes)
            });
        }
        let seed = job_seed(module.hash().0, task, &context_id, self.seed);
        let spec = JobSpec {
            module: module.hash(),
            task: task.to_owned(),
            context: context_id,
            seed,
            nonce: [0; 16], // drawn by the requestor
            limits: self.limits.unwrap_or_else(|| self.golem.limits().clone()),
        };
        let verify = self
            .verify
            .unwrap_or_else(|| self.golem.inner.verify.clone());
        // Results that are re-run compare only between equal engines.
        let engine = self.golem.inner.engine;
        let found = self
            .golem
            .provider_list()
            .iter()
            .filter(|p| verify.engine_fits(Some(engine), p.engine))
            .count();
        let copies = verify.copies();
        if copies > found {
            return Err(Error::NoProviders {
                wanted: copies,
                found,
                waited: std::time::Duration::ZERO,
            });
        }
        let job = self.golem.inner.requestor.submit(JobRequest {
            spec,
            blobs,
            inputs,
            verify,
            budget: self.budget,
            progress: self.progress,
        });
        Ok(Pending {
            job,
            _task: PhantomData,
        })
    }
}

/// The future of [`ParFor::with_report`]: the outputs in input order and the job's report.
pub type Reported<'g, O> =
    Pin<Box<dyn Future<Output = Result<(Vec<O>, JobReport), Error>> + Send + 'g>>;

struct Pending<T> {
    job: RemoteJob,
    _task: PhantomData<fn() -> T>,
}

impl<T: Task> Pending<T> {
    async fn finish(self) -> Result<(Vec<T::Output>, JobReport), Error> {
        let task = T::NAME;
        let done = self.job.await.map_err(|failure| match failure {
            JobFailure::Subtask { index, error } => Error::Subtask { task, index, error },
            JobFailure::Module(error) => Error::Module { task, error },
            JobFailure::Aborted(reason) => Error::Aborted(reason),
            JobFailure::Budget {
                budget,
                spent_nano,
                outputs,
                ..
            } => Error::Budget {
                task,
                budget,
                spent_nano,
                partial: Partial(Arc::new(
                    outputs
                        .into_iter()
                        .map(|output| output.map(|output| output.bytes))
                        .collect(),
                )),
            },
        })?;
        let outputs = done
            .outputs
            .iter()
            .enumerate()
            .map(|(index, output)| decode_output(task, index, &output.bytes))
            .collect::<Result<_, _>>()?;
        Ok((outputs, done.report))
    }
}

/// The output of `task` for item `index`, decoded from the bytes a provider sent back: anything
/// that is not exactly one value of the task's output type is an [`Error::Decode`].
pub fn decode_output<O: serde::de::DeserializeOwned>(
    task: &'static str,
    index: usize,
    bytes: &[u8],
) -> Result<O, Error> {
    let decode_error = |message: String| Error::Decode {
        task,
        index,
        message,
    };
    match postcard::take_from_bytes(bytes) {
        Ok((output, [])) => Ok(output),
        Ok((_, rest)) => Err(decode_error(format!(
            "{} bytes left over after the output",
            rest.len()
        ))),
        Err(error) => Err(decode_error(error.to_string())),
    }
}

impl<'g, T: Task, C: ContextFor<T>> IntoFuture for ParFor<'g, T, C> {
    type Output = Result<Vec<T::Output>, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'g>>;

    fn into_future(self) -> Self::IntoFuture {
        let pending = self.start();
        Box::pin(async move { Ok(pending?.finish().await?.0) })
    }
}

fn encode<V: serde::Serialize>(
    value: &V,
    task: &'static str,
    what: impl FnOnce() -> String,
) -> Result<Vec<u8>, Error> {
    postcard::to_allocvec(value).map_err(|error| Error::Encode {
        task,
        what: what(),
        message: error.to_string(),
    })
}

fn job_seed(module: [u8; 32], task: &str, context: &BlobId, seed: Option<u64>) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key("golem job seed v1");
    hasher.update(&module);
    hasher.update(&(task.len() as u64).to_le_bytes());
    hasher.update(task.as_bytes());
    hasher.update(&context.0);
    if let Some(seed) = seed {
        hasher.update(&seed.to_le_bytes());
    }
    *hasher.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_decodes_whole_or_not_at_all() {
        let bytes = postcard::to_allocvec(&(7u32, "tile".to_string())).expect("encodes");
        let decoded: (u32, String) = decode_output("t", 3, &bytes).expect("decodes");
        assert_eq!(decoded, (7, "tile".to_string()));
        let longer = [bytes.as_slice(), &[0]].concat();
        let error = decode_output::<(u32, String)>("t", 3, &longer).unwrap_err();
        assert!(
            matches!(&error, Error::Decode { task: "t", index: 3, message } if message.contains("1 bytes left over")),
            "{error}"
        );
        assert!(decode_output::<(u32, String)>("t", 3, &bytes[..2]).is_err());
    }
}
