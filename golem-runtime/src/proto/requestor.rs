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
//!
//! Verification (see [`crate::verify`]):
//! * Every result arrives with the provider's signature over its [`Receipt`]; the session
//!   rebuilds the receipt from its own inputs and the outputs received, and a result whose
//!   receipt does not verify is rejected and its provider caught.
//! * Under redundancy a batch wants `copies` copies on distinct providers and is accepted when
//!   they agree; when they disagree the session asks the driver to re-run the disputed
//!   subtasks ([`poll_check`](RequestorSession::poll_check)) and catches every provider that
//!   disagrees with the re-run.
//! * Under spot checks a random sample of each accepted batch is re-run, at the provider's
//!   rate; under a custom check every accepted batch goes to the job's check. A job finishes
//!   only when its checks are answered.
//! * A caught provider is banned in the session's [`Reputation`] and dropped; every batch it
//!   returned in a running job is computed again by others.
//! * Providers with longer records of accepted results are served first.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::time::{Duration, Instant};

use super::message::{Batch, BlobId, Input, Item, JobSpec, Outcome, Output, Reply, Request};
use crate::identity::NodeId;
use crate::payment::{NANO, Payee, Priced};
use crate::receipt::{Digest, Receipt, ReceiptEntry};
use crate::reputation::Reputation;
use crate::sandbox::{EngineFingerprint, ModuleError, SubtaskError};
use crate::verify::Verify;

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
    /// The job could not go on: the requestor stopped, or could not check results.
    Aborted(String),
    /// The job's budget cannot pay for another subtask on any provider connected, and
    /// nothing of it is running: it ends with what it has.
    Budget {
        /// The budget, in the smallest currency unit.
        budget: u128,
        /// Owed for the accepted results, in billionths of the smallest currency unit.
        spent_nano: u128,
        /// The outputs accepted so far, in input order; `None` where a subtask has none.
        outputs: Vec<Option<Output>>,
        /// The job's report, with the receipts of the accepted results: they are owed.
        report: Box<JobReport>,
    },
}

/// What a job is submitted with besides its work.
#[derive(Debug, Clone, Default)]
pub struct JobTerms {
    /// How results are verified.
    pub verify: Verify,
    /// Most the job may cost, in the smallest currency unit: subtasks are sent only while
    /// what is spent, plus the worst case of what is running (every subtask burning its whole
    /// fuel limit at its provider's price), fits.
    pub budget: Option<u128>,
}

impl From<Verify> for JobTerms {
    fn from(verify: Verify) -> Self {
        Self {
            verify,
            budget: None,
        }
    }
}

/// What the session asks the driver to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// A frame on the control stream.
    Request(Request),
    /// A blob on a stream of its own.
    Blob(BlobId),
}

/// A provider caught with a wrong result or a receipt that does not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caught {
    /// The provider.
    pub node: NodeId,
    /// What it did.
    pub reason: String,
}

/// What verifying a job cost and found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobReport {
    /// Subtasks in the job.
    pub subtasks: u64,
    /// Subtask results providers returned under a valid receipt, every copy counted (redundant
    /// copies, backups, results later rejected).
    pub provider_runs: u64,
    /// Subtasks the requestor re-ran in its own sandbox: spot checks, tie-breaks, failures
    /// confirmed.
    pub reruns: u64,
    /// Results passed to a custom check.
    pub custom_checks: u64,
    /// Subtasks computed again because the provider that returned them was caught.
    pub recomputed: u64,
    /// Providers caught during the job, with what they did.
    pub caught: Vec<Caught>,
    /// Receipts of the accepted results, by batch, each at the price it was bought at and with
    /// where its provider wants to be paid: what the providers are owed.
    pub receipts: Vec<Priced>,
    /// How the requestor reached each provider whose results it accepted and that was still
    /// connected as the job ended (filled in by the network driver; the state machine knows no
    /// paths).
    pub routes: Vec<Route>,
}

/// How a requestor's packets reached a provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The provider.
    pub node: NodeId,
    /// Whether they went through a relay rather than straight to the provider.
    pub relayed: bool,
    /// Where they went: the provider's address, or the relay's URL.
    pub via: String,
}

impl JobReport {
    /// Compute spent beyond one run per subtask, as a fraction of the job: redundant copies,
    /// backups, rejected results and the requestor's re-runs.
    pub fn overhead(&self) -> f64 {
        let total = self.provider_runs + self.reruns;
        total.saturating_sub(self.subtasks) as f64 / self.subtasks.max(1) as f64
    }

    /// The requestor's re-runs as a fraction of the job.
    pub fn rerun_fraction(&self) -> f64 {
        self.reruns as f64 / self.subtasks.max(1) as f64
    }
}

/// A finished job: outputs in input order, and its report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobOutput {
    /// One output per subtask, in input order.
    pub outputs: Vec<Output>,
    /// What verification cost and found.
    pub report: JobReport,
}

/// What the session reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Subtasks of a job settled. `settled` falls back when a caught provider's results are
    /// computed again.
    Progress {
        /// The job.
        job: JobId,
        /// Subtasks with an accepted result.
        settled: usize,
        /// All subtasks.
        total: usize,
    },
    /// A job ended: outputs in input order, or its failure.
    Finished {
        /// The job.
        job: JobId,
        /// The outcome.
        result: Result<JobOutput, JobFailure>,
    },
    /// A provider broke the protocol; the driver should close its connection.
    Misbehaved {
        /// The provider.
        node: NodeId,
        /// What it did.
        reason: String,
    },
    /// A provider was caught cheating and is banned (see the session's
    /// [`Reputation`]); the driver should close its connection.
    Caught(Caught),
    /// A provider takes no more work until it is paid: by its books this requestor owes it
    /// `owed`, over its credit limit. It is dropped from the session; the driver should close
    /// its connection and settle.
    Unpaid {
        /// The provider.
        node: NodeId,
        /// What it says it is owed, in the smallest currency unit.
        owed: u128,
        /// The most it lets a requestor owe.
        limit: u128,
    },
}

/// How a check is carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    /// Run the batch in the requestor's sandbox and report its outcome.
    Rerun,
    /// Pass each item's input and claimed output to the job's custom check.
    Custom,
}

/// Work the session asks the driver to do on the requestor's side to check results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Answer with [`RequestorSession::handle_check`] and this id.
    pub id: u64,
    /// The job.
    pub job: JobId,
    /// What to do.
    pub kind: CheckKind,
    /// The subtasks to check (the batch id is the check id).
    pub batch: Batch,
    /// For [`CheckKind::Custom`]: the claimed outputs, in item order.
    pub claimed: Vec<Output>,
}

/// How a check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckResult {
    /// A re-run's outputs, or how it failed (any outcome but `Outputs`).
    Ran(Result<Vec<Output>, Outcome>),
    /// A custom check: `Ok`, or the first item (subtask index) found wrong and why.
    Custom(Result<(), (u64, String)>),
    /// The check could not be carried out on the requestor's side (its sandbox or the user's
    /// check failed): no verdict. It is tried again a few times, then the job fails.
    Failed(String),
}

/// A provider's connection, as the scheduler needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProviderSlot {
    /// Subtasks it runs at once.
    pub concurrency: u32,
    /// Its sandbox engine, when it said.
    pub engine: Option<EngineFingerprint>,
    /// The price bought, per billion units of fuel.
    pub price_per_gfuel: u64,
    /// Where it wants to be paid, if it said.
    pub payee: Option<Payee>,
    /// Where it is reached.
    pub subnet: Subnet,
}

/// The part of the internet a provider is reached at, as far as the requestor can see.
/// Copies of a batch that must agree go to providers on distinct subnets, so that one operator
/// with many node ids on one network cannot supply every copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subnet {
    /// This machine (a loopback address): the requestor's own providers, each distinct.
    Local,
    /// A public address's IPv4 /24 or IPv6 /48, the network one operator most often holds; or,
    /// for a private, link-local or shared address, the one machine's address.
    Seen(IpAddr),
    /// Reached through a relay only, so where it is cannot be seen: it may share any network,
    /// so it takes no copy of a batch whose copies must agree until a direct path shows where
    /// it is. (Were relayed providers one subnet of their own, an operator could supply one
    /// copy on its network and one more through a relay.)
    Unseen,
}

