//! Context snapshots: a task's context decoded once, and every call started from there.
//!
//! A task whose module exports its context function (`golem_context_<task>`) gets its context
//! decoded in an instance of its own (by default once its calls, decoding it each, have spent
//! about what that costs: [`ContextSnapshots`](super::ContextSnapshots)): the module's
//! start-up, then that function, under the call's limits and a seed derived from the context
//! alone. wizer reads that instance's
//! memory and globals back into a module whose data is the decoded state, which is compiled
//! (its code comes from the store of compiled functions, so only its data is new) and loaded
//! from a memory file. Every call of the task with that context then instantiates this module:
//! its memory maps the file copy-on-write, so a call costs what it touches, not the context's
//! size, and its writes go to pages of its own that die with it.
//!
//! Without snapshots ([`SandboxConfig::context_snapshots`](super::SandboxConfig) off, or a
//! module wizer cannot instrument) each call runs the same start-up and context function in its
//! own instance first, with the same seed and limits, and then the task with its state reset as
//! a snapshot's call finds it. The outputs are the same bytes either way, and so is the fuel:
//! a call is charged for the decode whether it did it or its snapshot did, so what a subtask
//! costs does not depend on which provider ran it or when (redundant runs compare fuel too).

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::{Instance, Store};
use wasmtime_wizer::{InstanceState, SnapshotVal, Wizer};

use super::host::GuestState;
use super::module::{PreparedModule, TaskExport};
use super::{BlobId, Context, Limits, lock};

/// What names a snapshot: the call's module, task, context and the limits the context was
/// decoded under (a context that decodes within one fuel limit may not within another).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub(crate) struct SnapshotKey {
    module: BlobId,
    /// The task's name, hashed: names come from peers, and keys are kept.
    task: [u8; 32],
    context: [u8; 32],
    fuel: u64,
    memory_bytes: usize,
}

impl SnapshotKey {
    pub(crate) fn new(module: BlobId, task: &str, context: &Context, limits: &Limits) -> Self {
        Self {
            module,
            task: *blake3::hash(task.as_bytes()).as_bytes(),
            context: *context.hash(),
            fuel: limits.fuel,
            memory_bytes: limits.memory_bytes,
        }
    }
}

/// An instance with its context decoded, as a module that starts there.
pub(crate) struct Snapshot {
    pub(crate) module: PreparedModule,
    pub(crate) task: TaskExport,
    /// Bytes it holds in memory (see [`held_bytes`]).
    pub(crate) bytes: usize,
    /// Fuel its start-up and decode took: what every call started from it is charged for them.
    pub(crate) decode_fuel: u64,
}

/// Snapshots kept, the least recently used dropped past a byte budget.
#[derive(Default)]
pub(crate) struct Snapshots {
    kept: Mutex<Kept>,
    /// Time calls spent decoding each context without a snapshot, and the last decode.
    decoding: Mutex<HashMap<SnapshotKey, Decoding>>,
    /// Nanoseconds per byte of module the last snapshot took to compile; 0 before the first.
    compile_ns_per_byte: std::sync::atomic::AtomicU64,
    /// Snapshots that could not be made, so they are not tried again; past
    /// [`FAILED_REMEMBERED`] the memory starts over.
    failed: Mutex<std::collections::HashSet<SnapshotKey>>,
    made: std::sync::atomic::AtomicU64,
}

const FAILED_REMEMBERED: usize = 4096;

/// Snapshots kept at most, however small.
const MAX_SNAPSHOTS: usize = 1024;

/// Runs of non-zero bytes a memory may have to be snapshotted: wizer keeps a record of some
/// 50 bytes for each while it reads the memory.
pub(crate) const MAX_RUNS: usize = 1 << 20;

