//! Fuel and deadlines written into the module itself, so enforcing them costs the guest's hot
//! loops a compare and a branch to a trap, never a call.
//!
//! wasmtime's own fuel and epoch checks leave the loop for a call into the runtime when they
//! fire. A value live across a call has to survive it, and x86-64 has no callee-saved vector
//! registers: every float a loop keeps in registers is spilled and reloaded on each iteration,
//! although the call almost never happens (a Mandelbrot tile ran 1.17× native with both on,
//! 1.01× with neither). Here the checks end in `unreachable` instead, and the host tells why the
//! guest trapped from what it set:
//!
//! * **Fuel** lives in a mutable `i64` global of the module's own, exported as [`FUEL_EXPORT`].
//!   Each straight run of instructions pays for itself before it starts, at the prices wasmtime
//!   uses (one unit per function entry and per instruction; `nop`, `drop`, `block`, `loop`, `unreachable`, `return`,
//!   `else` and `end` free; `memory.copy`, `.fill`, `.init` one per byte and the table's bulk
//!   operations one per element, paid before they run). At every function entry and loop head
//!   the guest traps once the fuel is below zero. A call either ends with fuel left or fails out
//!   of fuel: the outcome depends on the fuel alone.
//! * **The deadline** and an outside stop: a two-byte memory of the module's own, exported as
//!   [`INTERRUPT_EXPORT`], whose first byte the guest never writes. The sandbox's watchdog thread sets its
//!   first byte to [`interrupt::DEADLINE`] or [`interrupt::STOPPED`]; the same function entries
//!   and loop heads trap when it is not zero. (The guest writes only the byte after it, which
//!   keeps the compiler from reading the byte once for a whole loop.)
//! * A start function would run before the host can set the fuel or watch the memory: its start
//!   section is dropped and the function exported as [`START_EXPORT`], for the host to call.
//!
//! The guest cannot reach what is added: code referring to a global or memory the module did
//! not define is refused here, before its indices could name the new ones.

use std::borrow::Cow;
use std::ops::Range;

use wasm_encoder::reencode::{Error, Reencode, utils};
use wasm_encoder::{
    BlockType, ConstExpr, ExportKind, Function, GlobalType, Instruction, MemArg, MemoryType,
    SectionId, ValType,
};
use wasmparser::{Operator, Payload};

/// What the names of the exports written here begin with; a module may export none of its own.
pub(crate) const RESERVED_PREFIX: &str = "golem:";
/// The export of the fuel left, an `i64` global.
pub(crate) const FUEL_EXPORT: &str = "golem:fuel";
/// The export of the memory whose first byte stops the guest.
pub(crate) const INTERRUPT_EXPORT: &str = "golem:interrupt";
/// The export of the module's start function, which no longer runs by itself.
pub(crate) const START_EXPORT: &str = "golem:start";
/// Changes whenever the code this writes changes: part of the engine fingerprint, as compiled
/// modules depend on it.
pub(crate) const METER_VERSION: u32 = 1;

/// Values of the interrupt byte.
pub(crate) mod interrupt {
    /// The call's deadline passed.
    pub(crate) const DEADLINE: u8 = 1;
    /// The call was stopped from outside.
    pub(crate) const STOPPED: u8 = 2;
}

/// What to write into a module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Metering {
    /// Fuel, in a global the host sets before the guest runs.
    pub(crate) fuel: bool,
    /// Checks of the interrupt byte.
    pub(crate) interrupt: bool,
}

impl Metering {
    /// Whether anything is written.
    pub(crate) fn any(self) -> bool {
        self.fuel || self.interrupt
    }
}

/// `wasm` with `metering` written in; the bytes themselves when there is nothing to write.
pub(crate) fn meter(wasm: &[u8], metering: Metering) -> Result<Cow<'_, [u8]>, String> {
    if !metering.any() {
        return Ok(Cow::Borrowed(wasm));
    }
    let scan = Scan::of(wasm)?;
    // The start section goes: its function is exported instead.
    let without_start: Cow<'_, [u8]> = match &scan.start {
        Some((_, range)) => {
            let mut bytes = wasm[..range.start].to_vec();
            bytes.extend_from_slice(&wasm[range.end..]);
            Cow::Owned(bytes)
        }
        None => Cow::Borrowed(wasm),
    };
    let mut writer = Writer {
        metering,
        fuel_global: scan.globals,
        scratch_global: scan.globals + 1,
        interrupt_memory: scan.memories,
        globals: scan.globals,
        memories: scan.memories,
        start: scan.start.map(|(func, _)| func),
        added: Added::default(),
    };
    let mut module = wasm_encoder::Module::new();
    writer
        .parse_core_module(&mut module, wasmparser::Parser::new(0), &without_start)
        .map_err(|error| match error {
            Error::UserError(message) => message,
            other => other.to_string(),
        })?;
    Ok(Cow::Owned(module.finish()))
}

