//! The sandbox: runs one subtask of a task module in a fresh wasmtime instance, under limits.
//!
//! * [`Sandbox`] owns a wasmtime [`Engine`] configured for determinism (no threads,
//!   deterministic relaxed SIMD, optional NaN canonicalization) with the pooling allocator, the
//!   host functions of [`golem_abi`] and the newest compiled modules kept in memory by
//!   [`BlobId`] (and, with a cache directory, on disk by module hash and
//!   [`EngineFingerprint`]).
//! * [`Sandbox::prepare`] compiles a module once, refuses it before it runs if it imports
//!   anything outside the allow-list or speaks another ABI version, and returns a
//!   [`PreparedModule`] (an `InstancePre`, so instantiation is a few microseconds).
//! * [`Sandbox::run`] executes one call in a fresh instance under [`Limits`] (fuel, memory,
//!   wall-time deadline, output size) and returns an [`Execution`] or a typed
//!   [`SubtaskError`]; a guest failure never panics the host. Fuel and the deadline are
//!   written into each module as it is compiled (see `meter`), so enforcing them costs a hot
//!   loop a compare and a branch; a watchdog thread interrupts calls past their deadline. A call of a task with a context
//!   starts from a snapshot of an instance that decoded it, once decoding it in every call has
//!   cost as much as making the snapshot (see `snapshot`).

mod config;
mod error;
mod host;
mod meter;
mod module;
mod snapshot;
mod wasi;
mod watchdog;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use wasmtime::{Engine, Instance, Linker, Store, Trap};

pub use self::config::{ContextSnapshots, Limits, SandboxConfig};
pub use self::error::{ModuleError, SandboxError, SubtaskError};
pub use self::host::{COPY_BYTES_PER_FUEL, HOST_CALL_FUEL, RANDOM_FUEL_PER_BYTE};
pub use self::module::{PROBE_DEADLINE, PROBE_FUEL, PreparedModule, TaskExport};
/// The hash that names a module: the content address of its bytes.
pub use crate::content::BlobId;

use self::host::{GuestState, HostTrap};

/// Identifies an engine configuration: modules compiled by engines with equal fingerprints are
/// interchangeable, and the same module and input give the same output bytes on them.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct EngineFingerprint(pub [u8; 32]);

impl std::fmt::Debug for EngineFingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "EngineFingerprint({})",
            blake3::Hash::from_bytes(self.0).to_hex()
        )
    }
}

/// A job's shared context: its postcard-encoded bytes, and their blake3 hash, which names it
/// (snapshots of its decoded state are kept by it).
#[derive(Clone)]
pub struct Context {
    bytes: Arc<[u8]>,
    hash: [u8; 32],
}

impl Context {
    /// The context `bytes`, hashed.
    pub fn new(bytes: Arc<[u8]>) -> Self {
        let hash = *blake3::hash(&bytes).as_bytes();
        Self { bytes, hash }
    }

    /// The context `bytes`, whose blake3 hash the caller has checked to be `hash` (a blob
    /// stored by its hash).
    pub(crate) fn with_hash(bytes: Arc<[u8]>, hash: [u8; 32]) -> Self {
        Self { bytes, hash }
    }

    /// No context: what a task without one receives.
    pub fn empty() -> Self {
        Self::new(Arc::from([]))
    }

    /// The encoded context.
    pub fn bytes(&self) -> &Arc<[u8]> {
        &self.bytes
    }

    /// The blake3 hash of the bytes.
    pub fn hash(&self) -> &[u8; 32] {
        &self.hash
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("len", &self.bytes.len())
            .field("hash", &blake3::Hash::from_bytes(self.hash).to_hex())
            .finish()
    }
}

/// The inputs of one call of a task.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    /// The shared context; empty when the task takes none. Shared, not copied: every subtask
    /// of a job reads the same bytes.
    pub context: Context,
    /// The postcard-encoded input of this subtask.
    pub input: &'a [u8],
    /// Seed of the guest's randomness; derive it from (job, subtask) so reruns agree.
    pub seed: [u8; 32],
}

