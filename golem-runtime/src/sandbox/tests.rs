//! Sandbox tests on hand-written modules. Each hostile module ends in its own typed error, and
//! the same engine then runs a correct task.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::*;

/// A minimal golem module: `echo` copies its input to its output; `body` is spliced in as
/// more functions.
fn module(extra_imports: &str, body: &str) -> Vec<u8> {
    let text = format!(
        r#"(module
            (import "golem" "input_len" (func $input_len (param i32) (result i32)))
            (import "golem" "input_read" (func $input_read (param i32 i32)))
            (import "golem" "output" (func $output (param i32 i32)))
            {extra_imports}
            (memory (export "memory") 1)
            (func (export "golem_abi_version") (result i32) (i32.const {version}))
            (func (export "golem_task_echo")
                (call $input_read (i32.const 1) (i32.const 16))
                (call $output (i32.const 16) (call $input_len (i32.const 1))))
            {body})"#,
        version = golem_abi::ABI_VERSION,
    );
    wat::parse_str(text).expect("valid test module")
}

fn sandbox(config: SandboxConfig) -> Sandbox {
    Sandbox::new(config).expect("engine")
}

fn prepare(sandbox: &Sandbox, bytes: &[u8]) -> Result<Arc<PreparedModule>, ModuleError> {
    sandbox.prepare(BlobId::of(bytes), bytes)
}

fn call(input: &[u8]) -> Call<'_> {
    Call {
        context: Context::empty(),
        input,
        seed: [7; 32],
    }
}

fn run(
    sandbox: &Sandbox,
    bytes: &[u8],
    task: &str,
    limits: &Limits,
) -> Result<Execution, SubtaskError> {
    let module = prepare(sandbox, bytes)?;
    let task = module.task(task)?;
    sandbox.run(&module, &task, call(b"hello"), limits)
}

/// After a hostile call, the same engine still runs a correct one.
fn assert_still_serves(sandbox: &Sandbox) {
    let bytes = module("", "");
    let execution = run(sandbox, &bytes, "echo", &Limits::default()).expect("echo runs");
    assert_eq!(execution.output, b"hello");
}

#[test]
fn echo_returns_its_input_and_reports_fuel() {
    let sandbox = sandbox(SandboxConfig::with_instances(4));
    let execution = run(&sandbox, &module("", ""), "echo", &Limits::default()).expect("runs");
    assert_eq!(execution.output, b"hello");
    assert!(execution.fuel_used.is_some_and(|fuel| fuel > 0));
}

#[test]
fn fuel_used_is_the_same_whatever_the_limit() {
    let sandbox = sandbox(SandboxConfig::with_instances(4));
    let used = |fuel| {
        let limits = Limits::default().fuel(fuel);
        let execution = run(&sandbox, &module("", ""), "echo", &limits).expect("runs");
        execution.fuel_used.expect("metered")
    };
    let small = used(1_000_000);
    // Past what the fuel global holds, too.
    assert_eq!(used(u64::MAX), small);
    assert_eq!(used(i64::MAX as u64 + 1), small);
}

