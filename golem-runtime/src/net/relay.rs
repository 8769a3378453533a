//! Relays: where nodes that cannot reach each other directly (behind NATs) meet, and where
//! they learn their public address.
//!
//! Any provider on a public address can serve as a relay (`RelayServer`, with the
//! `relay-server` feature: the relay server of `iroh-relay`). A relay is named like any node, `NODE_ID@HOST:PORT`: HTTPS (the relay
//! protocol, over WebSocket) on TCP port PORT, and QUIC address discovery on UDP port PORT.
//!
//! **Trust.** A relay's TLS certificate is self-signed with the relay's node key, and a client
//! accepts it only if that key is the node id it was given for that address (trust is per IP
//! address: TLS names a server without its port). There are no certificate authorities: a relay is trusted because the user named it
//! (`--relay`), or because a bootstrap node the user named announced it, signed with its own
//! key; a relay any other peer names is never trusted. Relays never see what nodes say to
//! each other: every relayed packet is QUIC, encrypted and authenticated end to end by the two
//! nodes' keys. A relay can only delay or drop packets, or see which nodes talk; a node keeps
//! any direct path it has when its relay fails.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, PoisonError, RwLock};

use iroh::RelayUrl;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::identity::NodeId;

/// A relay: the node that serves it, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Relay {
    /// The relay's node id: its TLS certificate must carry this key.
    pub node: NodeId,
    /// Its HTTPS (TCP) and QUIC address discovery (UDP) port, on one address.
    pub addr: SocketAddr,
}

impl Relay {
    /// The relay's URL, as iroh names it.
    pub fn url(&self) -> RelayUrl {
        relay_url(self.addr)
    }

    /// Whether a peer could mean it: a unicast address and a port. (Peers name relays in their
    /// announcements; an unspecified or multicast address is no relay.)
    pub fn is_plausible(&self) -> bool {
        is_dialable(self.addr)
    }

    /// How iroh reaches it: the relay protocol at [`Relay::url`], address discovery on the same
    /// port over UDP.
    pub(crate) fn config(&self) -> iroh::RelayConfig {
        iroh::RelayConfig::new(
            self.url(),
            Some(iroh_relay::RelayQuicConfig::new(self.addr.port())),
        )
    }
}

/// Whether some node could have address `addr`: not unspecified, multicast or broadcast (also
/// as IPv4-mapped IPv6), and a port.
pub(crate) fn is_dialable(addr: SocketAddr) -> bool {
    let ip = addr.ip().to_canonical();
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    addr.port() != 0 && !ip.is_unspecified() && !ip.is_multicast() && !broadcast
}

fn relay_url(addr: SocketAddr) -> RelayUrl {
    // An IP address and a port always make a valid URL.
    #[allow(clippy::expect_used)]
    format!("https://{addr}/")
        .parse()
        .expect("an https URL of a socket address")
}

impl fmt::Display for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.node, self.addr)
    }
}

/// A relay address that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid relay `{text}` (expected NODE_ID@HOST:PORT): {reason}")]
pub struct RelayParseError {
    text: String,
    reason: String,
}

impl FromStr for Relay {
    type Err = RelayParseError;

    /// Parses `NODE_ID@HOST:PORT`, as the relay printed it; a host name is resolved.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (node, addr) = super::parse_node_at(text).map_err(|reason| RelayParseError {
            text: text.into(),
            reason,
        })?;
        Ok(Self { node, addr })
    }
}

/// The relays a node trusts, by the address it reaches them at, and the TLS verifier that
/// holds them to it: a relay's certificate must carry the key of the node named for its
/// address, and the handshake must be signed with that key.
///
/// TLS names a server by its IP address only (no port), so trust is per IP: a relay trusted at
/// one port of an address is accepted at any port of it.
#[derive(Debug, Default)]
pub(crate) struct RelayTrust {
    by_url: RwLock<HashMap<RelayUrl, Relay>>,
}

impl RelayTrust {
    /// Trusts `relay` (in place of any relay trusted at its URL before).
    pub(crate) fn insert(&self, relay: Relay) {
        self.by_url
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(relay.url(), relay);
    }

    /// The trusted relay at `url`.
    pub(crate) fn get(&self, url: &RelayUrl) -> Option<Relay> {
        self.by_url
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(url)
            .copied()
    }

    /// Whether `relay` is trusted (its node, at its address).
    pub(crate) fn contains(&self, relay: &Relay) -> bool {
        self.get(&relay.url()).is_some_and(|known| known == *relay)
    }

