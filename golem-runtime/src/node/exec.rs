//! Worker threads that run batches in a shared [`Sandbox`].

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::proto::message::{Batch, BlobId, Input, MAX_REPLY_FRAME, Outcome, Output};
use crate::sandbox::{Call, Context, Execution, Sandbox, SubtaskError};

/// The seed of subtask `index` of a job seeded with `job_seed`: independent of how subtasks
/// are batched or which provider runs them.
pub fn subtask_seed(job_seed: &[u8; 32], index: u64) -> [u8; 32] {
    *blake3::keyed_hash(job_seed, &index.to_le_bytes()).as_bytes()
}

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of threads running one piece of work at a time each, fair between the owners
/// of the work by the time their work has taken: the next job is always that of the owner with
/// work queued whose jobs have run the least (an owner that arrives starts level with the
/// least served, not at zero). A requestor whose batches take seconds therefore delays one
/// whose batches take milliseconds by at most one batch per thread, however many it queues.
pub(crate) struct Executor<K> {
    queue: Arc<(Mutex<Queue<K>>, Condvar)>,
    threads: Vec<JoinHandle<()>>,
}

struct Queue<K> {
    owners: HashMap<K, Owner>,
    closed: bool,
}

/// An owner's queued work and the time its work has taken.
struct Owner {
    jobs: VecDeque<Job>,
    served: Duration,
    running: usize,
}

impl<K: Eq + Hash + Clone> Queue<K> {
    /// The owner whose turn it is, with the job it runs next.
    fn next(&mut self) -> Option<(K, Job)> {
        let owner = self
            .owners
            .iter()
            .filter(|(_, owner)| !owner.jobs.is_empty())
            .min_by_key(|(_, owner)| owner.served)
            .map(|(key, _)| key.clone())?;
        let state = self.owners.get_mut(&owner)?;
        let job = state.jobs.pop_front()?;
        state.running += 1;
        Some((owner, job))
    }

    /// `owner`'s job ran for `took`.
    fn ran(&mut self, owner: &K, took: Duration) {
        if let Some(state) = self.owners.get_mut(owner) {
            state.served += took;
            state.running -= 1;
            if state.jobs.is_empty() && state.running == 0 {
                self.owners.remove(owner);
            }
        }
    }
}

impl<K> std::fmt::Debug for Executor<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("threads", &self.threads.len())
            .finish()
    }
}

impl<K: Eq + Hash + Clone + Send + 'static> Executor<K> {
    /// Starts `threads` workers named `name-N`.
    pub(crate) fn start(name: &str, threads: usize) -> std::io::Result<Self> {
        let queue = Arc::new((
            Mutex::new(Queue {
                owners: HashMap::new(),
                closed: false,
            }),
            Condvar::new(),
        ));
        let threads = (0..threads.max(1))
            .map(|id| {
                let queue = Arc::clone(&queue);
                std::thread::Builder::new()
                    .name(format!("{name}-{id}"))
                    .spawn(move || work(&queue))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { queue, threads })
    }

    /// Queues `work` for `owner`; gives it back when the executor is shutting down.
    pub(crate) fn submit<W: FnOnce() + Send + 'static>(&self, owner: K, work: W) -> Result<(), W> {
        let (queue, ready) = &*self.queue;
        let mut queue = queue.lock().unwrap_or_else(PoisonError::into_inner);
        if queue.closed {
            return Err(work);
        }
        if !queue.owners.contains_key(&owner) {
            let level = queue
                .owners
                .values()
                .map(|owner| owner.served)
                .min()
                .unwrap_or_default();
            queue.owners.insert(
                owner.clone(),
                Owner {
                    jobs: VecDeque::new(),
                    served: level,
                    running: 0,
                },
            );
        }
        if let Some(state) = queue.owners.get_mut(&owner) {
            state.jobs.push_back(Box::new(work));
        }
        ready.notify_one();
        Ok(())
    }
}

/// A worker: runs the next job, whoever's turn it is, until the executor is closed.
fn work<K: Eq + Hash + Clone>(queue: &(Mutex<Queue<K>>, Condvar)) {
    let (queue, ready) = queue;
    let mut locked = queue.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        if locked.closed {
            return;
        }
        let Some((owner, job)) = locked.next() else {
            locked = ready.wait(locked).unwrap_or_else(PoisonError::into_inner);
            continue;
        };
        drop(locked);
        let started = Instant::now();
        job();
        locked = queue.lock().unwrap_or_else(PoisonError::into_inner);
        locked.ran(&owner, started.elapsed());
    }
}