/// What is read of a module before it is written again.
struct Scan {
    /// Globals the module has (imported or its own): the first added global's index.
    globals: u32,
    /// Memories the module has: the interrupt memory's index.
    memories: u32,
    /// The start function, and the bytes of the start section with its header.
    start: Option<(u32, Range<usize>)>,
}

impl Scan {
    fn of(wasm: &[u8]) -> Result<Self, String> {
        let mut scan = Self {
            globals: 0,
            memories: 0,
            start: None,
        };
        // Where the section being read begins: where the one before it ended.
        let mut section_start = 0;
        for payload in wasmparser::Parser::new(0).parse_all(wasm) {
            let payload = payload.map_err(|error| error.to_string())?;
            match &payload {
                Payload::ImportSection(imports) => {
                    for import in imports.clone().into_imports() {
                        match import.map_err(|error| error.to_string())?.ty {
                            wasmparser::TypeRef::Global(_) => scan.globals += 1,
                            wasmparser::TypeRef::Memory(_) => scan.memories += 1,
                            _ => {}
                        }
                    }
                }
                Payload::GlobalSection(globals) => scan.globals += globals.count(),
                Payload::MemorySection(memories) => {
                    for memory in memories.clone() {
                        if memory.map_err(|error| error.to_string())?.memory64 {
                            return Err("64-bit memories are not supported".into());
                        }
                        scan.memories += 1;
                    }
                }
                Payload::TableSection(tables) => {
                    for table in tables.clone() {
                        if table.map_err(|error| error.to_string())?.ty.table64 {
                            return Err("64-bit tables are not supported".into());
                        }
                    }
                }
                Payload::StartSection { func, range } => {
                    scan.start = Some((*func, section_start..range.end));
                }
                _ => {}
            }
            if let Some((_, range)) = payload.as_section() {
                section_start = range.end;
            } else if let Payload::Version { range, .. } = &payload {
                section_start = range.end;
            }
        }
        Ok(scan)
    }
}

/// Sections that hold what is added, once written.
#[derive(Default)]
struct Added {
    memory: bool,
    global: bool,
    export: bool,
}

struct Writer {
    metering: Metering,
    fuel_global: u32,
    /// An `i32` global that holds a bulk operation's length while it is paid for.
    scratch_global: u32,
    interrupt_memory: u32,
    /// Globals and memories the module defined: its code may refer to no others.
    globals: u32,
    memories: u32,
    start: Option<u32>,
    added: Added,
}

impl Writer {
    fn add_memory(&mut self, memories: &mut wasm_encoder::MemorySection) {
        if self.metering.interrupt {
            // Two bytes, in pages of one byte: a memory within one host page is reset by
            // clearing it, where a larger one costs a system call to find its dirty pages.
            memories.memory(MemoryType {
                minimum: 2,
                maximum: Some(2),
                memory64: false,
                shared: false,
                page_size_log2: Some(0),
            });
        }
        self.added.memory = true;
    }

    fn add_globals(&mut self, globals: &mut wasm_encoder::GlobalSection) {
        if self.metering.fuel {
            let mutable = |val_type| GlobalType {
                val_type,
                mutable: true,
                shared: false,
            };
            globals.global(mutable(ValType::I64), &ConstExpr::i64_const(0));
            globals.global(mutable(ValType::I32), &ConstExpr::i32_const(0));
        }
        self.added.global = true;
    }

    fn add_exports(&mut self, exports: &mut wasm_encoder::ExportSection) {
        if self.metering.fuel {
            exports.export(FUEL_EXPORT, ExportKind::Global, self.fuel_global);
        }
        if self.metering.interrupt {
            exports.export(INTERRUPT_EXPORT, ExportKind::Memory, self.interrupt_memory);
        }
        if let Some(start) = self.start {
            exports.export(START_EXPORT, ExportKind::Func, start);
        }
        self.added.export = true;
    }