/// Runs of non-zero bytes in `memory`, split at wasm pages as wizer splits them, counted up to
/// just past `cap`.
pub(crate) fn nonzero_runs(memory: &[u8], cap: usize) -> usize {
    let mut runs = 0;
    for page in memory.chunks(1 << 16) {
        let mut previous = 0u8;
        for byte in page {
            if *byte != 0 && previous == 0 {
                runs += 1;
            }
            previous = *byte;
        }
        if runs > cap {
            break;
        }
    }
    runs
}

/// Bytes a snapshot holds in memory, from the size of its wasm (its code and the non-zero runs
/// of its memory) and of its module: compiled code takes a few times its wasm.
pub(crate) fn held_bytes(snapshot_wasm: usize, module_wasm: usize) -> usize {
    snapshot_wasm.saturating_add(module_wasm.saturating_mul(4))
}

#[derive(Clone, Copy, Default)]
struct Decoding {
    total: Duration,
    last: Duration,
}

/// What compiling a snapshot is taken to cost per byte of its module before one was measured
/// (a 1.2 MB module compiled in about 100 ms here, most of its functions found compiled).
const COMPILE_NS_PER_BYTE: u64 = 100;

/// Making a snapshot: a compile, and the decode, reading and writing of its memory, which
/// take about this many decodes.
const DECODES_PER_SNAPSHOT: u32 = 10;

#[derive(Default)]
struct Kept {
    snapshots: HashMap<SnapshotKey, Arc<Snapshot>>,
    order: VecDeque<SnapshotKey>,
    bytes: usize,
}

impl Snapshots {
    pub(crate) fn get(&self, key: &SnapshotKey) -> Option<Arc<Snapshot>> {
        let mut kept = lock(&self.kept);
        let snapshot = Arc::clone(kept.snapshots.get(key)?);
        if let Some(at) = kept.order.iter().position(|known| known == key) {
            kept.order.remove(at);
        }
        kept.order.push_back(key.clone());
        Some(snapshot)
    }

    /// Keeps `snapshot`, dropping the least recently used ones past `budget` bytes (calls
    /// running on them keep theirs until they end).
    pub(crate) fn keep(&self, key: SnapshotKey, snapshot: Arc<Snapshot>, budget: usize) {
        self.made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut kept = lock(&self.kept);
        kept.bytes += snapshot.bytes;
        if let Some(old) = kept.snapshots.insert(key.clone(), snapshot) {
            kept.bytes -= old.bytes;
            kept.order.retain(|known| *known != key);
        }
        kept.order.push_back(key);
        while kept.bytes > budget || kept.order.len() > MAX_SNAPSHOTS {
            let Some(oldest) = kept.order.pop_front() else {
                break;
            };
            if let Some(old) = kept.snapshots.remove(&oldest) {
                kept.bytes -= old.bytes;
            }
        }
    }

    /// Remembers that the snapshot `key` could not be made.
    pub(crate) fn failed(&self, key: SnapshotKey) {
        let mut failed = lock(&self.failed);
        if failed.len() >= FAILED_REMEMBERED {
            failed.clear();
        }
        failed.insert(key);
    }

    /// Whether the snapshot `key` could not be made before.
    pub(crate) fn has_failed(&self, key: &SnapshotKey) -> bool {
        lock(&self.failed).contains(key)
    }

    /// Counts `took` spent decoding the context of `key` without a snapshot.
    pub(crate) fn decoded(&self, key: SnapshotKey, took: Duration) {
        let mut decoding = lock(&self.decoding);
        if decoding.len() >= FAILED_REMEMBERED && !decoding.contains_key(&key) {
            decoding.clear();
        }
        let spent = decoding.entry(key).or_default();
        spent.total += took;
        spent.last = took;
    }

    /// Whether the calls of `key` have spent as long decoding its context as making its
    /// snapshot (for a module of `module_bytes`) is expected to take.
    pub(crate) fn pays(&self, key: &SnapshotKey, module_bytes: usize) -> bool {
        let Some(spent) = lock(&self.decoding).get(key).copied() else {
            return false;
        };
        let per_byte = match self.compile_ns_per_byte.load(Ordering::Relaxed) {
            0 => COMPILE_NS_PER_BYTE,
            measured => measured,
        };
        let compile = Duration::from_nanos(per_byte.saturating_mul(module_bytes as u64));
        spent.total >= compile + spent.last * DECODES_PER_SNAPSHOT
    }

