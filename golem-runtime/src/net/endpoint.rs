//! A node's endpoint on iroh: accepts and dials connections authenticated by node keys.

use std::net::SocketAddr;

use iroh::address_lookup::memory::MemoryLookup;
use iroh::endpoint::{
    ConnectError, ConnectOptions, ConnectWithOptsError, ConnectingError, ConnectionError,
    IdleTimeout, PortmapperConfig, QuicTransportConfig, TransportErrorCode, VarInt, presets,
};
use iroh::{EndpointAddr, RelayMode, RelayUrl};

use std::sync::Arc;

use tokio::sync::mpsc;

use super::relay::{Relay, RelayTrust};
use super::{ALPN_ANY_VERSION, VERSION_MISMATCH};
use crate::identity::{NodeId, NodeKey};
use crate::proto::ALPN;

/// Connecting, accepting or binding failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}: {message}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's (or iroh's) reason.
        message: String,
    },
    /// The endpoint's configuration was refused.
    #[error("invalid transport configuration: {0}")]
    Config(String),
    /// The peer dialed did not prove it holds the key of the node expected: another node
    /// answers at that address, or something that is not a golem node.
    #[error("the peer dialed is not node {expected}: {message}")]
    PeerIdentity {
        /// The node expected.
        expected: NodeId,
        /// What the TLS handshake reported.
        message: String,
    },
    /// The peer completed the handshake only on the version-neutral ALPN: it speaks another
    /// version of the protocol.
    #[error("protocol version mismatch: the peer does not speak {ours}")]
    VersionMismatch {
        /// Our protocol (ALPN).
        ours: String,
    },
    /// The peer does not speak any golem protocol (no common ALPN).
    #[error("the peer is not a golem node (no common ALPN with {ours}): {message}")]
    NotGolem {
        /// Our protocol (ALPN).
        ours: String,
        /// What TLS reported.
        message: String,
    },
    /// The connection failed for another reason (timeout, reset, refused, no address).
    #[error("connection failed: {0}")]
    Connection(String),
}

/// How a node takes part in the network: where it binds, which relays it uses, whether it asks
/// its router for a port.
///
/// No third-party service is ever contacted: there is no address lookup (DNS, pkarr), and the
/// only relays are the ones listed here and, with `learn_relays`, those the bootstrap nodes
/// announce (see [`relay`](super::relay) for how they are trusted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// Address of the node's UDP socket (port 0 picks a free one).
    pub bind: SocketAddr,
    /// Relays the node keeps a home on and reaches relayed peers through.
    pub relays: Vec<Relay>,
    /// Also use the relays the bootstrap nodes announce. With no relays at all, a node reaches
    /// only peers it can dial directly, and only such peers reach it.
    pub learn_relays: bool,
    /// Asks the router for a port mapping (UPnP, PCP, NAT-PMP) so that peers behind other NATs
    /// can reach the node directly.
    pub port_mapping: bool,
    /// Bytes a peer may send on one stream before it waits for this node to read them: also
    /// the most one stream buffers ([`STREAM_WINDOW`] by default). A connection buffers at most
    /// [`RECEIVE_WINDOW`] across its streams.
    pub stream_window: u32,
}

