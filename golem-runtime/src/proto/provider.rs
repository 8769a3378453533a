//! The provider's side of one connection, without sockets.
//!
//! The driver feeds in what arrives ([`ProviderSession::handle_request`],
//! [`handle_blob`](ProviderSession::handle_blob), [`handle_done`](ProviderSession::handle_done),
//! [`handle_timeout`](ProviderSession::handle_timeout)) and carries out what comes out
//! ([`poll_reply`](ProviderSession::poll_reply) to send, [`poll_work`](ProviderSession::poll_work)
//! to run). A batch whose blobs are missing is parked and the missing blobs are asked for once,
//! however many batches wait for them; it runs as soon as the last one arrives.
//!
//! What one requestor can make a provider hold is capped twice: per connection
//! ([`ProviderSessionConfig::max_batches`], [`max_batch_bytes`](ProviderSessionConfig::max_batch_bytes))
//! and across every connection of the provider ([`BatchQuota`]). A batch counts from the moment
//! it is accepted until it is done: a Cancel frees its place at once only while it has not
//! been handed out to run; a batch already handed out keeps its place until the driver reports
//! it done ([`poll_cancel`](ProviderSession::poll_cancel) tells the driver to stop it early).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::message::{Batch, BlobId, Hello, Outcome, Reply, Request};

/// Settings of a provider session.
#[derive(Debug, Clone)]
pub struct ProviderSessionConfig {
    /// Batches of this connection accepted and not yet done, past which new ones are answered
    /// with [`Outcome::Retry`].
    pub max_batches: usize,
    /// Bytes of this connection's batches accepted and not yet done ([`batch_bytes`]), past
    /// which new ones are answered with [`Outcome::Retry`].
    pub max_batch_bytes: usize,
    /// How long a batch waits for its blobs before it is given back.
    pub blob_wait: Duration,
    /// What every connection of the provider may hold together; shared by its sessions.
    pub quota: Arc<BatchQuota>,
    /// Batches (and bytes of them) this connection may hold even when the others have filled
    /// the quota: its share, so that a few connections cannot lock every other requestor out.
    pub share: (usize, usize),
}

impl Default for ProviderSessionConfig {
    fn default() -> Self {
        Self {
            max_batches: 256,
            max_batch_bytes: 64 << 20,
            blob_wait: Duration::from_secs(60),
            quota: Arc::new(BatchQuota::new(usize::MAX, usize::MAX)),
            share: (0, 0),
        }
    }
}

/// Bytes a batch is counted as while a provider holds it: its inline inputs and a fixed
/// overhead per item and per batch, about its size in memory.
pub fn batch_bytes(batch: &Batch) -> usize {
    let items: usize = batch
        .items
        .iter()
        .map(|item| item.input.inline_len() + 64)
        .sum();
    items + batch.job.task.len() + 256
}

/// Batches held by a provider across all its connections, by count and by bytes, each capped.
/// A place is taken when a batch is accepted and given back when its [`QuotaHold`] is dropped
/// (the batch ended, was cancelled before it ran, or its connection is gone).
#[derive(Debug)]
pub struct BatchQuota {
    max_batches: usize,
    max_bytes: usize,
    used: Mutex<(usize, usize)>,
}

impl BatchQuota {
    /// A quota of `max_batches` batches and `max_bytes` bytes.
    pub fn new(max_batches: usize, max_bytes: usize) -> Self {
        Self {
            max_batches,
            max_bytes,
            used: Mutex::new((0, 0)),
        }
    }

