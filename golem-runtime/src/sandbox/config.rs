//! Engine settings and per-call limits.

use std::path::PathBuf;
use std::time::Duration;

use wasmtime::{Config, Enabled, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig};

use super::SandboxError;

/// How a [`Sandbox`](super::Sandbox) engine is built. The defaults are what golem's providers
/// run with; the benches measure what each switch costs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SandboxConfig {
    /// Meter fuel: every call gets [`Limits::fuel`] and reports what it used (the billing unit).
    /// Costs a counter update on every straight run of the guest's instructions and a check at
    /// every function entry and loop head, written into the module when it is compiled.
    pub fuel_metering: bool,
    /// Enforce [`Limits::deadline`], and stops from
    /// [`run_until`](super::Sandbox::run_until): a check of an interrupt byte at every function
    /// entry and loop head, and one watchdog thread that sets it, looking at the running calls
    /// every [`deadline_tick`](Self::deadline_tick).
    pub deadline_checks: bool,
    /// Period of the watchdog thread: the granularity of wall-time deadlines and stops.
    pub deadline_tick: Duration,
    /// Canonicalize every NaN the guest produces, so float results are bit-identical across
    /// architectures. Costly on float kernels; without it, compare results only between equal
    /// engine fingerprints.
    pub nan_canonicalization: bool,
    /// How many instances may be alive at once (the pooling allocator's slot count).
    pub max_instances: u32,
    /// The largest memory limit a call may ask for; sizes the pooling allocator's slots.
    pub max_memory_bytes: usize,
    /// The largest module the sandbox accepts.
    pub max_module_bytes: usize,
    /// Size of the wasm call stack; deeper recursion ends in [`SubtaskError::StackOverflow`].
    ///
    /// [`SubtaskError::StackOverflow`]: super::SubtaskError::StackOverflow
    pub max_wasm_stack: usize,
    /// Bytes of each memory slot kept resident between instances, so reusing a slot does not
    /// fault its first pages in again.
    pub keep_resident_bytes: usize,
    /// Directory that keeps compiled modules across restarts, by (module hash, engine
    /// fingerprint); `None` compiles every module once per process.
    pub compiled_cache_dir: Option<PathBuf>,
    /// Bytes of compiled modules kept in the cache directory; the oldest are deleted first.
    pub compiled_cache_bytes: u64,
    /// Free bytes left on the cache directory's disk: no compiled module is written into them
    /// (the provider's books share the disk).
    pub disk_reserve_bytes: u64,
    /// Modules compiled at once, each on one thread; a module waits for its turn. Bounds the
    /// cores a peer's modules can take from the work.
    pub compile_threads: usize,
    /// How long compiling one module may take; past it the module is refused
    /// ([`ModuleError::CompileTimeout`](super::ModuleError::CompileTimeout)) and remembered as
    /// refused (its compile still holds its thread until it ends).
    pub compile_timeout: Duration,
    /// Compiled modules kept in memory, ready to run; past it the oldest is dropped (and
    /// prepared again, from the compiled-module cache when there is one, when a batch needs it).
    pub max_prepared_modules: usize,
    /// When the calls of a task with a context start from a snapshot of an instance that
    /// decoded it, with copy-on-write memory, instead of decoding it first each. The outputs are
    /// the same bytes either way.
    pub context_snapshots: ContextSnapshots,
    /// Bytes of context snapshots kept (their compiled code and the data of their memory
    /// images); past it the least recently used is dropped. A snapshot over half of it is not
    /// made.
    pub max_snapshot_bytes: usize,
    /// Bytes of compiled functions kept in memory, so compiling a snapshot (the same code with
    /// other data) reuses the compile of its module; past it the store starts over.
    pub compiled_functions_bytes: usize,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            fuel_metering: true,
            deadline_checks: true,
            deadline_tick: Duration::from_millis(1),
            nan_canonicalization: false,
            max_instances: 64,
            max_memory_bytes: 1 << 30,
            max_module_bytes: 32 << 20,
            max_wasm_stack: 512 << 10,
            keep_resident_bytes: 1 << 20,
            compiled_cache_dir: None,
            compiled_cache_bytes: 4 << 30,
            disk_reserve_bytes: crate::disk::DEFAULT_DISK_RESERVE,
            compile_threads: 1,
            compile_timeout: Duration::from_secs(30),
            max_prepared_modules: 256,
            context_snapshots: ContextSnapshots::WhenItPays,
            max_snapshot_bytes: 1 << 30,
            compiled_functions_bytes: 64 << 20,
        }
    }
}

impl SandboxConfig {
    /// A configuration sized for `instances` concurrent calls, otherwise the defaults.
    pub fn with_instances(instances: u32) -> Self {
        Self {
            max_instances: instances.max(1),
            ..Self::default()
        }
    }

    /// What the sandbox writes into each module it compiles.
    pub(super) fn metering(&self) -> super::meter::Metering {
        super::meter::Metering {
            fuel: self.fuel_metering,
            interrupt: self.deadline_checks,
        }
    }