#[test]
fn a_module_may_not_export_the_names_the_sandbox_writes() {
    let sandbox = sandbox(SandboxConfig::with_instances(4));
    for name in ["golem:start", "golem:fuel", "golem:interrupt"] {
        let bytes = module("", &format!(r#"(func (export "{name}"))"#));
        let error = prepare(&sandbox, &bytes).unwrap_err();
        assert!(
            matches!(&error, ModuleError::Invalid(message) if message.contains(name)),
            "{error:?}"
        );
    }
}

#[test]
fn infinite_loop_runs_out_of_fuel() {
    let sandbox = sandbox(SandboxConfig::with_instances(4));
    let bytes = module("", r#"(func (export "golem_task_spin") (loop $l (br $l)))"#);
    let limits = Limits::default().fuel(1_000_000);
    let error = run(&sandbox, &bytes, "spin", &limits).unwrap_err();
    assert_eq!(error, SubtaskError::OutOfFuel { limit: 1_000_000 });
    assert_still_serves(&sandbox);
}

#[test]
fn infinite_loop_hits_the_deadline_without_fuel() {
    let mut config = SandboxConfig::with_instances(4);
    config.fuel_metering = false;
    let sandbox = sandbox(config);
    let bytes = module("", r#"(func (export "golem_task_spin") (loop $l (br $l)))"#);
    let limits = Limits::default().deadline(Duration::from_millis(50));
    let started = Instant::now();
    let error = run(&sandbox, &bytes, "spin", &limits).unwrap_err();
    assert_eq!(
        error,
        SubtaskError::Deadline {
            limit: Duration::from_millis(50)
        }
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the deadline stopped the loop"
    );
    assert_still_serves(&sandbox);
}

#[test]
fn a_running_call_stops_within_a_tick_of_its_stop() {
    let mut config = SandboxConfig::with_instances(4);
    config.fuel_metering = false;
    let sandbox = Arc::new(sandbox(config));
    let bytes = module("", r#"(func (export "golem_task_spin") (loop $l (br $l)))"#);
    let module = prepare(&sandbox, &bytes).expect("prepared");
    let stop = Arc::new(AtomicBool::new(false));
    let running = {
        let (sandbox, stop) = (Arc::clone(&sandbox), Arc::clone(&stop));
        std::thread::spawn(move || {
            let task = module.task("spin").expect("a task");
            let limits = Limits::default().deadline(Duration::from_secs(60));
            let started = Instant::now();
            let result = sandbox.run_until(&module, &task, call(b""), &limits, &stop);
            (result, started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let (result, took) = running.join().expect("no panic");
    assert_eq!(result, Err(SubtaskError::Internal(STOPPED.into())));
    assert!(took < Duration::from_secs(10), "stopped after {took:?}");
    assert_still_serves(&sandbox);
}

#[test]
fn a_call_that_may_be_stopped_still_ends_at_its_deadline() {
    let mut config = SandboxConfig::with_instances(4);
    config.fuel_metering = false;
    let sandbox = sandbox(config);
    let bytes = module("", r#"(func (export "golem_task_spin") (loop $l (br $l)))"#);
    let module = prepare(&sandbox, &bytes).expect("prepared");
    let task = module.task("spin").expect("a task");
    let limits = Limits::default().deadline(Duration::from_millis(50));
    let never = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let result = sandbox.run_until(&module, &task, call(b""), &limits, &never);
    assert_eq!(
        result,
        Err(SubtaskError::Deadline {
            limit: Duration::from_millis(50)
        })
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn memory_bomb_reaches_the_memory_limit() {
    let sandbox = sandbox(SandboxConfig::with_instances(4));
    // Grows by a page until refused, then traps as a Rust allocator would.
    let bytes = module(
        "",
        r#"(func (export "golem_task_bomb")
            (loop $grow
                (br_if $grow (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
            unreachable)"#,
    );
    let limits = Limits::default().memory_bytes(4 << 20);
    let error = run(&sandbox, &bytes, "bomb", &limits).unwrap_err();
    assert_eq!(error, SubtaskError::MemoryLimit { limit: 4 << 20 });
    assert!(error.to_string().contains("memory limit reached"));
    assert_still_serves(&sandbox);
}

#[test]
fn a_refused_growth_does_not_hide_a_later_fuel_trap() {
    let sandbox = sandbox(SandboxConfig::with_instances(4));
    // Asks for more memory than allowed, copes with the refusal, then spins.
    let bytes = module(
        "",
        r#"(func (export "golem_task_cope")
            (drop (memory.grow (i32.const 1000)))
            (loop $l (br $l)))"#,
    );
    let limits = Limits::default().memory_bytes(1 << 20).fuel(1_000_000);
    let error = run(&sandbox, &bytes, "cope", &limits).unwrap_err();
    assert_eq!(error, SubtaskError::OutOfFuel { limit: 1_000_000 });
}

#[test]
fn unbounded_recursion_overflows_the_stack() {
    let sandbox = sandbox(SandboxConfig::with_instances(4));
    let bytes = module(
        "",
        r#"(func $down (export "golem_task_recurse") (call $down))"#,
    );
    let error = run(&sandbox, &bytes, "recurse", &Limits::default()).unwrap_err();
    assert_eq!(error, SubtaskError::StackOverflow);
    assert_still_serves(&sandbox);
}

#[test]
fn forbidden_import_is_refused_before_running() {
    let sandbox = sandbox(SandboxConfig::with_instances(4));
    let bytes = module(
        r#"(import "wasi_snapshot_preview1" "sock_open" (func (param i32) (result i32)))"#,
        "",
    );
    let error = prepare(&sandbox, &bytes).unwrap_err();
    assert_eq!(
        error,
        ModuleError::ForbiddenImport {
            module: "wasi_snapshot_preview1".into(),
            name: "sock_open".into()
        }
    );
    let bytes = module(r#"(import "env" "system" (func (param i32)))"#, "");
    assert!(matches!(
        prepare(&sandbox, &bytes),
        Err(ModuleError::ForbiddenImport { .. })
    ));
    assert_still_serves(&sandbox);
}

#[test]
fn mistyped_import_is_refused() {
    let sandbox = sandbox(SandboxConfig::with_instances(4));
    let bytes = module(
        r#"(import "wasi_snapshot_preview1" "sched_yield" (func (param i64)))"#,
        "",
    );
    assert!(matches!(
        prepare(&sandbox, &bytes),
        Err(ModuleError::ImportType { .. })
    ));
}

#[test]
fn panic_message_comes_back() {
    let sandbox = sandbox(SandboxConfig::with_instances(4));
    let bytes = module(
        r#"(import "golem" "panic" (func $panic (param i32 i32)))"#,
        r#"(data (i32.const 100) "boom at lib.rs:1:1")
           (func (export "golem_task_boom") (call $panic (i32.const 100) (i32.const 18)) unreachable)"#,
    );
    let error = run(&sandbox, &bytes, "boom", &Limits::default()).unwrap_err();
    assert_eq!(
        error,
        SubtaskError::Panic {
            message: "boom at lib.rs:1:1".into()
        }
    );
    assert_still_serves(&sandbox);
}

#[test]
fn oversized_output_is_refused() {
    let sandbox = sandbox(SandboxConfig::with_instances(4));
    let bytes = module(
        "",
        r#"(func (export "golem_task_flood") (call $output (i32.const 0) (i32.const 65536)))"#,
    );
    let limits = Limits::default().output_bytes(1024);
    let error = run(&sandbox, &bytes, "flood", &limits).unwrap_err();
    assert_eq!(
        error,
        SubtaskError::OutputTooLarge {
            size: 65536,
            limit: 1024
        }
    );
    assert_still_serves(&sandbox);
}

#[test]
fn returning_without_output_breaks_the_abi() {
    let sandbox = sandbox(SandboxConfig::with_instances(4));
    let bytes = module("", r#"(func (export "golem_task_silent"))"#);
    let error = run(&sandbox, &bytes, "silent", &Limits::default()).unwrap_err();
    assert!(matches!(error, SubtaskError::Abi(_)), "{error:?}");
}

#[test]
fn proc_exit_is_a_typed_error() {
    let sandbox = sandbox(SandboxConfig::with_instances(4));
    let bytes = module(
        r#"(import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))"#,
        r#"(func (export "golem_task_quit") (call $exit (i32.const 3)))"#,
    );
    let error = run(&sandbox, &bytes, "quit", &Limits::default()).unwrap_err();
    assert_eq!(error, SubtaskError::Exit { code: 3 });
}

#[test]
fn modules_are_checked_for_abi_version_and_shape() {
    let sandbox = sandbox(SandboxConfig::with_instances(4));
    let wrong_version = wat::parse_str(
        r#"(module (memory (export "memory") 1)
            (func (export "golem_abi_version") (result i32) (i32.const 999)))"#,
    )
    .expect("valid");
    assert_eq!(
        prepare(&sandbox, &wrong_version).unwrap_err(),
        ModuleError::AbiVersion {
            found: 999,
            expected: golem_abi::ABI_VERSION
        }
    );
    let not_golem = wat::parse_str(r#"(module (memory (export "memory") 1))"#).expect("valid");
    assert_eq!(
        prepare(&sandbox, &not_golem).unwrap_err(),
        ModuleError::NotAGolemModule
    );
    assert_eq!(prepare(&sandbox, &[]).unwrap_err(), ModuleError::NotBuilt);
    assert!(matches!(
        prepare(&sandbox, b"not wasm"),
        Err(ModuleError::Invalid(_))
    ));
    let echo = module("", "");
    assert!(matches!(
        sandbox.prepare(BlobId::of(b"other"), &echo),
        Err(ModuleError::HashMismatch { .. })
    ));
    let prepared = prepare(&sandbox, &echo).expect("echo");
    assert_eq!(
        prepared.task("nope").unwrap_err(),
        ModuleError::MissingTask {
            task: "nope".into()
        }
    );
}

#[test]
fn compiled_modules_are_cached_by_hash() {
    let sandbox = sandbox(SandboxConfig::with_instances(4));
    let bytes = module("", "");
    let first = prepare(&sandbox, &bytes).expect("compiles");
    let second = prepare(&sandbox, &bytes).expect("cached");
    assert!(Arc::ptr_eq(&first, &second));
}

#[test]
fn compiled_modules_survive_a_restart_in_the_cache_directory_and_corruption_is_recompiled() {
    let dir = std::env::temp_dir().join(format!("golem-compiled-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = SandboxConfig::with_instances(4);
    config.compiled_cache_dir = Some(dir.clone());
    let bytes = module("", "");
    let cached = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&dir)
            .map(|entries| entries.map(|entry| entry.expect("entry").path()).collect())
            .unwrap_or_default()
    };
    assert_still_serves(&sandbox(config.clone()));
    let files = cached();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0]
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(name.starts_with(&BlobId::of(&bytes).to_hex()), "{name}");
    let written = std::fs::metadata(&files[0])
        .expect("file")
        .modified()
        .expect("mtime");

    // A new engine (a restarted provider) loads the file instead of compiling.
    std::thread::sleep(Duration::from_millis(20));
    assert_still_serves(&sandbox(config.clone()));
    let reused = std::fs::metadata(&files[0])
        .expect("file")
        .modified()
        .expect("mtime");
    assert_eq!(
        written, reused,
        "the cached module was rewritten instead of loaded"
    );

    // A corrupted file is never loaded: the module is compiled again and the file replaced.
    let mut corrupt = std::fs::read(&files[0]).expect("read");
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    std::fs::write(&files[0], &corrupt).expect("corrupt");
    assert_still_serves(&sandbox(config));
    assert_ne!(std::fs::read(&files[0]).expect("read"), corrupt);
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn randomness_and_clock_are_deterministic() {
    let sandbox = sandbox(SandboxConfig::with_instances(4));
    // Output 16 random bytes followed by two clock readings.
    let bytes = module(
        r#"(import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
           (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))"#,
        r#"(func (export "golem_task_entropy")
            (drop (call $random (i32.const 200) (i32.const 16)))
            (drop (call $clock (i32.const 0) (i64.const 1) (i32.const 216)))
            (drop (call $clock (i32.const 1) (i64.const 1) (i32.const 224)))
            (call $output (i32.const 200) (i32.const 32)))"#,
    );
    let module = prepare(&sandbox, &bytes).expect("compiles");
    let task = module.task("entropy").expect("task");
    let with_seed = |seed| {
        let call = Call {
            context: Context::empty(),
            input: &[],
            seed,
        };
        sandbox
            .run(&module, &task, call, &Limits::default())
            .expect("runs")
            .output
    };
    let first = with_seed([1; 32]);
    assert_eq!(first, with_seed([1; 32]), "same seed, same bytes");
    assert_ne!(
        first[..16],
        with_seed([2; 32])[..16],
        "another seed, other randomness"
    );
    let clock = |at: usize| u64::from_le_bytes(first[at..at + 8].try_into().expect("8 bytes"));
    assert!(clock(24) > clock(16), "the virtual clock advances");
}

#[test]
fn stdout_is_captured() {
    let sandbox = sandbox(SandboxConfig::with_instances(4));
    let bytes = module(
        r#"(import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))"#,
        r#"(data (i32.const 300) "hi\n")
           (func (export "golem_task_say")
            (i32.store (i32.const 400) (i32.const 300))
            (i32.store (i32.const 404) (i32.const 3))
            (drop (call $write (i32.const 1) (i32.const 400) (i32.const 1) (i32.const 408)))
            (call $output (i32.const 0) (i32.const 0)))"#,
    );
    let execution = run(&sandbox, &bytes, "say", &Limits::default()).expect("runs");
    assert_eq!(execution.stdout, b"hi\n");
    assert!(execution.stderr.is_empty());
}

#[test]
fn memory_limit_above_the_pool_is_refused() {
    let sandbox = sandbox(SandboxConfig::with_instances(2));
    let limits = Limits::default().memory_bytes(usize::MAX);
    let error = run(&sandbox, &module("", ""), "echo", &limits).unwrap_err();
    assert!(matches!(error, SubtaskError::Internal(_)), "{error:?}");
}

const RANDOM_IMPORT: &str =
    r#"(import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))"#;
const WRITE_IMPORT: &str = r#"(import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))"#;

/// Fuel `task` of `bytes` used.
fn fuel_of(sandbox: &Sandbox, bytes: &[u8], task: &str) -> u64 {
    let execution = run(sandbox, bytes, task, &Limits::default()).expect("runs");
    execution.fuel_used.expect("fuel is metered")
}

#[test]
fn host_calls_cost_fuel_by_the_bytes_they_touch() {
    let sandbox = sandbox(SandboxConfig::with_instances(4));
    // Each pair of tasks runs the same instructions; only the sizes the host works on differ.
    let bytes = module(
        &format!("{RANDOM_IMPORT}\n{WRITE_IMPORT}"),
        r#"(func $random_task (param $len i32)
            (drop (call $random (i32.const 1024) (local.get $len)))
            (call $output (i32.const 0) (i32.const 0)))
           (func (export "golem_task_random_small") (call $random_task (i32.const 1000)))
           (func (export "golem_task_random_large") (call $random_task (i32.const 60000)))
           ;; An iovec array of $entries entries at 64, every one naming the same 60,000 bytes.
           (func $write_task (param $entries i32) (local $i i32)
            (loop $fill
              (i32.store (i32.add (i32.const 64) (i32.mul (local.get $i) (i32.const 8)))
                         (i32.const 1024))
              (i32.store (i32.add (i32.const 68) (i32.mul (local.get $i) (i32.const 8)))
                         (i32.const 60000))
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br_if $fill (i32.lt_u (local.get $i) (i32.const 100))))
            (drop (call $write (i32.const 1) (i32.const 64) (local.get $entries) (i32.const 0)))
            (call $output (i32.const 0) (i32.const 0)))
           (func (export "golem_task_write_one") (call $write_task (i32.const 1)))
           (func (export "golem_task_write_many") (call $write_task (i32.const 100)))"#,
    );

    let random =
        fuel_of(&sandbox, &bytes, "random_large") - fuel_of(&sandbox, &bytes, "random_small");
    assert_eq!(
        random,
        59_000 * RANDOM_FUEL_PER_BYTE,
        "randomness is paid per byte"
    );

    let write = fuel_of(&sandbox, &bytes, "write_many") - fuel_of(&sandbox, &bytes, "write_one");
    let touched = |entries: u64| (entries * (8 + 60_000)).div_ceil(COPY_BYTES_PER_FUEL);
    assert_eq!(
        write,
        touched(100) - touched(1),
        "every byte an iovec names is paid"
    );

    // What the host keeps is still capped by the log limit; the rest is counted.
    let execution = run(&sandbox, &bytes, "write_many", &Limits::default()).expect("runs");
    assert_eq!(execution.stdout.len(), Limits::default().log_bytes);
    assert_eq!(
        execution.log_bytes_dropped,
        100 * 60_000 - Limits::default().log_bytes as u64
    );
}

#[test]
fn a_loop_of_large_host_calls_runs_out_of_fuel() {
    let sandbox = sandbox(SandboxConfig::with_instances(4));
    // Without charging by bytes, each call of this loop costs a few units of fuel for 60 KB of
    // work, and the call runs until its deadline.
    let bytes = module(
        RANDOM_IMPORT,
        r#"(func (export "golem_task_spin")
            (loop $l (drop (call $random (i32.const 1024) (i32.const 60000))) (br $l)))"#,
    );
    // And an fd_write of 7,999 iovecs whose last one lies outside memory: the host reads the
    // entries before it finds the bad one, so they are paid for although the call fails.
    let faulting = module(
        WRITE_IMPORT,
        r#"(func (export "golem_task_spin")
            (i32.store (i32.const 63992) (i32.const -16))
            (i32.store (i32.const 63996) (i32.const 1))
            (loop $l (drop (call $write (i32.const 1) (i32.const 8) (i32.const 7999) (i32.const 0)))
                     (br $l)))"#,
    );
    let limits = Limits::default().fuel(10_000_000);
    for bytes in [bytes, faulting] {
        let started = Instant::now();
        let error = run(&sandbox, &bytes, "spin", &limits).unwrap_err();
        assert_eq!(error, SubtaskError::OutOfFuel { limit: 10_000_000 });
        let elapsed = started.elapsed();
        assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    }
    assert_still_serves(&sandbox);
}

/// Prepares `bytes` on another thread; fails the test if it takes longer than `within`.
fn prepare_within(
    sandbox: Arc<Sandbox>,
    bytes: Vec<u8>,
    within: Duration,
) -> Result<Arc<PreparedModule>, ModuleError> {
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(prepare(&sandbox, &bytes));
    });
    result
        .recv_timeout(within)
        .expect("preparing the module ended within its limits")
}

#[test]
fn a_module_that_spins_at_start_up_is_refused() {
    let startup_limit = ModuleError::StartupLimit {
        fuel: PROBE_FUEL,
        deadline: PROBE_DEADLINE,
    };
    // A start function that loops, and one that asks the host for 60 KB of randomness per
    // iteration (a few units of fuel each before host calls were charged by bytes).
    let spin = module("", r#"(func $spin (loop $l (br $l))) (start $spin)"#);
    let random = module(
        RANDOM_IMPORT,
        r#"(func $spin (loop $l (drop (call $random (i32.const 1024) (i32.const 60000))) (br $l)))
           (start $spin)"#,
    );
    let metered = Arc::new(sandbox(SandboxConfig::with_instances(4)));
    for bytes in [&spin, &random] {
        let started = Instant::now();
        let error = prepare_within(Arc::clone(&metered), bytes.clone(), Duration::from_secs(30));
        assert_eq!(error.unwrap_err(), startup_limit);
        // Stopped by fuel, long before the deadline (which would also give StartupLimit).
        let elapsed = started.elapsed();
        assert!(elapsed < PROBE_DEADLINE, "{elapsed:?}");
    }
    assert_still_serves(&metered);

    // Without fuel, the probe's deadline ends it.
    let mut config = SandboxConfig::with_instances(4);
    config.fuel_metering = false;
    let unmetered = Arc::new(sandbox(config));
    let started = Instant::now();
    let error = prepare_within(Arc::clone(&unmetered), spin, Duration::from_secs(30));
    assert_eq!(error.unwrap_err(), startup_limit);
    let elapsed = started.elapsed();
    let tick = unmetered.config().deadline_tick;
    assert!(elapsed >= PROBE_DEADLINE - tick, "{elapsed:?}");
    assert_still_serves(&unmetered);
}

/// A module whose one function has `n` additions: compiling it takes time in proportion.
fn long_module(n: usize) -> Vec<u8> {
    let adds = "(local.set 0 (i32.add (local.get 0) (i32.const 1)))".repeat(n);
    module(
        "",
        &format!(r#"(func (export "golem_task_long") (local i32) {adds})"#),
    )
}

#[test]
fn a_module_that_compiles_too_long_is_refused_and_not_compiled_again() {
    let mut config = SandboxConfig::with_instances(2);
    config.compile_timeout = Duration::from_millis(1);
    let sandbox = sandbox(config);
    let bytes = long_module(100_000);
    let refused = prepare(&sandbox, &bytes).unwrap_err();
    assert_eq!(
        refused,
        ModuleError::CompileTimeout {
            limit: Duration::from_millis(1)
        }
    );
    let compiles = sandbox.compiles();
    let started = Instant::now();
    assert_eq!(prepare(&sandbox, &bytes).unwrap_err(), refused);
    assert_eq!(
        sandbox.compiles(),
        compiles,
        "refused again without compiling"
    );
    assert!(started.elapsed() < Duration::from_millis(100));
}

#[test]
fn a_forbidden_import_is_refused_before_compiling_and_a_refused_module_is_not_compiled_again() {
    let sandbox = sandbox(SandboxConfig::with_instances(2));
    let importing = module(r#"(import "env" "system" (func (param i32)))"#, "");
    assert!(matches!(
        prepare(&sandbox, &importing),
        Err(ModuleError::ForbiddenImport { .. })
    ));
    assert_eq!(sandbox.compiles(), 0, "refused before it was compiled");

    let wrong_version = wat::parse_str(
        r#"(module (memory (export "memory") 1)
            (func (export "golem_abi_version") (result i32) (i32.const 999)))"#,
    )
    .expect("valid");
    let refused = prepare(&sandbox, &wrong_version).unwrap_err();
    assert!(matches!(refused, ModuleError::AbiVersion { .. }));
    assert_eq!(sandbox.compiles(), 1);
    for _ in 0..10 {
        assert_eq!(prepare(&sandbox, &wrong_version).unwrap_err(), refused);
    }
    assert_eq!(sandbox.compiles(), 1, "compiled once for eleven batches");
    // Bytes that are not the module claimed are not remembered against its hash.
    let good = module("", "");
    let wrong = sandbox
        .prepare(BlobId::of(&good), &wrong_version)
        .unwrap_err();
    assert!(matches!(wrong, ModuleError::HashMismatch { .. }));
    assert!(prepare(&sandbox, &good).is_ok());
}

#[test]
fn threads_that_need_one_module_at_once_compile_it_once() {
    let sandbox = Arc::new(sandbox(SandboxConfig::with_instances(4)));
    let bytes = Arc::new(long_module(20_000));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (sandbox, bytes) = (Arc::clone(&sandbox), Arc::clone(&bytes));
            std::thread::spawn(move || prepare(&sandbox, &bytes).map(|module| module.hash()))
        })
        .collect();
    for thread in threads {
        assert!(thread.join().unwrap().is_ok());
    }
    assert_eq!(sandbox.compiles(), 1, "the others waited for the first");
}

#[test]
fn only_the_newest_prepared_modules_are_kept_in_memory() {
    let mut config = SandboxConfig::with_instances(2);
    config.max_prepared_modules = 2;
    let sandbox = sandbox(config);
    let modules: Vec<Vec<u8>> = (0..3)
        .map(|n| module("", &format!("(func (export \"golem_task_n{n}\"))")))
        .collect();
    for bytes in &modules {
        assert!(prepare(&sandbox, bytes).is_ok());
    }
    assert_eq!(sandbox.compiles(), 3);
    assert!(prepare(&sandbox, &modules[2]).is_ok());
    assert_eq!(sandbox.compiles(), 3, "the newest is kept");
    assert!(prepare(&sandbox, &modules[0]).is_ok());
    assert_eq!(
        sandbox.compiles(),
        4,
        "the oldest was dropped and is compiled again"
    );
}

#[test]
fn a_module_whose_data_is_spread_thin_is_refused_before_it_compiles() {
    let sandbox = sandbox(SandboxConfig::with_instances(4));
    // Two bytes 64 MiB apart: compiled, a 64 MiB image of the memory between them.
    let sparse = wat::parse_str(format!(
        r#"(module
            (memory (export "memory") 1100)
            (func (export "golem_abi_version") (result i32) (i32.const {version}))
            (data (i32.const 0) "a")
            (data (i32.const 67108864) "b"))"#,
        version = golem_abi::ABI_VERSION,
    ))
    .expect("valid test module");
    let compiles = sandbox.compiles();
    assert_eq!(
        prepare(&sandbox, &sparse).unwrap_err(),
        ModuleError::SparseData {
            span: 67_108_865,
            bytes: 2,
            limit: 16 << 20,
        }
    );
    assert_eq!(sandbox.compiles(), compiles, "refused before compiling");
    assert_still_serves(&sandbox);
}

#[test]
fn a_context_function_may_not_hand_back_an_output() {
    let mut config = SandboxConfig::with_instances(4);
    config.context_snapshots = ContextSnapshots::Always;
    let sandbox = sandbox(config);
    let bytes = module(
        "",
        r#"(func (export "golem_context_echo")
            (call $output (i32.const 16) (i32.const 1)))"#,
    );
    let module = prepare(&sandbox, &bytes).expect("compiles");
    let task = module.task("echo").expect("task");
    let call = Call {
        context: Context::new(Arc::from(&b"context"[..])),
        input: b"hello",
        seed: [7; 32],
    };
    let error = sandbox
        .run(&module, &task, call, &Limits::default())
        .unwrap_err();
    assert!(
        matches!(&error, SubtaskError::Abi(message) if message.contains("context function")),
        "{error:?}"
    );
    assert_eq!(sandbox.snapshots_made(), 0);
    assert_still_serves(&sandbox);
}
