//! Announcements on the gossip topic: publishing one's own, believing others' after checks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use iroh_gossip::TopicId;
use iroh_gossip::api::{Event, GossipReceiver, GossipSender};
use iroh_gossip::proto::DeliveryScope;
use n0_future::StreamExt;
use tokio::sync::broadcast;

use super::announcement::{Announcement, unix_now};
use super::directory::{Change, Directory, Refused};
use crate::identity::NodeId;
use crate::net::Endpoint;
use crate::net::Relays;

/// The topic every golem node of a protocol version meets on: named after the protocol's
/// ALPN, so nodes of another version never hear each other's announcements.
fn topic() -> TopicId {
    let mut hasher = blake3::Hasher::new_derive_key("golem announcements topic");
    hasher.update(crate::proto::ALPN);
    TopicId::from_bytes(*hasher.finalize().as_bytes())
}

/// What a node hears about providers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// A provider announced itself (for the first time, or again).
    Announced(Announcement),
    /// A provider's last announcement expired: it left, or lost its way to the network.
    Expired(NodeId),
}

/// Settings of [`Discovery`].
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// Most providers believed at once.
    pub capacity: usize,
    /// Messages a gossip neighbour may send to its neighbours alone per second, on average;
    /// more are dropped unread, so a neighbour that floods its neighbours costs them little.
    /// (Messages of the whole topic are not charged to the neighbour that forwarded them.)
    pub neighbour_rate: u32,
    /// Messages a neighbour may send in one burst above its rate.
    pub neighbour_burst: u32,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            capacity: 100_000,
            neighbour_rate: 200,
            neighbour_burst: 1_000,
        }
    }
}

/// What discovery received and what it made of it, since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiscoveryStats {
    /// Gossip messages received.
    pub received: u64,
    /// Bytes of them.
    pub received_bytes: u64,
    /// Announcements believed (new or newer).
    pub accepted: u64,
    /// Messages refused: forged, stale, replayed, malformed, or the directory full.
    pub refused: u64,
    /// Messages dropped unread because their neighbour sent too many.
    pub flooded: u64,
    /// Gossip neighbours now.
    pub neighbours: u64,
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    received_bytes: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    flooded: AtomicU64,
    neighbours: AtomicU64,
}

/// A node's part in the gossip topic: it hears providers' announcements, checks each, keeps
/// the believed ones in a [`Directory`] and tells subscribers; providers also publish theirs.
///
/// Dropping it leaves the topic.
pub struct Discovery {
    sender: GossipSender,
    /// This node's own latest announcement, if it publishes one.
    own: Arc<Mutex<Option<Vec<u8>>>>,
    directory: Arc<Mutex<Directory>>,
    heard: broadcast::Sender<Heard>,
    bootstrap: Arc<Mutex<Vec<NodeId>>>,
    counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Joining the gossip topic failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot join the gossip topic: {0}")]
pub struct DiscoveryError(String);

/// How often a node with no gossip neighbour asks its bootstrap nodes again.
const REJOIN: Duration = Duration::from_secs(3);

/// Providers it believes that a node with no neighbour asks to take it back, besides its
/// bootstrap nodes.
const REJOIN_THROUGH_KNOWN: usize = 5;

/// Least time between two passes of known announcements to new neighbours.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// Most announcements passed to new neighbours at once; past it, providers are learned as they
/// announce themselves again (every [`ANNOUNCE_EVERY`](super::ANNOUNCE_EVERY)).
const SYNC_MAX: usize = 256;

impl Discovery {
    /// Joins the topic on `endpoint`'s gossip, through `bootstrap` (nodes whose addresses the
    /// endpoint knows, see [`Endpoint::remember`]).
    pub async fn join(
        endpoint: &Endpoint,
        bootstrap: Vec<NodeId>,
        config: DiscoveryConfig,
    ) -> Result<Self, DiscoveryError> {
        let peers = bootstrap.iter().map(NodeId::to_iroh).collect();
        let topic = endpoint
            .gossip()
            .subscribe(topic(), peers)
            .await
            .map_err(|error| DiscoveryError(error.to_string()))?;
        let (sender, receiver) = topic.split();
        let directory = Arc::new(Mutex::new(Directory::new(config.capacity)));
        let (heard, _) = broadcast::channel(4096);
        let bootstrap = Arc::new(Mutex::new(bootstrap));
        let counters = Arc::new(Counters::default());
        let own = Arc::new(Mutex::new(None));
        let listener = Listener {
            own: Arc::clone(&own),
            last_sync: None,
            sync_pending: false,
            directory: Arc::clone(&directory),
            heard: heard.clone(),
            counters: Arc::clone(&counters),
            bootstrap: Arc::clone(&bootstrap),
            sender: sender.clone(),
            endpoint: endpoint.iroh().clone(),
            lookup: endpoint.lookup().clone(),
            relays: endpoint.relays().clone(),
            buckets: HashMap::new(),
            config,
            neighbours: 0,
        };
        let task = tokio::spawn(listener.run(receiver));
        Ok(Self {
            sender,
            own,
            directory,
            heard,
            bootstrap,
            counters,
            task,
        })
    }

