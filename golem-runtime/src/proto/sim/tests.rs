//! The simulation's tests: jobs end exactly whatever the network and the providers do, cheaters
//! are caught, budgets hold, and runs with fixed seeds are pinned.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::*;
use crate::payment::{NANO, Priced};
use crate::receipt::Receipt;

/// A provider slot of one place, free, on this machine.
fn free_slot() -> ProviderSlot {
    ProviderSlot {
        concurrency: 1,
        engine: None,
        price_per_gfuel: 0,
        payee: None,
        subnet: Subnet::Local,
    }
}

/// A job spec with the default limits, for sessions driven by hand.
fn plain_spec() -> JobSpec {
    JobSpec {
        module: BlobId::of(b"module"),
        task: "t".into(),
        context: BlobId::of(b"context"),
        seed: [0; 32],
        nonce: [1; 16],
        limits: Limits::default(),
    }
}

fn inputs(count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| (i as u32).to_le_bytes().to_vec())
        .collect()
}

fn check_outputs(result: Result<JobOutput, JobFailure>, inputs: &[Vec<u8>]) {
    let outputs = result.expect("the job succeeds").outputs;
    assert_eq!(outputs.len(), inputs.len());
    for (index, (output, input)) in outputs.iter().zip(inputs).enumerate() {
        assert_eq!(
            output.bytes,
            expected_output(index as u64, input),
            "output {index} is another subtask's"
        );
    }
}

fn check_progress(events: &[Event], total: usize) {
    let mut last = 0;
    for event in events {
        if let Event::Progress {
            settled, total: t, ..
        } = event
        {
            assert_eq!(*t, total);
            assert!(
                *settled > last && *settled <= total,
                "progress went {last} → {settled}"
            );
            last = *settled;
        }
    }
    assert_eq!(last, total, "every subtask settled exactly once");
}

#[test]
fn a_clean_network_sends_each_blob_once_per_provider() {
    let network = Network {
        drop_percent: 0,
        max_delay_ms: 2,
    };
    let behaviors = [Behavior::Honest; 4];
    let mut sim = Sim::new(1, &behaviors, network, SchedulerConfig::default());
    sim.connect_all();
    let items = inputs(10_000);
    let (result, events) = sim.run(items.clone());
    check_outputs(result, &items);
    check_progress(&events, items.len());
    for provider in 0..4 {
        for blob in [BlobId::of(b"module"), BlobId::of(b"context")] {
            assert_eq!(sim.blobs_sent.get(&(provider, blob)), Some(&1));
        }
    }
    // A second job with the same module and context sends no blob at all.
    sim.blobs_sent.clear();
    let (result, _) = sim.run(items.clone());
    check_outputs(result, &items);
    assert!(sim.blobs_sent.is_empty(), "{:?}", sim.blobs_sent.len());
}

#[test]
fn jobs_finish_exactly_despite_drops_delays_reordering_hangs_and_deaths() {
    for seed in 0..40 {
        let network = Network {
            drop_percent: 3,
            max_delay_ms: 40,
        };
        let behaviors = [
            Behavior::Honest,
            Behavior::Honest,
            Behavior::Hangs,
            Behavior::DiesAt(Duration::from_millis(30 + seed * 7)),
            Behavior::Honest,
            Behavior::DiesAt(Duration::from_millis(400)),
        ];
        let config = SchedulerConfig {
            min_deadline: Duration::from_millis(500),
            first_deadline: Duration::from_secs(2),
            max_attempts: 50,
            ..SchedulerConfig::default()
        };
        let mut sim = Sim::new(seed, &behaviors, network, config);
        sim.connect_all();
        let items = inputs(2_000 + seed as usize * 37);
        let (result, events) = sim.run(items.clone());
        check_outputs(result, &items);
        check_progress(&events, items.len());
    }
}

#[test]
fn a_job_fails_with_its_lowest_failing_index_whatever_order_batches_end_in() {
    for seed in 0..10 {
        let network = Network {
            drop_percent: 2,
            max_delay_ms: 30,
        };
        let config = SchedulerConfig {
            min_deadline: Duration::from_millis(500),
            first_deadline: Duration::from_secs(2),
            max_attempts: 50,
            ..SchedulerConfig::default()
        };
        let mut sim = Sim::new(seed, &[Behavior::Honest; 3], network, config);
        // Two failing subtasks: the later one usually fails first, in a batch that started
        // earlier or ran faster.
        sim.poisoned.extend([3_999, 1_234]);
        sim.connect_all();
        let (result, _) = sim.run(inputs(5_000));
        match result {
            Err(JobFailure::Subtask { index, error }) => {
                assert_eq!(index, 1234, "seed {seed}");
                assert!(matches!(error, SubtaskError::Panic { .. }));
            }
            other => panic!("expected subtask 1234 to fail the job, got {other:?}"),
        }
        // The session is clean afterwards: a job without the failing subtasks runs.
        sim.poisoned.clear();
        let items = inputs(100);
        let (result, _) = sim.run(items.clone());
        check_outputs(result, &items);
    }
}

