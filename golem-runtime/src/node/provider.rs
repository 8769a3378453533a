//! The provider node: a QUIC endpoint serving requestors with a shared sandbox.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use iroh::endpoint::RecvStream;
use tokio::sync::{mpsc, watch};

use super::blobs::{BlobError, BlobStore, receive_blob};
use super::exec::{Executor, run_batch};
use super::room::FairRoom;
use super::{Bootstrap, NodeError, log_paths};
use crate::discovery::{
    ANNOUNCE_EVERY, ANNOUNCEMENT_TTL, Announcement, Discovery, DiscoveryConfig, MAX_ADDRESSES,
    unix_now,
};
use crate::identity::{NodeId, NodeKey};
use crate::market::Demand;
use crate::net::{Connection, Endpoint, FramedRecv, FramedSend, NetConfig};
use crate::payment::{Books, Credit, NANO, Payee};
use crate::proto::PROTOCOL_VERSION;
use crate::proto::message::{
    Batch, BlobId, Hello, MAX_REPLY_FRAME, MAX_REQUEST_FRAME, Offer, Outcome, Output, Reply,
    Request,
};
use crate::proto::provider::{BatchQuota, ProviderSession, ProviderSessionConfig, QuotaHold, Work};
use crate::sandbox::Sandbox;

/// Settings of a [`ProviderNode`].
#[derive(Debug, Clone)]
pub struct ProviderNodeConfig {
    /// Where the endpoint binds, its relays, port mapping.
    pub net: NetConfig,
    /// Address to tell peers, when it differs from the listening one (behind NAT, or when
    /// listening on 0.0.0.0).
    pub advertise: Option<SocketAddr>,
    /// The flavors sold. A batch runs when its limits fit one of them.
    pub offers: Vec<Offer>,
    /// Nodes to join the gossip topic through; asked again while the provider has no gossip
    /// neighbour.
    pub bootstrap: Vec<Bootstrap>,
    /// Directory that keeps received blobs across restarts; memory only when `None`.
    pub cache_dir: Option<PathBuf>,
    /// Worker threads; by default the largest concurrency among the offers.
    pub threads: Option<usize>,
    /// What peers may make this provider hold: connections, batches, blobs.
    pub limits: ProviderLimits,
    /// Where requestors should pay this provider; told in its hello.
    pub payee: Option<Payee>,
    /// The provider's own books: each batch it returns is promised to them at its price, and
    /// the payments that arrive are entered by whatever watches the payment channel
    /// ([`Books::arrived`]).
    pub books: Option<Arc<Books>>,
    /// With books, how much work is given before it is paid: past it a requestor's batches are
    /// answered with [`Outcome::Unpaid`] until payments arrive. `None`: no limit.
    pub credit: Option<Credit>,
}

impl ProviderNodeConfig {
    /// A provider on 127.0.0.1 (a free port) offering one free flavor of `concurrency` slots
    /// with the sandbox's memory cap and no other cap: the requestor is its own provider.
    pub fn local(sandbox: &Sandbox, concurrency: u32) -> Self {
        Self {
            net: NetConfig::loopback(),
            advertise: None,
            offers: vec![Offer {
                flavor: "default".into(),
                memory_bytes: sandbox.config().max_memory_bytes as u64,
                fuel: u64::MAX,
                output_bytes: u64::MAX,
                log_bytes: u64::MAX,
                deadline_ms: u64::MAX,
                price_per_gfuel: 0,
                concurrency,
            }],
            bootstrap: Vec::new(),
            cache_dir: None,
            threads: None,
            limits: ProviderLimits::default(),
            payee: None,
            books: None,
            credit: None,
        }
    }
}

