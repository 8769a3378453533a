//! Provider daemons as separate processes on 127.0.0.1, and requestors that join them.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use golem::{Error, Golem, Limits, SubtaskError};
use golem_examples::mandelbrot::{Scene, render};
use golem_fixture::{chatty, grind};
use rustix::process::Signal;

use crate::common::{Daemon, send};

/// How long a requestor told of one daemon may take to hear of the others on the gossip topic:
/// usually at once (neighbours pass on what they know), at the latest when each has announced
/// itself again.
const DISCOVERY_WAIT: Duration = Duration::from_secs(30);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn scene() -> Scene {
    Scene {
        width: 256,
        height: 192,
        ..Scene::default()
    }
}

fn grind_items(count: u64, rounds: u32) -> Vec<(u64, u32)> {
    (0..count).map(|i| (i, rounds)).collect()
}

fn native_grind(items: &[(u64, u32)]) -> Vec<u64> {
    items.iter().map(|item| grind(*item)).collect()
}

#[test]
fn a_requestor_finds_daemons_through_one_bootstrap_node_and_renders_on_them() {
    let first = Daemon::start("render-a", &["--flavor", "std:concurrency=1"]);
    let others: Vec<Daemon> = ["render-b", "render-c"]
        .iter()
        .map(|name| Daemon::start(name, &["--bootstrap", &first.address]))
        .collect();
    runtime().block_on(async {
        let golem = Golem::builder()
            .join(first.address.as_str())
            .min_providers(3)
            .wait(DISCOVERY_WAIT)
            .build()
            .await
            .expect("three providers found through the first");
        let mut nodes: Vec<String> = golem
            .provider_list()
            .iter()
            .map(|info| info.node.to_string())
            .collect();
        nodes.sort();
        let mut expected: Vec<String> = std::iter::once(&first)
            .chain(&others)
            .map(|daemon| daemon.node().to_owned())
            .collect();
        expected.sort();
        assert_eq!(nodes, expected);

        let scene = scene();
        let tiles = scene.tiles(32);
        let remote = golem
            .par_for(tiles.clone(), render)
            .with(&scene)
            .await
            .expect("render on the daemons");
        let native: Vec<_> = tiles.iter().map(|tile| render(&scene, *tile)).collect();
        assert!(remote == native, "the picture differs from a native render");
    });
    // Ctrl-C stops a daemon cleanly.
    let mut first = first;
    first.signal(Signal::INT);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = first.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no exit after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit after SIGINT: {status}");
}

