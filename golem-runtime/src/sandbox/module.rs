//! Accepting a module: hash, size, compile, import allow-list, ABI version; then calling it.

use std::fmt;
use std::ptr::NonNull;
use std::time::Duration;

use golem_abi as abi;
use wasmtime::{ExternType, Instance, InstancePre, Module, ModuleExport, Store, TypedFunc};

use super::host::GuestState;
use super::{BlobId, ModuleError, Sandbox, meter};

/// A module compiled for one engine, checked and ready to instantiate.
pub struct PreparedModule {
    hash: BlobId,
    module: Module,
    pre: InstancePre<GuestState>,
    memory: ModuleExport,
    metered: Metered,
    initialize: Option<ModuleExport>,
    /// The module's own bytes, read again to snapshot its instances; empty for a snapshot.
    wasm: std::sync::Arc<[u8]>,
    /// Whether its instances can be snapshotted (it was compiled instrumented).
    snapshots: bool,
}

impl fmt::Debug for PreparedModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreparedModule")
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

/// What the sandbox wrote into a module (see `meter`), looked up once.
struct Metered {
    fuel: Option<ModuleExport>,
    interrupt: Option<ModuleExport>,
    start: Option<ModuleExport>,
}

/// A task's export in a [`PreparedModule`], looked up once by name, with its context function
/// when the module has one.
#[derive(Clone)]
pub struct TaskExport {
    name: String,
    export: ModuleExport,
    context: Option<ModuleExport>,
}

impl fmt::Debug for TaskExport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskExport")
            .field("name", &self.name)
            .finish()
    }
}

impl TaskExport {
    /// The task's name (without the export prefix).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl PreparedModule {
    /// The module's hash.
    pub fn hash(&self) -> BlobId {
        self.hash
    }

    /// Looks up the export of the task called `name`.
    pub fn task(&self, name: &str) -> Result<TaskExport, ModuleError> {
        let missing = || ModuleError::MissingTask { task: name.into() };
        let export = self
            .function(&format!("{}{name}", abi::TASK_EXPORT_PREFIX))
            .ok_or_else(missing)?;
        Ok(TaskExport {
            name: name.into(),
            export,
            context: self.function(&format!("{}{name}", abi::CONTEXT_EXPORT_PREFIX)),
        })
    }

    /// The export `name` when it is a function `() -> ()`.
    fn function(&self, name: &str) -> Option<ModuleExport> {
        match self.module.get_export(name) {
            Some(ExternType::Func(ty)) if ty.params().len() == 0 && ty.results().len() == 0 => {
                self.module.get_export_index(name)
            }
            _ => None,
        }
    }

    /// Whether calls of its tasks can start from a snapshot of their decoded context.
    pub(crate) fn snapshots(&self) -> bool {
        self.snapshots
    }

    pub(crate) fn wasm(&self) -> &[u8] {
        &self.wasm
    }

    /// Instantiates the module in `store` with `fuel` (when the engine meters it), returning
    /// the instance and its interrupt byte (when the engine checks deadlines). Nothing of the
    /// guest's has run yet: [`start_up`](Self::start_up) runs its start-up.
    pub(crate) fn instantiate(
        &self,
        store: &mut Store<GuestState>,
        fuel: Option<u64>,
    ) -> wasmtime::Result<(Instance, Option<NonNull<u8>>)> {
        let instance = self.pre.instantiate(&mut *store)?;
        store.data_mut().memory = instance
            .get_module_export(&mut *store, &self.memory)
            .and_then(|export| export.into_memory());
        if let (Some(fuel), Some(export)) = (fuel, &self.metered.fuel) {
            let global = instance
                .get_module_export(&mut *store, export)
                .and_then(|export| export.into_global())
                .ok_or_else(|| wasmtime::format_err!("the fuel global is missing"))?;
            global.set(
                &mut *store,
                wasmtime::Val::I64(i64::try_from(fuel).unwrap_or(i64::MAX)),
            )?;
            store.data_mut().fuel = Some(global);
        }
        let interrupt = match &self.metered.interrupt {
            Some(export) => {
                let memory = instance
                    .get_module_export(&mut *store, export)
                    .and_then(|export| export.into_memory())
                    .ok_or_else(|| wasmtime::format_err!("the interrupt memory is missing"))?;
                NonNull::new(memory.data_ptr(&*store))
            }
            None => None,
        };
        Ok((instance, interrupt))
    }

