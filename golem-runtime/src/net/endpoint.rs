//! A node's QUIC endpoint: accepts and dials authenticated connections.

use std::net::SocketAddr;
use std::sync::Arc;

use quinn::crypto::rustls::{HandshakeData, QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, TransportErrorCode, VarInt};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;

use super::tls::{NodeCertificate, PeerVerifier, SERVER_NAME, node_id_of};
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
        /// The operating system's reason.
        message: String,
    },
    /// TLS or QUIC refused the endpoint's configuration.
    #[error("invalid transport configuration: {0}")]
    Config(String),
    /// The peer presented another key than the node dialed.
    #[error("the peer at {addr} is not node {expected}: {}", describe_found(found))]
    PeerIdentity {
        /// The address dialed.
        addr: SocketAddr,
        /// The node expected there.
        expected: NodeId,
        /// The node that answered, when its certificate carried a node key.
        found: Option<NodeId>,
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
    /// The connection failed for another reason (timeout, reset, refused).
    #[error("connection failed: {0}")]
    Connection(String),
}

fn describe_found(found: &Option<NodeId>) -> String {
    match found {
        Some(found) => format!("it proved to be node {found}"),
        None => "its certificate carries no node key".into(),
    }
}

/// An authenticated connection to a peer node.
#[derive(Debug, Clone)]
pub struct Connection {
    inner: quinn::Connection,
    peer: NodeId,
}

impl Connection {
    /// The peer's node id, proven by the TLS handshake.
    pub fn peer(&self) -> NodeId {
        self.peer
    }

    /// The peer's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.inner.remote_address()
    }

    /// The underlying quinn connection, for opening streams.
    pub fn quinn(&self) -> &quinn::Connection {
        &self.inner
    }
}

/// A node's QUIC endpoint, listening and dialing with its node key.
#[derive(Debug)]
pub struct Endpoint {
    endpoint: quinn::Endpoint,
    node_id: NodeId,
    certificate: NodeCertificate,
    provider: Arc<CryptoProvider>,
    alpn: Vec<u8>,
}

impl Endpoint {
    /// Listens on `addr` (port 0 picks a free one) as the node of `key`.
    pub fn bind(addr: SocketAddr, key: &NodeKey) -> Result<Self, NetError> {
        Self::bind_with_alpn(addr, key, ALPN.to_vec())
    }