#[test]
fn providers_are_seen_joining_and_leaving_and_matched_against_the_demand() {
    let first = Daemon::start("churn-a", &["--flavor", "cheap:price=5"]);
    runtime().block_on(async {
        let golem = Golem::builder()
            .join(first.address.as_str())
            .max_price(10)
            .build()
            .await
            .expect("the first provider");
        assert_eq!(golem.providers(), 1);

        let pricey = Daemon::start(
            "churn-pricey",
            &["--bootstrap", &first.address, "--flavor", "gold:price=500"],
        );
        let second = Daemon::start("churn-b", &["--bootstrap", &first.address]);
        assert_eq!(
            golem.wait_for_providers(2, Duration::from_secs(20)).await,
            2
        );
        // One more exchange of peers: the pricey provider is known and still not used.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let nodes: Vec<String> = golem
            .provider_list()
            .iter()
            .map(|info| info.node.to_string())
            .collect();
        assert!(nodes.contains(&second.node().to_owned()));
        assert!(
            !nodes.contains(&pricey.node().to_owned()),
            "a provider above the price ceiling was used"
        );
        assert_eq!(nodes.len(), 2);

        drop(second);
        let started = Instant::now();
        while golem.providers() != 1 {
            assert!(
                started.elapsed() < Duration::from_secs(40),
                "the provider never left"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let items = grind_items(50, 1_000);
        let outputs = golem.par_for(items.clone(), grind).await.expect("job");
        assert_eq!(outputs, native_grind(&items));
    });
}

/// Runs a grind job on `daemons`, calling `disrupt` once a quarter of it has settled; checks
/// the outputs against a native run and that progress counted every subtask once.
fn run_disrupted(daemons: &[Daemon], disrupt: impl FnOnce() + Send + 'static) {
    runtime().block_on(async {
        let golem = Golem::builder()
            .join(daemons[0].address.as_str())
            .min_providers(daemons.len())
            .wait(DISCOVERY_WAIT)
            .build()
            .await
            .expect("providers");
        let items = grind_items(600, 2_000_000);
        let total = items.len();
        let settled = Arc::new(AtomicUsize::new(0));
        let disrupt = std::sync::Mutex::new(Some(disrupt));
        let seen = Arc::clone(&settled);
        let started = Instant::now();
        let outputs = golem
            .par_for(items.clone(), grind)
            .progress(move |done, all| {
                assert_eq!(all, total);
                let before = seen.swap(done, Ordering::SeqCst);
                assert!(done > before, "progress went {before} → {done}");
                if done >= all / 4
                    && let Some(disrupt) = disrupt.lock().expect("lock").take()
                {
                    disrupt();
                }
            })
            .await
            .expect("the job completes");
        let took = started.elapsed();
        eprintln!("job of {total} took {took:?}");
        // A clean run takes about 2 s here; without backup copies and deadlines the work held
        // by a hung provider would wait for the first deadline (120 s).
        assert!(took < Duration::from_secs(60), "the job took {took:?}");
        assert_eq!(settled.load(Ordering::SeqCst), total);
        assert_eq!(
            outputs,
            native_grind(&items),
            "results differ from a clean run"
        );
    });
}

#[test]
fn a_job_survives_half_its_providers_being_killed() {
    let first = Daemon::start("kill-a", &["--flavor", "one:concurrency=1"]);
    let mut daemons = vec![first];
    for name in ["kill-b", "kill-c", "kill-d"] {
        let bootstrap = daemons[0].address.clone();
        daemons.push(Daemon::start(
            name,
            &["--bootstrap", &bootstrap, "--flavor", "one:concurrency=1"],
        ));
    }
    let victims: Vec<u32> = daemons[2..]
        .iter()
        .map(|daemon| daemon.child.id())
        .collect();
    run_disrupted(&daemons, move || {
        for pid in victims {
            send(pid, Signal::KILL);
        }
    });
}

#[test]
fn a_job_survives_a_provider_that_hangs() {
    let first = Daemon::start("hang-a", &["--flavor", "one:concurrency=1"]);
    let mut daemons = vec![first];
    for name in ["hang-b", "hang-c"] {
        let bootstrap = daemons[0].address.clone();
        daemons.push(Daemon::start(
            name,
            &["--bootstrap", &bootstrap, "--flavor", "one:concurrency=1"],
        ));
    }
    let victim = daemons[2].child.id();
    run_disrupted(&daemons, move || {
        send(victim, Signal::STOP);
    });
    daemons[2].signal(Signal::CONT);
}

/// A requestor may ask any limits of a batch; a provider runs it only in a flavor that holds
/// them all. Here a requestor that matched the flavor asks more in one job: a gigabyte of logs
/// kept on the provider, a larger output, a longer deadline.
#[test]
fn a_batch_asking_more_than_every_flavor_holds_is_not_run() {
    let daemon = Daemon::start("caps", &["--flavor", "small:output=1K,log=4K,deadline=30s"]);
    let within = Limits::default()
        .output_bytes(1 << 10)
        .log_bytes(4 << 10)
        .deadline(Duration::from_secs(30));
    runtime().block_on(async {
        let golem = Golem::builder()
            .join(daemon.address.as_str())
            .limits(within.clone())
            .build()
            .await
            .expect("the provider's flavor holds the requestor's limits");
        let hi = || vec!["hi".to_string()];
        let outputs = golem
            .par_for(hi(), chatty)
            .with(&())
            .limits(within.clone())
            .await
            .expect("within the flavor");
        assert_eq!(outputs, ["hi"]);
        for (what, limits) in [
            ("logs", within.clone().log_bytes(1 << 30)),
            ("output", within.clone().output_bytes(64 << 20)),
            (
                "deadline",
                within.clone().deadline(Duration::from_secs(3600)),
            ),
        ] {
            let error = golem
                .par_for(hi(), chatty)
                .with(&())
                .limits(limits)
                .await
                .expect_err(what);
            match error {
                Error::Subtask {
                    error: SubtaskError::Internal(reason),
                    ..
                } => assert!(reason.contains("exceed every flavor"), "{what}: {reason}"),
                other => panic!("{what}: {other:?}"),
            }
        }
        // And it keeps serving.
        let outputs = golem.par_for(hi(), chatty).with(&()).limits(within).await;
        assert_eq!(outputs.expect("still serving"), ["hi"]);
    });
}
