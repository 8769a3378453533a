//! A deterministic simulation of one requestor and many providers: virtual time, messages
//! that are delayed, reordered and dropped, providers that hang, die or cheat.
//!
//! Its tests check the scheduler's behaviour; the `scale` bench (feature `simulation`) runs it
//! with thousands of providers and reads [`Sim::scheduler_time`], the time spent in the
//! requestor's session alone.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};
use std::time::{Duration, Instant};

use super::message::{Batch, BlobId, Hello, Input, JobSpec, Outcome, Output, Reply, Request};
use super::provider::{ProviderSession, ProviderSessionConfig};
use super::requestor::{
    Check, CheckKind, CheckResult, Event, JobFailure, JobOutput, JobTerms, ProviderSlot,
    RequestorSession, SchedulerConfig, Subnet, Transmit,
};
use crate::adversarial::{Cheat, Cheater};
use crate::identity::{NodeId, NodeKey};
use crate::sandbox::{Limits, ModuleError, SubtaskError};
use crate::verify::Verify;

/// splitmix64: a small, deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What a simulated provider does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behavior {
    /// Runs every batch it is sent, truthfully.
    Honest,
    /// Accepts batches and never finishes them.
    Hangs,
    /// Disappears at this virtual time.
    DiesAt(Duration),
    /// Refuses every batch: the requestor owes it too much.
    Unpaid,
    /// Gives every batch back at once.
    GivesBack,
    /// Gives back the first this many batches it is sent, then runs the rest.
    GivesBackFirst(u32),
    /// Says every module is not a golem module.
    Refuses,
    /// Returns (and signs) outputs a byte longer than the job allows.
    Bloats,
}

enum Deliver {
    Request(usize, Request),
    Reply(usize, Reply),
    Blob(usize, BlobId),
    WorkDone(usize, u64, Outcome),
    Kill(usize),
    Checked(u64, CheckResult),
}

struct SimProvider {
    key: NodeKey,
    node: NodeId,
    cheater: Option<Cheater>,
    session: ProviderSession,
    store: HashSet<BlobId>,
    behavior: Behavior,
    /// Where the requestor sees it: by default on this machine, each provider its own.
    subnet: Subnet,
    alive: bool,
    /// Batches it gave back.
    gave_back: u32,
}

/// The simulated network.
#[derive(Debug, Clone, Copy)]
pub struct Network {
    /// Percent of messages lost.
    pub drop_percent: u64,
    /// Longest delay of a message, in milliseconds (each is delayed by 0.2 ms to this).
    pub max_delay_ms: u64,
}

/// One requestor session and its simulated providers, in virtual time.
pub struct Sim {
    rng: Rng,
    base: Instant,
    time: Duration,
    seq: u64,
    queue: BinaryHeap<Reverse<(Duration, u64)>>,
    pending: HashMap<u64, Deliver>,
    requestor: RequestorSession,
    providers: Vec<SimProvider>,
    network: Network,
    blobs_sent: HashMap<(usize, BlobId), u32>,
    /// Subtask indices whose failure is deterministic (the task "panics").
    poisoned: HashSet<u64>,
    /// How jobs are verified.
    verify: Verify,
    /// Every provider's price per billion fuel.
    price: u64,
    /// Limits of the jobs.
    limits: Limits,
    /// Budget of the jobs, in whole units.
    budget: Option<u128>,
    /// Provider by node id.
    index_of: HashMap<NodeId, usize>,
    /// Providers a delivery or a timer reached since the last flush: only they can have
    /// anything to send.
    touched: BTreeSet<usize>,
    /// Each provider's next timer, and the set of them in time order.
    timer_of: Vec<Option<Instant>>,
    timers: BTreeSet<(Instant, usize)>,
    /// Time spent in the requestor's session: the scheduler's own cost.
    scheduler_time: Duration,
    /// Time the last job's submission took in the requestor's session.
    submit_time: Duration,
}

fn expected_output(index: u64, input: &[u8]) -> Vec<u8> {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&index.to_le_bytes());
    hasher.update(input);
    hasher.finalize().as_bytes()[..8].to_vec()
}