impl NetConfig {
    /// On 127.0.0.1, a free port, no relays, no port mapping: nodes of one machine.
    pub fn loopback() -> Self {
        Self::direct(SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Bound to `bind`, no relays, no port mapping.
    pub fn direct(bind: SocketAddr) -> Self {
        Self {
            bind,
            relays: Vec::new(),
            learn_relays: false,
            port_mapping: false,
            stream_window: STREAM_WINDOW,
        }
    }

    /// Bound to `bind`, for the internet: relays the bootstrap nodes announce, hole punching,
    /// and a port mapping asked of the router (unless `bind` is a loopback address: no router
    /// is involved).
    pub fn internet(bind: SocketAddr) -> Self {
        Self {
            bind,
            relays: Vec::new(),
            learn_relays: true,
            port_mapping: !bind.ip().is_loopback(),
            stream_window: STREAM_WINDOW,
        }
    }

    fn uses_relays(&self) -> bool {
        self.learn_relays || !self.relays.is_empty()
    }
}

/// Which way a connection's packets travel now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathKind {
    /// Straight to the peer's address (on a LAN, public, or through a punched hole).
    Direct(SocketAddr),
    /// Through a relay.
    Relayed(RelayUrl),
    /// No path is selected (the connection is closing).
    None,
}

impl std::fmt::Display for PathKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Direct(addr) => write!(f, "direct ({addr})"),
            Self::Relayed(url) => write!(f, "relayed ({url})"),
            Self::None => f.write_str("no path"),
        }
    }
}

/// An authenticated connection to a peer node.
#[derive(Debug, Clone)]
pub struct Connection {
    inner: iroh::endpoint::Connection,
    peer: NodeId,
}

impl Connection {
    /// The peer's node id, proven by the TLS handshake.
    pub fn peer(&self) -> NodeId {
        self.peer
    }

    /// The path packets take now: direct (with the peer's address) or relayed.
    pub fn path(&self) -> PathKind {
        let paths = self.inner.paths();
        let selected = paths.iter().find(|path| path.is_selected());
        match selected.map(|path| path.remote_addr().clone()) {
            Some(iroh::TransportAddr::Ip(addr)) => PathKind::Direct(addr),
            Some(iroh::TransportAddr::Relay(url)) => PathKind::Relayed(url),
            _ => PathKind::None,
        }
    }

    /// The peer's address on a direct path, if the connection has one.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        let paths = self.inner.paths();
        let direct = paths
            .iter()
            .filter_map(|path| match path.remote_addr() {
                iroh::TransportAddr::Ip(addr) => Some((path.is_selected(), *addr)),
                _ => None,
            })
            .max_by_key(|(selected, _)| *selected);
        direct.map(|(_, addr)| addr)
    }

    /// The QUIC connection, for opening and accepting streams.
    pub fn quic(&self) -> &iroh::endpoint::Connection {
        &self.inner
    }

    /// Closes the connection, telling the peer `reason`.
    pub fn close(&self, reason: &str) {
        self.inner.close(VarInt::from_u32(0), reason.as_bytes());
    }
}

/// A node's endpoint, listening and dialing with its node key.
///
/// Besides golem's protocol it speaks iroh-gossip on the same socket, for
/// [`discovery`](crate::discovery).
#[derive(Debug)]
pub struct Endpoint {
    inner: iroh::Endpoint,
    node_id: NodeId,
    protocol: Arc<Protocol>,
    /// Golem connections accepted, handshaken and checked, for [`Endpoint::accept`].
    incoming: tokio::sync::Mutex<mpsc::Receiver<Result<Connection, NetError>>>,
    local_addr: SocketAddr,
    /// Addresses of nodes learned from bootstrap addresses and announcements, so they can be
    /// dialed by id.
    lookup: MemoryLookup,
    gossip: iroh_gossip::Gossip,
    relays: Relays,
    /// Where [`Endpoint::close`] runs its (async) close from any thread.
    runtime: tokio::runtime::Handle,
}

/// Largest gossip message, on every node (iroh-gossip's default): announcements stay well
/// below it ([`MAX_ANNOUNCEMENT_BYTES`](crate::discovery::MAX_ANNOUNCEMENT_BYTES)).
pub const GOSSIP_MESSAGE_BYTES: usize = 4096;

impl Endpoint {
    /// Binds an endpoint as the node of `key`, as `config` says. Needs a tokio runtime.
    pub async fn bind(key: &NodeKey, config: &NetConfig) -> Result<Self, NetError> {
        Self::bind_with_alpn(key, config, ALPN.to_vec()).await
    }

