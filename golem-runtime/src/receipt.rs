//! Signed receipts: a provider's statement of what it computed, which it cannot later deny.
//!
//! For every batch it runs, a provider signs one [`Receipt`]: the job (the digest of its
//! [`JobSpec`], which names the module, task, context, seed, limits and a per-job nonce) and,
//! per subtask, its index, the hash of its input, the hash of its output and the fuel it used.
//! The outputs travel beside the signature, not inside it: the requestor rebuilds the receipt
//! from the inputs it sent and the outputs it got, and checks the signature against the
//! provider's node id. An output or fuel figure changed after signing, or a signature made by
//! another key, does not verify. A verified receipt of a result later shown wrong is proof the
//! provider lied; an accepted one is what the provider is paid for.

use serde::{Deserialize, Serialize};

use crate::identity::{IdentityError, NodeId, NodeKey, Signature};
use crate::proto::message::{Batch, JobSpec, Outcome, Output};

/// The domain receipt signatures are made in (see [`NodeKey::sign`]).
pub const RECEIPT_DOMAIN: &str = "golem receipt v1";

/// A 32-byte blake3 digest.
pub type Digest = [u8; 32];

/// What a provider states about one subtask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReceiptEntry {
    /// Index of the subtask in its job.
    pub index: u64,
    /// blake3 of the encoded input.
    pub input: Digest,
    /// blake3 of the encoded output.
    pub output: Digest,
    /// Fuel the call used: what the provider bills.
    pub fuel: u64,
}

impl ReceiptEntry {
    /// The entry for subtask `index` with input hash `input` and result `output`.
    pub fn new(index: u64, input: Digest, output: &Output) -> Self {
        Self {
            index,
            input,
            output: *blake3::hash(&output.bytes).as_bytes(),
            fuel: output.fuel,
        }
    }

    /// Whether two entries state the same result (output and fuel).
    pub fn same_result(&self, other: &Self) -> bool {
        self.output == other.output && self.fuel == other.fuel
    }
}

/// A provider's signature over the results of one batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The provider that signed.
    pub provider: NodeId,
    /// The job's digest ([`JobSpec::digest`]).
    pub job: Digest,
    /// One entry per subtask, in the batch's order.
    pub entries: Vec<ReceiptEntry>,
    /// The provider's signature over `job` and `entries`.
    pub signature: Signature,
}

impl Receipt {
    /// Signs `entries` of job `job` with `key`.
    pub fn sign(key: &NodeKey, job: Digest, entries: Vec<ReceiptEntry>) -> Self {
        let signature = key.sign(RECEIPT_DOMAIN, &signed_message(&job, &entries));
        Self {
            provider: key.node_id(),
            job,
            entries,
            signature,
        }
    }

    /// The receipt for `outputs` of `batch`, signed with `key`.
    pub fn for_batch(key: &NodeKey, batch: &Batch, outputs: &[Output]) -> Self {
        let entries = batch
            .items
            .iter()
            .zip(outputs)
            .map(|(item, output)| ReceiptEntry::new(item.index, item.input.hash(), output))
            .collect();
        Self::sign(key, batch.job.digest(), entries)
    }

    /// Checks the signature against the provider's node id.
    pub fn verify(&self) -> Result<(), IdentityError> {
        self.provider.verify(
            RECEIPT_DOMAIN,
            &signed_message(&self.job, &self.entries),
            &self.signature,
        )
    }

    /// Fuel billed over every entry.
    pub fn fuel(&self) -> u64 {
        self.entries
            .iter()
            .fold(0u64, |sum, entry| sum.saturating_add(entry.fuel))
    }
}

/// The bytes signed: a digest of the job and every entry, so a signature stays 64 bytes and
/// signing costs the same for a batch of one or of thousands.
fn signed_message(job: &Digest, entries: &[ReceiptEntry]) -> Digest {
    let mut hasher = blake3::Hasher::new_derive_key(RECEIPT_DOMAIN);
    hasher.update(job);
    hasher.update(&(entries.len() as u64).to_le_bytes());
    for entry in entries {
        hasher.update(&entry.index.to_le_bytes());
        hasher.update(&entry.input);
        hasher.update(&entry.output);
        hasher.update(&entry.fuel.to_le_bytes());
    }
    *hasher.finalize().as_bytes()
}

impl Outcome {
    /// `outputs` of `batch`, under the signature of `key` over their receipt.
    pub fn signed(key: &NodeKey, batch: &Batch, outputs: Vec<Output>) -> Self {
        let signature = Receipt::for_batch(key, batch, &outputs).signature;
        Self::Outputs { outputs, signature }
    }
}

impl JobSpec {
    /// The job's identity in receipts: a hash of everything in the spec, nonce included.
    pub fn digest(&self) -> Digest {
        // Plain data with no maps or unsupported types: encoding cannot fail.
        let bytes = postcard::to_allocvec(self).expect("a job spec always encodes");
        blake3::derive_key("golem job v1", &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::message::{BlobId, Input, Item};
    use crate::sandbox::Limits;

    fn batch() -> Batch {
        Batch {
            id: 1,
            job: JobSpec {
                module: BlobId::of(b"module"),
                task: "t".into(),
                context: BlobId::of(b"context"),
                seed: [1; 32],
                nonce: [2; 16],
                limits: Limits::default(),
            },
            items: vec![
                Item {
                    index: 10,
                    input: Input::Inline(vec![1, 2]),
                },
                Item {
                    index: 11,
                    input: Input::Blob(BlobId::of(&[3; 100_000])),
                },
            ],
        }
    }

    fn outputs() -> Vec<Output> {
        vec![
            Output {
                bytes: vec![7],
                fuel: 100,
            },
            Output {
                bytes: vec![8, 9],
                fuel: 200,
            },
        ]
    }

    #[test]
    fn a_receipt_verifies_and_any_change_breaks_it() {
        let key = NodeKey::from_secret([5; 32]);
        let receipt = Receipt::for_batch(&key, &batch(), &outputs());
        assert_eq!(receipt.verify(), Ok(()));
        assert_eq!(receipt.fuel(), 300);
        assert_eq!(receipt.entries[1].input, BlobId::of(&[3; 100_000]).0);

        let mut tampered = receipt.clone();
        tampered.entries[0].fuel += 1;
        assert!(tampered.verify().is_err(), "a changed fuel figure");
        let mut tampered = receipt.clone();
        tampered.entries[1].output = *blake3::hash(&[8, 8]).as_bytes();
        assert!(tampered.verify().is_err(), "a changed output");
        let mut tampered = receipt.clone();
        tampered.job[0] ^= 1;
        assert!(tampered.verify().is_err(), "another job");
        let mut tampered = receipt.clone();
        tampered.entries.swap(0, 1);
        assert!(tampered.verify().is_err(), "entries reordered");
        let mut tampered = receipt.clone();
        tampered.provider = NodeKey::from_secret([6; 32]).node_id();
        assert!(tampered.verify().is_err(), "claimed by another node");
        let encoded = postcard::to_allocvec(&receipt).expect("encodes");
        assert_eq!(
            postcard::from_bytes::<Receipt>(&encoded).expect("decodes"),
            receipt
        );
    }

    #[test]
    fn the_job_digest_covers_the_nonce() {
        let first = batch().job;
        let mut second = first.clone();
        second.nonce[0] ^= 1;
        assert_ne!(first.digest(), second.digest());
        assert_eq!(first.digest(), batch().job.digest());
    }
}