    /// Runs the start-up of `instance`, an instance of this module: its start function, then
    /// `_initialize` when `initialize`.
    pub(crate) fn start_up(
        &self,
        instance: &Instance,
        store: &mut Store<GuestState>,
        initialize: bool,
    ) -> wasmtime::Result<()> {
        if let Some(start) = &self.metered.start {
            typed_func(instance, store, start)?.call(&mut *store, ())?;
        }
        if let Some(initialize) = self.initialize.as_ref().filter(|_| initialize) {
            typed_func(instance, store, initialize)?.call(&mut *store, ())?;
        }
        Ok(())
    }

    /// Calls `export` of `instance`, an instance of this module.
    pub(crate) fn call(
        instance: &Instance,
        store: &mut Store<GuestState>,
        export: &ModuleExport,
    ) -> wasmtime::Result<()> {
        typed_func(instance, store, export)?.call(&mut *store, ())
    }

    /// A snapshot of an instance of `of`, compiled: it starts where that instance was, so it
    /// has no start-up to run.
    pub(crate) fn snapshot(
        sandbox: &Sandbox,
        of: &PreparedModule,
        module: Module,
    ) -> Result<Self, ModuleError> {
        Self::link(sandbox, of.hash, module, std::sync::Arc::from([]))
    }

    /// `module`, compiled from `wasm` (named `hash`), linked to the host functions, with its
    /// memory and what metering wrote into it looked up: no `_initialize` to run, and no
    /// snapshots of its instances.
    fn link(
        sandbox: &Sandbox,
        hash: BlobId,
        module: Module,
        wasm: std::sync::Arc<[u8]>,
    ) -> Result<Self, ModuleError> {
        let pre = sandbox
            .linker()
            .instantiate_pre(&module)
            .map_err(|_| first_mistyped_import(&module))?;
        let memory = module
            .get_export_index("memory")
            .ok_or(ModuleError::NotAGolemModule)?;
        let metering = sandbox.config().metering();
        let written = |on: bool, name: &str| {
            if !on {
                return Ok(None);
            }
            module
                .get_export_index(name)
                .map(Some)
                .ok_or_else(|| ModuleError::Invalid(format!("metering wrote no `{name}` export")))
        };
        let metered = Metered {
            fuel: written(metering.fuel, meter::FUEL_EXPORT)?,
            interrupt: written(metering.interrupt, meter::INTERRUPT_EXPORT)?,
            start: metering
                .any()
                .then(|| module.get_export_index(meter::START_EXPORT))
                .flatten(),
        };
        Ok(Self {
            hash,
            module,
            pre,
            memory,
            metered,
            initialize: None,
            wasm,
            snapshots: false,
        })
    }
}

impl TaskExport {
    pub(crate) fn export(&self) -> &ModuleExport {
        &self.export
    }

    /// The task's context function, when its module has one.
    pub(crate) fn context_export(&self) -> Option<&ModuleExport> {
        self.context.as_ref()
    }
}

fn typed_func(
    instance: &Instance,
    store: &mut Store<GuestState>,
    export: &ModuleExport,
) -> wasmtime::Result<TypedFunc<(), ()>> {
    instance
        .get_module_export(&mut *store, export)
        .and_then(|export| export.into_func())
        .ok_or_else(|| wasmtime::format_err!("export is not a function"))?
        .typed::<(), ()>(&*store)
}

/// A compiled module, and where to keep it once it passed its checks.
struct Compiled {
    module: Module,
    keep_at: Option<std::path::PathBuf>,
}

