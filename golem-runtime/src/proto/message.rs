//! The messages requestors and providers exchange.
//!
//! A connection carries one long-lived bidirectional control stream: the requestor (the side
//! that dialed) writes [`Request`] frames, the provider answers with [`Reply`] frames, matched
//! by batch id. Blobs travel on their own unidirectional streams: a [`BlobHeader`] frame, then
//! exactly `len` raw bytes, checked against the id (their blake3 hash) before use.

use serde::{Deserialize, Serialize};

pub use crate::content::BlobId;
use crate::identity::{Payee, Signature};
use crate::sandbox::{EngineFingerprint, Limits, ModuleError, SubtaskError};

/// One sandbox profile a provider sells: its limits and its price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// The flavor's name, unique per provider.
    pub flavor: String,
    /// Largest linear memory a subtask may use.
    pub memory_bytes: u64,
    /// Most fuel a subtask may burn.
    pub fuel: u64,
    /// Largest encoded output of a subtask.
    pub output_bytes: u64,
    /// Bytes of stdout and of stderr a subtask may have kept.
    pub log_bytes: u64,
    /// Longest wall time of a subtask, in milliseconds.
    pub deadline_ms: u64,
    /// Price of a billion units of fuel, in the smallest unit of the payment currency.
    pub price_per_gfuel: u64,
    /// Subtasks the provider runs at once in this flavor.
    pub concurrency: u32,
}

/// The first frame each side sends on a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's protocol version ([`PROTOCOL_VERSION`](super::PROTOCOL_VERSION)).
    pub version: u32,
    /// What the sender sells; empty for a pure requestor.
    pub offers: Vec<Offer>,
    /// The sender's sandbox engine: outputs are byte-comparable between equal fingerprints.
    pub engine: Option<EngineFingerprint>,
    /// Where the sender wants to be paid for its work, if it sells any.
    pub payee: Option<Payee>,
}

impl Hello {
    /// The introduction of a requestor of this protocol version: it sells nothing.
    pub fn requestor() -> Self {
        Self {
            version: super::PROTOCOL_VERSION,
            offers: Vec::new(),
            engine: None,
            payee: None,
        }
    }
}

/// Which job a batch belongs to: everything a provider needs besides the items.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The module (a blob).
    pub module: BlobId,
    /// The task's name.
    pub task: String,
    /// The encoded shared context (a blob).
    pub context: BlobId,
    /// Seed of the job; subtask `i` is seeded from (seed, `i`).
    pub seed: [u8; 32],
    /// Random per job, so two runs of the same work are two jobs in receipts and payments.
    pub nonce: [u8; 16],
    /// Limits of every call.
    pub limits: Limits,
}

/// The encoded input of one subtask: inline, or a blob when it is large.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Input {
    /// The bytes themselves.
    Inline(Vec<u8>),
    /// A blob the provider fetches (or has).
    Blob(BlobId),
}

impl Input {
    /// blake3 of the input's bytes (for a blob, its id), as receipts name it.
    pub fn hash(&self) -> [u8; 32] {
        match self {
            Self::Inline(bytes) => *blake3::hash(bytes).as_bytes(),
            Self::Blob(id) => id.0,
        }
    }

    /// Bytes this input adds to a batch frame.
    pub fn inline_len(&self) -> usize {
        match self {
            Self::Inline(bytes) => bytes.len(),
            Self::Blob(_) => 32,
        }
    }
}

/// One subtask of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// Index of the subtask in its job.
    pub index: u64,
    /// Its input.
    pub input: Input,
}

/// Subtasks of one job that travel and run together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// The requestor's id for this batch, unique on the connection.
    pub id: u64,
    /// The job.
    pub job: JobSpec,
    /// The subtasks, in index order.
    pub items: Vec<Item>,
}

impl Batch {
    /// The blobs a provider needs to run this batch.
    pub fn blobs(&self) -> impl Iterator<Item = BlobId> + '_ {
        [self.job.module, self.job.context]
            .into_iter()
            .chain(self.items.iter().filter_map(|item| match item.input {
                Input::Blob(id) => Some(id),
                Input::Inline(_) => None,
            }))
    }
}

/// Requestor to provider, on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Introduces the requestor (or a provider joining through this one).
    Hello(Hello),
    /// Run a batch.
    Run(Batch),
    /// Forget a batch: its result is no longer wanted.
    Cancel {
        /// The batch.
        batch: u64,
    },
}

/// The result of one subtask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    /// The encoded output.
    pub bytes: Vec<u8>,
    /// Fuel the call used.
    pub fuel: u64,
}

