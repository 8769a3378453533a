//! The provider node: a QUIC endpoint serving requestors with a shared sandbox.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use iroh::endpoint::RecvStream;
use tokio::sync::{mpsc, watch};

use super::blobs::{BlobError, BlobStore, receive_blob};
use super::exec::{Executor, run_batch};
use super::{Bootstrap, NodeError, log_paths};
use crate::discovery::{
    ANNOUNCE_EVERY, ANNOUNCEMENT_TTL, Announcement, Discovery, DiscoveryConfig, MAX_ADDRESSES,
    unix_now,
};
use crate::identity::{NodeId, NodeKey};
use crate::market::Demand;
use crate::net::{Connection, Endpoint, FramedRecv, FramedSend, NetConfig};
use crate::payment::{Books, Payee};
use crate::proto::PROTOCOL_VERSION;
use crate::proto::message::{
    Batch, BlobId, Hello, MAX_REPLY_FRAME, MAX_REQUEST_FRAME, Offer, Outcome, Output, Reply,
    Request,
};
use crate::proto::provider::{ProviderSession, ProviderSessionConfig};
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
    /// Largest blob accepted.
    pub max_blob_bytes: u64,
    /// Bytes of blobs kept in memory; older ones are dropped (and read back from the cache
    /// directory, or fetched again, when needed).
    pub blob_memory_bytes: usize,
    /// Worker threads; by default the largest concurrency among the offers.
    pub threads: Option<usize>,
    /// Settings of each connection's session.
    pub session: ProviderSessionConfig,
    /// Where requestors should pay this provider; told in its hello.
    pub payee: Option<Payee>,
    /// The provider's own books: each batch it returns is promised to them at its price, and
    /// the payments that arrive are entered by whatever watches the payment channel
    /// ([`Books::arrived`]).
    pub books: Option<Arc<Books>>,
    /// With books, the most a requestor may owe (whole units, by the books); past it the
    /// requestor's batches are answered with [`Outcome::Unpaid`] until it pays.
    pub credit_limit: Option<u128>,
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
            max_blob_bytes: 1 << 30,
            blob_memory_bytes: BlobStore::DEFAULT_MEMORY_BYTES,
            threads: None,
            session: ProviderSessionConfig::default(),
            payee: None,
            books: None,
            credit_limit: None,
        }
    }
}

struct Shared {
    endpoint: Endpoint,
    hello: Hello,
    store: Arc<BlobStore>,
    executor: Executor,
    sandbox: Arc<Sandbox>,
    /// Signs receipts.
    key: NodeKey,
    #[cfg(feature = "adversarial")]
    cheater: Option<Mutex<crate::adversarial::Cheater>>,
    /// Its part in the gossip topic, where it announces itself.
    discovery: Discovery,
    /// The credit limit now ([`ProviderNodeConfig::credit_limit`] at start).
    credit_limit: Mutex<Option<u128>>,
    /// Batches refused because their requestor owed too much.
    unpaid_refusals: AtomicU64,
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

    /// Runs `batch` on this thread and signs the receipt of its outputs.
    fn run(&self, batch: &Batch) -> Outcome {
        let store = &self.store;
        match run_batch(&self.sandbox, |id| store.get(id), batch) {
            Ok(outputs) => self.sign(batch, outputs),
            Err(outcome) => outcome,
        }
    }

