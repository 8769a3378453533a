//! Criterion benches: the render kernel natively and in the sandbox under each engine setting,
//! one subtask's fixed cost, and tiny-task throughput through `Golem::local()`.
//!
//! Run: `cargo bench -p golem-benches --bench sandbox`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use golem::Golem;
use golem_benches::{SandboxRun, engine_variants, render_native, scene, tiles};
use golem_examples::mandelbrot::render;
use golem_fixture::double;

fn render_kernel(c: &mut Criterion) {
    let scene = scene();
    let tiles = tiles(&scene);
    let mut group = c.benchmark_group("render");
    group.sample_size(10);
    group.bench_function("native", |b| {
        b.iter(|| render_native(&scene, black_box(&tiles)))
    });
    for (name, config) in engine_variants() {
        let run = SandboxRun::new(config, render, &scene, &tiles);
        group.bench_function(format!("sandbox/{name}"), |b| b.iter(|| run.run_all()));
    }
    group.finish();
}

fn tiny_task(c: &mut Criterion) {
    let mut group = c.benchmark_group("tiny task");
    // What each limit adds to a call.
    for (name, config) in engine_variants() {
        let run = SandboxRun::new(config, double, &(), &[21]);
        group.bench_function(format!("one call/{name}"), |b| b.iter(|| run.run_one(0)));
    }
    let (name, config) = engine_variants().remove(3);
    let run = SandboxRun::new(config, double, &(), &[21]);
    // The same call on every core at once: what the sandbox's shared state (the instance pool,
    // the process's page tables) costs when calls run in parallel.
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    group.throughput(Throughput::Elements(cores as u64 * 1_000));
    group.bench_function(
        format!("1,000 calls on each of {cores} threads/{name}"),
        |b| {
            b.iter(|| {
                std::thread::scope(|scope| {
                    for _ in 0..cores {
                        scope.spawn(|| {
                            for _ in 0..1_000 {
                                black_box(run.run_one(0));
                            }
                        });
                    }
                });
            })
        },
    );

    let golem = Golem::local_blocking().expect("local providers");
    let items: Vec<u64> = (0..10_000).collect();
    group.throughput(Throughput::Elements(items.len() as u64));
    group.sample_size(10);
    group.bench_function("Golem::local par_for x10000", |b| {
        b.iter(|| golem.par_for(items.clone(), double).run().expect("job"))
    });
    group.finish();
}

criterion_group!(benches, render_kernel, tiny_task);
criterion_main!(benches);
