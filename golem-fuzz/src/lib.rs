//! The fuzz targets of golem's decoders: everything a peer sends, and what a guest hands back.
//!
//! Each target takes arbitrary bytes and must not panic or hang, whatever they are. Where a
//! decoder accepts bytes, what it decoded must encode and decode back to itself. Each target
//! also checks a property of its own, named in its documentation.
//!
//! `fuzz/` runs these targets under libFuzzer (`fuzz/run.sh`). `tests/corpus.rs` replays the
//! saved corpus and every input that once crashed a target, so `cargo test` catches a regression
//! without fuzzing.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::LazyLock;
use std::time::Duration;

use arbitrary::Unstructured;
use golem_runtime::discovery::Announcement;
use golem_runtime::identity::NodeKey;
use golem_runtime::proto::frame::FrameDecoder;
use golem_runtime::proto::message::{BlobHeader, Hello, Reply, Request};
use golem_runtime::receipt::{Receipt, ReceiptEntry};
use golem_runtime::sandbox::{BlobId, Call, Context, Limits, Sandbox, SandboxConfig};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A fuzz target: takes any bytes.
pub type Target = fn(&[u8]);

/// Every target, by the name `fuzz/` builds it under and its corpus directory has.
pub const TARGETS: &[(&str, Target)] = &[
    ("frame", frame),
    ("message", message),
    ("receipt", receipt),
    ("output", output),
    ("module", module),
    ("smith_module", smith_module),
];

/// The largest frame body [`frame`] accepts: small, so that frames of every size are reached.
const FRAME_LIMIT: usize = 4096;
/// Bytes of a frame's length prefix.
const FRAME_PREFIX: usize = 4;

/// Encodes `value` and decodes it again: it must come back equal.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: &T) {
    let bytes = postcard::to_allocvec(value).expect("a decoded value encodes");
    let again: T = postcard::from_bytes(&bytes).expect("an encoded value decodes");
    assert_eq!(
        &again, value,
        "a value changed on its way through the codec"
    );
}

/// The frame decoder, fed a stream of requests in pieces (the first byte sets their size).
///
/// Besides the round trip of every frame decoded: an error ends the stream for good, and the
/// decoder never holds more than one unfinished frame of the limit.
pub fn frame(data: &[u8]) {
    let Some((&piece, stream)) = data.split_first() else {
        return;
    };
    let mut decoder = FrameDecoder::new(FRAME_LIMIT);
    for bytes in stream.chunks(usize::from(piece).max(1)) {
        decoder.push(bytes);
        loop {
            match decoder.next_frame::<Request>() {
                Ok(Some(request)) => round_trip(&request),
                Ok(None) => break,
                Err(_) => {
                    decoder.push(b"more");
                    assert!(
                        decoder.next_frame::<Request>().is_err(),
                        "a stream that failed stays failed"
                    );
                    return;
                }
            }
        }
        assert!(
            decoder.buffered() < FRAME_PREFIX + FRAME_LIMIT,
            "the decoder holds {} bytes, more than one unfinished frame",
            decoder.buffered()
        );
    }
    let _ = decoder.finish();
}

/// Every message type a peer sends, chosen by the first byte: requests and replies, the hello,
/// a blob's header, a receipt, and a provider's signed announcement.
pub fn message(data: &[u8]) {
    fn decode<T: Serialize + DeserializeOwned + PartialEq + Debug>(bytes: &[u8]) {
        if let Ok(value) = postcard::from_bytes::<T>(bytes) {
            round_trip(&value);
        }
    }
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    match kind % 6 {
        0 => decode::<Request>(bytes),
        1 => decode::<Reply>(bytes),
        2 => decode::<Hello>(bytes),
        3 => decode::<BlobHeader>(bytes),
        4 => decode::<Receipt>(bytes),
        _ => {
            // A day in 2026: whether it is expired is not what is fuzzed.
            if let Ok(announcement) = Announcement::verify(bytes, 1_790_000_000) {
                round_trip(&announcement);
            }
        }
    }
}

/// Receipts signed by one provider, of 0, 1, 3 and 16 entries, and their encodings: what
/// [`receipt`] changes. Signed once, so the target's time goes to decoding and verifying.
static SIGNED: LazyLock<Vec<(Receipt, Vec<u8>)>> = LazyLock::new(|| {
    let provider = NodeKey::from_secret([7; 32]);
    [0u8, 1, 3, 16]
        .into_iter()
        .map(|count| {
            let entries = (0..count)
                .map(|at| ReceiptEntry {
                    index: u64::from(at) * 1_000_003,
                    input: [at; 32],
                    output: [at.wrapping_mul(31); 32],
                    fuel: u64::from(at) << 40 | 17,
                })
                .collect();
            let receipt = Receipt::sign(&provider, [count; 32], entries);
            assert!(receipt.verify().is_ok(), "a receipt signed here verifies");
            let bytes = postcard::to_allocvec(&receipt).expect("a receipt encodes");
            (receipt, bytes)
        })
        .collect()
});

/// Receipt verification, two ways: any bytes decoded as a receipt and verified; and a receipt
/// signed by a provider with one to four bytes of its encoding changed (which receipt, where
/// and to what, the bytes say). The changed receipt must not verify unless it still states
/// exactly what was signed.
pub fn receipt(data: &[u8]) {
    if let Ok(receipt) = postcard::from_bytes::<Receipt>(data)
        && receipt.verify().is_ok()
    {
        let _ = receipt.fuel();
        round_trip(&receipt);
    }
    let _ = changed_receipt(&mut Unstructured::new(data));
}