#[test]
fn a_job_waits_for_providers_and_survives_all_of_them_leaving() {
    let network = Network {
        drop_percent: 0,
        max_delay_ms: 5,
    };
    let behaviors = [
        Behavior::DiesAt(Duration::from_millis(20)),
        Behavior::Honest,
    ];
    let mut sim = Sim::new(3, &behaviors, network, SchedulerConfig::default());
    // Only the first provider is known when the job starts; it dies, and the second joins later.
    sim.connect(0, 1);
    // Something must be on the clock for virtual time to reach the join.
    let hello = Hello {
        version: crate::proto::PROTOCOL_VERSION,
        offers: Vec::new(),
        engine: None,
        payee: None,
    };
    sim.schedule(
        Duration::from_millis(100),
        Deliver::Reply(1, Reply::Hello(hello)),
    );
    let items = inputs(3_000);
    let mut joined = false;
    let (result, events) = sim.run_with(items.clone(), |sim| {
        if !joined && sim.time >= Duration::from_millis(100) {
            joined = true;
            sim.connect(1, 1);
        }
    });
    assert!(joined);
    check_outputs(result, &items);
    check_progress(&events, items.len());
}

#[test]
fn a_provider_that_wants_to_be_paid_first_is_dropped_and_its_work_goes_elsewhere() {
    let network = Network {
        drop_percent: 0,
        max_delay_ms: 5,
    };
    let behaviors = [Behavior::Unpaid, Behavior::Honest, Behavior::Honest];
    let mut sim = Sim::new(9, &behaviors, network, SchedulerConfig::default());
    sim.connect_all();
    let items = inputs(2_000);
    let (result, events) = sim.run(items.clone());
    let unpaid = sim.providers[0].node;
    let output = result.as_ref().expect("the job finishes").clone();
    check_outputs(result, &items);
    let told: Vec<_> = events
        .iter()
        .filter_map(|event| match event {
            Event::Unpaid { node, owed, limit } => Some((*node, *owed, *limit)),
            _ => None,
        })
        .collect();
    assert_eq!(told, [(unpaid, 12, 10)], "reported once, then dropped");
    assert!(
        output.report.caught.is_empty(),
        "not paying is not cheating"
    );
    assert!(
        output
            .report
            .receipts
            .iter()
            .all(|r| r.receipt.provider != unpaid)
    );
}

#[test]
fn a_provider_that_gives_everything_back_or_refuses_every_module_cannot_end_a_job() {
    let network = Network {
        drop_percent: 0,
        max_delay_ms: 5,
    };
    let behaviors = [
        Behavior::GivesBack,
        Behavior::Refuses,
        Behavior::Honest,
        Behavior::Honest,
    ];
    let mut sim = Sim::new(11, &behaviors, network, SchedulerConfig::default());
    sim.connect_all();
    let items = inputs(2_000);
    let (result, _) = sim.run(items.clone());
    check_outputs(result, &items);
}

#[test]
fn a_module_every_provider_refuses_fails_the_job_and_so_do_batches_every_provider_gives_back() {
    let network = Network {
        drop_percent: 0,
        max_delay_ms: 5,
    };
    let mut sim = Sim::new(
        12,
        &[Behavior::Refuses, Behavior::Refuses],
        network,
        SchedulerConfig::default(),
    );
    sim.connect_all();
    let (result, _) = sim.run(inputs(100));
    assert!(
        matches!(
            result,
            Err(JobFailure::Module(ModuleError::NotAGolemModule))
        ),
        "{result:?}"
    );
    let mut sim = Sim::new(
        13,
        &[Behavior::GivesBack, Behavior::GivesBack],
        network,
        SchedulerConfig::default(),
    );
    sim.connect_all();
    let (result, _) = sim.run(inputs(100));
    assert!(
        matches!(result, Err(JobFailure::Subtask { .. })),
        "{result:?}"
    );
}

