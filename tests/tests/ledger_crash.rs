//! The ledger against SIGKILL: a requestor process (`ledger_child`) runs priced jobs and
//! settles after each, and is killed at random points, again and again. Afterwards no accepted
//! receipt is missing from the ledger, no settlement was paid twice, and everything recorded is
//! either paid or still owed, to the unit.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use golem::Ledger;
use golem_runtime::payment::NANO;
use golem_tests::owed_in_all;

#[test]
fn kill_9_at_random_points_loses_no_receipt_and_pays_none_twice() {
    let dir = std::env::temp_dir().join(format!("golem-ledger-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let ledger = dir.join("ledger.redb");
    let payments = dir.join("payments.log");
    let child = env!("CARGO_BIN_EXE_ledger_child");

    // splitmix64 from the clock: different kill points on every run, printed to reproduce.
    let mut state = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |since| since.as_nanos() as u64);
    eprintln!("kill schedule seed {state}");
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };

    let mut reported = 0u64;
    let mut kills = 0;
    let started = Instant::now();
    while kills < 8 && started.elapsed() < Duration::from_secs(240) {
        let mut process = Command::new(child)
            .arg(&ledger)
            .arg(&payments)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the child starts");
        let stdout = process.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|line| line.strip_prefix("job ")?.parse::<u64>().ok())
                .sum::<u64>()
        });
        // Let it run one to four seconds: through start-up, jobs, records and settlements.
        let wait = Duration::from_millis(1_000 + next() % 3_000);
        std::thread::sleep(wait);
        process.kill().expect("SIGKILL");
        process.wait().expect("reaped");
        reported += reader.join().expect("reader");
        kills += 1;
    }
    // A last run only resolves what the last kill left pending.
    let status = Command::new(child)
        .arg(&ledger)
        .arg(&payments)
        .env("LEDGER_CHILD_RESOLVE_ONLY", "1")
        .status()
        .expect("the child runs");
    assert!(status.success());

    let ledger = Ledger::open(&ledger).expect("ledger");
    assert!(ledger.pending().expect("reads").is_empty());
    let (recorded, recorded_nano) = ledger.recorded().expect("reads");
    let owed = owed_in_all(&ledger);
    let log = std::fs::read_to_string(&payments).unwrap_or_default();
    let mut ids = std::collections::HashSet::new();
    let mut paid = 0u128;
    for line in log.lines() {
        let mut fields = line.split_whitespace().skip(1);
        let id: u64 = fields.next().and_then(|id| id.parse().ok()).expect("an id");
        assert!(ids.insert(id), "settlement {id} paid twice");
        paid += fields
            .map(|amount| amount.parse::<u128>().expect("an amount"))
            .sum::<u128>();
    }
    eprintln!(
        "{kills} kills: {reported} receipts reported accepted, {recorded} recorded, {} settlements \
         paid {paid} units, {owed} nano-units still owed",
        ids.len()
    );
    assert!(reported > 0, "no job finished between kills");
    assert!(
        recorded >= reported,
        "an accepted receipt is missing from the ledger"
    );
    assert_eq!(paid * NANO + owed, recorded_nano, "paid + owed ≠ recorded");
    std::fs::remove_dir_all(&dir).expect("clean up");
}
