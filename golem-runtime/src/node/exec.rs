//! Worker threads that run batches in a shared [`Sandbox`].

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;

use crate::node::blobs::BlobStore;
use crate::proto::message::{Batch, Input, Outcome, Output};
use crate::sandbox::{Call, Execution, Sandbox, SubtaskError};

/// The seed of subtask `index` of a job seeded with `job_seed`: independent of how subtasks
/// are batched or which provider runs them.
pub fn subtask_seed(job_seed: &[u8; 32], index: u64) -> [u8; 32] {
    *blake3::keyed_hash(job_seed, &index.to_le_bytes()).as_bytes()
}

type Done = Box<dyn FnOnce(Outcome) + Send>;

struct Work {
    batch: Batch,
    done: Done,
}

/// A fixed set of threads running batches one at a time each.
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
    pub(crate) fn start(
        name: &str,
        threads: usize,
        sandbox: Arc<Sandbox>,
        store: Arc<BlobStore>,
    ) -> std::io::Result<Self> {
        let (sender, receiver) = mpsc::channel::<Work>();
        let receiver = Arc::new(Mutex::new(receiver));
        let threads = (0..threads.max(1))
            .map(|id| {
                let receiver = Arc::clone(&receiver);
                let sandbox = Arc::clone(&sandbox);
                let store = Arc::clone(&store);
                std::thread::Builder::new()
                    .name(format!("{name}-{id}"))
                    .spawn(move || {
                        loop {
                            let work = receiver
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .recv();
                            let Ok(Work { batch, done }) = work else {
                                return;
                            };
                            done(run_batch(&sandbox, &store, &batch));
                        }
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            sender: Some(sender),
            threads,
        })
    }

    /// Queues `batch`; `done` is called from a worker thread with its outcome.
    pub(crate) fn submit(&self, batch: Batch, done: impl FnOnce(Outcome) + Send + 'static) {
        let work = Work {
            batch,
            done: Box::new(done),
        };
        let refused = match &self.sender {
            Some(sender) => sender.send(work).err().map(|error| error.0),
            None => Some(work),
        };
        if let Some(work) = refused {
            (work.done)(Outcome::Retry("the provider is shutting down".into()));
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

/// Runs every subtask of `batch`, stopping at the first failure.
pub(crate) fn run_batch(sandbox: &Sandbox, store: &BlobStore, batch: &Batch) -> Outcome {
    let job = &batch.job;
    let missing = |what: &str| Outcome::Retry(format!("the {what} blob is not in the store"));
    let Some(module_bytes) = store.get(&job.module) else {
        return missing("module");
    };
    let module = match sandbox.prepare(job.module.into(), &module_bytes) {
        Ok(module) => module,
        Err(error) => return Outcome::Refused(error),
    };
    let task = match module.task(&job.task) {
        Ok(task) => task,
        Err(error) => return Outcome::Refused(error),
    };
    let Some(context) = store.get(&job.context) else {
        return missing("context");
    };
    let mut outputs = Vec::with_capacity(batch.items.len());
    for item in &batch.items {
        let blob;
        let input: &[u8] = match &item.input {
            Input::Inline(bytes) => bytes,
            Input::Blob(id) => match store.get(id) {
                Some(bytes) => {
                    blob = bytes;
                    &blob
                }
                None => return missing("input"),
            },
        };
        let call = Call {
            context: Arc::clone(&context),
            input,
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
                return Outcome::Failed {
                    index: item.index,
                    error,
                };
            }
        }
    }
    Outcome::Outputs(outputs)
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
