//! The WASI preview 1 functions a guest may import: the whole of `wasi_snapshot_preview1`,
//! each answered deterministically.
//!
//! Nothing here touches the host's clock, files, sockets or entropy, so a module given the same
//! input produces the same bytes on every provider:
//!
//! - the clock is virtual: it starts at 2025-01-01 and advances a fixed step per reading; a
//!   `poll_oneoff` that waits for it moves it to the time waited for, at once;
//! - randomness is a blake3 stream keyed by the call's seed;
//! - standard input is empty; standard output and error are captured in capped buffers;
//! - there are no files and no sockets: no directory is preopened, so every path call answers
//!   `ENOTDIR` on a standard stream and `EBADF` on any other descriptor; the three standard
//!   streams are character devices that cannot seek (`ESPIPE`), are no sockets (`ENOTSOCK`) and
//!   stay open (`fd_close` answers `EBADF`, as for every descriptor);
//! - a task has no arguments and no environment.
//!
//! So a module whose code could open a file loads, and a call that tries gets a WASI error code
//! (an `io::Error` in Rust), not a trap. Every call but `proc_exit` is charged
//! [`HOST_CALL_FUEL`](super::HOST_CALL_FUEL) before it does anything, plus the bytes it copies
//! from or to the guest where their number is the guest's to choose (logs, arguments, poll
//! subscriptions) and the randomness it makes.

use golem_abi as abi;
use wasmtime::{Caller, Linker};

use super::RANDOM_FUEL_PER_BYTE;
use super::host::{
    GuestState, HostTrap, charge, copy_fuel, iovecs, memory_and_state, pay, range, write_bytes,
};

/// WASI errno values.
pub(crate) mod errno {
    pub(crate) const SUCCESS: i32 = 0;
    pub(crate) const BADF: i32 = 8;
    pub(crate) const FAULT: i32 = 21;
    pub(crate) const INVAL: i32 = 28;
    pub(crate) const NOSYS: i32 = 52;
    pub(crate) const NOTDIR: i32 = 54;
    pub(crate) const NOTSOCK: i32 = 57;
    pub(crate) const NOTSUP: i32 = 58;
    pub(crate) const SPIPE: i32 = 70;
}

/// How far the virtual clock advances per reading, and its resolution.
const CLOCK_STEP_NS: u64 = 1_000;
/// The clocks WASI names: realtime, monotonic, process and thread CPU time. All read the one
/// virtual clock.
const CLOCKS: std::ops::RangeInclusive<i32> = 0..=3;

/// A reading of the virtual clock at `clock_ns`: it moves one step first. A guest that slept
/// until the end of time reads the end of time again, never a time before it.
fn tick(clock_ns: &mut u64) -> u64 {
    *clock_ns = clock_ns.saturating_add(CLOCK_STEP_NS);
    *clock_ns
}

/// Whether `fd` is one of the standard streams, the only descriptors a guest has.
fn is_stream(fd: i32) -> bool {
    (0..=2).contains(&fd)
}

/// `answer` for a standard stream, `EBADF` for any other descriptor.
fn on_stream(fd: i32, answer: i32) -> i32 {
    if is_stream(fd) { answer } else { errno::BADF }
}

/// Defines WASI functions that write nothing and answer an errno made from their arguments.
macro_rules! answer {
    ($linker:ident; $($name:literal ($($arg:tt: $ty:ty),*) => $answer:expr;)*) => {
        $(
            $linker.func_wrap(
                abi::WASI_MODULE,
                $name,
                |mut caller: Caller<'_, GuestState>, $($arg: $ty),*| -> wasmtime::Result<i32> {
                    charge(&mut caller, 0)?;
                    Ok($answer)
                },
            )?;
        )*
    };
}