    /// Batches and bytes held now.
    pub fn used(&self) -> (usize, usize) {
        *self.used.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for a batch of `bytes`, if both caps allow it.
    pub fn try_hold(self: &Arc<Self>, bytes: usize) -> Option<QuotaHold> {
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        if used.0 >= self.max_batches || used.1.saturating_add(bytes) > self.max_bytes {
            return None;
        }
        used.0 += 1;
        used.1 += bytes;
        Some(QuotaHold {
            quota: Arc::clone(self),
            bytes,
        })
    }

    /// A place for a batch of `bytes` past the caps: for a connection within its guaranteed
    /// share ([`ProviderSessionConfig::share`]).
    pub fn hold(self: &Arc<Self>, bytes: usize) -> QuotaHold {
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        used.0 += 1;
        used.1 += bytes;
        QuotaHold {
            quota: Arc::clone(self),
            bytes,
        }
    }
}

/// One batch's place in a [`BatchQuota`], given back when dropped.
#[derive(Debug)]
pub struct QuotaHold {
    quota: Arc<BatchQuota>,
    bytes: usize,
}

impl QuotaHold {
    /// Holds `bytes` more (a finished batch's outputs, kept until they are sent) if the byte
    /// cap allows it, or past the cap when `force`. Returns whether it holds them.
    pub fn grow(&mut self, bytes: usize, force: bool) -> bool {
        let mut used = self
            .quota
            .used
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !force && used.1.saturating_add(bytes) > self.quota.max_bytes {
            return false;
        }
        used.1 += bytes;
        self.bytes += bytes;
        true
    }
}

impl Drop for QuotaHold {
    fn drop(&mut self) {
        let mut used = self
            .quota
            .used
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        used.0 -= 1;
        used.1 -= self.bytes;
    }
}

/// A batch handed out to run, with its place in the provider's [`BatchQuota`]: drop the hold
/// when the batch has run (before reporting it done), so the place is free for the next.
#[derive(Debug)]
pub struct Work {
    /// The batch.
    pub batch: Batch,
    /// Its place in the quota.
    pub hold: QuotaHold,
}

struct Parked {
    batch: Batch,
    hold: QuotaHold,
    missing: HashSet<BlobId>,
    since: Instant,
}

/// The provider's state for one requestor connection.
pub struct ProviderSession {
    config: ProviderSessionConfig,
    hello: Hello,
    peer_hello: Option<Hello>,
    /// Batches accepted and not done (parked, queued or running), with their bytes.
    live: HashMap<u64, usize>,
    /// Bytes of the live batches.
    live_bytes: usize,
    /// Live batches handed out to run and then cancelled: no reply is owed for them, but they
    /// hold their place until they are done.
    cancelled: HashSet<u64>,
    parked: Vec<Parked>,
    /// Blobs asked for that have not arrived.
    asked: HashSet<BlobId>,
    replies: VecDeque<Reply>,
    work: VecDeque<(Batch, QuotaHold)>,
    /// Batches handed out and cancelled, for the driver to stop.
    cancels: VecDeque<u64>,
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
            live: HashMap::new(),
            live_bytes: 0,
            cancelled: HashSet::new(),
            parked: Vec::new(),
            asked: HashSet::new(),
            replies: VecDeque::new(),
            work: VecDeque::new(),
            cancels: VecDeque::new(),
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
            Request::Cancel { batch } => self.cancel(batch),
        }
    }

    fn cancel(&mut self, batch: u64) {
        if !self.live.contains_key(&batch) || self.cancelled.contains(&batch) {
            return;
        }
        let waiting = self.parked.iter().any(|parked| parked.batch.id == batch)
            || self.work.iter().any(|(queued, _)| queued.id == batch);
        if waiting {
            // Not handed out yet: its place is free at once.
            self.parked.retain(|parked| parked.batch.id != batch);
            self.work.retain(|(queued, _)| queued.id != batch);
            self.end(batch);
        } else {
            // Running (or queued to run): it holds its place until the driver reports it done.
            self.cancelled.insert(batch);
            self.cancels.push_back(batch);
        }
    }

    /// Forgets a live batch.
    fn end(&mut self, batch: u64) -> bool {
        match self.live.remove(&batch) {
            Some(bytes) => {
                self.live_bytes -= bytes;
                self.cancelled.remove(&batch);
                true
            }
            None => false,
        }
    }

    /// Answers batch `batch` with `outcome` without accepting it (a driver's own check
    /// refused it: no flavor holds its limits, its requestor owes too much). A batch whose id
    /// is live is left alone.
    pub fn refuse(&mut self, batch: u64, outcome: Outcome) {
        if !self.live.contains_key(&batch) {
            self.replies.push_back(Reply::Done { batch, outcome });
        }
    }

    fn accept(&mut self, batch: Batch, now: Instant, has: impl Fn(&BlobId) -> bool) {
        if self.live.contains_key(&batch.id) {
            // A second batch under a live id: refuse it without disturbing the first.
            tracing::debug!(batch = batch.id, "duplicate batch id refused");
            return;
        }
        let bytes = batch_bytes(&batch);
        let busy = |reason: &str| Reply::Done {
            batch: batch.id,
            outcome: Outcome::Retry(reason.into()),
        };
        if self.live.len() >= self.config.max_batches
            || self.live_bytes.saturating_add(bytes) > self.config.max_batch_bytes
        {
            self.replies.push_back(busy(
                "the provider holds as many of your batches as it takes",
            ));
            return;
        }
        let (share_batches, share_bytes) = self.config.share;
        let within_share =
            self.live.len() < share_batches && self.live_bytes.saturating_add(bytes) <= share_bytes;
        let hold = match self.config.quota.try_hold(bytes) {
            Some(hold) => hold,
            None if within_share => self.config.quota.hold(bytes),
            None => {
                self.replies
                    .push_back(busy("the provider holds as many batches as it takes"));
                return;
            }
        };
        self.live.insert(batch.id, bytes);
        self.live_bytes += bytes;
        let missing: HashSet<BlobId> = batch.blobs().filter(|id| !has(id)).collect();
        if missing.is_empty() {
            self.work.push_back((batch, hold));
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
            hold,
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
                self.work.push_back((ready.batch, ready.hold));
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
        let wanted = !self.cancelled.contains(&batch);
        if !self.end(batch) || !wanted {
            return false;
        }
        self.replies.push_back(Reply::Done { batch, outcome });
        true
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
                self.end(parked.batch.id);
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
    pub fn poll_work(&mut self) -> Option<Work> {
        self.work
            .pop_front()
            .map(|(batch, hold)| Work { batch, hold })
    }

    /// The next batch handed out to run that the requestor cancelled: stop it if it has not
    /// started, and report it done either way.
    pub fn poll_cancel(&mut self) -> Option<u64> {
        self.cancels.pop_front()
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
        assert_eq!(session.poll_work().map(|w| w.batch.id), Some(1));
        assert_eq!(session.poll_work().map(|w| w.batch.id), Some(2));
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
            ..ProviderSessionConfig::default()
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

    #[test]
    fn a_cancelled_batch_that_was_handed_out_holds_its_place_until_it_is_done() {
        let now = Instant::now();
        let config = ProviderSessionConfig {
            max_batches: 1,
            ..ProviderSessionConfig::default()
        };
        let mut session = ProviderSession::new(hello(), config);
        let all = |_: &BlobId| true;
        session.handle_request(Request::Run(batch(1, b"a")), now, all);
        let work = session.poll_work().expect("batch 1 runs");
        session.handle_request(Request::Cancel { batch: 1 }, now, all);
        assert_eq!(
            session.poll_cancel(),
            Some(1),
            "the driver is told to stop it"
        );
        session.handle_request(Request::Run(batch(2, b"a")), now, all);
        assert!(
            matches!(
                session.poll_reply(),
                Some(Reply::Done {
                    batch: 2,
                    outcome: Outcome::Retry(_)
                })
            ),
            "the cancelled batch still runs, so it still counts"
        );
        assert!(session.poll_work().is_none());
        drop(work);
        assert!(
            !session.handle_done(1, Outcome::Retry("the batch was cancelled".into())),
            "no reply is owed for a cancelled batch"
        );
        assert_eq!(session.poll_reply(), None);
        session.handle_request(Request::Run(batch(3, b"a")), now, all);
        assert_eq!(session.poll_work().map(|w| w.batch.id), Some(3));
    }

    #[test]
    fn the_quota_is_shared_by_every_session_and_freed_when_the_work_is_dropped() {
        let now = Instant::now();
        let quota = Arc::new(BatchQuota::new(2, usize::MAX));
        let config = ProviderSessionConfig {
            quota: Arc::clone(&quota),
            ..ProviderSessionConfig::default()
        };
        let mut first = ProviderSession::new(hello(), config.clone());
        let mut second = ProviderSession::new(hello(), config);
        let all = |_: &BlobId| true;
        first.handle_request(Request::Run(batch(1, b"a")), now, all);
        first.handle_request(Request::Run(batch(2, b"a")), now, all);
        second.handle_request(Request::Run(batch(1, b"a")), now, all);
        assert!(matches!(
            second.poll_reply(),
            Some(Reply::Done {
                batch: 1,
                outcome: Outcome::Retry(_)
            })
        ));
        assert_eq!(quota.used().0, 2);
        let work = first.poll_work().expect("queued");
        drop(work);
        assert_eq!(quota.used().0, 1, "a batch that ran gives its place back");
        drop(first);
        assert_eq!(quota.used(), (0, 0), "so does a session that is gone");
        second.handle_request(Request::Run(batch(3, b"a")), now, all);
        assert!(second.poll_work().is_some());
    }

    #[test]
    fn a_hold_grows_by_the_outputs_it_keeps_within_the_byte_cap_unless_forced() {
        let quota = Arc::new(BatchQuota::new(4, 100));
        let mut hold = quota.try_hold(40).expect("room");
        assert!(hold.grow(50, false));
        let other = quota.try_hold(10).expect("room");
        assert_eq!(quota.used(), (2, 100));
        assert!(!hold.grow(1, false), "past the cap");
        assert_eq!(quota.used(), (2, 100));
        assert!(hold.grow(1, true), "forced");
        assert_eq!(quota.used(), (2, 101));
        drop(hold);
        assert_eq!(quota.used(), (1, 10), "all it grew by is given back");
        drop(other);
        assert_eq!(quota.used(), (0, 0));
    }

    #[test]
    fn a_connection_holds_at_most_its_bytes_of_batches() {
        let now = Instant::now();
        let one = batch_bytes(&batch(1, b"a"));
        let config = ProviderSessionConfig {
            max_batch_bytes: one * 2,
            ..ProviderSessionConfig::default()
        };
        let mut session = ProviderSession::new(hello(), config);
        let all = |_: &BlobId| true;
        for id in 1..=3 {
            session.handle_request(Request::Run(batch(id, b"a")), now, all);
        }
        assert!(matches!(
            session.poll_reply(),
            Some(Reply::Done {
                batch: 3,
                outcome: Outcome::Retry(_)
            })
        ));
        assert_eq!(session.live_batches(), 2);
    }

    #[test]
    fn a_connection_within_its_share_is_served_when_others_filled_the_quota() {
        let now = Instant::now();
        let quota = Arc::new(BatchQuota::new(2, usize::MAX));
        let config = ProviderSessionConfig {
            quota: Arc::clone(&quota),
            share: (1, 1 << 20),
            ..ProviderSessionConfig::default()
        };
        let mut greedy = ProviderSession::new(hello(), config.clone());
        let mut modest = ProviderSession::new(hello(), config);
        let all = |_: &BlobId| true;
        for id in 1..=3 {
            greedy.handle_request(Request::Run(batch(id, b"a")), now, all);
        }
        assert_eq!(greedy.live_batches(), 2, "the quota is full");
        modest.handle_request(Request::Run(batch(1, b"a")), now, all);
        modest.handle_request(Request::Run(batch(2, b"a")), now, all);
        assert_eq!(modest.live_batches(), 1, "its share, and no more");
        assert_eq!(quota.used().0, 3);
    }
}
