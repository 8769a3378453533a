//! Prints the comparison table in the README: the render kernel natively, with rayon, and in
//! the sandbox under each engine setting; the fixed cost of one subtask; tiny-task throughput
//! and one-task round trip over QUIC on loopback (`Golem::local()`), next to the same calls
//! made in-process without a network; the cost of a large shared context per subtask, with
//! context snapshots and without; and the time to a first result, cold and warm.
//!
//! Run: `cargo bench -p golem-benches --bench compare`
//!
//! Each figure is the median of several runs after a warm-up.

use std::time::{Duration, Instant};

use golem::Golem;
use golem_benches::{
    SandboxRun, engine_variants, memory, render_native, render_rayon, scene, tiles,
};
use golem_examples::mandelbrot::render;
use golem_fixture::{dot, double};
use golem_runtime::sandbox::{ContextSnapshots, Limits, SandboxConfig};

/// `n` with commas between thousands: 272480 as "272,480".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (at, digit) in digits.chars().enumerate() {
        if at > 0 && (digits.len() - at).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

fn median(runs: usize, mut f: impl FnMut()) -> Duration {
    f();
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing and expects speed.
    let quick = !std::env::args().any(|arg| arg == "--bench");
    let runs = if quick { 1 } else { 7 };

    let scene = scene();
    let tiles = tiles(&scene);
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    println!("{cores} cores\n");
    println!(
        "| render ({}×{} Mandelbrot, {} iterations, {} tiles) | time | vs native |",
        scene.width,
        scene.height,
        thousands(u64::from(scene.max_iterations)),
        tiles.len()
    );
    println!("|---|---:|---:|");
    let native = median(runs, || {
        std::hint::black_box(render_native(&scene, &tiles));
    });
    let row = |name: &str, time: Duration| {
        println!(
            "| {name} | {:.1} ms | {:.2}× |",
            time.as_secs_f64() * 1e3,
            time.as_secs_f64() / native.as_secs_f64()
        );
    };
    row("native, 1 thread", native);
    for (name, config) in engine_variants() {
        let run = SandboxRun::new(config, render, &scene, &tiles);
        let sandboxed: Vec<Vec<u8>> = run.decoded();
        assert!(
            sandboxed == render_native(&scene, &tiles),
            "sandbox output differs"
        );
        row(
            &format!("sandbox, 1 thread, {name}"),
            median(runs, || {
                std::hint::black_box(run.run_all());
            }),
        );
    }
    row(
        &format!("rayon, {cores} threads"),
        median(runs, || {
            std::hint::black_box(render_rayon(&scene, &tiles));
        }),
    );
    let golem = Golem::local_blocking().expect("local providers");
    row(
        &format!("`Golem::local`, {} providers over QUIC", golem.providers()),
        median(runs, || {
            golem
                .par_for(tiles.clone(), render)
                .with(&scene)
                .run()
                .expect("render job");
        }),
    );

    println!("\n| tiny task `double(u64)` | per task | tasks/s |");
    println!("|---|---:|---:|");
    let (name, config) = engine_variants().remove(3);
    let one = SandboxRun::new(config, double, &(), &[21]);
    let calls = if quick { 100 } else { 20_000 };
    let per_call = median(runs, || {
        for _ in 0..calls {
            std::hint::black_box(one.run_one(0));
        }
    }) / calls;
    println!(
        "| sandbox call, 1 thread, {name} | {:.1} µs | {} |",
        per_call.as_secs_f64() * 1e6,
        thousands((1.0 / per_call.as_secs_f64()) as u64)
    );
    let per_call_parallel = median(runs, || {
        std::thread::scope(|scope| {
            for _ in 0..cores {
                scope.spawn(|| {
                    for _ in 0..calls {
                        std::hint::black_box(one.run_one(0));
                    }
                });
            }
        });
    }) / (calls * cores as u32);
    println!(
        "| in-process sandbox calls, {cores} threads, no network | {:.1} µs | {} |",
        per_call_parallel.as_secs_f64() * 1e6,
        thousands((1.0 / per_call_parallel.as_secs_f64()) as u64)
    );
    let items: Vec<u64> = (0..if quick { 1_000 } else { 100_000 }).collect();
    let job = median(runs, || {
        golem
            .par_for(items.clone(), double)
            .run()
            .expect("tiny job");
    });
    let per_task = job / items.len() as u32;
    println!(
        "| `Golem::local` par_for of {}, {} providers over QUIC | {:.1} µs | {} |",
        thousands(items.len() as u64),
        golem.providers(),
        per_task.as_secs_f64() * 1e6,
        thousands((items.len() as f64 / job.as_secs_f64()) as u64)
    );

    println!("\n| one task, round trip | median | p99 |");
    println!("|---|---:|---:|");
    let trips = if quick { 20 } else { 2_000 };
    let mut direct: Vec<Duration> = (0..trips)
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(one.run_one(0));
            started.elapsed()
        })
        .collect();
    let mut quic: Vec<Duration> = (0..trips)
        .map(|_| {
            let started = Instant::now();
            golem.par_for([21u64], double).run().expect("one task");
            started.elapsed()
        })
        .collect();
    for (name, times) in [
        ("in-process sandbox call, no network", &mut direct),
        (
            "`Golem::local` par_for of 1 item, QUIC on loopback",
            &mut quic,
        ),
    ] {
        times.sort();
        println!(
            "| {name} | {:.0} µs | {:.0} µs |",
            times[times.len() / 2].as_secs_f64() * 1e6,
            times[times.len() * 99 / 100].as_secs_f64() * 1e6
        );
    }
    contexts(quick, runs, cores);
    first_result(quick, runs);
}

