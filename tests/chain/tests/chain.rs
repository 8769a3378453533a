//! Settlement on a real Ethereum node: anvil (from the npm registry) on 127.0.0.1, the
//! BatchPay contract deployed from the committed bytecode, settlements from the embedded ledger.

use std::process::Command;
use std::time::Duration;

use alloy::primitives::{Address, B256, U256};
use alloy::sol_types::SolCall;

use golem_chain_tests::{Anvil, SOLC_PACKAGE, address_of, npm_tool, providers, record_work};
use golem_runtime::identity::{NodeId, NodeKey};
use golem_runtime::payment::ethereum::{
    BATCH_PAY_ABI, BATCH_PAY_BIN, BatchPay, Chain, ChainConfig, ChainError, Watcher,
};
use golem_runtime::payment::{Books, Credit, Ledger, NANO, Payee};

fn deploy(anvil: &Anvil) -> [u8; 20] {
    anvil
        .block_on(Chain::deploy(&anvil.url, anvil.keys[0]))
        .expect("BatchPay deploys")
}

fn connect(anvil: &Anvil, config: ChainConfig) -> Chain {
    anvil
        .block_on(Chain::connect(config))
        .expect("the contract is found")
}

fn requestor() -> NodeId {
    NodeKey::from_secret([200; 32]).node_id()
}

/// Transactions sent from `address`.
fn nonce(anvil: &Anvil, address: [u8; 20]) -> u64 {
    let hex: String = anvil.rpc(
        "eth_getTransactionCount",
        (Payee::Ethereum(address).to_string(), "latest"),
    );
    u64::from_str_radix(hex.trim_start_matches("0x"), 16).expect("a hex count")
}

