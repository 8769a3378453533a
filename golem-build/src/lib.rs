//! Builds the WebAssembly module of a crate's `#[golem::task]` functions from its `build.rs`.
//!
//! ```no_run
//! // build.rs of a crate whose library defines golem tasks
//! fn main() {
//!     golem_build::build_tasks();
//! }
//! ```
//!
//! [`build_tasks`] compiles the crate's library target for `wasm32-wasip1` with a nested
//! `cargo`, and writes the module and its blake3 hash to `OUT_DIR`, where `#[golem::task]`
//! embeds them into the native binary. The nested build:
//!
//! * uses its own target directory (`<target>/golem-guest`), so it never waits on the lock the
//!   outer cargo holds;
//! * runs with a pinned release profile and a cleared environment: the outer build's
//!   `RUSTFLAGS`, `CARGO_ENCODED_RUSTFLAGS`, wrappers (clippy) and target settings do not leak in,
//!   and `--remap-path-prefix` keeps paths of the build machine out of the module, so the same
//!   source gives the same bytes anywhere;
//! * is guarded against recursion (the build script of the guest build does nothing);
//! * asks cargo to rerun it when any local source file that went into the module changes.
//!
//! Set `GOLEM_SKIP_GUEST_BUILD=1` to skip it (an empty module is embedded, and running a task
//! then fails with a clear error). It is skipped on its own under `cargo clippy` and on docs.rs.
//! The `wasm32-wasip1` target is added with `rustup` when it is missing.

#![allow(
    clippy::needless_doctest_main,
    reason = "the example is a build script"
)]

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The target task modules are built for.
pub const GUEST_TARGET: &str = "wasm32-wasip1";

/// File name of the module in `OUT_DIR`.
pub const MODULE_FILE: &str = "golem-guest.wasm";

/// File name of the module's 32-byte blake3 hash in `OUT_DIR`.
pub const HASH_FILE: &str = "golem-guest.blake3";

/// Set in the nested build's environment: its own build script must not recurse.
const GUARD_VAR: &str = "GOLEM_GUEST_BUILD";

/// Set by the user to skip the guest build.
const SKIP_VAR: &str = "GOLEM_SKIP_GUEST_BUILD";

/// Compiles the calling crate's library for [`GUEST_TARGET`] and writes [`MODULE_FILE`] and
/// [`HASH_FILE`] to `OUT_DIR`. Call it from `build.rs`.
///
/// # Panics
///
/// When the guest build fails: the message carries the nested cargo's errors, which is how a
/// build script reports failure.
pub fn build_tasks() {
    if let Err(message) = try_build_tasks() {
        panic!("golem guest build failed: {message}");
    }
}

