//! Settlement on Ethereum (feature `ethereum`, built on alloy).
//!
//! The requestor's [`Ledger`] settlements are paid through a small batch-payment contract,
//! `BatchPay` (its Solidity source, ABI and compiled bytecode are in `golem-runtime/contracts`):
//! one transaction pays every provider in a settlement. The contract refuses a batch id it has
//! paid before, and each settlement's id on chain is [`Ledger::settlement_key`], so sending a
//! settlement again (after a crash, a timeout, a dropped connection) never pays twice.
//!
//! [`Chain::settle`] first resolves the settlements left pending by an earlier run: paid on
//! chain means paid in the ledger; otherwise they are sent again. A settlement begun in this call
//! whose transaction the node refused (the payer cannot cover it, say) or that reverted is
//! failed in the ledger, so its amounts are owed again; when the outcome is unknown (the node
//! did not answer, the receipt did not come in time) the settlement stays pending for the next
//! call to resolve.
//!
//! On the provider's side a [`Watcher`] reads the contract's `Payment` events to its address
//! and enters them in its [`Books`], so the provider knows what arrived from whom.
//!
//! Escrow: a requestor that wants more than the credit a provider gives strangers deposits an
//! amount for that provider ([`Chain::deposit`]). The provider's watcher enters each escrow's
//! state in its books (the contract's `EscrowChanged` events), the provider serves the
//! requestor that much more, and it may take what it is owed from the escrow at any time
//! ([`Chain::claim`], with the payee's key). The requestor gets back what is left only after
//! announcing it ([`Chain::announce_release`]) and waiting a day ([`Chain::release`]); from the
//! announcement on, the provider counts the escrow for nothing and has the day to claim.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use alloy::network::{EthereumWallet, ReceiptResponse, TransactionBuilder};
use alloy::primitives::{Address, B256, Bytes, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::{BlockId, Filter, TransactionRequest};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::{SolCall, SolEvent};

use super::{Books, Credit, Escrow, Ledger, Payee, Payment, PaymentError, Settlement};
use crate::identity::NodeId;

/// The contract's interface, generated from the ABI solc wrote (`contracts/BatchPay.abi`).
mod abi {
    #![allow(missing_docs, unreachable_pub)]

    alloy::sol!(BatchPay, "contracts/BatchPay.abi");
}

/// The contract's calls, events and errors, for code that talks to it directly.
pub use abi::BatchPay;

/// The contract's Solidity source.
pub const BATCH_PAY_SOURCE: &str = include_str!("../../contracts/BatchPay.sol");
/// Its ABI, as solc wrote it.
pub const BATCH_PAY_ABI: &str = include_str!("../../contracts/BatchPay.abi");
/// Its creation bytecode in hex, as `solcjs --bin --optimize --optimize-runs 200` of
/// [`SOLC_VERSION`] wrote it from [`BATCH_PAY_SOURCE`].
pub const BATCH_PAY_BIN: &str = include_str!("../../contracts/BatchPay.bin");
/// The compiler the bytecode was built with (the source pins it).
pub const SOLC_VERSION: &str = "0.8.37";

/// Settling on chain failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// A setting is wrong (the URL, the key, the contract address).
    #[error("Ethereum settings: {0}")]
    Config(String),
    /// The node could not be asked, or answered with an error; nothing was paid by this call.
    #[error("Ethereum node {url}: {message}")]
    Node {
        /// The node's URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The address holds no contract (or not this one).
    #[error("no BatchPay contract at {0}")]
    NoContract(Payee),
    /// A settlement's transaction was sent, or may have been, and its outcome is not known yet;
    /// the settlement stays pending and the next [`Chain::settle`] resolves it.
    #[error("settlement {id}: outcome unknown ({message}); it stays pending")]
    Unconfirmed {
        /// The settlement.
        id: u64,
        /// What went wrong.
        message: String,
    },
    /// A transaction other than a settlement was sent and its outcome is not known (no
    /// receipt in time): it may yet be mined.
    #[error("{call}: outcome unknown ({message})")]
    Unknown {
        /// What was called.
        call: &'static str,
        /// What went wrong.
        message: String,
    },
    /// A transaction other than a settlement reverted, or the node refused it.
    #[error("{call}: {message}")]
    Failed {
        /// What was called.
        call: &'static str,
        /// Why it failed, as the node said.
        message: String,
    },
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] PaymentError),
}

