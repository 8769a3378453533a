//! The requestor node: dials providers, keeps them matched and scheduled, runs jobs.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::blobs::{Blob, send_blob};
use super::exec::{Executor, input_bytes, run_batch};
use super::{Bootstrap, Handshake, NodeError, handshake, log_paths};
use crate::discovery::{Announcement, Discovery, DiscoveryConfig, DiscoveryStats, Heard};
use crate::identity::{NodeId, NodeKey};
use crate::market::Demand;
use crate::net::{Connection, Endpoint, NetConfig, PathKind};
use crate::payment::{PaymentHook, Priced};
use crate::proto::message::{BlobId, Hello, Input, JobSpec, Offer, Reply, Request};
use crate::proto::requestor::{
    Check, CheckKind, CheckResult, Event, JobFailure, JobId, JobOutput, JobTerms, ProviderSlot,
    RequestorSession, Route, SchedulerConfig, Subnet, Transmit,
};
use crate::reputation::{Record, ReputationStore, StoreError};
use crate::sandbox::{EngineFingerprint, Limits, Sandbox};
use crate::verify::{CheckFn, Verify};

/// A progress callback: (subtasks settled, total).
pub type ProgressFn = Arc<dyn Fn(usize, usize) + Send + Sync>;

/// Settings of a [`Requestor`].
#[derive(Clone)]
pub struct RequestorConfig {
    /// The requestor's own endpoint (it dials out; port 0 is fine), its relays, port mapping.
    pub net: NetConfig,
    /// Scheduling.
    pub scheduler: SchedulerConfig,
    /// What providers must offer to be used.
    pub demand: Demand,
    /// How often lost bootstrap nodes are dialed again.
    pub redial: Duration,
    /// Providers connected (or being dialed) at most: a provider announced past it is not
    /// dialed (until it announces itself again and there is room). Bootstrap nodes are
    /// always dialed.
    pub max_providers: usize,
    /// Dials of announced providers in flight at most: a flood of announcements (fresh keys
    /// cost nothing, and each names the addresses to dial) makes this many dials at a time.
    pub max_dials: usize,
    /// How announcements heard on the gossip topic are taken in.
    pub discovery: DiscoveryConfig,
    /// The requestor's own sandbox, to re-run results (spot checks, tie-breaks, confirming
    /// failures). Jobs verified other than [`Verify::None`] need it.
    pub checker: Option<Arc<Sandbox>>,
    /// Threads that run checks.
    pub check_threads: usize,
    /// Database of provider records, kept across runs; memory only when `None`.
    pub reputation: Option<PathBuf>,
    /// Sees the priced receipts of each finished job's accepted results, on the requestor's
    /// task before the job's result is handed back (keep it quick).
    pub payments: Option<Arc<dyn PaymentHook>>,
}

impl std::fmt::Debug for RequestorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestorConfig")
            .field("net", &self.net)
            .field("scheduler", &self.scheduler)
            .field("demand", &self.demand)
            .field("reputation", &self.reputation)
            .field("payments", &self.payments.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for RequestorConfig {
    fn default() -> Self {
        Self {
            net: NetConfig::direct(SocketAddr::from(([0, 0, 0, 0], 0))),
            scheduler: SchedulerConfig::default(),
            demand: Demand::for_limits(&Limits::default()),
            redial: Duration::from_secs(2),
            max_providers: 256,
            max_dials: 16,
            discovery: DiscoveryConfig::default(),
            checker: None,
            check_threads: 1,
            reputation: None,
            payments: None,
        }
    }
}

/// A job to run: its spec, the blobs it refers to, and its inputs.
pub struct JobRequest {
    /// Module, task, context, seed, limits.
    pub spec: JobSpec,
    /// Every blob the job refers to (module, context, large inputs).
    pub blobs: Vec<Blob>,
    /// Inputs in order.
    pub inputs: Vec<Input>,
    /// How results are verified.
    pub verify: Verify,
    /// Most the job may cost, in the smallest currency unit (see [`JobTerms::budget`]).
    pub budget: Option<u128>,
    /// Called as subtasks settle.
    pub progress: Option<ProgressFn>,
}

impl std::fmt::Debug for JobRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobRequest")
            .field("spec", &self.spec)
            .field("blobs", &self.blobs.len())
            .field("inputs", &self.inputs.len())
            .field("verify", &self.verify)
            .finish_non_exhaustive()
    }
}

