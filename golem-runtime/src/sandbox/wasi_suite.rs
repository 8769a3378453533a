//! The WASI authors' test suite, run against the sandbox's WASI layer.
//!
//! `../shared/wasi-testsuite` holds the wasi-testsuite binaries for `wasm32-wasip1` (its
//! ORIGIN.md says which). Each test is a WASI command. This runner prepares it as the sandbox
//! prepares a task's module (import allow-list, metering), calls its `_start` with golem's
//! imports under a task's default limits, with the arguments and environment its JSON names and
//! no others, and compares its exit code and standard output with what the JSON expects.
//!
//! `wasi_suite.expected` lists every test: `pass`, or `fail` with what is seen and why that is
//! expected. The run fails when any test does otherwise, so the list stays true both ways.

use std::path::{Path, PathBuf};

use super::*;

/// Where the suite's tests are: `../shared` beside the repository.
const SUITE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/wasi-testsuite/tests"
);

/// Every test of the suite, with what it is expected to do here.
const EXPECTED: &str = include_str!("wasi_suite.expected");

/// One test of the suite and what its JSON asks.
#[derive(Debug)]
struct Test {
    /// `<suite>/<test>`, as in `wasi_suite.expected`.
    name: String,
    wasm: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    exit_code: i32,
    /// What stdout must begin with, when the test says (the suite's runner reads that many
    /// bytes and compares them).
    stdout: Option<String>,
}

/// The tests under [`SUITE`], sorted by name.
fn tests() -> Vec<Test> {
    let root = Path::new(SUITE);
    let suites = std::fs::read_dir(root).unwrap_or_else(|error| {
        panic!(
            "the WASI test suite is not at {}: {error}. It comes with ../shared beside the \
             repository (see ../shared/wasi-testsuite/ORIGIN.md)",
            root.display()
        )
    });
    let mut tests = Vec::new();
    for suite in suites {
        let suite = suite.expect("suite directory").path();
        let dir = suite.join("wasm32-wasip1");
        let suite_name = suite
            .file_name()
            .expect("named")
            .to_string_lossy()
            .into_owned();
        for entry in std::fs::read_dir(&dir).expect("wasm32-wasip1 tests") {
            let wasm = entry.expect("test file").path();
            if wasm.extension().is_none_or(|extension| extension != "wasm") {
                continue;
            }
            let stem = wasm
                .file_stem()
                .expect("named")
                .to_string_lossy()
                .into_owned();
            tests.push(test(format!("{suite_name}/{stem}"), wasm));
        }
    }
    tests.sort_by(|a, b| a.name.cmp(&b.name));
    tests
}

/// A test and its specification: the JSON beside it, or the defaults of the suite's
/// specification (no arguments or environment, exit code 0, nothing on stdout).
fn test(name: String, wasm: PathBuf) -> Test {
    let spec: serde_json::Value = match std::fs::read(wasm.with_extension("json")) {
        Ok(json) => serde_json::from_slice(&json).expect("a test's JSON"),
        Err(_) => serde_json::Value::Null,
    };
    let strings = |value: &serde_json::Value| value.as_str().expect("a string").to_owned();
    Test {
        args: spec["args"]
            .as_array()
            .map(|args| args.iter().map(strings).collect())
            .unwrap_or_default(),
        env: spec["env"]
            .as_object()
            .map(|env| env.iter().map(|(k, v)| (k.clone(), strings(v))).collect())
            .unwrap_or_default(),
        exit_code: spec["exit_code"].as_i64().map_or(0, |code| code as i32),
        stdout: spec["stdout"].as_str().map(str::to_owned),
        name,
        wasm,
    }
}

/// How a command ended: its exit code, or the error that ended it otherwise.
type Ended = Result<i32, SubtaskError>;

/// What a command wrote.
struct Output {
    stdout: Vec<u8>,
    stderr: String,
}

