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
         addresses joined, the providers' offers (memory, fuel, price), their engines (results \
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
    /// A job stopped before it finished (the requestor was shut down).
    #[error("the job was aborted: {0}")]
    Aborted(String),
    /// A task's module was refused before it ran.
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
