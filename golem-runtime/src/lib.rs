//! The engine behind golem: what runs task modules and where.
//!
//! * [`sandbox`]: a wasmtime engine configured for deterministic, limited execution of golem
//!   task modules ([`sandbox::Sandbox`]), with typed errors for every way a guest can fail.
//! * [`local`]: in-process providers, worker threads that run the subtasks of a job in one
//!   sandbox and gather the outputs in input order.
//! * [`identity`]: a node's ed25519 key pair, its node id and domain-separated signatures.
//! * [`net`]: QUIC endpoints (quinn, rustls) authenticated by node keys, with the protocol
//!   version in the ALPN.
//! * [`proto`]: the requestor–provider wire protocol without sockets (frames so far).
//!
//! Users reach this crate through `golem-sdk`; it is public so providers and tools can embed it.
//!
//! ```
//! use golem_runtime::sandbox::{Sandbox, SandboxConfig, ModuleHash, ModuleError};
//!
//! let sandbox = Sandbox::new(SandboxConfig::with_instances(2))?;
//! // A module that is not a golem task module is refused before any of its code runs.
//! let bytes = b"\0asm\x01\0\0\0";
//! let refused = sandbox.prepare(ModuleHash::of(bytes), bytes).unwrap_err();
//! assert_eq!(refused, ModuleError::NotAGolemModule);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod identity;
pub mod local;
pub mod net;
pub mod proto;
pub mod sandbox;
