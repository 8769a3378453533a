//! QUIC transport between nodes: iroh (QUIC through noq, TLS 1.3 with raw public keys).
//!
//! A node's ed25519 key is its iroh secret key, so its [`NodeId`](crate::identity::NodeId) is
//! its iroh `EndpointId` and both sides of every connection are authenticated by the handshake
//! itself: a dialer names the node it expects and the handshake fails unless the peer holds
//! that key.
//!
//! * [`Endpoint`]: binds a UDP socket as [`NetConfig`] says (no address lookup service, only
//!   the relays named there), accepts and dials connections, and refuses peers that present
//!   another key or speak another protocol version, each with its own [`NetError`].
//! * [`Connection`]: an authenticated connection; [`Connection::path`] says whether its packets
//!   go direct or through a relay.
//! * [`FramedSend`] / [`FramedRecv`]: protocol frames on QUIC streams; a bad frame ends its
//!   stream with a typed [`StreamError`], not the connection.
//!
//! ALPN carries the protocol version (`golem/3`). Every node also accepts the bare `golem`
//! ALPN, so that a peer of another version completes the handshake and is then closed with
//! [`VERSION_MISMATCH`] and our version as the reason: it learns why, instead of seeing a bare
//! TLS alert. A peer that is not a golem node fails the handshake.

mod endpoint;
mod framed;

pub use self::endpoint::{
    Connection, Endpoint, GOSSIP_MESSAGE_BYTES, NetConfig, NetError, PathKind,
};
pub use self::framed::{BAD_FRAME, FramedRecv, FramedSend, StreamError};
pub use iroh::RelayUrl;

/// Application close code: the peer speaks another protocol version.
pub const VERSION_MISMATCH: u32 = 1;

/// The ALPN every golem node accepts besides its own version, to report version mismatches.
pub const ALPN_ANY_VERSION: &[u8] = b"golem";
