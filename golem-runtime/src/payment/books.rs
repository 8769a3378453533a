//! The provider's own books: what each requestor promised to pay (the provider's price times
//! the fuel of every batch it returned under a signed receipt) and what arrived; and the
//! [`Credit`] the provider gives before it is paid.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::{NANO, PaymentError, open_store, store_error};
use crate::db::{Amounts, Db, add_amount};
use crate::identity::NodeId;

/// Promised per requestor, in billionths of the smallest currency unit.
const PROMISED: Amounts = TableDefinition::new("promised_v1");
/// Arrived per requestor, in the smallest currency unit.
const ARRIVED: Amounts = TableDefinition::new("arrived_v1");
/// Arrivals already counted: reference → amount.
const ARRIVALS: Amounts = TableDefinition::new("arrivals_v1");
/// Escrows on chain for this provider, as last seen: requestor and depositor (32 and 20
/// bytes) → amount held, and whether a release is announced.
const ESCROWS: TableDefinition<'static, &'static [u8; 52], (u128, bool)> =
    TableDefinition::new("escrows_v1");

/// What a depositor holds on chain for this provider on behalf of a requestor, as last seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Escrow {
    /// Who deposited it, and may take back what is left once a release is announced and the
    /// wait is over.
    pub depositor: [u8; 20],
    /// What it holds, in the smallest currency unit.
    pub amount: u128,
    /// Whether its depositor announced a release: from then on it covers nothing, and the
    /// provider should claim what it is owed before the wait is over.
    pub releasing: bool,
}

fn escrow_key(requestor: NodeId, depositor: [u8; 20]) -> [u8; 52] {
    let mut key = [0; 52];
    key[..32].copy_from_slice(requestor.as_bytes());
    key[32..].copy_from_slice(&depositor);
    key
}

/// The escrows held for `requestor` in `table`.
fn escrows_in(
    table: &impl ReadableTable<&'static [u8; 52], (u128, bool)>,
    requestor: NodeId,
) -> Result<Vec<Escrow>, redb::StorageError> {
    let low = escrow_key(requestor, [0; 20]);
    let high = escrow_key(requestor, [0xff; 20]);
    let mut escrows = Vec::new();
    for row in table.range::<&[u8; 52]>(&low..=&high)? {
        let (key, value) = row?;
        let (amount, releasing) = value.value();
        let mut depositor = [0; 20];
        depositor.copy_from_slice(&key.value()[32..]);
        escrows.push(Escrow {
            depositor,
            amount,
            releasing,
        });
    }
    Ok(escrows)
}

/// What `escrows` cover: every amount not being released.
fn cover(escrows: &[Escrow]) -> u128 {
    escrows
        .iter()
        .filter(|escrow| !escrow.releasing)
        .fold(0, |sum, escrow| sum.saturating_add(escrow.amount))
}

/// One requestor's account in a provider's [`Books`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Account {
    /// Worth of the work delivered, in billionths of the smallest currency unit.
    pub promised_nano: u128,
    /// Paid, in the smallest currency unit.
    pub arrived: u128,
}

impl Account {
    /// Whole units delivered and not paid for. A requestor pays whole units and carries the
    /// remainder, so the fraction of a unit is not counted.
    pub fn owed(&self) -> u128 {
        (self.promised_nano / NANO).saturating_sub(self.arrived)
    }
}

/// How much work a provider gives before it is paid, in whole units by its [`Books`].
///
/// A node id costs nothing to make, so a credit per requestor alone is a credit per key: a
/// requestor could take unpaid work under fresh keys without end. Hence four limits:
///
/// - a requestor the provider has never been paid by may owe [`first`](Self::first) at most;
/// - that grows by what it has paid, up to [`per_requestor`](Self::per_requestor), so credit
///   is earned by payment, not by making keys;
/// - all requestors that have never paid together may owe [`strangers`](Self::strangers) at
///   most: past it no new key is served on credit, and the rest of the total stays for
///   requestors that pay, however many keys the others make;
/// - all requestors together may owe [`total`](Self::total) at most beyond their escrows:
///   once they do, no one is given new work on credit until payments arrive.
///
/// What a requestor's escrows hold on chain for this provider ([`Escrow`]) is not credit: the
/// provider can claim it, so a requestor may owe that much more, total or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credit {
    /// The most one requestor may owe beyond its escrow, however much it has paid before.
    pub per_requestor: u128,
    /// The most a requestor that has never paid may owe beyond its escrow.
    pub first: u128,
    /// The most every requestor that has never paid may owe together beyond their escrows.
    pub strangers: u128,
    /// The most every requestor together may owe beyond their escrows.
    pub total: u128,
}

