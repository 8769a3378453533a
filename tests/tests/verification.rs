//! Verification against real providers over QUIC, some of which lie (the runtime's
//! `adversarial` feature): redundancy, spot checks, custom checks, receipts, bans that last.

use std::collections::HashSet;
use std::time::Duration;

use golem::blocking::block_on;
use golem::{Golem, JobReport, Verify};
use golem_fixture::{grind, observe};
use golem_runtime::adversarial::{Cheat, Lie, Network, When};
use golem_runtime::identity::NodeId;
use golem_tests::join_all;

fn cheat(lie: Lie, when: When) -> Option<Cheat> {
    Some(Cheat { lie, when })
}

/// Ten providers, three of which lie as `cheats` says.
fn thirty_percent(cheats: [Option<Cheat>; 3]) -> Network {
    let mut line_up = vec![None; 10];
    for (slot, cheat) in [1, 4, 8].into_iter().zip(cheats) {
        line_up[slot] = cheat;
    }
    Network::start(&line_up).expect("providers")
}

fn caught(report: &JobReport) -> HashSet<NodeId> {
    report.caught.iter().map(|caught| caught.node).collect()
}

const SUBTASKS: u64 = 10_000;

fn inputs() -> Vec<(u64, u32)> {
    (0..SUBTASKS).map(|i| (i, 200)).collect()
}

fn wrong(outputs: &[u64], inputs: &[(u64, u32)]) -> usize {
    outputs
        .iter()
        .zip(inputs)
        .filter(|(output, input)| **output != grind(**input))
        .count()
}

#[test]
fn the_same_job_gives_the_same_bytes_on_every_provider() {
    let network = Network::start(&[None, None, None, None]).expect("providers");
    let golem = join_all(&network, Golem::builder());
    let engines: HashSet<_> = golem.provider_list().iter().map(|p| p.engine).collect();
    assert_eq!(engines.len(), 1, "one engine fingerprint: {engines:?}");
    assert!(engines.iter().all(Option::is_some));
    // Four copies of every batch on four distinct providers, compared byte for byte: seeded
    // randomness, the virtual clock and hash order included.
    let job = golem
        .par_for(0..300u32, observe)
        .verify(Verify::redundant(4))
        .with_report();
    let (outputs, report) = block_on(job).expect("the job completes");
    assert_eq!(outputs.len(), 300);
    assert!(report.caught.is_empty(), "{:?}", report.caught);
    assert_eq!(report.provider_runs, 4 * 300);
    // The report says how each provider was reached: straight at its loopback address.
    let routed: HashSet<NodeId> = report.routes.iter().map(|route| route.node).collect();
    let paid: HashSet<NodeId> = report.receipts.iter().map(|r| r.receipt.provider).collect();
    assert_eq!(routed, paid);
    assert!(
        report
            .routes
            .iter()
            .all(|route| !route.relayed && route.via.starts_with("127.0.0.1:")),
        "{:?}",
        report.routes
    );
    let mut per_batch = std::collections::BTreeMap::new();
    for priced in &report.receipts {
        let receipt = &priced.receipt;
        assert_eq!(receipt.verify(), Ok(()));
        per_batch
            .entry(receipt.entries[0].index)
            .or_insert_with(Vec::new)
            .push(receipt);
    }
    assert!(!per_batch.is_empty());
    for receipts in per_batch.values() {
        let providers: HashSet<_> = receipts.iter().map(|r| r.provider).collect();
        assert_eq!(providers.len(), 4, "four distinct providers");
        assert!(receipts.iter().all(|r| r.entries == receipts[0].entries));
    }
    // And a requestor that knows one provider alone gets the same outputs again.
    let single = Golem::builder()
        .providers(0)
        .join(network.providers()[2].bootstrap().to_string())
        .build_blocking()
        .expect("one provider");
    let again = single.par_for(0..300u32, observe).run().expect("runs");
    assert_eq!(again, outputs);
}