    /// How many relays are trusted.
    pub(crate) fn len(&self) -> usize {
        self.by_url
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn pinned(&self, ip: IpAddr, key: &[u8]) -> bool {
        self.by_url
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .any(|relay| relay.addr.ip() == ip && ed25519_spki(&relay.node) == key)
    }

    /// A TLS verifier for relay connections that accepts only trusted relays.
    pub(crate) fn verifier(self: &Arc<Self>) -> iroh::tls::CaTlsConfig {
        let trust = Arc::clone(self);
        iroh::tls::CaTlsConfig::custom_server_cert_verifier(Arc::new(move |provider| {
            let verifier: Arc<dyn ServerCertVerifier> = Arc::new(PinnedRelays {
                trust: Arc::clone(&trust),
                provider,
            });
            Ok(verifier)
        }))
    }
}

/// The DER SubjectPublicKeyInfo of an ed25519 key (RFC 8410): a fixed prefix, then the key.
fn ed25519_spki(node: &NodeId) -> Vec<u8> {
    const PREFIX: [u8; 12] = [
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    let mut spki = PREFIX.to_vec();
    spki.extend_from_slice(node.as_bytes());
    spki
}

#[derive(Debug)]
struct PinnedRelays {
    trust: Arc<RelayTrust>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedRelays {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ServerName::IpAddress(ip) = server_name else {
            return Err(rustls::Error::General(format!(
                "relay {server_name:?} is not named by its IP address"
            )));
        };
        let ip = IpAddr::from(*ip);
        let certificate = rustls::server::ParsedCertificate::try_from(end_entity)?;
        let key = certificate.subject_public_key_info();
        if self.trust.pinned(ip, key.as_ref()) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the relay at {ip} does not hold the key of a relay trusted there"
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(feature = "relay-server")]
pub use self::server::{RelayServer, RelayServerConfig};

#[cfg(feature = "relay-server")]
mod server {
    use std::net::SocketAddr;
    use std::num::NonZeroU32;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use iroh_relay::server::{
        Access, AccessControl, CertConfig, ClientRateLimit, ClientRequest, ConnectionId,
        QuicConfig, RelayConfig, Server, ServerConfig, TlsConfig,
    };
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    use super::Relay;
    use crate::identity::NodeKey;
    use crate::net::NetError;

    /// How a provider serves as a relay.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct RelayServerConfig {
        /// Where to listen: HTTPS on this TCP port, QUIC address discovery on the same UDP
        /// port. Port 0 picks a free one.
        pub bind: SocketAddr,
        /// The address clients reach it at, when it differs from `bind` (`bind` is
        /// unspecified, or a public address and port are forwarded to it: both TCP and UDP).
        pub public: Option<SocketAddr>,
        /// Most clients connected at once; more are refused.
        pub max_clients: usize,
        /// Bytes a second each client may send through the relay (bursts up to four times
        /// that).
        pub client_bytes_per_second: NonZeroU32,
    }

    impl RelayServerConfig {
        /// Listening on `bind`, at most 256 clients of 1 MiB/s each.
        pub fn new(bind: SocketAddr) -> Self {
            Self {
                bind,
                public: None,
                max_clients: 256,
                client_bytes_per_second: NonZeroU32::MIN.saturating_add((1 << 20) - 1),
            }
        }
    }

    /// A running relay; dropping it stops it.
    #[derive(Debug)]
    pub struct RelayServer {
        server: Server,
        relay: Relay,
        clients: Arc<Capped>,
    }

    impl RelayServer {
        /// Starts serving as the relay of node `key`, with a certificate made from that key.
        pub async fn spawn(key: &NodeKey, config: &RelayServerConfig) -> Result<Self, NetError> {
            let bind_error = |message: String| NetError::Bind {
                addr: config.bind,
                message,
            };
            // One port for both protocols. Port 0: take a free TCP port and ask for it over
            // UDP too, again if another socket took it meanwhile.
            let attempts = if config.bind.port() == 0 { 5 } else { 1 };
            let mut last_error = String::new();
            for _ in 0..attempts {
                let mut bind = config.bind;
                if bind.port() == 0 {
                    let probe = std::net::TcpListener::bind(bind)
                        .map_err(|error| bind_error(error.to_string()))?;
                    bind.set_port(
                        probe
                            .local_addr()
                            .map_err(|error| bind_error(error.to_string()))?
                            .port(),
                    );
                }
                match Self::spawn_at(key, config, bind).await {
                    Ok(server) => return Ok(server),
                    Err(NetError::Bind { message, .. }) => last_error = message,
                    Err(other) => return Err(other),
                }
            }
            Err(bind_error(last_error))
        }

        async fn spawn_at(
            key: &NodeKey,
            config: &RelayServerConfig,
            bind: SocketAddr,
        ) -> Result<Self, NetError> {
            let bind_error = |message: String| NetError::Bind {
                addr: bind,
                message,
            };
            let public = match config.public {
                Some(public) => public,
                None if bind.ip().is_unspecified() => {
                    return Err(NetError::Config(format!(
                        "a relay listening on {bind} needs the public address clients reach \
                         it at"
                    )));
                }
                None => bind,
            };
            let relay = Relay {
                node: key.node_id(),
                addr: public,
            };
            if !relay.is_plausible() {
                return Err(NetError::Config(format!(
                    "clients cannot reach a relay at {public}: give its public address and port"
                )));
            }
            let tls = certificate(key, public)?;
            let clients = Arc::new(Capped {
                max: config.max_clients,
                now: AtomicUsize::new(0),
            });
            // The plain-HTTP listener iroh-relay opens beside HTTPS (a captive-portal check no
            // client of ours makes) stays on loopback.
            let loopback: std::net::IpAddr = if bind.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            };
            let mut relay_config = RelayConfig::new(SocketAddr::new(loopback, 0));
            relay_config.tls = Some(TlsConfig::new(
                bind,
                CertConfig::Manual {
                    server_config: tls.clone(),
                },
            ));
            let mut rate = ClientRateLimit::new(config.client_bytes_per_second);
            rate.max_burst_bytes = config
                .client_bytes_per_second
                .checked_mul(NonZeroU32::new(4).unwrap_or(NonZeroU32::MIN));
            relay_config.limits.client_rx = Some(rate);
            relay_config.key_cache_capacity = Some(config.max_clients.saturating_mul(4).max(64));
            relay_config.access = Arc::clone(&clients) as _;
            let mut server = ServerConfig::default();
            server.relay = Some(relay_config);
            let mut quic = QuicConfig::new(bind);
            quic.server_config = Some(tls);
            server.quic = Some(quic);
            let server = Server::spawn(server)
                .await
                .map_err(|error| bind_error(error.to_string()))?;
            tracing::info!(%relay, max_clients = config.max_clients, "serving as a relay");
            Ok(Self {
                server,
                relay,
                clients,
            })
        }

        /// The relay, as clients name it.
        pub fn relay(&self) -> Relay {
            self.relay
        }

        /// Clients connected now.
        pub fn clients(&self) -> usize {
            self.clients.now.load(Ordering::Relaxed)
        }

        /// Stops serving.
        pub async fn shutdown(self) {
            let _ = self.server.shutdown().await;
        }
    }

    /// Admits clients up to a cap.
    #[derive(Debug)]
    struct Capped {
        max: usize,
        now: AtomicUsize,
    }

    impl AccessControl for Capped {
        async fn on_connect(&self, request: &ClientRequest) -> Access {
            let admitted = self
                .now
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                    (now < self.max).then_some(now + 1)
                })
                .is_ok();
            if admitted {
                Access::Allow
            } else {
                tracing::debug!(client = %request.endpoint_id().fmt_short(), "relay full");
                Access::Deny {
                    reason: Some(format!("this relay serves {} clients at most", self.max)),
                }
            }
        }