/// A provider the requestor schedules on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderInfo {
    /// Its node id.
    pub node: NodeId,
    /// How its connection's packets travelled when it was connected: direct or relayed.
    pub path: PathKind,
    /// The flavor bought.
    pub offer: Offer,
    /// Its sandbox engine.
    pub engine: Option<EngineFingerprint>,
}

/// Blob traffic of a requestor since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransferStats {
    /// Blobs sent.
    pub blobs_sent: u64,
    /// Bytes of blobs sent.
    pub blob_bytes_sent: u64,
}

#[derive(Default)]
struct Stats {
    blobs_sent: AtomicU64,
    blob_bytes_sent: AtomicU64,
}

type JobResult = Result<JobOutput, JobFailure>;

enum Command {
    Join(Bootstrap),
    Submit {
        ticket: u64,
        request: JobRequest,
        done: oneshot::Sender<JobResult>,
    },
    Cancel(u64),
    Up {
        connection: Connection,
        hello: Hello,
        writer: mpsc::UnboundedSender<Request>,
    },
    /// A provider's reply, with its place among the replies read ahead of handling.
    Reply(NodeId, Reply, tokio::sync::OwnedSemaphorePermit),
    Checked(u64, CheckResult),
    Forgive(NodeId),
    /// A provider's connection took another path.
    Path(NodeId, PathKind),
    Records(oneshot::Sender<Vec<(NodeId, Record)>>),
    /// A dial failed (`connection` is `None`) or a connection ended.
    Down {
        node: NodeId,
        connection: Option<usize>,
        reason: String,
    },
}

/// A requestor: runs jobs on the providers it finds.
///
/// Start it inside a tokio runtime. It is a handle: jobs are run by a task it spawned, which
/// ends when the last handle and job are dropped.
pub struct Requestor {
    commands: mpsc::UnboundedSender<Command>,
    discovery: Arc<Discovery>,
    providers: watch::Receiver<Vec<ProviderInfo>>,
    stats: Arc<Stats>,
    tickets: AtomicU64,
    node: NodeId,
    endpoint: Arc<Endpoint>,
}

impl std::fmt::Debug for Requestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Requestor")
            .field("node", &self.node)
            .field("providers", &self.providers.borrow().len())
            .finish_non_exhaustive()
    }
}

