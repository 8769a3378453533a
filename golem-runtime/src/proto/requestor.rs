//! The requestor's side: jobs cut into batches and scheduled over providers, without sockets.
//!
//! The driver tells the session which providers are connected
//! ([`add_provider`](RequestorSession::add_provider) /
//! [`remove_provider`](RequestorSession::remove_provider)), hands it jobs
//! ([`submit`](RequestorSession::submit)) and replies
//! ([`handle_reply`](RequestorSession::handle_reply)), calls
//! [`handle_timeout`](RequestorSession::handle_timeout) at
//! [`poll_timeout`](RequestorSession::poll_timeout), and carries out
//! [`poll_transmit`](RequestorSession::poll_transmit) (frames and blobs to send) and
//! [`poll_event`](RequestorSession::poll_event) (progress and results).
//!
//! Scheduling:
//! * Batches are cut when a provider has room, sized from the job's measured time per item
//!   (aiming at [`SchedulerConfig::target_batch_time`]) and never larger than a fair share of
//!   what is left, so every provider gets work until the end.
//! * Each provider holds up to `concurrency × batches_per_slot` batches, so it never waits for
//!   the next one.
//! * Every copy of a batch has a deadline; a late copy is cancelled and the batch goes back to
//!   the queue, as does every batch of a provider that leaves or gives a batch back.
//! * When nothing is left to hand out, idle providers get a backup copy of the oldest
//!   straggler; the first result wins and the other copy is cancelled.
//! * A result is accepted once per subtask: late copies and duplicates are dropped, so no
//!   subtask is lost or returned twice.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::time::{Duration, Instant};

use super::message::{Batch, BlobId, Input, Item, JobSpec, Outcome, Output, Reply, Request};
use crate::identity::NodeId;
use crate::sandbox::{ModuleError, SubtaskError};

/// A job's id within a session.
pub type JobId = u64;

/// Scheduling settings.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Largest batch, in subtasks.
    pub max_batch_items: usize,
    /// Largest batch, in bytes of inline input.
    pub max_batch_bytes: usize,
    /// Time a batch should take on a provider, once the job's cost per item is known.
    pub target_batch_time: Duration,
    /// Batches in flight per unit of a provider's concurrency.
    pub batches_per_slot: usize,
    /// Deadline of a copy before any batch of its job finished (covers fetching blobs and
    /// compiling the module).
    pub first_deadline: Duration,
    /// Once the cost per item is known, a copy's deadline is this many times its expected time…
    pub deadline_factor: u32,
    /// …and never shorter than this.
    pub min_deadline: Duration,
    /// Whether idle providers get backup copies of stragglers near the end of a job.
    pub backups: bool,
    /// Times a batch may be given back, time out or fail on the provider's side before its job
    /// fails.
    pub max_attempts: u32,
    /// Times a provider may ask again for a blob it was already sent before it is dropped.
    pub max_blob_resends: u32,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_batch_items: 4096,
            max_batch_bytes: 4 << 20,
            target_batch_time: Duration::from_millis(20),
            batches_per_slot: 2,
            first_deadline: Duration::from_secs(120),
            deadline_factor: 8,
            min_deadline: Duration::from_secs(2),
            backups: true,
            max_attempts: 8,
            max_blob_resends: 2,
        }
    }
}

/// Why a job failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobFailure {
    /// A subtask failed.
    Subtask {
        /// Index of the subtask.
        index: usize,
        /// Why.
        error: SubtaskError,
    },
    /// The module was refused.
    Module(ModuleError),
    /// The job could not go on: the requestor stopped.
    Aborted(String),
}

/// What the session asks the driver to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// A frame on the control stream.
    Request(Request),
    /// A blob on a stream of its own.
    Blob(BlobId),
}