/// What a successful call produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Execution {
    /// The postcard-encoded return value of the task.
    pub output: Vec<u8>,
    /// Fuel the call consumed, when the engine meters fuel.
    pub fuel_used: Option<u64>,
    /// What the guest wrote to stdout, capped at [`Limits::log_bytes`].
    pub stdout: Vec<u8>,
    /// What the guest wrote to stderr, capped at [`Limits::log_bytes`].
    pub stderr: Vec<u8>,
    /// Log bytes past the cap that were dropped.
    pub log_bytes_dropped: u64,
}

/// A wasmtime engine with golem's host functions, limits and module cache.
///
/// Cheap to share: clone the `Arc` it usually lives in. Calls on different threads run in
/// parallel; each gets its own `Store`.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<GuestState>,
    config: SandboxConfig,
    fingerprint: EngineFingerprint,
    /// Modules prepared, the oldest dropped past
    /// [`max_prepared_modules`](SandboxConfig::max_prepared_modules).
    modules: Mutex<Prepared>,
    /// Modules refused for what they are, so they are not compiled again.
    refused: Mutex<HashMap<BlobId, ModuleError>>,
    /// Modules being prepared, each behind a gate the other threads that need it wait at.
    preparing: Gates<BlobId>,
    /// Context snapshots kept, and those being made.
    snapshots: snapshot::Snapshots,
    snapshotting: Gates<snapshot::SnapshotKey>,
    /// Held while a snapshot is made: one at a time, as making one holds several copies of an
    /// instance's memory for a moment (a call that finds it held decodes its context itself).
    making: Mutex<()>,
    /// Compiles running now.
    compiling: Arc<(Mutex<usize>, std::sync::Condvar)>,
    /// Room in the compiled-module cache directory, when there is one.
    compiled_quota: Option<crate::disk::DirQuota>,
    compiles: std::sync::atomic::AtomicU64,
    /// Ends calls at their deadline or when stopped, with deadline checks on.
    watchdog: Option<watchdog::Watchdog>,
}

/// Prepared modules by hash, with the order they were prepared in.
#[derive(Default)]
struct Prepared {
    modules: HashMap<BlobId, Arc<PreparedModule>>,
    order: std::collections::VecDeque<BlobId>,
}

/// Refused modules remembered; past it the memory starts over.
const REFUSED_REMEMBERED: usize = 4096;

/// Work done once per key at a time: a thread that needs a key's work while another does it
/// waits for that one to finish, then finds its result, instead of doing it again.
struct Gates<K>(Mutex<HashMap<K, Arc<Mutex<()>>>>);

impl<K: Eq + std::hash::Hash + Clone> Gates<K> {
    fn new() -> Self {
        Self(Mutex::new(HashMap::new()))
    }

    /// Runs `work` unless another thread runs work for `key` now; `None` then.
    fn try_one_at_a_time<R>(&self, key: &K, work: impl FnOnce() -> R) -> Option<R> {
        let gate = Arc::clone(lock(&self.0).entry(key.clone()).or_default());
        let result = gate.try_lock().ok().map(|_turn| work());
        self.leave(key, &gate);
        result
    }

    /// Forgets `key`'s gate when no other thread holds or waits at it.
    fn leave(&self, key: &K, gate: &Arc<Mutex<()>>) {
        let mut gates = lock(&self.0);
        // Ours and the map's: no one else waits at this gate.
        if Arc::strong_count(gate) == 2 {
            gates.remove(key);
        }
    }

    /// Runs `work` once no other thread runs work for `key`.
    fn one_at_a_time<R>(&self, key: &K, work: impl FnOnce() -> R) -> R {
        let gate = Arc::clone(lock(&self.0).entry(key.clone()).or_default());
        let result = {
            let _turn = lock(&gate);
            work()
        };
        self.leave(key, &gate);
        result
    }
}

/// What a compile is for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum CompileAs {
    /// A module a peer sent: compiled instrumented when wizer can, so its instances can be
    /// snapshotted.
    Module,
    /// A snapshot: loaded from a memory file, which its instances' memories map
    /// copy-on-write, with no copy of its data besides.
    Snapshot,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One of the sandbox's compile threads, given back when dropped.
