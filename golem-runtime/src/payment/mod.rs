//! Paying providers for accepted results: priced receipts, the [`PaymentHook`] that sees them,
//! the embedded [`Ledger`] (the default hook), the provider's own [`Books`], and, behind the
//! `ethereum` feature, settlement on chain (`ethereum`).
//!
//! A result is worth its fuel times the rate of the offer it was bought under
//! ([`Offer::price_per_gfuel`](crate::proto::message::Offer::price_per_gfuel), per billion
//! units of fuel). Amounts are kept exactly, in billionths of the currency's smallest unit, and
//! paid in whole units; the remainder stays owed.
//!
//! The ledger records each receipt once, however often it is handed in, and settles in two
//! steps so that a crash between them never pays twice: [`Ledger::begin_settlement`] moves what
//! is owed into a pending settlement in one transaction; the payment is made; then
//! [`Ledger::finish_settlement`] marks it paid, or puts the amounts back when it failed. A
//! settlement still pending after a restart ([`Ledger::pending`]) is resolved by asking the
//! payment backend whether it went through.
//!
//! A provider says where it wants to be paid ([`Payee`]) in its hello; the requestor hands that
//! on with each receipt and the ledger keeps it for the settlements.

use std::fmt;
use std::path::{Path, PathBuf};

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::db::{Amounts, Db, add_amount};
use crate::identity::NodeId;
pub use crate::identity::Payee;
use crate::receipt::Receipt;

mod books;
#[cfg(feature = "ethereum")]
pub mod ethereum;

pub use books::{Account, Books, Credit, Escrow, OnCredit};

/// Billionths of the smallest currency unit per unit.
pub const NANO: u128 = 1_000_000_000;

/// An accepted receipt and the rate it is paid at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Priced {
    /// The provider's signed receipt.
    pub receipt: Receipt,
    /// Price per billion units of fuel, in the smallest currency unit.
    pub price_per_gfuel: u64,
    /// Where the provider wants to be paid, if it said.
    pub payee: Option<Payee>,
}

impl Priced {
    /// What the receipt is worth, in billionths of the smallest currency unit.
    pub fn nano_amount(&self) -> u128 {
        u128::from(self.receipt.fuel()) * u128::from(self.price_per_gfuel)
    }

    /// The receipt's identity in the ledger: its signature is unique to its provider, job and
    /// entries.
    fn key(&self) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_derive_key("golem ledger receipt v1");
        hasher.update(self.receipt.provider.as_bytes());
        hasher.update(&self.receipt.job);
        hasher.update(&self.receipt.signature.0);
        *hasher.finalize().as_bytes()
    }
}

/// One transfer of a settlement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    /// Who is paid.
    pub provider: NodeId,
    /// Where, as the provider last said.
    pub payee: Option<Payee>,
    /// How much, in the smallest currency unit.
    pub amount: u128,
}

/// A payment could not be recorded or made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PaymentError {
    /// The ledger's database failed.
    #[error("ledger {path}: {message}")]
    Store {
        /// The database file (empty for an in-memory ledger).
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// No settlement has this id.
    #[error("no pending settlement {0}")]
    UnknownSettlement(u64),
}

/// Sees the priced receipts of every job's accepted results. Implementations must be
/// idempotent: a receipt handed in twice is owed once.
pub trait PaymentHook: Send + Sync {
    /// Records accepted results.
    fn accepted(&self, receipts: &[Priced]) -> Result<(), PaymentError>;
}

/// Opens the database at `path`, or one in memory (gone with the process) when `None`.
fn open_store(path: Option<&Path>) -> Result<Db, PaymentError> {
    let db = match path {
        Some(path) => Db::open(path),
        None => Db::in_memory(),
    };
    db.map_err(|message| PaymentError::Store {
        path: path.map(PathBuf::from).unwrap_or_default(),
        message,
    })
}

/// `error` from the database `db`.
fn store_error(db: &Db, error: impl fmt::Display) -> PaymentError {
    PaymentError::Store {
        path: db.path.clone(),
        message: error.to_string(),
    }
}