#[test]
fn a_batch_given_back_is_not_stranded_when_the_providers_that_would_take_it_leave() {
    let network = Network {
        drop_percent: 0,
        max_delay_ms: 5,
    };
    // The first gives its first batches back, which go to the second; the second dies with
    // them. They must go back to the first (the round is over: no one else is left), not
    // wait for ever for a provider that would take them.
    let behaviors = [
        Behavior::GivesBackFirst(4),
        Behavior::DiesAt(Duration::from_millis(20)),
    ];
    let mut sim = Sim::new(15, &behaviors, network, SchedulerConfig::default());
    sim.connect_all();
    let items = inputs(2_000);
    let (result, _) = sim.run(items.clone());
    check_outputs(result, &items);
}

#[test]
fn outputs_over_the_jobs_limit_are_caught_even_when_signed() {
    let network = Network {
        drop_percent: 0,
        max_delay_ms: 5,
    };
    let behaviors = [Behavior::Bloats, Behavior::Honest, Behavior::Honest];
    let mut sim = Sim::new(14, &behaviors, network, SchedulerConfig::default());
    // The honest outputs are 8 bytes.
    sim.limits = Limits::default().output_bytes(8);
    sim.connect_all();
    let items = inputs(500);
    let (result, _) = sim.run(items.clone());
    let bloats = sim.providers[0].node;
    let output = result.as_ref().expect("the job finishes").clone();
    check_outputs(result, &items);
    assert_eq!(caught_nodes(&output), HashSet::from([bloats]));
}

/// Ten honest providers' worth of network, three of which lie as `cheats` say.
fn adversarial_sim(seed: u64, cheats: [Cheat; 3], verify: Verify) -> Sim {
    let network = Network {
        drop_percent: 0,
        max_delay_ms: 3,
    };
    let mut sim = Sim::new(
        seed,
        &[Behavior::Honest; 10],
        network,
        SchedulerConfig::default(),
    );
    // Cheaters at scattered places in the dispatch order.
    for (index, cheat) in [1, 4, 8].into_iter().zip(cheats) {
        sim.cheat(index, cheat);
    }
    sim.verify = verify;
    sim.connect_all();
    sim
}

/// Outputs that differ from the truth.
fn wrong_outputs(output: &JobOutput, inputs: &[Vec<u8>]) -> usize {
    output
        .outputs
        .iter()
        .zip(inputs)
        .enumerate()
        .filter(|(index, (output, input))| {
            output.bytes != expected_output(*index as u64, input) || output.fuel != 1
        })
        .count()
}

fn caught_nodes(output: &JobOutput) -> HashSet<NodeId> {
    output
        .report
        .caught
        .iter()
        .map(|caught| caught.node)
        .collect()
}

fn cheater_nodes(sim: &Sim) -> HashSet<NodeId> {
    sim.providers
        .iter()
        .filter(|provider| provider.cheater.is_some())
        .map(|provider| provider.node)
        .collect()
}

use crate::adversarial::{Lie, When};

fn cheat(lie: Lie, when: When) -> Cheat {
    Cheat { lie, when }
}

#[test]
fn redundancy_leaves_no_wrong_result_with_thirty_percent_of_cheaters() {
    let items = inputs(10_000);
    for (seed, when) in [
        (1, When::Always),
        (2, When::Sometimes { percent: 10 }),
        (3, When::AfterTrust { honest: 200 }),
    ] {
        let cheats = [0, 1, 2].map(|group| cheat(Lie::WrongOutput { group }, when));
        let mut sim = adversarial_sim(seed, cheats, Verify::redundant(2));
        let (result, _) = sim.run(items.clone());
        let output = result.expect("the job completes");
        let wrong = wrong_outputs(&output, &items);
        let report = &output.report;
        println!(
            "redundancy, cheaters {when:?}: {wrong} wrong of {}, caught {}, overhead {:.1} %",
            items.len(),
            report.caught.len(),
            report.overhead() * 100.0
        );
        assert_eq!(wrong, 0);
        assert_eq!(
            caught_nodes(&output),
            cheater_nodes(&sim),
            "every cheater named"
        );
        assert!(report.overhead() >= 1.0, "two copies of everything");
        // Receipts of two agreeing providers for every subtask, none from a cheater.
        let paid: u64 = report
            .receipts
            .iter()
            .map(|r| r.receipt.entries.len() as u64)
            .sum();
        assert_eq!(paid, 2 * items.len() as u64);
        let cheaters = cheater_nodes(&sim);
        assert!(
            report
                .receipts
                .iter()
                .all(|r| !cheaters.contains(&r.receipt.provider))
        );
    }
}