impl Requestor {
    /// Binds the requestor's endpoint, loads its provider records and starts its task.
    pub async fn start(key: &NodeKey, config: RequestorConfig) -> Result<Self, NodeError> {
        let endpoint = Arc::new(Endpoint::bind(key, &config.net).await?);
        let discovery =
            Arc::new(Discovery::join(&endpoint, Vec::new(), config.discovery.clone()).await?);
        let (commands, inbox) = mpsc::unbounded_channel();
        let (providers_tx, providers) = watch::channel(Vec::new());
        let stats = Arc::new(Stats::default());
        let store = config
            .reputation
            .as_deref()
            .map(ReputationStore::open)
            .transpose()
            .map_err(store_error)?;
        let reputation = match &store {
            Some(store) => store.load().map_err(store_error)?,
            None => Default::default(),
        };
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).map_err(|error| NodeError::Io {
            what: "cannot draw randomness for spot checks".into(),
            message: error.to_string(),
        })?;
        let mut session = RequestorSession::new(config.scheduler.clone())
            .with_reputation(reputation)
            .with_seed(u64::from_le_bytes(seed));
        let checks = match &config.checker {
            Some(sandbox) => {
                session = session.with_engine(sandbox.fingerprint());
                let executor = Executor::start("golem-check", config.check_threads)
                    .map_err(|error| NodeError::io("cannot start the check threads", &error))?;
                Some(executor)
            }
            None => None,
        };
        let owner = Owner {
            session,
            checks,
            store,
            saved: Instant::now(),
            endpoint: Arc::clone(&endpoint),
            node: key.node_id(),
            conns: HashMap::new(),
            dialing: HashSet::new(),
            discovery: Arc::clone(&discovery),
            bootstraps: Vec::new(),
            jobs: HashMap::new(),
            tickets: HashMap::new(),
            blobs: HashMap::new(),
            commands: commands.downgrade(),
            providers: providers_tx,
            stats: Arc::clone(&stats),
            config,
        };
        tokio::spawn(owner.run(inbox));
        // Gossip neighbours dial requestors too (the endpoint hands those connections to
        // gossip); anyone asking a requestor for golem's service is told it has none.
        let refusing = Arc::clone(&endpoint);
        tokio::spawn(async move {
            while let Some(incoming) = refusing.accept().await {
                if let Ok(connection) = incoming {
                    connection.close("a requestor serves nothing");
                }
            }
        });
        Ok(Self {
            commands,
            discovery,
            providers,
            stats,
            tickets: AtomicU64::new(0),
            node: key.node_id(),
            endpoint,
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node
    }

    /// Dials `target` and joins the gossip topic through it; schedules on it and on every
    /// provider announced there whose offers match the demand.
    pub fn join(&self, target: Bootstrap) {
        let _ = self.commands.send(Command::Join(target));
    }

    /// Runs a job. The returned future yields the outputs in input order; dropping it cancels
    /// the job.
    pub fn submit(&self, request: JobRequest) -> RemoteJob {
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        let (done, receiver) = oneshot::channel();
        let _ = self.commands.send(Command::Submit {
            ticket,
            request,
            done,
        });
        RemoteJob {
            ticket,
            receiver,
            commands: self.commands.clone(),
            finished: false,
        }
    }

    /// The providers scheduled on now.
    pub fn providers(&self) -> Vec<ProviderInfo> {
        self.providers.borrow().clone()
    }

    /// Waits until at least `count` providers are scheduled on, or `timeout` passes; returns
    /// how many there are.
    ///
    /// The future needs the tokio runtime the requestor was started in.
    pub fn wait_for_providers(
        &self,
        count: usize,
        timeout: Duration,
    ) -> impl Future<Output = usize> + Send + 'static {
        let mut providers = self.providers.clone();
        async move {
            let enough = providers.wait_for(|list| list.len() >= count);
            let _ = tokio::time::timeout(timeout, enough).await;
            providers.borrow().len()
        }
    }

    /// Lifts the ban on a provider caught cheating; its results are checked from the initial
    /// rate again.
    pub fn forgive(&self, node: NodeId) {
        let _ = self.commands.send(Command::Forgive(node));
    }

    /// Every provider record the requestor holds. The future needs the tokio runtime the
    /// requestor was started in.
    pub fn records(&self) -> impl Future<Output = Vec<(NodeId, Record)>> + Send + 'static {
        let (sender, receiver) = oneshot::channel();
        let _ = self.commands.send(Command::Records(sender));
        async move { receiver.await.unwrap_or_default() }
    }

    /// The providers heard of on the gossip topic and believed (connected or not).
    pub fn announced(&self) -> Vec<Announcement> {
        self.discovery.providers()
    }

    /// What the gossip topic brought so far: announcements believed, refused, dropped.
    pub fn discovery_stats(&self) -> DiscoveryStats {
        self.discovery.stats()
    }

    /// Blob traffic so far.
    pub fn transfer_stats(&self) -> TransferStats {
        TransferStats {
            blobs_sent: self.stats.blobs_sent.load(Ordering::Relaxed),
            blob_bytes_sent: self.stats.blob_bytes_sent.load(Ordering::Relaxed),
        }
    }

    /// Closes every connection; jobs still running fail.
    pub fn shutdown(&self) {
        self.endpoint.close();
    }
}