impl Sim {
    /// A requestor with `config` and one provider per behavior, none connected yet; `seed`
    /// decides every delay and loss.
    pub fn new(
        seed: u64,
        behaviors: &[Behavior],
        network: Network,
        config: SchedulerConfig,
    ) -> Self {
        let providers = behaviors
            .iter()
            .enumerate()
            .map(|(index, behavior)| (provider_key(index), behavior))
            .map(|(key, behavior)| SimProvider {
                node: key.node_id(),
                key,
                cheater: None,
                session: ProviderSession::new(
                    Hello {
                        version: 1,
                        offers: Vec::new(),
                        engine: None,
                        payee: None,
                    },
                    ProviderSessionConfig {
                        blob_wait: Duration::from_secs(5),
                        ..ProviderSessionConfig::default()
                    },
                ),
                store: HashSet::new(),
                behavior: *behavior,
                subnet: Subnet::Local,
                alive: true,
                gave_back: 0,
            })
            .collect();
        let mut sim = Self {
            rng: Rng(seed),
            base: Instant::now(),
            time: Duration::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            pending: HashMap::new(),
            requestor: RequestorSession::new(config).with_seed(seed),
            providers,
            network,
            blobs_sent: HashMap::new(),
            poisoned: HashSet::new(),
            verify: Verify::None,
            price: 0,
            limits: Limits::default(),
            budget: None,
            index_of: HashMap::new(),
            touched: BTreeSet::new(),
            timer_of: vec![None; behaviors.len()],
            timers: BTreeSet::new(),
            scheduler_time: Duration::ZERO,
            submit_time: Duration::ZERO,
        };
        sim.index_of = sim
            .providers
            .iter()
            .enumerate()
            .map(|(index, provider)| (provider.node, index))
            .collect();
        for (index, behavior) in behaviors.iter().enumerate() {
            if let Behavior::DiesAt(at) = behavior {
                sim.schedule(*at, Deliver::Kill(index));
            }
        }
        sim
    }

    fn now(&self) -> Instant {
        self.base + self.time
    }