#[test]
fn spot_checks_catch_every_kind_of_cheater_and_stay_within_their_bound() {
    let items = inputs(10_000);
    let spot = crate::verify::SpotCheck::default();
    let line_ups = [
        // Alone: always, sometimes, once trusted.
        [
            cheat(Lie::WrongOutput { group: 0 }, When::Always),
            cheat(
                Lie::WrongOutput { group: 1 },
                When::Sometimes { percent: 10 },
            ),
            cheat(
                Lie::WrongOutput { group: 2 },
                When::AfterTrust { honest: 300 },
            ),
        ],
        // A colluding pair, and a provider that bills double fuel.
        [
            cheat(
                Lie::WrongOutput { group: 5 },
                When::Sometimes { percent: 20 },
            ),
            cheat(
                Lie::WrongOutput { group: 5 },
                When::Sometimes { percent: 20 },
            ),
            cheat(Lie::WrongFuel, When::Sometimes { percent: 5 }),
        ],
        // Signed garbage, and cheaters that lie rarely.
        [
            cheat(Lie::BadSignature, When::Sometimes { percent: 30 }),
            cheat(
                Lie::WrongOutput { group: 3 },
                When::Sometimes { percent: 2 },
            ),
            cheat(Lie::WrongFuel, When::AfterTrust { honest: 500 }),
        ],
        // Rare liars, and one that waits until the end of its share: the ones most likely to
        // slip through.
        [
            cheat(
                Lie::WrongOutput { group: 0 },
                When::Sometimes { percent: 1 },
            ),
            cheat(
                Lie::WrongOutput { group: 1 },
                When::Sometimes { percent: 1 },
            ),
            cheat(
                Lie::WrongOutput { group: 2 },
                When::AfterTrust { honest: 950 },
            ),
        ],
    ];
    let mut runs = 0;
    let mut total_wrong = 0;
    for (line_up, cheats) in line_ups.into_iter().enumerate() {
        for seed in 0..4 {
            let mut sim = adversarial_sim(10 + seed, cheats, Verify::SpotCheck(spot));
            let (result, _) = sim.run(items.clone());
            let output = result.expect("the job completes");
            let wrong = wrong_outputs(&output, &items);
            let caught = caught_nodes(&output);
            let cheaters = cheater_nodes(&sim);
            println!(
                "spot checks, line-up {line_up} seed {seed}: {wrong} wrong of {}, caught {} of {}, \
                 re-ran {:.1} %, recomputed {}",
                items.len(),
                caught.len(),
                cheaters.len(),
                output.report.rerun_fraction() * 100.0,
                output.report.recomputed,
            );
            assert!(caught.is_subset(&cheaters), "an honest provider was caught");
            if caught == cheaters {
                assert_eq!(
                    wrong, 0,
                    "every cheater was caught, so no wrong result stands"
                );
            }
            runs += 1;
            total_wrong += wrong;
        }
    }
    let measured = total_wrong as f64 / (runs * 3) as f64;
    let bound = spot.expected_wrong_bound();
    println!(
        "spot checks: {measured:.2} wrong results per cheater per job measured, {bound:.2} bound"
    );
    assert!(measured <= bound, "{measured} > {bound}");
}

#[test]
fn receipts_that_do_not_verify_are_rejected_even_without_verification() {
    let items = inputs(3_000);
    let cheats = [cheat(Lie::BadSignature, When::Always); 3];
    let mut sim = adversarial_sim(5, cheats, Verify::None);
    let (result, _) = sim.run(items.clone());
    let output = result.expect("the job completes");
    assert_eq!(wrong_outputs(&output, &items), 0);
    assert_eq!(caught_nodes(&output), cheater_nodes(&sim));
    assert!(
        output
            .report
            .receipts
            .iter()
            .all(|r| r.receipt.verify().is_ok())
    );
    // The cheaters are banned: connecting again schedules nothing on them.
    let cheaters = cheater_nodes(&sim);
    for index in [1, 4, 8] {
        assert!(
            sim.requestor
                .reputation()
                .is_banned(&sim.providers[index].node)
        );
    }
    let now = sim.now();
    let slot = free_slot();
    for node in cheaters {
        assert!(!sim.requestor.add_provider(node, slot, now));
    }
}

#[test]
fn a_custom_check_catches_cheaters_on_every_result() {
    let items = inputs(2_000);
    let cheats =
        [0, 1, 2].map(|group| cheat(Lie::WrongOutput { group }, When::Sometimes { percent: 3 }));
    // The simulation's driver checks against the true outputs; the function itself is not
    // called by the session.
    let verify = Verify::custom(|_, _, _| Ok(()));
    let mut sim = adversarial_sim(6, cheats, verify);
    let (result, _) = sim.run(items.clone());
    let output = result.expect("the job completes");
    assert_eq!(wrong_outputs(&output, &items), 0);
    assert_eq!(caught_nodes(&output), cheater_nodes(&sim));
    assert!(output.report.custom_checks as usize >= items.len());
    assert_eq!(output.report.reruns, 0);
}