    /// Takes `cost` from the fuel.
    fn charge(&self, body: &mut Function, cost: i64) {
        emit(
            body,
            &[
                Instruction::GlobalGet(self.fuel_global),
                Instruction::I64Const(cost),
                Instruction::I64Sub,
                Instruction::GlobalSet(self.fuel_global),
            ],
        );
    }

    /// Traps when the fuel is below zero (with `fuel`) or the interrupt byte is set (with
    /// `interrupt`).
    fn check(&self, body: &mut Function, fuel: bool, interrupt: bool) {
        if fuel {
            emit(
                body,
                &[
                    Instruction::GlobalGet(self.fuel_global),
                    Instruction::I64Const(0),
                    Instruction::I64LtS,
                ],
            );
        }
        if interrupt {
            // A store into the memory first, beside the byte: with no store between two loads of
            // the byte the compiler takes the second for the first, and a loop whose body
            // stores nothing would read the byte once, before it starts.
            emit(
                body,
                &[
                    Instruction::I32Const(0),
                    Instruction::I32Const(0),
                    Instruction::I32Store8(MemArg {
                        offset: 1,
                        align: 0,
                        memory_index: self.interrupt_memory,
                    }),
                    Instruction::I32Const(0),
                    Instruction::I32Load8U(MemArg {
                        offset: 0,
                        align: 0,
                        memory_index: self.interrupt_memory,
                    }),
                ],
            );
        }
        if fuel && interrupt {
            body.instruction(&Instruction::I32Or);
        }
        if fuel || interrupt {
            emit(
                body,
                &[
                    Instruction::If(BlockType::Empty),
                    Instruction::Unreachable,
                    Instruction::End,
                ],
            );
        }
    }

    /// Pays for the bulk operation about to run, whose length (an `i32`) is on top of the stack
    /// and stays there.
    fn charge_length(&self, body: &mut Function) {
        emit(
            body,
            &[
                Instruction::GlobalSet(self.scratch_global),
                Instruction::GlobalGet(self.scratch_global),
                Instruction::GlobalGet(self.fuel_global),
                Instruction::GlobalGet(self.scratch_global),
                Instruction::I64ExtendI32U,
                Instruction::I64Sub,
                Instruction::GlobalSet(self.fuel_global),
            ],
        );
        self.check(body, true, false);
    }
}

/// Fuel of one instruction, as wasmtime prices it.
fn cost(op: &Operator<'_>) -> i64 {
    match op {
        Operator::Nop
        | Operator::Drop
        | Operator::Block { .. }
        | Operator::Loop { .. }
        | Operator::Unreachable
        | Operator::Return
        | Operator::Else
        | Operator::End => 0,
        _ => 1,
    }
}

/// Whether control may leave or arrive right after `op`: a straight run ends with it.
fn ends_run(op: &Operator<'_>) -> bool {
    matches!(
        op,
        Operator::Loop { .. }
            | Operator::If { .. }
            | Operator::Else
            | Operator::End
            | Operator::Br { .. }
            | Operator::BrIf { .. }
            | Operator::BrTable { .. }
            | Operator::BrOnNull { .. }
            | Operator::BrOnNonNull { .. }
            | Operator::BrOnCast { .. }
            | Operator::BrOnCastFail { .. }
            | Operator::Return
            | Operator::Unreachable
            | Operator::Call { .. }
            | Operator::CallIndirect { .. }
            | Operator::CallRef { .. }
            | Operator::ReturnCall { .. }
            | Operator::ReturnCallIndirect { .. }
            | Operator::ReturnCallRef { .. }
            | Operator::Throw { .. }
            | Operator::ThrowRef
            | Operator::Rethrow { .. }
            | Operator::TryTable { .. }
            | Operator::Try { .. }
            | Operator::Catch { .. }
            | Operator::CatchAll
            | Operator::Delegate { .. }
    )
}

