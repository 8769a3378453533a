//! Compile-time behaviour of `#[golem::task]`, pinned with trybuild: accepted signatures compile
//! and run natively; each refused signature fails with a spanned error.
//!
//! The cases use `golem-sdk` without its `runtime` feature, so trybuild compiles serde and the
//! macro's dependencies, not the sandbox and network (the SDK's own cases are in its crate).

use std::path::PathBuf;

#[test]
fn task_macro_ui() {
    // The cases are compiled without a build script: point `OUT_DIR` at an empty module, as a
    // skipped guest build leaves it. Its hash is never read without the runtime.
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("golem-macros-ui-out");
    std::fs::create_dir_all(&out_dir).expect("create the placeholder OUT_DIR");
    std::fs::write(out_dir.join("golem-guest.wasm"), []).expect("write the placeholder module");
    std::fs::write(out_dir.join("golem-guest.blake3"), [0; 32]).expect("write its hash");
    #[allow(
        unsafe_code,
        reason = "set before trybuild starts; this binary runs one test"
    )]
    // SAFETY: this is the only test in this binary and no other thread reads the environment.
    unsafe {
        std::env::set_var("OUT_DIR", &out_dir);
    }

    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/fail/*.rs");
}
