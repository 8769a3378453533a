//! The contract between a golem task module (the guest, compiled to `wasm32-wasip1`) and the
//! sandbox that runs it (the host).
//!
//! Both sides use the constants here, so a name cannot drift between them. The contract:
//!
//! * The module exports [`VERSION_EXPORT`], a function `() -> i32` returning [`ABI_VERSION`];
//!   the host refuses modules built for another version.
//! * Every task is an export named [`TASK_EXPORT_PREFIX`]` + task name`, of type `() -> ()`.
//!   When it is called, the guest pulls its inputs from the host with the imports of
//!   [`HOST_MODULE`]: [`INPUT_LEN`]`(slot) -> i32` and [`INPUT_READ`]`(slot, ptr)`, for the slots
//!   [`SLOT_CONTEXT`] and [`SLOT_INPUT`]. It hands back its postcard-encoded result with
//!   [`OUTPUT`]`(ptr, len)` exactly once, or reports a panic with [`PANIC`]`(ptr, len)` before it
//!   traps.
//! * A task may also export [`CONTEXT_EXPORT_PREFIX`]` + task name`, of type `() -> ()`: it
//!   decodes the context from [`SLOT_CONTEXT`] and keeps it in the instance. The host calls it
//!   once before the task when the context is not empty, and may snapshot the instance there
//!   and start later calls of the task with that context from the snapshot; a task call that
//!   finds a kept context uses it and does not read [`SLOT_CONTEXT`]. So a provider need not
//!   decode a context for every subtask. The context function may not call [`OUTPUT`].
//! * Besides these, a module may import only `wasi_snapshot_preview1`, listed in
//!   [`WASI_IMPORTS`], which the host answers deterministically (no files, no sockets); anything
//!   else is refused before it runs.
//!
//! [`ABI_DESCRIPTION`] spells all of this out as one string; a test pins its hash to
//! [`ABI_VERSION`], so changing the contract without bumping the version fails the build's tests.
//!
//! ```
//! use golem_abi::{TASK_EXPORT_PREFIX, WASI_IMPORTS};
//!
//! // The export of `#[golem::task] fn render(..)`:
//! assert_eq!(format!("{TASK_EXPORT_PREFIX}render"), "golem_task_render");
//! // Randomness is seeded; `path_open` may be imported, and answers that there is no file.
//! assert!(WASI_IMPORTS.contains(&"random_get"));
//! assert!(WASI_IMPORTS.contains(&"path_open"));
//! assert!(!WASI_IMPORTS.contains(&"sock_open"));
//! ```
#![no_std]

/// Version of the contract described in this crate. Bump it with any change to the names,
/// signatures or meaning below.
pub const ABI_VERSION: u32 = 3;

/// Name of the export that returns [`ABI_VERSION`].
pub const VERSION_EXPORT: &str = "golem_abi_version";

/// Prefix of the export name of every task: the export of task `render` is `golem_task_render`.
pub const TASK_EXPORT_PREFIX: &str = "golem_task_";

/// Prefix of the export that decodes and keeps a task's context: that of task `render` is
/// `golem_context_render`.
pub const CONTEXT_EXPORT_PREFIX: &str = "golem_context_";

/// Import module of the golem host functions.
pub const HOST_MODULE: &str = "golem";

/// `input_len(slot: i32) -> i32`: the byte length of the input in `slot`.
pub const INPUT_LEN: &str = "input_len";

/// `input_read(slot: i32, ptr: i32)`: copies the input in `slot` to guest memory at `ptr`.
pub const INPUT_READ: &str = "input_read";

/// `output(ptr: i32, len: i32)`: hands the encoded result of the task to the host.
pub const OUTPUT: &str = "output";

/// `panic(ptr: i32, len: i32)`: reports a panic message (UTF-8) before the guest traps.
pub const PANIC: &str = "panic";

/// Input slot of the shared context (empty when the task takes none).
pub const SLOT_CONTEXT: i32 = 0;

/// Input slot of the subtask's own input.
pub const SLOT_INPUT: i32 = 1;

/// Import module of the WASI functions the sandbox provides.
pub const WASI_MODULE: &str = "wasi_snapshot_preview1";