    /// A snapshot of a module of `module_bytes` took `took` to compile: the estimate moves a
    /// quarter of the way there, within 10 to 10,000 ns per byte (one huge snapshot does not
    /// make every later one look too dear to make).
    pub(crate) fn compiled(&self, module_bytes: usize, took: Duration) {
        let measured = u64::try_from(took.as_nanos() / (module_bytes.max(1) as u128))
            .unwrap_or(u64::MAX)
            .clamp(10, 10_000);
        let _ =
            self.compile_ns_per_byte
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                    Some(match last {
                        0 => measured,
                        last => (last * 3 + measured) / 4,
                    })
                });
    }

    /// Snapshots made so far.
    pub(crate) fn made(&self) -> u64 {
        self.made.load(Ordering::Relaxed)
    }
}

/// The seed of the randomness a context function draws: from the context alone, so every
/// provider decodes a context into the same state.
pub(crate) fn context_seed(context: &[u8; 32]) -> [u8; 32] {
    blake3::derive_key("golem 2026-12 context snapshot seed", context)
}

/// Reads an initialised instance of an instrumented module back into a module starting there.
pub(crate) fn capture(
    wasm: &[u8],
    store: &mut Store<GuestState>,
    instance: Instance,
) -> Result<Vec<u8>, String> {
    let wizer = Wizer::new();
    let (cx, _) = wizer
        .instrument(wasm)
        .map_err(|error| format!("cannot instrument the module: {error:#}"))?;
    let mut state = Live { store, instance };
    let snapshot = std::pin::pin!(wizer.snapshot(&cx, &mut state));
    // Every read of `Live` is ready at once: the future ends at its first poll.
    match snapshot.poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(result) => {
            let wasm =
                result.map_err(|error| format!("cannot snapshot the instance: {error:#}"))?;
            // Instrumented as its module was: with the same exports, the compiler finds most
            // of its functions compiled already (without, a third of them differ).
            instrument(&wasm).ok_or_else(|| "cannot instrument the snapshot".into())
        }
        std::task::Poll::Pending => Err("the snapshot did not complete".into()),
    }
}

/// A module wizer can snapshot once compiled from [`instrument`]'s bytes: `None` when it cannot
/// (a table mutation, say), and the module runs without snapshots.
pub(crate) fn instrument(wasm: &[u8]) -> Option<Vec<u8>> {
    match Wizer::new().instrument(wasm) {
        Ok((_, instrumented)) => Some(instrumented),
        Err(error) => {
            tracing::debug!(%error, "module runs without context snapshots");
            None
        }
    }
}

/// Whether a compiled module came from [`instrument`]'s bytes.
pub(crate) fn is_instrumented(module: &wasmtime::Module) -> bool {
    module.get_export_index("__wizer_memory_0").is_some()
}

/// An instance being read by wizer.
struct Live<'a> {
    store: &'a mut Store<GuestState>,
    instance: Instance,
}

impl InstanceState for Live<'_> {
    async fn global_get(&mut self, name: &str, _: wasmtime_wizer::ValType) -> SnapshotVal {
        let value = self
            .instance
            .get_global(&mut *self.store, name)
            .map(|global| global.get(&mut *self.store));
        match value {
            Some(wasmtime::Val::I32(x)) => SnapshotVal::I32(x),
            Some(wasmtime::Val::I64(x)) => SnapshotVal::I64(x),
            Some(wasmtime::Val::F32(x)) => SnapshotVal::F32(x),
            Some(wasmtime::Val::F64(x)) => SnapshotVal::F64(x),
            Some(wasmtime::Val::V128(x)) => SnapshotVal::V128(x.as_u128()),
            // wizer asks only for the globals its instrumentation exported, and refuses
            // modules with globals of other types.
            _ => unreachable!("wizer reads an exported global of a value type"),
        }
    }

    async fn memory_contents(&mut self, name: &str, contents: impl FnOnce(&[u8]) + Send) {
        match self.instance.get_memory(&mut *self.store, name) {
            Some(memory) => contents(memory.data(&*self.store)),
            None => unreachable!("wizer reads a memory its instrumentation exported"),
        }
    }
}