/// Whether `op` works on a length on top of the stack, paid per byte or element.
fn takes_length(op: &Operator<'_>) -> bool {
    matches!(
        op,
        Operator::MemoryCopy { .. }
            | Operator::MemoryFill { .. }
            | Operator::MemoryInit { .. }
            | Operator::TableCopy { .. }
            | Operator::TableFill { .. }
            | Operator::TableInit { .. }
            | Operator::TableGrow { .. }
    )
}

/// Order of the non-custom sections in a module.
fn rank(id: SectionId) -> u8 {
    match id {
        SectionId::Custom => 0,
        SectionId::Type => 1,
        SectionId::Import => 2,
        SectionId::Function => 3,
        SectionId::Table => 4,
        SectionId::Memory => 5,
        SectionId::Tag => 6,
        SectionId::Global => 7,
        SectionId::Export => 8,
        SectionId::Start => 9,
        SectionId::Element => 10,
        SectionId::DataCount => 11,
        SectionId::Code => 12,
        SectionId::Data => 13,
    }
}

impl Reencode for Writer {
    type Error = String;

    fn global_index(&mut self, global: u32) -> Result<u32, Error<String>> {
        if global >= self.globals {
            return Err(Error::UserError(format!("no global {global}")));
        }
        Ok(global)
    }

    fn memory_index(&mut self, memory: u32) -> Result<u32, Error<String>> {
        if memory >= self.memories {
            return Err(Error::UserError(format!("no memory {memory}")));
        }
        Ok(memory)
    }

    fn parse_memory_section(
        &mut self,
        memories: &mut wasm_encoder::MemorySection,
        section: wasmparser::MemorySectionReader<'_>,
    ) -> Result<(), Error<String>> {
        utils::parse_memory_section(self, memories, section)?;
        self.add_memory(memories);
        Ok(())
    }

    fn parse_global_section(
        &mut self,
        globals: &mut wasm_encoder::GlobalSection,
        section: wasmparser::GlobalSectionReader<'_>,
    ) -> Result<(), Error<String>> {
        utils::parse_global_section(self, globals, section)?;
        self.add_globals(globals);
        Ok(())
    }

    fn parse_export_section(
        &mut self,
        exports: &mut wasm_encoder::ExportSection,
        section: wasmparser::ExportSectionReader<'_>,
    ) -> Result<(), Error<String>> {
        utils::parse_export_section(self, exports, section)?;
        self.add_exports(exports);
        Ok(())
    }

    /// Writes the sections the module lacks, where they belong.
    fn intersperse_section_hook(
        &mut self,
        module: &mut wasm_encoder::Module,
        _after: Option<SectionId>,
        before: Option<SectionId>,
    ) -> Result<(), Error<String>> {
        let past = |id| before.is_none_or(|before| rank(before) > rank(id));
        if !self.added.memory && past(SectionId::Memory) {
            let mut memories = wasm_encoder::MemorySection::new();
            self.add_memory(&mut memories);
            if !memories.is_empty() {
                module.section(&memories);
            }
        }
        if !self.added.global && past(SectionId::Global) {
            let mut globals = wasm_encoder::GlobalSection::new();
            self.add_globals(&mut globals);
            if !globals.is_empty() {
                module.section(&globals);
            }
        }
        if !self.added.export && past(SectionId::Export) {
            let mut exports = wasm_encoder::ExportSection::new();
            self.add_exports(&mut exports);
            if !exports.is_empty() {
                module.section(&exports);
            }
        }
        Ok(())
    }

    fn parse_function_body(
        &mut self,
        code: &mut wasm_encoder::CodeSection,
        func: wasmparser::FunctionBody<'_>,
    ) -> Result<(), Error<String>> {
        let (fuel, interrupt) = (self.metering.fuel, self.metering.interrupt);
        let mut function = utils::new_function_with_parsed_locals(self, &func)?;
        let mut reader = func.get_operators_reader()?;
        // Entering a function costs one unit, as with wasmtime.
        let mut entry_cost = 1;
        // A check is due at the start of the next run: at function entry and loop heads.
        let mut check_due = true;
        while !reader.eof() {
            // Each straight run is read twice: for its cost, then to write it after its charge.
            let mut ahead = reader.clone();
            let mut run_cost = std::mem::take(&mut entry_cost);
            loop {
                let op = ahead.read()?;
                run_cost += cost(&op);
                if ends_run(&op) || ahead.eof() {
                    break;
                }
            }
            if fuel && run_cost > 0 {
                self.charge(&mut function, run_cost);
            }
            if check_due {
                self.check(&mut function, fuel, interrupt);
            }
            loop {
                let op = reader.read()?;
                let ends = ends_run(&op) || reader.eof();
                check_due = matches!(op, Operator::Loop { .. });
                if fuel && takes_length(&op) {
                    self.charge_length(&mut function);
                }
                function.instruction(&self.instruction(op)?);
                if ends {
                    break;
                }
            }
        }
        code.function(&function);
        Ok(())
    }

