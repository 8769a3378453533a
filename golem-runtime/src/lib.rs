//! The engine behind golem: what runs task modules and where.
//!
//! * [`sandbox`]: a wasmtime engine configured for deterministic, limited execution of golem
//!   task modules ([`sandbox::Sandbox`]), with typed errors for every way a guest can fail.
//! * [`discovery`]: providers' signed announcements and the directory of those believed.
//! * [`identity`]: a node's ed25519 key pair, its node id and domain-separated signatures,
//!   and where it is paid.
//! * [`content`]: the content address (blake3) that names modules, contexts and large inputs.
//! * [`net`]: QUIC endpoints (iroh) authenticated by node keys, with the protocol
//!   version in the ALPN.
//! * [`proto`]: the requestor–provider wire protocol without sockets: frames, messages, and the
//!   provider and requestor sessions (scheduling, retries, backups) as state machines.
//! * [`node`]: the async drivers: a provider node serving batches from a QUIC endpoint, a
//!   requestor that finds providers and runs jobs on them, content-addressed blobs.
//! * [`receipt`]: what a provider signs for each batch it ran, and how it is checked.
//! * [`verify`] and [`reputation`]: verification strategies, and the record of each provider
//!   they build.
//! * [`payment`]: priced receipts, the payment hook, the embedded ledger.
//! * [`market`]: matching a requestor's demand against providers' offers.
//! * [`disk`]: the room peers may take on a node's disk.
//!
//! Users reach this crate through `golem-sdk`; it is public so providers and tools can embed it.
//!
//! ```
//! use golem_runtime::sandbox::{Sandbox, SandboxConfig, BlobId, ModuleError};
//!
//! let sandbox = Sandbox::new(SandboxConfig::with_instances(2))?;
//! // A module that is not a golem task module is refused before any of its code runs.
//! let bytes = b"\0asm\x01\0\0\0";
//! let refused = sandbox.prepare(BlobId::of(bytes), bytes).unwrap_err();
//! assert_eq!(refused, ModuleError::NotAGolemModule);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#[cfg(any(test, feature = "adversarial"))]
pub mod adversarial;
pub mod content;
mod db;
pub mod discovery;
pub mod disk;
pub mod identity;
pub mod market;
pub mod net;
pub mod node;
pub mod payment;
pub mod proto;
pub mod receipt;
pub mod reputation;
pub mod sandbox;
pub mod verify;