impl Subnet {
    /// The subnet of a provider reached straight at `addr`, or only through a relay (`None`).
    pub fn of(addr: Option<SocketAddr>) -> Self {
        let Some(addr) = addr else {
            return Self::Unseen;
        };
        match addr.ip().to_canonical() {
            ip if ip.is_loopback() => Self::Local,
            IpAddr::V4(ip) => {
                let [a, b, c, _] = ip.octets();
                // 100.64.0.0/10: carrier-grade NAT, one machine per address as in a LAN.
                let shared = a == 100 && (64..128).contains(&b);
                if ip.is_private() || ip.is_link_local() || shared {
                    Self::Seen(IpAddr::V4(ip))
                } else {
                    Self::Seen(IpAddr::V4(Ipv4Addr::new(a, b, c, 0)))
                }
            }
            IpAddr::V6(ip) => {
                let segments = ip.segments();
                // fc00::/7 (unique local) and fe80::/10 (link-local): one machine each.
                let private = (segments[0] & 0xfe00) == 0xfc00 || (segments[0] & 0xffc0) == 0xfe80;
                if private {
                    Self::Seen(IpAddr::V6(ip))
                } else {
                    let [a, b, c, ..] = segments;
                    Self::Seen(IpAddr::V6(Ipv6Addr::new(a, b, c, 0, 0, 0, 0, 0)))
                }
            }
        }
    }

    /// Whether a provider here may take a copy of a batch whose `quorum` copies must agree,
    /// whoever holds the others: not one whose subnet is unseen.
    fn may_copy(self, quorum: usize) -> bool {
        quorum <= 1 || self != Self::Unseen
    }

    /// Whether a provider here and one at `other` may be one operator's.
    fn shared_with(self, other: Self) -> bool {
        match (self, other) {
            (Self::Local, _) | (_, Self::Local) => false,
            (Self::Seen(a), Self::Seen(b)) => a == b,
            (Self::Unseen, _) | (_, Self::Unseen) => true,
        }
    }
}

struct JobState {
    spec: JobSpec,
    digest: Digest,
    verify: Verify,
    inputs: Vec<Input>,
    outputs: Vec<Option<Output>>,
    settled: usize,
    /// Next index not yet cut into a batch.
    cursor: usize,
    /// Batches that want copies, to hand out before cutting new ones.
    requeued: VecDeque<u64>,
    /// Measured time per item, smoothed.
    per_item: Option<Duration>,
    /// Blobs this job may send: module, context and large inputs.
    blobs: HashSet<BlobId>,
    /// The failure with the lowest index seen; the job fails with it once every batch before
    /// it has settled, so the same job always reports the same failure.
    failure: Option<(usize, SubtaskError)>,
    /// Batches accepted, with the receipts of the providers that returned them.
    accepted: BTreeMap<u64, Accepted>,
    /// Checks sent to the driver and not answered.
    checks: usize,
    /// Providers that got a copy of any batch.
    providers: HashSet<NodeId>,
    /// Most the job may cost, in billionths of the smallest currency unit.
    budget_nano: Option<u128>,
    /// Owed for the accepted results, in billionths of the smallest currency unit.
    spent_nano: u128,
    report: JobReport,
}

impl JobState {
    fn total(&self) -> usize {
        self.inputs.len()
    }
}

struct Accepted {
    range: Range<usize>,
    receipts: Vec<Priced>,
    /// What the receipts are owed, in billionths of the smallest currency unit.
    nano: u128,
}

#[derive(Clone)]
struct Copy {
    provider: NodeId,
    /// Where the provider was when the copy was sent.
    subnet: Subnet,
    /// Its price when the copy was sent: the rate its result is bought at.
    price_per_gfuel: u64,
    sent: Instant,
    deadline: Instant,
    /// The worst case of what it may cost, held against the job's budget.
    reserved_nano: u128,
}

/// One provider's answer to a batch, under a verified receipt, at the price it was bought at.
struct Returned {
    outputs: Vec<Output>,
    priced: Priced,
    /// Where the provider was when it returned the result.
    subnet: Subnet,
    /// What it costs if accepted.
    nano: u128,
}

struct BatchState {
    job: JobId,
    range: Range<usize>,
    copies: Vec<Copy>,
    /// Copies given up (late, given back, their provider gone): a result may still come for
    /// one, and only for one of these or of `copies`.
    lapsed: Vec<Copy>,
    /// Results awaiting agreement.
    results: Vec<Returned>,
    /// Results that must agree.
    quorum: usize,
    /// A check that must end before the batch moves on (a tie-break or a failure).
    check: Option<u64>,
    attempts: u32,
    backed_up: bool,
    /// Providers that gave the batch back this round (a Retry, a failure that may not recur
    /// elsewhere, a missed deadline): it goes to them again only once every eligible provider
    /// has, which ends the round and counts one attempt.
    gave_back: Vec<NodeId>,
    /// Providers that refused the batch's module: it fails the job once every eligible
    /// provider has.
    refused_by: Vec<NodeId>,
    /// Why they refused it (the last one's word).
    refusal: Option<ModuleError>,
}

impl BatchState {
    fn new(job: JobId, range: Range<usize>, quorum: usize) -> Self {
        Self {
            job,
            range,
            copies: Vec::new(),
            lapsed: Vec::new(),
            results: Vec::new(),
            quorum,
            check: None,
            attempts: 0,
            backed_up: false,
            gave_back: Vec::new(),
            refused_by: Vec::new(),
            refusal: None,
        }
    }

    /// Whether `node` gave this batch back this round or refused it.
    fn turned_down_by(&self, node: NodeId) -> bool {
        self.gave_back.contains(&node) || self.refused_by.contains(&node)
    }

    /// Copies still to hand out.
    fn wants(&self) -> usize {
        if self.check.is_some() {
            return 0;
        }
        self.quorum
            .saturating_sub(self.copies.len() + self.results.len())
    }

    /// Whether `node` has a copy or a result of this batch.
    fn holds(&self, node: NodeId) -> bool {
        self.copies.iter().any(|copy| copy.provider == node)
            || self
                .results
                .iter()
                .any(|r| r.priced.receipt.provider == node)
    }

    /// Whether `node`, at `subnet`, may not take a copy of this batch: it holds one, or, when
    /// copies must agree, a provider on its subnet does or its subnet is unseen.
    fn taken(&self, node: NodeId, subnet: Subnet) -> bool {
        self.holds(node)
            || !subnet.may_copy(self.quorum)
            || (self.quorum > 1
                && (self
                    .copies
                    .iter()
                    .any(|copy| copy.subnet.shared_with(subnet))
                    || self.results.iter().any(|r| r.subnet.shared_with(subnet))))
    }

    /// Items (offsets in the batch) where the results differ.
    fn disputed(&self) -> Vec<usize> {
        let Some(first) = self.results.first() else {
            return Vec::new();
        };
        (0..first.priced.receipt.entries.len())
            .filter(|&offset| {
                self.results[1..].iter().any(|other| {
                    !other.priced.receipt.entries[offset]
                        .same_result(&first.priced.receipt.entries[offset])
                })
            })
            .collect()
    }
}

/// Why the session asked for a check.
enum Purpose {
    /// A sample of an accepted batch's results, from `provider`.
    Sample {
        batch: u64,
        provider: NodeId,
        claimed: Vec<Output>,
    },
    /// Results of copies that disagree at the checked items.
    TieBreak { batch: u64 },
    /// A failure `provider` reported at the checked item.
    Failure {
        batch: u64,
        provider: NodeId,
        error: SubtaskError,
    },
}

struct CheckState {
    job: JobId,
    purpose: Purpose,
    /// Offsets in the batch of the items checked.
    offsets: Vec<usize>,
    check: Check,
    attempts: u32,
}

/// Times an inconclusive re-run (the requestor's own sandbox busy or failing) is tried again.
const CHECK_ATTEMPTS: u32 = 3;

