//! The wire protocol between requestors and providers, without sockets.
//!
//! * [`frame`]: postcard messages behind a length prefix, with a hard size cap; a decoder that
//!   takes bytes as they arrive and yields whole frames, or a typed error that ends the stream.
//! * [`message`]: what travels in the frames: hello, batches of subtasks, blob requests,
//!   outcomes.
//! * [`provider`]: the provider's side of a connection as a state machine.
//! * [`requestor`]: the requestor's scheduler over all its providers as a state machine:
//!   batching, deadlines, retries, backup copies.
//! * `sim` (feature `simulation`, and in tests): a deterministic simulation of a requestor and
//!   many providers, for the scheduler's tests and benches.
//!
//! The transport (QUIC, in [`net`](crate::net) and [`node`](crate::node)) only moves bytes;
//! everything here is driven by explicit calls with the current time, and tested in a
//! deterministic simulation that drops, delays and reorders messages and kills providers.

pub mod frame;
pub mod message;
pub mod provider;
pub mod requestor;
#[cfg(any(test, feature = "simulation"))]
pub mod sim;

/// Version of the wire protocol. It is part of the ALPN, so peers of different versions fail
/// the TLS handshake with a clear error instead of misreading each other's frames.
pub const PROTOCOL_VERSION: u32 = 5;

/// The ALPN identifier of [`PROTOCOL_VERSION`].
pub const ALPN: &[u8] = b"golem/5";
