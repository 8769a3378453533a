//! Compile-time behaviour of `#[golem::task]`, pinned with trybuild: accepted signatures compile
//! and run natively; each refused signature fails with a spanned error.

use std::path::PathBuf;

#[test]
fn task_macro_ui() {
    // The cases are compiled without a build script, so point `OUT_DIR` at an empty guest
    // module, as a skipped guest build would leave it.
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("golem-ui-out");
    std::fs::create_dir_all(&out_dir).expect("create the placeholder OUT_DIR");
    std::fs::write(out_dir.join("golem-guest.wasm"), []).expect("write the placeholder module");
    std::fs::write(out_dir.join("golem-guest.blake3"), blake3_of_empty()).expect("write its hash");
    #[allow(
        unsafe_code,
        reason = "set before trybuild starts; this binary runs one test"
    )]
    // SAFETY: this is the only test in this binary and no other thread reads the environment.
    unsafe {
        std::env::set_var("OUT_DIR", &out_dir);
    }

    let cases = trybuild::TestCases::new();
    cases.pass("ui/pass/*.rs");
    cases.compile_fail("ui/fail/*.rs");
}

/// blake3 of the empty input.
fn blake3_of_empty() -> [u8; 32] {
    let hex = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";
    let mut bytes = [0u8; 32];
    for (index, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * index..2 * index + 2], 16).expect("hex");
    }
    bytes
}
