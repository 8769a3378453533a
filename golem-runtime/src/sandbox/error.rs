//! The sandbox's failure domains: building an engine, accepting a module, running a call.

use std::time::Duration;

/// Building a [`Sandbox`](super::Sandbox) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// The configuration is inconsistent.
    #[error("invalid sandbox configuration: {0}")]
    Config(String),
    /// wasmtime refused the configuration (for example, the pooling allocator could not reserve
    /// its address space).
    #[error("cannot create the wasmtime engine: {0}")]
    Engine(String),
    /// The compiled-module cache directory cannot be used.
    #[error("cannot use the compiled-module cache {path}: {message}")]
    Cache {
        /// The directory.
        path: std::path::PathBuf,
        /// The operating system's reason.
        message: String,
    },
}

/// A module was refused before any task in it ran (only its start-up may have run, under
/// [`PROBE_FUEL`](super::PROBE_FUEL) and [`PROBE_DEADLINE`](super::PROBE_DEADLINE)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum ModuleError {
    /// The module is empty: the guest build was skipped for this binary.
    #[error(
        "the task module was not built: the guest build was skipped (GOLEM_SKIP_GUEST_BUILD, \
         or a `cargo clippy`/`cargo doc` run); build with `cargo build` or `cargo run`"
    )]
    NotBuilt,
    /// The bytes do not hash to the hash they were sent with.
    #[error("the module does not match its hash: expected {expected}, got {actual}")]
    HashMismatch {
        /// The hash the module was announced with.
        expected: String,
        /// The hash of the bytes received.
        actual: String,
    },
    /// The module is larger than the sandbox accepts.
    #[error("the module is {size} bytes, above the limit of {limit} bytes")]
    TooLarge {
        /// Size of the module.
        size: usize,
        /// The sandbox's limit.
        limit: usize,
    },
    /// wasmtime could not validate or compile the module.
    #[error("the module is not valid WebAssembly: {0}")]
    Invalid(String),
    /// The module imports something outside the allow-list.
    #[error(
        "the module imports `{module}::{name}`, which the sandbox does not provide (only the \
         golem host functions and a deterministic subset of WASI are allowed)"
    )]
    ForbiddenImport {
        /// Import module name.
        module: String,
        /// Import field name.
        name: String,
    },
    /// The module imports an allowed name with the wrong type.
    #[error("the module imports `{module}::{name}` with the wrong type")]
    ImportType {
        /// Import module name.
        module: String,
        /// Import field name.
        name: String,
    },
    /// The module does not export the ABI version: it was not built by golem.
    #[error(
        "the module has no `{}` export: it was not built as a golem task module",
        golem_abi::VERSION_EXPORT
    )]
    NotAGolemModule,
    /// The module was built against another version of the host-guest ABI.
    #[error(
        "the module speaks golem ABI version {found}, this runtime speaks {expected}; rebuild \
         it with a matching golem"
    )]
    AbiVersion {
        /// The version the module reports.
        found: i64,
        /// The version this runtime implements.
        expected: u32,
    },
    /// The module has no export for the requested task.
    #[error(
        "the module has no task `{task}`; tasks must be defined in the library target \
         (src/lib.rs and its modules) of the crate whose build.rs builds the module"
    )]
    MissingTask {
        /// The task name.
        task: String,
    },
    /// Instantiating the module failed before the task ran (its start code trapped, or its
    /// memory or tables exceed the sandbox's limits).
    #[error("the module cannot be instantiated: {0}")]
    Instantiate(String),
    /// The module's start code and version export, run once when it is prepared, went past
    /// what preparing a module may cost.
    #[error(
        "the module's start-up ran past its limits ({fuel} fuel, {deadline:?}) when its ABI \
         version was read"
    )]
    StartupLimit {
        /// Fuel start-up may burn ([`PROBE_FUEL`](super::PROBE_FUEL)).
        fuel: u64,
        /// Wall time start-up may take ([`PROBE_DEADLINE`](super::PROBE_DEADLINE)).
        deadline: Duration,
    },
    /// Compiling the module took longer than the sandbox allows
    /// ([`SandboxConfig::compile_timeout`](super::SandboxConfig::compile_timeout)).
    #[error("compiling the module took longer than {limit:?}")]
    CompileTimeout {
        /// The time allowed.
        limit: Duration,
    },
    /// The module's data lies in a few pieces far apart: compiled, it would hold the whole
    /// span between them as one image of its initial memory.
    #[error(
        "the module's data spans {span} bytes of memory but holds only {bytes}: at most half of          a span past {limit} bytes may be empty"
    )]
    SparseData {
        /// Bytes from the start of the first data segment to the end of the last.
        span: u64,
        /// Bytes of data in the segments.
        bytes: u64,
        /// Span allowed whatever its density.
        limit: u64,
    },
}

/// One call of a task failed. Guest failures are data: the host keeps serving.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum SubtaskError {
    /// The task panicked; the message is the guest's panic message with its location.
    #[error("the task panicked: {message}")]
    Panic {
        /// The panic message.
        message: String,
    },
    /// The call used all its fuel.
    #[error("out of fuel: the task used its whole budget of {limit} fuel")]
    OutOfFuel {
        /// The fuel budget of the call.
        limit: u64,
    },
    /// The call ran past its wall-time deadline.
    #[error("deadline exceeded: the task ran longer than {limit:?}")]
    Deadline {
        /// The deadline of the call.
        limit: Duration,
    },
    /// The guest tried to grow its memory past the limit.
    #[error("memory limit reached: the task tried to grow its memory past {limit} bytes")]
    MemoryLimit {
        /// The memory limit of the call, in bytes.
        limit: usize,
    },
    /// The guest tried to grow a table past the limit.
    #[error("table limit reached")]
    TableLimit,
    /// The guest recursed past the wasm stack.
    #[error("stack overflow: the task recursed past the sandbox's call stack")]
    StackOverflow,
    /// The encoded output is larger than allowed.
    #[error("output too large: the task returned {size} bytes, the limit is {limit} bytes")]
    OutputTooLarge {
        /// Size of the output the guest tried to return.
        size: usize,
        /// The output limit of the call.
        limit: usize,
    },
    /// The guest returned without handing back an output, or handed back two.
    #[error("the task broke the golem ABI: {0}")]
    Abi(String),
    /// The guest called `proc_exit`.
    #[error("the task exited with code {code}")]
    Exit {
        /// The exit code.
        code: i32,
    },
    /// Any other trap (division by zero, out-of-bounds access, `unreachable`, ...).
    #[error("the task trapped: {message}{}", stderr_suffix(stderr))]
    Trap {
        /// wasmtime's description of the trap.
        message: String,
        /// What the guest had written to stderr, often the reason.
        stderr: String,
    },
    /// The module could not be used.
    #[error(transparent)]
    Module(#[from] ModuleError),
    /// The host failed to run the call (not the guest's fault).
    #[error("the sandbox failed to run the task: {0}")]
    Internal(String),
}

fn stderr_suffix(stderr: &str) -> String {
    let stderr = stderr.trim();
    if stderr.is_empty() {
        String::new()
    } else {
        format!(" (stderr: {stderr})")
    }
}

impl SubtaskError {
    /// Whether the same call would fail the same way on any honest provider: the failure comes
    /// from the task and its input, so retrying elsewhere cannot help.
    pub fn is_deterministic(&self) -> bool {
        !matches!(self, Self::Deadline { .. } | Self::Internal(_))
    }
}