    /// Custom sections as they are: names are not checked, as the engine ignores them.
    fn parse_custom_section(
        &mut self,
        module: &mut wasm_encoder::Module,
        section: wasmparser::CustomSectionReader<'_>,
    ) -> Result<(), Error<String>> {
        module.section(&wasm_encoder::CustomSection {
            name: section.name().into(),
            data: section.data().into(),
        });
        Ok(())
    }
}

fn emit(function: &mut Function, body: &[Instruction<'_>]) {
    for instruction in body {
        function.instruction(instruction);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: Metering = Metering {
        fuel: true,
        interrupt: true,
    };

    /// Validates `wasm` with the proposals the sandbox's engine has on.
    fn validate(wasm: &[u8]) {
        let features = wasmparser::WasmFeatures::default()
            | wasmparser::WasmFeatures::MULTI_MEMORY
            | wasmparser::WasmFeatures::CUSTOM_PAGE_SIZES;
        wasmparser::Validator::new_with_features(features)
            .validate_all(wasm)
            .unwrap();
    }

    fn engine() -> wasmtime::Engine {
        let mut config = wasmtime::Config::new();
        config.wasm_custom_page_sizes(true);
        wasmtime::Engine::new(&config).unwrap()
    }

    fn exports(wasm: &[u8]) -> Vec<String> {
        wasmparser::Parser::new(0)
            .parse_all(wasm)
            .filter_map(|payload| match payload.unwrap() {
                Payload::ExportSection(exports) => Some(
                    exports
                        .into_iter()
                        .map(|export| export.unwrap().name.to_string())
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            })
            .flatten()
            .collect()
    }

    fn has_start(wasm: &[u8]) -> bool {
        wasmparser::Parser::new(0)
            .parse_all(wasm)
            .any(|payload| matches!(payload.unwrap(), Payload::StartSection { .. }))
    }

    #[test]
    fn adds_fuel_interrupt_and_start_exports_to_a_valid_module() {
        let wasm = wat::parse_str(
            r#"(module
                (memory 1)
                (global $g (mut i32) (i32.const 0))
                (func $start (global.set $g (i32.const 1)))
                (func (export "spin") (loop $l (br $l)))
                (func (export "fill") (memory.fill (i32.const 0) (i32.const 7) (i32.const 100)))
                (start $start))"#,
        )
        .unwrap();
        let metered = meter(&wasm, BOTH).unwrap();
        validate(&metered);
        assert!(has_start(&wasm));
        assert!(!has_start(&metered));
        assert_eq!(
            exports(&metered),
            ["spin", "fill", FUEL_EXPORT, INTERRUPT_EXPORT, START_EXPORT]
        );
    }

    /// Runs `run(n)` of `wasm` with `fuel`, by wasmtime's metering or by `meter`'s: the result
    /// and the fuel used.
    fn run_metered(wasm: &[u8], n: i32, ours: bool) -> (i32, i64) {
        let fuel = 1 << 40;
        let mut config = wasmtime::Config::new();
        config.consume_fuel(!ours);
        let engine = wasmtime::Engine::new(&config).unwrap();
        let wasm = if ours {
            let metering = Metering {
                fuel: true,
                interrupt: false,
            };
            meter(wasm, metering).unwrap().into_owned()
        } else {
            wasm.to_vec()
        };
        let module = wasmtime::Module::new(&engine, &wasm).unwrap();
        let mut store = wasmtime::Store::new(&engine, ());
        if !ours {
            store.set_fuel(fuel).unwrap();
        }
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
        let global = instance.get_global(&mut store, FUEL_EXPORT);
        if let Some(global) = global {
            global
                .set(&mut store, wasmtime::Val::I64(fuel as i64))
                .unwrap();
        }
        let run = instance
            .get_typed_func::<i32, i32>(&mut store, "run")
            .unwrap();
        let result = run.call(&mut store, n).unwrap();
        let left = match global {
            Some(global) => global.get(&mut store).i64().unwrap(),
            None => store.get_fuel().unwrap() as i64,
        };
        (result, fuel as i64 - left)
    }

    #[test]
    fn charges_what_wasmtime_charges() {
        let wasm = wat::parse_str(
            r#"(module
                (memory 1)
                (func $add (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
                (func (export "run") (param $n i32) (result i32) (local $acc i32)
                  (memory.fill (i32.const 0) (i32.const 1) (local.get $n))
                  (block $out
                    (loop $l
                      (local.set $acc (call $add (local.get $acc) (i32.load8_u (local.get $n))))
                      (if (i32.and (local.get $n) (i32.const 1))
                        (then (local.set $acc (i32.mul (local.get $acc) (i32.const 3))))
                        (else nop))
                      (br_if $out (i32.eqz (local.get $n)))
                      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
                      (br $l)))
                  (drop (i32.const 5))
                  (local.get $acc)))"#,
        )
        .unwrap();
        for n in [0, 1, 2, 1000] {
            let theirs = run_metered(&wasm, n, false);
            let ours = run_metered(&wasm, n, true);
            assert_eq!(ours, theirs, "n = {n}");
        }
        // The fill is paid by the byte.
        assert!(run_metered(&wasm, 1000, true).1 > 1000);
    }

    #[test]
    #[allow(unsafe_code)]
    fn the_interrupt_byte_stops_a_loop_that_touches_no_memory() {
        let wasm =
            wat::parse_str(r#"(module (memory 1) (func (export "spin") (loop $l (br $l))))"#)
                .unwrap();
        let metering = Metering {
            fuel: false,
            interrupt: true,
        };
        let wasm = meter(&wasm, metering).unwrap();
        let engine = engine();
        let module = wasmtime::Module::new(&engine, &wasm).unwrap();
        let mut store = wasmtime::Store::new(&engine, ());
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
        let byte = instance
            .get_memory(&mut store, INTERRUPT_EXPORT)
            .unwrap()
            .data_ptr(&store) as usize;
        let setter = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            // SAFETY: the instance, and its memory, live until the call below ends, which it
            // does only once this store is seen.
            unsafe { std::sync::atomic::AtomicU8::from_ptr(byte as *mut u8) }
                .store(interrupt::DEADLINE, std::sync::atomic::Ordering::Relaxed);
        });
        let spin = instance
            .get_typed_func::<(), ()>(&mut store, "spin")
            .unwrap();
        let error = spin.call(&mut store, ()).unwrap_err();
        assert_eq!(
            error.downcast_ref::<wasmtime::Trap>(),
            Some(&wasmtime::Trap::UnreachableCodeReached)
        );
        setter.join().unwrap();
    }

    #[test]
    fn adds_the_sections_a_module_lacks() {
        let wasm = wat::parse_str(r#"(module (func (loop $l (br_if $l (i32.const 0)))))"#).unwrap();
        let metered = meter(&wasm, BOTH).unwrap();
        validate(&metered);
        assert_eq!(exports(&metered), [FUEL_EXPORT, INTERRUPT_EXPORT]);
    }

    #[test]
    fn nothing_to_write_leaves_the_bytes_as_they_are() {
        let wasm = wat::parse_str(r#"(module (func))"#).unwrap();
        let metering = Metering {
            fuel: false,
            interrupt: false,
        };
        assert!(matches!(meter(&wasm, metering).unwrap(), Cow::Borrowed(_)));
    }

    #[test]
    fn code_naming_a_global_or_memory_the_module_lacks_is_refused() {
        // Invalid as they stand (wat checks names, not indices): after rewriting, the indices
        // would name what was added.
        for (module, refused) in [
            (
                "(module (func (global.set 0 (i64.const 9))))",
                "no global 0",
            ),
            (
                "(module (memory 1) (func (drop (i32.load8_u 1 (i32.const 0)))))",
                "no memory 1",
            ),
        ] {
            let wasm = wat::parse_str(module).unwrap();
            let error = meter(&wasm, BOTH).unwrap_err();
            assert_eq!(error, refused);
        }
    }
}