/// Registers every function of `wasi_snapshot_preview1`
/// ([`WASI_IMPORTS`](golem_abi::WASI_IMPORTS) names them).
pub(crate) fn define(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    define_process(linker)?;
    define_streams(linker)?;
    define_poll(linker)?;
    answer! { linker;
        "fd_advise"(fd: i32, _: i64, _: i64, _: i32) => on_stream(fd, errno::SPIPE);
        "fd_allocate"(fd: i32, _: i64, _: i64) => on_stream(fd, errno::SPIPE);
        "fd_close"(_: i32) => errno::BADF;
        "fd_datasync"(fd: i32) => on_stream(fd, errno::INVAL);
        "fd_fdstat_set_flags"(fd: i32, _: i32) => on_stream(fd, errno::NOTSUP);
        "fd_fdstat_set_rights"(fd: i32, _: i64, _: i64) => on_stream(fd, errno::NOTSUP);
        "fd_filestat_set_size"(fd: i32, _: i64) => on_stream(fd, errno::INVAL);
        "fd_filestat_set_times"(fd: i32, _: i64, _: i64, _: i32) => on_stream(fd, errno::NOTSUP);
        "fd_pread"(fd: i32, _: i32, _: i32, _: i64, _: i32) => on_stream(fd, errno::SPIPE);
        "fd_prestat_dir_name"(_: i32, _: i32, _: i32) => errno::BADF;
        "fd_prestat_get"(_: i32, _: i32) => errno::BADF;
        "fd_pwrite"(fd: i32, _: i32, _: i32, _: i64, _: i32) => on_stream(fd, errno::SPIPE);
        "fd_readdir"(fd: i32, _: i32, _: i32, _: i64, _: i32) => on_stream(fd, errno::NOTDIR);
        "fd_renumber"(from: i32, to: i32) => match (is_stream(from), is_stream(to)) {
            (true, true) if from == to => errno::SUCCESS,
            (true, true) => errno::NOTSUP,
            _ => errno::BADF,
        };
        "fd_seek"(fd: i32, _: i64, _: i32, _: i32) => on_stream(fd, errno::SPIPE);
        "fd_sync"(fd: i32) => on_stream(fd, errno::INVAL);
        "fd_tell"(fd: i32, _: i32) => on_stream(fd, errno::SPIPE);
        "path_create_directory"(fd: i32, _: i32, _: i32) => on_stream(fd, errno::NOTDIR);
        "path_filestat_get"(fd: i32, _: i32, _: i32, _: i32, _: i32) => on_stream(fd, errno::NOTDIR);
        "path_filestat_set_times"(fd: i32, _: i32, _: i32, _: i32, _: i64, _: i64, _: i32) =>
            on_stream(fd, errno::NOTDIR);
        "path_link"(fd: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32) => on_stream(fd, errno::NOTDIR);
        "path_open"(fd: i32, _: i32, _: i32, _: i32, _: i32, _: i64, _: i64, _: i32, _: i32) =>
            on_stream(fd, errno::NOTDIR);
        "path_readlink"(fd: i32, _: i32, _: i32, _: i32, _: i32, _: i32) => on_stream(fd, errno::NOTDIR);
        "path_remove_directory"(fd: i32, _: i32, _: i32) => on_stream(fd, errno::NOTDIR);
        "path_rename"(fd: i32, _: i32, _: i32, _: i32, _: i32, _: i32) => on_stream(fd, errno::NOTDIR);
        "path_symlink"(_: i32, _: i32, fd: i32, _: i32, _: i32) => on_stream(fd, errno::NOTDIR);
        "path_unlink_file"(fd: i32, _: i32, _: i32) => on_stream(fd, errno::NOTDIR);
        "proc_raise"(_: i32) => errno::NOSYS;
        "sched_yield"() => errno::SUCCESS;
        "sock_accept"(fd: i32, _: i32, _: i32) => on_stream(fd, errno::NOTSOCK);
        "sock_recv"(fd: i32, _: i32, _: i32, _: i32, _: i32, _: i32) => on_stream(fd, errno::NOTSOCK);
        "sock_send"(fd: i32, _: i32, _: i32, _: i32, _: i32) => on_stream(fd, errno::NOTSOCK);
        "sock_shutdown"(fd: i32, _: i32) => on_stream(fd, errno::NOTSOCK);
    }
    Ok(())
}

