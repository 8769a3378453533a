//! Prints the comparison table in the README: the render kernel natively, with rayon, and in
//! the sandbox under each engine setting; the fixed cost of one subtask; tiny-task throughput
//! and one-task round trip over QUIC on loopback (`Golem::local()`), next to the same calls
//! made in-process without a network.
//!
//! Run: `cargo bench -p golem-benches --bench compare`
//!
//! Each figure is the median of several runs after a warm-up.

use std::time::{Duration, Instant};

use golem::Golem;
use golem_benches::{SandboxRun, engine_variants, render_native, render_rayon, scene, tiles};
use golem_examples::mandelbrot::render;
use golem_fixture::double;

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
    println!(
        "render kernel: {}x{} Mandelbrot, {} iterations max, {} tiles; {cores} cores\n",
        scene.width,
        scene.height,
        scene.max_iterations,
        tiles.len()
    );
    println!("| render | time | vs native |");
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
        &format!("Golem::local, {} providers", golem.providers()),
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
        "| sandbox call, 1 thread, {name} | {:.1} µs | {:.0} |",
        per_call.as_secs_f64() * 1e6,
        1.0 / per_call.as_secs_f64()
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
        "| in-process sandbox calls, {cores} threads, no network | {:.1} µs | {:.0} |",
        per_call_parallel.as_secs_f64() * 1e6,
        1.0 / per_call_parallel.as_secs_f64()
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
        "| Golem::local par_for, {} providers | {:.1} µs | {:.0} |",
        golem.providers(),
        per_task.as_secs_f64() * 1e6,
        items.len() as f64 / job.as_secs_f64()
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
            "Golem::local par_for of 1 item, QUIC on loopback",
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
}