    /// [`Endpoint::bind`] speaking the protocol named by `alpn`: lets tests stand in for a node
    /// of another version.
    pub(crate) fn bind_with_alpn(
        addr: SocketAddr,
        key: &NodeKey,
        alpn: Vec<u8>,
    ) -> Result<Self, NetError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certificate =
            NodeCertificate::new(key).map_err(|error| NetError::Config(error.to_string()))?;
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_error)?
            .with_client_cert_verifier(PeerVerifier::new(None, &provider))
            .with_single_cert(
                vec![certificate.certificate.clone()],
                certificate.private_key_der(),
            )
            .map_err(config_error)?;
        tls.alpn_protocols = alpn_list(&alpn);
        let crypto = QuicServerConfig::try_from(tls).map_err(config_error)?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(transport());
        let bind_error = |error: std::io::Error| NetError::Bind {
            addr,
            message: error.to_string(),
        };
        let socket = udp_socket(addr).map_err(bind_error)?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| NetError::Config("no async runtime (tokio) is running".into()))?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            runtime,
        )
        .map_err(bind_error)?;
        Ok(Self {
            endpoint,
            node_id: key.node_id(),
            certificate,
            provider,
            alpn,
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The address the endpoint listens on.
    pub fn local_addr(&self) -> Result<SocketAddr, NetError> {
        self.endpoint
            .local_addr()
            .map_err(|error| NetError::Connection(error.to_string()))
    }

    /// Dials the node `expected` at `addr`; fails unless the peer proves it holds that node's key
    /// and speaks our protocol version.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        expected: NodeId,
    ) -> Result<Connection, NetError> {
        self.dial(addr, Some(expected)).await
    }

    /// Dials whatever node listens at `addr` (a bootstrap address given without its node id).
    /// The peer still proves it holds the key its certificate names; [`Connection::peer`] says
    /// which node that is.
    pub async fn connect_any(&self, addr: SocketAddr) -> Result<Connection, NetError> {
        self.dial(addr, None).await
    }

    async fn dial(
        &self,
        addr: SocketAddr,
        expected: Option<NodeId>,
    ) -> Result<Connection, NetError> {
        let verifier = PeerVerifier::new(expected, &self.provider);
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_error)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::clone(&verifier) as _)
            .with_client_auth_cert(
                vec![self.certificate.certificate.clone()],
                self.certificate.private_key_der(),
            )
            .map_err(config_error)?;
        tls.alpn_protocols = alpn_list(&self.alpn);
        let crypto = QuicClientConfig::try_from(tls).map_err(config_error)?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(transport());
        let connecting = self
            .endpoint
            .connect_with(config, addr, SERVER_NAME)
            .map_err(|error| NetError::Connection(error.to_string()))?;
        let connection =
            connecting
                .await
                .map_err(|error| match (expected, verifier.presented()) {
                    (Some(expected), Some(found)) if found != expected => NetError::PeerIdentity {
                        addr,
                        expected,
                        found: Some(found),
                    },
                    (Some(expected), None)
                        if error.to_string().contains("invalid peer certificate") =>
                    {
                        NetError::PeerIdentity {
                            addr,
                            expected,
                            found: None,
                        }
                    }
                    _ => self.classify(error),
                })?;
        self.establish(connection)
    }

    /// The next incoming connection, authenticated; `None` once the endpoint is closed. A peer
    /// that fails the handshake yields an error and the endpoint keeps accepting.
    pub async fn accept(&self) -> Option<Result<Connection, NetError>> {
        let incoming = self.endpoint.accept().await?;
        Some(match incoming.await {
            Ok(connection) => self.establish(connection),
            Err(error) => Err(self.classify(error)),
        })
    }

    /// Closes every connection and stops accepting.
    pub fn close(&self) {
        self.endpoint.close(VarInt::from_u32(0), b"shutting down");
    }

    /// Checks the negotiated version and reads the peer's node id from its certificate.
    fn establish(&self, connection: quinn::Connection) -> Result<Connection, NetError> {
        let protocol = connection
            .handshake_data()
            .and_then(|data| data.downcast::<HandshakeData>().ok())
            .and_then(|data| data.protocol);
        if protocol.as_deref() != Some(self.alpn.as_slice()) {
            connection.close(VarInt::from_u32(VERSION_MISMATCH), &self.alpn);
            return Err(NetError::VersionMismatch {
                ours: String::from_utf8_lossy(&self.alpn).into_owned(),
            });
        }
        let peer = connection
            .peer_identity()
            .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
            .and_then(|chain| chain.first().and_then(node_id_of))
            .ok_or_else(|| NetError::Connection("the peer presented no node certificate".into()))?;
        Ok(Connection {
            inner: connection,
            peer,
        })
    }

    fn classify(&self, error: ConnectionError) -> NetError {
        let ours = String::from_utf8_lossy(&self.alpn).into_owned();
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
}

/// UDP buffers asked of the kernel: the default (about 208 KiB) drops packets of bulk
/// transfers on loopback. The kernel may grant less (`net.core.rmem_max`).
const UDP_BUFFER_BYTES: usize = 4 << 20;

fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Accept IPv4 too when bound to [::], as quinn's own binding does.
        let _ = socket.set_only_v6(false);
    }
    for (what, result) in [
        ("receive", socket.set_recv_buffer_size(UDP_BUFFER_BYTES)),
        ("send", socket.set_send_buffer_size(UDP_BUFFER_BYTES)),
    ] {
        if let Err(error) = result {
            tracing::debug!(%error, "cannot enlarge the UDP {what} buffer");
        }
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// A peer silent this long (no packet, not even a keep-alive) is gone: killed, frozen or cut
/// off. Its connection closes and its work goes elsewhere.
const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Transport settings: room for many streams in flight (one per blob, besides the control
/// stream), windows large enough for blobs of megabytes, and keep-alives that let a dead peer be
/// noticed within [`IDLE_TIMEOUT`].
fn transport() -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(1024))
        .max_concurrent_uni_streams(VarInt::from_u32(1024))
        .stream_receive_window(VarInt::from_u32(16 << 20))
        .receive_window(VarInt::from_u32(64 << 20))
        .send_window(64 << 20)
        .keep_alive_interval(Some(std::time::Duration::from_secs(2)))
        .max_idle_timeout(Some(
            IDLE_TIMEOUT
                .try_into()
                .expect("10 s is a valid idle timeout"),
        ));
    Arc::new(transport)
}

/// Our version's ALPN, then the version-neutral one (unless they are the same).
fn alpn_list(alpn: &[u8]) -> Vec<Vec<u8>> {
    let mut list = vec![alpn.to_vec()];
    if alpn.starts_with(b"golem/") {
        list.push(ALPN_ANY_VERSION.to_vec());
    }
    list
}

fn config_error(error: impl std::fmt::Display) -> NetError {
    NetError::Config(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    fn node(seed: u8) -> (NodeKey, Endpoint) {
        let key = NodeKey::from_secret([seed; 32]);
        let endpoint = Endpoint::bind(loopback(), &key).expect("bind");
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
    async fn peers_authenticate_each_other() {
        let (server_key, server) = node(1);
        let (client_key, client) = node(2);
        let addr = server.local_addr().expect("addr");
        let server = Arc::new(server);
        let mut accepted = serve(Arc::clone(&server));
        let connection = client
            .connect(addr, server_key.node_id())
            .await
            .expect("connects");
        assert_eq!(connection.peer(), server_key.node_id());
        assert_eq!(next(&mut accepted).await, Ok(client_key.node_id()));
        server.close();
    }

    #[tokio::test]
    async fn a_peer_with_another_key_is_refused() {
        let (_, server) = node(1);
        let (_, client) = node(2);
        let impostor = NodeKey::from_secret([9; 32]).node_id();
        let addr = server.local_addr().expect("addr");
        let server = Arc::new(server);
        let mut accepted = serve(Arc::clone(&server));
        let error = client.connect(addr, impostor).await.unwrap_err();
        assert_eq!(
            error,
            NetError::PeerIdentity {
                addr,
                expected: impostor,
                found: Some(server.node_id())
            }
        );
        assert!(error.to_string().contains(&server.node_id().to_string()));
        assert!(matches!(
            next(&mut accepted).await,
            Err(NetError::Connection(_))
        ));
        // The server keeps serving: an honest dial still works.
        let honest = client
            .connect(addr, server.node_id())
            .await
            .expect("connects");
        assert_eq!(honest.peer(), server.node_id());
        assert_eq!(next(&mut accepted).await, Ok(client.node_id()));
        server.close();
    }

    /// A client speaking `alpn` dials a golem node: what the client and the server each saw.
    async fn dial_speaking(alpn: &[u8]) -> (NetError, NetError) {
        let (server_key, server) = node(1);
        let client_key = NodeKey::from_secret([2; 32]);
        let client =
            Endpoint::bind_with_alpn(loopback(), &client_key, alpn.to_vec()).expect("bind");
        let addr = server.local_addr().expect("addr");
        let server = Arc::new(server);
        let mut accepted = serve(Arc::clone(&server));
        let client_saw = client
            .connect(addr, server_key.node_id())
            .await
            .unwrap_err();
        let server_saw = next(&mut accepted).await.unwrap_err();
        server.close();
        (client_saw, server_saw)
    }

    #[tokio::test]
    async fn a_peer_of_another_version_is_told_so() {
        let (client_saw, server_saw) = dial_speaking(b"golem/3").await;
        assert_eq!(
            client_saw,
            NetError::VersionMismatch {
                ours: "golem/3".into()
            }
        );
        assert_eq!(
            server_saw,
            NetError::VersionMismatch {
                ours: "golem/2".into()
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
}