impl Drop for Requestor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A job in flight; a future of its outputs. Dropping it cancels the job.
#[must_use = "a job runs only while its handle is alive; await it"]
pub struct RemoteJob {
    ticket: u64,
    receiver: oneshot::Receiver<JobResult>,
    commands: mpsc::UnboundedSender<Command>,
    finished: bool,
}

impl std::fmt::Debug for RemoteJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteJob")
            .field("ticket", &self.ticket)
            .finish_non_exhaustive()
    }
}

impl Future for RemoteJob {
    type Output = JobResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<JobResult> {
        let result = std::task::ready!(Pin::new(&mut self.receiver).poll(cx));
        self.finished = true;
        Poll::Ready(
            result.unwrap_or_else(|_| Err(JobFailure::Aborted("the requestor stopped".into()))),
        )
    }
}

impl Drop for RemoteJob {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.commands.send(Command::Cancel(self.ticket));
        }
    }
}

struct Conn {
    connection: Connection,
    writer: mpsc::UnboundedSender<Request>,
    info: Option<ProviderInfo>,
}

struct JobEntry {
    ticket: u64,
    done: oneshot::Sender<JobResult>,
    progress: Option<ProgressFn>,
    blobs: Vec<BlobId>,
    custom: Option<Arc<CheckFn>>,
}

struct Owner {
    session: RequestorSession,
    /// Runs checks; present when the requestor has a sandbox.
    checks: Option<Executor<()>>,
    store: Option<ReputationStore>,
    /// When provider records were last saved.
    saved: Instant,
    endpoint: Arc<Endpoint>,
    node: NodeId,
    conns: HashMap<NodeId, Conn>,
    /// Nodes being dialed.
    dialing: HashSet<NodeId>,
    /// Its part in the gossip topic.
    discovery: Arc<Discovery>,
    bootstraps: Vec<Bootstrap>,
    jobs: HashMap<JobId, JobEntry>,
    tickets: HashMap<u64, JobId>,
    /// Blobs of live jobs, with the number of jobs using each.
    blobs: HashMap<BlobId, (Arc<[u8]>, usize)>,
    /// For dial tasks; weak, so the owner ends when every handle is gone.
    commands: mpsc::WeakUnboundedSender<Command>,
    providers: watch::Sender<Vec<ProviderInfo>>,
    stats: Arc<Stats>,
    config: RequestorConfig,
}