struct ProviderState {
    window: usize,
    engine: Option<EngineFingerprint>,
    price_per_gfuel: u64,
    payee: Option<Payee>,
    subnet: Subnet,
    in_flight: BTreeSet<u64>,
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
    checks: HashMap<u64, CheckState>,
    pending_checks: VecDeque<u64>,
    reputation: Reputation,
    /// The engine of the requestor's own sandbox: re-runs compare only with equal engines.
    engine: Option<EngineFingerprint>,
    rng: u64,
    next_job: JobId,
    next_batch: u64,
    /// Rotates which provider is served first.
    turn: usize,
    /// The providers' ids in order, to find where a turn starts.
    order: Vec<NodeId>,
    /// Providers with room for another batch: the only ones a dispatch can give work to.
    room: BTreeSet<NodeId>,
    /// Batches all providers take at once.
    window: usize,
    /// The deadline of every copy out, with its batch and provider: what times out next.
    deadlines: BTreeSet<(Instant, u64, NodeId)>,
}

impl std::fmt::Debug for RequestorSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestorSession")
            .field("jobs", &self.jobs.len())
            .field("batches", &self.batches.len())
            .field("providers", &self.providers.len())
            .field("checks", &self.checks.len())
            .finish_non_exhaustive()
    }
}

impl RequestorSession {
    /// An empty session with no provider records.
    pub fn new(config: SchedulerConfig) -> Self {
        Self {
            config,
            jobs: BTreeMap::new(),
            batches: BTreeMap::new(),
            providers: BTreeMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            checks: HashMap::new(),
            pending_checks: VecDeque::new(),
            reputation: Reputation::new(),
            engine: None,
            rng: 0x5EED,
            next_job: 0,
            next_batch: 0,
            turn: 0,
            order: Vec::new(),
            room: BTreeSet::new(),
            window: 0,
            deadlines: BTreeSet::new(),
        }
    }

    /// Starts from these provider records.
    pub fn with_reputation(mut self, reputation: Reputation) -> Self {
        self.reputation = reputation;
        self
    }

    /// The requestor re-runs results in a sandbox with this engine: jobs that re-run go only
    /// to providers with the same one.
    pub fn with_engine(mut self, engine: EngineFingerprint) -> Self {
        self.engine = Some(engine);
        self
    }