/// Arguments, environment, clocks, randomness and exit.
fn define_process(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    let wasi = abi::WASI_MODULE;
    type Strings = fn(&GuestState) -> &[Vec<u8>];
    let lists: [(&str, &str, Strings); 2] = [
        ("args_sizes_get", "args_get", |state| &state.args),
        ("environ_sizes_get", "environ_get", |state| &state.env),
    ];
    for (sizes_get, get, strings) in lists {
        linker.func_wrap(
            wasi,
            sizes_get,
            move |mut caller: Caller<'_, GuestState>, count: i32, size: i32| {
                charge(&mut caller, 0)?;
                let (memory, state) = memory_and_state(&mut caller)?;
                let list = strings(state);
                let bytes: usize = list.iter().map(|string| string.len() + 1).sum();
                let status = write_bytes(memory, count, &(list.len() as u32).to_le_bytes());
                Ok(if status == errno::SUCCESS {
                    write_bytes(memory, size, &(bytes as u32).to_le_bytes())
                } else {
                    status
                })
            },
        )?;
        linker.func_wrap(
            wasi,
            get,
            move |mut caller: Caller<'_, GuestState>, pointers: i32, buffer: i32| {
                let list = strings(caller.data());
                let bytes: usize = list.iter().map(|string| 4 + string.len() + 1).sum();
                charge(&mut caller, copy_fuel(bytes))?;
                let (memory, state) = memory_and_state(&mut caller)?;
                Ok(write_strings(memory, strings(state), pointers, buffer))
            },
        )?;
    }
    linker.func_wrap(
        wasi,
        "clock_res_get",
        |mut caller: Caller<'_, GuestState>, clock: i32, out: i32| -> wasmtime::Result<i32> {
            charge(&mut caller, 0)?;
            if !CLOCKS.contains(&clock) {
                return Ok(errno::INVAL);
            }
            let (memory, _) = memory_and_state(&mut caller)?;
            Ok(write_bytes(memory, out, &CLOCK_STEP_NS.to_le_bytes()))
        },
    )?;
    linker.func_wrap(
        wasi,
        "clock_time_get",
        |mut caller: Caller<'_, GuestState>,
         clock: i32,
         _precision: i64,
         out: i32|
         -> wasmtime::Result<i32> {
            charge(&mut caller, 0)?;
            if !CLOCKS.contains(&clock) {
                return Ok(errno::INVAL);
            }
            let (memory, state) = memory_and_state(&mut caller)?;
            Ok(write_bytes(
                memory,
                out,
                &tick(&mut state.clock_ns).to_le_bytes(),
            ))
        },
    )?;
    linker.func_wrap(
        wasi,
        "random_get",
        |mut caller: Caller<'_, GuestState>, buf: i32, len: i32| -> wasmtime::Result<i32> {
            charge(&mut caller, 0)?;
            let Ok(len) = u32::try_from(len) else {
                return Ok(errno::INVAL);
            };
            let (memory, _) = memory_and_state(&mut caller)?;
            let Some(range) = range(memory, buf, len as usize) else {
                return Ok(errno::FAULT);
            };
            pay(
                &mut caller,
                u64::from(len).saturating_mul(RANDOM_FUEL_PER_BYTE),
            )?;
            let (memory, state) = memory_and_state(&mut caller)?;
            state.random.fill(&mut memory[range]);
            Ok(errno::SUCCESS)
        },
    )?;
    linker.func_wrap(wasi, "proc_exit", |code: i32| -> wasmtime::Result<()> {
        // Ends the call: nothing to pay for after it.
        Err(wasmtime::Error::new(HostTrap::Exit(code)))
    })?;
    Ok(())
}

/// Writes `strings` as WASI's `args_get` does: a pointer to each at `pointers`, and the strings
/// themselves, each ending in a zero byte, one after another from `buffer`.
fn write_strings(memory: &mut [u8], strings: &[Vec<u8>], pointers: i32, buffer: i32) -> i32 {
    let (mut pointer, mut at) = (pointers, buffer);
    for string in strings {
        let status = write_bytes(memory, pointer, &at.cast_unsigned().to_le_bytes());
        if status != errno::SUCCESS {
            return status;
        }
        let Some(string_at) = range(memory, at, string.len() + 1) else {
            return errno::FAULT;
        };
        memory[string_at.clone()][..string.len()].copy_from_slice(string);
        memory[string_at.end - 1] = 0;
        pointer = pointer.wrapping_add(4);
        at = at.wrapping_add((string.len() + 1) as i32);
    }
    errno::SUCCESS
}