/// How a batch ended on the provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Every subtask ran.
    Outputs {
        /// Outputs in the batch's item order.
        outputs: Vec<Output>,
        /// The provider's signature over the batch's [`Receipt`](crate::receipt::Receipt),
        /// which the requestor rebuilds from its inputs and these outputs.
        signature: Signature,
    },
    /// A subtask failed in the sandbox (the first one that did, in item order).
    Failed {
        /// Index of the subtask in the job.
        index: u64,
        /// Why.
        error: SubtaskError,
    },
    /// The module was refused.
    Refused(ModuleError),
    /// The provider could not run the batch (overloaded, a blob missing, shutting down);
    /// another provider may.
    Retry(String),
    /// The provider takes no more work from this requestor until it is paid: by its own books
    /// the requestor owes more than the provider's credit allows it (in the smallest currency
    /// unit), or every requestor together owes the provider's total credit.
    Unpaid {
        /// What the requestor owes the provider.
        owed: u128,
        /// The most the provider lets this requestor owe now: its credit and escrow, or its
        /// escrow alone while every requestor together owes the total credit (or, for one
        /// that has never paid, while those that have not owe their part of it).
        limit: u128,
    },
}

/// Provider to requestor, on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Introduces the provider: its offers and engine.
    Hello(Hello),
    /// The provider lacks these blobs to run `batch`; it runs the batch once they arrive.
    Need {
        /// The batch waiting for them.
        batch: u64,
        /// The blobs it lacks and has not asked for yet.
        blobs: Vec<BlobId>,
    },
    /// A batch is over.
    Done {
        /// The batch.
        batch: u64,
        /// How it ended.
        outcome: Outcome,
    },
}

/// The first frame of a blob stream; exactly `len` raw bytes follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobHeader {
    /// The blob's id.
    pub id: BlobId,
    /// Its length in bytes.
    pub len: u64,
}

/// Cap on frames of the control stream from requestor to provider.
pub const MAX_REQUEST_FRAME: usize = super::frame::DEFAULT_MAX_FRAME;

/// Cap on frames of the control stream from provider to requestor: a batch's outputs travel in
/// one frame, and an output may be as large as [`Limits::output_bytes`] allows by default.
pub const MAX_REPLY_FRAME: usize = 80 << 20;

/// Inputs larger than this travel as blobs, not inside batch frames.
pub const INLINE_INPUT_MAX: usize = 64 << 10;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeId;
    use crate::proto::frame::{FrameDecoder, encode};

    #[test]
    fn requests_and_replies_survive_a_frame_round_trip() {
        let batch = Batch {
            id: 7,
            job: JobSpec {
                module: BlobId::of(b"module"),
                task: "render".into(),
                context: BlobId::of(b"scene"),
                seed: [3; 32],
                nonce: [4; 16],
                limits: Limits::default(),
            },
            items: vec![
                Item {
                    index: 4,
                    input: Input::Inline(vec![1, 2, 3]),
                },
                Item {
                    index: 5,
                    input: Input::Blob(BlobId::of(b"large")),
                },
            ],
        };
        let request = Request::Run(batch.clone());
        let reply = Reply::Done {
            batch: 7,
            outcome: Outcome::Failed {
                index: 5,
                error: SubtaskError::OutOfFuel { limit: 9 },
            },
        };
        let mut decoder = FrameDecoder::new(MAX_REPLY_FRAME);
        decoder.push(&encode(&request, MAX_REQUEST_FRAME).unwrap());
        decoder.push(&encode(&reply, MAX_REPLY_FRAME).unwrap());
        assert_eq!(decoder.next_frame::<Request>().unwrap(), Some(request));
        assert_eq!(decoder.next_frame::<Reply>().unwrap(), Some(reply));
        let blobs: Vec<_> = batch.blobs().collect();
        assert_eq!(
            blobs,
            [
                BlobId::of(b"module"),
                BlobId::of(b"scene"),
                BlobId::of(b"large")
            ]
        );
    }

    #[test]
    fn a_peer_with_an_invalid_node_key_does_not_decode() {
        // 32 bytes that are not a valid ed25519 point (y = 2 is not on the curve).
        let mut bytes = [0u8; 32];
        bytes[0] = 2;
        assert!(NodeId::from_bytes(bytes).is_err());
        let encoded = postcard::to_allocvec(&bytes).unwrap();
        assert!(postcard::from_bytes::<NodeId>(&encoded).is_err());
    }
}
