//! Worker threads that run batches in a shared [`Sandbox`].

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;

use crate::proto::message::{Batch, BlobId, Input, Outcome, Output};
use crate::sandbox::{Call, Execution, Sandbox, SubtaskError};

/// The seed of subtask `index` of a job seeded with `job_seed`: independent of how subtasks
/// are batched or which provider runs them.
pub fn subtask_seed(job_seed: &[u8; 32], index: u64) -> [u8; 32] {
    *blake3::keyed_hash(job_seed, &index.to_le_bytes()).as_bytes()
}

type Work = Box<dyn FnOnce() + Send>;

/// A fixed set of threads running one piece of work at a time each.
pub(crate) struct Executor {
    sender: Option<mpsc::Sender<Work>>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("threads", &self.threads.len())
            .finish()
    }
}

impl Executor {
    /// Starts `threads` workers named `name-N`.
    pub(crate) fn start(name: &str, threads: usize) -> std::io::Result<Self> {
        let (sender, receiver) = mpsc::channel::<Work>();
        let receiver = Arc::new(Mutex::new(receiver));
        let threads = (0..threads.max(1))
            .map(|id| {
                let receiver = Arc::clone(&receiver);
                std::thread::Builder::new()
                    .name(format!("{name}-{id}"))
                    .spawn(move || {
                        loop {
                            let work = receiver
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .recv();
                            let Ok(work) = work else { return };
                            work();
                        }
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            sender: Some(sender),
            threads,
        })
    }

    /// Queues `work`; gives it back when the executor is shutting down.
    pub(crate) fn submit<W: FnOnce() + Send + 'static>(&self, work: W) -> Result<(), ()> {
        match &self.sender {
            Some(sender) => sender.send(Box::new(work)).map_err(|_| ()),
            None => Err(()),
        }
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        self.sender = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// An input's bytes: borrowed from its batch, or a blob held elsewhere.
pub(crate) enum InputBytes<'a> {
    Inline(&'a [u8]),
    Blob(Arc<[u8]>),
}

impl std::ops::Deref for InputBytes<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Self::Inline(bytes) => bytes,
            Self::Blob(bytes) => bytes,
        }
    }
}

/// The bytes of `input`, a blob looked up with `blob`; `None` when the blob is not held.
pub(crate) fn input_bytes<'a>(
    input: &'a Input,
    blob: impl Fn(&BlobId) -> Option<Arc<[u8]>>,
) -> Option<InputBytes<'a>> {
    match input {
        Input::Inline(bytes) => Some(InputBytes::Inline(bytes)),
        Input::Blob(id) => blob(id).map(InputBytes::Blob),
    }
}

/// Runs every subtask of `batch`, stopping at the first failure; `blob` looks up the module,
/// context and large inputs. The error is any [`Outcome`] but `Outputs`.
pub(crate) fn run_batch(
    sandbox: &Sandbox,
    blob: impl Fn(&BlobId) -> Option<Arc<[u8]>>,
    batch: &Batch,
) -> Result<Vec<Output>, Outcome> {
    let job = &batch.job;
    let missing = |what: &str| Outcome::Retry(format!("the {what} blob is not in the store"));
    let module_bytes = blob(&job.module).ok_or_else(|| missing("module"))?;
    let module = sandbox
        .prepare(job.module.into(), &module_bytes)
        .map_err(Outcome::Refused)?;
    let task = module.task(&job.task).map_err(Outcome::Refused)?;
    let context = blob(&job.context).ok_or_else(|| missing("context"))?;
    let mut outputs = Vec::with_capacity(batch.items.len());
    for item in &batch.items {
        let input = input_bytes(&item.input, &blob).ok_or_else(|| missing("input"))?;
        let call = Call {
            context: Arc::clone(&context),
            input: &input,
            seed: subtask_seed(&job.seed, item.index),
        };
        // A host-side bug must not take the worker thread (and every later batch) down with it.
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            sandbox.run(&module, &task, call, &job.limits)
        }))
        .unwrap_or_else(|_| Err(SubtaskError::Internal("the sandbox panicked".into())));
        match result {
            Ok(execution) => {
                log_guest_output(&job.task, item.index, &execution);
                outputs.push(Output {
                    bytes: execution.output,
                    fuel: execution.fuel_used.unwrap_or(0),
                });
            }
            Err(error) => {
                return Err(Outcome::Failed {
                    index: item.index,
                    error,
                });
            }
        }
    }
    Ok(outputs)
}

/// Hands what a guest printed to `tracing` (target `golem::guest`), never to this process's
/// own streams.
fn log_guest_output(task: &str, index: u64, execution: &Execution) {
    for (stream, bytes) in [("stdout", &execution.stdout), ("stderr", &execution.stderr)] {
        if !bytes.is_empty() {
            let text = String::from_utf8_lossy(bytes);
            tracing::info!(target: "golem::guest", task, index, stream, "{}", text.trim_end());
        }
    }
    if execution.log_bytes_dropped > 0 {
        tracing::warn!(
            target: "golem::guest",
            task,
            index,
            dropped = execution.log_bytes_dropped,
            "guest output past the log limit was dropped"
        );
    }
}