/// Everything peers can make a provider hold, each capped. Together with the flavors (which cap
/// what a requestor may ask of one subtask: memory, fuel, output, logs, time) and the sandbox's
/// own limits ([`SandboxConfig`](crate::sandbox::SandboxConfig): module size, compile time and
/// concurrency, compiled modules kept in memory and on disk), these bound what any peer can
/// make the provider spend. Each limit has a flag in `golem-provider`.
///
/// Memory held for one connection is at most about its QUIC receive window
/// ([`RECEIVE_WINDOW`](crate::net::RECEIVE_WINDOW), 32 MiB), the request frames read ahead of
/// its session (16 MiB each, at most five), its batches ([`batch_bytes_per_connection`]), and
/// the outputs of its finished batches not sent yet (as much again: a batch whose outputs do
/// not fit is given back, though a connection holding none may always keep one batch's); the
/// batches and outputs of all connections together are capped by [`batch_bytes`] (past it
/// each connection by the one batch's outputs it may always keep, and by its
/// [`share`](Self::share)); blobs being received by [`blob_receive_bytes`]; blobs kept by
/// [`blob_memory_bytes`].
///
/// [`batch_bytes_per_connection`]: Self::batch_bytes_per_connection
/// [`batch_bytes`]: Self::batch_bytes
/// [`blob_receive_bytes`]: Self::blob_receive_bytes
/// [`blob_memory_bytes`]: Self::blob_memory_bytes
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderLimits {
    /// Connections served at once; more are closed as busy.
    pub connections: usize,
    /// Connections served at once from one node id.
    pub connections_per_peer: usize,
    /// Connections served at once from one IP address (direct connections; relayed ones count
    /// only under the two caps above).
    pub connections_per_ip: usize,
    /// Batches one connection may have accepted and not done; more are answered with
    /// [`Outcome::Retry`].
    pub batches_per_connection: usize,
    /// Bytes of batches one connection may have accepted and not done, and bytes of outputs
    /// of its finished batches it may leave unsent (the requestor has not taken them).
    pub batch_bytes_per_connection: usize,
    /// Batches held across every connection (waiting for blobs, queued, running, or done with
    /// outputs not sent yet); past it a connection still gets its [`share`](Self::share).
    pub batches: usize,
    /// Bytes of batches, and of outputs not sent yet, held across every connection.
    pub batch_bytes: usize,
    /// Largest blob accepted; at most [`blob_receive_bytes`](Self::blob_receive_bytes).
    pub max_blob_bytes: u64,
    /// Bytes of blobs being received at once, across every connection; a blob waits for room
    /// before its bytes are read (room that frees goes to the waiting requestor that holds
    /// least, so one that opens many streams delays itself), and a stream that then delivers
    /// slower than [`MIN_BLOB_RATE`](crate::node::MIN_BLOB_RATE) (after
    /// [`BLOB_GRACE`](crate::node::BLOB_GRACE)) is given up, so a peer that barely sends holds
    /// the room for seconds, not minutes.
    pub blob_receive_bytes: u64,
    /// How long a batch waits for its blobs, and a blob stream may take, before it is given up.
    pub blob_wait: Duration,
    /// Bytes of blobs kept in memory; older ones are dropped (and read back from the cache
    /// directory, or fetched again, when needed).
    pub blob_memory_bytes: usize,
    /// How long a reply may wait for the requestor to take it (QUIC flow control) before the
    /// connection is closed.
    pub reply_timeout: Duration,
    /// Bytes of blobs kept in the cache directory; the oldest are deleted first.
    pub blob_disk_bytes: u64,
    /// Free bytes left on the cache directory's disk: no blob is written into them (the books
    /// share the disk). The sandbox keeps its own for compiled modules
    /// ([`SandboxConfig::disk_reserve_bytes`](crate::sandbox::SandboxConfig::disk_reserve_bytes)).
    pub disk_reserve_bytes: u64,
}

impl ProviderLimits {
    /// What one connection may hold even when the others have filled [`batches`] and
    /// [`batch_bytes`]: an equal part of each among [`connections`] (so at most twice the
    /// caps are held in all).
    ///
    /// [`batches`]: Self::batches
    /// [`batch_bytes`]: Self::batch_bytes
    /// [`connections`]: Self::connections
    pub fn share(&self) -> (usize, usize) {
        let connections = self.connections.max(1);
        (
            (self.batches / connections).max(1),
            self.batch_bytes / connections,
        )
    }
}

impl Default for ProviderLimits {
    fn default() -> Self {
        Self {
            connections: 256,
            connections_per_peer: 4,
            connections_per_ip: 64,
            batches_per_connection: 256,
            batch_bytes_per_connection: 64 << 20,
            batches: 4096,
            batch_bytes: 512 << 20,
            max_blob_bytes: 1 << 30,
            blob_receive_bytes: 1 << 30,
            blob_wait: Duration::from_secs(60),
            blob_memory_bytes: BlobStore::DEFAULT_MEMORY_BYTES,
            reply_timeout: Duration::from_secs(30),
            blob_disk_bytes: BlobStore::DEFAULT_DISK_BYTES,
            disk_reserve_bytes: crate::disk::DEFAULT_DISK_RESERVE,
        }
    }
}

struct Shared {
    endpoint: Endpoint,
    hello: Hello,
    store: Arc<BlobStore>,
    /// Batches run in turn by requestor.
    executor: Executor<NodeId>,
    /// What every connection's session may hold together.
    quota: Arc<BatchQuota>,
    /// Room for blobs being received, in KiB, handed out fairly among requestors.
    receiving: Arc<FairRoom<NodeId>>,
    /// Connections served now, by node id and by address.
    connections: Mutex<Connections>,
    sandbox: Arc<Sandbox>,
    /// Signs receipts.
    key: NodeKey,
    #[cfg(feature = "adversarial")]
    cheater: Option<Mutex<crate::adversarial::Cheater>>,
    /// Its part in the gossip topic, where it announces itself.
    discovery: Discovery,
    /// The credit given now ([`ProviderNodeConfig::credit`] at start).
    credit: Mutex<Option<Credit>>,
    /// Batches refused because their requestor owed too much.
    unpaid_refusals: AtomicU64,
    /// Worth of the work run for each requestor and not in the books yet (its reply not sent,
    /// or being written): counted with what the books say it owes.
    owing: Mutex<HashMap<NodeId, Owed>>,
    config: ProviderNodeConfig,
    stop: watch::Sender<bool>,
}

