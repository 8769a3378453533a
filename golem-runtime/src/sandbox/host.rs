//! What the guest can reach of golem: the task's inputs and output, panics, and the state of one
//! call (the WASI functions, which read and write that state, are in `wasi`).
//!
//! Host calls are paid in fuel like guest instructions: [`HOST_CALL_FUEL`] each, plus the bytes
//! they copy ([`COPY_BYTES_PER_FUEL`]) or generate ([`RANDOM_FUEL_PER_BYTE`]), charged before
//! the work is done. A guest cannot make the host work for it for free.

use std::sync::Arc;

use golem_abi as abi;
use wasmtime::{Caller, Linker, Memory, ResourceLimiter};

use super::config::TABLE_ELEMENTS;
use super::wasi::errno;
use super::{Call, Execution, Limits, SubtaskError};

/// Start of the virtual clock: 2025-01-01T00:00:00Z, in nanoseconds since the Unix epoch.
const CLOCK_START_NS: u64 = 1_735_689_600_000_000_000;
/// Longest panic message kept.
const PANIC_MESSAGE_BYTES: usize = 4096;

/// Fuel every host call costs besides the bytes it touches.
pub const HOST_CALL_FUEL: u64 = 10;
/// Bytes a host call may copy (input, output, logs) per unit of fuel: a word per unit, what a
/// guest loop moving the bytes itself would pay at least.
pub const COPY_BYTES_PER_FUEL: u64 = 8;
/// Fuel per byte of randomness: generating it (a blake3 stream) is work, not a copy.
pub const RANDOM_FUEL_PER_BYTE: u64 = 1;

/// Per-call state of a guest instance.
pub(crate) struct GuestState {
    context: Arc<[u8]>,
    input: Vec<u8>,
    output: Option<Vec<u8>>,
    output_limit: usize,
    panic: Option<String>,
    pub(super) random: blake3::OutputReader,
    /// The virtual clock, in nanoseconds since the Unix epoch.
    pub(super) clock_ns: u64,
    pub(super) stdout: LogBuffer,
    pub(super) stderr: LogBuffer,
    /// Command-line arguments and environment (`KEY=value`) the guest reads through WASI:
    /// none for a task; a command run by the WASI test suite gets those its test names.
    pub(super) args: Vec<Vec<u8>>,
    pub(super) env: Vec<Vec<u8>>,
    pub(crate) limiter: Limiter,
    pub(crate) memory: Option<Memory>,
    /// The instance's fuel global, when the engine meters fuel (see `meter`).
    pub(crate) fuel: Option<wasmtime::Global>,
    /// Whether a context function runs, which has no output to hand back.
    decoding: bool,
}

impl GuestState {
    pub(crate) fn new(call: Call<'_>, limits: &Limits) -> Self {
        Self {
            context: Arc::clone(call.context.bytes()),
            input: call.input.to_vec(),
            output: None,
            output_limit: limits.output_bytes,
            panic: None,
            random: blake3::Hasher::new_keyed(&call.seed).finalize_xof(),
            clock_ns: CLOCK_START_NS,
            stdout: LogBuffer::new(limits.log_bytes),
            stderr: LogBuffer::new(limits.log_bytes),
            args: Vec::new(),
            env: Vec::new(),
            limiter: Limiter::new(limits.memory_bytes),
            memory: None,
            fuel: None,
            decoding: false,
        }
    }

    /// The state of a call of a context function: `output` traps in it (what a snapshot
    /// holds must not depend on the output limit).
    pub(crate) fn decoding(call: Call<'_>, limits: &Limits) -> Self {
        Self {
            decoding: true,
            ..Self::new(call, limits)
        }
    }

    /// Makes the state of an instance whose context function just ran what a call started
    /// from its snapshot finds: the call's input and seed, the clock at its start, no output,
    /// logs or panic, and a fresh memory limiter.
    pub(crate) fn begin_task(&mut self, call: Call<'_>, limits: &Limits) {
        let (memory, fuel) = (self.memory.take(), self.fuel.take());
        *self = Self {
            memory,
            fuel,
            ..Self::new(call, limits)
        };
    }

    /// The result of a call that returned normally.
    pub(crate) fn finish(self, fuel_used: Option<u64>) -> Result<Execution, SubtaskError> {
        let output = self.output.ok_or_else(|| {
            SubtaskError::Abi("the task returned without handing back an output".into())
        })?;
        Ok(Execution {
            output,
            fuel_used,
            log_bytes_dropped: self.stdout.dropped + self.stderr.dropped,
            stdout: self.stdout.bytes,
            stderr: self.stderr.bytes,
        })
    }

    pub(crate) fn panic_message(&self) -> Option<String> {
        self.panic.clone()
    }

    /// What the guest wrote to stdout so far.
    #[cfg(test)]
    pub(crate) fn stdout(&self) -> &[u8] {
        &self.stdout.bytes
    }

