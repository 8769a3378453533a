//! Compile-time behaviour of the SDK's calls, pinned with trybuild: a misuse fails to compile
//! with an error that names it. Compile-fail cases only, so trybuild checks the runtime's
//! dependencies without building them.

#![cfg(feature = "runtime")]

#[test]
fn sdk_ui() {
    // A task's module is embedded from `OUT_DIR` (see `golem_build`); these cases have no build
    // script and never run, so an empty placeholder is enough.
    let out_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("golem-sdk-ui-out");
    std::fs::create_dir_all(&out_dir).expect("create the placeholder OUT_DIR");
    for (file, bytes) in [
        ("golem-guest.wasm", &[][..]),
        ("golem-guest.blake3", &[0; 32]),
    ] {
        std::fs::write(out_dir.join(file), bytes).expect("write a placeholder");
    }
    #[allow(
        unsafe_code,
        reason = "set before trybuild starts; this binary runs one test"
    )]
    // SAFETY: this is the only test in this binary and no other thread reads the environment.
    unsafe {
        std::env::set_var("OUT_DIR", &out_dir);
    }

    trybuild::TestCases::new().compile_fail("tests/ui/*.rs");
}