/// What the session reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Subtasks of a job settled.
    Progress {
        /// The job.
        job: JobId,
        /// Subtasks with a result.
        settled: usize,
        /// All subtasks.
        total: usize,
    },
    /// A job ended: outputs in input order, or its failure.
    Finished {
        /// The job.
        job: JobId,
        /// The outcome.
        result: Result<Vec<Output>, JobFailure>,
    },
    /// A provider broke the protocol; the driver should close its connection.
    Misbehaved {
        /// The provider.
        node: NodeId,
        /// What it did.
        reason: String,
    },
}

struct JobState {
    spec: JobSpec,
    inputs: Vec<Input>,
    outputs: Vec<Option<Output>>,
    settled: usize,
    /// Next index not yet cut into a batch.
    cursor: usize,
    /// Batches without a live copy, to hand out before cutting new ones.
    requeued: VecDeque<u64>,
    /// Measured time per item, smoothed.
    per_item: Option<Duration>,
    /// Blobs this job may send: module, context and large inputs.
    blobs: HashSet<BlobId>,
    /// The failure with the lowest index seen; the job fails with it once every batch before
    /// it has settled, so the same job always reports the same failure.
    failure: Option<(usize, SubtaskError)>,
}

impl JobState {
    fn total(&self) -> usize {
        self.inputs.len()
    }
}

struct Copy {
    provider: NodeId,
    sent: Instant,
    deadline: Instant,
}

struct BatchState {
    job: JobId,
    range: Range<usize>,
    copies: Vec<Copy>,
    attempts: u32,
    backed_up: bool,
}

struct ProviderState {
    window: usize,
    in_flight: HashSet<u64>,
    /// Blobs sent to this provider, and how many times each was asked for again.
    sent: HashMap<BlobId, u32>,
}

/// The requestor's scheduler over all its providers and jobs.
pub struct RequestorSession {
    config: SchedulerConfig,
    jobs: BTreeMap<JobId, JobState>,
    batches: BTreeMap<u64, BatchState>,
    providers: BTreeMap<NodeId, ProviderState>,
    transmits: VecDeque<(NodeId, Transmit)>,
    events: VecDeque<Event>,
    next_job: JobId,
    next_batch: u64,
    /// Rotates which provider is served first.
    turn: usize,
}

impl std::fmt::Debug for RequestorSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestorSession")
            .field("jobs", &self.jobs.len())
            .field("batches", &self.batches.len())
            .field("providers", &self.providers.len())
            .finish_non_exhaustive()
    }
}

impl RequestorSession {
    /// An empty session.
    pub fn new(config: SchedulerConfig) -> Self {
        Self {
            config,
            jobs: BTreeMap::new(),
            batches: BTreeMap::new(),
            providers: BTreeMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            next_job: 0,
            next_batch: 0,
            turn: 0,
        }
    }

    /// Providers the session schedules on.
    pub fn providers(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.providers.keys().copied()
    }

    /// Jobs not yet finished.
    pub fn jobs(&self) -> usize {
        self.jobs.len()
    }

    /// A provider is connected and runs `concurrency` subtasks at once.
    pub fn add_provider(&mut self, node: NodeId, concurrency: u32, now: Instant) {
        let window = (concurrency.max(1) as usize).saturating_mul(self.config.batches_per_slot);
        self.providers.entry(node).or_insert(ProviderState {
            window: window.max(1),
            in_flight: HashSet::new(),
            sent: HashMap::new(),
        });
        self.dispatch(now);
    }

    /// A provider is gone: its batches go back to the queue.
    pub fn remove_provider(&mut self, node: NodeId, now: Instant) {
        if let Some(provider) = self.providers.remove(&node) {
            for batch in provider.in_flight {
                self.drop_copy(batch, node, false);
            }
        }
        self.dispatch(now);
    }

    /// Submits a job over `inputs`; `blobs` lists the large inputs sent as blobs.
    pub fn submit(&mut self, spec: JobSpec, inputs: Vec<Input>, now: Instant) -> JobId {
        let job = self.next_job;
        self.next_job += 1;
        let total = inputs.len();
        let mut blobs: HashSet<BlobId> = [spec.module, spec.context].into_iter().collect();
        blobs.extend(inputs.iter().filter_map(|input| match input {
            Input::Blob(id) => Some(*id),
            Input::Inline(_) => None,
        }));
        self.jobs.insert(
            job,
            JobState {
                spec,
                outputs: (0..total).map(|_| None).collect(),
                inputs,
                settled: 0,
                cursor: 0,
                requeued: VecDeque::new(),
                per_item: None,
                blobs,
                failure: None,
            },
        );
        if total == 0 {
            self.finish(job, Ok(()));
        }
        self.dispatch(now);
        job
    }

