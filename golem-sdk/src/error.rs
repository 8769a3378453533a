//! The one error type of the SDK, with a variant per failure domain.

use std::time::Duration;

pub use golem_runtime::node::NodeError;
pub use golem_runtime::sandbox::{ModuleError, SandboxError, SubtaskError};

/// Why a golem operation failed.
///
/// The message of each variant includes its cause, so `{}` tells the whole story.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The local providers could not be started.
    #[error("cannot start the golem providers: {0}")]
    Setup(#[from] SandboxError),
    /// A node (an in-process provider or the requestor) could not start.
    #[error("cannot start a golem node: {0}")]
    Node(#[from] NodeError),
    /// The network runtime could not start.
    #[error("network failure: {0}")]
    Network(String),
    /// An address given to [`GolemBuilder::join`](crate::GolemBuilder::join) is not valid.
    #[error("{0}")]
    Address(String),
    /// Fewer providers than required were found in time.
    #[error(
        "found {found} of the {wanted} providers required within {waited:?}; check the \
         addresses joined, the providers' flavors (memory, fuel, output, log and deadline caps; price), their engines (results \
         that are verified by re-running need the requestor's) and the network"
    )]
    NoProviders {
        /// Providers required.
        wanted: usize,
        /// Providers found.
        found: usize,
        /// How long the builder waited.
        waited: Duration,
    },
    /// The job's budget ran out: no provider connected could be paid for another subtask.
    /// The outputs accepted so far are kept: [`Partial::decode`] gives them typed.
    #[error(
        "task `{task}` stopped when its budget of {budget} ran out: {} of {} subtasks done, \
         {spent_nano} billionths spent",
        partial.settled(),
        partial.len()
    )]
    Budget {
        /// The task's name.
        task: &'static str,
        /// The budget, in the smallest currency unit.
        budget: u128,
        /// What the accepted results cost, in billionths of the smallest currency unit.
        spent_nano: u128,
        /// The outputs accepted before it ran out, in input order.
        partial: Partial,
    },
    /// A job stopped before it finished (the requestor was shut down).
    #[error("the job was aborted: {0}")]
    Aborted(String),
    /// Paying providers on chain failed (see [`Golem::settle`](crate::Golem::settle)).
    #[cfg(feature = "ethereum")]
    #[error("settlement: {0}")]
    Settlement(#[from] golem_runtime::payment::ethereum::ChainError),
    /// A task's module was refused before the task ran.
    #[error("task `{task}` cannot run: {error}")]
    Module {
        /// The task's name.
        task: &'static str,
        /// Why the module was refused.
        error: ModuleError,
    },
    /// A subtask failed in the sandbox (a panic, a limit, a trap). Failures that a task returns
    /// as `Err` values are not errors here: they come back as data.
    #[error("task `{task}` failed on item {index}: {error}")]
    Subtask {
        /// The task's name.
        task: &'static str,
        /// Index of the item in the input.
        index: usize,
        /// What went wrong.
        error: SubtaskError,
    },
    /// A value could not be encoded for the sandbox.
    #[error("cannot encode the {what} of task `{task}`: {message}")]
    Encode {
        /// The task's name.
        task: &'static str,
        /// What was being encoded ("context", "item 3").
        what: String,
        /// The encoder's message.
        message: String,
    },
    /// An output did not decode as the task's output type.
    #[error("cannot decode the output of task `{task}` for item {index}: {message}")]
    Decode {
        /// The task's name.
        task: &'static str,
        /// Index of the item in the input.
        index: usize,
        /// The decoder's message.
        message: String,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Encoded outputs of a job that stopped early, in input order; `None` where a subtask has no
/// accepted result.
#[derive(Clone, PartialEq, Eq)]
pub struct Partial(pub(crate) std::sync::Arc<Vec<Option<Vec<u8>>>>);

impl Partial {
    /// Subtasks in the job.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the job had no subtasks.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Subtasks with an accepted output.
    pub fn settled(&self) -> usize {
        self.0.iter().filter(|output| output.is_some()).count()
    }

    /// The outputs as the task's output type `O`; an output that does not decode is `None`.
    pub fn decode<O: serde::de::DeserializeOwned>(&self) -> Vec<Option<O>> {
        self.0
            .iter()
            .map(|output| {
                output
                    .as_ref()
                    .and_then(|bytes| postcard::from_bytes(bytes).ok())
            })
            .collect()
    }
}

impl std::fmt::Debug for Partial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Partial({} of {} settled)", self.settled(), self.len())
    }
}