impl Shared {
    /// This provider's announcement number `seq`, valid from `now` (Unix seconds) for
    /// [`ANNOUNCEMENT_TTL`].
    fn announcement(&self, seq: u64, now: u64) -> Announcement {
        let mut addrs = match self.config.advertise {
            Some(advertised) => vec![advertised],
            None => self.endpoint.direct_addrs(),
        };
        addrs.truncate(MAX_ADDRESSES);
        Announcement {
            node: self.endpoint.node_id(),
            seq,
            expires_at: now + ANNOUNCEMENT_TTL.as_secs(),
            offers: self.config.offers.clone(),
            engine: self.hello.engine,
            payee: self.config.payee,
            relay: self.endpoint.relays().connected_home(),
            addrs,
        }
    }

    /// Runs `batch` on this thread, unless `cancelled` stops it, and signs the receipt of its
    /// outputs.
    fn run(&self, batch: &Batch, cancelled: &Arc<AtomicBool>) -> Outcome {
        let store = &self.store;
        match run_batch(&self.sandbox, |id| store.get(id), batch, cancelled) {
            Ok(outputs) => self.sign(batch, outputs),
            Err(outcome) => outcome,
        }
    }

    /// Enters in the books that the results `owing` is for were sent, on a blocking thread: a
    /// write to the books waits for the disk (fsync), which must not hold up the network
    /// threads. `owing` counts until the books have it (for a moment, both count: the credit
    /// errs on the side of refusing).
    fn promise(&self, owing: Owing) {
        let Some(books) = &self.config.books else {
            return;
        };
        let books = Arc::clone(books);
        drop(tokio::task::spawn_blocking(move || {
            let requestor = owing.requestor;
            if let Err(error) = books.promise(requestor, owing.nano) {
                tracing::error!(%requestor, %error, "work delivered not entered in the books");
            }
            drop(owing);
        }));
    }

    /// Counts the worth of `outcome` at `price` as owed by `requestor` until the returned
    /// [`Owing`] is dropped; `None` when it is worth nothing.
    fn owe(self: &Arc<Self>, requestor: NodeId, outcome: &Outcome, price: u64) -> Option<Owing> {
        let Outcome::Outputs { outputs, .. } = outcome else {
            return None;
        };
        let fuel: u128 = outputs.iter().map(|out| u128::from(out.fuel)).sum();
        let nano = fuel.saturating_mul(u128::from(price));
        let books = self.config.books.as_ref()?;
        if nano == 0 {
            return None;
        }
        // Whether it has never paid, as the credit's check will read it.
        let stranger = books.account(requestor).is_ok_and(|a| a.arrived == 0);
        let mut owing = self.owing.lock().unwrap_or_else(PoisonError::into_inner);
        let owed = owing.entry(requestor).or_insert(Owed { nano: 0, stranger });
        owed.nano = owed.nano.saturating_add(nano);
        owed.stranger = stranger;
        Some(Owing {
            shared: Arc::clone(self),
            requestor,
            nano,
        })
    }

    fn sign(&self, batch: &Batch, outputs: Vec<Output>) -> Outcome {
        #[cfg(feature = "adversarial")]
        if let Some(cheater) = &self.cheater {
            let mut cheater = cheater.lock().unwrap_or_else(PoisonError::into_inner);
            return cheater.outcome(&self.key, batch, outputs);
        }
        Outcome::signed(&self.key, batch, outputs)
    }

    /// The cheapest flavor sold that holds every limit the batch asks for (memory, fuel,
    /// output, logs, deadline): the rate it is charged at. A batch no flavor holds never runs.
    fn offer_for(&self, batch: &Batch) -> Option<&Offer> {
        Demand::for_limits(&batch.job.limits).choose(&self.config.offers)
    }

    /// Why `batch` is answered at once, before its blobs are fetched: no flavor holds its
    /// limits, or its requestor owes more than the credit limit.
    fn refusal(&self, requestor: NodeId, batch: &Batch) -> Option<Outcome> {
        if self.offer_for(batch).is_none() {
            return Some(Outcome::Retry(
                "the job's limits exceed every flavor of this provider".into(),
            ));
        }
        self.unpaid(requestor)
    }

