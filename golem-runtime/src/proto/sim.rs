//! A deterministic simulation of one requestor and several providers: virtual time, messages
//! that are delayed, reordered and dropped, providers that hang or die.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::time::{Duration, Instant};

use super::message::{BlobId, Hello, Input, JobSpec, Outcome, Output, Reply, Request};
use super::provider::{ProviderSession, ProviderSessionConfig};
use super::requestor::{Event, JobFailure, RequestorSession, SchedulerConfig, Transmit};
use crate::identity::{NodeId, NodeKey};
use crate::sandbox::{Limits, SubtaskError};

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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Behavior {
    Honest,
    /// Accepts batches and never finishes them.
    Hangs,
    /// Disappears at this virtual time.
    DiesAt(Duration),
}

enum Deliver {
    Request(usize, Request),
    Reply(usize, Reply),
    Blob(usize, BlobId),
    WorkDone(usize, u64, Outcome),
    Kill(usize),
}

struct SimProvider {
    node: NodeId,
    session: ProviderSession,
    store: HashSet<BlobId>,
    behavior: Behavior,
    alive: bool,
}

struct Network {
    drop_percent: u64,
    max_delay_ms: u64,
}

struct Sim {
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
}

fn expected_output(index: u64, input: &[u8]) -> Vec<u8> {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&index.to_le_bytes());
    hasher.update(input);
    hasher.finalize().as_bytes()[..8].to_vec()
}

impl Sim {
    fn new(seed: u64, behaviors: &[Behavior], network: Network, config: SchedulerConfig) -> Self {
        let providers = behaviors
            .iter()
            .enumerate()
            .map(|(index, behavior)| SimProvider {
                node: NodeKey::from_secret([index as u8 + 1; 32]).node_id(),
                session: ProviderSession::new(
                    Hello {
                        version: 1,
                        listen: None,
                        offers: Vec::new(),
                        engine: None,
                    },
                    ProviderSessionConfig {
                        blob_wait: Duration::from_secs(5),
                        ..ProviderSessionConfig::default()
                    },
                ),
                store: HashSet::new(),
                behavior: *behavior,
                alive: true,
            })
            .collect();
        let mut sim = Self {
            rng: Rng(seed),
            base: Instant::now(),
            time: Duration::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            pending: HashMap::new(),
            requestor: RequestorSession::new(config),
            providers,
            network,
            blobs_sent: HashMap::new(),
            poisoned: HashSet::new(),
        };
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
        self.providers
            .iter()
            .position(|provider| provider.node == node)
            .expect("a known provider")
    }

    fn connect_all(&mut self) {
        for index in 0..self.providers.len() {
            let node = self.providers[index].node;
            self.requestor.add_provider(node, 2, self.now());
        }
        self.flush();
    }

    /// Moves everything the state machines want to send onto the network.
    fn flush(&mut self) {
        while let Some((node, transmit)) = self.requestor.poll_transmit() {
            let to = self.provider_index(node);
            match transmit {
                Transmit::Request(request) => self.send(Deliver::Request(to, request)),
                Transmit::Blob(id) => {
                    *self.blobs_sent.entry((to, id)).or_default() += 1;
                    self.send(Deliver::Blob(to, id));
                }
            }
        }
        for index in 0..self.providers.len() {
            if !self.providers[index].alive {
                continue;
            }
            while let Some(reply) = self.providers[index].session.poll_reply() {
                self.send(Deliver::Reply(index, reply));
            }
            while let Some(batch) = self.providers[index].session.poll_work() {
                if self.providers[index].behavior == Behavior::Hangs {
                    continue;
                }
                let mut outputs = Vec::new();
                let mut outcome = None;
                for item in &batch.items {
                    let Input::Inline(input) = &item.input else {
                        panic!("the simulation sends inline inputs only");
                    };
                    if self.poisoned.contains(&item.index) {
                        outcome = Some(Outcome::Failed {
                            index: item.index,
                            error: SubtaskError::Panic {
                                message: "poisoned".into(),
                            },
                        });
                        break;
                    }
                    outputs.push(Output {
                        bytes: expected_output(item.index, input),
                        fuel: 1,
                    });
                }
                let cost =
                    Duration::from_micros(batch.items.len() as u64 * (500 + self.rng.below(1000)));
                let outcome = outcome.unwrap_or(Outcome::Outputs(outputs));
                self.schedule(
                    self.time + cost,
                    Deliver::WorkDone(index, batch.id, outcome),
                );
            }
        }
    }