/// Compiles a module, or loads it from the sandbox's compiled-module cache.
fn compile(sandbox: &Sandbox, hash: BlobId, bytes: &[u8]) -> Result<Compiled, ModuleError> {
    let Some(dir) = &sandbox.config().compiled_cache_dir else {
        return Ok(Compiled {
            module: sandbox.compile_limited(bytes, super::CompileAs::Module)?,
            keep_at: None,
        });
    };
    let fingerprint = blake3::Hash::from_bytes(sandbox.fingerprint().0).to_hex();
    let path = dir.join(format!("{}-{}.cwasm", hash.to_hex(), &fingerprint[..16]));
    if let Some(module) = load_compiled(sandbox, &path) {
        return Ok(Compiled {
            module,
            keep_at: None,
        });
    }
    Ok(Compiled {
        module: sandbox.compile_limited(bytes, super::CompileAs::Module)?,
        keep_at: Some(path),
    })
}

/// Writes a module that passed its checks to the compiled-module cache, if its quota and the
/// disk's reserve leave room.
fn keep(sandbox: &Sandbox, module: &Module, path: &std::path::Path) {
    let serialized = match module.serialize() {
        Ok(serialized) => serialized,
        Err(error) => {
            tracing::warn!(%error, "cannot serialize the compiled module");
            return;
        }
    };
    let name = file_name(path);
    if !sandbox.admit_compiled(&name, 32 + serialized.len() as u64) {
        tracing::warn!(path = %path.display(), "compiled module not cached: no room within the quota and the disk's reserve");
        return;
    }
    if let Err(error) = store_compiled(path, &serialized) {
        sandbox.forget_compiled(&name);
        tracing::warn!(path = %path.display(), %error, "cannot cache the compiled module");
    }
}