#[test]
fn failures_are_confirmed_by_a_re_run_before_they_fail_a_verified_job() {
    let network = Network {
        drop_percent: 0,
        max_delay_ms: 5,
    };
    let mut sim = Sim::new(
        4,
        &[Behavior::Honest; 3],
        network,
        SchedulerConfig::default(),
    );
    sim.verify = Verify::spot_check();
    sim.poisoned.extend([2_500, 777]);
    sim.connect_all();
    let (result, _) = sim.run(inputs(4_000));
    match result {
        Err(JobFailure::Subtask { index, .. }) => assert_eq!(index, 777),
        other => panic!("expected subtask 777 to fail the job, got {other:?}"),
    }
}

#[test]
fn providers_with_longer_records_are_served_first() {
    let network = Network {
        drop_percent: 0,
        max_delay_ms: 1,
    };
    let mut sim = Sim::new(
        7,
        &[Behavior::Honest; 4],
        network,
        SchedulerConfig::default(),
    );
    let trusted = sim.providers[2].node;
    sim.requestor.reputation_mut().accepted(trusted, 10_000);
    for index in 0..4 {
        sim.connect(index, 1);
    }
    // One subtask: one batch, for one provider.
    let (result, events) = sim.run(inputs(1));
    let output = result.expect("the job completes");
    assert!(events.iter().any(|e| matches!(e, Event::Finished { .. })));
    assert_eq!(output.report.receipts.len(), 1);
    assert_eq!(output.report.receipts[0].receipt.provider, trusted);
}

#[test]
fn an_output_or_fuel_figure_changed_after_signing_is_rejected() {
    for tamper in [
        (|output: &mut Output| output.bytes[0] ^= 1) as fn(&mut Output),
        |output: &mut Output| output.fuel += 1,
    ] {
        let key = NodeKey::from_secret([9; 32]);
        let node = key.node_id();
        let now = Instant::now();
        let mut session = RequestorSession::new(SchedulerConfig::default());
        let slot = free_slot();
        assert!(session.add_provider(node, slot, now));
        let spec = plain_spec();
        session.submit(spec, vec![Input::Inline(vec![7])], Verify::None, now);
        let Some((_, Transmit::Request(Request::Run(batch)))) = session.poll_transmit() else {
            panic!("the batch is sent");
        };
        let mut outputs = vec![Output {
            bytes: vec![42],
            fuel: 5,
        }];
        let signature = Receipt::for_batch(&key, &batch, &outputs).signature;
        tamper(&mut outputs[0]);
        let outcome = Outcome::Outputs { outputs, signature };
        let done = Reply::Done {
            batch: batch.id,
            outcome,
        };
        session.handle_reply(node, done, now);
        let events: Vec<Event> = std::iter::from_fn(|| session.poll_event()).collect();
        assert!(
            events.iter().any(|event| matches!(
                event,
                Event::Caught(caught) if caught.node == node && caught.reason.contains("does not verify")
            )),
            "{events:?}"
        );
        assert!(!events.iter().any(|e| matches!(e, Event::Finished { .. })));
        assert!(session.reputation().is_banned(&node));
    }
}

/// An inbox flood (finding 15 of the attack review): a reply that changes nothing (the result
/// of a batch its provider does not hold, a request for blobs of a batch that is over) costs the
/// requestor no pass over its providers, so a provider cannot make it work by sending them.
#[test]
fn stale_replies_cost_no_pass_over_the_providers() {
    let node = NodeKey::from_secret([9; 32]).node_id();
    let now = Instant::now();
    let mut session = RequestorSession::new(SchedulerConfig::default());
    let slot = free_slot();
    assert!(session.add_provider(node, slot, now));
    let spec = plain_spec();
    session.submit(spec, vec![Input::Inline(vec![7])], Verify::None, now);
    let Some((_, Transmit::Request(Request::Run(batch)))) = session.poll_transmit() else {
        panic!("the batch is sent");
    };
    let passes = session.passes();
    for stale in batch.id + 1..batch.id + 10_001 {
        let outcome = Outcome::Retry("busy".into());
        session.handle_reply(
            node,
            Reply::Done {
                batch: stale,
                outcome,
            },
            now,
        );
        let need = Reply::Need {
            batch: stale,
            blobs: vec![BlobId::of(b"module")],
        };
        session.handle_reply(node, need, now);
    }
    assert_eq!(session.passes(), passes, "stale replies made passes");
    assert!(session.poll_transmit().is_none());
    // An answer to the batch it holds changes something.
    let outcome = Outcome::Retry("busy".into());
    session.handle_reply(
        node,
        Reply::Done {
            batch: batch.id,
            outcome,
        },
        now,
    );
    assert!(session.passes() > passes);
}

