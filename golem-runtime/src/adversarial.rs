//! Providers that lie, for tests of verification only (the `adversarial` feature), and a
//! requestor that sends frames by hand, for tests that attack a provider ([`RawRequestor`]).
//!
//! A [`Cheater`] alters a batch's results before the provider signs them, or spoils the
//! signature after: wrong outputs (alone, or shared by a colluding group so that copies on
//! colluders agree), inflated fuel figures, or receipts that do not verify; always, on a
//! fraction of results, or only once the provider has returned enough honest results to be
//! trusted.

#[cfg(feature = "adversarial")]
mod raw;

#[cfg(feature = "adversarial")]
pub use self::raw::RawRequestor;

use crate::identity::NodeKey;
use crate::proto::message::{Batch, Outcome, Output};
use crate::receipt::Receipt;

/// What a cheater lies about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lie {
    /// A wrong output: one bit of its first byte flipped, the bit chosen by `group`. Cheaters of
    /// the same group return the same wrong output for the same subtask, and decide alike which
    /// subtasks to lie about: a colluding group.
    WrongOutput {
        /// The collusion group.
        group: u8,
    },
    /// The right output with double the fuel, to be paid more.
    WrongFuel,
    /// The right results under a signature that does not verify.
    BadSignature,
}

/// When a cheater lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// On every result.
    Always,
    /// On about this percentage of results.
    Sometimes {
        /// Percent of results, 0 to 100.
        percent: u8,
    },
    /// On every result after this many honest ones.
    AfterTrust {
        /// Honest results first.
        honest: u64,
    },
}

/// How a provider cheats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cheat {
    /// What it lies about.
    pub lie: Lie,
    /// When.
    pub when: When,
}

/// A cheating provider's state.
#[derive(Debug, Clone)]
pub struct Cheater {
    cheat: Cheat,
    results: u64,
    lies: u64,
}

impl Cheater {
    /// A provider that cheats as `cheat` says.
    pub fn new(cheat: Cheat) -> Self {
        Self {
            cheat,
            results: 0,
            lies: 0,
        }
    }

    /// Results it lied about so far.
    pub fn lies(&self) -> u64 {
        self.lies
    }

    /// What this cheater, signing with `key`, returns for `outputs` of `batch`: outputs
    /// altered before they are signed, or a signature spoiled after.
    pub fn outcome(&mut self, key: &NodeKey, batch: &Batch, mut outputs: Vec<Output>) -> Outcome {
        let spoil = self.tamper(batch, &mut outputs);
        let mut signature = Receipt::for_batch(key, batch, &outputs).signature;
        if spoil {
            signature.0[0] ^= 1;
        }
        Outcome::Outputs { outputs, signature }
    }

    /// Alters `outputs` of `batch` before they are signed; returns whether to spoil the
    /// signature afterwards.
    fn tamper(&mut self, batch: &Batch, outputs: &mut [Output]) -> bool {
        let mut spoil = false;
        for (item, output) in batch.items.iter().zip(outputs.iter_mut()) {
            self.results += 1;
            if !self.lies_about(item.index) {
                continue;
            }
            self.lies += 1;
            match self.cheat.lie {
                Lie::WrongOutput { group } => {
                    let mask = 1u8 << (group % 7);
                    match output.bytes.first_mut() {
                        Some(byte) => *byte ^= mask,
                        None => output.bytes.push(mask),
                    }
                }
                Lie::WrongFuel => output.fuel = output.fuel.saturating_mul(2).max(1),
                Lie::BadSignature => spoil = true,
            }
        }
        spoil
    }

    fn lies_about(&self, index: u64) -> bool {
        match self.cheat.when {
            When::Always => true,
            When::Sometimes { percent } => {
                // Decided by the subtask and the group alone, so colluders lie alike.
                let group = match self.cheat.lie {
                    Lie::WrongOutput { group } => group,
                    _ => 0,
                };
                let mut key = [0u8; 9];
                key[..8].copy_from_slice(&index.to_le_bytes());
                key[8] = group;
                let roll = blake3::hash(&key).as_bytes()[0] as u64 * 100 / 256;
                roll < u64::from(percent)
            }
            When::AfterTrust { honest } => self.results > honest,
        }
    }
}

/// Providers on 127.0.0.1, some of which lie, on a tokio runtime of their own.
#[cfg(feature = "adversarial")]
pub struct Network {
    providers: Vec<crate::node::ProviderNode>,
    cheaters: std::collections::HashSet<crate::identity::NodeId>,
    _runtime: tokio::runtime::Runtime,
}

#[cfg(feature = "adversarial")]
impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("providers", &self.providers.len())
            .field("cheaters", &self.cheaters.len())
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "adversarial")]
impl Network {
    /// One provider per entry of `cheats`, honest where the entry is `None`, each serving one
    /// subtask at a time at 1,000 × (its position + 1) per billion fuel; they share one engine. Keys derive from the position, so provider
    /// `i` has the same node id in every network.
    pub fn start(cheats: &[Option<Cheat>]) -> Result<Self, crate::node::NodeError> {
        use crate::node::{NodeError, ProviderNode, ProviderNodeConfig};
        use crate::sandbox::{Sandbox, SandboxConfig};
        use std::sync::Arc;

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|error| NodeError::io("cannot start a runtime", &error))?;
        let slots = u32::try_from(cheats.len() * 2 + 2).unwrap_or(u32::MAX);
        let sandbox =
            Sandbox::new(SandboxConfig::with_instances(slots)).map_err(|error| NodeError::Io {
                what: "cannot build the providers' engine".into(),
                message: error.to_string(),
            })?;
        let sandbox = Arc::new(sandbox);
        let mut providers = Vec::with_capacity(cheats.len());
        let mut cheaters = std::collections::HashSet::new();
        for (index, cheat) in cheats.iter().enumerate() {
            let mut secret = [0xC4; 32];
            secret[..8].copy_from_slice(&(index as u64).to_le_bytes());
            let key = crate::identity::NodeKey::from_secret(secret);
            let mut config = ProviderNodeConfig::local(&sandbox, 1);
            // Each joins the topic through the first, as providers join through bootstrap
            // nodes: the providers form one mesh of their own, whoever else comes and goes.
            config
                .bootstrap
                .extend(providers.first().map(ProviderNode::bootstrap));
            // A price of its own, so payments can tell providers apart.
            for offer in &mut config.offers {
                offer.price_per_gfuel = 1_000 * (index as u64 + 1);
            }
            let sandbox = Arc::clone(&sandbox);
            providers.push(match cheat {
                Some(cheat) => {
                    cheaters.insert(key.node_id());
                    runtime.block_on(ProviderNode::start_cheating(&key, sandbox, config, *cheat))?
                }
                None => runtime.block_on(ProviderNode::start(&key, sandbox, config))?,
            });
        }
        Ok(Self {
            providers,
            cheaters,
            _runtime: runtime,
        })
    }

    /// The providers, in the order of `cheats`.
    pub fn providers(&self) -> &[crate::node::ProviderNode] {
        &self.providers
    }

    /// The node ids of the providers that lie.
    pub fn cheaters(&self) -> &std::collections::HashSet<crate::identity::NodeId> {
        &self.cheaters
    }

    /// `NODE_ID@ADDR` of every provider, to join.
    pub fn addresses(&self) -> Vec<String> {
        self.providers
            .iter()
            .map(|provider| provider.bootstrap().to_string())
            .collect()
    }
}
