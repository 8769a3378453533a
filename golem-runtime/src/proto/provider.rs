//! The provider's side of one connection, without sockets.
//!
//! The driver feeds in what arrives ([`ProviderSession::handle_request`],
//! [`handle_blob`](ProviderSession::handle_blob), [`handle_done`](ProviderSession::handle_done),
//! [`handle_timeout`](ProviderSession::handle_timeout)) and carries out what comes out
//! ([`poll_reply`](ProviderSession::poll_reply) to send, [`poll_work`](ProviderSession::poll_work)
//! to run). A batch whose blobs are missing is parked and the missing blobs are asked for once,
//! however many batches wait for them; it runs as soon as the last one arrives.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use super::message::{Batch, BlobId, Hello, Outcome, Reply, Request};

/// Settings of a provider session.
#[derive(Debug, Clone)]
pub struct ProviderSessionConfig {
    /// Batches accepted and not yet done, past which new ones are answered with
    /// [`Outcome::Retry`].
    pub max_batches: usize,
    /// How long a batch waits for its blobs before it is given back.
    pub blob_wait: Duration,
}

impl Default for ProviderSessionConfig {
    fn default() -> Self {
        Self {
            max_batches: 1024,
            blob_wait: Duration::from_secs(60),
        }
    }
}

struct Parked {
    batch: Batch,
    missing: HashSet<BlobId>,
    since: Instant,
}

/// The provider's state for one requestor connection.
pub struct ProviderSession {
    config: ProviderSessionConfig,
    hello: Hello,
    peer_hello: Option<Hello>,
    /// Batches accepted and not done: parked, queued or running.
    live: HashSet<u64>,
    parked: Vec<Parked>,
    /// Blobs asked for that have not arrived.
    asked: HashSet<BlobId>,
    replies: VecDeque<Reply>,
    work: VecDeque<Batch>,
}

impl std::fmt::Debug for ProviderSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderSession")
            .field("live", &self.live.len())
            .field("parked", &self.parked.len())
            .field("asked", &self.asked.len())
            .finish_non_exhaustive()
    }
}

impl ProviderSession {
    /// A session that introduces itself with `hello`.
    pub fn new(hello: Hello, config: ProviderSessionConfig) -> Self {
        Self {
            config,
            hello,
            peer_hello: None,
            live: HashSet::new(),
            parked: Vec::new(),
            asked: HashSet::new(),
            replies: VecDeque::new(),
            work: VecDeque::new(),
        }
    }

    /// The peer's introduction, once it arrived.
    pub fn peer_hello(&self) -> Option<&Hello> {
        self.peer_hello.as_ref()
    }

    /// Batches accepted and not yet done.
    pub fn live_batches(&self) -> usize {
        self.live.len()
    }

    /// A request arrived; `has` tells whether a blob is in the provider's store.
    pub fn handle_request(
        &mut self,
        request: Request,
        now: Instant,
        has: impl Fn(&BlobId) -> bool,
    ) {
        match request {
            Request::Hello(hello) => {
                self.peer_hello = Some(hello);
                self.replies.push_back(Reply::Hello(self.hello.clone()));
            }
            Request::Run(batch) => self.accept(batch, now, has),
            Request::Cancel { batch } => {
                if self.live.remove(&batch) {
                    self.parked.retain(|parked| parked.batch.id != batch);
                    self.work.retain(|queued| queued.id != batch);
                }
            }
        }
    }

    fn accept(&mut self, batch: Batch, now: Instant, has: impl Fn(&BlobId) -> bool) {
        if self.live.contains(&batch.id) {
            // A second batch under a live id: refuse it without disturbing the first.
            tracing::debug!(batch = batch.id, "duplicate batch id refused");
            return;
        }
        if self.live.len() >= self.config.max_batches {
            self.replies.push_back(Reply::Done {
                batch: batch.id,
                outcome: Outcome::Retry("the provider is at its batch limit".into()),
            });
            return;
        }
        self.live.insert(batch.id);
        let missing: HashSet<BlobId> = batch.blobs().filter(|id| !has(id)).collect();
        if missing.is_empty() {
            self.work.push_back(batch);
            return;
        }
        let mut ask: Vec<BlobId> = missing
            .iter()
            .copied()
            .filter(|id| self.asked.insert(*id))
            .collect();
        if !ask.is_empty() {
            ask.sort();
            self.replies.push_back(Reply::Need {
                batch: batch.id,
                blobs: ask,
            });
        }
        self.parked.push(Parked {
            batch,
            missing,
            since: now,
        });
    }

    /// A blob arrived and passed its hash check; batches waiting only for it become work.
    pub fn handle_blob(&mut self, id: BlobId) {
        self.asked.remove(&id);
        let mut index = 0;
        while index < self.parked.len() {
            let parked = &mut self.parked[index];
            parked.missing.remove(&id);
            if parked.missing.is_empty() {
                let ready = self.parked.remove(index);
                self.work.push_back(ready.batch);
            } else {
                index += 1;
            }
        }
    }

    /// A blob stream failed (wrong hash, wrong length, reset): the batches waiting for it are
    /// given back so the requestor can send it again or go elsewhere.
    pub fn handle_blob_failed(&mut self, id: BlobId, reason: &str) {
        self.asked.remove(&id);
        self.give_back(
            |parked| parked.missing.contains(&id),
            &format!("blob {id} could not be received: {reason}"),
        );
    }

