//! The wire protocol between requestors and providers, without sockets.
//!
//! * [`frame`]: postcard messages behind a length prefix, with a hard size cap; a decoder that
//!   takes bytes as they arrive and yields whole frames, or a typed error that ends the stream.
//!
//! The transport (QUIC) only moves bytes; everything here is tested in memory.

pub mod frame;

/// Version of the wire protocol. It is part of the ALPN, so peers of different versions fail
/// the TLS handshake with a clear error instead of misreading each other's frames.
pub const PROTOCOL_VERSION: u32 = 1;

/// The ALPN identifier of [`PROTOCOL_VERSION`].
pub const ALPN: &[u8] = b"golem/1";