/// Finding 6 of the review of the attack fixes: a provider answers only for batches sent to it.
/// A forged refusal from one that was never sent the batch would, with the holder's own, end
/// the job as refused by everyone.
#[test]
fn answers_to_batches_a_provider_was_never_sent_are_ignored() {
    let now = Instant::now();
    let mut session = RequestorSession::new(SchedulerConfig::default());
    let nodes = [9, 10].map(|seed| NodeKey::from_secret([seed; 32]).node_id());
    for node in nodes {
        let slot = free_slot();
        assert!(session.add_provider(node, slot, now));
    }
    let spec = plain_spec();
    session.submit(spec, vec![Input::Inline(vec![7])], Verify::None, now);
    let Some((holder, Transmit::Request(Request::Run(batch)))) = session.poll_transmit() else {
        panic!("the batch is sent");
    };
    let outsider = nodes.into_iter().find(|node| *node != holder).expect("two");
    let refused = |batch| Reply::Done {
        batch,
        outcome: Outcome::Refused(ModuleError::NotAGolemModule),
    };
    let passes = session.passes();
    session.handle_reply(outsider, refused(batch.id), now);
    let retry = Reply::Done {
        batch: batch.id,
        outcome: Outcome::Retry("busy".into()),
    };
    session.handle_reply(outsider, retry, now);
    assert_eq!(
        session.passes(),
        passes,
        "the outsider's answers changed something"
    );
    // The holder refuses: the outsider has not, so the batch goes to it.
    session.handle_reply(holder, refused(batch.id), now);
    while let Some(event) = session.poll_event() {
        assert!(!matches!(event, Event::Finished { .. }), "{event:?}");
    }
    let sent = session.poll_transmit();
    assert!(
        matches!(&sent, Some((node, Transmit::Request(Request::Run(again))))
            if *node == outsider && again.id == batch.id),
        "{sent:?}"
    );
}

#[test]
fn a_budget_is_never_exceeded_and_running_out_keeps_the_results_so_far() {
    for (seed, verify) in [(1, Verify::None), (2, Verify::redundant(2))] {
        let network = Network {
            drop_percent: 2,
            max_delay_ms: 20,
        };
        let config = SchedulerConfig {
            min_deadline: Duration::from_millis(300),
            first_deadline: Duration::from_secs(1),
            max_attempts: 50,
            ..SchedulerConfig::default()
        };
        let mut sim = Sim::new(seed, &[Behavior::Honest; 4], network, config);
        // A subtask burns 1 fuel of a limit of 10; at 10⁶ per billion fuel it costs 10⁶ nano,
        // and 10⁷ is held while it runs. One unit (10⁹ nano) pays for at most 1,000 results.
        sim.price = 1_000_000;
        sim.limits = Limits::default().fuel(10);
        sim.budget = Some(1);
        sim.verify = verify.clone();
        sim.connect_all();
        let items = inputs(3_000);
        let (result, _) = sim.run(items.clone());
        let Err(JobFailure::Budget {
            budget,
            spent_nano,
            outputs,
            report,
        }) = result
        else {
            panic!("expected the budget to run out, got {result:?}");
        };
        let settled = outputs.iter().filter(|output| output.is_some()).count();
        println!("budget 1 unit, {verify:?}: {settled} of 3000 settled, {spent_nano} nano spent");
        assert_eq!(budget, 1);
        assert!(
            spent_nano <= NANO,
            "{spent_nano} spent of a budget of {NANO}"
        );
        let per_result = 1_000_000 * verify.copies() as u128;
        assert_eq!(
            spent_nano,
            settled as u128 * per_result,
            "every accepted copy is paid"
        );
        let paid: u64 = report
            .receipts
            .iter()
            .map(|r| r.receipt.entries.len() as u64)
            .sum();
        assert_eq!(
            paid,
            (settled * verify.copies()) as u64,
            "receipts of what was accepted"
        );
        assert!(settled >= 300, "the budget bought too little: {settled}");
        for (index, output) in outputs.iter().enumerate() {
            if let Some(output) = output {
                assert_eq!(output.bytes, expected_output(index as u64, &items[index]));
            }
        }
        // With room for everything, the job completes and costs what its receipts say.
        sim.budget = Some(10);
        let items = inputs(2_000);
        let (result, _) = sim.run(items.clone());
        let output = result.expect("the job completes within its budget");
        let fuel: u64 = output
            .report
            .receipts
            .iter()
            .map(|r| r.receipt.fuel())
            .sum();
        assert_eq!(fuel as usize, items.len() * verify.copies());
    }
}