impl<K> Drop for Executor<K> {
    /// Work not started is dropped (with whatever it holds); running work finishes first.
    fn drop(&mut self) {
        let (queue, ready) = &*self.queue;
        {
            let mut queue = queue.lock().unwrap_or_else(PoisonError::into_inner);
            queue.closed = true;
            queue.owners.clear();
        }
        ready.notify_all();
        for thread in self.threads.drain(..) {
            // The last owner may be a job on one of these threads: it cannot wait for itself.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
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

/// Bytes of outputs one batch may hold: what fits in one reply frame, with room for the
/// frame's own fields. A batch past it is given back instead of kept growing.
pub(crate) const BATCH_OUTPUT_BYTES: usize = MAX_REPLY_FRAME - (1 << 20);

/// Runs every subtask of `batch`, stopping at the first failure, or once `cancelled` is set
/// (before the module is prepared, before each item, and within a deadline tick in the item
/// running); `blob` looks up the module, context and large inputs. The error is any
/// [`Outcome`] but `Outputs`.
pub(crate) fn run_batch(
    sandbox: &Sandbox,
    blob: impl Fn(&BlobId) -> Option<Arc<[u8]>>,
    batch: &Batch,
    cancelled: &Arc<AtomicBool>,
) -> Result<Vec<Output>, Outcome> {
    let job = &batch.job;
    let stop = || {
        cancelled
            .load(Ordering::Relaxed)
            .then(|| Outcome::Retry("the batch was cancelled".into()))
    };
    if let Some(stopped) = stop() {
        return Err(stopped);
    }
    let missing = |what: &str| Outcome::Retry(format!("the {what} blob is not in the store"));
    let module_bytes = blob(&job.module).ok_or_else(|| missing("module"))?;
    let module = sandbox
        .prepare(job.module, &module_bytes)
        .map_err(Outcome::Refused)?;
    let task = module.task(&job.task).map_err(Outcome::Refused)?;
    // The store checked the blob against its id, its blake3 hash.
    let context = Context::with_hash(
        blob(&job.context).ok_or_else(|| missing("context"))?,
        job.context.0,
    );
    let mut outputs = Vec::with_capacity(batch.items.len());
    let mut held = 0usize;
    for item in &batch.items {
        if let Some(stopped) = stop() {
            return Err(stopped);
        }
        let input = input_bytes(&item.input, &blob).ok_or_else(|| missing("input"))?;
        let call = Call {
            context: context.clone(),
            input: &input,
            seed: subtask_seed(&job.seed, item.index),
        };
        // A host-side bug must not take the worker thread (and every later batch) down with it.
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            sandbox.run_until(&module, &task, call, &job.limits, cancelled)
        }))
        .unwrap_or_else(|_| Err(SubtaskError::Internal("the sandbox panicked".into())));
        match result {
            Ok(execution) => {
                log_guest_output(&job.task, item.index, &execution);
                held = held.saturating_add(execution.output.len() + 16);
                if held > BATCH_OUTPUT_BYTES {
                    return Err(Outcome::Retry(format!(
                        "the batch's outputs exceed {BATCH_OUTPUT_BYTES} bytes, one reply \
                         frame: send fewer items per batch"
                    )));
                }
                outputs.push(Output {
                    bytes: execution.output,
                    fuel: execution.fuel_used.unwrap_or(0),
                });
            }
            Err(error) => {
                // Stopped by the cancel, not failed.
                return Err(stop().unwrap_or(Outcome::Failed {
                    index: item.index,
                    error,
                }));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_whose_work_took_least_goes_next() {
        let executor = Executor::start("test", 1).unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let (started, wait) = std::sync::mpsc::channel();
        let job = |name: &'static str, took: Duration| {
            let order = Arc::clone(&order);
            let started = started.clone();
            move || {
                let _ = started.send(());
                std::thread::sleep(took);
                order.lock().unwrap().push(name);
            }
        };
        let slow = Duration::from_millis(50);
        let fast = Duration::from_millis(1);
        assert!(executor.submit("a", job("a1", slow)).is_ok());
        wait.recv().unwrap();
        // While a1 runs: two more slow jobs of a, then three fast ones of b.
        for (owner, name, took) in [
            ("a", "a2", slow),
            ("a", "a3", slow),
            ("b", "b1", fast),
            ("b", "b2", fast),
            ("b", "b3", fast),
        ] {
            assert!(executor.submit(owner, job(name, took)).is_ok());
        }
        drop(started);
        while wait.recv().is_ok() {}
        drop(executor);
        assert_eq!(
            *order.lock().unwrap(),
            ["a1", "b1", "b2", "b3", "a2", "a3"],
            "b's millisecond jobs do not wait behind a's"
        );
    }
}
