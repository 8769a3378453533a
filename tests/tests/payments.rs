//! Payment hooks against real providers over QUIC: accepted receipts are priced at each
//! provider's rate and recorded once in the embedded ledger; a cheater's are never recorded.

use std::sync::Arc;

use golem::blocking::block_on;
use golem::{Golem, Ledger, Verify};
use golem_fixture::grind;
use golem_runtime::adversarial::{Cheat, Lie, Network, When};
use golem_runtime::payment::NANO;
use golem_tests::{join_all, owed_in_all};

#[test]
fn accepted_receipts_are_owed_at_each_providers_rate_and_a_cheater_is_owed_nothing() {
    let network = Network::start(&[
        None,
        None,
        Some(Cheat {
            lie: Lie::WrongOutput { group: 0 },
            when: When::Always,
        }),
    ])
    .expect("providers");
    let dir = std::env::temp_dir().join(format!("golem-payments-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("ledger.redb");
    let ledger = Arc::new(Ledger::open(&path).expect("ledger"));
    let golem = join_all(&network, Golem::builder().payments(ledger.clone()));
    let prices: std::collections::HashMap<_, _> = golem
        .provider_list()
        .into_iter()
        .map(|info| (info.node, info.offer.price_per_gfuel))
        .collect();

    let items: Vec<(u64, u32)> = (0..2_000).map(|i| (i, 500)).collect();
    let job = golem
        .par_for(items.clone(), grind)
        .verify(Verify::spot_check())
        .with_report();
    let (outputs, report) = block_on(job).expect("the job completes");
    assert!(
        outputs
            .iter()
            .zip(&items)
            .all(|(out, item)| *out == grind(*item))
    );
    // The cheater is caught if any result of it was accepted before the job ended (the honest
    // providers may finish everything while it compiles); either way it is owed nothing.
    let caught: std::collections::HashSet<_> = report.caught.iter().map(|c| c.node).collect();
    assert!(caught.is_subset(network.cheaters()), "{caught:?}");
    assert!(
        report
            .receipts
            .iter()
            .all(|r| !network.cheaters().contains(&r.receipt.provider))
    );

    // What the ledger owes each provider is exactly the fuel of its accepted receipts at its rate.
    let mut expected = std::collections::HashMap::new();
    for priced in &report.receipts {
        let receipt = &priced.receipt;
        assert_eq!(priced.price_per_gfuel, prices[&receipt.provider]);
        let nano = u128::from(receipt.fuel()) * u128::from(prices[&receipt.provider]);
        *expected.entry(receipt.provider).or_insert(0u128) += nano;
    }
    let owed: std::collections::HashMap<_, _> = ledger.owed().expect("reads").into_iter().collect();
    assert_eq!(owed, expected);
    assert!(owed.keys().all(|node| !network.cheaters().contains(node)));
    assert!(owed.values().all(|nano| *nano > 0), "{owed:?}");
    drop(golem);

    // The ledger survives a restart, and handing the same receipts in again owes nothing more.
    drop(ledger);
    let ledger = Ledger::open(&path).expect("reopens");
    let again: std::collections::HashMap<_, _> =
        ledger.owed().expect("reads").into_iter().collect();
    assert_eq!(again, expected);
    assert_eq!(ledger.record(&report.receipts), Ok(0));
    let settled: u128 = ledger
        .begin_settlement()
        .expect("settles")
        .map_or(0, |s| s.payments.iter().map(|p| p.amount).sum());
    assert_eq!(
        settled,
        expected.values().map(|nano| nano / NANO).sum::<u128>()
    );
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn a_budget_stops_a_job_within_it_and_keeps_and_pays_the_results_so_far() {
    let network = Network::start(&[None, None, None]).expect("providers");
    let ledger = Arc::new(Ledger::in_memory().expect("ledger"));
    let golem = join_all(&network, Golem::builder().payments(ledger.clone()));
    // grind((i, 20_000)) burns about 250,000 fuel; a limit of 400,000 bounds the worst case
    // at 400,000 × 3,000 / 10⁹ = 1.2 units a subtask at the dearest provider.
    let items: Vec<(u64, u32)> = (0..2_000).map(|i| (i, 20_000)).collect();
    let budget = 300;
    let limits = golem.limits().clone().fuel(400_000);
    let error = golem
        .par_for(items.clone(), grind)
        .limits(limits)
        .budget(budget)
        .run()
        .expect_err("the budget runs out");
    let golem::Error::Budget {
        budget: reported,
        spent_nano,
        partial,
        ..
    } = &error
    else {
        panic!("expected Error::Budget, got {error}");
    };
    eprintln!("{error}");
    assert_eq!(*reported, budget);
    assert!(*spent_nano <= budget * NANO, "spent {spent_nano}");
    let outputs = partial.decode::<u64>();
    assert_eq!(outputs.len(), items.len());
    let settled = outputs.iter().flatten().count();
    assert!(settled > 100 && settled < items.len(), "{settled} settled");
    for (output, item) in outputs.iter().zip(&items) {
        if let Some(output) = output {
            assert_eq!(*output, grind(*item));
        }
    }
    // What was accepted is owed, and exactly what the job says it spent.
    let owed = owed_in_all(&ledger);
    assert_eq!(owed, *spent_nano);
}