impl Credit {
    /// A credit of `per_requestor`, a tenth of it for a requestor that has never paid, ten
    /// times it for all requestors together, and half of that for all that have never paid.
    pub fn new(per_requestor: u128) -> Self {
        let total = per_requestor.saturating_mul(10);
        Self {
            per_requestor,
            first: per_requestor / 10,
            strangers: total / 2,
            total,
        }
    }

    /// The most a requestor with `account` may owe beyond its escrow, by its own history.
    pub fn limit(&self, account: &Account) -> u128 {
        self.first
            .saturating_add(account.arrived)
            .min(self.per_requestor)
    }

    /// Whether a requestor with `account` and `escrow` (what its escrows cover) is refused new
    /// work while requestors owe `on_credit` beyond their escrows: `Some(limit)`, the most it
    /// may owe now, when it is. A requestor is served while it owes no more than its
    /// [`limit`](Self::limit) and its escrow; once all together owe [`total`](Self::total),
    /// or it has never paid and all such owe [`strangers`](Self::strangers), only while it
    /// owes less than its escrow.
    pub fn refuses(&self, account: &Account, escrow: u128, on_credit: OnCredit) -> Option<u128> {
        let owed = account.owed();
        let stranger = account.arrived == 0;
        if on_credit.all >= self.total || (stranger && on_credit.strangers >= self.strangers) {
            return (owed >= escrow).then_some(escrow);
        }
        let limit = self.limit(account).saturating_add(escrow);
        (owed > limit).then_some(limit)
    }
}

/// What requestors owe a provider beyond their escrows, in whole units: the work it has given
/// on credit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OnCredit {
    /// What every requestor together owes.
    pub all: u128,
    /// What the requestors that have never paid owe together.
    pub strangers: u128,
}

impl OnCredit {
    /// `self` with one requestor's part, owing `owed` and a stranger or not, taken out
    /// (`add` false) or put in. The sums wrap, so changes applied out of order still end at
    /// the right sums; [`settled`](Self::settled) reads a sum caught below zero meanwhile as
    /// zero.
    fn with(mut self, (owed, stranger): (u128, bool), add: bool) -> Self {
        let step = |sum: u128| {
            if add {
                sum.wrapping_add(owed)
            } else {
                sum.wrapping_sub(owed)
            }
        };
        self.all = step(self.all);
        if stranger {
            self.strangers = step(self.strangers);
        }
        self
    }

    /// The sums as they can be read: one below zero (a change applied before an earlier one)
    /// reads as zero.
    fn settled(self) -> Self {
        let read = |sum: u128| if sum > u128::MAX / 2 { 0 } else { sum };
        Self {
            all: read(self.all),
            strangers: read(self.strangers),
        }
    }
}

/// A provider's record of what it is owed, in redb: kept by the provider itself, so it does not
/// depend on what a requestor says it owes.
#[derive(Debug)]
pub struct Books {
    db: Db,
    /// What requestors owe beyond what their escrows cover, kept as the books change.
    on_credit: Mutex<OnCredit>,
}

/// What `requestor` owes beyond its escrows, read in `write`, and whether it has never paid.
fn on_credit_in(
    write: &redb::WriteTransaction,
    requestor: NodeId,
) -> Result<(u128, bool), redb::Error> {
    let amount = |table| -> Result<u128, redb::Error> {
        let table = write.open_table(table)?;
        let value = table.get(requestor.as_bytes())?.map_or(0, |g| g.value());
        Ok(value)
    };
    let account = Account {
        promised_nano: amount(PROMISED)?,
        arrived: amount(ARRIVED)?,
    };
    let escrows = escrows_in(&write.open_table(ESCROWS)?, requestor)?;
    Ok((
        account.owed().saturating_sub(cover(&escrows)),
        account.arrived == 0,
    ))
}

impl Books {
    /// Opens the books at `path`, creating them when missing.
    pub fn open(path: &Path) -> Result<Self, PaymentError> {
        Self::with(open_store(Some(path))?)
    }

    /// Books in memory, gone with the process.
    pub fn in_memory() -> Result<Self, PaymentError> {
        Self::with(open_store(None)?)
    }