    /// Stops a job; nothing more is reported for it.
    pub fn cancel(&mut self, job: JobId, now: Instant) {
        if self.jobs.remove(&job).is_some() {
            self.forget_batches_of(job);
        }
        self.dispatch(now);
    }

    /// A provider replied.
    pub fn handle_reply(&mut self, node: NodeId, reply: Reply, now: Instant) {
        match reply {
            Reply::Need { batch, blobs } => self.handle_need(node, batch, blobs),
            Reply::Done { batch, outcome } => self.handle_done(node, batch, outcome, now),
            // Introductions and peer lists are the driver's business.
            Reply::Hello(_) | Reply::Peers(_) => {}
        }
        self.dispatch(now);
    }

    fn handle_need(&mut self, node: NodeId, batch: u64, blobs: Vec<BlobId>) {
        let Some(state) = self.batches.get(&batch) else {
            return; // the batch is over; the provider will be cancelled or already was
        };
        let Some(job) = self.jobs.get(&state.job) else {
            return;
        };
        if !state.copies.iter().any(|copy| copy.provider == node) {
            return;
        }
        let max_resends = self.config.max_blob_resends;
        let mut violation = None;
        if let Some(provider) = self.providers.get_mut(&node) {
            for blob in blobs {
                if !job.blobs.contains(&blob) {
                    violation = Some(format!(
                        "asked for blob {blob}, which its batch does not use"
                    ));
                    break;
                }
                let resends = provider.sent.entry(blob).or_insert(0);
                if *resends > max_resends {
                    violation = Some(format!("asked for blob {blob} too many times"));
                    break;
                }
                *resends += 1;
                self.transmits.push_back((node, Transmit::Blob(blob)));
            }
        }
        if let Some(reason) = violation {
            self.misbehaved(node, reason);
        }
    }

    fn handle_done(&mut self, node: NodeId, batch: u64, outcome: Outcome, now: Instant) {
        if let Some(provider) = self.providers.get_mut(&node) {
            provider.in_flight.remove(&batch);
        }
        let Some(state) = self.batches.get(&batch) else {
            return; // already settled by another copy, or its job is over
        };
        let range = state.range.clone();
        let job_id = state.job;
        let sent = state
            .copies
            .iter()
            .find(|copy| copy.provider == node)
            .map(|copy| copy.sent);
        match outcome {
            Outcome::Outputs(outputs) => {
                if outputs.len() != range.len() {
                    let reason = format!(
                        "returned {} outputs for a batch of {}",
                        outputs.len(),
                        range.len()
                    );
                    self.drop_copy(batch, node, false);
                    self.misbehaved(node, reason);
                    return;
                }
                self.settle(batch, node, outputs, sent.map(|sent| now - sent));
            }
            Outcome::Failed { index, error } => {
                let index = usize::try_from(index).unwrap_or(usize::MAX);
                if !range.contains(&index) {
                    self.drop_copy(batch, node, false);
                    self.misbehaved(
                        node,
                        format!(
                            "reported a failure of subtask {index}, which its batch does not hold"
                        ),
                    );
                } else if error.is_deterministic() {
                    self.record_failure(job_id, batch, index, error);
                } else {
                    self.drop_copy(batch, node, true);
                    self.check_attempts(batch, index, error);
                }
            }
            Outcome::Refused(error) => self.fail(job_id, JobFailure::Module(error)),
            Outcome::Retry(reason) => {
                tracing::debug!(%node, batch, %reason, "batch given back");
                self.drop_copy(batch, node, true);
                self.check_attempts(batch, range.start, SubtaskError::Internal(reason));
            }
        }
    }