/// Receipts already recorded: key → nano amount.
const RECEIPTS: Amounts = TableDefinition::new("receipts_v1");
/// Owed per provider, in nano units.
const OWED: Amounts = TableDefinition::new("owed_v1");
/// Where each provider wants to be paid: node id → postcard(Payee).
const PAYEES: TableDefinition<'_, &[u8; 32], &[u8]> = TableDefinition::new("payees_v1");
/// Settlements: id → postcard(Settlement).
const SETTLEMENTS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("settlements_v2");
/// The ledger's own facts: its random id.
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta_v1");

/// A batch of payments and where it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settlement {
    /// Its id, increasing.
    pub id: u64,
    /// The transfers.
    pub payments: Vec<Payment>,
    /// Where it stands.
    pub state: SettlementState,
}

/// Where a settlement stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SettlementState {
    /// Taken off the balances; the payment may or may not have been made.
    Pending,
    /// Paid.
    Paid,
    /// Failed; its amounts are owed again.
    Failed,
}

/// The embedded ledger: receipts, balances and settlements in redb, every change one
/// transaction.
#[derive(Debug)]
pub struct Ledger {
    db: Db,
    id: [u8; 16],
}

impl Ledger {
    /// Opens the ledger at `path`, creating it (and its directory) when missing; waits up to
    /// 3 s for another holder to let go.
    pub fn open(path: &Path) -> Result<Self, PaymentError> {
        Self::with_db(open_store(Some(path))?)
    }

    /// A ledger in memory, gone with the process.
    pub fn in_memory() -> Result<Self, PaymentError> {
        Self::with_db(open_store(None)?)
    }

    /// Reads the ledger's id, drawing it when the ledger is new.
    fn with_db(db: Db) -> Result<Self, PaymentError> {
        let mut ledger = Self { db, id: [0; 16] };
        let write = ledger.db.db.begin_write().map_err(|e| ledger.error(e))?;
        {
            let mut meta = write.open_table(META).map_err(|e| ledger.error(e))?;
            let stored = meta
                .get("id")
                .map_err(|e| ledger.error(e))?
                .and_then(|guard| <[u8; 16]>::try_from(guard.value()).ok());
            match stored {
                Some(id) => ledger.id = id,
                None => {
                    getrandom::fill(&mut ledger.id).map_err(|e| ledger.error(e))?;
                    meta.insert("id", ledger.id.as_slice())
                        .map_err(|e| ledger.error(e))?;
                }
            }
        }
        write.commit().map_err(|e| ledger.error(e))?;
        Ok(ledger)
    }

    fn error(&self, error: impl fmt::Display) -> PaymentError {
        store_error(&self.db, error)
    }

    /// The ledger's random id, drawn when it was created: it names this ledger's settlements
    /// where several ledgers may pay (a payment contract).
    pub fn id(&self) -> [u8; 16] {
        self.id
    }