/// A provider that comes back at a higher price (finding 14 of the attack review) is paid it
/// for the work it does after, not for the work the budget counted at the old price: each
/// receipt carries the price its result was counted at.
#[test]
fn a_provider_back_at_a_higher_price_is_paid_it_for_new_work_only() {
    let network = Network {
        drop_percent: 0,
        max_delay_ms: 5,
    };
    let mut sim = Sim::new(
        3,
        &[Behavior::Honest; 2],
        network,
        SchedulerConfig::default(),
    );
    let (old, new) = (1_000_000, 1_000_000_000);
    sim.price = old;
    sim.limits = Limits::default().fuel(10);
    sim.budget = Some(10_000);
    sim.connect_all();
    let items = inputs(2_000);
    let swapper = sim.providers[0].node;
    let mut steps = 0;
    let (result, _) = sim.run_with(items, |sim| {
        steps += 1;
        if steps == 100 {
            let now = sim.now();
            sim.requestor.remove_provider(swapper, now);
            sim.price = new;
            sim.connect(0, 2);
        }
    });
    let output = result.expect("the job completes");
    assert!(
        steps > 100,
        "the job ended before the swap, after {steps} steps"
    );
    let prices = |node: NodeId| -> BTreeSet<u64> {
        output
            .report
            .receipts
            .iter()
            .filter(|r| r.receipt.provider == node)
            .map(|r| r.price_per_gfuel)
            .collect()
    };
    assert_eq!(prices(swapper), BTreeSet::from([old, new]));
    assert_eq!(prices(sim.providers[1].node), BTreeSet::from([old]));
    let paid: u128 = output.report.receipts.iter().map(Priced::nano_amount).sum();
    assert!(
        paid <= 10_000 * NANO,
        "{paid} paid of a budget of 10⁴ units"
    );
}

/// Sybils (finding 12 of the attack review): copies that must agree go to providers on distinct
/// subnets, so an operator with many node ids on one /24 supplies one copy of a batch at most;
/// providers seen only through a relay, which could be on any of them, supply none.
#[test]
fn copies_that_must_agree_go_to_distinct_subnets() {
    let network = Network {
        drop_percent: 0,
        max_delay_ms: 5,
    };
    let mut sim = Sim::new(
        4,
        &[Behavior::Honest; 6],
        network,
        SchedulerConfig::default(),
    );
    let at = |addr: &str| Subnet::of(Some(addr.parse().expect("an address")));
    let subnets = [
        at("203.0.113.5:1"),
        at("203.0.113.77:1"),
        at("203.0.113.200:1"),
        at("198.51.100.1:1"),
        Subnet::of(None),
        Subnet::of(None),
    ];
    for (provider, subnet) in sim.providers.iter_mut().zip(subnets) {
        provider.subnet = subnet;
    }
    sim.verify = Verify::redundant(2);
    sim.connect_all();
    let (result, _) = sim.run(inputs(600));
    let output = result.expect("the job completes");
    let subnet_of = |node: NodeId| subnets[sim.provider_index(node)];
    let mut per_batch: HashMap<u64, Vec<Subnet>> = HashMap::new();
    for priced in &output.report.receipts {
        let first = priced.receipt.entries[0].index;
        per_batch
            .entry(first)
            .or_default()
            .push(subnet_of(priced.receipt.provider));
    }
    assert!(!per_batch.is_empty());
    for (first, subnets) in &per_batch {
        assert_eq!(subnets.len(), 2, "batch at {first}: {subnets:?}");
        assert_ne!(subnets[0], subnets[1], "batch at {first}: one subnet twice");
    }
    // Each copy has one of two subnets to go to: the /24 of three providers and the other
    // address. The relayed pair could be anywhere, on the /24 too: they take none.
    let used: HashSet<Subnet> = per_batch.values().flatten().copied().collect();
    assert_eq!(used, HashSet::from([subnets[0], subnets[3]]));
}

