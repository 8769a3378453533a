//! Write a distributed loop in plain Rust.
//!
//! Mark plain functions with [`#[golem::task]`](macro@task); golem compiles them to WebAssembly
//! at build time and runs them in wasmtime sandboxes (CPU, memory, time and output limits; no
//! files, no network; deterministic randomness and clock), on providers reached through a
//! [`Golem`] handle:
//!
//! | call | does |
//! |---|---|
//! | [`Golem::par_for`]`(items, task)` | runs the task once per item; outputs in input order |
//! | [`.with(&ctx)`](ParFor::with) | gives a shared context, encoded and shipped once |
//! | [`Golem::map_reduce`]`(items, task, identity, reduce)` | map in sandboxes, fold here |
//! | [`Golem::iterate`]`(init, step, until)` | rounds whose results decide the next round |
//! | [`.verify(Verify::spot_check())`](ParFor::verify), [`.verify_with(check)`](ParFor::verify_with) | how results from untrusted providers are verified |
//! | [`ParFor::with_report`] | outputs with the job's report: cheaters caught, checking cost, receipts |
//! | [`.budget(units)`](ParFor::budget), [`GolemBuilder::payments`]`(ledger)` | what a job may cost; where its priced receipts go |
//! | `Golem::settle(ledger, chain)` (feature `ethereum`) | pays providers on Ethereum, one transaction per settlement |
//! | [`ParFor::run`], [`MapReduce::run`], [`Golem::local_blocking`] | the blocking facade |
//!
//! Errors are one [`Error`] enum with a variant per failure domain (module refused, subtask
//! failed in the sandbox, encoding); a task that returns `Result<T, E>` hands its `E` back as
//! data.
//!
//! # Setting up a crate
//!
//! Tasks live in the library target of a crate (`src/lib.rs` and its modules) whose `build.rs`
//! builds them:
//!
//! ```toml
//! [dependencies]
//! golem-sdk = "0.1"
//! serde = { version = "1", features = ["derive"] }
//!
//! [build-dependencies]
//! golem-build = "0.1"
//! ```
//!
//! ```no_run
//! // build.rs
//! fn main() {
//!     golem_build::build_tasks();
//! }
//! ```
//!
//! ```ignore
//! // src/lib.rs
//! use golem::prelude::*;
//!
//! #[golem::task]
//! pub fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! // src/main.rs, an example or a test
//! let golem = Golem::local().await?;
//! let squares = golem.par_for(1..=4, square).await?;
//! assert_eq!(squares, [1, 4, 9, 16]);
//! assert_eq!(square(5), 25); // still a plain function
//! ```
//!
//! Host-only dependencies of that crate (tokio, image encoders, ...) belong under
//! `[dev-dependencies]` or `[target.'cfg(not(target_arch = "wasm32"))'.dependencies]`, so the
//! guest build stays small.
//!
//! # Features
//!
//! - `runtime` (default): [`Golem`] and everything that runs tasks (wasmtime, the network).
//!   Without it a crate only defines tasks: `#[golem::task]` and [`Task`], what its guest build
//!   compiles anyway (its `build.rs` still calls `golem_build::build_tasks()`). These docs are
//!   written with the feature on.
//! - `ethereum`: settlement on Ethereum (`Golem::settle`, the `ethereum` module).
//!
//! A [`Golem`] needs no task to start:
//!
//! ```
//! let golem = golem::Golem::builder().providers(2).build_blocking()?;
//! assert_eq!(golem.providers(), 2);
//! # Ok::<(), golem::Error>(())
//! ```

#![allow(
    clippy::needless_doctest_main,
    reason = "the example is a build script"
)]

mod task;

#[cfg(all(feature = "runtime", not(target_arch = "wasm32")))]
pub mod blocking;
#[cfg(all(feature = "runtime", not(target_arch = "wasm32")))]
mod error;
#[cfg(all(feature = "runtime", not(target_arch = "wasm32")))]
mod golem;
#[cfg(all(feature = "runtime", not(target_arch = "wasm32")))]
mod iterate;
#[cfg(all(feature = "runtime", not(target_arch = "wasm32")))]
mod map_reduce;
#[cfg(all(feature = "runtime", not(target_arch = "wasm32")))]
mod par_for;

#[doc = include_str!("docs/task.md")]
pub use golem_macros::task;

pub use crate::task::{Task, TaskData};

#[cfg(not(target_arch = "wasm32"))]
pub use crate::task::GuestModule;
#[cfg(all(feature = "runtime", not(target_arch = "wasm32")))]
pub use crate::{
    error::{Error, ModuleError, NodeError, Partial, Result, SandboxError, SubtaskError},
    golem::{Golem, GolemBuilder},
    iterate::{Iterated, Until},
    map_reduce::MapReduce,
    par_for::{ContextFor, NoContext, ParFor, Reported, WithContext},
};
#[cfg(all(feature = "runtime", not(target_arch = "wasm32")))]
pub use golem_runtime::{
    payment::{Account, Books, Ledger, NANO, Payee, PaymentHook, Priced},
    proto::requestor::{Caught, JobReport, Route},
    receipt::Receipt,
    reputation::Record,
    sandbox::{Limits, SandboxConfig},
    verify::{SpotCheck, Verify},
};

/// Settling with providers on Ethereum: the BatchPay contract, [`Chain`](ethereum::Chain) for
/// requestors ([`Golem::settle`]) and [`Watcher`](ethereum::Watcher) for providers' books.
#[cfg(all(feature = "ethereum", not(target_arch = "wasm32")))]
pub use golem_runtime::payment::ethereum;

/// Everything a task crate usually needs: `use golem::prelude::*;`.
pub mod prelude {
    pub use crate::Task;
    pub use crate::task;
    #[cfg(all(feature = "runtime", not(target_arch = "wasm32")))]
    pub use crate::{Error, Golem, Iterated, Limits, Until, Verify};
    pub use serde::{Deserialize, Serialize};
}

#[doc(hidden)]
#[path = "support/mod.rs"]
pub mod __private;
