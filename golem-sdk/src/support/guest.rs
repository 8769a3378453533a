//! The guest half of the ABI (see `golem_abi`): compiled only into task modules (wasm32).
//!
//! `#[golem::task]` generates an export per task that calls [`run`]; [`run`] pulls the context
//! and input from the host, decodes them, calls the function and hands back the encoded result.
#![allow(
    unsafe_code,
    reason = "the host-guest ABI is a set of extern functions"
)]

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

/// Runs task `T` on the inputs the host provides. Called by the export `#[golem::task]`
/// generates.
pub fn run<T: Task>() {
    install_panic_hook();
    // Keep the version export alive in every module that has a task.
    std::hint::black_box(abi_version as extern "C" fn() -> i32);
    let context: T::Context = decode(&read_slot(abi::SLOT_CONTEXT), T::NAME, "context");
    let input: T::Input = decode(&read_slot(abi::SLOT_INPUT), T::NAME, "input");
    let output = T::call(&context, input);
    let bytes = postcard::to_allocvec(&output)
        .unwrap_or_else(|error| panic!("cannot encode the output of task `{}`: {error}", T::NAME));
    // SAFETY: the pointer and length describe `bytes`, alive for the call.
    unsafe { host::output(bytes.as_ptr(), bytes.len() as i32) };
}

fn decode<V: serde::de::DeserializeOwned>(bytes: &[u8], task: &str, what: &str) -> V {
    postcard::from_bytes(bytes)
        .unwrap_or_else(|error| panic!("cannot decode the {what} of task `{task}`: {error}"))
}
