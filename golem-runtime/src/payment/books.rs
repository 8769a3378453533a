//! The provider's own books: what each requestor promised to pay (the provider's price times
//! the fuel of every batch it returned under a signed receipt) and what arrived.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

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

/// A provider's record of what it is owed, in redb: kept by the provider itself, so it does not
/// depend on what a requestor says it owes.
#[derive(Debug)]
pub struct Books {
    db: Db,
}

impl Books {
    /// Opens the books at `path`, creating them when missing.
    pub fn open(path: &Path) -> Result<Self, PaymentError> {
        Ok(Self {
            db: open_store(Some(path))?,
        })
    }

    /// Books in memory, gone with the process.
    pub fn in_memory() -> Result<Self, PaymentError> {
        Ok(Self {
            db: open_store(None)?,
        })
    }

    fn error(&self, error: impl fmt::Display) -> PaymentError {
        store_error(&self.db, error)
    }

    /// `requestor` was given results worth `nano` billionths of a unit.
    pub fn promise(&self, requestor: NodeId, nano: u128) -> Result<(), PaymentError> {
        if nano == 0 {
            return Ok(());
        }
        let write = self.db.db.begin_write().map_err(|e| self.error(e))?;
        {
            let mut promised = write.open_table(PROMISED).map_err(|e| self.error(e))?;
            add_amount(&mut promised, requestor.as_bytes(), nano).map_err(|e| self.error(e))?;
        }
        write.commit().map_err(|e| self.error(e))
    }

    /// `amount` units arrived from `requestor`; `reference` names the payment (a transaction
    /// and log index), so the same payment seen twice counts once. Returns whether it was new.
    pub fn arrived(
        &self,
        requestor: NodeId,
        amount: u128,
        reference: [u8; 32],
    ) -> Result<bool, PaymentError> {
        let write = self.db.db.begin_write().map_err(|e| self.error(e))?;
        let new = {
            let mut arrivals = write.open_table(ARRIVALS).map_err(|e| self.error(e))?;
            if arrivals
                .get(&reference)
                .map_err(|e| self.error(e))?
                .is_some()
            {
                false
            } else {
                arrivals
                    .insert(&reference, amount)
                    .map_err(|e| self.error(e))?;
                let mut arrived = write.open_table(ARRIVED).map_err(|e| self.error(e))?;
                add_amount(&mut arrived, requestor.as_bytes(), amount)
                    .map_err(|e| self.error(e))?;
                true
            }
        };
        write.commit().map_err(|e| self.error(e))?;
        Ok(new)
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
}
