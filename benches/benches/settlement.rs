//! Gas of paying providers on chain: one BatchPay transaction per settlement against one plain
//! transfer per payee, on a real anvil node on 127.0.0.1.
//!
//! `cargo bench -p golem-benches --features ethereum --bench settlement`
//!
//! For each batch size the ledger owes a group of providers; the group is paid twice: first to
//! addresses that hold nothing yet (the chain charges 25,000 gas to bring an account into
//! being), then again to the same, now existing, addresses (the usual case: the same providers
//! are paid settlement after settlement). The same is done with one plain transfer per payee.
//! Reference: Golem's GNT `batchTransfer` cost 27,000 + 28,000 gas per payee.

use golem_chain_tests::{Anvil, providers, record_work};
use golem_runtime::identity::NodeKey;
use golem_runtime::payment::Ledger;
use golem_runtime::payment::ethereum::{Chain, ChainConfig};

/// Gas of settling what `ledger` owes, in one transaction.
fn settle(anvil: &Anvil, chain: &Chain, ledger: &Ledger) -> (u64, usize) {
    let from = NodeKey::from_secret([0xAA; 32]).node_id();
    let report = anvil.block_on(chain.settle(ledger, from)).expect("settles");
    assert_eq!(report.paid.len(), 1, "one transaction: {report:?}");
    let paid = &report.paid[0];
    (paid.gas_used.expect("sent now"), paid.payees)
}

fn main() {
    let anvil = Anvil::start(&["--gas-limit", "60000000"]);
    let contract = anvil
        .block_on(Chain::deploy(&anvil.url, anvil.keys[0]))
        .expect("deploys");
    let mut config = ChainConfig::new(&anvil.url, anvil.keys[1], contract);
    config.max_payees = 1_000;
    let chain = anvil.block_on(Chain::connect(config)).expect("connects");

    println!(
        "{:>6} | {:>21} | {:>21} | {:>21} | {:>21} | {:>14}",
        "payees",
        "batch, new accounts",
        "batch, paid before",
        "transfers, new",
        "transfers, paid before",
        "GNT reference"
    );
    println!(
        "{:>6} | {:>21} | {:>21} | {:>21} | {:>21} | {:>14}",
        "", "gas (per payee)", "gas (per payee)", "gas (per payee)", "gas (per payee)", "gas"
    );
    let mut marginal = Vec::new();
    let mut previous: Option<(usize, u64, u64)> = None;
    for (group, count) in [(1u8, 1u16), (2, 10), (3, 50), (4, 100), (5, 200)] {
        let group_of = providers(count, group);
        let ledger = Ledger::in_memory().expect("ledger");
        let owed = record_work(&ledger, &group_of, 1);
        let (new_gas, payees) = settle(&anvil, &chain, &ledger);
        assert_eq!(payees, usize::from(count));
        record_work(&ledger, &group_of, 3);
        let (repeat_gas, _) = settle(&anvil, &chain, &ledger);

        // One plain transfer per payee, to new addresses and then to the same ones again.
        let fresh = providers(count, group + 100);
        let transfers = |targets: &[(NodeKey, [u8; 20])]| -> u64 {
            targets
                .iter()
                .zip(owed.values())
                .map(|((_, address), units)| anvil.transfer(anvil.keys[2], *address, *units))
                .sum()
        };
        let single_new = transfers(&fresh);
        let single_repeat = transfers(&fresh);

        let n = u64::from(count);
        let cell = |gas: u64| format!("{gas} ({})", gas / n);
        println!(
            "{:>6} | {:>21} | {:>21} | {:>21} | {:>21} | {:>14}",
            count,
            cell(new_gas),
            cell(repeat_gas),
            cell(single_new),
            cell(single_repeat),
            27_000 + 28_000 * n
        );
        if let Some((before, new_before, repeat_before)) = previous {
            let extra = (usize::from(count) - before) as u64;
            marginal.push((
                before,
                count,
                (new_gas - new_before) / extra,
                (repeat_gas - repeat_before) / extra,
            ));
        }
        previous = Some((usize::from(count), new_gas, repeat_gas));
    }
    println!();
    println!("gas of each payee added to a batch (GNT batchTransfer: 28,000; a transfer: 21,000):");
    for (from, to, new, repeat) in marginal {
        println!(
            "  {from:>3} -> {to:>3} payees: {new} to a new account, {repeat} to one paid before"
        );
    }
}