    /// Records a deterministic failure at `index`: batches after it no longer matter, and the
    /// job fails once every batch before it has settled.
    fn record_failure(&mut self, job_id: JobId, batch: u64, index: usize, error: SubtaskError) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        if job.failure.as_ref().is_none_or(|(seen, _)| index < *seen) {
            job.failure = Some((index, error));
        }
        let limit = job.failure.as_ref().map_or(index, |(seen, _)| *seen);
        let over: Vec<u64> = self
            .batches
            .iter()
            .filter(|(id, state)| {
                state.job == job_id && (**id == batch || state.range.start > limit)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in over {
            if let Some(state) = self.batches.remove(&id) {
                for copy in state.copies {
                    self.cancel_copy(copy.provider, id);
                }
            }
        }
        self.finish_failed(job_id);
    }

    /// Fails a job with its recorded failure once no batch before it is left.
    fn finish_failed(&mut self, job_id: JobId) {
        let Some(failure) = self.jobs.get(&job_id).and_then(|job| job.failure.clone()) else {
            return;
        };
        if !self.batches.values().any(|state| state.job == job_id) {
            let (index, error) = failure;
            self.fail(job_id, JobFailure::Subtask { index, error });
        }
    }

    /// Fails the job of `batch` with `error` once the batch has used up its attempts.
    fn check_attempts(&mut self, batch: u64, index: usize, error: SubtaskError) {
        let Some(state) = self.batches.get(&batch) else {
            return;
        };
        if state.attempts >= self.config.max_attempts {
            let job = state.job;
            self.fail(job, JobFailure::Subtask { index, error });
        }
    }

    fn settle(&mut self, batch: u64, node: NodeId, outputs: Vec<Output>, took: Option<Duration>) {
        let Some(state) = self.batches.remove(&batch) else {
            return;
        };
        for copy in &state.copies {
            if copy.provider != node {
                self.cancel_copy(copy.provider, batch);
            }
        }
        let Some(job) = self.jobs.get_mut(&state.job) else {
            return;
        };
        if let Some(took) = took {
            let items = u32::try_from(state.range.len()).unwrap_or(u32::MAX).max(1);
            let sample = took / items;
            job.per_item = Some(match job.per_item {
                Some(old) => (old * 3 + sample) / 4,
                None => sample,
            });
        }
        for (slot, output) in job.outputs[state.range.clone()].iter_mut().zip(outputs) {
            *slot = Some(output);
        }
        job.settled += state.range.len();
        if job.failure.is_some() {
            self.finish_failed(state.job);
            return;
        }
        let (settled, total) = (job.settled, job.total());
        self.events.push_back(Event::Progress {
            job: state.job,
            settled,
            total,
        });
        if settled == total {
            self.finish(state.job, Ok(()));
        }
    }

    fn finish(&mut self, job: JobId, result: Result<(), JobFailure>) {
        let Some(state) = self.jobs.remove(&job) else {
            return;
        };
        self.forget_batches_of(job);
        let result = result.and_then(|()| {
            state
                .outputs
                .into_iter()
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| JobFailure::Subtask {
                    index: 0,
                    error: SubtaskError::Internal("a settled job lacks outputs".into()),
                })
        });
        self.events.push_back(Event::Finished { job, result });
    }

    fn fail(&mut self, job: JobId, failure: JobFailure) {
        self.finish(job, Err(failure));
    }

