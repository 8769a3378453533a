//! In-process providers: worker threads that run the subtasks of a job in one shared
//! [`Sandbox`].
//!
//! A job is split into chunks claimed from an atomic counter, so fast workers take more and
//! tiny subtasks do not pay a channel round trip each. Results are stored by index, so they
//! come back in input order whatever order they finished in. The first failure stops the
//! workers from claiming more; the lowest-indexed failure seen is reported.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::sandbox::{
    Call, Execution, Limits, ModuleError, ModuleHash, PreparedModule, Sandbox, SandboxConfig,
    SandboxError, SubtaskError, TaskExport,
};

/// One task of one module, with the context and limits shared by all its subtasks.
pub struct JobSpec {
    /// The compiled module.
    pub module: Arc<PreparedModule>,
    /// The task to call.
    pub task: TaskExport,
    /// The postcard-encoded shared context (empty when the task takes none).
    pub context: Arc<[u8]>,
    /// Seed of the job; subtask `i` is seeded with [`subtask_seed`]`(seed, i)`.
    pub seed: [u8; 32],
    /// Limits of every call.
    pub limits: Limits,
    /// Called from the provider threads as subtasks settle, with (settled, total).
    pub progress: Option<ProgressFn>,
}

/// A progress callback: (subtasks settled, total).
pub type ProgressFn = Arc<dyn Fn(usize, usize) + Send + Sync>;

impl std::fmt::Debug for JobSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobSpec")
            .field("module", &self.module)
            .field("task", &self.task)
            .field("context_bytes", &self.context.len())
            .field("limits", &self.limits)
            .field("progress", &self.progress.is_some())
            .finish_non_exhaustive()
    }
}

/// The seed of subtask `index` of a job seeded with `job_seed`: independent of how subtasks
/// are batched or which provider runs them.
pub fn subtask_seed(job_seed: &[u8; 32], index: u64) -> [u8; 32] {
    *blake3::keyed_hash(job_seed, &index.to_le_bytes()).as_bytes()
}

/// A subtask that failed, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("subtask {index} failed: {error}")]
pub struct SubtaskFailure {
    /// Index of the subtask in the job's inputs.
    pub index: usize,
    /// What went wrong.
    pub error: SubtaskError,
}

/// Outputs of a job in input order, or its first failure.
pub type JobResult = Result<Vec<Vec<u8>>, SubtaskFailure>;

/// A pool of in-process providers sharing one sandbox engine.
pub struct LocalProviders {
    sandbox: Arc<Sandbox>,
    workers: Vec<mpsc::Sender<Arc<JobRun>>>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for LocalProviders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalProviders")
            .field("workers", &self.workers.len())
            .field("sandbox", &self.sandbox)
            .finish()
    }
}

impl LocalProviders {
    /// Starts `workers` provider threads on a sandbox built from `config`.
    pub fn start(workers: usize, config: SandboxConfig) -> Result<Self, SandboxError> {
        let workers = workers.max(1);
        let sandbox = Arc::new(Sandbox::new(config)?);
        let mut senders = Vec::with_capacity(workers);
        let mut threads = Vec::with_capacity(workers);
        for id in 0..workers {
            let (sender, receiver) = mpsc::channel::<Arc<JobRun>>();
            let sandbox = Arc::clone(&sandbox);
            let thread = std::thread::Builder::new()
                .name(format!("golem-provider-{id}"))
                .spawn(move || {
                    for run in receiver {
                        run.work(&sandbox);
                    }
                })
                .map_err(|error| {
                    SandboxError::Engine(format!("cannot start a provider thread: {error}"))
                })?;
            senders.push(sender);
            threads.push(thread);
        }
        Ok(Self {
            sandbox,
            workers: senders,
            threads,
        })
    }

    /// Number of provider threads.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// The sandbox the providers run in.
    pub fn sandbox(&self) -> &Arc<Sandbox> {
        &self.sandbox
    }

    /// Compiles and checks a module (cached by hash).
    pub fn prepare(
        &self,
        hash: ModuleHash,
        bytes: &[u8],
    ) -> Result<Arc<PreparedModule>, ModuleError> {
        self.sandbox.prepare(hash, bytes)
    }

    /// Runs `job` over `inputs`. The returned handle is a future of the outputs in input order;
    /// dropping it stops the job.
    pub fn run(&self, job: Arc<JobSpec>, inputs: Vec<Vec<u8>>) -> JobHandle {
        let (done, receiver) = oneshot::channel();
        let total = inputs.len();
        let per_worker = total.div_ceil(self.workers.len() * CHUNKS_PER_WORKER);
        let run = Arc::new(JobRun {
            job,
            chunk: per_worker.clamp(1, MAX_CHUNK),
            outputs: Mutex::new((0..total).map(|_| None).collect()),
            inputs,
            next: AtomicUsize::new(0),
            settled: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            failure: Mutex::new(None),
            done: Mutex::new(Some(done)),
        });
        if total == 0 {
            run.finish();
        } else {
            for worker in &self.workers {
                // A worker whose thread is gone cannot take part; the others still drain the
                // job, since every worker claims chunks until none are left.
                let _ = worker.send(Arc::clone(&run));
            }
        }
        JobHandle { run, receiver }
    }
}