    pub(crate) fn stderr_lossy(&self) -> String {
        String::from_utf8_lossy(&self.stderr.bytes).into_owned()
    }
}

/// A capped log buffer; what does not fit is counted, not kept.
pub(super) struct LogBuffer {
    bytes: Vec<u8>,
    cap: usize,
    dropped: u64,
}

impl LogBuffer {
    fn new(cap: usize) -> Self {
        Self {
            bytes: Vec::new(),
            cap,
            dropped: 0,
        }
    }

    pub(super) fn write(&mut self, data: &[u8]) {
        let room = self.cap.saturating_sub(self.bytes.len());
        let kept = data.len().min(room);
        self.bytes.extend_from_slice(&data[..kept]);
        self.dropped += (data.len() - kept) as u64;
    }
}

/// Enforces the memory limit of a call and remembers whether it had to refuse a growth, so a
/// trap that follows (Rust aborts when an allocation fails) is reported as "memory limit
/// reached" rather than as a bare trap.
pub(crate) struct Limiter {
    memory_limit: usize,
    memory_denied: bool,
    table_denied: bool,
}

impl Limiter {
    fn new(memory_limit: usize) -> Self {
        Self {
            memory_limit,
            memory_denied: false,
            table_denied: false,
        }
    }

    pub(crate) fn memory_denied(&self) -> bool {
        self.memory_denied
    }

    pub(crate) fn table_denied(&self) -> bool {
        self.table_denied
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = desired <= self.memory_limit;
        self.memory_denied |= !allowed;
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = desired <= TABLE_ELEMENTS;
        self.table_denied |= !allowed;
        Ok(allowed)
    }
}

/// A trap raised by a host function; carried through wasmtime's error and turned back into a
/// [`SubtaskError`].
#[derive(Debug)]
pub(crate) enum HostTrap {
    OutputTooLarge { size: usize, limit: usize },
    Abi(String),
    Exit(i32),
}

impl std::fmt::Display for HostTrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.to_subtask_error(), f)
    }
}

impl std::error::Error for HostTrap {}

impl HostTrap {
    pub(crate) fn to_subtask_error(&self) -> SubtaskError {
        match self {
            Self::OutputTooLarge { size, limit } => SubtaskError::OutputTooLarge {
                size: *size,
                limit: *limit,
            },
            Self::Abi(message) => SubtaskError::Abi(message.clone()),
            Self::Exit(code) => SubtaskError::Exit { code: *code },
        }
    }
}

pub(super) fn abi_trap(message: impl Into<String>) -> wasmtime::Error {
    wasmtime::Error::new(HostTrap::Abi(message.into()))
}

/// Charges a host call `fuel` before it does its work, so fuel measures what a guest makes
/// the host do: a call that cannot pay ends in [`Trap::OutOfFuel`](wasmtime::Trap), as a guest
/// instruction would. Free when the engine does not meter fuel.
pub(super) fn charge(caller: &mut Caller<'_, GuestState>, fuel: u64) -> wasmtime::Result<()> {
    pay(caller, fuel.saturating_add(HOST_CALL_FUEL))
}

/// Takes `fuel` from the call, or ends it in [`Trap::OutOfFuel`](wasmtime::Trap) when it has
/// less; [`charge`] adds the price of the host call itself.
pub(super) fn pay(caller: &mut Caller<'_, GuestState>, fuel: u64) -> wasmtime::Result<()> {
    let Some(global) = caller.data().fuel else {
        return Ok(());
    };
    let left = global.get(&mut *caller).i64().unwrap_or(0);
    let fuel = i64::try_from(fuel).unwrap_or(i64::MAX);
    if fuel > left {
        global.set(&mut *caller, wasmtime::Val::I64(0))?;
        return Err(wasmtime::Trap::OutOfFuel.into());
    }
    global.set(&mut *caller, wasmtime::Val::I64(left - fuel))
}

/// Fuel for copying `bytes`.
pub(super) fn copy_fuel(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(COPY_BYTES_PER_FUEL)
}

/// The guest's linear memory and the call state, borrowed together.
pub(super) fn memory_and_state<'a>(
    caller: &'a mut Caller<'_, GuestState>,
) -> wasmtime::Result<(&'a mut [u8], &'a mut GuestState)> {
    let memory = match caller.data().memory {
        Some(memory) => memory,
        None => caller
            .get_export("memory")
            .and_then(|export| export.into_memory())
            .ok_or_else(|| abi_trap("the module exports no memory"))?,
    };
    Ok(memory.data_and_store_mut(caller))
}

pub(super) fn range(memory: &[u8], ptr: i32, len: usize) -> Option<std::ops::Range<usize>> {
    let start = u32::try_from(ptr).ok()? as usize;
    let end = start.checked_add(len)?;
    (end <= memory.len()).then_some(start..end)
}