    /// Joins through `node` too (its address must be known to the endpoint).
    pub async fn add_bootstrap(&self, node: NodeId) {
        {
            let mut bootstrap = self
                .bootstrap
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if bootstrap.contains(&node) {
                return;
            }
            bootstrap.push(node);
        }
        if let Err(error) = self.sender.join_peers(vec![node.to_iroh()]).await {
            tracing::debug!(%node, %error, "cannot ask the bootstrap node to join");
        }
    }

    /// Publishes a signed announcement (made by [`Announcement::sign`]).
    pub async fn publish(&self, signed: Vec<u8>) -> Result<(), DiscoveryError> {
        *self.own.lock().unwrap_or_else(PoisonError::into_inner) = Some(signed.clone());
        self.sender
            .broadcast(signed.into())
            .await
            .map_err(|error| DiscoveryError(error.to_string()))
    }

    /// What is heard from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Heard> {
        self.heard.subscribe()
    }

    /// Every provider believed now.
    pub fn providers(&self) -> Vec<Announcement> {
        let directory = self
            .directory
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut providers: Vec<Announcement> = directory.iter().cloned().collect();
        providers.sort_by_key(|announcement| announcement.node);
        providers
    }

    /// What was received and made of it so far.
    pub fn stats(&self) -> DiscoveryStats {
        let counters = &self.counters;
        DiscoveryStats {
            received: counters.received.load(Ordering::Relaxed),
            received_bytes: counters.received_bytes.load(Ordering::Relaxed),
            accepted: counters.accepted.load(Ordering::Relaxed),
            refused: counters.refused.load(Ordering::Relaxed),
            flooded: counters.flooded.load(Ordering::Relaxed),
            neighbours: counters.neighbours.load(Ordering::Relaxed),
        }
    }
}

/// A token bucket per neighbour.
struct Bucket {
    tokens: f64,
    at: Instant,
    /// When a refusal from this neighbour was last logged above debug level.
    warned: Option<Instant>,
}

struct Listener {
    own: Arc<Mutex<Option<Vec<u8>>>>,
    /// When announcements were last passed to new neighbours, and whether new neighbours came
    /// since.
    last_sync: Option<Instant>,
    sync_pending: bool,
    directory: Arc<Mutex<Directory>>,
    heard: broadcast::Sender<Heard>,
    counters: Arc<Counters>,
    bootstrap: Arc<Mutex<Vec<NodeId>>>,
    sender: GossipSender,
    endpoint: iroh::Endpoint,
    lookup: iroh::address_lookup::memory::MemoryLookup,
    relays: Relays,
    buckets: HashMap<NodeId, Bucket>,
    config: DiscoveryConfig,
    neighbours: usize,
}

