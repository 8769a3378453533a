//! The guest build of a task crate must stay small: none of the host's machinery may reach the
//! wasm32 dependency graph.

use std::process::Command;

#[test]
fn guest_dependency_graph_has_no_host_crates() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    for package in ["golem-fixture", "golem-examples"] {
        let output = Command::new(&cargo)
            .args(["tree", "--offline", "--edges", "normal", "--prefix", "none"])
            .args([
                "--target",
                "wasm32-wasip1",
                "--manifest-path",
                manifest,
                "--package",
                package,
            ])
            .output()
            .expect("cargo tree runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let tree = String::from_utf8_lossy(&output.stdout);
        assert!(tree.contains("golem-sdk"), "the graph was read: {tree}");
        for host_only in [
            "wasmtime",
            "tokio",
            "golem-runtime",
            "blake3",
            "cranelift",
            "rayon",
        ] {
            assert!(
                !tree.lines().any(|line| line.starts_with(host_only)),
                "`{host_only}` reaches the guest build of {package}:\n{tree}"
            );
        }
    }
}
