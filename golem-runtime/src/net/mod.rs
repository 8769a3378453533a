//! QUIC transport between nodes: quinn with rustls, authenticated by node keys.
//!
//! * [`tls`]: each node's certificate is self-signed by its ed25519 node key; both sides check
//!   the peer's certificate key, and a dialer checks it against the node id it expects.
//! * [`Endpoint`]: binds a UDP socket, accepts and dials connections, and refuses peers that
//!   present another key or speak another protocol version, each with its own [`NetError`].
//! * [`FramedSend`] / [`FramedRecv`]: protocol frames on QUIC streams; a bad frame ends its
//!   stream with a typed [`StreamError`], not the connection.
//!
//! ALPN carries the protocol version (`golem/2`). Every node also accepts the bare `golem`
//! ALPN, so that a peer of another version completes the handshake and is then closed with
//! [`VERSION_MISMATCH`] and our version as the reason: it learns why, instead of seeing a bare
//! TLS alert. A peer that is not a golem node fails the handshake.

mod endpoint;
mod framed;
pub mod tls;

pub use self::endpoint::{Connection, Endpoint, NetError};
pub use self::framed::{BAD_FRAME, FramedRecv, FramedSend, StreamError};

/// Application close code: the peer speaks another protocol version.
pub const VERSION_MISMATCH: u32 = 1;

/// The ALPN every golem node accepts besides its own version, to report version mismatches.
pub const ALPN_ANY_VERSION: &[u8] = b"golem";