/// Reads and writes on the standard streams, and what they are.
fn define_streams(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    let wasi = abi::WASI_MODULE;
    linker.func_wrap(
        wasi,
        "fd_write",
        |mut caller: Caller<'_, GuestState>,
         fd: i32,
         iovs: i32,
         iovs_len: i32,
         written: i32|
         -> wasmtime::Result<i32> {
            // The entries are paid for (8 bytes each) before any is read, then the bytes
            // they name (kept or dropped) before any is copied.
            let entries = usize::try_from(iovs_len).unwrap_or(0).saturating_mul(8);
            charge(&mut caller, copy_fuel(entries))?;
            if fd != 1 && fd != 2 {
                return Ok(errno::BADF);
            }
            let (memory, _) = memory_and_state(&mut caller)?;
            let named = iovecs(memory, iovs, iovs_len).and_then(|mut entries| {
                entries.try_fold(0usize, |sum, range| Some(sum.saturating_add(range?.len())))
            });
            let Some(named) = named else {
                return Ok(errno::FAULT);
            };
            pay(&mut caller, copy_fuel(named))?;
            let (memory, state) = memory_and_state(&mut caller)?;
            let log = if fd == 1 {
                &mut state.stdout
            } else {
                &mut state.stderr
            };
            let mut total: u32 = 0;
            for range in iovecs(memory, iovs, iovs_len)
                .into_iter()
                .flatten()
                .flatten()
            {
                total = total.saturating_add(range.len() as u32);
                log.write(&memory[range]);
            }
            Ok(write_bytes(memory, written, &total.to_le_bytes()))
        },
    )?;
    linker.func_wrap(
        wasi,
        "fd_read",
        |mut caller: Caller<'_, GuestState>,
         fd: i32,
         _iovs: i32,
         _iovs_len: i32,
         read: i32|
         -> wasmtime::Result<i32> {
            charge(&mut caller, 0)?;
            if fd != 0 {
                return Ok(on_stream(fd, errno::BADF));
            }
            // Standard input is always at its end.
            let (memory, _) = memory_and_state(&mut caller)?;
            Ok(write_bytes(memory, read, &0u32.to_le_bytes()))
        },
    )?;
    linker.func_wrap(
        wasi,
        "fd_fdstat_get",
        |mut caller: Caller<'_, GuestState>, fd: i32, out: i32| -> wasmtime::Result<i32> {
            // fdstat: filetype u8 (2 = character device), pad, flags u16, pad, then two u64
            // rights masks: only fd_read (bit 1) / fd_write (bit 6).
            let rights: u64 = if fd == 0 { 1 << 1 } else { 1 << 6 };
            let mut fdstat = [0u8; 24];
            fdstat[0] = CHARACTER_DEVICE;
            fdstat[8..16].copy_from_slice(&rights.to_le_bytes());
            stream_stat(&mut caller, fd, out, &fdstat)
        },
    )?;
    linker.func_wrap(
        wasi,
        "fd_filestat_get",
        |mut caller: Caller<'_, GuestState>, fd: i32, out: i32| -> wasmtime::Result<i32> {
            // filestat: dev, ino (u64), filetype u8 at 16, then nlink, size and three times
            // (u64): a character device of no size, never touched.
            let mut filestat = [0u8; 64];
            filestat[16] = CHARACTER_DEVICE;
            filestat[24..32].copy_from_slice(&1u64.to_le_bytes());
            stream_stat(&mut caller, fd, out, &filestat)
        },
    )?;
    Ok(())
}

/// Writes `stat`, what a standard stream is, at `out`; any other descriptor is `EBADF`.
fn stream_stat(
    caller: &mut Caller<'_, GuestState>,
    fd: i32,
    out: i32,
    stat: &[u8],
) -> wasmtime::Result<i32> {
    charge(caller, 0)?;
    if !is_stream(fd) {
        return Ok(errno::BADF);
    }
    let (memory, _) = memory_and_state(caller)?;
    Ok(write_bytes(memory, out, stat))
}

/// WASI's file type of the standard streams.
const CHARACTER_DEVICE: u8 = 2;

/// `poll_oneoff` over the virtual clock and the standard streams.
fn define_poll(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        abi::WASI_MODULE,
        "poll_oneoff",
        |mut caller: Caller<'_, GuestState>,
         subscriptions: i32,
         events: i32,
         count: i32,
         written: i32|
         -> wasmtime::Result<i32> {
            let count = count.cast_unsigned() as usize;
            let bytes = count.saturating_mul(SUBSCRIPTION_BYTES + EVENT_BYTES);
            charge(&mut caller, copy_fuel(bytes))?;
            if count == 0 {
                return Ok(errno::INVAL);
            }
            let (memory, state) = memory_and_state(&mut caller)?;
            let Some(read) = range(memory, subscriptions, count * SUBSCRIPTION_BYTES) else {
                return Ok(errno::FAULT);
            };
            let Some(write) = range(memory, events, count * EVENT_BYTES) else {
                return Ok(errno::FAULT);
            };
            let Some(fired) = poll(&memory[read], &mut state.clock_ns) else {
                return Ok(errno::INVAL);
            };
            for (event, at) in fired
                .iter()
                .zip(memory[write].chunks_exact_mut(EVENT_BYTES))
            {
                at.fill(0);
                at[0..8].copy_from_slice(&event.userdata.to_le_bytes());
                at[8..10].copy_from_slice(&event.error.to_le_bytes());
                at[10] = event.kind;
                at[24..26].copy_from_slice(&event.flags.to_le_bytes());
            }
            Ok(write_bytes(
                memory,
                written,
                &(fired.len() as u32).to_le_bytes(),
            ))
        },
    )?;
    Ok(())
}