    /// A batch finished running; returns whether its outcome goes to the requestor (not when
    /// the batch was cancelled while it ran: its result is not wanted).
    pub fn handle_done(&mut self, batch: u64, outcome: Outcome) -> bool {
        let live = self.live.remove(&batch);
        if live {
            self.replies.push_back(Reply::Done { batch, outcome });
        }
        live
    }

    /// Time passed: batches that waited too long for their blobs are given back.
    pub fn handle_timeout(&mut self, now: Instant) {
        let wait = self.config.blob_wait;
        let expired: Vec<BlobId> = self
            .parked
            .iter()
            .filter(|parked| parked.since + wait <= now)
            .flat_map(|parked| parked.missing.iter().copied())
            .collect();
        for id in &expired {
            self.asked.remove(id);
        }
        self.give_back(
            |parked| parked.since + wait <= now,
            "the blobs of the batch did not arrive in time",
        );
    }

    fn give_back(&mut self, mut which: impl FnMut(&Parked) -> bool, reason: &str) {
        let mut index = 0;
        while index < self.parked.len() {
            if which(&self.parked[index]) {
                let parked = self.parked.remove(index);
                self.live.remove(&parked.batch.id);
                self.replies.push_back(Reply::Done {
                    batch: parked.batch.id,
                    outcome: Outcome::Retry(reason.to_owned()),
                });
            } else {
                index += 1;
            }
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.parked
            .iter()
            .map(|parked| parked.since + self.config.blob_wait)
            .min()
    }

    /// The next frame to send.
    pub fn poll_reply(&mut self) -> Option<Reply> {
        self.replies.pop_front()
    }

    /// The next batch to run; report its end with [`handle_done`](Self::handle_done).
    pub fn poll_work(&mut self) -> Option<Batch> {
        self.work.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::message::{Input, Item, JobSpec, Output};
    use crate::sandbox::Limits;

    fn hello() -> Hello {
        Hello {
            version: 1,
            offers: Vec::new(),
            engine: None,
            payee: None,
        }
    }

    fn batch(id: u64, context: &[u8]) -> Batch {
        Batch {
            id,
            job: JobSpec {
                module: BlobId::of(b"module"),
                task: "t".into(),
                context: BlobId::of(context),
                seed: [0; 32],
                nonce: [0; 16],
                limits: Limits::default(),
            },
            items: vec![Item {
                index: id,
                input: Input::Inline(vec![id as u8]),
            }],
        }
    }

    #[test]
    fn missing_blobs_are_asked_for_once_and_parked_batches_run_when_they_arrive() {
        let now = Instant::now();
        let mut session = ProviderSession::new(hello(), ProviderSessionConfig::default());
        let module = BlobId::of(b"module");
        let context = BlobId::of(b"ctx");
        let has = |id: &BlobId| *id == module;
        session.handle_request(Request::Run(batch(1, b"ctx")), now, has);
        session.handle_request(Request::Run(batch(2, b"ctx")), now, has);
        assert_eq!(
            session.poll_reply(),
            Some(Reply::Need {
                batch: 1,
                blobs: vec![context]
            })
        );
        assert_eq!(session.poll_reply(), None, "the context is asked for once");
        assert!(session.poll_work().is_none());
        session.handle_blob(context);
        assert_eq!(session.poll_work().map(|b| b.id), Some(1));
        assert_eq!(session.poll_work().map(|b| b.id), Some(2));
        session.handle_done(
            1,
            Outcome::Outputs {
                outputs: vec![Output {
                    bytes: vec![],
                    fuel: 1,
                }],
                signature: crate::identity::Signature([0; 64]),
            },
        );
        assert!(matches!(
            session.poll_reply(),
            Some(Reply::Done { batch: 1, .. })
        ));
    }

    #[test]
    fn cancelled_batches_report_nothing_and_late_blobs_give_batches_back() {
        let now = Instant::now();
        let config = ProviderSessionConfig {
            max_batches: 2,
            blob_wait: Duration::from_secs(1),
        };
        let mut session = ProviderSession::new(hello(), config);
        let none = |_: &BlobId| false;
        session.handle_request(Request::Run(batch(1, b"a")), now, none);
        session.handle_request(Request::Run(batch(2, b"b")), now, none);
        session.handle_request(Request::Run(batch(3, b"c")), now, none);
        let replies: Vec<_> = std::iter::from_fn(|| session.poll_reply()).collect();
        assert!(matches!(
            replies[2],
            Reply::Done {
                batch: 3,
                outcome: Outcome::Retry(_)
            }
        ));
        session.handle_request(Request::Cancel { batch: 1 }, now, none);
        assert_eq!(session.poll_timeout(), Some(now + Duration::from_secs(1)));
        session.handle_timeout(now + Duration::from_secs(1));
        let replies: Vec<_> = std::iter::from_fn(|| session.poll_reply()).collect();
        assert_eq!(replies.len(), 1, "batch 1 was cancelled: {replies:?}");
        assert!(matches!(
            replies[0],
            Reply::Done {
                batch: 2,
                outcome: Outcome::Retry(_)
            }
        ));
        assert_eq!(session.live_batches(), 0);
        // The module is asked for again by the next batch, since the last ask expired.
        session.handle_request(Request::Run(batch(4, b"a")), now, none);
        assert!(matches!(
            session.poll_reply(),
            Some(Reply::Need { batch: 4, .. })
        ));
    }
}