/// [`build_tasks`], returning the error instead of panicking.
pub fn try_build_tasks() -> Result<(), String> {
    let out_dir = PathBuf::from(var("OUT_DIR")?);
    println!("cargo:rerun-if-env-changed={SKIP_VAR}");
    println!("cargo:rerun-if-env-changed=CLIPPY_ARGS");

    if env::var_os(GUARD_VAR).is_some() || var("TARGET")?.starts_with("wasm32") {
        // Inside the guest build: the module is what is being built.
        return write_outputs(&out_dir, &[]);
    }
    if let Some(skip) = skip_reason() {
        if skip == Skip::Requested {
            println!(
                "cargo:warning=golem: guest build skipped ({SKIP_VAR} is set); tasks of this \
                 build cannot run"
            );
        }
        return write_outputs(&out_dir, &[]);
    }

    let manifest_dir = PathBuf::from(var("CARGO_MANIFEST_DIR")?);
    let package = var("CARGO_PKG_NAME")?;
    let workspace = workspace_root(&manifest_dir);
    let target_dir = guest_target_dir(&out_dir);
    ensure_target_installed()?;

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .arg("rustc")
        .arg("--quiet")
        .arg("--lib")
        .arg("--crate-type")
        .arg("cdylib")
        .arg("--release")
        .arg("--target")
        .arg(GUEST_TARGET)
        .arg("--manifest-path")
        .arg(manifest_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .arg("--package")
        .arg(&package);
    clean_environment(&mut command);
    command
        .env(GUARD_VAR, "1")
        .env("CARGO_ENCODED_RUSTFLAGS", guest_rustflags(&workspace))
        .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "3")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_DEBUG_ASSERTIONS", "false")
        .env("CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS", "false")
        .env("CARGO_PROFILE_RELEASE_LTO", "true")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
        .env("CARGO_PROFILE_RELEASE_PANIC", "abort")
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo")
        .env("CARGO_PROFILE_RELEASE_INCREMENTAL", "false");

    let output = command
        .output()
        .map_err(|error| format!("cannot run cargo: {error}"))?;
    if !output.status.success() {
        return Err(format!(
            "`cargo rustc --target {GUEST_TARGET}` for `{package}` failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }

    let artifacts = target_dir.join(GUEST_TARGET).join("release");
    let lib_name = package.replace('-', "_");
    let module_path = artifacts.join(format!("{lib_name}.wasm"));
    let module = fs::read(&module_path)
        .map_err(|error| format!("cannot read {}: {error}", module_path.display()))?;
    rerun_if_sources_change(
        &artifacts.join(format!("{lib_name}.d")),
        &manifest_dir,
        &workspace,
    );
    write_outputs(&out_dir, &module)
}

fn var(name: &str) -> Result<String, String> {
    env::var(name).map_err(|_| format!("{name} is not set; call golem_build from a build script"))
}

/// Why the guest build is skipped.
#[derive(Debug, PartialEq, Eq)]
enum Skip {
    /// The user set [`SKIP_VAR`].
    Requested,
    /// A tool that only checks or documents the crate (clippy, docs.rs).
    CheckOnly,
}

fn skip_reason() -> Option<Skip> {
    if env::var_os(SKIP_VAR).is_some_and(|value| value != "0" && !value.is_empty()) {
        return Some(Skip::Requested);
    }
    if env::var_os("CLIPPY_ARGS").is_some() || env::var_os("DOCS_RS").is_some() {
        return Some(Skip::CheckOnly);
    }
    None
}

/// `<target>/golem-guest` beside the outer build's profile directories: found as the ancestor
/// of `OUT_DIR` that holds cargo's `CACHEDIR.TAG`, falling back to `OUT_DIR` itself.
fn guest_target_dir(out_dir: &Path) -> PathBuf {
    out_dir
        .ancestors()
        .find(|dir| dir.join("CACHEDIR.TAG").is_file())
        .unwrap_or(out_dir)
        .join("golem-guest")
}

/// Adds the guest target with rustup when the toolchain lacks it (machines with
/// `RUSTUP_AUTO_INSTALL=0` do not add the targets `rust-toolchain.toml` lists).
fn ensure_target_installed() -> Result<(), String> {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .map_err(|error| format!("cannot run rustc: {error}"))?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if sysroot.join("lib/rustlib").join(GUEST_TARGET).is_dir() {
        return Ok(());
    }
    let install = format!("rustup target add {GUEST_TARGET}");
    let mut rustup = Command::new("rustup");
    rustup.args(["target", "add", GUEST_TARGET]);
    if let Some(toolchain) = env::var_os("RUSTUP_TOOLCHAIN") {
        rustup.arg("--toolchain").arg(toolchain);
    }
    match rustup.output() {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => Err(format!(
            "the {GUEST_TARGET} target is missing and `{install}` failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )),
        Err(error) => Err(format!(
            "the {GUEST_TARGET} target is missing and rustup cannot be run ({error}); \
             install it with `{install}`"
        )),
    }
}

/// Removes what the outer cargo put in the environment of this build script, keeping what the
/// nested cargo needs to find its toolchain, registry and jobserver.
fn clean_environment(command: &mut Command) {
    const KEEP: &[&str] = &[
        "PATH",
        "HOME",
        "CARGO_HOME",
        "RUSTUP_HOME",
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "CARGO_MAKEFLAGS",
        "CARGO_NET_OFFLINE",
        "CARGO_HTTP_PROXY",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "TMPDIR",
        "TERM",
    ];
    let kept: Vec<(OsString, OsString)> = env::vars_os()
        .filter(|(name, _)| {
            let name = name.to_string_lossy();
            KEEP.contains(&name.as_ref()) || name.starts_with("CARGO_REGISTRIES_")
        })
        .collect();
    command.env_clear().envs(kept);
}

/// Loop unrolling for the guest. The sandbox enforces its CPU and wall-time limits with a check
/// at every loop head (fuel and deadline); unrolling hot loops ×8, including loops with
/// several exits, leaves one check per eight iterations. On the render kernel
/// (`cargo bench -p golem-benches --bench compare`) this took the sandbox from 1.98× native to
/// 1.12× with both limits on, and the examples module from 94 KB to 127 KB.
const UNROLL_FLAGS: &[&str] = &[
    "-Cllvm-args=-unroll-runtime",
    "-Cllvm-args=-unroll-runtime-multi-exit",
    "-Cllvm-args=-unroll-count=8",
];

/// Rust flags of the guest: loop unrolling (see [`UNROLL_FLAGS`]), and paths of this machine
/// remapped so they do not end up in the module (panic locations carry file names).
fn guest_rustflags(workspace: &Path) -> String {
    let mut flags: Vec<String> = UNROLL_FLAGS
        .iter()
        .map(|flag| (*flag).to_string())
        .collect();
    flags.push(format!(
        "--remap-path-prefix={}=/golem/src",
        workspace.display()
    ));
    if let Some(cargo_home) = cargo_home() {
        flags.push(format!(
            "--remap-path-prefix={}=/golem/cargo",
            cargo_home.display()
        ));
    }
    if let Some(rustup_home) = env::var_os("RUSTUP_HOME") {
        flags.push(format!(
            "--remap-path-prefix={}=/golem/rustup",
            Path::new(&rustup_home).display()
        ));
    }
    flags.join("\x1f")
}

fn cargo_home() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
}

/// The outermost ancestor of the crate holding a `Cargo.toml` with a `[workspace]`, or the crate
/// itself.
fn workspace_root(manifest_dir: &Path) -> PathBuf {
    manifest_dir
        .ancestors()
        .filter(|dir| {
            fs::read_to_string(dir.join("Cargo.toml"))
                .is_ok_and(|manifest| manifest.contains("[workspace]"))
        })
        .last()
        .unwrap_or(manifest_dir)
        .to_path_buf()
}

/// Reads the dep-info file of the guest build and asks cargo to rerun this build script when
/// any source that went into the module changes, except files of the registry (those change
/// only with `Cargo.lock`, which is watched too).
fn rerun_if_sources_change(dep_info: &Path, manifest_dir: &Path, workspace: &Path) {
    for path in watched_files(dep_info, manifest_dir, workspace, cargo_home().as_deref()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// The files whose change must rebuild the module: the crate's manifest, the workspace's lock
/// file, and
/// every source in the dep-info file outside the registry (`registry_home`); the crate's `src`
/// directory when there is no dep-info.
fn watched_files(
    dep_info: &Path,
    manifest_dir: &Path,
    workspace: &Path,
    registry_home: Option<&Path>,
) -> Vec<PathBuf> {
    let mut watched = vec![manifest_dir.join("Cargo.toml")];
    let lock = workspace.join("Cargo.lock");
    if lock.is_file() {
        watched.push(lock);
    }
    let Ok(contents) = fs::read_to_string(dep_info) else {
        watched.push(manifest_dir.join("src"));
        return watched;
    };
    // The first line is `<artifact>: <dep> <dep> ...`, with spaces in paths escaped as `\ `.
    if let Some((_, deps)) = contents
        .lines()
        .next()
        .and_then(|line| line.split_once(": "))
    {
        watched.extend(
            split_escaped(deps)
                .into_iter()
                .map(PathBuf::from)
                .filter(|path| path.is_absolute())
                .filter(|path| !registry_home.is_some_and(|home| path.starts_with(home))),
        );
    }
    watched
}

fn split_escaped(deps: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut current = String::new();
    let mut chars = deps.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => current.extend(chars.next()),
            ' ' if !current.is_empty() => paths.push(std::mem::take(&mut current)),
            ' ' => {}
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        paths.push(current);
    }
    paths
}

fn write_outputs(out_dir: &Path, module: &[u8]) -> Result<(), String> {
    let write = |name: &str, bytes: &[u8]| {
        let path = out_dir.join(name);
        // Leave the file alone when it is unchanged, so its mtime does not force rebuilds.
        if fs::read(&path).is_ok_and(|existing| existing == bytes) {
            return Ok(());
        }
        fs::write(&path, bytes).map_err(|error| format!("cannot write {}: {error}", path.display()))
    };
    write(MODULE_FILE, module)?;
    write(HASH_FILE, blake3::hash(module).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dep_info_paths_keep_escaped_spaces() {
        assert_eq!(
            split_escaped(r"/a/b.rs /c\ d/e.rs  /f.rs"),
            vec!["/a/b.rs", "/c d/e.rs", "/f.rs"]
        );
    }

    #[test]
    fn local_sources_are_watched_and_registry_sources_are_not() {
        let root = env::temp_dir().join(format!("golem-build-watch-{}", std::process::id()));
        let krate = root.join("my crate");
        fs::create_dir_all(&krate).expect("create temp dirs");
        let dep_info = root.join("guest.d");
        let registry = root.join("cargo-home");
        fs::write(
            &dep_info,
            format!(
                "{out}: {src} {reg} relative.rs\n\n{src}:\n",
                out = root.join("guest.wasm").display(),
                src = krate
                    .join("src/lib.rs")
                    .display()
                    .to_string()
                    .replace(' ', "\\ "),
                reg = registry.join("registry/src/serde/lib.rs").display(),
            ),
        )
        .expect("write dep-info");
        let watched = watched_files(&dep_info, &krate, &krate, Some(&registry));
        assert_eq!(
            watched,
            vec![krate.join("Cargo.toml"), krate.join("src/lib.rs")]
        );

        let without = watched_files(&root.join("missing.d"), &krate, &krate, Some(&registry));
        assert_eq!(without, vec![krate.join("Cargo.toml"), krate.join("src")]);
        fs::remove_dir_all(&root).expect("clean up");
    }

    #[test]
    fn guest_target_dir_sits_in_the_cargo_target_dir() {
        let root = env::temp_dir().join(format!("golem-build-test-{}", std::process::id()));
        let out = root.join("debug/build/pkg-123/out");
        fs::create_dir_all(&out).expect("create temp dirs");
        fs::write(root.join("CACHEDIR.TAG"), "").expect("write tag");
        assert_eq!(guest_target_dir(&out), root.join("golem-guest"));
        fs::remove_dir_all(&root).expect("clean up");
    }
}