/// Where and how a requestor pays on chain.
#[derive(Clone)]
pub struct ChainConfig {
    /// The node's JSON-RPC URL (`http://127.0.0.1:8545` for a local anvil).
    pub rpc: String,
    /// The payer's secp256k1 secret key.
    pub secret: [u8; 32],
    /// The BatchPay contract.
    pub contract: [u8; 20],
    /// Most payees in one transaction (keeps a transaction well under a block's gas).
    pub max_payees: usize,
    /// How long to wait for a transaction's receipt before leaving its settlement pending.
    pub receipt_timeout: Duration,
}

impl std::fmt::Debug for ChainConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainConfig")
            .field("rpc", &self.rpc)
            .field("contract", &Payee::Ethereum(self.contract))
            .field("max_payees", &self.max_payees)
            .field("receipt_timeout", &self.receipt_timeout)
            .finish_non_exhaustive()
    }
}

impl ChainConfig {
    /// Settings for paying through `contract` on the node at `rpc` with `secret`: at most 200
    /// payees per transaction, 60 s for a receipt.
    pub fn new(rpc: impl Into<String>, secret: [u8; 32], contract: [u8; 20]) -> Self {
        Self {
            rpc: rpc.into(),
            secret,
            contract,
            max_payees: 200,
            receipt_timeout: Duration::from_secs(60),
        }
    }
}

/// One settlement paid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// The ledger's settlement id.
    pub id: u64,
    /// Providers paid.
    pub payees: usize,
    /// Paid in all, in wei.
    pub amount: u128,
    /// The transaction that paid it, when this call sent it (`None` when an earlier one had).
    pub tx: Option<[u8; 32]>,
    /// Gas it used.
    pub gas_used: Option<u64>,
}

/// What one [`Chain::settle`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettleReport {
    /// Settlements paid.
    pub paid: Vec<Settled>,
    /// Settlements that failed (id, why); their amounts are owed again.
    pub failed: Vec<(u64, String)>,
}

/// A requestor's connection to the chain: pays the ledger's settlements through BatchPay.
#[derive(Debug, Clone)]
pub struct Chain {
    provider: DynProvider,
    config: ChainConfig,
    payer: Address,
    contract: Address,
    /// Claims made and not yet seen in the books, by requestor (shared by clones).
    claims: Arc<Mutex<HashMap<NodeId, Claimed>>>,
}

/// A claim from a requestor's escrows that the books have not shown yet.
#[derive(Debug, Clone, Copy)]
struct Claimed {
    /// What the books' `arrived` for the requestor reaches once the claim is seen.
    arrived: u128,
    /// When it was made.
    at: Instant,
}

/// How long a claim may go unseen in the books before the debt may be claimed again: a claim
/// whose transaction was lost, or whose outcome was not known, is not waited for forever.
const CLAIM_SEEN_WITHIN: Duration = Duration::from_secs(600);

/// How a settlement's transaction ended.
enum Sent {
    Paid(Settled),
    Failed(String),
}

impl Chain {
    /// Connects to the node and checks that the contract is there.
    pub async fn connect(config: ChainConfig) -> Result<Self, ChainError> {
        let (provider, payer) = wallet_provider(&config.rpc, config.secret)?;
        let chain = Self {
            provider,
            contract: Address::from(config.contract),
            config,
            payer,
            claims: Arc::default(),
        };
        let code = chain
            .provider
            .get_code_at(chain.contract)
            .await
            .map_err(|error| chain.node_error(error))?;
        let runtime = deployed_code();
        if code.is_empty() || runtime.is_some_and(|runtime| code.as_ref() != runtime.as_slice()) {
            return Err(ChainError::NoContract(Payee::Ethereum(
                chain.config.contract,
            )));
        }
        Ok(chain)
    }

