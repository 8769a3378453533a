//! Real hostile modules, built from Rust: each ends in its own typed error, and the same
//! providers then run a correct task.

use std::time::Duration;

use golem::{Error, Golem, Limits, SubtaskError};
use golem_fixture::{boom, chatty, double, flood, hog, recurse, spin};

fn golem() -> Golem {
    Golem::builder()
        .providers(2)
        .build_blocking()
        .expect("local providers start")
}

fn subtask_error(error: Error) -> SubtaskError {
    match error {
        Error::Subtask { error, .. } => error,
        other => panic!("expected a subtask error, got {other:?}"),
    }
}

fn assert_still_serves(golem: &Golem) {
    assert_eq!(
        golem.par_for([1, 2], double).run().expect("a correct task"),
        [2, 4]
    );
}

#[test]
fn infinite_loop_runs_out_of_fuel() {
    let golem = golem();
    let limits = Limits::default().fuel(50_000_000);
    let error = golem.par_for([1], spin).limits(limits).run().unwrap_err();
    assert_eq!(
        subtask_error(error),
        SubtaskError::OutOfFuel { limit: 50_000_000 }
    );
    assert_still_serves(&golem);
}

#[test]
fn infinite_loop_hits_the_wall_time_deadline() {
    let golem = golem();
    let limits = Limits::default().deadline(Duration::from_millis(100));
    let error = golem.par_for([1], spin).limits(limits).run().unwrap_err();
    assert_eq!(
        subtask_error(error),
        SubtaskError::Deadline {
            limit: Duration::from_millis(100)
        }
    );
    assert_still_serves(&golem);
}

#[test]
fn memory_bomb_reaches_the_memory_limit() {
    let golem = golem();
    let limits = Limits::default().memory_bytes(32 << 20);
    let error = golem
        .par_for([1 << 20], hog)
        .limits(limits)
        .run()
        .unwrap_err();
    let error = subtask_error(error);
    assert_eq!(error, SubtaskError::MemoryLimit { limit: 32 << 20 });
    assert!(error.to_string().starts_with("memory limit reached"));
    assert_still_serves(&golem);
}

#[test]
fn unbounded_recursion_overflows_the_stack() {
    let golem = golem();
    let error = golem.par_for([0], recurse).run().unwrap_err();
    assert_eq!(subtask_error(error), SubtaskError::StackOverflow);
    assert_still_serves(&golem);
}

#[test]
fn guest_panic_message_comes_back() {
    let golem = golem();
    let error = golem
        .par_for(["the sky is falling".to_string()], boom)
        .run()
        .unwrap_err();
    match subtask_error(error) {
        SubtaskError::Panic { message } => {
            assert!(message.contains("the sky is falling"), "{message}");
            assert!(
                message.contains("src/lib.rs"),
                "location included: {message}"
            );
            assert!(
                !message.contains("/work/"),
                "build paths are remapped: {message}"
            );
        }
        other => panic!("expected a panic, got {other:?}"),
    }
    assert_still_serves(&golem);
}

#[test]
fn oversized_output_is_refused() {
    let golem = golem();
    let limits = Limits::default().output_bytes(1 << 20);
    let error = golem
        .par_for([4 << 20], flood)
        .limits(limits)
        .run()
        .unwrap_err();
    match subtask_error(error) {
        SubtaskError::OutputTooLarge { size, limit } => {
            assert!(size > 4 << 20);
            assert_eq!(limit, 1 << 20);
        }
        other => panic!("expected an oversized output, got {other:?}"),
    }
    assert_still_serves(&golem);
}

#[test]
fn printing_does_not_disturb_the_result() {
    // stdout and stderr are captured by the sandbox (see the runtime's tests), never written to
    // the provider's own streams; the task still returns normally.
    let golem = golem();
    assert_eq!(
        golem
            .par_for(["hi".to_string()], chatty)
            .run()
            .expect("job"),
        ["hi"]
    );
}