    /// Seeds the choice of spot checks; give it fresh randomness, so providers cannot guess
    /// which results are checked.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.rng = seed;
        self
    }

    /// Whether the index of deadlines holds exactly the copies out, for the simulation's
    /// tests to check after every step.
    #[cfg(test)]
    pub(crate) fn deadlines_match_copies(&self) -> bool {
        let copies: BTreeSet<(Instant, u64, NodeId)> = self
            .batches
            .iter()
            .flat_map(|(id, state)| {
                state
                    .copies
                    .iter()
                    .map(move |copy| (copy.deadline, *id, copy.provider))
            })
            .collect();
        copies == self.deadlines
    }

    #[cfg(any(test, feature = "simulation"))]
    pub(crate) fn describe_batches(&self) -> String {
        let mut text = String::new();
        for (id, state) in &self.batches {
            let job = &self.jobs[&state.job];
            text.push_str(&format!(
                "batch {id}: range {:?} copies {} results {} check {:?} wants {} queued {} cursor {} total {} committed {} budget {:?}\n",
                state.range,
                state.copies.len(),
                state.results.len(),
                state.check,
                state.wants(),
                job.requeued.contains(id),
                job.cursor,
                job.total(),
                self.committed(state.job),
                job.budget_nano,
            ));
        }
        text
    }

    /// The provider records.
    pub fn reputation(&self) -> &Reputation {
        &self.reputation
    }

    /// The provider records, to save changed ones or lift a ban.
    pub fn reputation_mut(&mut self) -> &mut Reputation {
        &mut self.reputation
    }

    /// Providers the session schedules on.
    pub fn providers(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.providers.keys().copied()
    }

    /// Jobs not yet finished.
    pub fn jobs(&self) -> usize {
        self.jobs.len()
    }

    /// A provider is connected. Returns `false`, and schedules nothing on it, when it is
    /// banned.
    pub fn add_provider(&mut self, node: NodeId, slot: ProviderSlot, now: Instant) -> bool {
        if self.reputation.is_banned(&node) {
            return false;
        }
        let window =
            (slot.concurrency.max(1) as usize).saturating_mul(self.config.batches_per_slot);
        if let std::collections::btree_map::Entry::Vacant(vacant) = self.providers.entry(node) {
            let window = window.max(1);
            vacant.insert(ProviderState {
                window,
                engine: slot.engine,
                price_per_gfuel: slot.price_per_gfuel,
                payee: slot.payee,
                subnet: slot.subnet,
                in_flight: BTreeSet::new(),
                sent: HashMap::new(),
            });
            if let Err(at) = self.order.binary_search(&node) {
                self.order.insert(at, node);
            }
            self.window = self.window.saturating_add(window);
            self.room.insert(node);
        }
        self.dispatch(now);
        true
    }

    /// Passes over the providers made so far (dispatches while any is connected).
    #[cfg(test)]
    pub(crate) fn passes(&self) -> usize {
        self.turn
    }

    /// `node` is now reached at `subnet` (a connection moved from a relay to a direct path, or
    /// back): copies sent from now on follow it. A copy keeps the subnet it was sent to: that
    /// is where its provider was seen, and a move afterwards gives an operator no copy more.
    pub fn set_subnet(&mut self, node: NodeId, subnet: Subnet, now: Instant) {
        if let Some(provider) = self.providers.get_mut(&node)
            && provider.subnet != subnet
        {
            provider.subnet = subnet;
            self.dispatch(now);
        }
    }

    /// A provider is gone: its batches go back to the queue.
    pub fn remove_provider(&mut self, node: NodeId, now: Instant) {
        self.drop_provider(node);
        self.dispatch(now);
    }

    fn drop_provider(&mut self, node: NodeId) {
        if let Some(provider) = self.providers.remove(&node) {
            if let Ok(at) = self.order.binary_search(&node) {
                self.order.remove(at);
            }
            self.window = self.window.saturating_sub(provider.window);
            self.room.remove(&node);
            for batch in provider.in_flight {
                self.drop_copy(batch, node);
            }
        }
        // The providers left may all have turned a batch down: its round is over.
        let turned_down: Vec<u64> = self
            .batches
            .iter()
            .filter(|(_, state)| !state.gave_back.is_empty() || !state.refused_by.is_empty())
            .map(|(id, _)| *id)
            .collect();
        for batch in turned_down {
            let first = self.batches.get(&batch).map(|state| state.range.start);
            if let Some(first) = first
                && self.end_round(batch)
            {
                let error = SubtaskError::Internal("every provider gave the batch back".into());
                self.check_attempts(batch, first, error);
            }
        }
    }

    /// Submits a job over `inputs` on `terms` (a [`Verify`] alone, or [`JobTerms`]).
    pub fn submit(
        &mut self,
        spec: JobSpec,
        inputs: Vec<Input>,
        terms: impl Into<JobTerms>,
        now: Instant,
    ) -> JobId {
        let JobTerms { verify, budget } = terms.into();
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
                digest: spec.digest(),
                spec,
                verify,
                outputs: (0..total).map(|_| None).collect(),
                inputs,
                settled: 0,
                cursor: 0,
                requeued: VecDeque::new(),
                per_item: None,
                blobs,
                failure: None,
                accepted: BTreeMap::new(),
                checks: 0,
                providers: HashSet::new(),
                budget_nano: budget.map(|units| units.saturating_mul(NANO)),
                spent_nano: 0,
                report: JobReport {
                    subtasks: total as u64,
                    ..JobReport::default()
                },
            },
        );
        self.try_finish(job);
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
        let changed = match reply {
            Reply::Need { batch, blobs } => self.handle_need(node, batch, blobs),
            Reply::Done { batch, outcome } => self.handle_done(node, batch, outcome, now),
            // Introductions are the driver's business.
            Reply::Hello(_) => false,
        };
        // A reply that changes nothing (a stale or unasked one) costs no pass over the
        // providers: a provider cannot make the requestor work by sending them.
        if changed {
            self.dispatch(now);
        }
    }

    /// Whether the reply changed what may be dispatched (a provider was dropped).
    fn handle_need(&mut self, node: NodeId, batch: u64, blobs: Vec<BlobId>) -> bool {
        let Some(state) = self.batches.get(&batch) else {
            return false; // the batch is over; the provider will be cancelled or already was
        };
        let Some(job) = self.jobs.get(&state.job) else {
            return false;
        };
        if !state.copies.iter().any(|copy| copy.provider == node) {
            return false;
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
        let Some(reason) = violation else {
            return false;
        };
        self.misbehaved(node, reason);
        true
    }

    /// Whether the reply changed what may be dispatched: it freed a place at its provider, or
    /// it was a result or refusal of a batch still open.
    fn handle_done(&mut self, node: NodeId, batch: u64, outcome: Outcome, now: Instant) -> bool {
        let Some(provider) = self.providers.get_mut(&node) else {
            return false; // gone, dropped or caught: what it still sends is not used
        };
        let freed = provider.in_flight.remove(&batch);
        self.note_room(node);
        let Some(state) = self.batches.get(&batch) else {
            return freed; // already settled by other copies, or its job is over
        };
        if state
            .results
            .iter()
            .any(|r| r.priced.receipt.provider == node)
        {
            return freed; // a second answer from the same provider counts once
        }
        let sent = |copies: &[Copy]| copies.iter().any(|copy| copy.provider == node);
        if !sent(&state.copies) && !sent(&state.lapsed) {
            // Never sent to it: an answer would let one operator's other keys supply copies
            // the subnets forbid them, or turn down batches they were never given.
            tracing::debug!(%node, batch, "an answer to a batch it was not sent is ignored");
            return freed;
        }
        self.take_done(node, batch, outcome, now);
        true
    }

    /// The answer of `node` to `batch`, a batch still open that it has not answered before.
    fn take_done(&mut self, node: NodeId, batch: u64, outcome: Outcome, now: Instant) {
        let Some(state) = self.batches.get(&batch) else {
            return;
        };
        let range = state.range.clone();
        let job_id = state.job;
        let quorum = state.quorum;
        let find = |copies: &[Copy]| copies.iter().find(|copy| copy.provider == node).cloned();
        let out = find(&state.copies);
        let sent = out.as_ref().map(|copy| copy.sent);
        // `handle_done` made sure there is one: out, or given up.
        let Some(copy) = out.or_else(|| find(&state.lapsed)) else {
            return;
        };
        match outcome {
            Outcome::Outputs { outputs, signature } => {
                if outputs.len() != range.len() {
                    let reason = format!(
                        "returned {} outputs for a batch of {}",
                        outputs.len(),
                        range.len()
                    );
                    self.drop_copy(batch, node);
                    self.misbehaved(node, reason);
                    return;
                }
                let Some(job) = self.jobs.get_mut(&job_id) else {
                    return;
                };
                let entries = range
                    .clone()
                    .zip(&outputs)
                    .map(|(index, output)| {
                        ReceiptEntry::new(index as u64, job.inputs[index].hash(), output)
                    })
                    .collect();
                let receipt = Receipt {
                    provider: node,
                    job: job.digest,
                    entries,
                    signature,
                };
                if receipt.verify().is_err() {
                    self.drop_copy(batch, node);
                    self.catch(
                        node,
                        format!("its receipt for subtasks {range:?} does not verify"),
                        now,
                    );
                    return;
                }
                let limit = job.spec.limits.fuel;
                if let Some(entry) = receipt.entries.iter().find(|entry| entry.fuel > limit) {
                    let reason = format!(
                        "claimed {} fuel for subtask {}, over the job's limit of {limit}",
                        entry.fuel, entry.index
                    );
                    self.drop_copy(batch, node);
                    self.catch(node, reason, now);
                    return;
                }
                // No honest run returns more than the job's output limit (the sandbox refuses
                // it): a larger output is made up, and signed.
                let limit = job.spec.limits.output_bytes;
                if let Some((index, output)) = range
                    .clone()
                    .zip(&outputs)
                    .find(|(_, output)| output.bytes.len() > limit)
                {
                    let reason = format!(
                        "returned {} bytes for subtask {index}, over the job's output limit of \
                         {limit}",
                        output.bytes.len()
                    );
                    self.drop_copy(batch, node);
                    self.catch(node, reason, now);
                    return;
                }
                // Priced at the rate its copy was sent under: a provider that comes back at
                // another price is paid the new one for new work only.
                let payee = self.providers.get(&node).and_then(|p| p.payee);
                let priced = Priced {
                    receipt,
                    price_per_gfuel: copy.price_per_gfuel,
                    payee,
                };
                let subnet = copy.subnet;
                // A copy given up left its subnet free for another: its late result counts
                // only if no result or copy out from that subnet is in.
                let shared = self.batches.get(&batch).is_some_and(|state| {
                    state.results.iter().any(|r| r.subnet.shared_with(subnet))
                        || state
                            .copies
                            .iter()
                            .any(|copy| copy.provider != node && copy.subnet.shared_with(subnet))
                });
                if quorum > 1 && shared {
                    tracing::debug!(%node, batch, "a late result from a subnet already in");
                    return;
                }
                let nano = priced.nano_amount();
                // A result whose copy was already given up holds no reservation: it is taken
                // only if the budget still has room for it.
                if sent.is_none() && !self.fits(job_id, nano) {
                    return;
                }
                let Some(job) = self.jobs.get_mut(&job_id) else {
                    return;
                };
                job.report.provider_runs += range.len() as u64;
                if let Some(sent) = sent {
                    let items = u32::try_from(range.len()).unwrap_or(u32::MAX).max(1);
                    let sample = (now - sent) / items;
                    job.per_item = Some(match job.per_item {
                        Some(old) => (old * 3 + sample) / 4,
                        None => sample,
                    });
                }
                if let Some(state) = self.batches.get_mut(&batch) {
                    for copy in state.copies.iter().filter(|copy| copy.provider == node) {
                        self.deadlines.remove(&(copy.deadline, batch, node));
                    }
                    state.copies.retain(|copy| copy.provider != node);
                    state.results.push(Returned {
                        outputs,
                        priced,
                        subnet,
                        nano,
                    });
                }
                self.evaluate(batch, now);
            }
            Outcome::Failed { index, error } => {
                let index = usize::try_from(index).unwrap_or(usize::MAX);
                if !range.contains(&index) {
                    self.drop_copy(batch, node);
                    self.misbehaved(
                        node,
                        format!(
                            "reported a failure of subtask {index}, which its batch does not hold"
                        ),
                    );
                } else if !error.is_deterministic() {
                    self.give_back(batch, node, index, error);
                } else if self
                    .jobs
                    .get(&job_id)
                    .is_some_and(|job| job.verify.reruns())
                {
                    // Confirm the failure before it ends the job.
                    self.drop_copy(batch, node);
                    let purpose = Purpose::Failure {
                        batch,
                        provider: node,
                        error,
                    };
                    let id = self.request_check(
                        batch,
                        vec![index - range.start],
                        purpose,
                        CheckKind::Rerun,
                        Vec::new(),
                    );
                    if let Some(state) = self.batches.get_mut(&batch) {
                        state.check = id;
                    }
                } else {
                    self.record_failure(job_id, batch, index, error);
                }
            }
            Outcome::Refused(error) => {
                // One provider's word does not end a job: the module is refused for good once
                // every provider that could run the batch has refused it.
                tracing::debug!(%node, batch, %error, "module refused");
                self.drop_copy(batch, node);
                if let Some(state) = self.batches.get_mut(&batch) {
                    state.refused_by.push(node);
                    state.refusal = Some(error);
                }
                self.end_round(batch);
            }
            Outcome::Retry(reason) => {
                tracing::debug!(%node, batch, %reason, "batch given back");
                self.give_back(batch, node, range.start, SubtaskError::Internal(reason));
            }
            Outcome::Unpaid { owed, limit } => {
                // Not the batch's fault: its copy goes back, and so does all other work of a
                // provider that takes none until it is paid.
                self.drop_copy(batch, node);
                self.drop_provider(node);
                self.events.push_back(Event::Unpaid { node, owed, limit });
            }
        }
    }

    /// Moves a batch on after a result: accepts it when enough results agree, breaks a tie
    /// when they disagree, or waits for more copies.
    fn evaluate(&mut self, batch: u64, now: Instant) {
        let Some(state) = self.batches.get(&batch) else {
            return;
        };
        if state.check.is_some() {
            return;
        }
        let disputed = state.disputed();
        if !disputed.is_empty() {
            let id = self.request_check(
                batch,
                disputed,
                Purpose::TieBreak { batch },
                CheckKind::Rerun,
                Vec::new(),
            );
            if let Some(state) = self.batches.get_mut(&batch) {
                state.check = id;
            }
            return;
        }
        if state.results.len() >= state.quorum {
            self.accept(batch, now);
        } else if state.wants() > 0 {
            let (job, first) = (state.job, state.range.start);
            if let Some(job) = self.jobs.get_mut(&job) {
                job.requeued.push_back(batch);
            }
            // Every other provider may have turned it down while this copy ran.
            if self.end_round(batch) {
                let error = SubtaskError::Internal("every provider gave the batch back".into());
                self.check_attempts(batch, first, error);
            }
        }
    }

    /// Enough copies agree: the batch's outputs are the job's, provisionally under spot and
    /// custom checks.
    fn accept(&mut self, batch: u64, _now: Instant) {
        let Some(state) = self.batches.remove(&batch) else {
            return;
        };
        for copy in &state.copies {
            self.deadlines
                .remove(&(copy.deadline, batch, copy.provider));
            self.cancel_copy(copy.provider, batch);
        }
        let Some(job) = self.jobs.get_mut(&state.job) else {
            return;
        };
        let count = state.range.len() as u64;
        let agreed = state.results.len() > 1;
        let nano: u128 = state.results.iter().map(|result| result.nano).sum();
        job.spent_nano = job.spent_nano.saturating_add(nano);
        let mut results = state.results.into_iter();
        let Some(first) = results.next() else {
            return;
        };
        let mut receipts = vec![first.priced.clone()];
        receipts.extend(results.map(|other| other.priced));
        for priced in &receipts {
            self.reputation.accepted(priced.receipt.provider, count);
            if agreed {
                self.reputation.verified(priced.receipt.provider, count);
            }
        }
        let provider = first.priced.receipt.provider;
        let check = match &job.verify {
            Verify::SpotCheck(spot) => {
                let rate = spot.rate(self.reputation.get(&provider).streak.saturating_sub(count));
                let offsets: Vec<usize> = (0..state.range.len())
                    .filter(|_| next_unit(&mut self.rng) < rate)
                    .collect();
                (!offsets.is_empty()).then_some((offsets, CheckKind::Rerun))
            }
            Verify::Custom(_) => Some(((0..state.range.len()).collect(), CheckKind::Custom)),
            _ => None,
        };
        for (slot, output) in job.outputs[state.range.clone()]
            .iter_mut()
            .zip(first.outputs.iter())
        {
            *slot = Some(output.clone());
        }
        job.settled += state.range.len();
        job.accepted.insert(
            batch,
            Accepted {
                range: state.range.clone(),
                receipts,
                nano,
            },
        );
        let job_id = state.job;
        if let Some((offsets, kind)) = check {
            let claimed = offsets
                .iter()
                .map(|&o| first.outputs[o].clone())
                .collect::<Vec<_>>();
            // A re-run is compared here; a custom check gets the claims itself.
            let (kept, sent) = match kind {
                CheckKind::Rerun => (claimed, Vec::new()),
                CheckKind::Custom => (Vec::new(), claimed),
            };
            let purpose = Purpose::Sample {
                batch,
                provider,
                claimed: kept,
            };
            self.request_check_range(job_id, state.range.clone(), offsets, purpose, kind, sent);
        }
        self.progressed(job_id);
    }

    fn progressed(&mut self, job_id: JobId) {
        let Some(job) = self.jobs.get(&job_id) else {
            return;
        };
        if job.failure.is_some() {
            self.finish_failed(job_id);
            return;
        }
        self.events.push_back(Event::Progress {
            job: job_id,
            settled: job.settled,
            total: job.total(),
        });
        self.try_finish(job_id);
    }

    fn try_finish(&mut self, job_id: JobId) {
        let Some(job) = self.jobs.get(&job_id) else {
            return;
        };
        if job.failure.is_none() && job.settled == job.total() && job.checks == 0 {
            self.finish(job_id, Ok(()));
        }
    }

    /// Asks the driver to check items (`offsets` in `batch`'s range).
    fn request_check(
        &mut self,
        batch: u64,
        offsets: Vec<usize>,
        purpose: Purpose,
        kind: CheckKind,
        claimed: Vec<Output>,
    ) -> Option<u64> {
        let state = self.batches.get(&batch)?;
        let (job, range) = (state.job, state.range.clone());
        self.request_check_range(job, range, offsets, purpose, kind, claimed)
    }

    fn request_check_range(
        &mut self,
        job_id: JobId,
        range: Range<usize>,
        offsets: Vec<usize>,
        purpose: Purpose,
        kind: CheckKind,
        claimed: Vec<Output>,
    ) -> Option<u64> {
        let job = self.jobs.get_mut(&job_id)?;
        let id = self.next_batch;
        self.next_batch += 1;
        let items = offsets
            .iter()
            .map(|&offset| {
                let index = range.start + offset;
                Item {
                    index: index as u64,
                    input: job.inputs[index].clone(),
                }
            })
            .collect();
        let check = Check {
            id,
            job: job_id,
            kind,
            batch: Batch {
                id,
                job: job.spec.clone(),
                items,
            },
            claimed,
        };
        job.checks += 1;
        self.checks.insert(
            id,
            CheckState {
                job: job_id,
                purpose,
                offsets,
                check,
                attempts: 0,
            },
        );
        self.pending_checks.push_back(id);
        Some(id)
    }

    /// The next check to carry out; answer with [`handle_check`](Self::handle_check).
    pub fn poll_check(&mut self) -> Option<Check> {
        while let Some(id) = self.pending_checks.pop_front() {
            if let Some(state) = self.checks.get(&id) {
                return Some(state.check.clone());
            }
        }
        None
    }

    /// A check ended.
    pub fn handle_check(&mut self, id: u64, result: CheckResult, now: Instant) {
        let Some(state) = self.checks.remove(&id) else {
            return;
        };
        let Some(job) = self.jobs.get_mut(&state.job) else {
            return;
        };
        job.checks -= 1;
        let items = state.check.batch.items.len() as u64;
        match &result {
            CheckResult::Ran(_) => job.report.reruns += items,
            CheckResult::Custom(_) => job.report.custom_checks += items,
            CheckResult::Failed(_) => {}
        }
        let job_id = state.job;
        let ran = match result {
            CheckResult::Ran(ran) => ran,
            CheckResult::Custom(verdict) => {
                if let Purpose::Sample {
                    batch, provider, ..
                } = state.purpose
                {
                    match verdict {
                        Ok(()) => self.verified_if_accepted(job_id, batch, provider, items),
                        Err((index, reason)) => {
                            let reason =
                                format!("subtask {index} failed the job's check: {reason}");
                            self.catch_if_accepted(job_id, batch, provider, reason, now);
                        }
                    }
                }
                return self.checked(job_id, now);
            }
            CheckResult::Failed(reason) => return self.retry_check(state, &reason, now),
        };
        match &state.purpose {
            Purpose::Sample {
                batch,
                provider,
                claimed,
            } => match compare(&state.check.batch, claimed, &ran) {
                Verdict::Right => self.verified_if_accepted(job_id, *batch, *provider, items),
                Verdict::Wrong(reason) => {
                    self.catch_if_accepted(job_id, *batch, *provider, reason, now);
                }
                Verdict::Unknown(reason) => return self.retry_check(state, &reason, now),
            },
            Purpose::TieBreak { batch } => {
                let batch = *batch;
                let Some(batch_state) = self.batches.get(&batch) else {
                    return self.checked(job_id, now);
                };
                let mut wrong = Vec::new();
                for result in &batch_state.results {
                    let claimed = state.offsets.iter().map(|&offset| &result.outputs[offset]);
                    match compare(&state.check.batch, claimed, &ran) {
                        Verdict::Right => {}
                        Verdict::Wrong(reason) => {
                            wrong.push((result.priced.receipt.provider, reason))
                        }
                        Verdict::Unknown(reason) => return self.retry_check(state, &reason, now),
                    }
                }
                if let Some(batch_state) = self.batches.get_mut(&batch) {
                    batch_state.check = None;
                }
                for (node, reason) in wrong {
                    self.catch(node, reason, now);
                }
                self.evaluate(batch, now);
            }
            Purpose::Failure {
                batch,
                provider,
                error,
            } => {
                let (batch, provider) = (*batch, *provider);
                let index = state
                    .check
                    .batch
                    .items
                    .first()
                    .map_or(0, |item| item.index as usize);
                match ran {
                    Err(Outcome::Failed { error: local, .. }) if local.is_deterministic() => {
                        if let Some(batch_state) = self.batches.get_mut(&batch) {
                            batch_state.check = None;
                        }
                        self.reputation.verified(provider, 1);
                        self.record_failure(job_id, batch, index, local);
                    }
                    Ok(_) => {
                        if let Some(batch_state) = self.batches.get_mut(&batch) {
                            batch_state.check = None;
                        }
                        let reason =
                            format!("reported subtask {index} as failed ({error}), but it runs");
                        self.catch(provider, reason, now);
                        self.evaluate(batch, now);
                    }
                    Err(outcome) => return self.retry_check(state, &format!("{outcome:?}"), now),
                }
            }
        }
        self.checked(job_id, now);
    }

    /// After a check: the job may be over, and caught providers' batches handed out again.
    fn checked(&mut self, job: JobId, now: Instant) {
        self.try_finish(job);
        self.dispatch(now);
    }

    /// Sends an inconclusive check again, or fails its job after a few tries.
    fn retry_check(&mut self, mut state: CheckState, reason: &str, now: Instant) {
        let job = state.job;
        state.attempts += 1;
        if state.attempts >= CHECK_ATTEMPTS {
            self.fail(
                job,
                JobFailure::Aborted(format!(
                    "the requestor could not check results of the job: {reason}"
                )),
            );
            return self.checked(job, now);
        }
        tracing::debug!(job, %reason, "check tried again");
        if let Some(job) = self.jobs.get_mut(&job) {
            job.checks += 1;
        }
        let id = state.check.id;
        self.checks.insert(id, state);
        self.pending_checks.push_back(id);
    }

    /// Whether `batch` of `job` stands on `provider`'s result (it was not recomputed since).
    fn stands(&self, job: JobId, batch: u64, provider: NodeId) -> bool {
        self.jobs
            .get(&job)
            .and_then(|job| job.accepted.get(&batch))
            .is_some_and(|accepted| {
                accepted
                    .receipts
                    .iter()
                    .any(|r| r.receipt.provider == provider)
            })
    }

    /// Catches `provider` if the sampled batch still stands on its result.
    fn catch_if_accepted(
        &mut self,
        job: JobId,
        batch: u64,
        provider: NodeId,
        reason: String,
        now: Instant,
    ) {
        if self.stands(job, batch, provider) {
            self.catch(provider, reason, now);
        }
    }

    /// Credits `provider` with `count` verified results if the sampled batch still stands.
    fn verified_if_accepted(&mut self, job: JobId, batch: u64, provider: NodeId, count: u64) {
        if self.stands(job, batch, provider) {
            self.reputation.verified(provider, count);
        }
    }

    /// `node` returned a wrong result or a bad receipt: it is banned and dropped, and every
    /// result it returned in a running job is computed again.
    fn catch(&mut self, node: NodeId, reason: String, now: Instant) {
        tracing::warn!(%node, %reason, "provider caught");
        self.reputation.caught(node);
        self.drop_provider(node);
        let caught = Caught { node, reason };
        let job_ids: Vec<JobId> = self.jobs.keys().copied().collect();
        for job_id in job_ids {
            let Some(job) = self.jobs.get_mut(&job_id) else {
                continue;
            };
            if !job.providers.contains(&node) {
                continue;
            }
            if !job.report.caught.iter().any(|seen| seen.node == node) {
                job.report.caught.push(caught.clone());
            }
            let tainted: Vec<u64> = job
                .accepted
                .iter()
                .filter(|(_, accepted)| {
                    accepted.receipts.iter().any(|r| r.receipt.provider == node)
                })
                .map(|(id, _)| *id)
                .collect();
            let mut redo = Vec::new();
            for id in tainted {
                if let Some(accepted) = job.accepted.remove(&id) {
                    for slot in &mut job.outputs[accepted.range.clone()] {
                        *slot = None;
                    }
                    // Nobody is paid for a batch a cheater had a hand in.
                    job.spent_nano = job.spent_nano.saturating_sub(accepted.nano);
                    job.settled -= accepted.range.len();
                    job.report.recomputed += accepted.range.len() as u64;
                    redo.push(accepted.range);
                }
            }
            let quorum = job.verify.copies();
            let changed = !redo.is_empty();
            for range in redo {
                let id = self.next_batch;
                self.next_batch += 1;
                self.batches
                    .insert(id, BatchState::new(job_id, range, quorum));
                job.requeued.push_back(id);
            }
            if changed {
                self.events.push_back(Event::Progress {
                    job: job_id,
                    settled: job.settled,
                    total: job.total(),
                });
            }
        }
        // Results it gave to batches still awaiting agreement no longer count.
        let waiting: Vec<u64> = self
            .batches
            .iter()
            .filter(|(_, state)| {
                state
                    .results
                    .iter()
                    .any(|r| r.priced.receipt.provider == node)
            })
            .map(|(id, _)| *id)
            .collect();
        for batch in waiting {
            if let Some(state) = self.batches.get_mut(&batch) {
                state.results.retain(|r| r.priced.receipt.provider != node);
            }
            self.evaluate(batch, now);
        }
        self.events.push_back(Event::Caught(caught));
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
                    self.deadlines.remove(&(copy.deadline, id, copy.provider));
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

    /// `node` gave `batch` back: its copy goes, and the batch is not offered to `node` again
    /// until every eligible provider has given it back (or refused it), which ends a round and
    /// counts one attempt; `error` fails the job when the attempts are used up. So one provider
    /// that gives everything back, at once and every time, cannot use up a batch's attempts
    /// while others can run it.
    fn give_back(&mut self, batch: u64, node: NodeId, index: usize, error: SubtaskError) {
        self.drop_copy(batch, node);
        if let Some(state) = self.batches.get_mut(&batch)
            && !state.gave_back.contains(&node)
        {
            state.gave_back.push(node);
        }
        if self.end_round(batch) {
            self.check_attempts(batch, index, error);
        }
    }

    /// Ends the round of `batch` once every eligible provider that may take a copy has turned
    /// it down and no copy is out: the job fails with the refusal when every one refused its
    /// module; otherwise the round counts one attempt and the batch may go to them again.
    /// Returns whether a round ended. Called when a provider turns the batch down, when a
    /// result leaves copies wanted, and when a provider leaves (the ones left may all have
    /// turned it down).
    fn end_round(&mut self, batch: u64) -> bool {
        if self.every_eligible(batch, |state, node| state.refused_by.contains(&node)) {
            let refused = self.batches.get(&batch).and_then(|state| {
                let refusal = state.refusal.clone()?;
                Some((state.job, refusal))
            });
            if let Some((job, refusal)) = refused {
                self.fail(job, JobFailure::Module(refusal));
                return true;
            }
        }
        // Providers that may not take a copy (they hold one, or share a subnet with one that
        // does) count as having turned it down: the others are all it can go to.
        let cannot_take = |state: &BatchState, node: NodeId| {
            state.turned_down_by(node) || state.taken(node, self.subnet(node))
        };
        if !self.every_eligible(batch, cannot_take) {
            return false;
        }
        let Some(state) = self.batches.get_mut(&batch) else {
            return false;
        };
        // A copy still out may yet come back: the round waits for it, so a provider that gives
        // the batch back at once cannot spend its attempts while another runs it. Its result
        // ends the round then, if no one else may take the copies still wanted.
        if !state.copies.is_empty() {
            return false;
        }
        // No one turned it down: the providers there are may not take it (they share a network
        // with its results, or cannot be placed on one). That is no attempt; it waits for a
        // provider that may.
        if state.gave_back.is_empty() {
            tracing::warn!(
                batch,
                "no provider on a network distinct from its results' may take a copy; waiting"
            );
            return false;
        }
        state.gave_back.clear();
        state.attempts += 1;
        true
    }

    /// Whether `test` holds for `batch` and every provider eligible for its job, of which
    /// there is at least one.
    fn every_eligible(&self, batch: u64, test: impl Fn(&BatchState, NodeId) -> bool) -> bool {
        let Some(state) = self.batches.get(&batch) else {
            return false;
        };
        let Some(job) = self.jobs.get(&state.job) else {
            return false;
        };
        let mut eligible = self
            .providers
            .keys()
            .filter(|node| self.eligible(**node, job))
            .peekable();
        eligible.peek().is_some() && eligible.all(|node| test(state, *node))
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

    fn finish(&mut self, job: JobId, result: Result<(), JobFailure>) {
        let Some(mut state) = self.jobs.remove(&job) else {
            return;
        };
        self.forget_batches_of(job);
        self.checks.retain(|_, check| check.job != job);
        let result = result.and_then(|()| {
            let outputs = state
                .outputs
                .into_iter()
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| JobFailure::Aborted("a settled job lacks outputs".into()))?;
            state.report.receipts = state
                .accepted
                .into_values()
                .flat_map(|accepted| accepted.receipts)
                .collect();
            Ok(JobOutput {
                outputs,
                report: state.report,
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
                    self.deadlines.remove(&(copy.deadline, id, copy.provider));
                    self.cancel_copy(copy.provider, id);
                }
            }
        }
    }

    fn cancel_copy(&mut self, provider: NodeId, batch: u64) {
        if let Some(state) = self.providers.get_mut(&provider)
            && state.in_flight.remove(&batch)
        {
            self.note_room(provider);
            self.transmits
                .push_back((provider, Transmit::Request(Request::Cancel { batch })));
        }
    }

    /// Puts `node` among the providers with room, or takes it out, as its batches in flight
    /// now say.
    fn note_room(&mut self, node: NodeId) {
        match self.providers.get(&node) {
            Some(provider) if provider.in_flight.len() < provider.window => {
                self.room.insert(node);
            }
            _ => {
                self.room.remove(&node);
            }
        }
    }

    /// Removes `node`'s copy of `batch`; a batch that wants copies goes back to the queue.
    fn drop_copy(&mut self, batch: u64, node: NodeId) {
        let Some(state) = self.batches.get_mut(&batch) else {
            return;
        };
        let Some(at) = state.copies.iter().position(|copy| copy.provider == node) else {
            return;
        };
        let copy = state.copies.remove(at);
        self.deadlines.remove(&(copy.deadline, batch, node));
        // The newest copy given up to it, at the price it was sent under.
        state.lapsed.retain(|lapsed| lapsed.provider != node);
        state.lapsed.push(copy);
        if state.wants() > 0 {
            let job = state.job;
            if let Some(job) = self.jobs.get_mut(&job) {
                job.requeued.push_back(batch);
            }
        }
    }

    fn misbehaved(&mut self, node: NodeId, reason: String) {
        tracing::warn!(%node, %reason, "provider dropped");
        self.drop_provider(node);
        self.events.push_back(Event::Misbehaved { node, reason });
    }

    /// Time passed: late copies are cancelled and their batches handed out again.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Copies past their deadline, by batch and then in the order they were sent.
        let mut late: Vec<(u64, usize, NodeId)> = self
            .deadlines
            .iter()
            .take_while(|(deadline, ..)| *deadline <= now)
            .map(|&(_, batch, node)| {
                let at = self.batches.get(&batch).map_or(0, |state| {
                    state
                        .copies
                        .iter()
                        .position(|copy| copy.provider == node)
                        .unwrap_or(0)
                });
                (batch, at, node)
            })
            .collect();
        late.sort_unstable();
        let late = late.into_iter().map(|(batch, _, node)| (batch, node));
        for (batch, node) in late {
            tracing::debug!(%node, batch, "batch past its deadline");
            self.cancel_copy(node, batch);
            let first = self
                .batches
                .get(&batch)
                .map_or(0, |state| state.range.start);
            self.give_back(
                batch,
                node,
                first,
                SubtaskError::Internal("the batch missed its deadline on every try".into()),
            );
        }
        self.dispatch(now);
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let deadlines = self.deadlines.first().map(|(deadline, ..)| *deadline);
        // A straggler becomes worth a backup when a provider other than its holder has room.
        let backups = self
            .backup_candidates()
            .filter(|(id, _)| {
                let holder = self.batches[id].copies[0].provider;
                self.room.iter().any(|node| *node != holder)
            })
            .map(|(_, ready)| ready);
        deadlines.into_iter().chain(backups).min()
    }

    /// The next thing to send.
    pub fn poll_transmit(&mut self) -> Option<(NodeId, Transmit)> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether any provider could be given anything now: a batch queued for another copy, a
    /// job with subtasks not yet cut, or a straggler due a backup. When there is none, a
    /// dispatch need not ask each provider with room.
    fn work_to_hand_out(&self, now: Instant) -> bool {
        self.jobs.values().any(|job| {
            !job.requeued.is_empty() || (job.cursor < job.total() && job.failure.is_none())
        }) || self.backup_candidates().any(|(_, ready)| ready <= now)
    }

    /// Batches with a single copy and no result, and when each becomes worth a backup.
    fn backup_candidates(&self) -> impl Iterator<Item = (u64, Instant)> + '_ {
        self.batches
            .iter()
            .filter(|_| self.config.backups)
            .filter(|(_, state)| {
                state.copies.len() == 1
                    && state.results.is_empty()
                    && state.quorum == 1
                    && !state.backed_up
            })
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

    /// Hands out work to every provider with room, providers with the longest record of
    /// accepted results first; among equals, in turn by node id from a start that moves one
    /// provider each dispatch.
    fn dispatch(&mut self, now: Instant) {
        let count = self.order.len();
        if count == 0 {
            return;
        }
        self.turn = self.turn.wrapping_add(1);
        let start = self.turn % count;
        // Only providers with room can take work, and none gains room while work is handed
        // out: the others need not be asked, nor any when there is nothing to hand out.
        if self.work_to_hand_out(now) {
            let nodes = self.with_room_in_turn(start);
            // Round robin, one batch per provider per pass, so providers share what is left.
            loop {
                let mut progressed = false;
                for &node in &nodes {
                    if self.room.contains(&node) && self.assign_one(node, now) {
                        progressed = true;
                    }
                }
                if !progressed {
                    break;
                }
            }
        }
        self.check_budgets();
    }

    /// The providers with room, longest record first; among equals in turn by node id, from
    /// the `start`th provider on.
    fn with_room_in_turn(&self, start: usize) -> Vec<NodeId> {
        let count = self.order.len();
        let mut nodes: Vec<(std::cmp::Reverse<u32>, usize, NodeId)> = self
            .room
            .iter()
            .map(|node| {
                let rank = self.order.binary_search(node).unwrap_or(0);
                let trust = trust_level(self.reputation.get(node).streak);
                (
                    std::cmp::Reverse(trust),
                    (rank + count - start) % count,
                    *node,
                )
            })
            .collect();
        nodes.sort_unstable();
        nodes.into_iter().map(|(_, _, node)| node).collect()
    }

    /// What a job has spent or holds against its budget: accepted results, results awaiting
    /// agreement, and the worst case of every copy running.
    fn committed(&self, job_id: JobId) -> u128 {
        let spent = self.jobs.get(&job_id).map_or(0, |job| job.spent_nano);
        self.batches
            .values()
            .filter(|state| state.job == job_id)
            .flat_map(|state| {
                let copies = state.copies.iter().map(|copy| copy.reserved_nano);
                copies.chain(state.results.iter().map(|result| result.nano))
            })
            .fold(spent, u128::saturating_add)
    }

    /// Whether `nano` more fits in the budget of `job_id`.
    fn fits(&self, job_id: JobId, nano: u128) -> bool {
        let budget = self.jobs.get(&job_id).and_then(|job| job.budget_nano);
        budget.is_none_or(|budget| self.committed(job_id).saturating_add(nano) <= budget)
    }

    /// Ends every job whose budget cannot pay for one more subtask on any provider connected
    /// while nothing of it runs; it keeps the outputs it has.
    fn check_budgets(&mut self) {
        let stuck: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(_, job)| job.budget_nano.is_some() && job.failure.is_none())
            .filter(|(_, job)| job.settled < job.total() && job.checks == 0)
            .filter(|(id, _)| {
                // Results awaiting agreement do not count: the copies that would settle them
                // are what cannot be paid for.
                !self.batches.values().any(|state| {
                    state.job == **id && (!state.copies.is_empty() || state.check.is_some())
                })
            })
            .filter(|(id, job)| {
                let committed = self.committed(**id);
                let affordable = |price: u64| {
                    let one = worst_case(&job.spec, price, 1);
                    job.budget_nano
                        .is_none_or(|budget| committed.saturating_add(one) <= budget)
                };
                !self.providers.is_empty()
                    && !self.providers.iter().any(|(node, provider)| {
                        self.eligible(*node, job) && affordable(provider.price_per_gfuel)
                    })
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stuck {
            let Some(job) = self.jobs.get(&id) else {
                continue;
            };
            let mut report = job.report.clone();
            report.receipts = job
                .accepted
                .values()
                .flat_map(|accepted| accepted.receipts.iter().cloned())
                .collect();
            let failure = JobFailure::Budget {
                budget: job.budget_nano.unwrap_or(0) / NANO,
                spent_nano: job.spent_nano,
                outputs: job.outputs.clone(),
                report: Box::new(report),
            };
            tracing::info!(job = id, "the job's budget is spent");
            self.fail(id, failure);
        }
    }

    /// Where `node` is reached, as last seen.
    fn subnet(&self, node: NodeId) -> Subnet {
        self.providers
            .get(&node)
            .map_or(Subnet::Unseen, |provider| provider.subnet)
    }

    /// Whether `node` may run batches of `job`: results that are re-run must come from an
    /// engine equal to the requestor's.
    fn eligible(&self, node: NodeId, job: &JobState) -> bool {
        let theirs = self.providers.get(&node).and_then(|p| p.engine);
        job.verify.engine_fits(self.engine, theirs)
    }

    /// Gives `node` one batch: a requeued one, a new one, or a backup copy.
    fn assign_one(&mut self, node: NodeId, now: Instant) -> bool {
        let job_ids: Vec<JobId> = self.jobs.keys().copied().collect();
        for job in job_ids {
            if let Some(batch) = self.next_batch_for(job, node) {
                self.send_copy(batch, node, now);
                return true;
            }
        }
        let subnet = self.subnet(node);
        let backup = self
            .backup_candidates()
            .filter(|(id, ready)| {
                *ready <= now
                    && !self.batches[id].taken(node, subnet)
                    && self.fits(
                        self.batches[id].job,
                        self.batches[id].copies[0].reserved_nano,
                    )
                    && self
                        .jobs
                        .get(&self.batches[id].job)
                        .is_some_and(|job| self.eligible(node, job))
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

    /// A batch of `job` that wants a copy `node` may take, or a new one.
    fn next_batch_for(&mut self, job_id: JobId, node: NodeId) -> Option<u64> {
        let job = self.jobs.get(&job_id)?;
        let subnet = self.subnet(node);
        // Not even the first copy of a new batch goes where no copy may (see
        // [`Subnet::Unseen`]).
        if !self.eligible(node, job) || !subnet.may_copy(job.verify.copies()) {
            return None;
        }
        // What the budget still holds, and what one subtask may cost at this provider.
        let price = self.providers.get(&node).map_or(0, |p| p.price_per_gfuel);
        let per_item = worst_case(&job.spec, price, 1);
        let room = job
            .budget_nano
            .map(|budget| budget.saturating_sub(self.committed(job_id)));
        let affordable =
            |items: usize| room.is_none_or(|room| per_item.saturating_mul(items as u128) <= room);
        let job = self.jobs.get_mut(&job_id)?;
        let mut position = 0;
        while position < job.requeued.len() {
            let id = job.requeued[position];
            match self.batches.get(&id) {
                Some(state) if state.wants() > 0 => {
                    if !state.taken(node, subnet)
                        && !state.turned_down_by(node)
                        && affordable(state.range.len())
                    {
                        job.requeued.remove(position);
                        return Some(id);
                    }
                    position += 1;
                }
                // Settled, or copied enough since it was queued.
                _ => {
                    job.requeued.remove(position);
                }
            }
        }
        if job.cursor >= job.total() || job.failure.is_some() {
            return None;
        }
        let mut size = batch_size(&self.config, job, self.window.max(1));
        if let Some(room) = room
            && per_item > 0
        {
            size = size.min(usize::try_from(room / per_item).unwrap_or(usize::MAX));
            if size == 0 {
                return None;
            }
        }
        let range = job.cursor..job.cursor + size;
        job.cursor = range.end;
        let id = self.next_batch;
        self.next_batch += 1;
        self.batches
            .insert(id, BatchState::new(job_id, range, job.verify.copies()));
        Some(id)
    }

    fn send_copy(&mut self, batch: u64, node: NodeId, now: Instant) {
        let Some(state) = self.batches.get_mut(&batch) else {
            return;
        };
        let Some(job) = self.jobs.get_mut(&state.job) else {
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
        let (price_per_gfuel, subnet) = self
            .providers
            .get(&node)
            .map_or((0, Subnet::Unseen), |p| (p.price_per_gfuel, p.subnet));
        let reserved_nano = worst_case(&job.spec, price_per_gfuel, items.len());
        state.copies.push(Copy {
            provider: node,
            subnet,
            price_per_gfuel,
            sent: now,
            deadline,
            reserved_nano,
        });
        self.deadlines.insert((deadline, batch, node));
        job.providers.insert(node);
        if state.wants() > 0 {
            // More copies wanted: offer it to the next provider first.
            job.requeued.push_front(batch);
        }
        if let Some(provider) = self.providers.get_mut(&node) {
            provider.in_flight.insert(batch);
        }
        let request = Request::Run(Batch {
            id: batch,
            job: job.spec.clone(),
            items,
        });
        self.transmits.push_back((node, Transmit::Request(request)));
        self.note_room(node);
    }
}

/// Compares claimed outputs with a re-run's.
fn compare<'a>(
    batch: &Batch,
    claimed: impl IntoIterator<Item = &'a Output>,
    ran: &Result<Vec<Output>, Outcome>,
) -> Verdict {
    match ran {
        Ok(outputs) => {
            for ((item, claim), actual) in batch.items.iter().zip(claimed).zip(outputs) {
                if claim.bytes != actual.bytes {
                    return Verdict::Wrong(format!(
                        "subtask {}: its output differs from the requestor's re-run",
                        item.index
                    ));
                }
                if claim.fuel != actual.fuel {
                    return Verdict::Wrong(format!(
                        "subtask {}: it claimed {} fuel, the requestor's re-run used {}",
                        item.index, claim.fuel, actual.fuel
                    ));
                }
            }
            Verdict::Right
        }
        Err(Outcome::Failed { index, error }) if error.is_deterministic() => {
            Verdict::Wrong(format!(
                "subtask {index}: it returned an output, but the requestor's re-run fails: {error}"
            ))
        }
        Err(outcome) => Verdict::Unknown(format!("{outcome:?}")),
    }
}

enum Verdict {
    Right,
    Wrong(String),
    /// The re-run itself could not finish (the requestor's side).
    Unknown(String),
}

/// The most `items` subtasks of a job may cost at `price_per_gfuel`: each burning its whole
/// fuel limit, in billionths of the smallest currency unit.
fn worst_case(spec: &JobSpec, price_per_gfuel: u64, items: usize) -> u128 {
    u128::from(spec.limits.fuel)
        .saturating_mul(u128::from(price_per_gfuel))
        .saturating_mul(items as u128)
}

/// A provider's standing for the dispatch order: doubles of accepted results.
fn trust_level(streak: u64) -> u32 {
    64 - streak.leading_zeros()
}

/// A uniform number in [0, 1) from a splitmix64 state.
fn next_unit(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
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