    /// Deploys BatchPay from `secret`'s account on the node at `rpc`; returns its address.
    pub async fn deploy(rpc: &str, secret: [u8; 32]) -> Result<[u8; 20], ChainError> {
        let (provider, _) = wallet_provider(rpc, secret)?;
        let node = |error: &dyn std::fmt::Display| ChainError::Node {
            url: rpc.into(),
            message: error.to_string(),
        };
        let code = from_hex(BATCH_PAY_BIN.trim())
            .ok_or_else(|| ChainError::Config("the bundled BatchPay bytecode is not hex".into()))?;
        let tx = TransactionRequest::default().with_deploy_code(Bytes::from(code));
        let receipt = provider
            .send_transaction(tx)
            .await
            .map_err(|e| node(&e))?
            .get_receipt()
            .await
            .map_err(|e| node(&e))?;
        match receipt.contract_address() {
            Some(address) if receipt.status() => Ok(address.into_array()),
            _ => Err(ChainError::Node {
                url: rpc.into(),
                message: "the deployment reverted".into(),
            }),
        }
    }

    /// The payer's address.
    pub fn payer(&self) -> [u8; 20] {
        self.payer.into_array()
    }

    /// The balance of `address`, in wei.
    pub async fn balance(&self, address: [u8; 20]) -> Result<u128, ChainError> {
        let wei = self
            .provider
            .get_balance(Address::from(address))
            .await
            .map_err(|error| self.node_error(error))?;
        Ok(saturating_u128(wei))
    }

    /// Deposits `amount` wei in escrow for `payee` on behalf of `from` (the requestor's node id),
    /// adding to what this payer holds there and calling off a release announced.
    pub async fn deposit(
        &self,
        from: NodeId,
        payee: [u8; 20],
        amount: u128,
    ) -> Result<(), ChainError> {
        let call = BatchPay::depositCall {
            from: B256::from(*from.as_bytes()),
            payee: Address::from(payee),
        };
        self.transact("deposit", call.abi_encode(), amount).await
    }

    /// Announces that this payer will take back what it holds for `payee` on behalf of `from`;
    /// [`release`](Self::release) may do so a day later.
    pub async fn announce_release(&self, from: NodeId, payee: [u8; 20]) -> Result<(), ChainError> {
        let call = BatchPay::announceReleaseCall {
            from: B256::from(*from.as_bytes()),
            payee: Address::from(payee),
        };
        self.transact("announce release", call.abi_encode(), 0)
            .await
    }

    /// Takes back what this payer still holds for `payee` on behalf of `from`, once the wait
    /// after [`announce_release`](Self::announce_release) is over.
    pub async fn release(&self, from: NodeId, payee: [u8; 20]) -> Result<(), ChainError> {
        let call = BatchPay::releaseCall {
            from: B256::from(*from.as_bytes()),
            payee: Address::from(payee),
        };
        self.transact("release", call.abi_encode(), 0).await
    }

    /// As a payee (this chain's key is the payee's), takes `amount` wei of what `depositor`
    /// holds for it on behalf of `from`; it arrives as a payment from `from`, which the
    /// payee's [`Watcher`] enters in its books.
    pub async fn claim(
        &self,
        from: NodeId,
        depositor: [u8; 20],
        amount: u128,
    ) -> Result<(), ChainError> {
        let call = BatchPay::claimCall {
            from: B256::from(*from.as_bytes()),
            depositor: Address::from(depositor),
            amount: U256::from(amount),
        };
        self.transact("claim", call.abi_encode(), 0).await
    }