    /// Runs until the job finishes; returns its result and the events seen.
    fn run(&mut self, inputs: Vec<Vec<u8>>) -> (Result<Vec<Output>, JobFailure>, Vec<Event>) {
        self.run_with(inputs, |_| {})
    }

    /// [`Sim::run`], calling `step` before each step of the simulation.
    fn run_with(
        &mut self,
        inputs: Vec<Vec<u8>>,
        mut step: impl FnMut(&mut Self),
    ) -> (Result<Vec<Output>, JobFailure>, Vec<Event>) {
        let spec = JobSpec {
            module: BlobId::of(b"module"),
            task: "t".into(),
            context: BlobId::of(b"context"),
            seed: [0; 32],
            limits: Limits::default(),
        };
        let inputs = inputs.into_iter().map(Input::Inline).collect();
        let job = self.requestor.submit(spec, inputs, self.now());
        self.flush();
        let mut events = Vec::new();
        for _ in 0..10_000_000 {
            while let Some(event) = self.requestor.poll_event() {
                if let Event::Finished { job: done, result } = &event {
                    assert_eq!(*done, job);
                    let result = result.clone();
                    events.push(event);
                    while let Some(event) = self.requestor.poll_event() {
                        events.push(event);
                    }
                    return (result, events);
                }
                events.push(event);
            }
            step(self);
            let timers = std::iter::once(self.requestor.poll_timeout())
                .chain(self.providers.iter().map(|p| p.session.poll_timeout()))
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
                (None, None) => panic!("the simulation stalled with the job unfinished"),
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
        self.requestor.handle_timeout(now);
        for provider in &mut self.providers {
            provider.session.handle_timeout(now);
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
            }
            Deliver::Blob(to, id) if self.providers[to].alive => {
                let provider = &mut self.providers[to];
                provider.store.insert(id);
                provider.session.handle_blob(id);
            }
            Deliver::WorkDone(from, batch, outcome) if self.providers[from].alive => {
                self.providers[from].session.handle_done(batch, outcome);
            }
            Deliver::Reply(from, reply) if self.providers[from].alive => {
                let node = self.providers[from].node;
                self.requestor.handle_reply(node, reply, now);
            }
            Deliver::Kill(index) => {
                self.providers[index].alive = false;
                let node = self.providers[index].node;
                self.requestor.remove_provider(node, now);
            }
            // Anything to or from a dead provider is lost.
            _ => {}
        }
    }
}

fn inputs(count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| (i as u32).to_le_bytes().to_vec())
        .collect()
}

fn check_outputs(result: Result<Vec<Output>, JobFailure>, inputs: &[Vec<u8>]) {
    let outputs = result.expect("the job succeeds");
    assert_eq!(outputs.len(), inputs.len());
    for (index, (output, input)) in outputs.iter().zip(inputs).enumerate() {
        assert_eq!(
            output.bytes,
            expected_output(index as u64, input),
            "output {index} is another subtask's"
        );
    }
}

fn check_progress(events: &[Event], total: usize) {
    let mut last = 0;
    for event in events {
        if let Event::Progress {
            settled, total: t, ..
        } = event
        {
            assert_eq!(*t, total);
            assert!(
                *settled > last && *settled <= total,
                "progress went {last} → {settled}"
            );
            last = *settled;
        }
    }
    assert_eq!(last, total, "every subtask settled exactly once");
}