    /// [`Endpoint::bind`] speaking the protocol named by `alpn`: lets tests stand in for a node
    /// of another version.
    pub(crate) async fn bind_with_alpn(
        key: &NodeKey,
        config: &NetConfig,
        alpn: Vec<u8>,
    ) -> Result<Self, NetError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| NetError::Config("no async runtime (tokio) is running".into()))?;
        let addr = config.bind;
        let bind_error = |message: String| NetError::Bind { addr, message };
        let trust = Arc::new(RelayTrust::default());
        for relay in &config.relays {
            trust.insert(*relay);
        }
        // A node that may learn relays later keeps the relay transport with an empty map.
        let relay_mode = if config.uses_relays() {
            RelayMode::Custom(config.relays.iter().map(Relay::config).collect())
        } else {
            RelayMode::Disabled
        };
        let lookup = MemoryLookup::new();
        let mut alpns = alpn_list(&alpn);
        alpns.push(iroh_gossip::ALPN.to_vec());
        let builder = iroh::Endpoint::builder(presets::Minimal)
            .clear_address_lookup()
            .address_lookup(lookup.clone())
            .relay_mode(relay_mode)
            .ca_tls_config(trust.verifier())
            // No captive-portal check on port 80 of the relay's host (QUIC and HTTPS probes go
            // to the relay itself, through the pinning verifier).
            .net_report_config({
                let mut report = iroh::NetReportConfig::default();
                report.captive_portal_check = false;
                report
            })
            .dns_resolver(
                iroh::dns::DnsResolver::builder()
                    .with_system_defaults()
                    .disable_fallback()
                    .build(),
            )
            .portmapper_config(if config.port_mapping {
                PortmapperConfig::default()
            } else {
                PortmapperConfig::Disabled
            })
            .secret_key(key.to_iroh())
            .alpns(alpns)
            .transport_config(transport(config.stream_window))
            .clear_ip_transports()
            .bind_addr(addr)
            .map_err(|error| bind_error(error.to_string()))?;
        let inner = builder
            .bind()
            .await
            .map_err(|error| bind_error(describe(&error)))?;
        let local_addr = inner
            .bound_sockets()
            .into_iter()
            .find(|bound| bound.is_ipv4() == addr.is_ipv4())
            .ok_or_else(|| bind_error("no socket was bound".into()))?;
        let gossip = iroh_gossip::Gossip::builder()
            .max_message_size(GOSSIP_MESSAGE_BYTES)
            .spawn(inner.clone());
        // iroh-gossip adds a lookup of the addresses peers tell it in their join and shuffle
        // messages: gossip needs it to dial the neighbours it is introduced to (without it,
        // nodes of a 200-node topic keep one or two neighbours). Those addresses are not
        // checked, so a peer can name any host as another node's relay; the relay's TLS
        // handshake then fails on the pinned key, but the connection is attempted.
        let protocol = Arc::new(Protocol { alpn });
        let (accepted, incoming) = mpsc::channel(ACCEPT_QUEUE);
        tokio::spawn(route_incoming(
            inner.clone(),
            gossip.clone(),
            Arc::clone(&protocol),
            accepted,
        ));
        let relays = Relays {
            endpoint: inner.clone(),
            trust,
            learn: config.learn_relays,
        };
        Ok(Self {
            inner,
            node_id: key.node_id(),
            protocol,
            incoming: tokio::sync::Mutex::new(incoming),
            local_addr,
            lookup,
            gossip,
            relays,
            runtime,
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The address the endpoint's UDP socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The iroh endpoint, for protocols that run beside golem's on the same socket.
    pub fn iroh(&self) -> &iroh::Endpoint {
        &self.inner
    }

    /// The gossip instance on this endpoint.
    pub fn gossip(&self) -> &iroh_gossip::Gossip {
        &self.gossip
    }

    /// The addresses this endpoint knows other nodes by.
    pub(crate) fn lookup(&self) -> &MemoryLookup {
        &self.lookup
    }

    /// Remembers that `node` can be reached at `addrs` (and through `relay`), so it can be
    /// dialed by id, by golem and by gossip.
    pub fn remember(
        &self,
        node: NodeId,
        addrs: impl IntoIterator<Item = SocketAddr>,
        relay: Option<RelayUrl>,
    ) {
        if node == self.node_id {
            return;
        }
        let mut target = EndpointAddr::new(node.to_iroh());
        for addr in addrs {
            target = target.with_ip_addr(addr);
        }
        if let Some(relay) = relay {
            target = target.with_relay_url(relay);
        }
        if !target.is_empty() {
            self.lookup.add_endpoint_info(target);
        }
    }

    /// The addresses this node can be reached at directly, as it sees them now.
    pub fn direct_addrs(&self) -> Vec<SocketAddr> {
        self.inner.addr().ip_addrs().copied().collect()
    }

    /// The relays this node trusts, and its home among them.
    pub fn relays(&self) -> &Relays {
        &self.relays
    }

    /// Dials `node` at `addrs`, and at the addresses and relay it is remembered by; fails
    /// unless the peer proves it holds that node's key and speaks our protocol version.
    pub async fn connect(
        &self,
        node: NodeId,
        addrs: impl IntoIterator<Item = SocketAddr>,
    ) -> Result<Connection, NetError> {
        let mut target = EndpointAddr::new(node.to_iroh());
        for addr in addrs {
            target = target.with_ip_addr(addr);
        }
        let options = ConnectOptions::new()
            .with_additional_alpns(alpn_list(&self.protocol.alpn).split_off(1));
        let connecting = self
            .inner
            .connect_with_opts(target, &self.protocol.alpn, options)
            .await
            .map_err(|error| self.protocol.classify_dial(node, ConnectError::from(error)))?;
        let connection = connecting
            .await
            .map_err(|error| self.protocol.classify_dial(node, ConnectError::from(error)))?;
        self.protocol.establish(connection)
    }

    /// The next incoming golem connection, authenticated; `None` once the endpoint is closed.
    /// A peer that fails the handshake yields an error and the endpoint keeps accepting. (Gossip
    /// connections never show here: the endpoint hands them to its gossip instance.)
    ///
    /// Connections not taken are held up to a small bound; past it they are closed as busy. A
    /// node that serves nothing takes them and closes them.
    pub async fn accept(&self) -> Option<Result<Connection, NetError>> {
        self.incoming.lock().await.recv().await
    }

    /// Closes every connection and stops accepting. Returns at once; the close frames go out
    /// in the background.
    pub fn close(&self) {
        let inner = self.inner.clone();
        let gossip = self.gossip.clone();
        // A runtime that has shut down has closed the sockets already.
        drop(self.runtime.spawn(async move {
            let _ = gossip.shutdown().await;
            inner.close().await;
        }));
    }
}

/// Most relays a node uses; relays its bootstrap nodes announce beyond it are ignored.
pub const MAX_RELAYS: usize = 8;

/// The relays a node trusts: the ones it was configured with, and those it learned.
#[derive(Debug, Clone)]
pub struct Relays {
    endpoint: iroh::Endpoint,
    trust: Arc<RelayTrust>,
    learn: bool,
}

impl Relays {
    /// The relay this node keeps its home on, if it is connected to it now (not refused, not
    /// unreachable).
    pub fn connected_home(&self) -> Option<Relay> {
        use iroh::Watcher;
        let status = self.endpoint.home_relay_status().get();
        let connected = status.iter().find(|status| status.is_connected())?;
        self.trust.get(connected.url())
    }

    /// Whether `relay` is trusted.
    pub fn trusts(&self, relay: &Relay) -> bool {
        self.trust.contains(relay)
    }

    /// Trusts and uses `relay`, which a bootstrap node announced, if this node learns relays
    /// (up to [`MAX_RELAYS`] in all: a bootstrap node that names a new relay every time is not
    /// followed past it).
    pub fn learn(&self, relay: Relay) {
        if !self.learn || self.trust.contains(&relay) {
            return;
        }
        if self.trust.len() >= MAX_RELAYS {
            tracing::debug!(%relay, "not using another announced relay: {MAX_RELAYS} are in use");
            return;
        }
        tracing::info!(%relay, "using a relay a bootstrap node announced");
        self.trust.insert(relay);
        let endpoint = self.endpoint.clone();
        tokio::spawn(async move {
            endpoint
                .insert_relay(relay.url(), Arc::new(relay.config()))
                .await;
        });
    }
}

/// What golem speaks on an endpoint: checks connections and names failures.
#[derive(Debug)]
struct Protocol {
    alpn: Vec<u8>,
}

impl Protocol {
    /// Checks the negotiated version.
    fn establish(&self, connection: iroh::endpoint::Connection) -> Result<Connection, NetError> {
        if connection.alpn() != self.alpn.as_slice() {
            connection.close(VarInt::from_u32(VERSION_MISMATCH), &self.alpn);
            return Err(NetError::VersionMismatch { ours: self.ours() });
        }
        let peer = NodeId::from_iroh(connection.remote_id());
        Ok(Connection {
            inner: connection,
            peer,
        })
    }

    fn ours(&self) -> String {
        String::from_utf8_lossy(&self.alpn).into_owned()
    }

    /// What a failed dial of `expected` means: a handshake that failed on the certificate is
    /// another node (or no golem node) answering.
    fn classify_dial(&self, expected: NodeId, error: ConnectError) -> NetError {
        let connection_error = match &error {
            ConnectError::Connecting {
                source: ConnectingError::ConnectionError { source, .. },
                ..
            }
            | ConnectError::Connection { source, .. } => Some(source),
            _ => None,
        };
        match connection_error {
            Some(source) => match self.classify(source) {
                NetError::Connection(message) if is_certificate_error(source) => {
                    NetError::PeerIdentity { expected, message }
                }
                other => other,
            },
            None => match &error {
                ConnectError::Connect {
                    source: ConnectWithOptsError::SelfConnect { .. },
                    ..
                } => NetError::Connection("a node cannot dial itself".into()),
                _ => NetError::Connection(describe(&error)),
            },
        }
    }

    fn classify(&self, error: &(impl Into<Classified> + Clone)) -> NetError {
        let ours = self.ours();
        match error.clone().into() {
            Classified::Connection(error) => {
                let no_application_protocol = TransportErrorCode::crypto(0x78);
                match &error {
                    ConnectionError::ConnectionClosed(close)
                        if close.error_code == no_application_protocol =>
                    {
                        NetError::NotGolem {
                            ours,
                            message: error.to_string(),
                        }
                    }
                    ConnectionError::TransportError(transport)
                        if transport.code == no_application_protocol =>
                    {
                        NetError::NotGolem {
                            ours,
                            message: error.to_string(),
                        }
                    }
                    ConnectionError::ApplicationClosed(close)
                        if close.error_code == VarInt::from_u32(VERSION_MISMATCH) =>
                    {
                        NetError::VersionMismatch { ours }
                    }
                    _ => NetError::Connection(error.to_string()),
                }
            }
            Classified::Other(message) => NetError::Connection(message),
        }
    }
}

impl Drop for Endpoint {
    /// An endpoint dropped without [`Endpoint::close`] (a node that failed to start, say) does
    /// not keep its socket and tasks: the accept loop and gossip hold iroh's endpoint, not this.
    fn drop(&mut self) {
        self.close();
    }
}

/// Golem connections waiting for [`Endpoint::accept`] before new ones are refused as busy.
const ACCEPT_QUEUE: usize = 64;

/// Takes every incoming connection through its handshake, each in a task of its own so a slow
/// peer holds up no other: gossip connections go to gossip, golem ones (checked) to `accepted`.
async fn route_incoming(
    endpoint: iroh::Endpoint,
    gossip: iroh_gossip::Gossip,
    protocol: Arc<Protocol>,
    accepted: mpsc::Sender<Result<Connection, NetError>>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let (gossip, protocol, accepted) =
            (gossip.clone(), Arc::clone(&protocol), accepted.clone());
        tokio::spawn(async move {
            let result = match incoming.await {
                Ok(connection) if connection.alpn() == iroh_gossip::ALPN => {
                    if let Err(error) = gossip.handle_connection(connection).await {
                        tracing::debug!(%error, "gossip connection refused");
                    }
                    return;
                }
                Ok(connection) => protocol.establish(connection),
                Err(error) => Err(protocol.classify(&error)),
            };
            if let Err(mpsc::error::TrySendError::Full(Ok(connection))) = accepted.try_send(result)
            {
                connection.close("busy: too many connections waiting");
            }
        });
    }
}