    /// As a payee, claims from the escrows in `books` what their requestors owe: all of it
    /// from a requestor whose depositor announced a release, and otherwise what it owes beyond
    /// the provider's `credit` (the work only its escrow covered). Returns the claims made
    /// (requestor, depositor, amount).
    ///
    /// A claim arrives as a payment, which the books hold only once the payee's [`Watcher`]
    /// has seen it. Until then (for ten minutes at most: a claim whose outcome was not known
    /// may never have been mined) no more is claimed from that requestor, so the same debt is
    /// not claimed twice. A claim that fails is logged, and the other requestors' are still
    /// made.
    pub async fn claim_owed(
        &self,
        books: &Books,
        credit: Option<Credit>,
    ) -> Result<Vec<(NodeId, [u8; 20], u128)>, ChainError> {
        let mut claims = Vec::new();
        for requestor in books.escrowed()? {
            let account = books.account(requestor)?;
            let owed = account.owed();
            if owed == 0 || self.unseen_claim(requestor, account.arrived) {
                continue;
            }
            let mut escrows = books.escrows(requestor)?;
            let releasing = escrows.iter().any(|escrow| escrow.releasing);
            let mut due = match credit {
                _ if releasing => owed,
                Some(credit) => owed.saturating_sub(credit.limit(&account)),
                None => 0,
            };
            // Escrows being released first: they are about to go.
            escrows.sort_by_key(|escrow| (!escrow.releasing, std::cmp::Reverse(escrow.amount)));
            let mut claimed = 0u128;
            for escrow in escrows {
                let amount = due.min(escrow.amount);
                if amount == 0 {
                    break;
                }
                let made = self.claim(requestor, escrow.depositor, amount).await;
                // Made, or perhaps: waited for before the next claim from this requestor.
                if matches!(made, Ok(()) | Err(ChainError::Unknown { .. })) {
                    claimed = claimed.saturating_add(amount);
                }
                if let Err(error) = made {
                    tracing::warn!(%requestor, amount, %error, "cannot claim from an escrow");
                    break;
                }
                tracing::info!(%requestor, amount, "claimed from an escrow");
                claims.push((requestor, escrow.depositor, amount));
                due -= amount;
            }
            if claimed > 0 {
                let claim = Claimed {
                    arrived: account.arrived.saturating_add(claimed),
                    at: Instant::now(),
                };
                self.claims_made().insert(requestor, claim);
            }
        }
        Ok(claims)
    }