const SUBSCRIPTION_BYTES: usize = 48;
const EVENT_BYTES: usize = 32;
const EVENT_CLOCK: u8 = 0;
const EVENT_FD_READ: u8 = 1;
const EVENT_FD_WRITE: u8 = 2;
/// A clock subscription's flag: its timeout is an absolute time, not one from now.
const SUBSCRIPTION_CLOCK_ABSTIME: u16 = 1;
/// An fd event's flag: the stream is at its end (standard input always is).
const EVENT_FD_READWRITE_HANGUP: u16 = 1;

/// One event `poll_oneoff` reports.
#[derive(Debug, PartialEq, Eq)]
struct Event {
    userdata: u64,
    error: u16,
    kind: u8,
    flags: u16,
}

/// The events of the subscriptions in `subscriptions` (WASI's layout, 48 bytes each), with the
/// virtual clock at `clock_ns`: the standard streams are always ready (standard input at its
/// end), any other descriptor fails with `EBADF`; when no stream is asked for, the clock moves to
/// the earliest time waited for and the clocks due then fire. `None` when a subscription is of no
/// known kind.
fn poll(subscriptions: &[u8], clock_ns: &mut u64) -> Option<Vec<Event>> {
    let u64_at = |bytes: &[u8], at: usize| {
        u64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes"))
    };
    let now = *clock_ns;
    let mut events = Vec::new();
    let mut clocks = Vec::new();
    for subscription in subscriptions.chunks_exact(SUBSCRIPTION_BYTES) {
        let userdata = u64_at(subscription, 0);
        let kind = subscription[8];
        let event = |error: i32, flags: u16| Event {
            userdata,
            error: error as u16,
            kind,
            flags,
        };
        match kind {
            EVENT_CLOCK => {
                let id = i32::from_le_bytes(subscription[16..20].try_into().expect("four bytes"));
                if !CLOCKS.contains(&id) {
                    events.push(event(errno::INVAL, 0));
                    continue;
                }
                let timeout = u64_at(subscription, 24);
                let flags = u16::from_le_bytes([subscription[40], subscription[41]]);
                let due = if flags & SUBSCRIPTION_CLOCK_ABSTIME != 0 {
                    timeout
                } else {
                    now.saturating_add(timeout)
                };
                clocks.push((due, userdata));
            }
            EVENT_FD_READ | EVENT_FD_WRITE => {
                let fd = i32::from_le_bytes(subscription[16..20].try_into().expect("four bytes"));
                events.push(match (kind, fd) {
                    (EVENT_FD_READ, 0) => event(errno::SUCCESS, EVENT_FD_READWRITE_HANGUP),
                    (EVENT_FD_WRITE, 1 | 2) => event(errno::SUCCESS, 0),
                    _ => event(on_stream(fd, errno::BADF), 0),
                });
            }
            _ => return None,
        }
    }
    // Nothing ready but clocks: wait for the first, at once.
    let until = if events.is_empty() {
        clocks
            .iter()
            .map(|(due, _)| *due)
            .min()
            .unwrap_or(now)
            .max(now)
    } else {
        now
    };
    *clock_ns = until;
    events.extend(
        clocks
            .into_iter()
            .filter(|(due, _)| *due <= until)
            .map(|(_, userdata)| Event {
                userdata,
                error: 0,
                kind: EVENT_CLOCK,
                flags: 0,
            }),
    );
    Some(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock_subscription(userdata: u64, timeout: u64, absolute: bool) -> [u8; 48] {
        let mut bytes = [0u8; 48];
        bytes[0..8].copy_from_slice(&userdata.to_le_bytes());
        bytes[8] = EVENT_CLOCK;
        bytes[16..20].copy_from_slice(&1i32.to_le_bytes());
        bytes[24..32].copy_from_slice(&timeout.to_le_bytes());
        bytes[40] = u8::from(absolute);
        bytes
    }

    fn fd_subscription(userdata: u64, kind: u8, fd: i32) -> [u8; 48] {
        let mut bytes = [0u8; 48];
        bytes[0..8].copy_from_slice(&userdata.to_le_bytes());
        bytes[8] = kind;
        bytes[16..20].copy_from_slice(&fd.to_le_bytes());
        bytes
    }

    #[test]
    fn a_poll_on_clocks_alone_moves_the_clock_to_the_first_due_and_fires_it() {
        let mut clock = 1_000;
        let subscriptions = [
            clock_subscription(7, 500, false),
            clock_subscription(8, 2_000, true),
        ]
        .concat();
        let events = poll(&subscriptions, &mut clock).unwrap();
        assert_eq!(clock, 1_500);
        assert_eq!(
            events,
            [Event {
                userdata: 7,
                error: 0,
                kind: EVENT_CLOCK,
                flags: 0
            }]
        );
        // An absolute time already past fires at once and leaves the clock where it is.
        let events = poll(&clock_subscription(9, 10, true), &mut clock).unwrap();
        assert_eq!((clock, events.len()), (1_500, 1));
    }

    #[test]
    fn the_clock_stops_at_the_end_of_time_instead_of_wrapping() {
        let mut clock = 1_000;
        poll(&clock_subscription(1, u64::MAX, false), &mut clock).unwrap();
        assert_eq!(clock, u64::MAX);
        assert_eq!(tick(&mut clock), u64::MAX);
        assert_eq!(tick(&mut clock), u64::MAX);
        let mut clock = 1_000;
        poll(&clock_subscription(1, u64::MAX, true), &mut clock).unwrap();
        assert_eq!(tick(&mut clock), u64::MAX);
    }

    #[test]
    fn a_poll_with_streams_reports_them_ready_and_leaves_the_clock() {
        let mut clock = 1_000;
        let subscriptions = [
            clock_subscription(1, 500, false),
            fd_subscription(2, EVENT_FD_READ, 0),
            fd_subscription(3, EVENT_FD_WRITE, 1),
            fd_subscription(4, EVENT_FD_READ, 9),
        ]
        .concat();
        let events = poll(&subscriptions, &mut clock).unwrap();
        assert_eq!(clock, 1_000);
        let seen: Vec<(u64, u16, u16)> = events
            .iter()
            .map(|event| (event.userdata, event.error, event.flags))
            .collect();
        assert_eq!(
            seen,
            [
                (2, 0, EVENT_FD_READWRITE_HANGUP),
                (3, 0, 0),
                (4, errno::BADF as u16, 0)
            ]
        );
        let mut unknown = fd_subscription(5, 0, 0);
        unknown[8] = 3;
        assert_eq!(poll(&unknown, &mut clock), None);
    }

    #[test]
    fn every_import_allowed_is_defined_and_nothing_else() {
        let engine = wasmtime::Engine::default();
        let mut linker = Linker::new(&engine);
        define(&mut linker).expect("defined");
        let limits = crate::sandbox::Limits::default();
        let call = crate::sandbox::Call {
            context: crate::sandbox::Context::empty(),
            input: &[],
            seed: [0; 32],
        };
        let mut store = wasmtime::Store::new(&engine, GuestState::new(call, &limits));
        let mut defined: Vec<&str> = linker
            .iter(&mut store)
            .map(|(module, name, _)| {
                assert_eq!(module, abi::WASI_MODULE);
                name
            })
            .collect();
        defined.sort_unstable();
        let mut allowed = abi::WASI_IMPORTS.to_vec();
        allowed.sort_unstable();
        assert_eq!(defined, allowed);
    }

    #[test]
    fn strings_are_written_with_pointers_and_zero_ends() {
        let mut memory = [0xffu8; 32];
        let strings = [b"ab".to_vec(), b"c".to_vec()];
        assert_eq!(write_strings(&mut memory, &strings, 0, 8), errno::SUCCESS);
        assert_eq!(&memory[0..8], &[8, 0, 0, 0, 11, 0, 0, 0]);
        assert_eq!(&memory[8..13], b"ab\0c\0");
        assert_eq!(write_strings(&mut memory, &strings, 0, 30), errno::FAULT);
    }
}