impl Owner {
    async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<Command>) {
        let mut redial = tokio::time::interval(self.config.redial);
        redial.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heard = self.discovery.subscribe();
        loop {
            let deadline = self.session.poll_timeout();
            tokio::select! {
                command = inbox.recv() => match command {
                    Some(command) => self.handle(command),
                    None => break,
                },
                () = sleep_until(deadline) => self.session.handle_timeout(Instant::now()),
                _ = redial.tick() => self.redial(),
                news = heard.recv() => match news {
                    Ok(Heard::Announced(announcement)) => self.announced(&announcement),
                    Ok(Heard::Expired(_)) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        for announcement in self.discovery.providers() {
                            self.announced(&announcement);
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        heard = self.discovery.subscribe();
                    }
                },
            }
            self.flush();
        }
        self.save_records();
        self.endpoint.close();
    }

    /// Saves changed provider records: at once when `urgent`, else at most once a second.
    fn save_records_soon(&mut self, urgent: bool) {
        if self.session.reputation().is_dirty()
            && (urgent || self.saved.elapsed() >= Duration::from_secs(1))
        {
            self.save_records();
        }
    }

    fn save_records(&mut self) {
        self.saved = Instant::now();
        let dirty = self.session.reputation_mut().take_dirty();
        if let Some(store) = &self.store
            && let Err(error) = store.save(&dirty)
        {
            tracing::warn!(%error, "provider records not saved");
        }
    }

    fn handle(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::Join(target) => {
                self.endpoint.remember(target.node, [target.addr], None);
                if !self.bootstraps.contains(&target) {
                    self.bootstraps.push(target);
                    let discovery = Arc::clone(&self.discovery);
                    tokio::spawn(async move { discovery.add_bootstrap(target.node).await });
                }
                self.dial(target.node, vec![target.addr]);
            }
            Command::Submit {
                ticket,
                mut request,
                done,
            } => {
                if request.verify.reruns() && self.checks.is_none() {
                    let _ = done.send(Err(JobFailure::Aborted(format!(
                        "verification {:?} re-runs results, and this requestor has no sandbox",
                        request.verify
                    ))));
                    return;
                }
                // A fresh nonce: this run is a job of its own in receipts and payments.
                let _ = getrandom::fill(&mut request.spec.nonce);
                let mut ids = Vec::with_capacity(request.blobs.len());
                for blob in request.blobs {
                    let id = blob.id();
                    let bytes = Arc::clone(blob.bytes());
                    self.blobs.entry(id).or_insert((bytes, 0)).1 += 1;
                    ids.push(id);
                }
                let custom = match &request.verify {
                    Verify::Custom(check) => Some(Arc::clone(check)),
                    _ => None,
                };
                let terms = JobTerms {
                    verify: request.verify,
                    budget: request.budget,
                };
                let job = self
                    .session
                    .submit(request.spec, request.inputs, terms, now);
                self.tickets.insert(ticket, job);
                self.jobs.insert(
                    job,
                    JobEntry {
                        ticket,
                        done,
                        progress: request.progress,
                        blobs: ids,
                        custom,
                    },
                );
            }
            Command::Cancel(ticket) => {
                if let Some(job) = self.tickets.remove(&ticket) {
                    self.session.cancel(job, now);
                    if let Some(entry) = self.jobs.remove(&job) {
                        self.release(&entry.blobs);
                    }
                }
            }
            Command::Up {
                connection,
                hello,
                writer,
            } => self.connected(connection, hello, writer, now),
            Command::Reply(node, reply, _room) => self.session.handle_reply(node, reply, now),
            Command::Checked(id, result) => self.session.handle_check(id, result, now),
            Command::Path(node, path) => {
                self.session.set_subnet(node, subnet(&path), now);
            }
            Command::Forgive(node) => {
                self.session.reputation_mut().forgive(node);
                self.save_records();
            }
            Command::Records(reply) => {
                let mut records: Vec<(NodeId, Record)> = self
                    .session
                    .reputation()
                    .iter()
                    .map(|(node, record)| (*node, *record))
                    .collect();
                records.sort_by_key(|(node, _)| *node);
                let _ = reply.send(records);
            }
            Command::Down {
                node,
                connection,
                reason,
            } => match connection {
                None => {
                    self.dialing.remove(&node);
                    tracing::info!(%node, %reason, "cannot reach node");
                }
                Some(id) => {
                    let same = self
                        .conns
                        .get(&node)
                        .is_some_and(|conn| conn.connection.quic().stable_id() == id);
                    if same {
                        self.disconnect(node, &reason, now);
                    }
                }
            },
        }
    }

    fn connected(
        &mut self,
        connection: Connection,
        hello: Hello,
        writer: mpsc::UnboundedSender<Request>,
        now: Instant,
    ) {
        let node = connection.peer();
        self.dialing.remove(&node);
        if self.conns.contains_key(&node) || node == self.node {
            connection.close("already connected");
            return;
        }
        let info = self
            .config
            .demand
            .choose(&hello.offers)
            .map(|offer| ProviderInfo {
                node,
                path: connection.path(),
                offer: offer.clone(),
                engine: hello.engine,
            });
        let slot = |info: &ProviderInfo| ProviderSlot {
            concurrency: info.offer.concurrency,
            engine: info.engine,
            price_per_gfuel: info.offer.price_per_gfuel,
            payee: hello.payee,
            subnet: subnet(&connection.path()),
        };
        match &info {
            Some(info) if !self.session.add_provider(node, slot(info), now) => {
                tracing::info!(%node, "refused a banned provider");
                connection.close("banned");
                return;
            }
            Some(info) => {
                tracing::info!(%node, path = %info.path, flavor = %info.offer.flavor, "provider joined");
            }
            None if hello.offers.is_empty() => {
                tracing::debug!(%node, "connected to a node that sells nothing")
            }
            None => tracing::info!(%node, "no offer of this provider matches the demand"),
        }
        self.conns.insert(
            node,
            Conn {
                connection,
                writer,
                info,
            },
        );
        self.publish();
    }

    fn disconnect(&mut self, node: NodeId, reason: &str, now: Instant) {
        if let Some(conn) = self.conns.remove(&node) {
            conn.connection.close(reason);
            if conn.info.is_some() {
                tracing::info!(%node, %reason, "provider left");
                self.session.remove_provider(node, now);
            }
            self.publish();
        }
    }

    fn publish(&self) {
        let mut list: Vec<ProviderInfo> = self
            .conns
            .values()
            .filter_map(|conn| conn.info.clone())
            .collect();
        list.sort_by_key(|info| info.node);
        self.providers.send_replace(list);
    }

    fn release(&mut self, ids: &[BlobId]) {
        for id in ids {
            if let Some(entry) = self.blobs.get_mut(id) {
                entry.1 -= 1;
                if entry.1 == 0 {
                    self.blobs.remove(id);
                }
            }
        }
    }

    /// Dials the bootstrap nodes that are not connected.
    fn redial(&mut self) {
        for target in self.bootstraps.clone() {
            let banned = self.session.reputation().is_banned(&target.node);
            if !banned && !self.conns.contains_key(&target.node) {
                self.dial(target.node, vec![target.addr]);
            }
        }
    }

    /// Dials a provider heard of on the gossip topic, unless it is known already, banned, or
    /// sells nothing the demand takes. Its addresses were remembered by discovery.
    fn announced(&mut self, announcement: &Announcement) {
        let node = announcement.node;
        if node == self.node || self.conns.contains_key(&node) || self.dialing.contains(&node) {
            return;
        }
        if self.session.reputation().is_banned(&node) {
            tracing::debug!(%node, "a banned provider announced itself; not dialed");
            return;
        }
        if self.config.demand.choose(&announcement.offers).is_none() {
            tracing::debug!(%node, "no offer of an announced provider matches the demand");
            return;
        }
        let held = self.conns.len() + self.dialing.len();
        if held >= self.config.max_providers || self.dialing.len() >= self.config.max_dials {
            tracing::debug!(%node, held, "an announced provider is not dialed: at the cap");
            return;
        }
        self.dial(node, Vec::new());
    }

    fn dial(&mut self, node: NodeId, addrs: Vec<SocketAddr>) {
        if node == self.node || !self.dialing.insert(node) {
            return;
        }
        let Some(commands) = self.commands.upgrade() else {
            return;
        };
        tokio::spawn(dial(Arc::clone(&self.endpoint), node, addrs, commands));
    }

    /// Carries out what the session asks for and reports what it says.
    fn flush(&mut self) {
        while let Some((node, transmit)) = self.session.poll_transmit() {
            let Some(conn) = self.conns.get(&node) else {
                continue;
            };
            match transmit {
                Transmit::Request(request) => {
                    let _ = conn.writer.send(request);
                }
                Transmit::Blob(id) => {
                    let Some((bytes, _)) = self.blobs.get(&id) else {
                        continue;
                    };
                    let bytes = Arc::clone(bytes);
                    let connection = conn.connection.quic().clone();
                    let stats = Arc::clone(&self.stats);
                    tokio::spawn(async move {
                        match send_blob(&connection, id, &bytes).await {
                            Ok(sent) => {
                                stats.blobs_sent.fetch_add(1, Ordering::Relaxed);
                                stats.blob_bytes_sent.fetch_add(sent, Ordering::Relaxed);
                            }
                            Err(error) => tracing::debug!(%id, %error, "blob not sent"),
                        }
                    });
                }
            }
        }
        while let Some(event) = self.session.poll_event() {
            match event {
                Event::Progress {
                    job,
                    settled,
                    total,
                } => {
                    if let Some(progress) = self.jobs.get(&job).and_then(|e| e.progress.as_ref()) {
                        // A panicking callback must not take the requestor down.
                        let call = std::panic::AssertUnwindSafe(|| progress(settled, total));
                        let _ = std::panic::catch_unwind(call);
                    }
                }
                Event::Finished { job, mut result } => {
                    let report = match &mut result {
                        Ok(done) => Some(&mut done.report),
                        Err(JobFailure::Budget { report, .. }) => Some(&mut **report),
                        Err(_) => None,
                    };
                    if let Some(report) = report {
                        report.routes = self.routes(&report.receipts);
                    }
                    let report = match &result {
                        Ok(done) => Some(&done.report),
                        Err(JobFailure::Budget { report, .. }) => Some(&**report),
                        Err(_) => None,
                    };
                    if let (Some(report), Some(hook)) = (report, &self.config.payments)
                        && let Err(error) = hook.accepted(&report.receipts)
                    {
                        tracing::error!(job, %error, "accepted receipts not recorded");
                    }
                    if let Some(entry) = self.jobs.remove(&job) {
                        self.tickets.remove(&entry.ticket);
                        self.release(&entry.blobs);
                        let _ = entry.done.send(result);
                    }
                    self.save_records_soon(true);
                }
                Event::Misbehaved { node, reason } => self.close(node, &reason),
                Event::Caught(caught) => {
                    self.close(caught.node, &caught.reason);
                    self.save_records_soon(true);
                }
                Event::Unpaid { node, owed, limit } => {
                    tracing::warn!(
                        %node, owed, limit,
                        "the provider takes no more work until it is paid"
                    );
                    self.close(node, "unpaid");
                }
            }
        }
        while let Some(check) = self.session.poll_check() {
            self.run_check(check);
        }
        self.save_records_soon(false);
    }

    /// The path to each provider that signed one of `receipts`, as it is now.
    fn routes(&self, receipts: &[Priced]) -> Vec<Route> {
        let providers: BTreeSet<NodeId> = receipts.iter().map(|r| r.receipt.provider).collect();
        providers
            .into_iter()
            .filter_map(|node| {
                let path = self.conns.get(&node)?.connection.path();
                let (relayed, via) = match path {
                    PathKind::Direct(addr) => (false, addr.to_string()),
                    PathKind::Relayed(url) => (true, url.to_string()),
                    PathKind::None => return None,
                };
                Some(Route { node, relayed, via })
            })
            .collect()
    }

    fn close(&mut self, node: NodeId, reason: &str) {
        if let Some(conn) = self.conns.remove(&node) {
            conn.connection.close(reason);
            self.publish();
        }
    }

    /// Runs a check on the check threads; its result comes back as a command.
    fn run_check(&mut self, check: Check) {
        let id = check.id;
        let Some(commands) = self.commands.upgrade() else {
            return;
        };
        let reply = commands.clone();
        let blobs: HashMap<BlobId, Arc<[u8]>> = check
            .batch
            .blobs()
            .filter_map(|blob| {
                self.blobs
                    .get(&blob)
                    .map(|(bytes, _)| (blob, Arc::clone(bytes)))
            })
            .collect();
        let sandbox = self.config.checker.clone();
        let custom = self
            .jobs
            .get(&check.job)
            .and_then(|entry| entry.custom.clone());
        let work = move || {
            let lookup = |blob: &BlobId| blobs.get(blob).cloned();
            let result = match (check.kind, sandbox, custom) {
                (CheckKind::Rerun, Some(sandbox), _) => CheckResult::Ran(run_batch(
                    &sandbox,
                    lookup,
                    &check.batch,
                    &Arc::new(AtomicBool::new(false)),
                )),
                (CheckKind::Custom, _, Some(custom)) => run_custom(&*custom, &check, lookup),
                _ => CheckResult::Failed("the requestor cannot run this check".into()),
            };
            let _ = commands.send(Command::Checked(id, result));
        };
        let refused = match &self.checks {
            Some(executor) => executor.submit((), work).is_err(),
            None => true,
        };
        if refused {
            // Answered like any check, through the inbox, so what follows is flushed.
            let result = CheckResult::Failed("the check threads stopped".into());
            let _ = reply.send(Command::Checked(id, result));
        }
    }
}