    /// [`Outcome::Unpaid`] when `requestor` is past its [`Credit`] and escrow, or every
    /// requestor together is past the total, or it has never paid and those that have not are
    /// past theirs: by the books and the work run and not in them yet, read as one.
    ///
    /// Asked when a batch arrives, when it is handed out, and as it starts on a worker, so
    /// requests sent together cannot all pass before the first result is entered: past the
    /// credit, a requestor gets at most one batch more per worker running at once.
    fn unpaid(&self, requestor: NodeId) -> Option<Outcome> {
        let owing = self.owing.lock().unwrap_or_else(PoisonError::into_inner);
        let credit = *self.credit.lock().unwrap_or_else(PoisonError::into_inner);
        let (books, credit) = (self.config.books.as_ref()?, credit?);
        let own = owing.get(&requestor).map_or(0, |owed| owed.nano);
        let read = books
            .account(requestor)
            .and_then(|account| Ok((account, books.escrow(requestor)?)));
        let (mut account, escrow) = match read {
            Ok(read) => read,
            Err(error) => {
                tracing::error!(%requestor, %error, "cannot read the books");
                return None;
            }
        };
        // Work run and not in the books yet is owed all the same.
        let mut on_credit = books.owed_on_credit();
        let (mut all, mut strangers) = (0u128, 0u128);
        for owed in owing.values() {
            all = all.saturating_add(owed.nano);
            if owed.stranger {
                strangers = strangers.saturating_add(owed.nano);
            }
        }
        drop(owing);
        on_credit.all = on_credit.all.saturating_add(all / NANO);
        on_credit.strangers = on_credit.strangers.saturating_add(strangers / NANO);
        account.promised_nano = account.promised_nano.saturating_add(own);
        let limit = credit.refuses(&account, escrow, on_credit)?;
        let owed = account.owed();
        let (all, strangers) = (on_credit.all, on_credit.strangers);
        if self.unpaid_refusals.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::info!(%requestor, owed, limit, escrow, all, strangers, "work refused until paid");
        } else {
            tracing::debug!(%requestor, owed, limit, escrow, all, strangers, "work refused until paid");
        }
        Some(Outcome::Unpaid { owed, limit })
    }
}

