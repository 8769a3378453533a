//! The guest half of the ABI (see `golem_abi`): compiled only into task modules (wasm32).
//!
//! `#[golem::task]` generates an export per task that calls [`run`]; [`run`] pulls the context
//! and input from the host, decodes them, calls the function and hands back the encoded result.
#![allow(
    unsafe_code,
    reason = "the host-guest ABI is a set of extern functions"
)]

use std::cell::UnsafeCell;
use std::sync::Once;

use golem_abi as abi;

use crate::Task;

mod host {
    #[link(wasm_import_module = "golem")]
    unsafe extern "C" {
        #[link_name = "input_len"]
        pub(super) fn input_len(slot: i32) -> i32;
        #[link_name = "input_read"]
        pub(super) fn input_read(slot: i32, ptr: *mut u8);
        #[link_name = "output"]
        pub(super) fn output(ptr: *const u8, len: i32);
        #[link_name = "panic"]
        pub(super) fn panic(ptr: *const u8, len: i32);
    }
}

/// The ABI version this module speaks; the host refuses modules of another version.
#[unsafe(export_name = "golem_abi_version")]
extern "C" fn abi_version() -> i32 {
    abi::ABI_VERSION as i32
}

fn read_slot(slot: i32) -> Vec<u8> {
    // SAFETY: the host reports the slot's length, then writes exactly that many bytes to the
    // buffer, which has that capacity; only then is the length set.
    unsafe {
        let len = host::input_len(slot).max(0) as usize;
        let mut bytes = Vec::with_capacity(len);
        host::input_read(slot, bytes.as_mut_ptr());
        bytes.set_len(len);
        bytes
    }
}

fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let message = info.to_string();
            // SAFETY: the pointer and length describe `message`, alive for the call.
            unsafe { host::panic(message.as_ptr(), message.len() as i32) };
        }));
    });
}

/// Where a task's export keeps its decoded context between calls of one instance (and so in
/// the instance's snapshot). One per task, a `static` the `#[golem::task]` expansion declares.
pub struct KeptContext<C>(UnsafeCell<Option<C>>);

// SAFETY: a task module is single-threaded (wasm32 without threads): no two calls touch the
// cell at once.
unsafe impl<C> Sync for KeptContext<C> {}

impl<C> KeptContext<C> {
    /// An empty cell.
    #[allow(
        clippy::new_without_default,
        reason = "used in a `static`, where only `const` works"
    )]
    pub const fn new() -> Self {
        Self(UnsafeCell::new(None))
    }
}

/// Decodes task `T`'s context and keeps it in `kept`. Called by the context export
/// `#[golem::task]` generates, once per instance, before the host snapshots it.
pub fn keep_context<T: Task>(kept: &KeptContext<T::Context>) {
    install_panic_hook();
    let mut bytes = read_slot(abi::SLOT_CONTEXT);
    let context: T::Context = decode(&bytes, T::NAME, "context");
    // Cleared, so the snapshot of this instance holds zeros there, which take no memory.
    bytes.fill(0);
    std::hint::black_box(&mut bytes);
    drop(bytes);
    // SAFETY: single-threaded, and no reference into the cell is alive: the task calls that
    // borrow it run after this call returns.
    unsafe { *kept.0.get() = Some(context) };
}

/// Runs task `T` on the inputs the host provides, with the context kept in `kept` when the
/// host called the context export first, or else read and decoded now. Called by the task
/// export `#[golem::task]` generates.
pub fn run<T: Task>(kept: &KeptContext<T::Context>) {
    install_panic_hook();
    // Keep the version export alive in every module that has a task.
    std::hint::black_box(abi_version as extern "C" fn() -> i32);
    // SAFETY: single-threaded; the cell is written only by `keep_context`, never during a call.
    let kept = unsafe { (*kept.0.get()).as_ref() };
    let decoded;
    let context = match kept {
        Some(context) => context,
        None => {
            decoded = decode::<T::Context>(&read_slot(abi::SLOT_CONTEXT), T::NAME, "context");
            &decoded
        }
    };
    let input: T::Input = decode(&read_slot(abi::SLOT_INPUT), T::NAME, "input");
    let output = T::call(context, input);
    let bytes = postcard::to_allocvec(&output)
        .unwrap_or_else(|error| panic!("cannot encode the output of task `{}`: {error}", T::NAME));
    // SAFETY: the pointer and length describe `bytes`, alive for the call.
    unsafe { host::output(bytes.as_ptr(), bytes.len() as i32) };
}

fn decode<V: serde::de::DeserializeOwned>(bytes: &[u8], task: &str, what: &str) -> V {
    postcard::from_bytes(bytes)
        .unwrap_or_else(|error| panic!("cannot decode the {what} of task `{task}`: {error}"))
}