impl Listener {
    async fn run(mut self, mut receiver: GossipReceiver) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_join = Instant::now();
        loop {
            tokio::select! {
                event = receiver.next() => match event {
                    Some(Ok(Event::Received(message))) => {
                        let from = NodeId::from_iroh(message.delivered_from);
                        let direct = message.scope == DeliveryScope::Neighbors;
                        self.receive(from, direct, &message.content);
                    }
                    Some(Ok(Event::NeighborUp(node))) => {
                        self.neighbours += 1;
                        self.counters.neighbours.store(self.neighbours as u64, Ordering::Relaxed);
                        tracing::debug!(node = %node.fmt_short(), "gossip neighbour up");
                        self.sync_pending = true;
                        self.sync();
                    }
                    Some(Ok(Event::NeighborDown(node))) => {
                        self.neighbours = self.neighbours.saturating_sub(1);
                        self.counters.neighbours.store(self.neighbours as u64, Ordering::Relaxed);
                        self.buckets.remove(&NodeId::from_iroh(node));
                        tracing::debug!(node = %node.fmt_short(), "gossip neighbour down");
                    }
                    Some(Ok(Event::Lagged)) => {
                        tracing::warn!("gossip events were missed; announcements arrive again within their refresh period");
                    }
                    Some(Err(error)) => {
                        tracing::warn!(%error, "the gossip topic failed");
                        return;
                    }
                    None => return,
                },
                _ = tick.tick() => {
                    self.expire();
                    self.sync();
                    if self.neighbours == 0 && last_join.elapsed() >= REJOIN {
                        last_join = Instant::now();
                        self.rejoin().await;
                    }
                }
            }
        }
    }

    /// Takes in one message passed on by neighbour `from`; `direct` when the neighbour sent it
    /// to its neighbours only (it wrote it, or is passing on what it knows to a newcomer).
    ///
    /// Only those count against the neighbour's rate: a message of the whole topic reached us
    /// through whichever neighbour forwarded it first, which says nothing of who wrote it, and
    /// charging the forwarder would let one flooder silence honest neighbours everywhere.
    /// Messages of the whole topic cost one signature check each, like anything gossip carries.
    fn receive(&mut self, from: NodeId, direct: bool, bytes: &[u8]) {
        let counters = Arc::clone(&self.counters);
        counters.received.fetch_add(1, Ordering::Relaxed);
        counters
            .received_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        if direct && !self.admit(from) {
            counters.flooded.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let now = unix_now();
        let result = self
            .directory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .receive(bytes, now);
        match result {
            Ok(Change::Added(announcement) | Change::Updated(announcement))
                if announcement.node.to_iroh() == self.endpoint.id() =>
            {
                // Our own, passed back by a neighbour: not another provider.
                self.directory
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .forget(&announcement.node);
            }
            Ok(Change::Added(announcement) | Change::Updated(announcement)) => {
                counters.accepted.fetch_add(1, Ordering::Relaxed);
                self.remember(&announcement);
                let _ = self.heard.send(Heard::Announced(announcement));
            }
            Err(refused) => {
                counters.refused.fetch_add(1, Ordering::Relaxed);
                self.log_refusal(from, &refused);
            }
        }
    }

    /// Whether neighbour `from` may be heard now (its token bucket has a token).
    fn admit(&mut self, from: NodeId) -> bool {
        let (rate, burst) = (
            f64::from(self.config.neighbour_rate),
            f64::from(self.config.neighbour_burst),
        );
        let now = Instant::now();
        let bucket = self.buckets.entry(from).or_insert(Bucket {
            tokens: burst,
            at: now,
            warned: None,
        });
        bucket.tokens =
            (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            if bucket
                .warned
                .is_none_or(|at| at.elapsed() >= Duration::from_secs(60))
            {
                bucket.warned = Some(now);
                tracing::warn!(neighbour = %from, "a gossip neighbour sends more than {rate} messages a second; the excess is dropped unread");
            }
            false
        }
    }

    /// Replays and duplicates are routine in gossip (every announcement travels several
    /// ways); anything else is worth a warning, once a minute per neighbour.
    fn log_refusal(&mut self, from: NodeId, refused: &Refused) {
        use super::announcement::AnnouncementError;
        if matches!(
            refused,
            Refused::Announcement(AnnouncementError::Replayed { .. })
        ) {
            tracing::trace!(neighbour = %from, %refused, "announcement refused");
            return;
        }
        let bucket = self.buckets.get_mut(&from);
        let warn = bucket.is_some_and(|bucket| {
            let due = bucket
                .warned
                .is_none_or(|at| at.elapsed() >= Duration::from_secs(60));
            if due {
                bucket.warned = Some(Instant::now());
            }
            due
        });
        if warn {
            tracing::warn!(neighbour = %from, %refused, "announcement refused");
        } else {
            tracing::debug!(neighbour = %from, %refused, "announcement refused");
        }
    }

    /// Lets the endpoint dial an announced provider by its id, at the addresses it announced
    /// (added to what is known of it: a bootstrap node keeps the address it was given), and
    /// through its relay if this node trusts that relay. A relay a bootstrap node announces is
    /// trusted from then on (when the node learns relays); any other relay a provider names
    /// is never contacted.
    fn remember(&self, announcement: &Announcement) {
        let from_bootstrap = self
            .bootstrap
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&announcement.node);
        if let Some(relay) = announcement.relay
            && from_bootstrap
        {
            self.relays.learn(relay);
        }
        let mut addr = iroh::EndpointAddr::new(announcement.node.to_iroh());
        for direct in &announcement.addrs {
            addr = addr.with_ip_addr(*direct);
        }
        if let Some(relay) = announcement.relay
            && self.relays.trusts(&relay)
        {
            addr = addr.with_relay_url(relay.url());
        }
        if !addr.is_empty() {
            self.lookup.add_endpoint_info(addr);
        }
    }

    fn expire(&mut self) {
        let gone = self
            .directory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .expire(unix_now());
        let bootstrap = self
            .bootstrap
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for node in gone {
            tracing::debug!(%node, "announcement expired");
            if !bootstrap.contains(&node) {
                self.lookup.remove_endpoint_info(node.to_iroh());
            }
            let _ = self.heard.send(Heard::Expired(node));
        }
    }

    /// Passes what this node knows (its own announcement, and the newest of those it believes)
    /// to its neighbours, when new ones came and the last pass is [`SYNC_EVERY`] old: a node
    /// that joins learns the providers at once instead of over a refresh period. Messages to
    /// neighbours are not forwarded, and receivers refuse what they know already.
    fn sync(&mut self) {
        if !self.sync_pending || self.last_sync.is_some_and(|at| at.elapsed() < SYNC_EVERY) {
            return;
        }
        self.sync_pending = false;
        self.last_sync = Some(Instant::now());
        let mut signed: Vec<Vec<u8>> = self
            .own
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect();
        signed.extend(
            self.directory
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .signed(SYNC_MAX),
        );
        let sender = self.sender.clone();
        tokio::spawn(async move {
            for bytes in signed {
                if sender.broadcast_neighbors(bytes.into()).await.is_err() {
                    return;
                }
            }
        });
    }

    /// Asks the bootstrap nodes, and a few providers it believes (their addresses are known
    /// from their announcements), to take this node back into the topic: a node with no
    /// neighbour hears nothing.
    async fn rejoin(&self) {
        let mut peers: Vec<iroh::EndpointId> = self
            .bootstrap
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(NodeId::to_iroh)
            .collect();
        let me = self.endpoint.id();
        let known: Vec<iroh::EndpointId> = self
            .directory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|announcement| announcement.node.to_iroh())
            .filter(|node| *node != me && !peers.contains(node))
            .take(REJOIN_THROUGH_KNOWN)
            .collect();
        peers.extend(known);
        if peers.is_empty() {
            return;
        }
        if let Err(error) = self.sender.join_peers(peers).await {
            tracing::debug!(%error, "cannot ask the bootstrap nodes to join");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::announcement::tests::announcement;
    use crate::identity::NodeKey;
    use crate::net::NetConfig;

    /// A node on loopback in the topic, joined through `through` when given.
    async fn node(seed: u8, through: Option<&Endpoint>) -> (NodeKey, Endpoint, Discovery) {
        let key = NodeKey::from_secret([seed; 32]);
        let endpoint = Endpoint::bind(&key, &NetConfig::loopback())
            .await
            .expect("bind");
        let bootstrap = match through {
            Some(other) => {
                endpoint.remember(other.node_id(), [other.local_addr()], None);
                vec![other.node_id()]
            }
            None => Vec::new(),
        };
        let discovery = Discovery::join(&endpoint, bootstrap, DiscoveryConfig::default())
            .await
            .expect("join");
        (key, endpoint, discovery)
    }

    /// Waits until `done` holds of `discovery`'s stats, for at most 10 s.
    async fn until(
        discovery: &Discovery,
        done: impl Fn(&DiscoveryStats) -> bool,
    ) -> DiscoveryStats {
        let started = Instant::now();
        loop {
            let stats = discovery.stats();
            if done(&stats) {
                return stats;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "gave up waiting; stats {stats:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Puts `node`'s id where the announcement `signed` names its author: the bytes claim to
    /// come from `node`, with a signature that is not its.
    fn forge(signed: &[u8], author: NodeId, node: NodeId) -> Vec<u8> {
        let at = signed
            .windows(32)
            .position(|window| window == author.as_bytes())
            .expect("the author is named");
        let mut forged = signed.to_vec();
        forged[at..at + 32].copy_from_slice(node.as_bytes());
        forged
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forged_stale_and_replayed_announcements_are_refused_and_good_ones_believed() {
        let (honest_key, honest, listener) = node(1, None).await;
        let (hostile_key, _hostile, hostile) = node(2, Some(&honest)).await;
        let now = unix_now();
        // A valid announcement first: the topic works.
        let first = announcement(&hostile_key, 20, now + 30)
            .sign(&hostile_key)
            .expect("signs");
        hostile.publish(first.clone()).await.expect("publish");
        until(&listener, |stats| stats.accepted == 1).await;
        let mut subscriber = listener.subscribe();

        // The hostile node claims to be the honest one; then stale, overlong and replayed
        // announcements of its own.
        let forged = forge(&first, hostile_key.node_id(), honest_key.node_id());
        let stale = announcement(&hostile_key, 21, now - 1)
            .sign(&hostile_key)
            .expect("signs");
        let overlong = announcement(&hostile_key, 22, now + 3_600)
            .sign(&hostile_key)
            .expect("signs");
        let mut replayed = announcement(&hostile_key, 15, now + 30);
        replayed.offers[0].price_per_gfuel = 1;
        let replayed = replayed.sign(&hostile_key).expect("signs");
        for bytes in [
            forged,
            stale,
            overlong,
            replayed,
            b"not an announcement".to_vec(),
        ] {
            hostile.publish(bytes).await.expect("publish");
        }
        let stats = until(&listener, |stats| stats.refused == 5).await;
        assert_eq!(stats.accepted, 1, "{stats:?}");
        // What is believed is the first announcement, unchanged, and nothing of the honest node.
        let believed = listener.providers();
        assert_eq!(believed.len(), 1);
        assert_eq!(believed[0].node, hostile_key.node_id());
        assert_eq!(believed[0].seq, 20);
        assert_eq!(believed[0].offers[0].price_per_gfuel, 10);
        assert!(
            subscriber.try_recv().is_err(),
            "nothing refused was passed on"
        );

        // A newer announcement is believed and passed on.
        let newer = announcement(&hostile_key, 30, now + 30)
            .sign(&hostile_key)
            .expect("signs");
        hostile.publish(newer).await.expect("publish");
        let heard = tokio::time::timeout(Duration::from_secs(10), subscriber.recv())
            .await
            .expect("heard in time")
            .expect("heard");
        assert!(matches!(heard, Heard::Announced(a) if a.seq == 30));
        honest.close();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_neighbour_that_floods_is_dropped_unread_and_the_node_keeps_listening() {
        let (_, honest, listener) = node(3, None).await;
        let (hostile_key, _hostile, hostile) = node(4, Some(&honest)).await;
        // Wait for the two to be neighbours: a valid announcement gets through.
        let now = unix_now();
        let first = announcement(&hostile_key, 1, now + 30)
            .sign(&hostile_key)
            .expect("signs");
        hostile.publish(first).await.expect("publish");
        until(&listener, |stats| stats.accepted == 1).await;

        // 3,000 distinct junk messages in 0.3 s, far above the rate of 200 a second and the
        // burst of 1,000. They go in bursts of 100 so that gossip's own event queue (256)
        // keeps up with them.
        let flood = 3_000u64;
        for i in 0..flood {
            let junk = format!("junk {i}").into_bytes();
            hostile
                .sender
                .broadcast_neighbors(junk.into())
                .await
                .expect("send");
            if i % 100 == 99 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        // Gossip itself drops what a subscriber cannot take in time (its event queue holds 256),
        // so not all of them arrive: wait until they stop coming.
        let started = Instant::now();
        let mut stats = listener.stats();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = listener.stats();
            if now.received == stats.received || started.elapsed() > Duration::from_secs(10) {
                break;
            }
            stats = now;
        }
        let stats = listener.stats();
        assert!(
            stats.received > 1_100,
            "the flood did not arrive: {stats:?}"
        );
        assert!(stats.flooded > 0, "{stats:?}");
        assert_eq!(
            stats.refused + stats.flooded,
            stats.received - 1,
            "{stats:?}"
        );

        // Once the neighbour's rate allows it again, its valid announcements are believed.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let later = announcement(&hostile_key, 2, unix_now() + 30)
            .sign(&hostile_key)
            .expect("signs");
        hostile.publish(later).await.expect("publish");
        until(&listener, |stats| stats.accepted == 2).await;
        honest.close();
    }
}