fn file_name(path: &std::path::Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A cache file is the blake3 hash of the serialized module, then the serialized module.
fn store_compiled(path: &std::path::Path, serialized: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = Vec::with_capacity(32 + serialized.len());
    file.extend_from_slice(blake3::hash(serialized).as_bytes());
    file.extend_from_slice(serialized);
    // Write aside and rename, so a crash never leaves a partial file under the name; aside
    // under this process's id, as processes may share the directory.
    let partial = path.with_extension(format!("partial-{}", std::process::id()));
    std::fs::write(&partial, &file)?;
    std::fs::rename(&partial, path)
}

fn load_compiled(sandbox: &Sandbox, path: &std::path::Path) -> Option<Module> {
    let file = std::fs::read(path).ok()?;
    let intact = file
        .split_at_checked(32)
        .filter(|(digest, body)| blake3::hash(body).as_bytes() == *digest);
    let Some((_, body)) = intact else {
        tracing::warn!(path = %path.display(), "corrupt compiled module deleted");
        let _ = std::fs::remove_file(path);
        sandbox.forget_compiled(&file_name(path));
        return None;
    };
    #[allow(unsafe_code)]
    // SAFETY: `Module::deserialize` trusts its input to be code wasmtime compiled. These bytes
    // are: this process (or an earlier run of the same provider) wrote them with
    // `Module::serialize` into the provider's own cache directory, and they still match the
    // hash written alongside, so they are neither truncated nor corrupted. wasmtime itself
    // refuses bytes from another wasmtime version or an incompatible engine configuration.
    let module = unsafe { Module::deserialize(sandbox.engine(), body) };
    match module {
        Ok(module) => Some(module),
        Err(error) => {
            tracing::info!(path = %path.display(), %error, "cached module not usable; recompiling");
            let _ = std::fs::remove_file(path);
            sandbox.forget_compiled(&file_name(path));
            None
        }
    }
}

/// Checks and compiles a module. See [`Sandbox::prepare`].
pub(crate) fn prepare(
    sandbox: &Sandbox,
    hash: BlobId,
    bytes: &[u8],
) -> Result<PreparedModule, ModuleError> {
    if bytes.is_empty() {
        return Err(ModuleError::NotBuilt);
    }
    let limit = sandbox.config().max_module_bytes;
    if bytes.len() > limit {
        return Err(ModuleError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    let actual = BlobId::of(bytes);
    if actual != hash {
        return Err(ModuleError::HashMismatch {
            expected: hash.to_hex(),
            actual: actual.to_hex(),
        });
    }
    // Names and data first, from the bytes: a module that imports what it may not, or whose
    // data would compile into a vast image, is refused before any time is spent compiling it.
    check_sections(bytes)?;
    let Compiled { module, keep_at } = compile(sandbox, hash, bytes)?;

    let initialize = module.get_export_index("_initialize");
    let snapshots = super::snapshot::is_instrumented(&module);
    let prepared = PreparedModule {
        initialize,
        snapshots,
        ..PreparedModule::link(sandbox, hash, module, std::sync::Arc::from(bytes))?
    };
    check_abi_version(sandbox, &prepared)?;
    // Only a module that passed every check takes room on disk.
    if let Some(path) = keep_at {
        keep(sandbox, &prepared.module, &path);
    }
    Ok(prepared)
}

/// A WASI command (a module that exports `_start`, not a golem task) checked, compiled and
/// linked as a task's module is, and its `_start`: what the WASI test suite runs.
#[cfg(test)]
pub(crate) fn prepare_command(
    sandbox: &Sandbox,
    bytes: &[u8],
) -> Result<(PreparedModule, ModuleExport), ModuleError> {
    check_sections(bytes)?;
    let module = sandbox.compile_limited(bytes, super::CompileAs::Module)?;
    let prepared = PreparedModule::link(
        sandbox,
        BlobId::of(bytes),
        module,
        std::sync::Arc::from(bytes),
    )?;
    let start = prepared
        .function("_start")
        .ok_or(ModuleError::NotAGolemModule)?;
    Ok((prepared, start))
}

/// Span of data segments allowed whatever their density: wasmtime's own default for a dense
/// memory image. The sandbox lets snapshots, whose images are made by it, go past it.
pub(crate) const DENSE_DATA_SPAN: u64 = 16 << 20;

/// Refuses any import outside the golem host functions and the WASI allow-list, by name, and
/// data segments spread thinly over more than [`DENSE_DATA_SPAN`], read from the module's bytes
/// before it is compiled.
fn check_sections(bytes: &[u8]) -> Result<(), ModuleError> {
    let invalid = |error: wasmparser::BinaryReaderError| ModuleError::Invalid(error.to_string());
    let mut data = DataSpan::default();
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload.map_err(invalid)? {
            // The sandbox adds a memory of its own (`meter`); a task has one, in pages of the
            // standard size.
            wasmparser::Payload::MemorySection(memories) => {
                if memories.count() > 1 {
                    return Err(ModuleError::Invalid(format!(
                        "the module defines {} memories; a task has one",
                        memories.count()
                    )));
                }
                for memory in memories {
                    if memory.map_err(invalid)?.page_size_log2.is_some() {
                        return Err(ModuleError::Invalid(
                            "the module's memory has a custom page size".into(),
                        ));
                    }
                }
            }
            wasmparser::Payload::ImportSection(imports) => {
                for import in imports.into_imports() {
                    let import = import.map_err(invalid)?;
                    let allowed = match import.module {
                        abi::HOST_MODULE => {
                            [abi::INPUT_LEN, abi::INPUT_READ, abi::OUTPUT, abi::PANIC]
                                .contains(&import.name)
                        }
                        abi::WASI_MODULE => abi::WASI_IMPORTS.contains(&import.name),
                        _ => false,
                    };
                    let is_function = matches!(import.ty, wasmparser::TypeRef::Func(_));
                    if !allowed || !is_function {
                        return Err(ModuleError::ForbiddenImport {
                            module: import.module.into(),
                            name: import.name.into(),
                        });
                    }
                }
            }
            // Names the sandbox writes into the module (`meter`).
            wasmparser::Payload::ExportSection(exports) => {
                for export in exports {
                    let name = export.map_err(invalid)?.name;
                    if name.starts_with(meter::RESERVED_PREFIX) {
                        return Err(ModuleError::Invalid(format!(
                            "the export `{name}` takes a name the sandbox keeps for itself"
                        )));
                    }
                }
            }
            wasmparser::Payload::DataSection(segments) => {
                for segment in segments {
                    data.add(&segment.map_err(invalid)?);
                }
            }
            _ => {}
        }
    }
    data.check()
}

/// Where a module's active data segments with constant offsets lie.
#[derive(Default)]
struct DataSpan {
    start: Option<u64>,
    end: u64,
    bytes: u64,
}

impl DataSpan {
    fn add(&mut self, segment: &wasmparser::Data<'_>) {
        let wasmparser::DataKind::Active { offset_expr, .. } = &segment.kind else {
            return;
        };
        let offset = match offset_expr.get_operators_reader().read() {
            Ok(wasmparser::Operator::I32Const { value }) => u64::from(value.cast_unsigned()),
            Ok(wasmparser::Operator::I64Const { value }) => value.cast_unsigned(),
            // Not known before it runs: wasmtime copies such segments in, it makes no image.
            _ => return,
        };
        let len = segment.data.len() as u64;
        self.start = Some(self.start.map_or(offset, |start| start.min(offset)));
        self.end = self.end.max(offset.saturating_add(len));
        self.bytes = self.bytes.saturating_add(len);
    }

    fn check(&self) -> Result<(), ModuleError> {
        let span = self.end.saturating_sub(self.start.unwrap_or(0));
        if span > DENSE_DATA_SPAN && self.bytes.saturating_mul(2) < span {
            return Err(ModuleError::SparseData {
                span,
                bytes: self.bytes,
                limit: DENSE_DATA_SPAN,
            });
        }
        Ok(())
    }
}

/// Names the import whose type does not match what the host defines (every name was already
/// checked against the allow-list).
fn first_mistyped_import(module: &Module) -> ModuleError {
    let import = module.imports().next();
    ModuleError::ImportType {
        module: import
            .as_ref()
            .map(|i| i.module().into())
            .unwrap_or_default(),
        name: import.as_ref().map(|i| i.name().into()).unwrap_or_default(),
    }
}

/// Fuel a module's start-up (start function and version export) may burn when it is prepared.
pub const PROBE_FUEL: u64 = 1_000_000;
/// Wall time a module's start-up may take when it is prepared (with deadline checks on).
pub const PROBE_DEADLINE: Duration = Duration::from_secs(1);

/// Runs the module's start-up and reads its ABI version, under [`PROBE_FUEL`] and
/// [`PROBE_DEADLINE`]: a module that spins there is refused, not left holding a worker.
fn check_abi_version(sandbox: &Sandbox, module: &PreparedModule) -> Result<(), ModuleError> {
    let version_export = module
        .module
        .get_export_index(abi::VERSION_EXPORT)
        .ok_or(ModuleError::NotAGolemModule)?;
    let limits = super::Limits::default()
        .memory_bytes(sandbox.config().max_memory_bytes)
        .fuel(PROBE_FUEL)
        .deadline(PROBE_DEADLINE);
    let state = GuestState::new(
        super::Call {
            context: super::Context::empty(),
            input: &[],
            seed: [0; 32],
        },
        &limits,
    );
    let (mut running, instance) = sandbox.start(module, state, &limits, None, 0, false);
    let failed = |running: &mut super::Running<'_>, error: wasmtime::Error| {
        if running.limit_hit(&error).is_some() {
            ModuleError::StartupLimit {
                fuel: PROBE_FUEL,
                deadline: PROBE_DEADLINE,
            }
        } else {
            ModuleError::Instantiate(format!("{error:#}"))
        }
    };
    let instance = instance.map_err(|error| failed(&mut running, error))?;
    let version = instance
        .get_module_export(&mut running.store, &version_export)
        .and_then(|export| export.into_func())
        .and_then(|func| func.typed::<(), i32>(&running.store).ok())
        .ok_or(ModuleError::NotAGolemModule)?
        .call(&mut running.store, ());
    let version = version.map_err(|error| failed(&mut running, error))?;
    if u32::try_from(version).ok() != Some(abi::ABI_VERSION) {
        return Err(ModuleError::AbiVersion {
            found: i64::from(version),
            expected: abi::ABI_VERSION,
        });
    }
    Ok(())
}