#[test]
fn subnets_are_a_public_ipv4_24_or_ipv6_48_and_one_machine_on_a_private_network() {
    let at = |addr: &str| Subnet::of(Some(addr.parse().expect("an address")));
    assert_eq!(at("203.0.113.5:1"), at("203.0.113.250:9"));
    assert_ne!(at("203.0.113.5:1"), at("203.0.114.5:1"));
    assert_eq!(at("[2001:db8:1:2::5]:1"), at("[2001:db8:1:ffff::9]:1"));
    assert_ne!(at("[2001:db8:1::5]:1"), at("[2001:db8:2::5]:1"));
    assert_eq!(
        at("[::ffff:203.0.113.5]:1"),
        at("203.0.113.9:1"),
        "IPv4-mapped"
    );
    for (a, b) in [
        ("192.168.1.2:1", "192.168.1.3:1"),
        ("10.0.0.2:1", "10.0.0.3:1"),
        ("100.64.0.2:1", "100.64.0.3:1"),
        ("[fd00::2]:1", "[fd00::3]:1"),
    ] {
        assert_ne!(at(a), at(b), "{a} and {b} are two machines");
    }
    assert_eq!(at("127.0.0.1:1"), Subnet::Local);
    assert_eq!(at("[::1]:1"), Subnet::Local);
    assert_eq!(Subnet::of(None), Subnet::Unseen);
}

/// Everything a run of `sim` showed: the job's result, every event in order, the virtual time
/// it ended at, and the blobs sent to each provider.
fn transcript(sim: &Sim, result: &Result<JobOutput, JobFailure>, events: &[Event]) -> String {
    let mut blobs: Vec<_> = sim.blobs_sent.iter().collect();
    blobs.sort();
    format!(
        "{result:?}\n{events:?}\nended at {:?}\nblobs {blobs:?}",
        sim.time
    )
}

/// Runs that cover the scheduler's paths: a lossy network with hanging and dying providers,
/// cheaters under redundancy and under spot checks, and a budget that runs out.
fn pinned_runs() -> Vec<(&'static str, String)> {
    let mut runs = Vec::new();
    let lossy = Network {
        drop_percent: 3,
        max_delay_ms: 40,
    };
    let behaviors = [
        Behavior::Honest,
        Behavior::Honest,
        Behavior::Hangs,
        Behavior::DiesAt(Duration::from_millis(100)),
        Behavior::Honest,
        Behavior::DiesAt(Duration::from_millis(400)),
    ];
    let config = SchedulerConfig {
        min_deadline: Duration::from_millis(500),
        first_deadline: Duration::from_secs(2),
        max_attempts: 50,
        ..SchedulerConfig::default()
    };
    let mut sim = Sim::new(7, &behaviors, lossy, config.clone());
    sim.connect_all();
    let (result, events) = sim.run(inputs(2_000));
    runs.push(("lossy", transcript(&sim, &result, &events)));

    for (name, verify) in [
        ("redundant", Verify::redundant(2)),
        (
            "spot checks",
            Verify::SpotCheck(crate::verify::SpotCheck::default()),
        ),
    ] {
        let cheats = [
            cheat(Lie::WrongOutput { group: 0 }, When::Always),
            cheat(
                Lie::WrongOutput { group: 1 },
                When::Sometimes { percent: 10 },
            ),
            cheat(
                Lie::WrongOutput { group: 2 },
                When::AfterTrust { honest: 50 },
            ),
        ];
        let mut sim = adversarial_sim(3, cheats, verify);
        let (result, events) = sim.run(inputs(2_000));
        runs.push((name, transcript(&sim, &result, &events)));
    }

    let mut sim = Sim::new(1, &[Behavior::Honest; 4], lossy, config);
    sim.price = 1_000_000;
    sim.limits = Limits::default().fuel(10);
    sim.budget = Some(1);
    sim.connect_all();
    let (result, events) = sim.run(inputs(3_000));
    runs.push(("budget", transcript(&sim, &result, &events)));
    runs
}

/// The transcripts of the pinned runs, hashed, as `transcripts.txt` keeps them: a change
/// to the scheduler that is meant to keep its behaviour must keep these bytes.
const PINNED_TRANSCRIPTS: &str = include_str!("transcripts.txt");

#[test]
fn a_fixed_seed_gives_the_same_run_every_time_and_the_pinned_one() {
    let first = pinned_runs();
    let second = pinned_runs();
    let mut seen = String::new();
    for ((name, one), (_, two)) in first.iter().zip(&second) {
        assert!(
            one == two,
            "run `{name}` differed between two runs with the same seed"
        );
        seen.push_str(&format!(
            "{name}: {}\n",
            blake3::hash(one.as_bytes()).to_hex()
        ));
    }
    assert_eq!(
        seen, PINNED_TRANSCRIPTS,
        "the simulation's runs changed; if that is meant, pin the new hashes in \
         transcripts.txt"
    );
}