/// The WASI preview 1 functions a module may import: all of `wasi_snapshot_preview1`. The
/// sandbox answers them deterministically: no files (no directory is preopened, so opening one
/// fails with a WASI error code), no sockets, empty arguments and environment, a virtual clock,
/// seeded randomness, an empty standard input, and stdout/stderr captured as logs.
pub const WASI_IMPORTS: &[&str] = &[
    "args_get",
    "args_sizes_get",
    "clock_res_get",
    "clock_time_get",
    "environ_get",
    "environ_sizes_get",
    "fd_advise",
    "fd_allocate",
    "fd_close",
    "fd_datasync",
    "fd_fdstat_get",
    "fd_fdstat_set_flags",
    "fd_fdstat_set_rights",
    "fd_filestat_get",
    "fd_filestat_set_size",
    "fd_filestat_set_times",
    "fd_pread",
    "fd_prestat_dir_name",
    "fd_prestat_get",
    "fd_pwrite",
    "fd_read",
    "fd_readdir",
    "fd_renumber",
    "fd_seek",
    "fd_sync",
    "fd_tell",
    "fd_write",
    "path_create_directory",
    "path_filestat_get",
    "path_filestat_set_times",
    "path_link",
    "path_open",
    "path_readlink",
    "path_remove_directory",
    "path_rename",
    "path_symlink",
    "path_unlink_file",
    "poll_oneoff",
    "proc_exit",
    "proc_raise",
    "random_get",
    "sched_yield",
    "sock_accept",
    "sock_recv",
    "sock_send",
    "sock_shutdown",
];

/// The whole contract as text. A test pins its hash for the current [`ABI_VERSION`].
pub const ABI_DESCRIPTION: &str = "\
export golem_abi_version: () -> i32 = ABI_VERSION
export golem_task_<name>: () -> ()
export golem_context_<name>: () -> ()   ; optional: decodes slot 0 and keeps it for the task calls after it
import golem.input_len: (slot i32) -> i32
import golem.input_read: (slot i32, ptr i32) -> ()
import golem.output: (ptr i32, len i32) -> ()   ; once per call, postcard bytes of the return value
import golem.panic: (ptr i32, len i32) -> ()    ; utf-8 message, then the guest traps
slot 0 = context (postcard, empty when none), slot 1 = input (postcard)
wasi_snapshot_preview1: args_get args_sizes_get clock_res_get clock_time_get environ_get \
environ_sizes_get fd_advise fd_allocate fd_close fd_datasync fd_fdstat_get fd_fdstat_set_flags \
fd_fdstat_set_rights fd_filestat_get fd_filestat_set_size fd_filestat_set_times fd_pread \
fd_prestat_dir_name fd_prestat_get fd_pwrite fd_read fd_readdir fd_renumber fd_seek fd_sync \
fd_tell fd_write path_create_directory path_filestat_get path_filestat_set_times path_link \
path_open path_readlink path_remove_directory path_rename path_symlink path_unlink_file \
poll_oneoff proc_exit proc_raise random_get sched_yield sock_accept sock_recv sock_send \
sock_shutdown
";

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    /// Fails when the contract text changes without a version bump: update the pinned hash
    /// *and* [`ABI_VERSION`] together.
    #[test]
    fn abi_description_is_pinned_to_its_version() {
        // FNV-1a, so this crate stays free of dependencies.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in ABI_DESCRIPTION.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        let pinned: &[(u32, u64)] = &[(2, PINNED_V2), (3, PINNED_V3)];
        let expected = pinned
            .iter()
            .find(|(version, _)| *version == ABI_VERSION)
            .map(|(_, hash)| *hash);
        assert_eq!(
            Some(hash),
            expected,
            "the ABI description changed: bump ABI_VERSION and pin the new hash {hash:#x}"
        );
    }

    const PINNED_V2: u64 = 0xadd8_ff5f_5d3c_3f36;
    const PINNED_V3: u64 = 0x5a80_aee8_2e1b_ed78;

    #[test]
    fn wasi_list_matches_description() {
        let words: std::vec::Vec<&str> = ABI_DESCRIPTION
            .split(|c: char| c.is_whitespace() || c == '\\')
            .collect();
        for name in WASI_IMPORTS {
            assert!(words.contains(name), "{name} missing from ABI_DESCRIPTION");
        }
    }
}