/// Passes every item of a custom check to the user's function; a panic in it is reported as
/// the check failing to run, never as the provider's fault.
fn run_custom(
    custom: &CheckFn,
    check: &Check,
    lookup: impl Fn(&BlobId) -> Option<Arc<[u8]>>,
) -> CheckResult {
    for (item, claimed) in check.batch.items.iter().zip(&check.claimed) {
        let Some(input) = input_bytes(&item.input, &lookup) else {
            return CheckResult::Failed(format!(
                "the input of subtask {} is not held by the requestor",
                item.index
            ));
        };
        let call = std::panic::AssertUnwindSafe(|| custom(item.index, &input, &claimed.bytes));
        match std::panic::catch_unwind(call) {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => return CheckResult::Custom(Err((item.index, reason))),
            Err(_) => {
                return CheckResult::Failed(format!(
                    "the job's check panicked on subtask {}",
                    item.index
                ));
            }
        }
    }
    CheckResult::Custom(Ok(()))
}

fn store_error(error: StoreError) -> NodeError {
    NodeError::Io {
        what: format!(
            "cannot use the reputation database {}",
            error.path.display()
        ),
        message: error.message,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Replies of one provider read ahead of the requestor's handling of them.
const REPLIES_AHEAD: usize = 16;

/// Dials `node`, exchanges hellos, then relays the connection's replies to the owner until
/// it closes.
async fn dial(
    endpoint: Arc<Endpoint>,
    node: NodeId,
    addrs: Vec<SocketAddr>,
    commands: mpsc::UnboundedSender<Command>,
) {
    let ours = Hello::requestor();
    let Handshake {
        connection,
        hello,
        mut requests,
        mut replies,
    } = match handshake(&endpoint, node, addrs, ours).await {
        Ok(parts) => parts,
        Err(reason) => {
            let down = Command::Down {
                node,
                connection: None,
                reason,
            };
            let _ = commands.send(down);
            return;
        }
    };
    let id = connection.quic().stable_id();
    let paths = {
        let commands = commands.clone();
        let changed = move |path: &PathKind| {
            let _ = commands.send(Command::Path(node, path.clone()));
        };
        tokio::spawn(log_paths(connection.clone(), changed))
    };
    let (writer, mut outbox) = mpsc::unbounded_channel::<Request>();
    let up = Command::Up {
        connection,
        hello,
        writer,
    };
    if commands.send(up).is_err() {
        return;
    }
    let write = async {
        while let Some(request) = outbox.recv().await {
            requests.send(&request).await?;
        }
        Ok::<(), crate::net::StreamError>(())
    };
    // Replies of this provider not yet handled: past them the provider waits (QUIC flow
    // control), so a provider cannot grow the requestor's inbox without end.
    let unhandled = Arc::new(tokio::sync::Semaphore::new(REPLIES_AHEAD));
    let read = async {
        loop {
            let Ok(room) = Arc::clone(&unhandled).acquire_owned().await else {
                return "the requestor stopped".to_owned();
            };
            match replies.recv::<Reply>().await {
                Ok(Some(reply)) => {
                    if commands.send(Command::Reply(node, reply, room)).is_err() {
                        return "the requestor stopped".to_owned();
                    }
                }
                Ok(None) => return "the provider ended the control stream".to_owned(),
                Err(error) => return error.to_string(),
            }
        }
    };
    let reason = tokio::select! {
        result = write => match result {
            Ok(()) => "the requestor dropped the connection".to_owned(),
            Err(error) => error.to_string(),
        },
        reason = read => reason,
    };
    paths.abort();
    let _ = commands.send(Command::Down {
        node,
        connection: Some(id),
        reason,
    });
}

/// The subnet a provider reached over `path` is on.
fn subnet(path: &PathKind) -> Subnet {
    Subnet::of(match path {
        PathKind::Direct(addr) => Some(*addr),
        PathKind::Relayed(_) | PathKind::None => None,
    })
}