fn changed_receipt(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let (signed, bytes) = u.choose(&SIGNED)?;
    let mut bytes = bytes.clone();
    for _ in 0..u.int_in_range(1..=4)? {
        let at = u.choose_index(bytes.len())?;
        bytes[at] ^= u.int_in_range(1..=255)?;
    }
    if let Ok(changed) = postcard::from_bytes::<Receipt>(&bytes)
        && changed.verify().is_ok()
    {
        assert_eq!(
            (changed.provider, changed.job, &changed.entries),
            (signed.provider, signed.job, &signed.entries),
            "a changed receipt verified"
        );
    }
    Ok(())
}

/// A task's output type of several shapes.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Shape {
    Empty,
    Tile { x: u32, y: u32, pixels: Vec<u8> },
    Named(String, Option<Box<Shape>>),
    Many(Vec<(u16, i64)>),
}

/// The requestor's decoding of what a guest handed back, as several output types (the first
/// byte says which). An output that decodes came back whole: a byte more and it does not.
pub fn output(data: &[u8]) {
    fn check<O: Serialize + DeserializeOwned + PartialEq + Debug>(bytes: &[u8]) {
        let Ok(output) = golem::__private::decode_output::<O>("fuzz", 0, bytes) else {
            return;
        };
        round_trip(&output);
        let longer = [bytes, &[0]].concat();
        assert!(
            golem::__private::decode_output::<O>("fuzz", 0, &longer).is_err(),
            "an output with a byte left over decoded"
        );
    }
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    match kind % 7 {
        0 => check::<Vec<u8>>(bytes),
        1 => check::<String>(bytes),
        2 => check::<Result<u64, String>>(bytes),
        3 => check::<(u8, i128, char, bool)>(bytes),
        4 => check::<Option<Vec<(u32, String)>>>(bytes),
        5 => check::<BTreeMap<String, Vec<u16>>>(bytes),
        _ => check::<Shape>(bytes),
    }
}

/// The sandbox the module targets prepare modules in: small, and strict.
static SANDBOX: LazyLock<Sandbox> = LazyLock::new(|| {
    let mut config = SandboxConfig::with_instances(2);
    config.max_memory_bytes = 64 << 20;
    config.compile_threads = 1;
    config.compile_timeout = Duration::from_secs(20);
    Sandbox::new(config).expect("the fuzzing sandbox")
});

/// Prepares `bytes` as a peer's module: it is accepted or refused with a typed error. An
/// accepted module's task `t` runs under small limits and ends, well or with a typed error.
fn prepare_and_run(bytes: &[u8]) {
    let Ok(module) = SANDBOX.prepare(BlobId::of(bytes), bytes) else {
        return;
    };
    let Ok(task) = module.task("t") else {
        return;
    };
    let limits = Limits::default()
        .fuel(1_000_000)
        .memory_bytes(16 << 20)
        .deadline(Duration::from_secs(1));
    let call = Call {
        context: Context::empty(),
        input: &[],
        seed: [0; 32],
    };
    let _ = SANDBOX.run(&module, &task, call, &limits);
}

/// Module preparation on arbitrary bytes.
pub fn module(data: &[u8]) {
    prepare_and_run(data);
}

/// What a golem module may import and must export, for wasm-smith.
static SHAPE: LazyLock<(Vec<u8>, Vec<u8>)> = LazyLock::new(|| {
    let imports = wat_module(
        r#"(module
            (import "golem" "input_len" (func (param i32) (result i32)))
            (import "golem" "input_read" (func (param i32 i32)))
            (import "golem" "output" (func (param i32 i32)))
            (import "golem" "panic" (func (param i32 i32)))
            (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
            (import "wasi_snapshot_preview1" "random_get" (func (param i32 i32) (result i32)))
            (import "wasi_snapshot_preview1" "clock_time_get" (func (param i32 i64 i32) (result i32)))
            (import "wasi_snapshot_preview1" "poll_oneoff" (func (param i32 i32 i32 i32) (result i32)))
            (import "wasi_snapshot_preview1" "proc_exit" (func (param i32))))"#,
    );
    let exports = wat_module(
        r#"(module
            (memory (export "memory") 1)
            (func (export "golem_abi_version") (result i32) unreachable)
            (func (export "golem_task_t")))"#,
    );
    (imports, exports)
});

fn wat_module(text: &str) -> Vec<u8> {
    wat::parse_str(text).expect("a module's shape")
}

/// Module preparation on valid modules that wasm-smith makes from the bytes: with golem's
/// imports and exports, so they go through validation, the metering rewrite, the compiler and
/// their start-up (their start function and `golem_abi_version`, run under the probe's fuel and
/// deadline), and run when they get that far.
pub fn smith_module(data: &[u8]) {
    let (imports, exports) = &*SHAPE;
    let config = wasm_smith::Config {
        available_imports: Some(imports.clone()),
        exports: Some(exports.clone()),
        max_memories: 1,
        max_memory32_bytes: 16 << 20,
        max_tables: 1,
        memory64_enabled: false,
        threads_enabled: false,
        gc_enabled: false,
        exceptions_enabled: false,
        tail_call_enabled: false,
        ..wasm_smith::Config::default()
    };
    let Ok(module) = wasm_smith::Module::new(config, &mut Unstructured::new(data)) else {
        return;
    };
    prepare_and_run(&module.to_bytes());
}
