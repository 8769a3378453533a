//! Behaviour of tasks through `Golem::local()`: contexts, order, errors as data, determinism,
//! captured output, the blocking facade.

use std::sync::{Arc, Mutex};

use golem::{Error, Golem, SubtaskError, Until};
use golem_fixture::{DivError, Environment, add, checked_div, double, observe, renamed};

fn golem() -> Golem {
    Golem::builder()
        .providers(2)
        .build_blocking()
        .expect("local providers start")
}

#[test]
fn outputs_come_back_in_input_order() {
    let golem = golem();
    let items: Vec<u64> = (0..5_000).collect();
    let doubled = golem.par_for(items.clone(), double).run().expect("job");
    assert_eq!(doubled, items.iter().map(|x| 2 * x).collect::<Vec<_>>());
}

#[test]
fn progress_reaches_the_total() {
    let golem = golem();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    golem
        .par_for(0..1_000, double)
        .progress(move |done, total| record.lock().unwrap().push((done, total)))
        .run()
        .expect("job");
    let seen = seen.lock().unwrap();
    assert!(seen.len() > 1, "reported as chunks settle: {seen:?}");
    assert!(
        seen.iter()
            .all(|&(done, total)| total == 1_000 && done <= total)
    );
    assert_eq!(seen.iter().map(|&(done, _)| done).max(), Some(1_000));
}

#[test]
fn empty_input_gives_empty_output() {
    let golem = golem();
    assert_eq!(
        golem.par_for(Vec::new(), double).run().expect("job"),
        Vec::<u64>::new()
    );
}

#[test]
fn context_is_shared_by_every_item() {
    let golem = golem();
    let sums = golem
        .par_for(vec![1, 2, 3], add)
        .with(&100)
        .run()
        .expect("job");
    assert_eq!(sums, [101, 102, 103]);
}

#[test]
fn tasks_stay_callable_natively() {
    assert_eq!(add(&1, 2), 3);
    assert_eq!(double(21), 42);
    assert_eq!(renamed::negate(5), -5);
    assert_eq!(checked_div((1, 0)), Err(DivError::ByZero { dividend: 1 }));
}

#[test]
fn errors_returned_by_a_task_come_back_as_data() {
    let golem = golem();
    let results = golem
        .par_for(vec![(10, 2), (7, 0), (9, 3)], checked_div)
        .run()
        .expect("job");
    assert_eq!(
        results,
        [Ok(5), Err(DivError::ByZero { dividend: 7 }), Ok(3)]
    );
}

#[test]
fn crate_override_names_the_sdk() {
    let golem = golem();
    assert_eq!(
        golem.par_for([1, -2], renamed::negate).run().expect("job"),
        [-1, 2]
    );
}

#[test]
fn environment_is_deterministic_and_closed() {
    let golem = golem();
    let inputs = vec![8u32; 6];
    let first: Vec<Environment> = golem.par_for(inputs.clone(), observe).run().expect("job");
    let second = golem.par_for(inputs, observe).run().expect("job");
    assert_eq!(
        first, second,
        "same job, same environment, whichever provider ran it"
    );
    // Subtasks are seeded apart from each other.
    assert_ne!(first[0].random, first[1].random);
    let env = &first[0];
    assert_eq!((env.args, env.vars), (0, 0));
    assert!(
        env.system_time_ns > 1_700_000_000_000_000_000,
        "a plausible virtual clock"
    );
}

#[test]
fn files_are_refused_with_an_error_and_sleeping_moves_the_virtual_clock() {
    let golem = golem();
    let paths = vec!["/etc/hostname".to_string(), "data.bin".to_string()];
    let seen = golem
        .par_for(paths.clone(), golem_fixture::reach)
        .run()
        .expect("a task that reaches for files still ends normally");
    for (path, reach) in paths.iter().zip(&seen) {
        let read = reach.read.as_ref().expect_err("no file can be read");
        let write = reach.write.as_ref().expect_err("no file can be written");
        assert!(!read.is_empty() && !write.is_empty(), "{path}: {reach:?}");
        assert!(
            reach.slept_ns >= 50_000_000,
            "a sleep of 50 ms moves the clock 50 ms: {reach:?}"
        );
    }
    assert_eq!(
        seen,
        golem
            .par_for(paths, golem_fixture::reach)
            .run()
            .expect("job"),
        "the same every run"
    );
}

#[test]
fn failures_name_the_task_and_the_item() {
    let golem = golem();
    let error = golem
        .par_for(
            vec!["fine".to_string(), "bad item".to_string()],
            golem_fixture::boom,
        )
        .run()
        .unwrap_err();
    match &error {
        Error::Subtask {
            task: "boom",
            index: 0,
            error: SubtaskError::Panic { message },
        } => {
            assert!(message.contains("fine"), "{message}");
        }
        other => panic!("unexpected error: {other:?}"),
    }
    assert!(
        error
            .to_string()
            .starts_with("task `boom` failed on item 0: the task panicked")
    );
}

#[test]
fn iterate_blocking_runs_rounds() {
    let golem = golem();
    let done = golem
        .iterate_blocking(
            vec![1u64, 2, 3],
            |golem, _round, state| golem.par_for(state.clone(), double).run(),
            Until::rounds(4),
        )
        .expect("rounds");
    assert_eq!(done.state, [16, 32, 48]);
    assert_eq!((done.rounds, done.converged), (4, false));
}

#[tokio::test]
async fn async_api_runs_on_a_runtime() {
    let golem = Golem::builder()
        .providers(2)
        .build()
        .await
        .expect("providers");
    let doubled = golem.par_for(1..=3, double).await.expect("job");
    assert_eq!(doubled, [2, 4, 6]);
}

/// The in-process providers keep compiled modules on disk, as a daemon does: a second
/// requestor on the same directory finds the module compiled, and runs it to the same bytes.
#[test]
fn compiled_modules_are_kept_on_disk_for_the_next_run() {
    let dir = std::env::temp_dir().join(format!("golem-compiled-local-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let compiled = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(|entry| Some(entry.ok()?.path()))
                    .filter(|path| path.extension().is_some_and(|ext| ext == "cwasm"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let run = || {
        let golem = Golem::builder()
            .providers(1)
            .compiled_cache(&dir)
            .build_blocking()
            .expect("local providers start");
        golem.par_for(vec![21u64, 4], double).run().expect("job")
    };
    let first = run();
    let kept = compiled();
    assert_eq!(kept.len(), 1, "the module is kept once: {kept:?}");
    let modified = std::fs::metadata(&kept[0])
        .and_then(|m| m.modified())
        .expect("a time");
    assert_eq!(run(), first);
    assert_eq!(compiled(), kept, "found, not compiled again");
    let again = std::fs::metadata(&kept[0])
        .and_then(|m| m.modified())
        .expect("a time");
    assert_eq!(again, modified, "the kept file was not written again");
    std::fs::remove_dir_all(&dir).expect("removed");
}