/// A failure reduced to what [`Protocol::classify`] looks at.
enum Classified {
    Connection(ConnectionError),
    Other(String),
}

impl From<ConnectionError> for Classified {
    fn from(error: ConnectionError) -> Self {
        Self::Connection(error)
    }
}

impl From<ConnectingError> for Classified {
    fn from(error: ConnectingError) -> Self {
        match error {
            ConnectingError::ConnectionError { source, .. } => Self::Connection(source),
            other => Self::Other(describe(&other)),
        }
    }
}

/// Whether the handshake failed on the peer's certificate (its key is not the one dialed).
fn is_certificate_error(error: &ConnectionError) -> bool {
    let code = match error {
        ConnectionError::TransportError(transport) => transport.code,
        ConnectionError::ConnectionClosed(close) => close.error_code,
        _ => return false,
    };
    // TLS alerts travel as crypto errors 0x100 + alert: bad_certificate (42),
    // unsupported_certificate (43), certificate_unknown (46), unknown_ca (48, what a key other
    // than the one dialed gives), decrypt_error (51).
    [42u8, 43, 46, 48, 51]
        .into_iter()
        .any(|alert| code == TransportErrorCode::crypto(alert))
}

/// An error with its chain of causes, on one line.
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// Bytes a connection buffers for its peer, across its streams, before the peer must wait.
pub const RECEIVE_WINDOW: u32 = 32 << 20;