#[test]
fn redundancy_over_real_providers_leaves_no_wrong_result() {
    let network = thirty_percent(
        [0, 1, 2].map(|group| cheat(Lie::WrongOutput { group }, When::Sometimes { percent: 20 })),
    );
    let golem = join_all(&network, Golem::builder());
    let items = inputs();
    let job = golem
        .par_for(items.clone(), grind)
        .verify(Verify::redundant(2))
        .with_report();
    let (outputs, report) = block_on(job).expect("the job completes");
    let wrong = wrong(&outputs, &items);
    eprintln!(
        "redundancy: {wrong} wrong of {SUBTASKS}, caught {} of 3, overhead {:.1} %",
        report.caught.len(),
        report.overhead() * 100.0
    );
    assert_eq!(wrong, 0);
    assert_eq!(&caught(&report), network.cheaters(), "every cheater named");
    assert!(
        report
            .receipts
            .iter()
            .all(|r| !network.cheaters().contains(&r.receipt.provider))
    );
    assert_eq!(golem.providers(), 7, "the cheaters were dropped");
}

#[test]
fn spot_checks_over_real_providers_catch_every_cheater() {
    let network = thirty_percent([
        cheat(
            Lie::WrongOutput { group: 0 },
            When::Sometimes { percent: 10 },
        ),
        cheat(Lie::WrongFuel, When::AfterTrust { honest: 300 }),
        cheat(Lie::BadSignature, When::Sometimes { percent: 5 }),
    ]);
    let dir = std::env::temp_dir().join(format!("golem-verification-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let records = dir.join("reputation.redb");
    let spot = golem::SpotCheck::default();
    {
        let golem = join_all(&network, Golem::builder().reputation(&records));
        let items = inputs();
        let job = golem
            .par_for(items.clone(), grind)
            .verify(Verify::SpotCheck(spot))
            .with_report();
        let (outputs, report) = block_on(job).expect("the job completes");
        let wrong = wrong(&outputs, &items);
        eprintln!(
            "spot checks: {wrong} wrong of {SUBTASKS}, caught {} of 3, re-ran {:.1} %, \
             recomputed {}; bound {:.1} wrong per cheater",
            report.caught.len(),
            report.rerun_fraction() * 100.0,
            report.recomputed,
            spot.expected_wrong_bound()
        );
        assert!(caught(&report).is_subset(network.cheaters()));
        if &caught(&report) == network.cheaters() {
            assert_eq!(wrong, 0);
        }
        assert!(wrong as f64 <= 3.0 * spot.expected_wrong_bound());
        let records = block_on(golem.records());
        for (node, record) in &records {
            assert_eq!(
                record.banned,
                network.cheaters().contains(node),
                "{record:?}"
            );
        }
    }
    // A new requestor with the same records, told of one honest provider, hears of every
    // provider on the gossip topic, and refuses the cheaters it caught.
    let golem = Golem::builder()
        .reputation(&records)
        .providers(0)
        .min_providers(7)
        .wait(Duration::from_secs(30))
        .join(network.providers()[0].bootstrap().to_string())
        .build_blocking()
        .expect("the honest providers");
    let started = std::time::Instant::now();
    while golem.announced().len() < 10 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "not every provider heard of"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let used: HashSet<NodeId> = golem.provider_list().iter().map(|p| p.node).collect();
    assert!(
        used.is_disjoint(network.cheaters()),
        "a banned provider is used again"
    );
    assert_eq!(used.len(), 7);
    drop(golem);
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn a_custom_check_catches_a_cheater_and_a_tampered_receipt_is_refused_without_one() {
    let network = Network::start(&[
        None,
        cheat(Lie::WrongOutput { group: 0 }, When::Always),
        None,
        cheat(Lie::BadSignature, When::Always),
    ])
    .expect("providers");
    let golem = join_all(&network, Golem::builder());
    let items: Vec<(u64, u32)> = (0..2_000).map(|i| (i, 20_000)).collect();
    // A check that recomputes the output natively: the task is a plain function here.
    let job = golem
        .par_for(items.clone(), grind)
        .verify_with(|_, input, output| {
            if grind(*input) == *output {
                Ok(())
            } else {
                Err(format!("{output} is not the grind of {input:?}"))
            }
        })
        .with_report();
    let (outputs, report) = block_on(job).expect("the job completes");
    assert_eq!(wrong(&outputs, &items), 0);
    assert_eq!(&caught(&report), network.cheaters());
    assert!(report.custom_checks >= items.len() as u64);
    let reasons: Vec<&str> = report.caught.iter().map(|c| c.reason.as_str()).collect();
    assert!(
        reasons.iter().any(|r| r.contains("failed the job's check")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("does not verify")),
        "{reasons:?}"
    );
}