/// A shared context of 0 to 128 MiB of f32 and subtasks that each read 1,024 of them: what a
/// subtask costs when it decodes the context first (as before snapshots) and when it starts
/// from a snapshot of the decoded context; the first subtask on a fresh sandbox (for
/// snapshots, making the snapshot: the once-per-job cost); the peak resident memory while
/// every core runs subtasks; and the memory the snapshot's image takes.
fn contexts(quick: bool, runs: usize, cores: usize) {
    println!(
        "\n| shared context, `dot` over 1,024 of its f32 | per subtask | above empty | first \
         subtask | peak resident, {cores} threads | snapshot image |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let sizes: &[usize] = if quick { &[0, 1] } else { &[0, 1, 16, 128] };
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    let mut empty = [Duration::ZERO; 2];
    for &size in sizes {
        let weights: Vec<f32> = (0..size << 18)
            .map(|at| (at % 1_000) as f32 * 1e-3)
            .collect();
        for (mode, snapshots) in [
            ("decoded by each subtask", false),
            ("from a snapshot", true),
        ] {
            // Subtasks that decode 16 MiB or more take tens of milliseconds each.
            let calls = match (quick, snapshots, size) {
                (true, _, _) => 8,
                (false, false, 16..) => 8,
                _ => 256,
            };
            let inputs: Vec<(u32, u32)> = (0..calls)
                .map(|at| ((at * 4_099 % (weights.len().max(1))) as u32, 1_024))
                .collect();
            let mut config = SandboxConfig::with_instances(8);
            config.context_snapshots = if snapshots {
                ContextSnapshots::Always
            } else {
                ContextSnapshots::Off
            };
            let shmem = memory::shmem();
            let run = SandboxRun::new(config, dot, &weights, &inputs)
                .limits(Limits::default().memory_bytes(768 << 20));
            let started = Instant::now();
            let output: f32 = postcard::from_bytes(&run.run_one(0)).expect("decode");
            let first = started.elapsed();
            assert_eq!(
                output,
                dot(&weights, inputs[0]),
                "the sandbox's sum differs"
            );
            let image = memory::shmem().saturating_sub(shmem);
            // The rows must measure the path they name.
            assert_eq!(
                run.sandbox().snapshots_made(),
                u64::from(snapshots),
                "{size} MiB: snapshots {snapshots}"
            );
            let per = median(runs, || {
                for at in 0..calls {
                    std::hint::black_box(run.run_one(at));
                }
            }) / calls as u32;
            memory::reset_peak();
            let resident = memory::status("VmRSS");
            std::thread::scope(|scope| {
                for thread in 0..cores {
                    let run = &run;
                    scope.spawn(move || {
                        for at in (thread..calls).step_by(cores) {
                            std::hint::black_box(run.run_one(at));
                        }
                    });
                }
            });
            let peak = memory::status("VmHWM").saturating_sub(resident);
            if size == 0 {
                empty[usize::from(snapshots)] = per;
            }
            let above = per.saturating_sub(empty[usize::from(snapshots)]);
            println!(
                "| {size} MiB, {mode} | {:.1} µs | {:.1} µs | {:.1} ms | {:.0} MiB | {} |",
                per.as_secs_f64() * 1e6,
                above.as_secs_f64() * 1e6,
                first.as_secs_f64() * 1e3,
                mib(peak),
                if snapshots {
                    format!("{:.0} MiB", mib(image))
                } else {
                    "none".into()
                },
            );
        }
    }
}

/// From building a `Golem` to the output of a one-item job: cold (no module compiled before:
/// an empty compiled-module cache) and warm (the module compiled by an earlier run, on disk).
fn first_result(quick: bool, runs: usize) {
    let dir = std::env::temp_dir().join(format!("golem-bench-compiled-{}", std::process::id()));
    let first = || {
        let started = Instant::now();
        let golem = Golem::builder()
            .compiled_cache(&dir)
            .build_blocking()
            .expect("local providers");
        let output = golem.par_for([21u64], double).run().expect("one task");
        let took = started.elapsed();
        assert_eq!(output, [42]);
        took
    };
    let runs = if quick { 1 } else { runs };
    let cold = median(runs, || {
        let _ = std::fs::remove_dir_all(&dir);
        std::hint::black_box(first());
    });
    let _ = std::fs::remove_dir_all(&dir);
    first();
    let warm = median(runs, || {
        std::hint::black_box(first());
    });
    let _ = std::fs::remove_dir_all(&dir);
    println!("\n| time to first result, `Golem::builder()` to the output of 1 item | time |");
    println!("|---|---:|");
    println!(
        "| cold: module never compiled | {:.1} ms |",
        cold.as_secs_f64() * 1e3
    );
    println!(
        "| warm: module compiled by an earlier run | {:.1} ms |",
        warm.as_secs_f64() * 1e3
    );
}