    pub(super) fn wasmtime_config(
        &self,
        compiled_functions: std::sync::Arc<dyn wasmtime::CacheStore>,
    ) -> Result<Config, SandboxError> {
        // With deadline checks, each instance has a second memory: its interrupt byte.
        let memories_per_instance = if self.deadline_checks { 2 } else { 1 };
        let mut pool = PoolingAllocationConfig::new();
        pool.total_core_instances(self.max_instances)
            .total_memories(self.max_instances.saturating_mul(memories_per_instance))
            .total_tables(self.max_instances)
            .max_memories_per_module(memories_per_instance)
            .max_tables_per_module(1)
            .table_elements(TABLE_ELEMENTS)
            .max_memory_size(self.max_memory_bytes)
            .linear_memory_keep_resident(self.keep_resident_bytes)
            .pagemap_scan(Enabled::Auto)
            .table_keep_resident(TABLE_ELEMENTS * std::mem::size_of::<usize>())
            // Slots go back to the pool as soon as they are reset: with batched decommits a
            // thread that finds the pool empty can race another that is flushing the batch, and
            // fail although slots are about to be free.
            .decommit_batch_size(1);

        let mut config = Config::new();
        config
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .cranelift_opt_level(OptLevel::Speed)
            // Fuel and deadlines are written into the module (`meter`), not left to wasmtime.
            .consume_fuel(false)
            .epoch_interruption(false)
            .wasm_multi_memory(true)
            // The interrupt memory's pages are bytes (modules of peers may not use them).
            .wasm_custom_page_sizes(true)
            .cranelift_nan_canonicalization(self.nan_canonicalization)
            // Threads stay off: wasmtime is built without its `threads` feature.
            .max_wasm_stack(self.max_wasm_stack)
            .wasm_relaxed_simd(true)
            .relaxed_simd_deterministic(true)
            // One thread per compile (wasmtime is built without parallel compilation):
            // `compile_threads` bounds the cores compiling takes.
            .wasm_backtrace_max_frames(None)
            // A snapshot's memory is one dense image, however large: every call maps it
            // copy-on-write instead of copying it in.
            .memory_guaranteed_dense_image_size(self.max_memory_bytes as u64);
        config
            .enable_incremental_compilation(compiled_functions)
            .map_err(|error| SandboxError::Config(error.to_string()))?;
        if self.max_wasm_stack == 0 {
            return Err(SandboxError::Config(
                "max_wasm_stack must be above zero".into(),
            ));
        }
        Ok(config)
    }
}

/// When calls start from a snapshot of their decoded context (see
/// [`SandboxConfig::context_snapshots`]). A snapshot is made once per module, task, context and
/// limits; making one costs about a compile of the module plus ten decodes of the context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ContextSnapshots {
    /// Never: every call decodes the context in its own instance first.
    Off,
    /// From the first call on.
    Always,
    /// Once the calls have spent as long decoding the context as making its snapshot is
    /// expected to take: a job of a few subtasks never waits for a snapshot, and one of many
    /// spends at most about twice the least it could on its context.
    WhenItPays,
}

/// Elements a module's table may hold (function pointers for indirect calls).
pub(crate) const TABLE_ELEMENTS: usize = 20_000;

/// Limits on one call of a task. Every way past a limit ends the call with its own
/// [`SubtaskError`](super::SubtaskError).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct Limits {
    /// Fuel for the call when the engine meters fuel: roughly one unit per wasm instruction,
    /// and host calls by the bytes they touch (see [`HOST_CALL_FUEL`](super::HOST_CALL_FUEL)).
    pub fuel: u64,
    /// Largest linear memory the guest may grow to.
    pub memory_bytes: usize,
    /// Wall-time budget of the call, when the engine enforces deadlines.
    pub deadline: Duration,
    /// Largest encoded output the guest may return.
    pub output_bytes: usize,
    /// Bytes of stdout and of stderr kept; the rest is dropped and counted.
    pub log_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: 50_000_000_000,
            memory_bytes: 256 << 20,
            deadline: Duration::from_secs(60),
            output_bytes: 64 << 20,
            log_bytes: 64 << 10,
        }
    }
}

impl Limits {
    /// Sets [`fuel`](Self::fuel).
    #[must_use]
    pub fn fuel(mut self, fuel: u64) -> Self {
        self.fuel = fuel;
        self
    }

    /// Sets [`memory_bytes`](Self::memory_bytes).
    #[must_use]
    pub fn memory_bytes(mut self, bytes: usize) -> Self {
        self.memory_bytes = bytes;
        self
    }

    /// Sets [`deadline`](Self::deadline).
    #[must_use]
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Sets [`output_bytes`](Self::output_bytes).
    #[must_use]
    pub fn output_bytes(mut self, bytes: usize) -> Self {
        self.output_bytes = bytes;
        self
    }

    /// Sets [`log_bytes`](Self::log_bytes).
    #[must_use]
    pub fn log_bytes(mut self, bytes: usize) -> Self {
        self.log_bytes = bytes;
        self
    }
}