    fn forget_batches_of(&mut self, job: JobId) {
        let ids: Vec<u64> = self
            .batches
            .iter()
            .filter(|(_, state)| state.job == job)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(state) = self.batches.remove(&id) {
                for copy in state.copies {
                    self.cancel_copy(copy.provider, id);
                }
            }
        }
    }

    fn cancel_copy(&mut self, provider: NodeId, batch: u64) {
        if let Some(state) = self.providers.get_mut(&provider)
            && state.in_flight.remove(&batch)
        {
            self.transmits
                .push_back((provider, Transmit::Request(Request::Cancel { batch })));
        }
    }

    /// Removes `node`'s copy of `batch`; a batch left without copies goes back to the queue.
    fn drop_copy(&mut self, batch: u64, node: NodeId, count_attempt: bool) {
        let Some(state) = self.batches.get_mut(&batch) else {
            return;
        };
        state.copies.retain(|copy| copy.provider != node);
        if count_attempt {
            state.attempts += 1;
        }
        if state.copies.is_empty() {
            let job = state.job;
            if let Some(job) = self.jobs.get_mut(&job) {
                job.requeued.push_back(batch);
            }
        }
    }

    fn misbehaved(&mut self, node: NodeId, reason: String) {
        tracing::warn!(%node, %reason, "provider dropped");
        if let Some(provider) = self.providers.remove(&node) {
            for batch in provider.in_flight {
                self.drop_copy(batch, node, false);
            }
        }
        self.events.push_back(Event::Misbehaved { node, reason });
    }

    /// Time passed: late copies are cancelled and their batches handed out again.
    pub fn handle_timeout(&mut self, now: Instant) {
        let late: Vec<(u64, NodeId)> = self
            .batches
            .iter()
            .flat_map(|(id, state)| {
                state
                    .copies
                    .iter()
                    .filter(|copy| copy.deadline <= now)
                    .map(move |copy| (*id, copy.provider))
            })
            .collect();
        for (batch, node) in late {
            tracing::debug!(%node, batch, "batch past its deadline");
            self.cancel_copy(node, batch);
            self.drop_copy(batch, node, true);
            let first = self
                .batches
                .get(&batch)
                .map_or(0, |state| state.range.start);
            self.check_attempts(
                batch,
                first,
                SubtaskError::Internal("the batch missed its deadline on every try".into()),
            );
        }
        self.dispatch(now);
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let deadlines = self
            .batches
            .values()
            .flat_map(|state| state.copies.iter().map(|copy| copy.deadline));
        // A straggler becomes worth a backup when a provider other than its holder has room.
        let backups = self
            .backup_candidates()
            .filter(|(id, _)| {
                let holder = self.batches[id].copies[0].provider;
                self.providers.iter().any(|(node, provider)| {
                    *node != holder && provider.in_flight.len() < provider.window
                })
            })
            .map(|(_, ready)| ready);
        deadlines.chain(backups).min()
    }

    /// The next thing to send.
    pub fn poll_transmit(&mut self) -> Option<(NodeId, Transmit)> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Batches with a single copy, and when each becomes worth a backup.
    fn backup_candidates(&self) -> impl Iterator<Item = (u64, Instant)> + '_ {
        self.batches
            .iter()
            .filter(|_| self.config.backups)
            .filter(|(_, state)| state.copies.len() == 1 && !state.backed_up)
            .filter_map(|(id, state)| {
                let job = self.jobs.get(&state.job)?;
                // Only near the end of a job: nothing of it left to hand out.
                if job.cursor < job.total() || !job.requeued.is_empty() {
                    return None;
                }
                let expected = job.per_item.map_or(Duration::from_millis(100), |per_item| {
                    per_item * u32::try_from(state.range.len()).unwrap_or(u32::MAX)
                });
                Some((*id, state.copies[0].sent + expected * 2))
            })
    }

    /// Hands out work to every provider with room.
    fn dispatch(&mut self, now: Instant) {
        let nodes: Vec<NodeId> = self.providers.keys().copied().collect();
        if nodes.is_empty() {
            return;
        }
        self.turn = self.turn.wrapping_add(1);
        let start = self.turn % nodes.len();
        // Round robin, one batch per provider per pass, so providers share what is left.
        loop {
            let mut progressed = false;
            for offset in 0..nodes.len() {
                let node = nodes[(start + offset) % nodes.len()];
                let has_room = self
                    .providers
                    .get(&node)
                    .is_some_and(|provider| provider.in_flight.len() < provider.window);
                if has_room && self.assign_one(node, now) {
                    progressed = true;
                }
            }
            if !progressed {
                break;
            }
        }
    }

    /// Gives `node` one batch: a requeued one, a new one, or a backup copy.
    fn assign_one(&mut self, node: NodeId, now: Instant) -> bool {
        let job_ids: Vec<JobId> = self.jobs.keys().copied().collect();
        for job in job_ids {
            if let Some(batch) = self.next_batch_of(job) {
                self.send_copy(batch, node, now);
                return true;
            }
        }
        let backup = self
            .backup_candidates()
            .filter(|(id, ready)| {
                *ready <= now
                    && self.batches[id]
                        .copies
                        .iter()
                        .all(|copy| copy.provider != node)
            })
            .min_by_key(|(_, ready)| *ready)
            .map(|(id, _)| id);
        if let Some(batch) = backup {
            if let Some(state) = self.batches.get_mut(&batch) {
                state.backed_up = true;
            }
            tracing::debug!(%node, batch, "backup copy of a straggler");
            self.send_copy(batch, node, now);
            return true;
        }
        false
    }

    /// A requeued batch of `job`, or a new one.
    fn next_batch_of(&mut self, job_id: JobId) -> Option<u64> {
        let job = self.jobs.get_mut(&job_id)?;
        while let Some(batch) = job.requeued.pop_front() {
            // Skip batches settled or handed out again since they were requeued.
            if self
                .batches
                .get(&batch)
                .is_some_and(|state| state.copies.is_empty())
            {
                return Some(batch);
            }
        }
        if job.cursor >= job.total() || job.failure.is_some() {
            return None;
        }
        let slots: usize = self.providers.values().map(|p| p.window).sum();
        let size = batch_size(&self.config, job, slots.max(1));
        let range = job.cursor..job.cursor + size;
        job.cursor = range.end;
        let id = self.next_batch;
        self.next_batch += 1;
        self.batches.insert(
            id,
            BatchState {
                job: job_id,
                range,
                copies: Vec::new(),
                attempts: 0,
                backed_up: false,
            },
        );
        Some(id)
    }

    fn send_copy(&mut self, batch: u64, node: NodeId, now: Instant) {
        let Some(state) = self.batches.get_mut(&batch) else {
            return;
        };
        let Some(job) = self.jobs.get(&state.job) else {
            return;
        };
        let items: Vec<Item> = state
            .range
            .clone()
            .map(|index| Item {
                index: index as u64,
                input: job.inputs[index].clone(),
            })
            .collect();
        let deadline = now
            + match job.per_item {
                Some(per_item) => (per_item
                    * u32::try_from(items.len()).unwrap_or(u32::MAX)
                    * self.config.deadline_factor)
                    .max(self.config.min_deadline),
                None => self.config.first_deadline,
            };
        state.copies.push(Copy {
            provider: node,
            sent: now,
            deadline,
        });
        if let Some(provider) = self.providers.get_mut(&node) {
            provider.in_flight.insert(batch);
        }
        let request = Request::Run(Batch {
            id: batch,
            job: job.spec.clone(),
            items,
        });
        self.transmits.push_back((node, Transmit::Request(request)));
    }
}

/// Subtasks in the next batch of `job`: what fills the target time at the measured cost, never
/// more than a fair share of what is left, and within the item and byte caps.
fn batch_size(config: &SchedulerConfig, job: &JobState, slots: usize) -> usize {
    let remaining = job.total() - job.cursor;
    let fair = remaining.div_ceil(slots * 2);
    let by_time = job.per_item.map_or(usize::MAX, |per_item| {
        let nanos = per_item.as_nanos().max(1);
        usize::try_from(config.target_batch_time.as_nanos() / nanos).unwrap_or(usize::MAX)
    });
    let mut size = fair.min(by_time).min(config.max_batch_items).max(1);
    let mut bytes = 0;
    for (offset, input) in job.inputs[job.cursor..job.cursor + size].iter().enumerate() {
        bytes += input.inline_len();
        if bytes > config.max_batch_bytes && offset > 0 {
            size = offset;
            break;
        }
    }
    size
}