impl Drop for LocalProviders {
    fn drop(&mut self) {
        self.workers.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Chunks per worker a job is split into, for load balance.
const CHUNKS_PER_WORKER: usize = 8;
/// Largest chunk, so a failure stops a job quickly.
const MAX_CHUNK: usize = 256;

/// A running job, shared by the workers.
struct JobRun {
    job: Arc<JobSpec>,
    inputs: Vec<Vec<u8>>,
    chunk: usize,
    next: AtomicUsize,
    settled: AtomicUsize,
    stop: AtomicBool,
    outputs: Mutex<Vec<Option<Vec<u8>>>>,
    failure: Mutex<Option<SubtaskFailure>>,
    done: Mutex<Option<oneshot::Sender<JobResult>>>,
}

impl JobRun {
    fn work(&self, sandbox: &Sandbox) {
        let total = self.inputs.len();
        let mut finished = Vec::with_capacity(self.chunk);
        loop {
            let start = self.next.fetch_add(self.chunk, Ordering::Relaxed);
            if start >= total {
                return;
            }
            let end = (start + self.chunk).min(total);
            for index in start..end {
                if self.stop.load(Ordering::Relaxed) {
                    break;
                }
                match self.run_one(sandbox, index) {
                    Ok(output) => finished.push((index, output)),
                    Err(error) => {
                        self.stop.store(true, Ordering::Relaxed);
                        let mut failure = lock(&self.failure);
                        if failure.as_ref().is_none_or(|seen| seen.index > index) {
                            *failure = Some(SubtaskFailure { index, error });
                        }
                    }
                }
            }
            {
                let mut outputs = lock(&self.outputs);
                for (index, output) in finished.drain(..) {
                    outputs[index] = Some(output);
                }
            }
            let settled = self.settled.fetch_add(end - start, Ordering::AcqRel) + (end - start);
            if let Some(progress) = &self.job.progress {
                // A panicking callback must not stop the job from finishing.
                let _ = std::panic::catch_unwind(AssertUnwindSafe(|| progress(settled, total)));
            }
            if settled == total {
                self.finish();
            }
        }
    }

    fn run_one(&self, sandbox: &Sandbox, index: usize) -> Result<Vec<u8>, SubtaskError> {
        let job = &self.job;
        let call = Call {
            context: Arc::clone(&job.context),
            input: &self.inputs[index],
            seed: subtask_seed(&job.seed, index as u64),
        };
        // A host-side bug must not take the worker thread (and every later job) down with it.
        std::panic::catch_unwind(AssertUnwindSafe(|| {
            sandbox.run(&job.module, &job.task, call, &job.limits)
        }))
        .unwrap_or_else(|_| Err(SubtaskError::Internal("the sandbox panicked".into())))
        .map(|execution| {
            log_guest_output(job.task.name(), index, &execution);
            execution.output
        })
    }

    fn finish(&self) {
        let result = match lock(&self.failure).take() {
            Some(failure) => Err(failure),
            // Outputs are missing without a failure only when the job was cancelled, and then
            // nobody is waiting for the result.
            None => std::mem::take(&mut *lock(&self.outputs))
                .into_iter()
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| SubtaskFailure {
                    index: 0,
                    error: SubtaskError::Internal("the job was cancelled".into()),
                }),
        };
        if let Some(done) = lock(&self.done).take() {
            let _ = done.send(result);
        }
    }
}

/// Hands what a guest printed to `tracing` (target `golem::guest`), never to this process's
/// own streams.
fn log_guest_output(task: &str, index: usize, execution: &Execution) {
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

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A job in flight: a future of its outputs, and its progress.
#[must_use = "a job runs only while its handle is alive; await it"]
pub struct JobHandle {
    run: Arc<JobRun>,
    receiver: oneshot::Receiver<JobResult>,
}

impl std::fmt::Debug for JobHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (done, total) = self.progress();
        f.debug_struct("JobHandle")
            .field("done", &done)
            .field("total", &total)
            .finish()
    }
}

impl JobHandle {
    /// Subtasks settled so far, and the total.
    pub fn progress(&self) -> (usize, usize) {
        (
            self.run.settled.load(Ordering::Relaxed),
            self.run.inputs.len(),
        )
    }
}

impl Future for JobHandle {
    type Output = JobResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<JobResult> {
        Pin::new(&mut self.receiver).poll(cx).map(|result| {
            result.unwrap_or_else(|_| {
                Err(SubtaskFailure {
                    index: 0,
                    error: SubtaskError::Internal("the provider threads stopped".into()),
                })
            })
        })
    }
}

impl Drop for JobHandle {
    fn drop(&mut self) {
        self.run.stop.store(true, Ordering::Relaxed);
    }
}