/// Runs `test`'s `_start` in `sandbox`: how it ended and what it wrote.
fn run(sandbox: &Sandbox, test: &Test) -> Result<(Ended, Output), ModuleError> {
    let bytes = std::fs::read(&test.wasm).expect("test module");
    let (module, start) = module::prepare_command(sandbox, &bytes)?;
    let limits = Limits::default().deadline(std::time::Duration::from_secs(20));
    let mut state = GuestState::new(
        Call {
            context: Context::empty(),
            input: &[],
            seed: [7; 32],
        },
        &limits,
    );
    let program = test.wasm.file_name().expect("named").to_string_lossy();
    state.args = std::iter::once(program.as_ref())
        .chain(test.args.iter().map(String::as_str))
        .map(|arg| arg.as_bytes().to_vec())
        .collect();
    state.env = test
        .env
        .iter()
        .map(|(key, value)| format!("{key}={value}").into_bytes())
        .collect();
    let (mut running, instance) = sandbox.start(&module, state, &limits, None, 0, false);
    let outcome =
        instance.and_then(|instance| PreparedModule::call(&instance, &mut running.store, &start));
    let state = running.store.data();
    let output = Output {
        stdout: state.stdout().to_vec(),
        stderr: state.stderr_lossy(),
    };
    let ended = match outcome {
        Ok(()) => Ok(0),
        Err(error) => match classify(&error, running, &limits) {
            SubtaskError::Exit { code } => Ok(code),
            other => Err(other),
        },
    };
    Ok((ended, output))
}

/// `pass`, or `fail: ` and what differs from the test's specification, with the first line the
/// test wrote to stderr (where a failed assertion says which).
fn verdict(test: &Test, run: &Result<(Ended, Output), ModuleError>) -> String {
    let (ended, Output { stdout, stderr }) = match run {
        Ok(run) => run,
        Err(error) => return format!("fail: refused ({error})"),
    };
    let mut seen = Vec::new();
    match ended {
        Ok(code) if *code == test.exit_code => {}
        Ok(code) => seen.push(format!("exit {code}")),
        Err(SubtaskError::Trap { message, .. }) => seen.push(format!("trap ({message})")),
        Err(error) => seen.push(format!("{error}")),
    }
    if let Some(expected) = &test.stdout
        && !stdout.starts_with(expected.as_bytes())
    {
        seen.push(format!("stdout {:?}", String::from_utf8_lossy(stdout)));
    }
    if let Some(line) = stderr.lines().next().filter(|_| !seen.is_empty()) {
        seen.push(format!("stderr {line:?}"));
    }
    if seen.is_empty() {
        "pass".into()
    } else {
        format!("fail: {}", seen.join(", "))
    }
}

/// `wasi_suite.expected` read: each test's expected verdict, and why for a failure.
fn expected() -> Vec<(String, String, Option<String>)> {
    EXPECTED
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (name, rest) = line.split_once(' ').expect("`<test> <verdict>`");
            let (verdict, why) = match rest.split_once(" -- ") {
                Some((verdict, why)) => (verdict, Some(why.trim().to_owned())),
                None => (rest, None),
            };
            (name.to_owned(), verdict.trim().to_owned(), why)
        })
        .collect()
}

#[test]
fn the_wasi_authors_tests_do_what_the_expectations_file_says() {
    let sandbox = Sandbox::new(SandboxConfig::with_instances(2)).expect("engine");
    let tests = tests();
    let expected = expected();
    let listed: Vec<&str> = expected.iter().map(|(name, ..)| name.as_str()).collect();
    let found: Vec<&str> = tests.iter().map(|test| test.name.as_str()).collect();
    assert_eq!(
        listed, found,
        "wasi_suite.expected must list every test of the suite, in order"
    );
    let mut wrong = Vec::new();
    let mut passed = 0;
    for (test, (_, expected, why)) in tests.iter().zip(&expected) {
        let seen = verdict(test, &run(&sandbox, test));
        println!("{:<50} {seen}", test.name);
        passed += usize::from(seen == "pass");
        if seen.starts_with("fail") && why.is_none() {
            wrong.push(format!(
                "{}: an expected failure needs its reason",
                test.name
            ));
        }
        if &seen != expected {
            wrong.push(format!(
                "{}: expected `{expected}`, saw `{seen}`",
                test.name
            ));
        }
    }
    println!("{passed} of {} WASI tests pass", tests.len());
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