/// Compiled functions by the compiler's key, kept so a snapshot's compile (the same code with
/// other data) reuses that of its module. Past its budget it starts over.
#[derive(Debug)]
pub(crate) struct CompiledFunctions {
    functions: Mutex<Functions>,
    budget: usize,
}

#[derive(Debug, Default)]
struct Functions {
    by_key: HashMap<Vec<u8>, Vec<u8>>,
    bytes: usize,
}

impl CompiledFunctions {
    pub(crate) fn new(budget: usize) -> Self {
        Self {
            functions: Mutex::default(),
            budget,
        }
    }
}

impl wasmtime::CacheStore for CompiledFunctions {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        let functions = lock(&self.functions);
        functions
            .by_key
            .get(key)
            .map(|value| Cow::Owned(value.clone()))
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        let size = key.len() + value.len();
        if size > self.budget {
            return false;
        }
        let mut functions = lock(&self.functions);
        if functions.bytes + size > self.budget {
            functions.by_key.clear();
            functions.bytes = 0;
        }
        functions.bytes += size;
        functions.by_key.insert(key.to_vec(), value);
        true
    }
}

/// Compiles `wasm` and loads it from a sealed memory file: the memory image of its instances
/// is that file, mapped copy-on-write, so its data is held once, not also in a copy of the
/// compiled artifact.
#[cfg(target_os = "linux")]
pub(crate) fn compile_to_memory_file(
    engine: &wasmtime::Engine,
    wasm: &[u8],
) -> wasmtime::Result<wasmtime::Module> {
    use rustix::fs::{MemfdFlags, SealFlags};

    let compiled = engine.precompile_module(wasm)?;
    let fd = rustix::fs::memfd_create(
        "golem-snapshot",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    let file = std::fs::File::from(fd);
    write_sparse(&file, &compiled)?;
    drop(compiled);
    rustix::fs::fcntl_add_seals(
        &file,
        SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL,
    )?;
    #[allow(unsafe_code)]
    // SAFETY: `Module::deserialize_open_file` trusts the file to hold code wasmtime compiled.
    // It does: `precompile_module` of this engine wrote it just now, into a memory file no other
    // process can name, sealed against any change before it is read.
    unsafe {
        wasmtime::Module::deserialize_open_file(engine, file)
    }
}

/// Writes `bytes` to the empty `file`, leaving its pages of zeros as holes: a snapshot's memory
/// often has long runs of zeros (memory freed and cleared), which then take no memory.
#[cfg(target_os = "linux")]
fn write_sparse(file: &std::fs::File, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;

    const PAGE: usize = 4096;
    file.set_len(bytes.len() as u64)?;
    let mut at = 0;
    while at < bytes.len() {
        let is_zero = |page: &[u8]| page.iter().all(|byte| *byte == 0);
        let page = |at: usize| &bytes[at..bytes.len().min(at + PAGE)];
        if is_zero(page(at)) {
            at += PAGE;
            continue;
        }
        let start = at;
        while at < bytes.len() && !is_zero(page(at)) {
            at += PAGE;
        }
        let end = at.min(bytes.len());
        file.write_all_at(&bytes[start..end], start as u64)?;
    }
    Ok(())
}

/// Compiles `wasm` (no memory files here: the module holds its data itself).
#[cfg(not(target_os = "linux"))]
pub(crate) fn compile_to_memory_file(
    engine: &wasmtime::Engine,
    wasm: &[u8],
) -> wasmtime::Result<wasmtime::Module> {
    wasmtime::Module::new(engine, wasm)
}