    /// A name for settlement `id` that no other ledger's settlement has.
    pub fn settlement_key(&self, id: u64) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_derive_key("golem settlement v1");
        hasher.update(&self.id);
        hasher.update(&id.to_le_bytes());
        *hasher.finalize().as_bytes()
    }

    /// Records `receipts` in one transaction; returns how many were new. A receipt naming a
    /// payee also records where its provider wants to be paid.
    pub fn record(&self, receipts: &[Priced]) -> Result<usize, PaymentError> {
        let write = self.db.db.begin_write().map_err(|e| self.error(e))?;
        let mut new = 0;
        {
            let mut recorded = write.open_table(RECEIPTS).map_err(|e| self.error(e))?;
            let mut owed = write.open_table(OWED).map_err(|e| self.error(e))?;
            let mut payees = write.open_table(PAYEES).map_err(|e| self.error(e))?;
            for priced in receipts {
                let provider = priced.receipt.provider.as_bytes();
                if let Some(payee) = &priced.payee {
                    let bytes = postcard::to_allocvec(payee).map_err(|e| self.error(e))?;
                    payees
                        .insert(provider, bytes.as_slice())
                        .map_err(|e| self.error(e))?;
                }
                let key = priced.key();
                if recorded.get(&key).map_err(|e| self.error(e))?.is_some() {
                    continue;
                }
                let amount = priced.nano_amount();
                recorded.insert(&key, amount).map_err(|e| self.error(e))?;
                add_amount(&mut owed, provider, amount).map_err(|e| self.error(e))?;
                new += 1;
            }
        }
        write.commit().map_err(|e| self.error(e))?;
        Ok(new)
    }

    /// Receipts recorded, and what they were worth in all, in billionths of the smallest
    /// currency unit (paid or not).
    pub fn recorded(&self) -> Result<(u64, u128), PaymentError> {
        let mut total = (0u64, 0u128);
        self.db
            .scan(RECEIPTS, |_, nano| {
                total = (total.0 + 1, total.1.saturating_add(nano));
            })
            .map_err(|e| self.error(e))?;
        Ok(total)
    }

    /// What each provider is owed, in billionths of the smallest currency unit.
    pub fn owed(&self) -> Result<Vec<(NodeId, u128)>, PaymentError> {
        let mut owed = Vec::new();
        self.db
            .scan(OWED, |key, nano| {
                if let Ok(node) = NodeId::from_bytes(*key) {
                    owed.push((node, nano));
                }
            })
            .map_err(|e| self.error(e))?;
        Ok(owed)
    }

    /// Moves every whole unit owed into a new pending settlement; `None` when nothing is owed.
    pub fn begin_settlement(&self) -> Result<Option<Settlement>, PaymentError> {
        self.begin_settlement_with(usize::MAX, |_| true)
    }

    /// Moves the whole units owed to at most `max_payments` providers that `payable` accepts
    /// (a backend pays only providers with a payee it can reach) into a new pending settlement;
    /// `None` when there are none.
    pub fn begin_settlement_with(
        &self,
        max_payments: usize,
        payable: impl Fn(&Payment) -> bool,
    ) -> Result<Option<Settlement>, PaymentError> {
        let write = self.db.db.begin_write().map_err(|e| self.error(e))?;
        let settlement = {
            let mut owed = write.open_table(OWED).map_err(|e| self.error(e))?;
            let payees = write.open_table(PAYEES).map_err(|e| self.error(e))?;
            let mut settlements = write.open_table(SETTLEMENTS).map_err(|e| self.error(e))?;
            let mut payments = Vec::new();
            let mut remainders = Vec::new();
            for row in owed.iter().map_err(|e| self.error(e))? {
                if payments.len() >= max_payments {
                    break;
                }
                let (key, value) = row.map_err(|e| self.error(e))?;
                let (key, nano) = (*key.value(), value.value());
                let Ok(provider) = NodeId::from_bytes(key) else {
                    continue;
                };
                if nano < NANO {
                    continue;
                }
                let payee = payees
                    .get(&key)
                    .map_err(|e| self.error(e))?
                    .and_then(|guard| postcard::from_bytes(guard.value()).ok());
                let payment = Payment {
                    provider,
                    payee,
                    amount: nano / NANO,
                };
                if payable(&payment) {
                    payments.push(payment);
                    remainders.push((key, nano % NANO));
                }
            }
            if payments.is_empty() {
                None
            } else {
                for (key, rest) in &remainders {
                    owed.insert(key, *rest).map_err(|e| self.error(e))?;
                }
                let id = settlements
                    .last()
                    .map_err(|e| self.error(e))?
                    .map_or(0, |(key, _)| key.value() + 1);
                let settlement = Settlement {
                    id,
                    payments,
                    state: SettlementState::Pending,
                };
                let bytes = postcard::to_allocvec(&settlement).map_err(|e| self.error(e))?;
                settlements
                    .insert(id, bytes.as_slice())
                    .map_err(|e| self.error(e))?;
                Some(settlement)
            }
        };
        write.commit().map_err(|e| self.error(e))?;
        Ok(settlement)
    }

    /// Ends pending settlement `id`: paid, or failed (its amounts are owed again).
    pub fn finish_settlement(&self, id: u64, paid: bool) -> Result<(), PaymentError> {
        let write = self.db.db.begin_write().map_err(|e| self.error(e))?;
        {
            let mut settlements = write.open_table(SETTLEMENTS).map_err(|e| self.error(e))?;
            let stored = settlements
                .get(id)
                .map_err(|e| self.error(e))?
                .map(|guard| guard.value().to_vec())
                .ok_or(PaymentError::UnknownSettlement(id))?;
            let mut settlement: Settlement =
                postcard::from_bytes(&stored).map_err(|e| self.error(e))?;
            if settlement.state != SettlementState::Pending {
                return Err(PaymentError::UnknownSettlement(id));
            }
            if !paid {
                let mut owed = write.open_table(OWED).map_err(|e| self.error(e))?;
                for payment in &settlement.payments {
                    let back = payment.amount.saturating_mul(NANO);
                    add_amount(&mut owed, payment.provider.as_bytes(), back)
                        .map_err(|e| self.error(e))?;
                }
            }
            settlement.state = if paid {
                SettlementState::Paid
            } else {
                SettlementState::Failed
            };
            let bytes = postcard::to_allocvec(&settlement).map_err(|e| self.error(e))?;
            settlements
                .insert(id, bytes.as_slice())
                .map_err(|e| self.error(e))?;
        }
        write.commit().map_err(|e| self.error(e))
    }

    /// Settlements still pending: begun, and not known to be paid or failed.
    pub fn pending(&self) -> Result<Vec<Settlement>, PaymentError> {
        let mut settlements = Vec::new();
        self.db
            .scan(SETTLEMENTS, |_, bytes| {
                settlements.push(postcard::from_bytes::<Settlement>(bytes));
            })
            .map_err(|e| self.error(e))?;
        let mut pending = Vec::new();
        for settlement in settlements {
            let settlement = settlement.map_err(|e| self.error(e))?;
            if settlement.state == SettlementState::Pending {
                pending.push(settlement);
            }
        }
        Ok(pending)
    }
}