    fn schedule(&mut self, at: Duration, what: Deliver) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq)));
        self.pending.insert(self.seq, what);
    }

    /// Sends over the lossy network: maybe dropped, delayed by a random amount (so messages
    /// overtake each other).
    fn send(&mut self, what: Deliver) {
        if self.rng.chance(self.network.drop_percent) {
            return;
        }
        let delay = Duration::from_micros(200 + self.rng.below(self.network.max_delay_ms * 1000));
        self.schedule(self.time + delay, what);
    }

    fn provider_index(&self, node: NodeId) -> usize {
        *self.index_of.get(&node).expect("a known provider")
    }

    /// Time spent so far in the requestor's session: the scheduler's own cost, without the
    /// simulated providers and network.
    pub fn scheduler_time(&self) -> Duration {
        self.scheduler_time
    }

    /// The virtual time: how long the simulated jobs have taken so far.
    pub fn virtual_time(&self) -> Duration {
        self.time
    }

    /// Time the last job's submission took in the requestor's session: it cuts the first batch
    /// for every provider with room, and sends them.
    pub fn submit_time(&self) -> Duration {
        self.submit_time
    }

    /// Calls the requestor's session, counting the time it takes.
    fn requestor<R>(&mut self, call: impl FnOnce(&mut RequestorSession) -> R) -> R {
        let started = Instant::now();
        let result = call(&mut self.requestor);
        self.scheduler_time += started.elapsed();
        result
    }

    /// Notes that provider `index` was reached: it may have something to send, and its timer
    /// may have moved.
    fn touch(&mut self, index: usize) {
        self.touched.insert(index);
        let next = self.providers[index].session.poll_timeout();
        if let Some(old) = std::mem::replace(&mut self.timer_of[index], next) {
            self.timers.remove(&(old, index));
        }
        if let Some(next) = next {
            self.timers.insert((next, index));
        }
    }

    /// Makes provider `index` lie as `cheat` says.
    pub fn cheat(&mut self, index: usize, cheat: Cheat) {
        self.providers[index].cheater = Some(Cheater::new(cheat));
    }

    /// Connects provider `index` to the requestor, taking `concurrency` subtasks at once.
    pub fn connect(&mut self, index: usize, concurrency: u32) {
        let node = self.providers[index].node;
        let slot = ProviderSlot {
            concurrency,
            engine: None,
            price_per_gfuel: self.price,
            payee: None,
            subnet: self.providers[index].subnet,
        };
        let now = self.now();
        self.requestor(|requestor| requestor.add_provider(node, slot, now));
    }

    /// Connects every provider, each taking two subtasks at once.
    pub fn connect_all(&mut self) {
        for index in 0..self.providers.len() {
            self.connect(index, 2);
        }
        self.flush();
    }

    /// The task, run honestly: the true outputs, or the failure of the first poisoned
    /// subtask.
    fn run_batch(&self, batch: &Batch) -> Result<Vec<Output>, Outcome> {
        let mut outputs = Vec::new();
        for item in &batch.items {
            let Input::Inline(input) = &item.input else {
                panic!("the simulation sends inline inputs only");
            };
            if self.poisoned.contains(&item.index) {
                return Err(Outcome::Failed {
                    index: item.index,
                    error: SubtaskError::Panic {
                        message: "poisoned".into(),
                    },
                });
            }
            outputs.push(Output {
                bytes: expected_output(item.index, input),
                fuel: 1,
            });
        }
        Ok(outputs)
    }

    /// The requestor's side of a check: a re-run computes the true outputs.
    fn run_check(&self, check: &Check) -> CheckResult {
        let outputs = match self.run_batch(&check.batch) {
            Ok(outputs) => outputs,
            Err(failed) => return CheckResult::Ran(Err(failed)),
        };
        match check.kind {
            CheckKind::Rerun => CheckResult::Ran(Ok(outputs)),
            CheckKind::Custom => {
                let wrong = check
                    .batch
                    .items
                    .iter()
                    .zip(&check.claimed)
                    .zip(&outputs)
                    .find(|((_, claimed), right)| claimed.bytes != right.bytes);
                CheckResult::Custom(match wrong {
                    Some(((item, _), _)) => Err((item.index, "not the expected bytes".into())),
                    None => Ok(()),
                })
            }
        }
    }

    /// Moves everything the state machines want to send onto the network.
    fn flush(&mut self) {
        while let Some(check) = self.requestor(RequestorSession::poll_check) {
            let result = self.run_check(&check);
            let cost = Duration::from_micros(check.batch.items.len() as u64 * 700);
            self.schedule(self.time + cost, Deliver::Checked(check.id, result));
        }
        while let Some((node, transmit)) = self.requestor(RequestorSession::poll_transmit) {
            let to = self.provider_index(node);
            match transmit {
                Transmit::Request(request) => self.send(Deliver::Request(to, request)),
                Transmit::Blob(id) => {
                    *self.blobs_sent.entry((to, id)).or_default() += 1;
                    self.send(Deliver::Blob(to, id));
                }
            }
        }
        for index in std::mem::take(&mut self.touched) {
            if !self.providers[index].alive {
                continue;
            }
            while let Some(reply) = self.providers[index].session.poll_reply() {
                self.send(Deliver::Reply(index, reply));
            }
            while let Some(work) = self.providers[index].session.poll_work() {
                let batch = work.batch;
                if self.providers[index].behavior == Behavior::Hangs {
                    continue;
                }
                let lie = match self.providers[index].behavior {
                    Behavior::Unpaid => Some(Outcome::Unpaid {
                        owed: 12,
                        limit: 10,
                    }),
                    Behavior::GivesBack => Some(Outcome::Retry("busy".into())),
                    Behavior::GivesBackFirst(first) if self.providers[index].gave_back < first => {
                        self.providers[index].gave_back += 1;
                        Some(Outcome::Retry("busy".into()))
                    }
                    Behavior::Refuses => Some(Outcome::Refused(ModuleError::NotAGolemModule)),
                    _ => None,
                };
                if let Some(outcome) = lie {
                    self.send(Deliver::WorkDone(index, batch.id, outcome));
                    continue;
                }
                let ran = self.run_batch(&batch);
                let cost =
                    Duration::from_micros(batch.items.len() as u64 * (500 + self.rng.below(1000)));
                let provider = &mut self.providers[index];
                let ran = match (ran, &provider.behavior) {
                    (Ok(mut outputs), Behavior::Bloats) => {
                        for output in &mut outputs {
                            output.bytes.resize(self.limits.output_bytes + 1, 0);
                        }
                        Ok(outputs)
                    }
                    (ran, _) => ran,
                };
                let outcome = match (ran, &mut provider.cheater) {
                    (Err(failed), _) => failed,
                    (Ok(outputs), Some(cheater)) => cheater.outcome(&provider.key, &batch, outputs),
                    (Ok(outputs), None) => Outcome::signed(&provider.key, &batch, outputs),
                };
                self.schedule(
                    self.time + cost,
                    Deliver::WorkDone(index, batch.id, outcome),
                );
            }
        }
    }

    /// Submits a job of `inputs` and runs until it finishes: its result and the events seen.
    pub fn run(&mut self, inputs: Vec<Vec<u8>>) -> (Result<JobOutput, JobFailure>, Vec<Event>) {
        self.run_with(inputs, |_| {})
    }

    /// [`Sim::run`], calling `step` before each step of the simulation.
    fn run_with(
        &mut self,
        inputs: Vec<Vec<u8>>,
        mut step: impl FnMut(&mut Self),
    ) -> (Result<JobOutput, JobFailure>, Vec<Event>) {
        let spec = JobSpec {
            module: BlobId::of(b"module"),
            task: "t".into(),
            context: BlobId::of(b"context"),
            seed: [0; 32],
            nonce: [0; 16],
            limits: self.limits.clone(),
        };
        let inputs = inputs.into_iter().map(Input::Inline).collect();
        let terms = JobTerms {
            verify: self.verify.clone(),
            budget: self.budget,
        };
        let now = self.now();
        let before = self.scheduler_time;
        let job = self.requestor(|requestor| requestor.submit(spec, inputs, terms, now));
        self.submit_time = self.scheduler_time - before;
        self.flush();
        let mut events = Vec::new();
        for _ in 0..10_000_000 {
            while let Some(event) = self.requestor(RequestorSession::poll_event) {
                if let Event::Finished { job: done, result } = &event {
                    assert_eq!(*done, job);
                    let result = result.clone();
                    events.push(event);
                    while let Some(event) = self.requestor(RequestorSession::poll_event) {
                        events.push(event);
                    }
                    return (result, events);
                }
                events.push(event);
            }
            #[cfg(test)]
            assert!(
                self.requestor.deadlines_match_copies(),
                "the index of deadlines lost track of the copies out"
            );
            step(self);
            let first = self.timers.first().map(|(at, _)| *at);
            let timers = std::iter::once(self.requestor(|requestor| requestor.poll_timeout()))
                .chain([first])
                .flatten()
                .min()
                .map(|at| at - self.base);
            let next = self.queue.peek().map(|Reverse((at, _))| *at);
            match (next, timers) {
                (Some(at), Some(timer)) if timer < at => self.fire_timers(timer),
                (None, Some(timer)) => self.fire_timers(timer),
                (Some(_), _) => {
                    let Reverse((at, seq)) = self.queue.pop().expect("peeked");
                    self.time = self.time.max(at);
                    let what = self.pending.remove(&seq).expect("scheduled");
                    self.deliver(what);
                }
                (None, None) => panic!(
                    "the simulation stalled with the job unfinished: {:?}\n{}",
                    self.requestor,
                    self.requestor.describe_batches()
                ),
            }
            assert!(
                self.time < Duration::from_secs(3600),
                "the job did not finish in an hour of virtual time"
            );
            self.flush();
        }
        panic!("the simulation did not finish in its step budget");
    }

    fn fire_timers(&mut self, at: Duration) {
        self.time = self.time.max(at);
        let now = self.now();
        self.requestor(|requestor| requestor.handle_timeout(now));
        // A provider's timeout does something only once its timer is due.
        let due: BTreeSet<usize> = self
            .timers
            .range(..=(now, usize::MAX))
            .map(|(_, index)| *index)
            .collect();
        for index in due {
            self.providers[index].session.handle_timeout(now);
            self.touch(index);
        }
    }

    fn deliver(&mut self, what: Deliver) {
        let now = self.now();
        match what {
            Deliver::Request(to, request) if self.providers[to].alive => {
                let provider = &mut self.providers[to];
                let store = &provider.store;
                provider
                    .session
                    .handle_request(request, now, |id| store.contains(id));
                self.touch(to);
            }
            Deliver::Blob(to, id) if self.providers[to].alive => {
                let provider = &mut self.providers[to];
                provider.store.insert(id);
                provider.session.handle_blob(id);
                self.touch(to);
            }
            Deliver::WorkDone(from, batch, outcome) if self.providers[from].alive => {
                let _ = self.providers[from].session.handle_done(batch, outcome);
                self.touch(from);
            }
            Deliver::Reply(from, reply) if self.providers[from].alive => {
                let node = self.providers[from].node;
                self.requestor(|requestor| requestor.handle_reply(node, reply, now));
            }
            Deliver::Kill(index) => {
                self.providers[index].alive = false;
                let node = self.providers[index].node;
                self.requestor(|requestor| requestor.remove_provider(node, now));
            }
            Deliver::Checked(id, result) => {
                self.requestor(|requestor| requestor.handle_check(id, result, now));
            }
            // Anything to or from a dead provider is lost.
            _ => {}
        }
    }
}

/// Provider `index`'s key: the first 255 as they always were (the pinned runs name them), then
/// one derived from the index.
fn provider_key(index: usize) -> NodeKey {
    match u8::try_from(index + 1) {
        Ok(byte) => NodeKey::from_secret([byte; 32]),
        Err(_) => NodeKey::from_secret(blake3::derive_key(
            "golem simulated provider",
            &(index as u64).to_le_bytes(),
        )),
    }
}

#[cfg(test)]
mod tests;