#[test]
fn a_clean_network_sends_each_blob_once_per_provider() {
    let network = Network {
        drop_percent: 0,
        max_delay_ms: 2,
    };
    let behaviors = [Behavior::Honest; 4];
    let mut sim = Sim::new(1, &behaviors, network, SchedulerConfig::default());
    sim.connect_all();
    let items = inputs(10_000);
    let (result, events) = sim.run(items.clone());
    check_outputs(result, &items);
    check_progress(&events, items.len());
    for provider in 0..4 {
        for blob in [BlobId::of(b"module"), BlobId::of(b"context")] {
            assert_eq!(sim.blobs_sent.get(&(provider, blob)), Some(&1));
        }
    }
    // A second job with the same module and context sends no blob at all.
    sim.blobs_sent.clear();
    let (result, _) = sim.run(items.clone());
    check_outputs(result, &items);
    assert!(sim.blobs_sent.is_empty(), "{:?}", sim.blobs_sent.len());
}

#[test]
fn jobs_finish_exactly_despite_drops_delays_reordering_hangs_and_deaths() {
    for seed in 0..40 {
        let network = Network {
            drop_percent: 3,
            max_delay_ms: 40,
        };
        let behaviors = [
            Behavior::Honest,
            Behavior::Honest,
            Behavior::Hangs,
            Behavior::DiesAt(Duration::from_millis(30 + seed * 7)),
            Behavior::Honest,
            Behavior::DiesAt(Duration::from_millis(400)),
        ];
        let config = SchedulerConfig {
            min_deadline: Duration::from_millis(500),
            first_deadline: Duration::from_secs(2),
            max_attempts: 50,
            ..SchedulerConfig::default()
        };
        let mut sim = Sim::new(seed, &behaviors, network, config);
        sim.connect_all();
        let items = inputs(2_000 + seed as usize * 37);
        let (result, events) = sim.run(items.clone());
        check_outputs(result, &items);
        check_progress(&events, items.len());
    }
}

#[test]
fn a_job_fails_with_its_lowest_failing_index_whatever_order_batches_end_in() {
    for seed in 0..10 {
        let network = Network {
            drop_percent: 2,
            max_delay_ms: 30,
        };
        let config = SchedulerConfig {
            min_deadline: Duration::from_millis(500),
            first_deadline: Duration::from_secs(2),
            max_attempts: 50,
            ..SchedulerConfig::default()
        };
        let mut sim = Sim::new(seed, &[Behavior::Honest; 3], network, config);
        // Two failing subtasks: the later one usually fails first, in a batch that started
        // earlier or ran faster.
        sim.poisoned.extend([3_999, 1_234]);
        sim.connect_all();
        let (result, _) = sim.run(inputs(5_000));
        match result {
            Err(JobFailure::Subtask { index, error }) => {
                assert_eq!(index, 1234, "seed {seed}");
                assert!(matches!(error, SubtaskError::Panic { .. }));
            }
            other => panic!("expected subtask 1234 to fail the job, got {other:?}"),
        }
        // The session is clean afterwards: a job without the failing subtasks runs.
        sim.poisoned.clear();
        let items = inputs(100);
        let (result, _) = sim.run(items.clone());
        check_outputs(result, &items);
    }
}

#[test]
fn a_job_waits_for_providers_and_survives_all_of_them_leaving() {
    let network = Network {
        drop_percent: 0,
        max_delay_ms: 5,
    };
    let behaviors = [
        Behavior::DiesAt(Duration::from_millis(20)),
        Behavior::Honest,
    ];
    let mut sim = Sim::new(3, &behaviors, network, SchedulerConfig::default());
    // Only the first provider is known when the job starts; it dies, and the second joins later.
    let first = sim.providers[0].node;
    sim.requestor.add_provider(first, 1, sim.now());
    let second = sim.providers[1].node;
    // Something must be on the clock for virtual time to reach the join.
    sim.schedule(
        Duration::from_millis(100),
        Deliver::Reply(1, Reply::Peers(Vec::new())),
    );
    let items = inputs(3_000);
    let mut joined = false;
    let (result, events) = sim.run_with(items.clone(), |sim| {
        if !joined && sim.time >= Duration::from_millis(100) {
            joined = true;
            sim.requestor.add_provider(second, 1, sim.now());
        }
    });
    assert!(joined);
    check_outputs(result, &items);
    check_progress(&events, items.len());
}