/// A provider: sells its CPU to requestors that dial it.
///
/// Start it inside a tokio runtime; it serves until [`ProviderNode::shutdown`] or until it is
/// dropped.
pub struct ProviderNode {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

impl std::fmt::Debug for ProviderNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderNode")
            .field("node", &self.shared.endpoint.node_id())
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ProviderNode {
    /// Binds the endpoint, starts the worker threads and the bootstrap joins.
    pub async fn start(
        key: &NodeKey,
        sandbox: Arc<Sandbox>,
        config: ProviderNodeConfig,
    ) -> Result<Self, NodeError> {
        Self::start_inner(
            key,
            sandbox,
            config,
            #[cfg(feature = "adversarial")]
            None,
        )
        .await
    }

    /// [`ProviderNode::start`] for a provider that lies as `cheat` says: for tests of
    /// verification only.
    #[cfg(feature = "adversarial")]
    pub async fn start_cheating(
        key: &NodeKey,
        sandbox: Arc<Sandbox>,
        config: ProviderNodeConfig,
        cheat: crate::adversarial::Cheat,
    ) -> Result<Self, NodeError> {
        Self::start_inner(key, sandbox, config, Some(cheat)).await
    }

    async fn start_inner(
        key: &NodeKey,
        sandbox: Arc<Sandbox>,
        config: ProviderNodeConfig,
        #[cfg(feature = "adversarial")] cheat: Option<crate::adversarial::Cheat>,
    ) -> Result<Self, NodeError> {
        // An announcement that cannot be made is an error now, not a silent absence later:
        // checked with the most addresses and a relay before anything is started.
        Announcement {
            node: key.node_id(),
            seq: u64::MAX,
            expires_at: u64::MAX,
            offers: config.offers.clone(),
            engine: Some(sandbox.fingerprint()),
            payee: config.payee,
            relay: Some(crate::net::Relay {
                node: key.node_id(),
                addr: SocketAddr::from(([0xffff; 8], u16::MAX)),
            }),
            addrs: vec![SocketAddr::from(([0xffff; 8], u16::MAX)); MAX_ADDRESSES],
        }
        .sign(key)?;
        if config.limits.max_blob_bytes > config.limits.blob_receive_bytes {
            return Err(NodeError::Config(format!(
                "the largest blob ({} bytes) must fit the room for blobs being received ({} \
                 bytes): such a blob would wait for room for ever",
                config.limits.max_blob_bytes, config.limits.blob_receive_bytes
            )));
        }
        let endpoint = Endpoint::bind(key, &config.net).await?;
        let addr = endpoint.local_addr();
        let store = Arc::new(
            match &config.cache_dir {
                Some(dir) => BlobStore::on_disk_within(
                    dir,
                    config.limits.blob_disk_bytes,
                    config.limits.disk_reserve_bytes,
                )
                .map_err(|error| {
                    NodeError::io(format!("cannot open the cache {}", dir.display()), &error)
                })?,
                None => BlobStore::in_memory(),
            }
            .with_memory_cap(config.limits.blob_memory_bytes),
        );
        let threads = config.threads.unwrap_or_else(|| {
            config
                .offers
                .iter()
                .map(|offer| offer.concurrency as usize)
                .max()
                .unwrap_or(1)
        });
        let executor = Executor::start("golem-provider", threads)
            .map_err(|error| NodeError::io("cannot start the worker threads", &error))?;
        let hello = Hello {
            version: PROTOCOL_VERSION,
            offers: config.offers.clone(),
            engine: Some(sandbox.fingerprint()),
            payee: config.payee,
        };
        for target in &config.bootstrap {
            endpoint.remember(target.node, [target.addr], None);
        }
        let bootstrap = config.bootstrap.iter().map(|target| target.node).collect();
        let discovery = Discovery::join(&endpoint, bootstrap, DiscoveryConfig::default()).await?;
        let (stop, _) = watch::channel(false);
        let limits = &config.limits;
        let shared = Arc::new(Shared {
            endpoint,
            hello,
            store,
            executor,
            quota: Arc::new(BatchQuota::new(limits.batches, limits.batch_bytes)),
            receiving: FairRoom::new(limits.blob_receive_bytes.div_ceil(1024)),
            connections: Mutex::default(),
            sandbox,
            key: NodeKey::from_secret(key.secret_bytes()),
            #[cfg(feature = "adversarial")]
            cheater: cheat.map(|cheat| Mutex::new(crate::adversarial::Cheater::new(cheat))),
            discovery,
            credit: Mutex::new(config.credit),
            unpaid_refusals: AtomicU64::new(0),
            owing: Mutex::default(),
            config,
            stop,
        });
        tokio::spawn(accept_loop(Arc::clone(&shared)));
        tokio::spawn(announce_loop(Arc::clone(&shared)));
        tracing::info!(node = %shared.endpoint.node_id(), %addr, "provider listening");
        Ok(Self { shared, addr })
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.shared.endpoint.node_id()
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How to join it (`NODE_ID@ADDR` as text).
    pub fn bootstrap(&self) -> Bootstrap {
        Bootstrap {
            node: self.node_id(),
            addr: self.addr,
        }
    }

    /// The flavors it sells.
    pub fn offers(&self) -> &[Offer] {
        &self.shared.config.offers
    }

    /// The other providers it believes, from their announcements on the gossip topic.
    pub fn known_providers(&self) -> Vec<Announcement> {
        self.shared.discovery.providers()
    }

    /// Changes the credit given (`None`: no limit); batches arriving from now on are held to it.
    pub fn set_credit(&self, credit: Option<Credit>) {
        *self
            .shared
            .credit
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = credit;
    }

    /// What every connection holds now against [`ProviderLimits::batches`] and
    /// [`ProviderLimits::batch_bytes`]: batches accepted and not done, or done and not sent,
    /// and their bytes (inputs, and the outputs not sent yet).
    pub fn held(&self) -> (usize, usize) {
        self.shared.quota.used()
    }

    /// Batches refused so far because their requestor, or every requestor together, owed more
    /// than the credit.
    pub fn unpaid_refusals(&self) -> u64 {
        self.shared.unpaid_refusals.load(Ordering::Relaxed)
    }

    /// Its blob store.
    pub fn blobs(&self) -> &BlobStore {
        &self.shared.store
    }

    /// Stops accepting, closes every connection and ends the joins. Batches running finish on
    /// their threads; their results are dropped.
    pub fn shutdown(&self) {
        self.shared.stop.send_replace(true);
        self.shared.endpoint.close();
    }
}

impl Drop for ProviderNode {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Connections served now, counted for the caps of [`ProviderLimits`].
#[derive(Debug, Default)]
struct Connections {
    all: usize,
    by_peer: HashMap<NodeId, usize>,
    by_ip: HashMap<IpAddr, usize>,
}

/// A connection's place among those served; given back when dropped.
struct ConnectionSlot {
    shared: Arc<Shared>,
    peer: NodeId,
    ip: Option<IpAddr>,
}

impl ConnectionSlot {
    /// A place for `connection`, or why there is none.
    fn take(shared: &Arc<Shared>, connection: &Connection) -> Result<Self, &'static str> {
        let limits = &shared.config.limits;
        let peer = connection.peer();
        let ip = connection.remote_addr().map(|addr| addr.ip());
        let mut connections = shared
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if connections.all >= limits.connections {
            return Err("busy: the provider serves as many connections as it takes");
        }
        if connections.by_peer.get(&peer).copied().unwrap_or(0) >= limits.connections_per_peer {
            return Err("busy: too many connections from this node");
        }
        if let Some(ip) = ip
            && connections.by_ip.get(&ip).copied().unwrap_or(0) >= limits.connections_per_ip
        {
            return Err("busy: too many connections from this address");
        }
        connections.all += 1;
        *connections.by_peer.entry(peer).or_default() += 1;
        if let Some(ip) = ip {
            *connections.by_ip.entry(ip).or_default() += 1;
        }
        Ok(Self {
            shared: Arc::clone(shared),
            peer,
            ip,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut connections = self
            .shared
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        connections.all -= 1;
        fn release<K: Eq + std::hash::Hash>(map: &mut HashMap<K, usize>, key: &K) {
            if let Some(count) = map.get_mut(key) {
                *count -= 1;
                if *count == 0 {
                    map.remove(key);
                }
            }
        }
        release(&mut connections.by_peer, &self.peer);
        if let Some(ip) = &self.ip {
            release(&mut connections.by_ip, ip);
        }
    }
}

async fn accept_loop(shared: Arc<Shared>) {
    let mut stop = shared.stop.subscribe();
    loop {
        let incoming = tokio::select! {
            incoming = shared.endpoint.accept() => incoming,
            _ = stop.wait_for(|stop| *stop) => return,
        };
        match incoming {
            None => return,
            Some(Ok(connection)) => match ConnectionSlot::take(&shared, &connection) {
                Ok(slot) => {
                    tokio::spawn(serve(Arc::clone(&shared), connection, slot));
                }
                Err(reason) => {
                    tracing::info!(peer = %connection.peer(), addr = ?connection.remote_addr(), reason, "connection refused");
                    connection.close(reason);
                }
            },
            Some(Err(error)) => tracing::info!(%error, "refused a connection"),
        }
    }
}

/// What happens on one connection besides its requests, in the order it happened. Each kind is
/// bounded by what the session holds: a `Done` per batch handed out, a blob event per blob
/// asked for.
enum ConnEvent {
    Blob(BlobId),
    BlobFailed(BlobId, String),
    /// A batch ran: its id, its outcome, what it is owed, and the room its outputs hold until
    /// they are sent.
    Done(u64, Outcome, Option<Owing>, Option<Kept>),
}

/// What one requestor owes for work not in the books yet.
struct Owed {
    /// In billionths of the smallest currency unit.
    nano: u128,
    /// Whether it had never paid when the work was run.
    stranger: bool,
}

/// The worth of results run for a requestor, counted as owed by it until dropped: when the
/// books have it, or when the results are dropped unsent.
struct Owing {
    shared: Arc<Shared>,
    requestor: NodeId,
    nano: u128,
}

impl Drop for Owing {
    fn drop(&mut self) {
        let mut owing = self
            .shared
            .owing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(owed) = owing.get_mut(&self.requestor) {
            owed.nano = owed.nano.saturating_sub(self.nano);
            if owed.nano == 0 {
                owing.remove(&self.requestor);
            }
        }
    }
}

/// The room a finished batch's outputs take until they are sent: its place in the provider's
/// [`BatchQuota`], grown by their bytes, and their bytes in the connection's count of outputs
/// not sent. Both are given back when it is dropped.
struct Kept {
    hold: QuotaHold,
    bytes: usize,
    unsent: Arc<AtomicUsize>,
}

impl Drop for Kept {
    fn drop(&mut self) {
        self.unsent.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// A finished batch whose reply is not sent yet: what it is owed, and the room it keeps.
struct Unsent {
    owing: Option<Owing>,
    _kept: Option<Kept>,
}

/// Keeps `outcome`'s outputs in the room of a connection that leaves `unsent` bytes of outputs
/// unsent, at most `room` (but one batch's always), and in the provider's quota with `hold`;
/// when they do not fit, they are dropped and the batch is given back.
fn keep_outputs(
    outcome: Outcome,
    hold: QuotaHold,
    unsent: &Arc<AtomicUsize>,
    room: usize,
) -> (Outcome, Option<Kept>) {
    let Outcome::Outputs { outputs, .. } = &outcome else {
        return (outcome, None);
    };
    // The bytes, and a little for each output's fuel and framing.
    let bytes: usize = outputs.iter().map(|output| output.bytes.len() + 32).sum();
    let reserved = unsent.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
        (held == 0 || held.saturating_add(bytes) <= room).then_some(held + bytes)
    });
    let Ok(before) = reserved else {
        let reason = "the outputs this requestor has not taken fill its room";
        return (Outcome::Retry(reason.into()), None);
    };
    let mut kept = Kept {
        hold,
        bytes,
        unsent: Arc::clone(unsent),
    };
    if !kept.hold.grow(bytes, before == 0) {
        // Dropping `kept` gives the connection's bytes and the place back.
        drop(kept);
        let reason = "the provider holds too many outputs not taken yet";
        return (Outcome::Retry(reason.into()), None);
    }
    (outcome, Some(kept))
}

/// Requests read ahead of the session: the reader waits (and QUIC flow control holds the
/// requestor back) while these are queued.
const REQUESTS_AHEAD: usize = 4;

async fn serve(shared: Arc<Shared>, connection: Connection, slot: ConnectionSlot) {
    let peer = connection.peer();
    let streams =
        tokio::time::timeout(Duration::from_secs(30), connection.quic().accept_bi()).await;
    let (send, recv) = match streams {
        Ok(Ok(streams)) => streams,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "connection closed before its control stream");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "no control stream within 30 s; closing");
            connection.close("no control stream");
            return;
        }
    };
    let limits = &shared.config.limits;
    let (requests, mut requests_in) = mpsc::channel(REQUESTS_AHEAD);
    let (events, mut inbox) = mpsc::unbounded_channel();
    // Blobs this connection's batches asked for: no other blob is read.
    let wanted: Wanted = Arc::default();
    let paths = tokio::spawn(log_paths(connection.clone(), |_| {}));
    let reader = tokio::spawn(read_requests(recv, requests));
    let blobs = tokio::spawn(accept_blobs(
        Arc::clone(&shared),
        connection.clone(),
        Arc::clone(&wanted),
        events.clone(),
    ));
    let mut session = ProviderSession::new(
        shared.hello.clone(),
        ProviderSessionConfig {
            max_batches: limits.batches_per_connection,
            max_batch_bytes: limits.batch_bytes_per_connection,
            blob_wait: limits.blob_wait,
            quota: Arc::clone(&shared.quota),
            share: limits.share(),
        },
    );
    let mut replies = FramedSend::new(send, MAX_REPLY_FRAME);
    let mut stop = shared.stop.subscribe();
    // Finished batches, until their results are sent.
    let mut unsent: HashMap<u64, Unsent> = HashMap::new();
    // Bytes of their outputs, counted as each batch ends (on a worker thread).
    let unsent_bytes = Arc::new(AtomicUsize::new(0));
    // The batches handed out to run, with the flag that stops them.
    let mut running: HashMap<u64, Arc<AtomicBool>> = HashMap::new();
    let reason = loop {
        let deadline = session.poll_timeout();
        tokio::select! {
            request = requests_in.recv() => match request {
                Some(Ok(request)) => {
                    if let Request::Run(batch) = &request
                        && let Some(refusal) = shared.refusal(peer, batch)
                    {
                        session.refuse(batch.id, refusal);
                    } else {
                        let store = &shared.store;
                        session.handle_request(request, Instant::now(), |id| store.contains(id));
                    }
                }
                Some(Err(reason)) => break reason,
                None => break "the request reader stopped".to_owned(),
            },
            event = inbox.recv() => match event {
                Some(ConnEvent::Blob(id)) => session.handle_blob(id),
                Some(ConnEvent::BlobFailed(id, reason)) => session.handle_blob_failed(id, &reason),
                Some(ConnEvent::Done(batch, outcome, owing, kept)) => {
                    running.remove(&batch);
                    if session.handle_done(batch, outcome) {
                        unsent.insert(batch, Unsent { owing, _kept: kept });
                    } else {
                        tracing::debug!(%peer, batch, "the result of a cancelled batch is dropped");
                    }
                }
                None => break "the event channel closed".to_owned(),
            },
            () = sleep_until(deadline) => session.handle_timeout(Instant::now()),
            _ = stop.wait_for(|stop| *stop) => break "the provider is shutting down".to_owned(),
        }
        while let Some(batch) = session.poll_cancel() {
            if let Some(cancelled) = running.get(&batch) {
                cancelled.store(true, Ordering::Relaxed);
            }
        }
        while let Some(Work { batch, hold }) = session.poll_work() {
            let id = batch.id;
            let Some(price) = shared.offer_for(&batch).map(|offer| offer.price_per_gfuel) else {
                let reason = "the job's limits exceed every flavor of this provider";
                let _ = session.handle_done(id, Outcome::Retry(reason.into()));
                continue;
            };
            if let Some(unpaid) = shared.unpaid(peer) {
                let _ = session.handle_done(id, unpaid);
                continue;
            }
            let cancelled = Arc::new(AtomicBool::new(false));
            running.insert(id, Arc::clone(&cancelled));
            let events = events.clone();
            let worker = Arc::clone(&shared);
            let (unsent_bytes, room) =
                (Arc::clone(&unsent_bytes), limits.batch_bytes_per_connection);
            let submitted = shared.executor.submit(peer, move || {
                // Asked again as it starts: the work run before it may have used the credit.
                let outcome = match worker.unpaid(peer) {
                    Some(unpaid) => unpaid,
                    None => worker.run(&batch, &cancelled),
                };
                // The place is kept for the outputs until they are sent, or given back (before
                // the session hears the batch is done).
                let (outcome, kept) = keep_outputs(outcome, hold, &unsent_bytes, room);
                let owing = worker.owe(peer, &outcome, price);
                let _ = events.send(ConnEvent::Done(id, outcome, owing, kept));
            });
            if submitted.is_err() {
                running.remove(&id);
                let _ =
                    session.handle_done(id, Outcome::Retry("the provider is shutting down".into()));
            }
        }
        let mut failed = None;
        while let Some(reply) = session.poll_reply() {
            if let Reply::Need { blobs, .. } = &reply {
                wanted
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend(blobs.iter().copied());
            }
            match tokio::time::timeout(limits.reply_timeout, replies.send(&reply)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    failed = Some(error.to_string());
                    break;
                }
                Err(_) => {
                    failed = Some(format!(
                        "the requestor took no reply for {:?}",
                        limits.reply_timeout
                    ));
                    break;
                }
            }
            // Results are owed for once they are sent, and their room is free.
            if let Reply::Done { batch, .. } = &reply
                && let Some(owing) = unsent.remove(batch).and_then(|sent| sent.owing)
            {
                shared.promise(owing);
            }
        }
        if let Some(reason) = failed {
            break reason;
        }
    };
    tracing::debug!(%peer, %reason, "connection over");
    connection.close(&reason);
    // Work of this connection not started yet ends at once, giving its places back.
    for cancelled in running.values() {
        cancelled.store(true, Ordering::Relaxed);
    }
    reader.abort();
    blobs.abort();
    paths.abort();
    drop(slot);
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Reads requests into `requests` until the stream ends or fails (the reason, last).
async fn read_requests(recv: RecvStream, requests: mpsc::Sender<Result<Request, String>>) {
    let mut framed = FramedRecv::new(recv, MAX_REQUEST_FRAME);
    loop {
        let (request, last) = match framed.recv::<Request>().await {
            Ok(Some(request)) => (Ok(request), false),
            Ok(None) => (Err("the requestor ended the control stream".into()), true),
            Err(error) => (Err(error.to_string()), true),
        };
        if requests.send(request).await.is_err() || last {
            return;
        }
    }
}

/// The blobs a connection's batches asked for and that have not arrived.
type Wanted = Arc<Mutex<HashSet<BlobId>>>;

async fn accept_blobs(
    shared: Arc<Shared>,
    connection: Connection,
    wanted: Wanted,
    events: mpsc::UnboundedSender<ConnEvent>,
) {
    let peer = connection.peer();
    while let Ok(stream) = connection.quic().accept_uni().await {
        let (shared, wanted, events) = (Arc::clone(&shared), Arc::clone(&wanted), events.clone());
        tokio::spawn(async move {
            let limits = &shared.config.limits;
            let is_wanted = |id: &BlobId| {
                wanted
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .contains(id)
            };
            let received = tokio::time::timeout(
                limits.blob_wait,
                receive_blob(
                    stream,
                    limits.max_blob_bytes,
                    is_wanted,
                    &shared.receiving,
                    peer,
                ),
            )
            .await
            .unwrap_or(Err(BlobError::Timeout {
                wait: limits.blob_wait,
            }));
            let event = match received {
                Ok((id, bytes)) => {
                    let store = Arc::clone(&shared.store);
                    let stored =
                        tokio::task::spawn_blocking(move || store.insert_received(id, bytes)).await;
                    wanted
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&id);
                    match stored {
                        Ok(Ok(())) => ConnEvent::Blob(id),
                        Ok(Err(error)) => ConnEvent::BlobFailed(id, error.to_string()),
                        Err(error) => ConnEvent::BlobFailed(id, error.to_string()),
                    }
                }
                Err(
                    ref error @ (BlobError::TooLarge { id, .. }
                    | BlobError::Length { id, .. }
                    | BlobError::TooSlow { id, .. }
                    | BlobError::HashMismatch { expected: id, .. }),
                ) => {
                    tracing::warn!(%peer, %error, "blob refused");
                    ConnEvent::BlobFailed(id, error.to_string())
                }
                Err(error) => {
                    tracing::info!(%peer, %error, "blob stream refused");
                    return;
                }
            };
            let _ = events.send(event);
        });
    }
}

/// Announces this provider on the gossip topic every [`ANNOUNCE_EVERY`], each announcement
/// numbered above the last (also above those of an earlier run: the numbers start from the
/// clock).
async fn announce_loop(shared: Arc<Shared>) {
    let mut stop = shared.stop.subscribe();
    let mut seq = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        });
    let mut announced = 0u32;
    loop {
        let signed = shared.announcement(seq, unix_now()).sign(&shared.key);
        seq += 1;
        match signed {
            Ok(signed) => {
                if let Err(error) = shared.discovery.publish(signed).await {
                    tracing::warn!(%error, "cannot announce this provider");
                }
            }
            Err(error) => tracing::error!(%error, "cannot make this provider's announcement"),
        }
        // Again after 1 s and 3 s, while the node finds its gossip neighbours (an announcement
        // made before it has any reaches no one); then every ANNOUNCE_EVERY.
        let pause = match announced {
            0 => Duration::from_secs(1),
            1 => Duration::from_secs(2),
            _ => ANNOUNCE_EVERY,
        };
        announced += 1;
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}