struct CompileSlot(Arc<(Mutex<usize>, std::sync::Condvar)>);

impl CompileSlot {
    /// Waits until fewer than `max` compiles run, and takes a place among them.
    fn take(compiling: &Arc<(Mutex<usize>, std::sync::Condvar)>, max: usize) -> Self {
        let (count, free) = &**compiling;
        let mut count = free
            .wait_while(lock(count), |count| *count >= max.max(1))
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *count += 1;
        Self(Arc::clone(compiling))
    }
}

impl Drop for CompileSlot {
    fn drop(&mut self) {
        let (count, free) = &*self.0;
        *lock(count) -= 1;
        free.notify_one();
    }
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("config", &self.config)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Sandbox {
    /// Builds an engine for `config`.
    pub fn new(config: SandboxConfig) -> Result<Self, SandboxError> {
        let compiled_functions = Arc::new(snapshot::CompiledFunctions::new(
            config.compiled_functions_bytes,
        ));
        let engine = Engine::new(&config.wasmtime_config(compiled_functions)?)
            .map_err(|error| SandboxError::Engine(error.to_string()))?;
        let mut linker = Linker::new(&engine);
        host::define(&mut linker).map_err(|error| SandboxError::Engine(error.to_string()))?;
        let fingerprint = fingerprint(&engine, &config);
        let compiled_quota = match &config.compiled_cache_dir {
            Some(dir) => Some(
                crate::disk::DirQuota::open(
                    dir,
                    config.compiled_cache_bytes,
                    config.disk_reserve_bytes,
                )
                .map_err(|error| SandboxError::Cache {
                    path: dir.clone(),
                    message: error.to_string(),
                })?,
            ),
            None => None,
        };
        let watchdog = config
            .deadline_checks
            .then(|| watchdog::Watchdog::start(config.deadline_tick))
            .flatten();
        Ok(Self {
            engine,
            linker,
            config,
            fingerprint,
            modules: Mutex::default(),
            refused: Mutex::new(HashMap::new()),
            preparing: Gates::new(),
            snapshots: snapshot::Snapshots::default(),
            snapshotting: Gates::new(),
            making: Mutex::new(()),
            compiling: Arc::new((Mutex::new(0), std::sync::Condvar::new())),
            compiled_quota,
            compiles: std::sync::atomic::AtomicU64::new(0),
            watchdog,
        })
    }

    /// The configuration this sandbox was built with.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// The fingerprint of this engine: compiled code and outputs are comparable between
    /// sandboxes with equal fingerprints.
    pub fn fingerprint(&self) -> EngineFingerprint {
        self.fingerprint
    }

    /// Compiles `bytes` (whose blake3 hash is `hash`), checks its imports and ABI version, and
    /// caches the result; later calls with the same hash return the cached module.
    pub fn prepare(&self, hash: BlobId, bytes: &[u8]) -> Result<Arc<PreparedModule>, ModuleError> {
        if let Some(known) = self.known(hash) {
            return known;
        }
        // One thread prepares a module at a time; the others wait for its result instead of
        // compiling it again (compiles take turns, so duplicates would queue behind each other).
        self.preparing
            .one_at_a_time(&hash, || match self.known(hash) {
                Some(known) => known,
                None => self.prepare_now(hash, bytes),
            })
    }

    /// The module prepared earlier, or why it was refused.
    fn known(&self, hash: BlobId) -> Option<Result<Arc<PreparedModule>, ModuleError>> {
        if let Some(module) = lock(&self.modules).modules.get(&hash) {
            return Some(Ok(Arc::clone(module)));
        }
        lock(&self.refused).get(&hash).cloned().map(Err)
    }

    fn prepare_now(&self, hash: BlobId, bytes: &[u8]) -> Result<Arc<PreparedModule>, ModuleError> {
        let module = match module::prepare(self, hash, bytes) {
            Ok(module) => Arc::new(module),
            Err(error) => {
                // A module refused for what it is is refused again without compiling it: not
                // one that was not these bytes, or not built.
                let remember = !matches!(
                    error,
                    ModuleError::NotBuilt
                        | ModuleError::TooLarge { .. }
                        | ModuleError::HashMismatch { .. }
                );
                if remember {
                    let mut refused = lock(&self.refused);
                    if refused.len() >= REFUSED_REMEMBERED {
                        refused.clear();
                    }
                    refused.insert(hash, error.clone());
                }
                return Err(error);
            }
        };
        let mut prepared = lock(&self.modules);
        if let Some(module) = prepared.modules.get(&hash) {
            return Ok(Arc::clone(module));
        }
        prepared.modules.insert(hash, Arc::clone(&module));
        prepared.order.push_back(hash);
        // Batches running the oldest keep it until they end; the next one prepares it again.
        while prepared.order.len() > self.config.max_prepared_modules.max(1) {
            if let Some(oldest) = prepared.order.pop_front() {
                prepared.modules.remove(&oldest);
            }
        }
        Ok(module)
    }

    /// Compiles `bytes` on a thread of its own once one of
    /// [`compile_threads`](SandboxConfig::compile_threads) is free, waiting at most
    /// [`compile_timeout`](SandboxConfig::compile_timeout) for it to finish.
    pub(crate) fn compile_limited(
        &self,
        bytes: &[u8],
        to: CompileAs,
    ) -> Result<wasmtime::Module, ModuleError> {
        let slot = CompileSlot::take(&self.compiling, self.config.compile_threads);
        let (done, result) = std::sync::mpsc::channel();
        let engine = self.engine.clone();
        let bytes = bytes.to_vec();
        let metering = self.config.metering();
        self.compiles
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let spawned = std::thread::Builder::new()
            .name("golem-compile".into())
            .spawn(move || {
                // Instrumented for snapshots first: wizer reads the module's own globals and
                // memories, not what metering adds.
                // A peer's module is validated before it is rewritten: the rewrite trusts its
                // structure (a snapshot is written by the sandbox from a valid one).
                let valid = match to {
                    CompileAs::Module => wasmtime::Module::validate(&engine, &bytes)
                        .map_err(|error| ModuleError::Invalid(format!("{error:#}"))),
                    CompileAs::Snapshot => Ok(()),
                };
                let instrumented = match to {
                    CompileAs::Module if valid.is_ok() => snapshot::instrument(&bytes),
                    _ => None,
                };
                let compiled = valid
                    .and_then(|()| {
                        meter::meter(instrumented.as_deref().unwrap_or(&bytes), metering)
                            .map_err(ModuleError::Invalid)
                    })
                    .and_then(|metered| {
                        match to {
                            CompileAs::Module => wasmtime::Module::new(&engine, &metered),
                            CompileAs::Snapshot => {
                                snapshot::compile_to_memory_file(&engine, &metered)
                            }
                        }
                        .map_err(|error| ModuleError::Invalid(format!("{error:#}")))
                    });
                // The slot is free once compiling ends, whether or not anyone still waits.
                drop(slot);
                let _ = done.send(compiled);
            });
        if let Err(error) = spawned {
            return Err(ModuleError::Invalid(format!(
                "cannot start a compile thread: {error}"
            )));
        }
        let limit = self.config.compile_timeout;
        result
            .recv_timeout(limit)
            .unwrap_or(Err(ModuleError::CompileTimeout { limit }))
    }

    /// Room for a compiled module of `len` bytes named `name` in the cache directory.
    pub(crate) fn admit_compiled(&self, name: &str, len: u64) -> bool {
        self.compiled_quota
            .as_ref()
            .is_some_and(|quota| quota.admit(name, len))
    }

    /// Forgets a compiled module deleted from the cache directory (or never written there).
    pub(crate) fn forget_compiled(&self, name: &str) {
        if let Some(quota) = &self.compiled_quota {
            quota.removed(name);
        }
    }

    /// Modules compiled so far (not loaded from a cache), including those refused.
    pub fn compiles(&self) -> u64 {
        self.compiles.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs `task` of `module` once, in a fresh instance, under `limits`.
    pub fn run(
        &self,
        module: &PreparedModule,
        task: &TaskExport,
        call: Call<'_>,
        limits: &Limits,
    ) -> Result<Execution, SubtaskError> {
        self.run_inner(module, task, call, limits, None)
    }

    /// [`run`](Self::run), stopped within a [`deadline_tick`](SandboxConfig::deadline_tick)
    /// once `stop` is set (with deadline checks on; without, it runs to its end): the call then ends in
    /// [`SubtaskError::Internal`] saying it was stopped.
    pub fn run_until(
        &self,
        module: &PreparedModule,
        task: &TaskExport,
        call: Call<'_>,
        limits: &Limits,
        stop: &Arc<AtomicBool>,
    ) -> Result<Execution, SubtaskError> {
        self.run_inner(module, task, call, limits, Some(stop))
    }

    fn run_inner(
        &self,
        module: &PreparedModule,
        task: &TaskExport,
        call: Call<'_>,
        limits: &Limits,
        stop: Option<&Arc<AtomicBool>>,
    ) -> Result<Execution, SubtaskError> {
        if limits.memory_bytes > self.config.max_memory_bytes {
            return Err(SubtaskError::Internal(format!(
                "the memory limit of {} bytes is above this sandbox's maximum of {} bytes",
                limits.memory_bytes, self.config.max_memory_bytes
            )));
        }
        let Some(context_export) = task
            .context_export()
            .filter(|_| !call.context.bytes().is_empty())
        else {
            return self.fresh_call(module, task, call, limits, stop, 0);
        };
        let key = module
            .snapshots()
            .then(|| snapshot::SnapshotKey::new(module.hash(), task.name(), &call.context, limits));
        let snapshot = match &key {
            Some(key) if self.config.context_snapshots != ContextSnapshots::Off => {
                match self.snapshots.get(key) {
                    Some(snapshot) => Some(snapshot),
                    None if self.config.context_snapshots == ContextSnapshots::Always
                        || self.snapshots.pays(key, module.wasm().len()) =>
                    {
                        self.context_snapshot(
                            key,
                            module,
                            task,
                            context_export,
                            &call,
                            limits,
                            stop,
                        )?
                    }
                    None => None,
                }
            }
            _ => None,
        };
        if let Some(snapshot) = snapshot {
            // The call pays for the decode its snapshot did, as it would have without it.
            let (module, task) = (&snapshot.module, &snapshot.task);
            return self.fresh_call(module, task, call, limits, stop, snapshot.decode_fuel);
        }
        // What a snapshot holds, made again in this call's own instance.
        let started = std::time::Instant::now();
        let (mut running, instance) =
            self.decode_context(module, context_export, &call.context, limits, stop)?;
        // Only the policy that weighs decoding against a snapshot needs the time counted.
        if let Some(key) =
            key.filter(|_| self.config.context_snapshots == ContextSnapshots::WhenItPays)
        {
            self.snapshots.decoded(key, started.elapsed());
        }
        // Fuel and deadline run on: the call pays for its decode.
        running.store.data_mut().begin_task(call, limits);
        let outcome = PreparedModule::call(&instance, &mut running.store, task.export());
        finish(running, outcome, limits)
    }

    /// `call` of `task` in a fresh instance of `module` (its start-up, then the task), with
    /// `spent` of its fuel already used.
    fn fresh_call(
        &self,
        module: &PreparedModule,
        task: &TaskExport,
        call: Call<'_>,
        limits: &Limits,
        stop: Option<&Arc<AtomicBool>>,
        spent: u64,
    ) -> Result<Execution, SubtaskError> {
        let (mut running, instance) = self.start(
            module,
            GuestState::new(call, limits),
            limits,
            stop,
            spent,
            true,
        );
        let outcome = instance.and_then(|instance| {
            PreparedModule::call(&instance, &mut running.store, task.export())
        });
        finish(running, outcome, limits)
    }

    /// A fresh instance of `module` in a store of its own holding `state`, given the call's
    /// fuel less `spent`, watched until its deadline from now (or `stop`), after its start-up
    /// (its start function, and `_initialize` when `initialize`) ran.
    pub(crate) fn start(
        &self,
        module: &PreparedModule,
        state: GuestState,
        limits: &Limits,
        stop: Option<&Arc<AtomicBool>>,
        spent: u64,
        initialize: bool,
    ) -> (Running<'_>, wasmtime::Result<Instance>) {
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        let fuel = self
            .config
            .fuel_metering
            .then(|| metered_fuel(limits).saturating_sub(spent));
        let mut running = Running { watch: None, store };
        let instance =
            module
                .instantiate(&mut running.store, fuel)
                .and_then(|(instance, interrupt)| {
                    if let (Some(watchdog), Some(word)) = (&self.watchdog, interrupt) {
                        #[allow(unsafe_code)]
                        // SAFETY: `word` is the first byte of the instance's interrupt memory, which
                        // lives as long as `running.store`; `Running` drops the watch first.
                        let watch = unsafe { watchdog.watch(word, limits.deadline, stop.cloned()) };
                        running.watch = Some(watch);
                    }
                    module.start_up(&instance, &mut running.store, initialize)?;
                    Ok(instance)
                });
        (running, instance)
    }

    /// A fresh instance of `module` that ran its start-up and then the context function
    /// `context_export` on `context`, under `limits` and the context's own seed: the state a
    /// snapshot of this context holds. The store's fuel and deadline run on from there.
    fn decode_context(
        &self,
        module: &PreparedModule,
        context_export: &wasmtime::ModuleExport,
        context: &Context,
        limits: &Limits,
        stop: Option<&Arc<AtomicBool>>,
    ) -> Result<(Running<'_>, Instance), SubtaskError> {
        let call = Call {
            context: context.clone(),
            input: &[],
            seed: snapshot::context_seed(context.hash()),
        };
        let state = GuestState::decoding(call, limits);
        let (mut running, instance) = self.start(module, state, limits, stop, 0, true);
        let decoded = instance.and_then(|instance| {
            PreparedModule::call(&instance, &mut running.store, context_export)?;
            Ok(instance)
        });
        match decoded {
            // The last straight run may have overspent after the last check.
            Ok(_) if running.overspent() => Err(SubtaskError::OutOfFuel { limit: limits.fuel }),
            Ok(instance) => Ok((running, instance)),
            Err(error) => Err(classify(&error, running, limits)),
        }
    }

    /// The snapshot of `call`'s context decoded for `task`, made now if no other call made it
    /// before; `None` when it cannot be made, or another call is making a snapshot now (the call
    /// then decodes the context itself: no call waits for another's snapshot). A context that
    /// fails to decode fails the call, as it would without snapshots.
    #[allow(
        clippy::too_many_arguments,
        reason = "one call's parts, passed through"
    )]
    fn context_snapshot(
        &self,
        key: &snapshot::SnapshotKey,
        module: &PreparedModule,
        task: &TaskExport,
        context_export: &wasmtime::ModuleExport,
        call: &Call<'_>,
        limits: &Limits,
        stop: Option<&Arc<AtomicBool>>,
    ) -> Result<Option<Arc<snapshot::Snapshot>>, SubtaskError> {
        let made = self.snapshotting.try_one_at_a_time(key, || {
            if let Some(snapshot) = self.snapshots.get(key) {
                return Ok(Some(snapshot));
            }
            if self.snapshots.has_failed(key) {
                return Ok(None);
            }
            // One at a time: making one holds several copies of an instance's memory.
            let Ok(_making) = self.making.try_lock() else {
                return Ok(None);
            };
            let (running, instance) =
                self.decode_context(module, context_export, &call.context, limits, stop)?;
            match self.make_snapshot(module, task, running, instance, limits) {
                Ok(snapshot) => {
                    let snapshot = Arc::new(snapshot);
                    self.snapshots.keep(
                        key.clone(),
                        Arc::clone(&snapshot),
                        self.config.max_snapshot_bytes,
                    );
                    Ok(Some(snapshot))
                }
                Err(error) => {
                    tracing::info!(module = %module.hash(), task = task.name(), %error, "no context snapshot; every call decodes the context");
                    self.snapshots.failed(key.clone());
                    Ok(None)
                }
            }
        });
        made.unwrap_or(Ok(None))
    }