    /// Enters in the books that `requestor` was sent results worth `nano`.
    fn promise(&self, requestor: NodeId, nano: u128) {
        let Some(books) = &self.config.books else {
            return;
        };
        if let Err(error) = books.promise(requestor, nano) {
            tracing::error!(%requestor, %error, "work delivered not entered in the books");
        }
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

    /// [`Outcome::Unpaid`] when the books say `requestor` owes more than the credit limit.
    fn unpaid(&self, requestor: NodeId) -> Option<Outcome> {
        let limit = *self
            .credit_limit
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (books, limit) = (self.config.books.as_ref()?, limit?);
        match books.account(requestor) {
            Ok(account) if account.owed() > limit => {
                self.unpaid_refusals.fetch_add(1, Ordering::Relaxed);
                Some(Outcome::Unpaid {
                    owed: account.owed(),
                    limit,
                })
            }
            Ok(_) => None,
            Err(error) => {
                tracing::error!(%requestor, %error, "cannot read the books");
                None
            }
        }
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
        let endpoint = Endpoint::bind(key, &config.net).await?;
        let addr = endpoint.local_addr();
        let store = Arc::new(
            match &config.cache_dir {
                Some(dir) => BlobStore::on_disk(dir).map_err(|error| {
                    NodeError::io(format!("cannot open the cache {}", dir.display()), &error)
                })?,
                None => BlobStore::in_memory(),
            }
            .with_memory_cap(config.blob_memory_bytes),
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
        let shared = Arc::new(Shared {
            endpoint,
            hello,
            store,
            executor,
            sandbox,
            key: NodeKey::from_secret(key.secret_bytes()),
            #[cfg(feature = "adversarial")]
            cheater: cheat.map(|cheat| Mutex::new(crate::adversarial::Cheater::new(cheat))),
            discovery,
            credit_limit: Mutex::new(config.credit_limit),
            unpaid_refusals: AtomicU64::new(0),
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

    /// Changes the credit limit (`None`: none); batches arriving from now on are held to it.
    pub fn set_credit_limit(&self, limit: Option<u128>) {
        *self
            .shared
            .credit_limit
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = limit;
    }

    /// Batches refused so far because their requestor owed more than the credit limit.
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

async fn accept_loop(shared: Arc<Shared>) {
    let mut stop = shared.stop.subscribe();
    loop {
        let incoming = tokio::select! {
            incoming = shared.endpoint.accept() => incoming,
            _ = stop.wait_for(|stop| *stop) => return,
        };
        match incoming {
            None => return,
            Some(Ok(connection)) => {
                tokio::spawn(serve(Arc::clone(&shared), connection));
            }
            Some(Err(error)) => tracing::info!(%error, "refused a connection"),
        }
    }
}

/// What happens on one connection, in the order it happened.
enum ConnEvent {
    Request(Request),
    Blob(BlobId),
    BlobFailed(BlobId, String),
    /// A batch ran: its id, outcome and the price it is charged at.
    Done(u64, Outcome, u64),
    Closed(String),
}

async fn serve(shared: Arc<Shared>, connection: Connection) {
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
    let (events, mut inbox) = mpsc::unbounded_channel();
    let paths = tokio::spawn(log_paths(connection.clone()));
    let reader = tokio::spawn(read_requests(recv, events.clone()));
    let blobs = tokio::spawn(accept_blobs(
        connection.quic().clone(),
        Arc::clone(&shared.store),
        shared.config.max_blob_bytes,
        events.clone(),
    ));
    let mut session = ProviderSession::new(shared.hello.clone(), shared.config.session.clone());
    let mut replies = FramedSend::new(send, MAX_REPLY_FRAME);
    let mut stop = shared.stop.subscribe();
    // What each finished batch is worth, until its result is sent.
    let mut unsent: HashMap<u64, u128> = HashMap::new();
    let reason = loop {
        let deadline = session.poll_timeout();
        let event = tokio::select! {
            event = inbox.recv() => event,
            () = sleep_until(deadline) => {
                session.handle_timeout(Instant::now());
                None
            }
            _ = stop.wait_for(|stop| *stop) => break "the provider is shutting down".to_owned(),
        };
        match event {
            Some(ConnEvent::Request(request)) => {
                let store = &shared.store;
                session.handle_request(request, Instant::now(), |id| store.contains(id));
            }
            Some(ConnEvent::Blob(id)) => session.handle_blob(id),
            Some(ConnEvent::BlobFailed(id, reason)) => session.handle_blob_failed(id, &reason),
            Some(ConnEvent::Done(batch, outcome, price)) => {
                let worth = match &outcome {
                    Outcome::Outputs { outputs, .. } => {
                        let fuel: u128 = outputs.iter().map(|out| u128::from(out.fuel)).sum();
                        fuel * u128::from(price)
                    }
                    _ => 0,
                };
                if session.handle_done(batch, outcome) {
                    if worth > 0 {
                        unsent.insert(batch, worth);
                    }
                } else {
                    tracing::debug!(%peer, batch, "the result of a cancelled batch is dropped");
                }
            }
            Some(ConnEvent::Closed(reason)) => break reason,
            None => {}
        }
        while let Some(batch) = session.poll_work() {
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
            let events = events.clone();
            let worker = Arc::clone(&shared);
            let submitted = shared.executor.submit(move || {
                let outcome = worker.run(&batch);
                let _ = events.send(ConnEvent::Done(id, outcome, price));
            });
            if submitted.is_err() {
                let _ =
                    session.handle_done(id, Outcome::Retry("the provider is shutting down".into()));
            }
        }
        let mut failed = None;
        while let Some(reply) = session.poll_reply() {
            if let Err(error) = replies.send(&reply).await {
                failed = Some(error.to_string());
                break;
            }
            // Results are owed for once they are sent.
            if let Reply::Done { batch, .. } = &reply
                && let Some(nano) = unsent.remove(batch)
            {
                shared.promise(peer, nano);
            }
        }
        if let Some(reason) = failed {
            break reason;
        }
    };
    tracing::debug!(%peer, %reason, "connection over");
    reader.abort();
    blobs.abort();
    paths.abort();
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

async fn read_requests(recv: RecvStream, events: mpsc::UnboundedSender<ConnEvent>) {
    let mut framed = FramedRecv::new(recv, MAX_REQUEST_FRAME);
    loop {
        let event = match framed.recv::<Request>().await {
            Ok(Some(request)) => ConnEvent::Request(request),
            Ok(None) => ConnEvent::Closed("the requestor ended the control stream".into()),
            Err(error) => ConnEvent::Closed(error.to_string()),
        };
        let closed = matches!(event, ConnEvent::Closed(_));
        if events.send(event).is_err() || closed {
            return;
        }
    }
}

async fn accept_blobs(
    connection: iroh::endpoint::Connection,
    store: Arc<BlobStore>,
    limit: u64,
    events: mpsc::UnboundedSender<ConnEvent>,
) {
    while let Ok(stream) = connection.accept_uni().await {
        let store = Arc::clone(&store);
        let events = events.clone();
        tokio::spawn(async move {
            let event = match receive_blob(stream, limit).await {
                Ok((id, bytes)) => match store.insert_checked(id, bytes) {
                    Ok(_) => ConnEvent::Blob(id),
                    Err(error) => ConnEvent::BlobFailed(id, error.to_string()),
                },
                Err(
                    ref error @ (BlobError::TooLarge { id, .. }
                    | BlobError::Length { id, .. }
                    | BlobError::HashMismatch { expected: id, .. }),
                ) => {
                    tracing::warn!(%error, "blob refused");
                    ConnEvent::BlobFailed(id, error.to_string())
                }
                Err(error) => {
                    tracing::debug!(%error, "blob stream failed");
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