    fn claims_made(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Claimed>> {
        self.claims.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a claim from `requestor` is made and not yet in books where it has paid
    /// `arrived` (and not so old that it is given up on); forgets one that is.
    fn unseen_claim(&self, requestor: NodeId, arrived: u128) -> bool {
        let mut claims = self.claims_made();
        let Some(claim) = claims.get(&requestor) else {
            return false;
        };
        if arrived < claim.arrived && claim.at.elapsed() < CLAIM_SEEN_WITHIN {
            tracing::debug!(%requestor, "a claim is not in the books yet");
            return true;
        }
        claims.remove(&requestor);
        false
    }

    /// Sends a call to the contract with `value` wei and waits for it to be mined.
    async fn transact(
        &self,
        call: &'static str,
        input: Vec<u8>,
        value: u128,
    ) -> Result<(), ChainError> {
        let failed = |message: String| ChainError::Failed { call, message };
        let tx = TransactionRequest::default()
            .with_to(self.contract)
            .with_value(U256::from(value))
            .with_input(input);
        let pending = match self.provider.send_transaction(tx).await {
            Ok(pending) => pending,
            // A revert found while estimating gas comes back as the node's error.
            Err(error) if error.as_error_resp().is_some() => {
                return Err(failed(format!("the node refused it: {error}")));
            }
            Err(error) => return Err(self.node_error(error)),
        };
        let tx = *pending.tx_hash();
        let receipt = pending
            .with_timeout(Some(self.config.receipt_timeout))
            .get_receipt()
            .await
            .map_err(|error| ChainError::Unknown {
                call,
                message: format!("transaction {tx}: {error}"),
            })?;
        if !receipt.status() {
            return Err(failed(format!("transaction {tx} reverted")));
        }
        Ok(())
    }

    /// Whether the contract has paid settlement `id` of `ledger`.
    pub async fn is_paid(&self, ledger: &Ledger, id: u64) -> Result<bool, ChainError> {
        self.paid_on_chain(B256::from(ledger.settlement_key(id)))
            .await
    }

    /// Pays what `ledger` owes to providers with an Ethereum payee, one transaction per
    /// settlement of at most [`ChainConfig::max_payees`]; `from` (the requestor's node id)
    /// tells providers whose debt each payment settles. Settlements left pending by earlier
    /// calls are resolved first.
    ///
    /// Stops at the first settlement that fails (its amounts are owed again and it is in the
    /// report) or whose outcome is unknown ([`ChainError::Unconfirmed`]).
    pub async fn settle(&self, ledger: &Ledger, from: NodeId) -> Result<SettleReport, ChainError> {
        let mut report = SettleReport::default();
        for settlement in ledger.pending()? {
            if !self
                .resolve(ledger, settlement, from, false, &mut report)
                .await?
            {
                return Ok(report);
            }
        }
        let on_chain = |payment: &Payment| matches!(payment.payee, Some(Payee::Ethereum(_)));
        while let Some(settlement) =
            ledger.begin_settlement_with(self.config.max_payees, on_chain)?
        {
            if !self
                .resolve(ledger, settlement, from, true, &mut report)
                .await?
            {
                break;
            }
        }
        Ok(report)
    }

    /// Pays `settlement` unless the chain says it is paid, and ends it in the ledger when the
    /// outcome is known. `fresh`: begun in this call, so no earlier transaction of it can still
    /// land, and a failure may put its amounts back. Returns whether to go on.
    async fn resolve(
        &self,
        ledger: &Ledger,
        settlement: Settlement,
        from: NodeId,
        fresh: bool,
        report: &mut SettleReport,
    ) -> Result<bool, ChainError> {
        let id = settlement.id;
        let key = B256::from(ledger.settlement_key(id));
        let amount = settlement.payments.iter().map(|p| p.amount).sum::<u128>();
        let already = Settled {
            id,
            payees: settlement.payments.len(),
            amount,
            tx: None,
            gas_used: None,
        };
        if !fresh && self.paid_on_chain(key).await? {
            ledger.finish_settlement(id, true)?;
            report.paid.push(already);
            return Ok(true);
        }
        match self.send(&settlement, key, from).await? {
            Sent::Paid(settled) => {
                ledger.finish_settlement(id, true)?;
                report.paid.push(settled);
                Ok(true)
            }
            // A transaction of this settlement may have landed meanwhile (an earlier one, or
            // this one reverting because another did).
            Sent::Failed(_) if self.paid_on_chain(key).await? => {
                ledger.finish_settlement(id, true)?;
                report.paid.push(already);
                Ok(true)
            }
            Sent::Failed(message) if fresh => {
                tracing::warn!(settlement = id, %message, "settlement failed; owed again");
                ledger.finish_settlement(id, false)?;
                report.failed.push((id, message));
                Ok(false)
            }
            // An older transaction of it could still be waiting to be mined: it stays pending.
            Sent::Failed(message) => Err(ChainError::Unconfirmed { id, message }),
        }
    }

    /// Sends `settlement`'s transaction and waits for its receipt.
    async fn send(
        &self,
        settlement: &Settlement,
        key: B256,
        from: NodeId,
    ) -> Result<Sent, ChainError> {
        let id = settlement.id;
        let mut payees = Vec::with_capacity(settlement.payments.len());
        let mut amounts = Vec::with_capacity(settlement.payments.len());
        let mut total = 0u128;
        for payment in &settlement.payments {
            let Some(Payee::Ethereum(address)) = payment.payee else {
                return Ok(Sent::Failed(format!(
                    "provider {} has no Ethereum address",
                    payment.provider
                )));
            };
            payees.push(Address::from(address));
            amounts.push(U256::from(payment.amount));
            total = total.saturating_add(payment.amount);
        }
        let call = BatchPay::payCall {
            batch: key,
            from: B256::from(*from.as_bytes()),
            payees,
            amounts,
        };
        let tx = TransactionRequest::default()
            .with_to(self.contract)
            .with_value(U256::from(total))
            .with_input(call.abi_encode());
        let pending = match self.provider.send_transaction(tx).await {
            Ok(pending) => pending,
            // The node answered with an error: the transaction was not taken.
            Err(error) if error.as_error_resp().is_some() => {
                return Ok(Sent::Failed(format!("the node refused it: {error}")));
            }
            Err(error) => {
                return Err(ChainError::Unconfirmed {
                    id,
                    message: error.to_string(),
                });
            }
        };
        let tx = *pending.tx_hash();
        let receipt = pending
            .with_timeout(Some(self.config.receipt_timeout))
            .get_receipt()
            .await
            .map_err(|error| ChainError::Unconfirmed {
                id,
                message: format!("transaction {tx}: {error}"),
            })?;
        if !receipt.status() {
            return Ok(Sent::Failed(format!("transaction {tx} reverted")));
        }
        Ok(Sent::Paid(Settled {
            id,
            payees: settlement.payments.len(),
            amount: total,
            tx: Some(tx.0),
            gas_used: Some(receipt.gas_used()),
        }))
    }

    async fn paid_on_chain(&self, key: B256) -> Result<bool, ChainError> {
        let call = BatchPay::paidCall {
            // The public mapping's getter: paid(payer, batch).
            _0: self.payer,
            _1: key,
        };
        let tx = TransactionRequest::default()
            .with_to(self.contract)
            .with_input(call.abi_encode());
        // Mined state only: a transaction still waiting in the pool has paid nothing yet.
        let bytes = self
            .provider
            .call(tx)
            .block(BlockId::latest())
            .await
            .map_err(|error| self.node_error(error))?;
        BatchPay::paidCall::abi_decode_returns(&bytes).map_err(|error| self.node_error(error))
    }

    fn node_error(&self, error: impl std::fmt::Display) -> ChainError {
        ChainError::Node {
            url: self.config.rpc.clone(),
            message: error.to_string(),
        }
    }
}

/// A provider's view of the contract: the payments to its address, entered in its books.
#[derive(Debug, Clone)]
pub struct Watcher {
    provider: DynProvider,
    rpc: String,
    contract: Address,
    payee: Address,
    next_block: u64,
    confirmations: u64,
}

impl Watcher {
    /// Watches `contract` on the node at `rpc` for payments to `payee`, from block
    /// `from_block` on (0 reads the whole chain; the books count each payment once anyway).
    pub fn new(
        rpc: &str,
        contract: [u8; 20],
        payee: [u8; 20],
        from_block: u64,
    ) -> Result<Self, ChainError> {
        let url = rpc
            .parse()
            .map_err(|error| ChainError::Config(format!("`{rpc}` is not a URL: {error}")))?;
        install_tls_provider();
        Ok(Self {
            provider: ProviderBuilder::new().connect_http(url).erased(),
            rpc: rpc.into(),
            contract: Address::from(contract),
            payee: Address::from(payee),
            next_block: from_block,
            confirmations: 0,
        })
    }

    /// Counts a payment only once `blocks` more blocks are on top of it (default 0: as soon
    /// as it is mined), so a payment a reorganisation drops is not counted.
    pub fn with_confirmations(mut self, blocks: u64) -> Self {
        self.confirmations = blocks;
        self
    }

    /// Enters in `books` the payments that reached the payee since the last poll, and the
    /// state of every escrow held for it that changed; returns how many payments were new. A
    /// payment or escrow whose payer tag is not a node id is not entered.
    pub async fn poll(&mut self, books: &Books) -> Result<usize, ChainError> {
        let node = |error: &dyn std::fmt::Display| ChainError::Node {
            url: self.rpc.clone(),
            message: error.to_string(),
        };
        let head = self
            .provider
            .get_block_number()
            .await
            .map_err(|e| node(&e))?;
        let Some(latest) = head.checked_sub(self.confirmations) else {
            return Ok(0);
        };
        let mut new = 0;
        // Nodes cap the blocks one query may span; a long way behind is read in steps.
        while self.next_block <= latest {
            let to = latest.min(self.next_block.saturating_add(LOG_RANGE - 1));
            let filter = Filter::new()
                .address(self.contract)
                .event_signature(vec![
                    BatchPay::Payment::SIGNATURE_HASH,
                    BatchPay::EscrowChanged::SIGNATURE_HASH,
                ])
                .topic1(self.payee.into_word())
                .from_block(self.next_block)
                .to_block(to);
            let logs = self
                .provider
                .get_logs(&filter)
                .await
                .map_err(|e| node(&e))?;
            for log in logs {
                if let Ok(event) = BatchPay::EscrowChanged::decode_log(&log.inner) {
                    let Ok(requestor) = NodeId::from_bytes(event.from.0) else {
                        continue;
                    };
                    let escrow = Escrow {
                        depositor: event.depositor.into_array(),
                        amount: saturating_u128(event.amount),
                        releasing: !event.releaseAt.is_zero(),
                    };
                    books.escrow_changed(requestor, escrow)?;
                    continue;
                }
                let Ok(event) = BatchPay::Payment::decode_log(&log.inner) else {
                    continue;
                };
                let Ok(requestor) = NodeId::from_bytes(event.from.0) else {
                    tracing::debug!(from = %event.from, "a payment from a payer that is not a node");
                    continue;
                };
                let mut reference = blake3::Hasher::new_derive_key("golem chain payment v1");
                reference.update(log.transaction_hash.unwrap_or_default().as_slice());
                reference.update(&log.log_index.unwrap_or_default().to_le_bytes());
                let reference = *reference.finalize().as_bytes();
                if books.arrived(requestor, saturating_u128(event.amount), reference)? {
                    new += 1;
                }
            }
            self.next_block = to + 1;
        }
        Ok(new)
    }
}

/// Most blocks one log query spans.
const LOG_RANGE: u64 = 5_000;

/// Makes ring the process's TLS crypto provider, unless the program installed one.
///
/// alloy's HTTP client (reqwest) shares its build with iroh's, which asks for rustls without a
/// crypto provider of its own; such a client panics when it is built unless a process default
/// exists. Every constructor here calls this; call it before building alloy providers of your
/// own.
pub fn install_tls_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may have installed one in between; either way one is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// A provider signing with `secret`, with gas estimation, the node's nonce each time (a
/// refused transaction leaves no gap) and the chain id.
fn wallet_provider(rpc: &str, secret: [u8; 32]) -> Result<(DynProvider, Address), ChainError> {
    let url = rpc
        .parse()
        .map_err(|error| ChainError::Config(format!("`{rpc}` is not a URL: {error}")))?;
    let signer = PrivateKeySigner::from_bytes(&B256::from(secret))
        .map_err(|error| ChainError::Config(format!("the payer key is not usable: {error}")))?;
    let payer = signer.address();
    install_tls_provider();
    let provider = ProviderBuilder::new()
        .disable_recommended_fillers()
        .with_gas_estimation()
        .with_simple_nonce_management()
        .fetch_chain_id()
        .wallet(EthereumWallet::from(signer))
        .connect_http(url)
        .erased();
    Ok((provider, payer))
}

/// The runtime code BatchPay's constructor leaves on chain: what follows the creation code's
/// `RETURN` and `INVALID` (`f3 fe`), as solc lays it out.
fn deployed_code() -> Option<Vec<u8>> {
    let code = from_hex(BATCH_PAY_BIN.trim())?;
    let at = code.windows(2).position(|pair| pair == [0xf3, 0xfe])?;
    Some(code[at + 2..].to_vec())
}

fn saturating_u128(value: U256) -> u128 {
    u128::try_from(value).unwrap_or(u128::MAX)
}

/// The bytes that `hex` (an even number of hex digits) spells.
fn from_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(hex.get(at..at + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interface_matches_the_compiled_contract() {
        let runtime = deployed_code().expect("the bytecode holds its runtime code");
        let hex: String = runtime.iter().map(|byte| format!("{byte:02x}")).collect();
        // solc's dispatcher compares the call's selector with each function's in a PUSH4.
        for (name, selector) in [
            ("pay", BatchPay::payCall::SELECTOR),
            ("paid", BatchPay::paidCall::SELECTOR),
            ("unclaimed", BatchPay::unclaimedCall::SELECTOR),
            ("withdraw", BatchPay::withdrawCall::SELECTOR),
            ("deposit", BatchPay::depositCall::SELECTOR),
            ("announceRelease", BatchPay::announceReleaseCall::SELECTOR),
            ("release", BatchPay::releaseCall::SELECTOR),
            ("claim", BatchPay::claimCall::SELECTOR),
        ] {
            let push4: String = std::iter::once(0x63u8)
                .chain(selector)
                .map(|byte| format!("{byte:02x}"))
                .collect();
            assert!(hex.contains(&push4), "{name} is not in the bytecode");
        }
        let topic: String = BatchPay::Payment::SIGNATURE_HASH
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        assert!(
            hex.contains(&topic),
            "the Payment event is not in the bytecode"
        );
        assert!(BATCH_PAY_SOURCE.contains(&format!("pragma solidity {SOLC_VERSION};")));
        assert!(BATCH_PAY_ABI.contains("\"name\":\"Payment\""));
    }
}