    /// Reads the instance that decoded a context back into a snapshot, and compiles it.
    fn make_snapshot(
        &self,
        module: &PreparedModule,
        task: &TaskExport,
        mut running: Running<'_>,
        instance: Instance,
        limits: &Limits,
    ) -> Result<snapshot::Snapshot, String> {
        let decode_fuel = running.fuel_used(limits).unwrap_or(0);
        let mut store = running.into_store();
        let memory = store.data().memory.ok_or("the instance has no memory")?;
        // wizer keeps a record per run of non-zero bytes: a memory of millions of them would
        // take gigabytes to snapshot.
        let runs = snapshot::nonzero_runs(memory.data(&store), snapshot::MAX_RUNS);
        if runs > snapshot::MAX_RUNS {
            return Err(format!(
                "the decoded memory has over {} runs of data",
                snapshot::MAX_RUNS
            ));
        }
        let wasm = snapshot::capture(module.wasm(), &mut store, instance)?;
        drop(store);
        // What it holds: its data (zeros are holes in its memory file) and its code.
        let bytes = snapshot::held_bytes(wasm.len(), module.wasm().len());
        if bytes > self.config.max_snapshot_bytes / 2 {
            return Err(format!(
                "the snapshot would hold {bytes} bytes, over half of the {} kept",
                self.config.max_snapshot_bytes
            ));
        }
        let started = std::time::Instant::now();
        let compiled = self
            .compile_limited(&wasm, CompileAs::Snapshot)
            .map_err(|error| error.to_string())?;
        self.snapshots
            .compiled(module.wasm().len(), started.elapsed());
        drop(wasm);
        let snapshot =
            PreparedModule::snapshot(self, module, compiled).map_err(|error| error.to_string())?;
        let task = snapshot
            .task(task.name())
            .map_err(|error| error.to_string())?;
        Ok(snapshot::Snapshot {
            module: snapshot,
            task,
            bytes,
            decode_fuel,
        })
    }