impl PaymentHook for Ledger {
    fn accepted(&self, receipts: &[Priced]) -> Result<(), PaymentError> {
        self.record(receipts).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeKey;
    use crate::receipt::ReceiptEntry;

    fn priced(provider: u8, job: u8, fuel: u64, price: u64) -> Priced {
        let key = NodeKey::from_secret([provider; 32]);
        let entry = ReceiptEntry {
            index: 0,
            input: [0; 32],
            output: [1; 32],
            fuel,
        };
        Priced {
            receipt: Receipt::sign(&key, [job; 32], vec![entry]),
            price_per_gfuel: price,
            payee: None,
        }
    }

    fn owed_by(ledger: &Ledger, provider: u8) -> u128 {
        let node = NodeKey::from_secret([provider; 32]).node_id();
        ledger
            .owed()
            .expect("reads")
            .into_iter()
            .find(|(owed, _)| *owed == node)
            .map_or(0, |(_, nano)| nano)
    }

    #[test]
    fn a_receipt_is_owed_once_and_survives_a_reopen() {
        let dir = std::env::temp_dir().join(format!("golem-ledger-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("ledger.redb");
        let first = priced(1, 1, 3_000_000_000, 5);
        {
            let ledger = Ledger::open(&path).expect("opens");
            assert_eq!(ledger.record(&[first.clone(), priced(2, 1, 10, 7)]), Ok(2));
            assert_eq!(
                ledger.record(std::slice::from_ref(&first)),
                Ok(0),
                "recorded once"
            );
        }
        let ledger = Ledger::open(&path).expect("reopens");
        assert_eq!(ledger.record(&[first]), Ok(0), "still once after a reopen");
        assert_eq!(owed_by(&ledger, 1), 15 * NANO);
        assert_eq!(owed_by(&ledger, 2), 70);
        assert_eq!(ledger.recorded(), Ok((2, 15 * NANO + 70)));
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn settlements_pay_whole_units_and_a_failed_one_is_owed_again() {
        let ledger = Ledger::in_memory().expect("ledger");
        ledger
            .record(&[priced(1, 1, 2_500_000_000, 2), priced(2, 1, 100, 1)])
            .expect("records");
        let settlement = ledger.begin_settlement().expect("begins").expect("owed");
        let one = NodeKey::from_secret([1; 32]).node_id();
        assert_eq!(
            settlement.payments,
            [Payment {
                provider: one,
                payee: None,
                amount: 5
            }]
        );
        assert_eq!(owed_by(&ledger, 1), 0, "moved into the settlement");
        assert_eq!(owed_by(&ledger, 2), 100, "less than a unit stays owed");
        assert_eq!(
            ledger.pending().expect("reads"),
            std::slice::from_ref(&settlement)
        );
        assert_eq!(ledger.begin_settlement(), Ok(None), "nothing more to pay");
        ledger
            .finish_settlement(settlement.id, false)
            .expect("fails cleanly");
        assert_eq!(owed_by(&ledger, 1), 5 * NANO, "owed again");
        assert!(ledger.pending().expect("reads").is_empty());
        let again = ledger.begin_settlement().expect("begins").expect("owed");
        assert_eq!(again.id, settlement.id + 1);
        ledger.finish_settlement(again.id, true).expect("paid");
        assert_eq!(owed_by(&ledger, 1), 0);
        assert_eq!(
            ledger.finish_settlement(again.id, true),
            Err(PaymentError::UnknownSettlement(again.id)),
            "a settlement ends once"
        );
    }

    #[test]
    fn settlements_carry_payees_and_take_only_what_the_backend_can_pay() {
        let dir = std::env::temp_dir().join(format!("golem-ledger-payees-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("ledger.redb");
        let ledger = Ledger::open(&path).expect("opens");
        let id = ledger.id();
        let mut paid = priced(1, 1, 1_000_000_000, 4);
        paid.payee = Some(Payee::Ethereum([7; 20]));
        let mut other = priced(3, 1, 1_000_000_000, 6);
        other.payee = Some(Payee::Ethereum([8; 20]));
        ledger
            .record(&[paid, other, priced(2, 1, 1_000_000_000, 5)])
            .expect("records");
        let on_chain = |payment: &Payment| payment.payee.is_some();
        let first = ledger
            .begin_settlement_with(1, on_chain)
            .expect("begins")
            .expect("owed");
        assert_eq!(first.payments.len(), 1, "at most one payment");
        assert!(first.payments[0].payee.is_some());
        let second = ledger
            .begin_settlement_with(10, on_chain)
            .expect("begins")
            .expect("owed");
        assert_eq!(second.payments.len(), 1);
        let payees: Vec<_> = [&first, &second]
            .iter()
            .map(|s| s.payments[0].payee)
            .collect();
        assert!(payees.contains(&Some(Payee::Ethereum([7; 20]))));
        assert!(payees.contains(&Some(Payee::Ethereum([8; 20]))));
        assert_eq!(
            ledger.begin_settlement_with(10, on_chain),
            Ok(None),
            "the provider without a payee is left owed"
        );
        assert_eq!(owed_by(&ledger, 2), 5 * NANO);
        assert_ne!(ledger.settlement_key(0), ledger.settlement_key(1));
        drop(ledger);
        let reopened = Ledger::open(&path).expect("reopens");
        assert_eq!(reopened.id(), id, "the id is kept");
        assert_eq!(reopened.pending().expect("reads").len(), 2);
        let other = Ledger::in_memory().expect("ledger");
        assert_ne!(other.settlement_key(0), reopened.settlement_key(0));
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn payees_parse_and_print_as_ethereum_addresses() {
        let text = "0x00112233445566778899aabbccddeeff00112233";
        let payee: Payee = text.parse().expect("an address");
        assert_eq!(payee.to_string(), text);
        assert!("0x0011".parse::<Payee>().is_err());
        assert!(
            "00112233445566778899aabbccddeeff0011223344"
                .parse::<Payee>()
                .is_err()
        );
        assert!(
            "0xzz112233445566778899aabbccddeeff00112233"
                .parse::<Payee>()
                .is_err()
        );
    }
}
