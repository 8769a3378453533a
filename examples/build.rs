//! Compiles this crate's `#[golem::task]` functions to the WebAssembly module the examples run.

fn main() {
    golem_build::build_tasks();
}
