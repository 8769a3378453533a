//! Helpers shared by the end-to-end tests and the processes they start.

use std::time::Duration;

use golem::{Golem, GolemBuilder, Ledger};
use golem_runtime::adversarial::Network;

/// A requestor built from `builder` that joins every provider of `network` and waits (up to
/// 20 s) until all of them are connected.
pub fn join_all(network: &Network, builder: GolemBuilder) -> Golem {
    let builder = builder
        .providers(0)
        .min_providers(network.providers().len())
        .wait(Duration::from_secs(20));
    network
        .addresses()
        .into_iter()
        .fold(builder, |builder, addr| builder.join(addr))
        .build_blocking()
        .expect("every provider of the network found")
}

/// What `ledger` owes all providers together, in billionths of the smallest currency unit.
pub fn owed_in_all(ledger: &Ledger) -> u128 {
    ledger
        .owed()
        .expect("the ledger reads")
        .iter()
        .map(|(_, nano)| nano)
        .sum()
}
