//! The [`Task`] trait that `#[golem::task]` implements, and the data bound on what crosses the
//! sandbox boundary.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A function that golem can run in a sandbox, implemented by `#[golem::task]`.
///
/// The implementing type is a unit struct named like the function; it dereferences to the
/// function, so `render(&scene, tile)` still calls it natively.
pub trait Task: Copy + Send + Sync + 'static {
    /// The shared context (`()` when the task takes none).
    type Context: TaskData;
    /// The input of one subtask.
    type Input: TaskData;
    /// What one subtask returns. A `Result<T, E>` comes back as data, error included.
    type Output: TaskData;

    /// The function's name; its export in the module is `golem_task_<NAME>`.
    const NAME: &'static str;

    /// Runs the function natively (used on the guest side, and to verify by re-execution).
    fn call(context: &Self::Context, input: Self::Input) -> Self::Output;

    /// The module the task was compiled into, embedded by the crate's build script.
    #[cfg(not(target_arch = "wasm32"))]
    fn module() -> &'static GuestModule;
}

/// What may cross the sandbox boundary: anything serde can encode and decode without borrowing.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot cross the golem sandbox boundary",
    label = "task inputs, outputs and contexts must implement `serde::Serialize` and `serde::Deserialize`",
    note = "derive them with `#[derive(Serialize, Deserialize)]` (re-exported by `golem::prelude`)"
)]
pub trait TaskData: Serialize + DeserializeOwned {}

impl<T: Serialize + DeserializeOwned> TaskData for T {}

/// The WebAssembly module of a crate's tasks, embedded at build time with its blake3 hash.
#[cfg(not(target_arch = "wasm32"))]
#[derive(Debug)]
pub struct GuestModule {
    bytes: &'static [u8],
    #[cfg_attr(
        not(feature = "runtime"),
        allow(dead_code, reason = "read when jobs are sent")
    )]
    hash: &'static [u8; 32],
    /// The bytes as the blob every job sends, made once.
    #[cfg(feature = "runtime")]
    blob: std::sync::OnceLock<golem_runtime::node::Blob>,
}

#[cfg(not(target_arch = "wasm32"))]
impl GuestModule {
    /// Wraps what `golem_build::build_tasks` wrote. Used by `#[golem::task]`.
    #[doc(hidden)]
    pub const fn from_build(bytes: &'static [u8], hash: &'static [u8; 32]) -> Self {
        Self {
            bytes,
            hash,
            #[cfg(feature = "runtime")]
            blob: std::sync::OnceLock::new(),
        }
    }

    /// The module's bytes (empty when the guest build was skipped).
    pub fn bytes(&self) -> &'static [u8] {
        self.bytes
    }

    /// The blake3 hash of [`bytes`](Self::bytes).
    #[cfg(feature = "runtime")]
    pub fn hash(&self) -> golem_runtime::proto::message::BlobId {
        golem_runtime::proto::message::BlobId(*self.hash)
    }

    /// The module as a job's blob: copied and identified once, shared by every job after.
    #[cfg(feature = "runtime")]
    pub(crate) fn blob(&self) -> golem_runtime::node::Blob {
        self.blob
            .get_or_init(|| golem_runtime::node::Blob::with_id(self.hash(), self.bytes.into()))
            .clone()
    }
}