        fn on_disconnect(&self, _node: iroh::EndpointId, _connection: ConnectionId) {
            let _ = self
                .now
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                    now.checked_sub(1)
                });
        }
    }

    /// A TLS 1.3 configuration with a certificate for `public`, self-signed with the node key.
    fn certificate(key: &NodeKey, public: SocketAddr) -> Result<rustls::ServerConfig, NetError> {
        let config_error = |error: String| NetError::Config(format!("relay certificate: {error}"));
        // PKCS#8 v1 of an ed25519 key (RFC 8410): a fixed prefix, then the 32-byte secret.
        const PREFIX: [u8; 16] = [
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        let mut pkcs8 = PREFIX.to_vec();
        pkcs8.extend_from_slice(&key.secret_bytes());
        let pkcs8 = PrivatePkcs8KeyDer::from(pkcs8);
        let signing = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)
            .map_err(|error| config_error(error.to_string()))?;
        let params = rcgen::CertificateParams::new(vec![public.ip().to_string()])
            .map_err(|error| config_error(error.to_string()))?;
        let cert = params
            .self_signed(&signing)
            .map_err(|error| config_error(error.to_string()))?;
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| config_error(error.to_string()))?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], PrivateKeyDer::Pkcs8(pkcs8))
        .map_err(|error| config_error(error.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeKey;

    #[test]
    fn a_relay_is_named_like_a_node_and_trusted_at_its_address_only() {
        let node = NodeKey::from_secret([7; 32]).node_id();
        let relay: Relay = format!("{node}@192.0.2.1:3340").parse().expect("parses");
        assert_eq!(relay.addr, "192.0.2.1:3340".parse().expect("addr"));
        assert_eq!(relay.to_string().parse::<Relay>(), Ok(relay));
        assert_eq!(relay.url().to_string(), "https://192.0.2.1:3340/");
        assert!("192.0.2.1:3340".parse::<Relay>().is_err());

        let trust = RelayTrust::default();
        trust.insert(relay);
        assert!(trust.contains(&relay));
        assert_eq!(trust.get(&relay.url()), Some(relay));
        let spki = ed25519_spki(&node);
        assert!(trust.pinned(relay.addr.ip(), &spki));
        assert!(!trust.pinned("192.0.2.2".parse().expect("ip"), &spki));
        let other = NodeKey::from_secret([8; 32]).node_id();
        assert!(!trust.pinned(relay.addr.ip(), &ed25519_spki(&other)));
        // Another key named for the same address replaces the first.
        let replaced = Relay {
            node: other,
            ..relay
        };
        trust.insert(replaced);
        assert!(!trust.contains(&relay));
        assert!(trust.pinned(relay.addr.ip(), &ed25519_spki(&other)));
        assert!(!trust.pinned(relay.addr.ip(), &spki));
    }

    #[test]
    fn addresses_no_node_has_are_not_dialable() {
        for bad in [
            "0.0.0.0:1",
            "255.255.255.255:1",
            "224.0.0.1:1",
            "[::]:1",
            "[ff02::1]:1",
            "[::ffff:224.0.0.1]:1",
            "[::ffff:0.0.0.0]:1",
            "192.0.2.1:0",
        ] {
            assert!(!is_dialable(bad.parse().expect("address")), "{bad}");
        }
        assert!(is_dialable("192.0.2.1:1".parse().expect("address")));
        assert!(is_dialable("[2001:db8::1]:1".parse().expect("address")));
    }

    #[cfg(feature = "relay-server")]
    mod serving {
        use std::time::{Duration, Instant};

        use super::super::{RelayServer, RelayServerConfig};
        use super::*;
        use crate::net::{Endpoint, NetConfig};

        async fn relay(max_clients: usize) -> RelayServer {
            let mut config = RelayServerConfig::new("127.0.0.1:0".parse().expect("addr"));
            config.max_clients = max_clients;
            RelayServer::spawn(&NodeKey::from_secret([0x70; 32]), &config)
                .await
                .expect("relay")
        }

        async fn node(secret: u8, relay: Relay) -> Endpoint {
            let mut config = NetConfig::loopback();
            config.relays = vec![relay];
            Endpoint::bind(&NodeKey::from_secret([secret; 32]), &config)
                .await
                .expect("endpoint")
        }

        async fn home(endpoint: &Endpoint, within: Duration) -> Option<Relay> {
            let started = Instant::now();
            loop {
                if let Some(home) = endpoint.relays().connected_home() {
                    return Some(home);
                }
                if started.elapsed() > within {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn nodes_meet_through_a_relay_that_holds_the_key_they_were_given() {
            let server = relay(8).await;
            let relay = server.relay();
            let provider = node(0x71, relay).await;
            let requestor = node(0x72, relay).await;
            assert_eq!(home(&provider, Duration::from_secs(10)).await, Some(relay));
            assert_eq!(home(&requestor, Duration::from_secs(10)).await, Some(relay));
            assert_eq!(server.clients(), 2);
            // Known by the relay only: no address to dial directly.
            requestor.remember(provider.node_id(), [], Some(relay.url()));
            let connection = requestor
                .connect(provider.node_id(), [])
                .await
                .expect("connected through the relay");
            assert_eq!(connection.peer(), provider.node_id());
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_relay_with_another_key_is_not_used() {
            let server = relay(8).await;
            let impostor = Relay {
                node: NodeKey::from_secret([0x73; 32]).node_id(),
                addr: server.relay().addr,
            };
            let client = node(0x74, impostor).await;
            assert_eq!(home(&client, Duration::from_secs(3)).await, None);
            assert_eq!(server.clients(), 0);
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_full_relay_refuses_more_clients() {
            let server = relay(1).await;
            let first = node(0x75, server.relay()).await;
            assert!(home(&first, Duration::from_secs(10)).await.is_some());
            let second = node(0x76, server.relay()).await;
            assert_eq!(home(&second, Duration::from_secs(3)).await, None);
            assert_eq!(server.clients(), 1);
            // A place freed is taken.
            first.close();
            drop(first);
            assert!(home(&second, Duration::from_secs(20)).await.is_some());
        }
    }
}
