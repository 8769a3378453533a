//! A requestor for the ledger crash test (`tests/tests/ledger_crash.rs`), which kills it with
//! SIGKILL at random points.
//!
//! `ledger_child LEDGER PAYMENTS`: resolves settlements left pending by an earlier run against
//! the payments log (the stand-in for a payment backend: one line per settlement it carried
//! out, written with one write and synced), then runs jobs on three priced providers on
//! 127.0.0.1 forever, recording each job's receipts in the ledger and settling after each job.
//! After each job it prints `job RECEIPTS` once the job's result is back, so the test knows
//! those receipts were accepted.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use golem::{Golem, Ledger};
use golem_fixture::grind;
use golem_runtime::adversarial::Network;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(ledger), Some(payments)) = (args.next(), args.next()) else {
        eprintln!("usage: ledger_child LEDGER PAYMENTS");
        std::process::exit(2);
    };
    let ledger = Arc::new(Ledger::open(Path::new(&ledger)).expect("ledger"));
    let payments = Path::new(&payments);
    // A payment cut short by the kill is no payment: drop a torn last line.
    let log = std::fs::read_to_string(payments).unwrap_or_default();
    let whole = log.rfind('\n').map_or(0, |end| end + 1);
    if whole < log.len() {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(payments)
            .expect("payments log");
        file.set_len(whole as u64).expect("truncate");
    }
    let paid: HashSet<u64> = log[..whole]
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1)?.parse().ok())
        .collect();
    for settlement in ledger.pending().expect("pending") {
        let done = paid.contains(&settlement.id);
        ledger
            .finish_settlement(settlement.id, done)
            .expect("resolve");
    }
    if std::env::var_os("LEDGER_CHILD_RESOLVE_ONLY").is_some() {
        return;
    }

    let network = Network::start(&[None, None, None]).expect("providers");
    let golem = golem_tests::join_all(&network, Golem::builder().payments(ledger.clone()));
    let items: Vec<(u64, u32)> = (0..300).map(|i| (i, 2_000)).collect();
    loop {
        let job = golem.par_for(items.clone(), grind).with_report();
        let (_, report) = golem::blocking::block_on(job).expect("the job completes");
        println!("job {}", report.receipts.len());
        std::io::stdout().flush().expect("stdout");
        if let Some(settlement) = ledger.begin_settlement().expect("settle") {
            let mut line = format!("paid {}", settlement.id);
            for payment in &settlement.payments {
                line.push_str(&format!(" {}", payment.amount));
            }
            line.push('\n');
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(payments)
                .expect("payments log");
            file.write_all(line.as_bytes()).expect("pay");
            file.sync_all().expect("sync");
            ledger
                .finish_settlement(settlement.id, true)
                .expect("finish");
        }
    }
}