/// Bytes one stream buffers for its peer by default ([`NetConfig::stream_window`]).
///
/// The QUIC stack closes a connection whose stream holds more than 1,024 separate pieces
/// waiting for the bytes between them ("too many gaps in stream buffer"). With a window of
/// 16 MiB, heavy packet loss (a receiver starved of CPU on a busy machine, say) left that many
/// and cut the connection in the middle of a blob; 2 MiB holds at most about 1,700 packets,
/// so at most about 850 pieces, whatever is lost, and still lets a stream carry 20 MB/s at
/// 100 ms of round trip.
pub const STREAM_WINDOW: u32 = 2 << 20;

/// A peer silent this long (no packet, not even a keep-alive) is gone: killed, frozen or cut
/// off. Its connection closes and its work goes elsewhere.
const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Transport settings: a few streams a peer may open at once (the control stream, and one per
/// blob in flight: a peer waits for credit past them), windows large enough for blobs of
/// megabytes yet bounding what one connection buffers ([`RECEIVE_WINDOW`]), and keep-alives
/// that let a dead peer be noticed within [`IDLE_TIMEOUT`].
fn transport(stream_window: u32) -> QuicTransportConfig {
    QuicTransportConfig::builder()
        .max_concurrent_bidi_streams(VarInt::from_u32(16))
        .max_concurrent_uni_streams(VarInt::from_u32(64))
        .stream_receive_window(VarInt::from_u32(stream_window))
        .receive_window(VarInt::from_u32(RECEIVE_WINDOW))
        .send_window(64 << 20)
        .keep_alive_interval(std::time::Duration::from_secs(2))
        .max_idle_timeout(Some(
            IdleTimeout::try_from(IDLE_TIMEOUT).expect("10 s is a valid idle timeout"),
        ))
        .build()
}

/// Our version's ALPN, then the version-neutral one (unless they are the same).
fn alpn_list(alpn: &[u8]) -> Vec<Vec<u8>> {
    let mut list = vec![alpn.to_vec()];
    if alpn.starts_with(b"golem/") {
        list.push(ALPN_ANY_VERSION.to_vec());
    }
    list
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    async fn node(seed: u8) -> (NodeKey, Endpoint) {
        let key = NodeKey::from_secret([seed; 32]);
        let endpoint = Endpoint::bind(&key, &NetConfig::loopback())
            .await
            .expect("bind");
        (key, endpoint)
    }

    /// Accepts connections until the endpoint closes, sending what each attempt gave. The
    /// connections are kept open until the server stops.
    fn serve(
        endpoint: Arc<Endpoint>,
    ) -> tokio::sync::mpsc::UnboundedReceiver<Result<NodeId, NetError>> {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut open = Vec::new();
            while let Some(result) = endpoint.accept().await {
                let _ = sender.send(result.as_ref().map(Connection::peer).map_err(Clone::clone));
                open.extend(result.ok());
            }
        });
        receiver
    }

    async fn next(
        accepted: &mut tokio::sync::mpsc::UnboundedReceiver<Result<NodeId, NetError>>,
    ) -> Result<NodeId, NetError> {
        tokio::time::timeout(std::time::Duration::from_secs(10), accepted.recv())
            .await
            .expect("the server saw the attempt in time")
            .expect("the server is running")
    }

    #[tokio::test]
    async fn a_key_file_keeps_its_node_id_on_iroh() {
        let key = NodeKey::from_secret([7; 32]);
        let iroh_key = iroh::SecretKey::from_bytes(&[7; 32]);
        assert_eq!(key.node_id().as_bytes(), iroh_key.public().as_bytes());
        let (_, endpoint) = node(7).await;
        assert_eq!(NodeId::from_iroh(endpoint.iroh().id()), key.node_id());
        endpoint.close();
    }

    #[tokio::test]
    async fn peers_authenticate_each_other() {
        let (server_key, server) = node(1).await;
        let (client_key, client) = node(2).await;
        let addr = server.local_addr();
        assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
        let server = Arc::new(server);
        let mut accepted = serve(Arc::clone(&server));
        let connection = client
            .connect(server_key.node_id(), [addr])
            .await
            .expect("connects");
        assert_eq!(connection.peer(), server_key.node_id());
        assert_eq!(connection.path(), PathKind::Direct(addr));
        assert_eq!(connection.remote_addr(), Some(addr));
        assert_eq!(next(&mut accepted).await, Ok(client_key.node_id()));
        server.close();
    }

    #[tokio::test]
    async fn a_peer_with_another_key_is_refused() {
        let (_, server) = node(1).await;
        let (_, client) = node(2).await;
        let impostor = NodeKey::from_secret([9; 32]).node_id();
        let addr = server.local_addr();
        let server = Arc::new(server);
        let mut accepted = serve(Arc::clone(&server));
        let error = client.connect(impostor, [addr]).await.unwrap_err();
        assert!(
            matches!(&error, NetError::PeerIdentity { expected, .. } if *expected == impostor),
            "{error:?}"
        );
        assert!(error.to_string().contains(&impostor.to_string()), "{error}");
        assert!(matches!(
            next(&mut accepted).await,
            Err(NetError::Connection(_))
        ));
        // The server keeps serving: an honest dial still works.
        let honest = client
            .connect(server.node_id(), [addr])
            .await
            .expect("connects");
        assert_eq!(honest.peer(), server.node_id());
        assert_eq!(next(&mut accepted).await, Ok(client.node_id()));
        server.close();
    }

    /// A client speaking `alpn` dials a golem node: what the client and the server each saw.
    async fn dial_speaking(alpn: &[u8]) -> (NetError, NetError) {
        let (server_key, server) = node(1).await;
        let client_key = NodeKey::from_secret([2; 32]);
        let client = Endpoint::bind_with_alpn(&client_key, &NetConfig::loopback(), alpn.to_vec())
            .await
            .expect("bind");
        let addr = server.local_addr();
        let server = Arc::new(server);
        let mut accepted = serve(Arc::clone(&server));
        let client_saw = client
            .connect(server_key.node_id(), [addr])
            .await
            .unwrap_err();
        let server_saw = next(&mut accepted).await.unwrap_err();
        server.close();
        (client_saw, server_saw)
    }

    #[tokio::test]
    async fn a_peer_of_another_version_is_told_so() {
        let (client_saw, server_saw) = dial_speaking(b"golem/999").await;
        assert_eq!(
            client_saw,
            NetError::VersionMismatch {
                ours: "golem/999".into()
            }
        );
        assert_eq!(
            server_saw,
            NetError::VersionMismatch {
                ours: String::from_utf8_lossy(ALPN).into_owned()
            }
        );
    }

    #[tokio::test]
    async fn a_peer_without_a_golem_alpn_is_refused() {
        let (client_saw, server_saw) = dial_speaking(b"h3").await;
        assert!(
            matches!(client_saw, NetError::NotGolem { .. }),
            "{client_saw:?}"
        );
        assert!(
            matches!(server_saw, NetError::NotGolem { .. }),
            "{server_saw:?}"
        );
    }

    /// A UDP forwarder to `server` that passes what clients send and drops every answer, so
    /// the server sees handshakes that never complete. Each client gets its own upstream
    /// socket, as distinct peers would.
    async fn black_hole(server: SocketAddr) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = socket.local_addr().expect("address");
        let forwarded = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = Arc::clone(&forwarded);
        tokio::spawn(async move {
            let mut upstream = std::collections::HashMap::new();
            let mut buffer = vec![0u8; 65_536];
            while let Ok((len, from)) = socket.recv_from(&mut buffer).await {
                let up = match upstream.entry(from) {
                    std::collections::hash_map::Entry::Occupied(up) => up.into_mut(),
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        let up = tokio::net::UdpSocket::bind("127.0.0.1:0")
                            .await
                            .expect("bind an upstream socket");
                        slot.insert(up)
                    }
                };
                if up.send_to(&buffer[..len], server).await.is_ok() {
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        (addr, forwarded)
    }

    /// Handshakes that stall (Initials whose answers never arrive) hold up no other
    /// connection: each is taken through its handshake on its own.
    #[tokio::test]
    async fn stalled_handshakes_do_not_block_other_connections() {
        let (server_key, server) = node(1).await;
        let addr = server.local_addr();
        let server = Arc::new(server);
        let mut accepted = serve(Arc::clone(&server));
        let (hole, forwarded) = black_hole(addr).await;
        let mut stalled = Vec::new();
        for seed in 100..120 {
            let (_, client) = node(seed).await;
            let server = server_key.node_id();
            stalled.push(tokio::spawn(async move {
                let result = client.connect(server, [hole]).await;
                (client, result.is_ok())
            }));
        }
        // Give every stalled Initial time to reach the server first.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert!(
            forwarded.load(std::sync::atomic::Ordering::Relaxed) >= 20,
            "the stalled Initials reached the server"
        );
        let (honest_key, honest) = node(2).await;
        let connection = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            honest.connect(server_key.node_id(), [addr]),
        )
        .await
        .expect("the honest dial was not held up by the stalled ones")
        .expect("connects");
        assert_eq!(connection.peer(), server_key.node_id());
        assert_eq!(next(&mut accepted).await, Ok(honest_key.node_id()));
        for task in stalled {
            if task.is_finished() {
                let (_, connected) = task.await.expect("the dial task ran");
                assert!(!connected, "a handshake through the black hole completed");
            } else {
                task.abort();
            }
        }
        server.close();
    }
}
