//! Prints what verification costs, per strategy, as reputations settle: ten providers on
//! 127.0.0.1, three of which cheat (30 %), and a run of jobs on one requestor, so the cheaters
//! caught in the first job are banned from the next and honest providers build records.
//!
//! Run: `cargo bench -p golem-benches --bench verify`
//!
//! Columns: wrong results left in the output; cheaters caught in the job; subtasks the
//! requestor re-ran in its sandbox, results passed to the user's check (native code, whose cost
//! the user sets), and results recomputed because their provider was caught, as fractions of
//! the job; extra compute = (every result providers returned + re-runs − subtasks) / subtasks.

use std::time::{Duration, Instant};

use golem::{Golem, Verify};
use golem_fixture::grind;
use golem_runtime::adversarial::{Cheat, Lie, Network, When};

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing and expects speed.
    let quick = !std::env::args().any(|arg| arg == "--bench");
    let (jobs, subtasks) = if quick { (2, 1_000) } else { (6, 10_000) };

    let cheat = |lie, when| Some(Cheat { lie, when });
    let mut line_up = vec![None; 10];
    line_up[1] = cheat(
        Lie::WrongOutput { group: 0 },
        When::Sometimes { percent: 10 },
    );
    line_up[4] = cheat(Lie::WrongFuel, When::AfterTrust { honest: 300 });
    line_up[8] = cheat(Lie::BadSignature, When::Sometimes { percent: 5 });
    let network = Network::start(&line_up).expect("providers");
    let items: Vec<(u64, u32)> = (0..subtasks).map(|i| (i, 200)).collect();
    let truth: Vec<u64> = items.iter().map(|item| grind(*item)).collect();

    println!(
        "{subtasks} subtasks per job, 10 providers of which 3 cheat (wrong outputs 10 % of the \
         time, double fuel once trusted, bad signatures 5 % of the time)\n"
    );
    println!(
        "| strategy | job | wrong | caught | re-run | user checks | recomputed | extra compute | time |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let strategies: [(&str, Verify); 4] = [
        ("none", Verify::None),
        ("redundant(2)", Verify::redundant(2)),
        ("spot check", Verify::spot_check()),
        ("custom (native recompute)", Verify::None),
    ];
    for (name, verify) in strategies {
        let mut builder = Golem::builder()
            .providers(0)
            .min_providers(line_up.len())
            .wait(Duration::from_secs(20));
        for addr in network.addresses() {
            builder = builder.join(addr);
        }
        let golem = golem::blocking::block_on(builder.build()).expect("providers found");
        for job in 1..=jobs {
            let started = Instant::now();
            let call = golem.par_for(items.clone(), grind);
            let call = if name.starts_with("custom") {
                call.verify_with(|_, input, output| {
                    (grind(*input) == *output)
                        .then_some(())
                        .ok_or_else(|| "not the grind of its input".to_owned())
                })
            } else {
                call.verify(verify.clone())
            };
            let (outputs, report) =
                golem::blocking::block_on(call.with_report()).expect("the job completes");
            let wrong = outputs.iter().zip(&truth).filter(|(a, b)| a != b).count();
            let percent = |count: u64| 100.0 * count as f64 / subtasks as f64;
            println!(
                "| {name} | {job} | {wrong} | {} | {:.1} % | {:.0} % | {:.1} % | {:.1} % | {:.0} ms |",
                report.caught.len(),
                percent(report.reruns),
                percent(report.custom_checks),
                percent(report.recomputed),
                report.overhead() * 100.0,
                started.elapsed().as_secs_f64() * 1e3,
            );
        }
    }
    println!(
        "\nBOINC for reference: plain replication spends at least 50 %, its adaptive \
         replication aims at 5–10 %."
    );
}