    /// Context snapshots made so far.
    pub fn snapshots_made(&self) -> u64 {
        self.snapshots.made()
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    pub(crate) fn linker(&self) -> &Linker<GuestState> {
        &self.linker
    }
}

/// Why a call stopped by [`Sandbox::run_until`] ended.
const STOPPED: &str = "the subtask was stopped";

/// A call's store, and the watch that ends it at its deadline.
pub(crate) struct Running<'s> {
    /// Dropped before the store: the watchdog writes into the store's memory until then.
    watch: Option<watchdog::Watch<'s>>,
    pub(crate) store: Store<GuestState>,
}

/// A limit that stopped a guest from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Halt {
    OutOfFuel,
    Deadline,
    Stopped,
}

impl Running<'_> {
    /// Fuel left, below zero once the guest overspent (when the engine meters fuel).
    fn fuel_left(&mut self) -> Option<i64> {
        let global = self.store.data().fuel?;
        global.get(&mut self.store).i64()
    }

    /// Whether the guest spent more fuel than it had (always false without fuel metering).
    fn overspent(&mut self) -> bool {
        self.fuel_left().is_some_and(|left| left < 0)
    }

    /// Fuel the call used of its limit, when the engine meters fuel.
    fn fuel_used(&mut self, limits: &Limits) -> Option<u64> {
        let left = u64::try_from(self.fuel_left()?).unwrap_or(0);
        Some(metered_fuel(limits).saturating_sub(left))
    }

    /// Whether `error`, a trap of the guest, came from a limit rather than the guest itself.
    pub(crate) fn limit_hit(&mut self, error: &wasmtime::Error) -> Option<Halt> {
        match error.downcast_ref::<Trap>()? {
            // A host call that could not pay.
            Trap::OutOfFuel => Some(Halt::OutOfFuel),
            // The checks `meter` writes trap so: the fuel, or the watchdog's reason, tells. Fuel
            // first: running out of it is the same on every provider, a deadline is not.
            Trap::UnreachableCodeReached => {
                if self.overspent() {
                    return Some(Halt::OutOfFuel);
                }
                match self.watch.as_ref().map(watchdog::Watch::reason) {
                    Some(meter::interrupt::DEADLINE) => Some(Halt::Deadline),
                    Some(meter::interrupt::STOPPED) => Some(Halt::Stopped),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// The store, no longer watched.
    fn into_store(mut self) -> Store<GuestState> {
        self.watch = None;
        self.store
    }
}

/// The fuel a call starts with: its limit, within what the fuel global holds.
fn metered_fuel(limits: &Limits) -> u64 {
    limits.fuel.min(i64::MAX as u64)
}

/// The result of a call that ended with `outcome`.
fn finish(
    mut running: Running<'_>,
    outcome: wasmtime::Result<()>,
    limits: &Limits,
) -> Result<Execution, SubtaskError> {
    match outcome {
        // The last straight run may have overspent after the last check.
        Ok(()) if running.overspent() => Err(SubtaskError::OutOfFuel { limit: limits.fuel }),
        Ok(()) => {
            let fuel_used = running.fuel_used(limits);
            running.into_store().into_data().finish(fuel_used)
        }
        Err(error) => Err(classify(&error, running, limits)),
    }
}

/// Turns a wasmtime error from a guest call into the typed error a user sees.
///
/// Limits that stop the guest from outside (fuel, deadline, a stop, stack) are named by what
/// stopped it. Any other trap is explained by what the guest did just before: a reported
/// panic, or a memory growth the limiter refused (Rust aborts when an allocation fails).
fn classify(error: &wasmtime::Error, mut running: Running<'_>, limits: &Limits) -> SubtaskError {
    if let Some(host) = error.downcast_ref::<HostTrap>() {
        return host.to_subtask_error();
    }
    match running.limit_hit(error) {
        Some(Halt::OutOfFuel) => return SubtaskError::OutOfFuel { limit: limits.fuel },
        Some(Halt::Deadline) => {
            return SubtaskError::Deadline {
                limit: limits.deadline,
            };
        }
        Some(Halt::Stopped) => return SubtaskError::Internal(STOPPED.into()),
        None => {}
    }
    let state = running.into_store().into_data();
    let trap = error.downcast_ref::<Trap>();
    match trap {
        Some(Trap::StackOverflow) => SubtaskError::StackOverflow,
        _ => {
            if let Some(message) = state.panic_message() {
                SubtaskError::Panic { message }
            } else if state.limiter.memory_denied() {
                SubtaskError::MemoryLimit {
                    limit: limits.memory_bytes,
                }
            } else if let Some(trap) = trap {
                SubtaskError::Trap {
                    message: trap.to_string(),
                    stderr: state.stderr_lossy(),
                }
            } else if state.limiter.table_denied() {
                SubtaskError::TableLimit
            } else {
                SubtaskError::Internal(format!("{error:#}"))
            }
        }
    }
}

/// Hashes the engine's compatibility hash (wasmtime version, target, settings) into a stable
/// 32-byte fingerprint.
fn fingerprint(engine: &Engine, config: &SandboxConfig) -> EngineFingerprint {
    use std::hash::Hash;

    struct Blake3Hasher(blake3::Hasher);
    impl std::hash::Hasher for Blake3Hasher {
        fn finish(&self) -> u64 {
            unreachable!("only the full digest is read")
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }

    let mut hasher = Blake3Hasher(blake3::Hasher::new());
    hasher.0.update(b"golem engine fingerprint");
    hasher.0.update(&golem_abi::ABI_VERSION.to_le_bytes());
    // What host calls cost is part of the fuel figures providers report and are compared on.
    for price in [HOST_CALL_FUEL, COPY_BYTES_PER_FUEL, RANDOM_FUEL_PER_BYTE] {
        hasher.0.update(&price.to_le_bytes());
    }
    // Compiled code holds what `meter` wrote into it.
    let metering = config.metering();
    hasher.0.update(&meter::METER_VERSION.to_le_bytes());
    hasher
        .0
        .update(&[u8::from(metering.fuel), u8::from(metering.interrupt)]);
    engine.precompile_compatibility_hash().hash(&mut hasher);
    EngineFingerprint(*hasher.0.finalize().as_bytes())
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod wasi_suite;