#[test]
fn the_contract_source_compiles_to_the_committed_bytecode() {
    let solcjs = npm_tool("solcjs", SOLC_PACKAGE);
    let out = std::env::temp_dir().join(format!("golem-solc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let contracts = concat!(env!("CARGO_MANIFEST_DIR"), "/../../golem-runtime/contracts");
    let status = Command::new(&solcjs)
        .args([
            "--bin",
            "--abi",
            "--optimize",
            "--optimize-runs",
            "200",
            "-o",
        ])
        .arg(&out)
        .arg("BatchPay.sol")
        .current_dir(contracts)
        .status()
        .expect("solcjs runs");
    assert!(status.success(), "solcjs failed: {status}");
    let read = |ext| {
        std::fs::read_to_string(out.join(format!("BatchPay_sol_BatchPay.{ext}")))
            .expect("solcjs wrote its output")
    };
    assert_eq!(read("bin").trim(), BATCH_PAY_BIN.trim(), "bytecode differs");
    assert_eq!(read("abi").trim(), BATCH_PAY_ABI.trim(), "ABI differs");
    std::fs::remove_dir_all(&out).expect("clean up");
}

#[test]
fn one_transaction_pays_a_hundred_providers_and_each_sees_it_in_its_books() {
    let anvil = Anvil::start(&[]);
    let contract = deploy(&anvil);
    let chain = connect(
        &anvil,
        ChainConfig::new(&anvil.url, anvil.keys[1], contract),
    );
    let ledger = Ledger::in_memory().expect("ledger");
    let providers = providers(100, 0);
    let expected = record_work(&ledger, &providers, 1);

    let report = anvil
        .block_on(chain.settle(&ledger, requestor()))
        .expect("settles");
    assert!(report.failed.is_empty(), "{report:?}");
    assert_eq!(report.paid.len(), 1, "one settlement: {report:?}");
    let settled = &report.paid[0];
    assert_eq!(settled.payees, 100);
    assert_eq!(settled.amount, expected.values().sum::<u128>());
    let gas = settled.gas_used.expect("sent in this call");
    println!(
        "100 providers paid {} wei in one transaction: {gas} gas, {} per payee",
        settled.amount,
        gas / 100
    );
    assert_eq!(
        nonce(&anvil, address_of(anvil.keys[1])),
        1,
        "one transaction"
    );
    for (address, units) in &expected {
        assert_eq!(anvil.balance(*address), *units, "balance of {address:?}");
    }
    assert!(ledger.pending().expect("reads").is_empty());
    let owed = ledger.owed().expect("reads");
    assert!(
        owed.iter().all(|(_, nano)| *nano < NANO),
        "only fractions stay"
    );
    let again = anvil
        .block_on(chain.settle(&ledger, requestor()))
        .expect("settles");
    assert!(
        again.paid.is_empty() && again.failed.is_empty(),
        "{again:?}"
    );

    // The provider's own books: what arrived, from whom, counted once however often it looks.
    let (_, first) = providers[0];
    let books = Books::in_memory().expect("books");
    let mut careful = Watcher::new(&anvil.url, contract, first, 0)
        .expect("watcher")
        .with_confirmations(1);
    assert_eq!(
        anvil.block_on(careful.poll(&books)),
        Ok(0),
        "not confirmed yet"
    );
    anvil.mine();
    assert_eq!(
        anvil.block_on(careful.poll(&books)),
        Ok(1),
        "one block on top"
    );
    let mut watcher = Watcher::new(&anvil.url, contract, first, 0).expect("watcher");
    assert_eq!(anvil.block_on(watcher.poll(&books)), Ok(0), "counted once");
    let account = books.account(requestor()).expect("reads");
    assert_eq!(account.arrived, expected[&first]);
}

#[test]
fn a_retried_settlement_never_pays_twice() {
    let anvil = Anvil::start(&[]);
    let contract = deploy(&anvil);
    let mut config = ChainConfig::new(&anvil.url, anvil.keys[1], contract);
    config.receipt_timeout = Duration::from_secs(1);
    let chain = connect(&anvil, config);
    let ledger = Ledger::in_memory().expect("ledger");
    let expected = record_work(&ledger, &providers(3, 0), 1);

    // Nothing is mined: the settlement is sent, its receipt never comes, it stays pending.
    anvil.automine(false);
    let first = anvil.block_on(chain.settle(&ledger, requestor()));
    assert!(
        matches!(first, Err(ChainError::Unconfirmed { id: 0, .. })),
        "{first:?}"
    );
    assert_eq!(ledger.pending().expect("reads").len(), 1);
    // Sent again, as after a crash: the node sees the first in its pool, where the batch is
    // paid, and refuses the copy; the settlement stays pending.
    let second = anvil.block_on(chain.settle(&ledger, requestor()));
    assert!(
        matches!(&second, Err(ChainError::Unconfirmed { id: 0, message }) if message.contains("refused")),
        "{second:?}"
    );
    assert_eq!(ledger.pending().expect("reads").len(), 1);
    anvil.mine();
    anvil.automine(true);
    assert_eq!(anvil.block_on(chain.is_paid(&ledger, 0)), Ok(true));

    // The same batch sent once more past every check of the node (a fixed gas limit): the
    // contract reverts it and pays nothing.
    let payees: Vec<Address> = expected.keys().map(|a| Address::from(*a)).collect();
    let amounts: Vec<U256> = expected.values().map(|u| U256::from(*u)).collect();
    let replay = BatchPay::payCall {
        batch: B256::from(ledger.settlement_key(0)),
        from: B256::from(*requestor().as_bytes()),
        payees,
        amounts,
    };
    let total: u128 = expected.values().sum();
    let (ok, _) = anvil.send(
        anvil.keys[1],
        contract,
        replay.abi_encode(),
        total,
        Some(300_000),
    );
    assert!(!ok, "the contract refuses a batch it paid");
    assert_eq!(
        nonce(&anvil, address_of(anvil.keys[1])),
        2,
        "the first and the replay"
    );

    // The ledger learns from the chain that the settlement was paid, and sends nothing.
    let report = anvil
        .block_on(chain.settle(&ledger, requestor()))
        .expect("resolves");
    assert_eq!(report.paid.len(), 1, "{report:?}");
    assert_eq!(report.paid[0].tx, None, "paid by an earlier transaction");
    assert!(ledger.pending().expect("reads").is_empty());
    for (address, units) in &expected {
        assert_eq!(anvil.balance(*address), *units, "paid once");
    }
    assert_eq!(nonce(&anvil, address_of(anvil.keys[1])), 2, "nothing sent");
    let again = anvil
        .block_on(chain.settle(&ledger, requestor()))
        .expect("settles");
    assert!(again.paid.is_empty(), "nothing more to pay: {again:?}");
}

#[test]
fn a_failed_transaction_leaves_the_ledger_consistent() {
    let anvil = Anvil::start(&[]);
    let contract = deploy(&anvil);
    // A payer with no ether: the node refuses its transaction.
    let payer_key = [0x42; 32];
    let payer = address_of(payer_key);
    let chain = connect(&anvil, ChainConfig::new(&anvil.url, payer_key, contract));
    let ledger = Ledger::in_memory().expect("ledger");
    let expected = record_work(&ledger, &providers(5, 0), 1);
    let owed_before = ledger.owed().expect("reads");
    let recorded = ledger.recorded().expect("reads").1;

    let report = anvil
        .block_on(chain.settle(&ledger, requestor()))
        .expect("a refusal is a report, not an error");
    assert!(report.paid.is_empty(), "{report:?}");
    assert_eq!(report.failed.len(), 1, "{report:?}");
    println!("refused: {}", report.failed[0].1);
    assert!(ledger.pending().expect("reads").is_empty());
    assert_eq!(ledger.owed().expect("reads"), owed_before, "owed again");
    for address in expected.keys() {
        assert_eq!(anvil.balance(*address), 0);
    }

    // Funded, it pays: exactly what was owed, and the books balance to the billionth.
    anvil.set_balance(payer, 10u128.pow(18));
    let report = anvil
        .block_on(chain.settle(&ledger, requestor()))
        .expect("settles");
    assert_eq!(report.paid.len(), 1, "{report:?}");
    assert_eq!(report.paid[0].id, 1, "a new settlement");
    let paid: u128 = expected.values().sum();
    for (address, units) in &expected {
        assert_eq!(anvil.balance(*address), *units);
    }
    let owed: u128 = ledger.owed().expect("reads").iter().map(|(_, n)| n).sum();
    assert_eq!(paid * NANO + owed, recorded);
}

#[test]
fn a_provider_refuses_a_requestor_that_owes_too_much_until_it_is_paid() {
    use std::sync::Arc;

    use golem::Golem;
    use golem::blocking::block_on;
    use golem_fixture::grind;
    use golem_runtime::node::{ProviderNode, ProviderNodeConfig};
    use golem_runtime::sandbox::{Sandbox, SandboxConfig};

    let anvil = Anvil::start(&[]);
    let contract = deploy(&anvil);
    let payee = [0x77; 20];
    let books = Arc::new(Books::in_memory().expect("books"));
    let sandbox = Arc::new(Sandbox::new(SandboxConfig::with_instances(6)).expect("engine"));
    let mut config = ProviderNodeConfig::local(&sandbox, 2);
    config.offers[0].price_per_gfuel = 1_000_000_000_000;
    config.payee = Some(Payee::Ethereum(payee));
    config.books = Some(Arc::clone(&books));
    let key = NodeKey::from_secret([0x33; 32]);
    // Started on anvil's runtime, which outlives it.
    let provider = anvil
        .block_on(ProviderNode::start(&key, sandbox, config))
        .expect("provider");
    let ledger = Arc::new(Ledger::in_memory().expect("ledger"));
    let golem = Golem::builder()
        .join(provider.bootstrap().to_string())
        .payments(ledger.clone())
        .build_blocking()
        .expect("the provider is found");
    let chain = connect(
        &anvil,
        ChainConfig::new(&anvil.url, anvil.keys[1], contract),
    );
    let job =
        |first: u64| -> Vec<(u64, u32)> { (first..first + 300).map(|i| (i, 3_000)).collect() };
    let native = |items: &[(u64, u32)]| items.iter().map(|item| grind(*item)).collect::<Vec<_>>();

    // One job, unlimited credit: the provider's books and the requestor's ledger agree.
    let first = job(0);
    let outputs = golem
        .par_for(first.clone(), grind)
        .run()
        .expect("the first job runs");
    assert_eq!(outputs, native(&first));
    let owed = books.account(golem.node_id()).expect("reads");
    let (_, recorded) = ledger.recorded().expect("reads");
    println!("after one job the provider's books say {owed:?}, the requestor's ledger {recorded}");
    assert_eq!(
        owed.promised_nano, recorded,
        "both sides count the same work"
    );
    let one_job = owed.owed();
    assert!(one_job > 0);

    // A limit of one and a half jobs: the second job runs until the debt passes it, then the
    // provider refuses it and it waits.
    provider.set_credit(Some(Credit {
        per_requestor: one_job * 3 / 2,
        first: one_job * 3 / 2,
        strangers: u128::MAX,
        total: u128::MAX,
    }));
    let second = job(1_000);
    let running = {
        let (golem, second) = (golem.clone(), second.clone());
        std::thread::spawn(move || golem.par_for(second, grind).run())
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while provider.unpaid_refusals() == 0 {
        assert!(std::time::Instant::now() < deadline, "never refused");
        assert!(
            !running.is_finished(),
            "the second job ended before the limit was reached"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !running.is_finished(),
        "the job waits while the provider refuses"
    );

    // The requestor pays the first job on chain; the provider sees it arrive and serves again.
    let report = block_on(golem.settle(ledger.clone(), chain.clone())).expect("settles");
    assert_eq!(report.paid.len(), 1, "{report:?}");
    let mut watcher = Watcher::new(&anvil.url, contract, payee, 0).expect("watcher");
    assert_eq!(anvil.block_on(watcher.poll(&books)), Ok(1));
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !running.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "the second job never resumed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let outputs = running
        .join()
        .expect("no panic")
        .expect("the second job runs");
    assert_eq!(outputs, native(&second));
    println!(
        "refused {} batches for non-payment before the first job was paid",
        provider.unpaid_refusals()
    );

    // Paid in full: what arrived on chain is what the ledger paid, and the books are square.
    let report = block_on(golem.settle(ledger.clone(), chain)).expect("settles");
    assert_eq!(report.paid.len(), 1, "{report:?}");
    assert_eq!(anvil.block_on(watcher.poll(&books)), Ok(1));
    let account = books.account(golem.node_id()).expect("reads");
    assert_eq!(account.arrived, anvil.balance(payee));
    let (_, recorded) = ledger.recorded().expect("reads");
    let still: u128 = ledger.owed().expect("reads").iter().map(|(_, n)| n).sum();
    assert_eq!(account.arrived * NANO + still, recorded);
    assert!(
        account.promised_nano >= recorded,
        "the provider counts every result it sent"
    );
    println!("finally: books {account:?}, ledger recorded {recorded}, still owed {still}");
    assert_eq!(
        account.owed(),
        (account.promised_nano - recorded + still) / NANO
    );
}

/// Identity costs something where it must: a provider that gives strangers no credit serves a
/// requestor that holds an escrow for it, as far as the escrow goes; takes what it is owed
/// from the escrow, which arrives as a payment; and counts the escrow for nothing once its
/// release is announced. The requestor takes back the rest only a day later.
#[test]
fn an_escrow_serves_a_stranger_past_the_credit_and_pays_the_provider_when_claimed() {
    use std::sync::Arc;
    use std::time::Instant;

    use golem::Golem;
    use golem_fixture::grind;
    use golem_runtime::node::{ProviderNode, ProviderNodeConfig};
    use golem_runtime::sandbox::{Sandbox, SandboxConfig};

    let anvil = Anvil::start(&[]);
    let contract = deploy(&anvil);
    let payee_key = anvil.keys[2];
    let payee = address_of(payee_key);
    let books = Arc::new(Books::in_memory().expect("books"));
    let sandbox = Arc::new(Sandbox::new(SandboxConfig::with_instances(6)).expect("engine"));
    let mut config = ProviderNodeConfig::local(&sandbox, 2);
    config.offers[0].price_per_gfuel = 1_000_000_000_000;
    config.payee = Some(Payee::Ethereum(payee));
    config.books = Some(Arc::clone(&books));
    // No credit at all: not to strangers, not to anyone.
    let credit = Credit {
        per_requestor: 0,
        first: 0,
        strangers: 0,
        total: 0,
    };
    config.credit = Some(credit);
    let provider = anvil
        .block_on(ProviderNode::start(
            &NodeKey::from_secret([0x34; 32]),
            sandbox,
            config,
        ))
        .expect("provider");
    let golem = Golem::builder()
        .join(provider.bootstrap().to_string())
        .build_blocking()
        .expect("the provider is found");
    let node = golem.node_id();
    let requestor = connect(
        &anvil,
        ChainConfig::new(&anvil.url, anvil.keys[1], contract),
    );
    let mut watcher = Watcher::new(&anvil.url, contract, payee, 0).expect("watcher");
    let items: Vec<(u64, u32)> = (0..300).map(|i| (i, 3_000)).collect();
    let native: Vec<u64> = items.iter().map(|item| grind(*item)).collect();
    let wait_for_refusals = |more_than: u64| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while provider.unpaid_refusals() <= more_than {
            assert!(Instant::now() < deadline, "never refused");
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    // A stranger without escrow is refused: the job waits.
    let running = {
        let (golem, items) = (golem.clone(), items.clone());
        std::thread::spawn(move || golem.par_for(items, grind).run())
    };
    wait_for_refusals(0);
    std::thread::sleep(Duration::from_secs(1));
    assert!(!running.is_finished(), "the job waits while refused");

    // An escrow of one ether, far more than the job costs: once the provider's watcher has
    // seen it, the job runs.
    let ether = 10u128.pow(18);
    anvil
        .block_on(requestor.deposit(node, payee, ether))
        .expect("deposited");
    assert_eq!(anvil.block_on(watcher.poll(&books)), Ok(0), "no payment");
    assert_eq!(books.escrow(node), Ok(ether));
    let deadline = Instant::now() + Duration::from_secs(120);
    while !running.is_finished() {
        assert!(Instant::now() < deadline, "the job never resumed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let outputs = running.join().expect("no panic").expect("the job runs");
    assert_eq!(outputs, native);
    let owed = books.account(node).expect("reads").owed();
    assert!(owed > 0);
    assert_eq!(books.on_credit(), 0, "all of it is covered by the escrow");
    println!("served {owed} wei of work against an escrow of {ether}");

    // The provider takes what it is owed from the escrow; it arrives as a payment from the
    // requestor, and the books are square.
    let provider_chain = connect(&anvil, ChainConfig::new(&anvil.url, payee_key, contract));
    let held = anvil.balance(contract);
    let claims = anvil
        .block_on(provider_chain.claim_owed(&books, Some(credit)))
        .expect("claimed");
    assert_eq!(claims, vec![(node, requestor.payer(), owed)]);
    let early = anvil.block_on(provider_chain.claim_owed(&books, Some(credit)));
    assert_eq!(
        early,
        Ok(Vec::new()),
        "a claim not in the books yet is not made again"
    );
    assert_eq!(anvil.balance(contract), held - owed);
    assert_eq!(anvil.block_on(watcher.poll(&books)), Ok(1));
    let again = anvil.block_on(provider_chain.claim_owed(&books, Some(credit)));
    assert_eq!(again, Ok(Vec::new()), "nothing is owed now");
    assert_eq!(books.account(node).expect("reads").owed(), 0);
    assert_eq!(books.escrow(node), Ok(ether - owed));
    assert_eq!(anvil.balance(contract), held - owed);
    let claim = anvil.block_on(provider_chain.claim(node, requestor.payer(), ether));
    assert!(
        matches!(&claim, Err(ChainError::Failed { call: "claim", .. })),
        "more than is held: {claim:?}"
    );

    // Release announced: the escrow covers nothing from now on, and work is refused again.
    anvil
        .block_on(requestor.announce_release(node, payee))
        .expect("announced");
    anvil.block_on(watcher.poll(&books)).expect("polls");
    assert_eq!(books.escrow(node), Ok(0));
    let refused = provider.unpaid_refusals();
    let job = std::future::IntoFuture::into_future(golem.par_for(items.clone(), grind));
    let timer = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let waited = timer.block_on(async { tokio::time::timeout(Duration::from_secs(5), job).await });
    assert!(waited.is_err(), "the job waits while refused");
    assert!(provider.unpaid_refusals() > refused);

    // Taken back only once the day is over; then the contract holds nothing.
    let early = anvil.block_on(requestor.release(node, payee));
    assert!(
        matches!(
            &early,
            Err(ChainError::Failed {
                call: "release",
                ..
            })
        ),
        "{early:?}"
    );
    anvil.rpc::<_, u64>("evm_increaseTime", (86_400u64,));
    anvil.mine();
    anvil
        .block_on(requestor.release(node, payee))
        .expect("released");
    assert_eq!(anvil.balance(contract), held - ether);
    anvil.block_on(watcher.poll(&books)).expect("polls");
    assert_eq!(books.escrows(node), Ok(Vec::new()));
}
