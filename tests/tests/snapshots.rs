//! Context snapshots on real Rust task modules: the context is decoded once, every call starts
//! from there with copy-on-write memory, a call's writes never reach the next, and the outputs
//! are the bytes of a run without snapshots.

use std::cell::Cell;
use std::collections::HashMap;

use golem::{SubtaskError, Task};
use golem_fixture::{Environment, Scenery, survey, tally};
use golem_runtime::sandbox::{
    Call, Context, ContextSnapshots, Execution, Limits, Sandbox, SandboxConfig,
};

/// A sandbox that snapshots every context from its first call (`snapshots`), or none.
fn sandbox(snapshots: bool) -> Sandbox {
    let mut config = SandboxConfig::with_instances(4);
    config.context_snapshots = if snapshots {
        ContextSnapshots::Always
    } else {
        ContextSnapshots::Off
    };
    Sandbox::new(config).expect("engine")
}

/// Runs task `T` once per input, in order, each call seeded by its position.
fn run<T: Task>(
    sandbox: &Sandbox,
    context: &Context,
    inputs: &[T::Input],
) -> Vec<Result<Execution, SubtaskError>> {
    let module = T::module();
    let prepared = sandbox
        .prepare(module.hash(), module.bytes())
        .expect("the fixture module is accepted");
    let task = prepared.task(T::NAME).expect("the task is exported");
    inputs
        .iter()
        .enumerate()
        .map(|(at, input)| {
            let input = postcard::to_allocvec(input).expect("encode input");
            let call = Call {
                context: context.clone(),
                input: &input,
                seed: [at as u8; 32],
            };
            sandbox.run(&prepared, &task, call, &Limits::default())
        })
        .collect()
}

fn encoded<T: serde::Serialize>(context: &T) -> Context {
    Context::new(postcard::to_allocvec(context).expect("encode").into())
}

fn decoded<T: serde::de::DeserializeOwned>(
    executions: Vec<Result<Execution, SubtaskError>>,
) -> Vec<T> {
    executions
        .into_iter()
        .map(|execution| {
            postcard::from_bytes(&execution.expect("the call runs").output).expect("decode")
        })
        .collect()
}

#[test]
fn a_call_never_sees_what_an_earlier_call_wrote_into_its_context() {
    let counts: Vec<Cell<u64>> = (0..4).map(|_| Cell::new(5)).collect();
    let context = encoded(&counts);
    // Index 4 uses the count index 0 wrote to, 5 that of 1, and so on: in one instance they
    // would see 6, 7, 8, 9.
    let inputs: Vec<u64> = (0..8).collect();
    for snapshots in [true, false] {
        let sandbox = sandbox(snapshots);
        let seen: Vec<u64> = decoded(run::<tally>(&sandbox, &context, &inputs));
        assert_eq!(seen, [5; 8], "snapshots {snapshots}");
        assert_eq!(sandbox.snapshots_made(), u64::from(snapshots));
    }
}

#[test]
fn snapshots_give_the_bytes_of_a_run_without_them() {
    let scenery = Scenery {
        names: (0..200)
            .map(|at| (format!("name {at}"), at))
            .collect::<HashMap<_, _>>(),
        data: (0..300_000u32)
            .map(|at| at.wrapping_mul(2_654_435_761))
            .collect(),
    };
    let context = encoded(&scenery);
    let salts: Vec<u64> = (0..6).collect();
    let with = sandbox(true);
    let outputs = run::<survey>(&with, &context, &salts);
    assert_eq!(with.snapshots_made(), 1, "one snapshot serves every call");
    let without = run::<survey>(&sandbox(false), &context, &salts);
    assert_eq!(
        outputs, without,
        "snapshots changed the outputs or the fuel"
    );
    // Another provider's snapshot: the same bytes again.
    assert_eq!(run::<survey>(&sandbox(true), &context, &salts), outputs);

    let seen: Vec<Environment> = decoded(outputs);
    let native: Vec<u64> = salts
        .iter()
        .map(|salt| {
            scenery
                .data
                .iter()
                .skip((salt % 64) as usize)
                .step_by(997)
                .fold(*salt, |sum, value| {
                    sum.wrapping_mul(31).wrapping_add(u64::from(*value))
                })
        })
        .collect();
    assert_eq!(
        seen.iter().map(|env| env.random[1]).collect::<Vec<_>>(),
        native,
        "every call read the whole decoded context"
    );
    assert_ne!(
        seen[0].random[0], seen[1].random[0],
        "each call draws from its own seed"
    );
    let mut order = seen[0].hash_order.clone();
    order.sort_unstable();
    assert_eq!(order, (0..200).collect::<Vec<u32>>());
}

#[test]
fn a_context_that_does_not_decode_fails_each_call_as_it_would_without_snapshots() {
    // A length prefix far past the bytes that follow.
    let context = Context::new(vec![0xff, 0xff, 0xff, 0x0f, 1, 2].into());
    let inputs = [0u64, 1];
    let with = sandbox(true);
    let errors = run::<survey>(&with, &context, &inputs);
    assert_eq!(errors, run::<survey>(&sandbox(false), &context, &inputs));
    for error in errors {
        match error {
            Err(SubtaskError::Panic { message }) => assert!(
                message.contains("cannot decode the context of task `survey`"),
                "{message}"
            ),
            other => panic!("expected the decode panic, got {other:?}"),
        }
    }
    assert_eq!(with.snapshots_made(), 0);
}

#[test]
fn by_default_a_snapshot_is_made_once_decoding_has_cost_as_much() {
    let scenery = Scenery {
        names: HashMap::new(),
        data: (0..300_000u32).collect(),
    };
    let context = encoded(&scenery);
    let default = Sandbox::new(SandboxConfig::with_instances(4)).expect("engine");
    let first = run::<survey>(&default, &context, &[7]);
    assert_eq!(
        default.snapshots_made(),
        0,
        "one call does not wait for a snapshot"
    );
    // Bounded: decoding 1.2 MB takes milliseconds, the snapshot about a compile.
    let mut calls = 1;
    while default.snapshots_made() == 0 && calls < 2_000 {
        assert_eq!(run::<survey>(&default, &context, &[7]), first);
        calls += 1;
    }
    assert_eq!(
        default.snapshots_made(),
        1,
        "no snapshot after {calls} calls"
    );
    assert_eq!(run::<survey>(&default, &context, &[7]), first);
    assert_eq!(run::<survey>(&sandbox(false), &context, &[7]), first);
    eprintln!("snapshot made after {calls} calls");
}

#[test]
fn a_call_is_charged_for_the_decode_its_snapshot_did() {
    let scenery = |len: u32| Scenery {
        names: HashMap::new(),
        data: (0..len).collect(),
    };
    let fuel = |sandbox: &Sandbox, len: u32| {
        run::<survey>(sandbox, &encoded(&scenery(len)), &[3])
            .remove(0)
            .expect("the call runs")
            .fuel_used
            .expect("fuel is metered")
    };
    for snapshots in [true, false] {
        let sandbox = sandbox(snapshots);
        let (small, large) = (fuel(&sandbox, 1_000), fuel(&sandbox, 301_000));
        // The task reads a few hundred values either way; decoding 300,000 more costs at least
        // a unit of fuel each.
        assert!(
            large > small + 300_000,
            "snapshots {snapshots}: {small} and {large} fuel"
        );
        assert_eq!(sandbox.snapshots_made(), if snapshots { 2 } else { 0 });
    }
}
