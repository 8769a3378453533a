//! QUIC transport between nodes: iroh (QUIC through noq, TLS 1.3 with raw public keys).
//!
//! A node's ed25519 key is its iroh secret key, so its [`NodeId`] is
//! its iroh `EndpointId` and both sides of every connection are authenticated by the handshake
//! itself: a dialer names the node it expects and the handshake fails unless the peer holds
//! that key.
//!
//! * [`Endpoint`]: binds a UDP socket as [`NetConfig`] says (no address lookup service, only
//!   the relays named there), accepts and dials connections, and refuses peers that present
//!   another key or speak another protocol version, each with its own [`NetError`].
//! * [`Connection`]: an authenticated connection; [`Connection::path`] says whether its packets
//!   go direct or through a relay.
//! * [`relay`]: relays, where nodes behind NATs meet and learn their public address: how one
//!   is named (`NODE_ID@HOST:PORT`) and trusted (its certificate carries that node's key), and
//!   the relay server a provider runs with the `relay-server` feature.
//! * [`FramedSend`] / [`FramedRecv`]: protocol frames on QUIC streams; a bad frame ends its
//!   stream with a typed [`StreamError`], not the connection.
//!
//! ALPN carries the protocol version (`golem/5`). Every node also accepts the bare `golem`
//! ALPN, so that a peer of another version completes the handshake and is then closed with
//! [`VERSION_MISMATCH`] and our version as the reason: it learns why, instead of seeing a bare
//! TLS alert. A peer that is not a golem node fails the handshake.

mod endpoint;
mod framed;
pub mod relay;

pub use self::endpoint::{
    Connection, Endpoint, GOSSIP_MESSAGE_BYTES, MAX_RELAYS, NetConfig, NetError, PathKind,
    RECEIVE_WINDOW, Relays, STREAM_WINDOW,
};
pub use self::framed::{BAD_FRAME, FramedRecv, FramedSend, StreamError};
pub use self::relay::Relay;
pub use iroh::RelayUrl;

use std::net::{SocketAddr, ToSocketAddrs};

use crate::identity::NodeId;

/// Parses `NODE_ID@HOST:PORT`, how a node (or relay) is named; a host name is resolved (first
/// address). The error says what is wrong.
pub(crate) fn parse_node_at(text: &str) -> Result<(NodeId, SocketAddr), String> {
    let Some((node, host)) = text.split_once('@') else {
        return Err(
            "the node id is missing: a node is dialed by its id, which a provider \
                    prints (as NODE_ID@HOST:PORT) when it starts"
                .into(),
        );
    };
    let node = node.parse::<NodeId>().map_err(|e| e.to_string())?;
    let addr = match host.parse::<SocketAddr>() {
        Ok(addr) => addr,
        Err(_) => host
            .to_socket_addrs()
            .map_err(|e| e.to_string())?
            .next()
            .ok_or_else(|| "the host has no address".to_string())?,
    };
    Ok((node, addr))
}

/// Application close code: the peer speaks another protocol version.
pub const VERSION_MISMATCH: u32 = 1;

/// The ALPN every golem node accepts besides its own version, to report version mismatches.
pub const ALPN_ANY_VERSION: &[u8] = b"golem";