/// The byte ranges a WASI iovec array of `count` entries at `iovs` names, each `None` when the
/// entry or its range lies outside memory. The entries must fit in memory, which bounds them.
pub(super) fn iovecs(
    memory: &[u8],
    iovs: i32,
    count: i32,
) -> Option<impl Iterator<Item = Option<std::ops::Range<usize>>> + '_> {
    let count = usize::try_from(count).unwrap_or(0);
    let entries = range(memory, iovs, count.checked_mul(8)?)?;
    Some(memory[entries].chunks_exact(8).map(move |entry| {
        let (ptr, len) = entry.split_at(4);
        let ptr = u32::from_le_bytes(ptr.try_into().ok()?);
        let len = u32::from_le_bytes(len.try_into().ok()?);
        range(memory, i32::try_from(ptr).ok()?, len as usize)
    }))
}

pub(super) fn write_bytes(memory: &mut [u8], ptr: i32, bytes: &[u8]) -> i32 {
    match range(memory, ptr, bytes.len()) {
        Some(range) => {
            memory[range].copy_from_slice(bytes);
            errno::SUCCESS
        }
        None => errno::FAULT,
    }
}

/// Registers every function a module may import. The allow-list check in
/// [`prepare`](super::module::prepare) uses exactly this set.
pub(crate) fn define(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    define_golem(linker)?;
    super::wasi::define(linker)
}

fn define_golem(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    let host = abi::HOST_MODULE;
    linker.func_wrap(
        host,
        abi::INPUT_LEN,
        |mut caller: Caller<'_, GuestState>, slot: i32| -> wasmtime::Result<i32> {
            charge(&mut caller, 0)?;
            let len = slot_bytes(caller.data(), slot)?.len();
            i32::try_from(len).map_err(|_| abi_trap("input larger than 2 GiB"))
        },
    )?;
    linker.func_wrap(
        host,
        abi::INPUT_READ,
        |mut caller: Caller<'_, GuestState>, slot: i32, ptr: i32| -> wasmtime::Result<()> {
            let len = slot_bytes(caller.data(), slot)?.len();
            charge(&mut caller, copy_fuel(len))?;
            let (memory, state) = memory_and_state(&mut caller)?;
            let bytes = slot_bytes(state, slot)?;
            let range = range(memory, ptr, bytes.len())
                .ok_or_else(|| abi_trap("input_read: destination out of bounds"))?;
            memory[range].copy_from_slice(bytes);
            Ok(())
        },
    )?;
    linker.func_wrap(
        host,
        abi::OUTPUT,
        |mut caller: Caller<'_, GuestState>, ptr: i32, len: i32| -> wasmtime::Result<()> {
            let len = u32::try_from(len).map_err(|_| abi_trap("output: negative length"))?;
            let len = len as usize;
            let (_, state) = memory_and_state(&mut caller)?;
            if state.decoding {
                return Err(abi_trap(
                    "the context function handed back an output: only a task does",
                ));
            }
            if len > state.output_limit {
                return Err(wasmtime::Error::new(HostTrap::OutputTooLarge {
                    size: len,
                    limit: state.output_limit,
                }));
            }
            if state.output.is_some() {
                return Err(abi_trap("output was handed back twice"));
            }
            charge(&mut caller, copy_fuel(len))?;
            let (memory, state) = memory_and_state(&mut caller)?;
            let range =
                range(memory, ptr, len).ok_or_else(|| abi_trap("output: source out of bounds"))?;
            state.output = Some(memory[range].to_vec());
            Ok(())
        },
    )?;
    linker.func_wrap(
        host,
        abi::PANIC,
        |mut caller: Caller<'_, GuestState>, ptr: i32, len: i32| -> wasmtime::Result<()> {
            let len = (u32::try_from(len).unwrap_or(0) as usize).min(PANIC_MESSAGE_BYTES);
            charge(&mut caller, copy_fuel(len))?;
            let (memory, state) = memory_and_state(&mut caller)?;
            let message = range(memory, ptr, len)
                .map(|range| String::from_utf8_lossy(&memory[range]).into_owned())
                .unwrap_or_else(|| "<panic message out of bounds>".into());
            state.panic = Some(message);
            Ok(())
        },
    )?;
    Ok(())
}

fn slot_bytes(state: &GuestState, slot: i32) -> wasmtime::Result<&[u8]> {
    match slot {
        abi::SLOT_CONTEXT => Ok(&state.context),
        abi::SLOT_INPUT => Ok(&state.input),
        other => Err(abi_trap(format!("no input slot {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_buffer_keeps_the_cap_and_counts_the_rest() {
        let mut log = LogBuffer::new(4);
        log.write(b"abc");
        log.write(b"def");
        assert_eq!(log.bytes, b"abcd");
        assert_eq!(log.dropped, 2);
    }

    #[test]
    fn ranges_reject_overflow_and_negative_pointers() {
        let memory = [0u8; 16];
        assert_eq!(range(&memory, 4, 8), Some(4..12));
        assert_eq!(range(&memory, 12, 8), None);
        assert_eq!(range(&memory, -1, 1), None);
        assert_eq!(range(&memory, 0, usize::MAX), None);
    }
}