    fn with(db: Db) -> Result<Self, PaymentError> {
        let books = Self {
            db,
            on_credit: Mutex::new(OnCredit::default()),
        };
        let mut on_credit = OnCredit::default();
        for (requestor, account) in books.accounts()? {
            let escrow = cover(&books.escrows(requestor)?);
            let owed = account.owed().saturating_sub(escrow);
            on_credit = on_credit.with((owed, account.arrived == 0), true);
        }
        *books.total() = on_credit;
        Ok(books)
    }

    fn error(&self, error: impl fmt::Display) -> PaymentError {
        store_error(&self.db, error)
    }

    fn total(&self) -> std::sync::MutexGuard<'_, OnCredit> {
        self.on_credit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// What every requestor together owes beyond what its escrows cover: the work this
    /// provider has given on credit, in whole units.
    pub fn on_credit(&self) -> u128 {
        self.owed_on_credit().all
    }

    /// What requestors owe beyond their escrows: all of them, and those that have never paid.
    pub fn owed_on_credit(&self) -> OnCredit {
        self.total().settled()
    }

    /// Writes one change to `requestor`'s account in one transaction and keeps
    /// [`on_credit`](Self::on_credit) in step; `change` returns what the caller wants back.
    fn change<T>(
        &self,
        requestor: NodeId,
        change: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, PaymentError> {
        let write = self.db.db.begin_write().map_err(|e| self.error(e))?;
        let before = on_credit_in(&write, requestor).map_err(|e| self.error(e))?;
        let back = change(&write).map_err(|e| self.error(e))?;
        let after = on_credit_in(&write, requestor).map_err(|e| self.error(e))?;
        write.commit().map_err(|e| self.error(e))?;
        // Write transactions follow one another, and each moves the sums by its own change, so
        // the changes may be applied in any order, and the lock is not held while the disk
        // syncs.
        let mut total = self.total();
        *total = total.with(before, false).with(after, true);
        Ok(back)
    }

    /// `depositor`'s escrow for `requestor` now holds `amount`, with a release announced or
    /// not, as the chain says.
    pub fn escrow_changed(&self, requestor: NodeId, escrow: Escrow) -> Result<(), PaymentError> {
        self.change(requestor, |write| {
            let mut escrows = write.open_table(ESCROWS)?;
            let key = escrow_key(requestor, escrow.depositor);
            if escrow.amount == 0 {
                escrows.remove(&key)?;
            } else {
                escrows.insert(&key, (escrow.amount, escrow.releasing))?;
            }
            Ok(())
        })
    }

    /// Every requestor with an escrow for this provider, in node id order.
    pub fn escrowed(&self) -> Result<Vec<NodeId>, PaymentError> {
        let mut requestors = Vec::<NodeId>::new();
        let read = self.db.db.begin_read().map_err(|e| self.error(e))?;
        let table = match read.open_table(ESCROWS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(requestors),
            Err(error) => return Err(self.error(error)),
        };
        for row in table.iter().map_err(|e| self.error(e))? {
            let (key, _) = row.map_err(|e| self.error(e))?;
            let mut id = [0; 32];
            id.copy_from_slice(&key.value()[..32]);
            if let Ok(requestor) = NodeId::from_bytes(id)
                && requestors.last() != Some(&requestor)
            {
                requestors.push(requestor);
            }
        }
        Ok(requestors)
    }

    /// The escrows held for `requestor`, by depositor.
    pub fn escrows(&self, requestor: NodeId) -> Result<Vec<Escrow>, PaymentError> {
        let read = self.db.db.begin_read().map_err(|e| self.error(e))?;
        match read.open_table(ESCROWS) {
            Ok(table) => escrows_in(&table, requestor).map_err(|e| self.error(e)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(Vec::new()),
            Err(error) => Err(self.error(error)),
        }
    }

    /// What `requestor`'s escrows cover: every amount whose release is not announced.
    pub fn escrow(&self, requestor: NodeId) -> Result<u128, PaymentError> {
        Ok(cover(&self.escrows(requestor)?))
    }

    /// `requestor` was given results worth `nano` billionths of a unit.
    pub fn promise(&self, requestor: NodeId, nano: u128) -> Result<(), PaymentError> {
        if nano == 0 {
            return Ok(());
        }
        self.change(requestor, |write| {
            let mut promised = write.open_table(PROMISED)?;
            add_amount(&mut promised, requestor.as_bytes(), nano)?;
            Ok(())
        })
    }

    /// `amount` units arrived from `requestor`; `reference` names the payment (a transaction
    /// and log index), so the same payment seen twice counts once. Returns whether it was new.
    pub fn arrived(
        &self,
        requestor: NodeId,
        amount: u128,
        reference: [u8; 32],
    ) -> Result<bool, PaymentError> {
        self.change(requestor, |write| {
            let mut arrivals = write.open_table(ARRIVALS)?;
            if arrivals.get(&reference)?.is_some() {
                return Ok(false);
            }
            arrivals.insert(&reference, amount)?;
            let mut arrived = write.open_table(ARRIVED)?;
            add_amount(&mut arrived, requestor.as_bytes(), amount)?;
            Ok(true)
        })
    }

    /// `requestor`'s account (all zero for one never seen).
    pub fn account(&self, requestor: NodeId) -> Result<Account, PaymentError> {
        let read = self.db.db.begin_read().map_err(|e| self.error(e))?;
        let get = |table| -> Result<u128, PaymentError> {
            match read.open_table(table) {
                Ok(table) => Ok(table
                    .get(requestor.as_bytes())
                    .map_err(|e| self.error(e))?
                    .map_or(0, |guard| guard.value())),
                Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
                Err(error) => Err(self.error(error)),
            }
        };
        Ok(Account {
            promised_nano: get(PROMISED)?,
            arrived: get(ARRIVED)?,
        })
    }

    /// Every requestor's account, in node id order.
    pub fn accounts(&self) -> Result<Vec<(NodeId, Account)>, PaymentError> {
        let mut accounts = BTreeMap::<[u8; 32], Account>::new();
        self.db
            .scan(PROMISED, |key, nano| {
                accounts.entry(*key).or_default().promised_nano = nano;
            })
            .map_err(|e| self.error(e))?;
        self.db
            .scan(ARRIVED, |key, units| {
                accounts.entry(*key).or_default().arrived = units;
            })
            .map_err(|e| self.error(e))?;
        Ok(accounts
            .into_iter()
            .filter_map(|(key, account)| Some((NodeId::from_bytes(key).ok()?, account)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeKey;

    #[test]
    fn owed_is_whole_units_promised_less_what_arrived_and_each_payment_counts_once() {
        let books = Books::in_memory().expect("books");
        let requestor = NodeKey::from_secret([9; 32]).node_id();
        assert_eq!(books.account(requestor), Ok(Account::default()));
        books.promise(requestor, 7 * NANO + 5).expect("promised");
        books.promise(requestor, 3 * NANO).expect("promised");
        assert_eq!(books.account(requestor).expect("reads").owed(), 10);
        assert_eq!(books.arrived(requestor, 4, [1; 32]), Ok(true));
        assert_eq!(
            books.arrived(requestor, 4, [1; 32]),
            Ok(false),
            "seen twice"
        );
        let account = books.account(requestor).expect("reads");
        assert_eq!(
            account,
            Account {
                promised_nano: 10 * NANO + 5,
                arrived: 4
            }
        );
        assert_eq!(account.owed(), 6);
        assert_eq!(books.accounts(), Ok(vec![(requestor, account)]));
        assert_eq!(books.arrived(requestor, 100, [2; 32]), Ok(true));
        assert_eq!(
            books.account(requestor).expect("reads").owed(),
            0,
            "overpaid"
        );
    }

    #[test]
    fn what_all_requestors_owe_on_credit_follows_every_change_and_survives_reopening() {
        let dir = std::env::temp_dir().join(format!("golem-books-{}", std::process::id()));
        // Left by an earlier run of this process id, if any.
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("books.redb");
        let (a, b) = (
            NodeKey::from_secret([1; 32]).node_id(),
            NodeKey::from_secret([2; 32]).node_id(),
        );
        {
            let books = Books::open(&path).expect("books");
            books.promise(a, 5 * NANO).expect("promised");
            books.promise(b, 3 * NANO).expect("promised");
            assert_eq!(
                books.owed_on_credit(),
                OnCredit {
                    all: 8,
                    strangers: 8
                }
            );
            assert_eq!(books.arrived(a, 2, [1; 32]), Ok(true));
            assert_eq!(books.arrived(a, 2, [1; 32]), Ok(false));
            // Having paid, `a` is no stranger.
            assert_eq!(
                books.owed_on_credit(),
                OnCredit {
                    all: 6,
                    strangers: 3
                }
            );
            // Overpaid: `a` owes nothing, and its surplus does not lower what `b` owes.
            assert_eq!(books.arrived(a, 10, [2; 32]), Ok(true));
            assert_eq!(books.on_credit(), 3);
        }
        {
            let books = Books::open(&path).expect("reopens");
            assert_eq!(books.on_credit(), 3);
            // An escrow covers what its requestor owes; its release being announced, it does
            // not.
            let mut escrow = Escrow {
                depositor: [5; 20],
                amount: 2,
                releasing: false,
            };
            books.escrow_changed(b, escrow).expect("entered");
            assert_eq!(books.escrow(b), Ok(2));
            assert_eq!(books.on_credit(), 1);
            books
                .escrow_changed(
                    b,
                    Escrow {
                        depositor: [6; 20],
                        ..escrow
                    },
                )
                .expect("entered");
            assert_eq!(books.escrow(b), Ok(4));
            assert_eq!(books.on_credit(), 0);
            escrow.releasing = true;
            books.escrow_changed(b, escrow).expect("entered");
            assert_eq!(books.escrow(b), Ok(2));
            assert_eq!(books.escrows(b).expect("reads").len(), 2);
            assert_eq!(books.escrows(a), Ok(Vec::new()));
            assert_eq!(books.on_credit(), 1);
        }
        let books = Books::open(&path).expect("reopens");
        assert_eq!(books.on_credit(), 1, "escrows count after reopening");
        std::fs::remove_dir_all(&dir).expect("removed");
    }

    #[test]
    fn credit_starts_low_grows_with_payment_and_stops_for_everyone_at_the_total() {
        let credit = Credit {
            per_requestor: 100,
            first: 10,
            strangers: 200,
            total: 500,
        };
        let account = |owed: u128, arrived: u128| Account {
            promised_nano: (owed + arrived) * NANO,
            arrived,
        };
        let owing = |all: u128, strangers: u128| OnCredit { all, strangers };
        let none = OnCredit::default();
        assert_eq!(credit.limit(&account(0, 0)), 10, "never paid");
        assert_eq!(credit.limit(&account(0, 40)), 50, "grows with what arrived");
        assert_eq!(credit.limit(&account(0, 4_000)), 100, "up to the most");
        assert_eq!(credit.refuses(&account(10, 0), 0, none), None);
        assert_eq!(credit.refuses(&account(11, 0), 0, none), Some(10));
        assert_eq!(credit.refuses(&account(11, 40), 0, none), None);
        assert_eq!(credit.refuses(&account(0, 0), 0, owing(499, 199)), None);
        assert_eq!(
            credit.refuses(&account(0, 4_000), 0, owing(500, 0)),
            Some(0),
            "once all owe the total, not even a good payer is served on credit"
        );
        // Strangers fill their share only: past it a new key is refused, a payer is not.
        assert_eq!(credit.refuses(&account(0, 0), 0, owing(200, 200)), Some(0));
        assert_eq!(credit.refuses(&account(0, 1), 0, owing(200, 200)), None);
        // An escrow is not credit: it adds to the limit, and serves past the total.
        assert_eq!(credit.refuses(&account(30, 0), 25, none), None);
        assert_eq!(credit.refuses(&account(36, 0), 25, none), Some(35));
        assert_eq!(credit.refuses(&account(24, 0), 25, owing(500, 200)), None);
        assert_eq!(
            credit.refuses(&account(25, 0), 25, owing(500, 200)),
            Some(25)
        );
        assert_eq!(Credit::new(1_000).first, 100);
        assert_eq!(Credit::new(1_000).strangers, 5_000);
        assert_eq!(Credit::new(u128::MAX).total, u128::MAX);
    }

    #[test]
    fn changes_applied_out_of_order_end_at_the_same_sums() {
        let (one, two) = ((0, true), (5, true));
        let three = (2, false);
        // One requestor went 0 → 5 owed (a stranger), then 5 → 2 as it paid.
        let in_order = OnCredit::default()
            .with(one, false)
            .with(two, true)
            .with(two, false)
            .with(three, true);
        let reversed = OnCredit::default().with(two, false).with(three, true);
        assert_eq!(
            reversed.settled(),
            OnCredit::default(),
            "below zero reads as zero"
        );
        let reversed = reversed.with(one, false).with(two, true);
        assert_eq!(in_order, reversed);
        assert_eq!(
            in_order.settled(),
            OnCredit {
                all: 2,
                strangers: 0
            }
        );
    }
}
