//! A real Ethereum node for the tests and benches of chain settlement: anvil, from the npm
//! registry, started on 127.0.0.1; and ledgers that owe groups of providers.
#![cfg(feature = "ethereum")]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alloy::network::{EthereumWallet, ReceiptResponse, TransactionBuilder};
use alloy::primitives::{Address, B256, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::TransactionRequest;
use alloy::signers::local::PrivateKeySigner;
use golem_runtime::identity::NodeKey;
use golem_runtime::payment::{Ledger, NANO, Payee, Priced};
use golem_runtime::receipt::{Receipt, ReceiptEntry};

/// The anvil package and version `.ci/run` installs.
pub const ANVIL_PACKAGE: &str = "@foundry-rs/anvil-linux-amd64@1.7.1";
/// The Solidity compiler (solcjs) of the contract's pinned version.
pub const SOLC_PACKAGE: &str = "solc@0.8.37";

/// Where npm tools live: `target/golem-tools` of the workspace (or of `CARGO_TARGET_DIR`).
pub fn tools_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("golem-tools")
}

/// The path of `bin` from npm `package`, installed into [`tools_dir`] when missing (one
/// installer at a time; others wait for it). Panics with the npm command when it cannot.
pub fn npm_tool(bin: &str, package: &str) -> PathBuf {
    let dir = tools_dir();
    let path = dir.join("node_modules/.bin").join(bin);
    if path.exists() {
        return path;
    }
    std::fs::create_dir_all(&dir).expect("the tools directory is created");
    let lock = dir.join(format!("{bin}.installing"));
    let deadline = Instant::now() + Duration::from_secs(300);
    while std::fs::create_dir(&lock).is_err() {
        assert!(
            Instant::now() < deadline,
            "waited 5 minutes for {} to go",
            lock.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    if !path.exists() {
        let status = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .arg(package)
            .status();
        let _ = std::fs::remove_dir(&lock);
        let ok = status.as_ref().is_ok_and(|status| status.success());
        assert!(
            ok,
            "`npm install --prefix {} {package}` failed ({status:?}); it provides `{bin}`",
            dir.display()
        );
    } else {
        let _ = std::fs::remove_dir(&lock);
    }
    path
}

/// An anvil node on 127.0.0.1, killed when dropped.
pub struct Anvil {
    child: Child,
    /// Its JSON-RPC URL.
    pub url: String,
    /// Secret keys of its funded accounts (10,000 ETH each).
    pub keys: Vec<[u8; 32]>,
    provider: DynProvider,
    /// Every call to the node runs here, so HTTP connections outlive no runtime.
    runtime: tokio::runtime::Runtime,
}

impl Anvil {
    /// Starts anvil on a free port of 127.0.0.1 with `args` added; waits until it listens.
    pub fn start(args: &[&str]) -> Self {
        let anvil = npm_tool("anvil", ANVIL_PACKAGE);
        let mut child = Command::new(&anvil)
            .args(["--host", "127.0.0.1", "--port", "0", "--accounts", "4"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", anvil.display()));
        let stdout = child.stdout.take().expect("anvil's stdout");
        let mut keys = Vec::new();
        let mut url = None;
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("anvil's output reads");
            if let Some(addr) = line.strip_prefix("Listening on ") {
                url = Some(format!("http://{}", addr.trim()));
                break;
            }
            // "(0) 0xac09…" under "Private Keys".
            if let Some((_, hex)) = line.split_once(") 0x")
                && hex.len() == 64
                && let Some(key) = parse_key(hex)
            {
                keys.push(key);
            }
        }
        let url = url.expect("anvil printed where it listens");
        assert!(!keys.is_empty(), "anvil printed its accounts' keys");
        golem_runtime::payment::ethereum::install_tls_provider();
        let provider = ProviderBuilder::new()
            .connect_http(url.parse().expect("anvil's URL"))
            .erased();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        Self {
            child,
            url,
            keys,
            provider,
            runtime,
        }
    }

    /// Runs `future` (a call to the node) to its end.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// Calls `method` on the node.
    pub fn rpc<P, R>(&self, method: &'static str, params: P) -> R
    where
        P: alloy::rpc::json_rpc::RpcSend,
        R: alloy::rpc::json_rpc::RpcRecv,
    {
        self.block_on(self.provider.raw_request(method.into(), params))
            .unwrap_or_else(|error| panic!("{method}: {error}"))
    }

    /// Turns mining of each transaction as it arrives on or off.
    pub fn automine(&self, on: bool) {
        self.rpc::<_, ()>("evm_setAutomine", (on,));
    }

    /// Mines one block.
    pub fn mine(&self) {
        self.rpc::<_, String>("evm_mine", ());
    }

    /// Sets `address`'s balance, in wei.
    pub fn set_balance(&self, address: [u8; 20], wei: u128) {
        self.rpc::<_, ()>(
            "anvil_setBalance",
            (Address::from(address), U256::from(wei)),
        );
    }

    /// The balance of `address`, in wei.
    pub fn balance(&self, address: [u8; 20]) -> u128 {
        let wei = self
            .block_on(async { self.provider.get_balance(Address::from(address)).await })
            .expect("balance");
        u128::try_from(wei).expect("a balance fits 128 bits")
    }

    /// Sends `wei` from `key`'s account to `to` in a plain transfer; returns the gas it used.
    pub fn transfer(&self, key: [u8; 32], to: [u8; 20], wei: u128) -> u64 {
        let (ok, gas) = self.send(key, to, Vec::new(), wei, None);
        assert!(ok, "a plain transfer succeeds");
        gas
    }

    /// Sends a transaction from `key`'s account to `to` with `input` and `wei`, with gas
    /// `limit` (estimated when `None`; given, the node takes a transaction that will revert);
    /// returns whether it succeeded and the gas it used, once mined.
    pub fn send(
        &self,
        key: [u8; 32],
        to: [u8; 20],
        input: Vec<u8>,
        wei: u128,
        limit: Option<u64>,
    ) -> (bool, u64) {
        let signer = PrivateKeySigner::from_bytes(&B256::from(key)).expect("a key");
        let provider = ProviderBuilder::new()
            .wallet(EthereumWallet::from(signer))
            .connect_http(self.url.parse().expect("anvil's URL"));
        let mut tx = TransactionRequest::default()
            .with_to(Address::from(to))
            .with_value(U256::from(wei))
            .with_input(input);
        if let Some(limit) = limit {
            tx = tx.with_gas_limit(limit);
        }
        let receipt = self
            .block_on(async {
                provider
                    .send_transaction(tx)
                    .await
                    .expect("sent")
                    .get_receipt()
                    .await
            })
            .expect("mined");
        (receipt.status(), receipt.gas_used())
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Ethereum address of secret `key`.
pub fn address_of(key: [u8; 32]) -> [u8; 20] {
    PrivateKeySigner::from_bytes(&B256::from(key))
        .expect("a key")
        .address()
        .into_array()
}

fn parse_key(hex: &str) -> Option<[u8; 32]> {
    let mut key = [0u8; 32];
    for (byte, at) in key.iter_mut().zip((0..64).step_by(2)) {
        *byte = u8::from_str_radix(hex.get(at..at + 2)?, 16).ok()?;
    }
    Some(key)
}

/// A provider's receipt for one subtask of job `job` that burned `fuel`, priced at `price`
/// per billion fuel, to be paid to `payee`.
pub fn priced(key: &NodeKey, job: u8, fuel: u64, price: u64, payee: [u8; 20]) -> Priced {
    let entry = ReceiptEntry {
        index: 0,
        input: [job; 32],
        output: [1; 32],
        fuel,
    };
    Priced {
        receipt: Receipt::sign(key, [job; 32], vec![entry]),
        price_per_gfuel: price,
        payee: Some(Payee::Ethereum(payee)),
    }
}

/// `count` providers of group `group`, each with a node key and an address of its own that
/// no other group shares.
pub fn providers(count: u16, group: u8) -> Vec<(NodeKey, [u8; 20])> {
    (0..count)
        .map(|index| {
            let [high, low] = index.to_be_bytes();
            let mut address = [0x5a; 20];
            address[17..].copy_from_slice(&[group, high, low]);
            let mut secret = [0x11; 32];
            secret[..3].copy_from_slice(&[group, high, low]);
            (NodeKey::from_secret(secret), address)
        })
        .collect()
}

/// Records two receipts of job `job` (and `job + 1`) per provider; returns the whole units
/// each address is owed for them.
pub fn record_work(
    ledger: &Ledger,
    providers: &[(NodeKey, [u8; 20])],
    job: u8,
) -> HashMap<[u8; 20], u128> {
    let mut expected = HashMap::new();
    for (index, (key, address)) in providers.iter().enumerate() {
        let step = index as u64 + 1;
        let receipts = [
            priced(key, job, step * 3_000_000_000 + 7, 1_000 * step, *address),
            priced(key, job.wrapping_add(1), 500_000_000, 2_000, *address),
        ];
        assert_eq!(ledger.record(&receipts), Ok(2), "new receipts");
        let nano: u128 = receipts.iter().map(Priced::nano_amount).sum();
        expected.insert(*address, nano / NANO);
    }
    expected
}
