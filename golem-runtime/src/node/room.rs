//! Room shared by peers and handed out fairly: the memory a provider sets aside for blobs being
//! received.
//!
//! A FIFO semaphore lets one peer that opens many streams queue in front of everyone: each of
//! its streams waits its turn, and a peer that comes later waits behind all of them. Here, when
//! room frees, it goes to the waiting peer that holds least, so a peer's own backlog delays
//! itself, not the others. A request that does not fit yet lets smaller ones behind it go
//! first for [`SKIP_FOR`]; after that it keeps its place, so neither a large request nor a
//! stream of small ones can hold the other off for good.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// How long a request that does not fit lets those behind it that do go first.
const SKIP_FOR: Duration = Duration::from_secs(1);

/// Room of a fixed size in units (the provider counts KiB), shared by peers of id `K`.
#[derive(Debug)]
pub(crate) struct FairRoom<K: Copy + Eq + Hash> {
    state: Mutex<State<K>>,
}

#[derive(Debug)]
struct State<K: Copy + Eq + Hash> {
    free: u64,
    /// Units held, by peer.
    held: HashMap<K, u64>,
    waiting: Vec<Waiting<K>>,
    /// Order of arrival, for ties.
    next: u64,
}

#[derive(Debug)]
struct Waiting<K: Copy + Eq + Hash> {
    owner: K,
    units: u64,
    arrived: u64,
    since: Instant,
    grant: oneshot::Sender<RoomHold<K>>,
}

/// Units of a [`FairRoom`] held by one peer, given back when dropped.
#[derive(Debug)]
pub(crate) struct RoomHold<K: Copy + Eq + Hash> {
    room: Arc<FairRoom<K>>,
    owner: K,
    units: u64,
}

impl<K: Copy + Eq + Hash> Drop for RoomHold<K> {
    fn drop(&mut self) {
        let unserved = {
            let mut state = self.room.lock();
            state.free += self.units;
            if let Some(held) = state.held.get_mut(&self.owner) {
                *held = held.saturating_sub(self.units);
                if *held == 0 {
                    state.held.remove(&self.owner);
                }
            }
            self.room.grant(&mut state)
        };
        // Given back outside the lock: each drop gives its units back in turn.
        drop(unserved);
    }
}

impl<K: Copy + Eq + Hash> FairRoom<K> {
    /// Room of `units`.
    pub(crate) fn new(units: u64) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                free: units,
                held: HashMap::new(),
                waiting: Vec::new(),
                next: 0,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<K>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Units free now.
    #[cfg(test)]
    fn free(&self) -> u64 {
        self.lock().free
    }

    /// `units` for `owner`, once there is room and no peer holding less waits for it. A request
    /// larger than the whole room waits for ever: the caller caps what it asks. Dropping the
    /// future gives up its place, and the room goes to the next.
    pub(crate) async fn acquire(self: &Arc<Self>, owner: K, units: u64) -> RoomHold<K> {
        let (granted, unserved) = {
            let mut state = self.lock();
            let (grant, granted) = oneshot::channel();
            let arrived = state.next;
            state.next += 1;
            state.waiting.push(Waiting {
                owner,
                units,
                arrived,
                since: Instant::now(),
                grant,
            });
            (granted, self.grant(&mut state))
        };
        drop(unserved);
        let mut pending = Pending {
            room: Arc::clone(self),
            granted,
            done: false,
        };
        let granted = (&mut pending.granted).await;
        pending.done = true;
        match granted {
            Ok(hold) => hold,
            // The sender is dropped only once it has sent, or once this receiver is gone.
            Err(_) => unreachable!("a waiting request is granted before its sender is dropped"),
        }
    }

    /// Hands free units to the waiting: the peer holding least first (the earliest among
    /// equals). One that does not fit lets those behind it that do go first, for [`SKIP_FOR`];
    /// then it keeps its place. Returns the holds whose requests were given up, to be dropped
    /// once the lock is released.
    fn grant(self: &Arc<Self>, state: &mut State<K>) -> Vec<RoomHold<K>> {
        let mut unserved = Vec::new();
        state.waiting.retain(|waiting| !waiting.grant.is_closed());
        loop {
            let mut order: Vec<usize> = (0..state.waiting.len()).collect();
            order.sort_by_key(|&at| {
                let waiting = &state.waiting[at];
                let held = state.held.get(&waiting.owner).copied().unwrap_or(0);
                (held, waiting.arrived)
            });
            let mut next = None;
            for at in order {
                let waiting = &state.waiting[at];
                if waiting.units <= state.free {
                    next = Some(at);
                    break;
                }
                if waiting.since.elapsed() >= SKIP_FOR {
                    break;
                }
            }
            let Some(at) = next else {
                break;
            };
            let waiting = state.waiting.remove(at);
            state.free -= waiting.units;
            *state.held.entry(waiting.owner).or_default() += waiting.units;
            let hold = RoomHold {
                room: Arc::clone(self),
                owner: waiting.owner,
                units: waiting.units,
            };
            if let Err(hold) = waiting.grant.send(hold) {
                unserved.push(hold);
            }
        }
        unserved
    }
}

/// A request waiting in a [`FairRoom`]. Dropped before its grant (the caller gave up), it
/// hands the room on: what the request blocked may fit another now.
struct Pending<K: Copy + Eq + Hash> {
    room: Arc<FairRoom<K>>,
    granted: oneshot::Receiver<RoomHold<K>>,
    done: bool,
}

impl<K: Copy + Eq + Hash> Drop for Pending<K> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Closed first, so the grant below passes it by; a hold sent before is taken back.
        self.granted.close();
        let sent = self.granted.try_recv().ok();
        let unserved = {
            let mut state = self.room.lock();
            self.room.grant(&mut state)
        };
        // Given back outside the lock.
        drop(sent);
        drop(unserved);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// `future`'s output, if it is ready within 20 ms.
    async fn ready<T>(future: &mut (impl Future<Output = T> + Unpin)) -> Option<T> {
        tokio::time::timeout(Duration::from_millis(20), future)
            .await
            .ok()
    }

    #[tokio::test]
    async fn freed_room_goes_to_the_peer_holding_least_not_to_the_first_in_line() {
        let room = FairRoom::new(10);
        // Peer 1 takes all the room and queues five more requests.
        let first = room.acquire(1, 10).await;
        let mut backlog: Vec<_> = (0..5).map(|_| Box::pin(room.acquire(1, 2))).collect();
        for request in &mut backlog {
            assert!(ready(request).await.is_none());
        }
        // Peer 2 comes later, and gets the room first.
        let mut late = Box::pin(room.acquire(2, 2));
        assert!(ready(&mut late).await.is_none());
        drop(first);
        let late = ready(&mut late).await.expect("granted first");
        // The rest goes to peer 1's backlog: four of its five requests fit.
        let mut served = Vec::new();
        for mut request in backlog {
            served.extend(ready(&mut request).await);
        }
        assert_eq!(served.len(), 4);
        assert_eq!(room.free(), 0);
        drop(late);
        drop(served);
        assert_eq!(room.free(), 10);
    }

    #[tokio::test]
    async fn a_request_that_does_not_fit_lets_smaller_ones_by_for_a_while_then_keeps_its_place() {
        let room = FairRoom::new(10);
        let a = room.acquire(1, 5).await;
        let mut b = Box::pin(room.acquire(2, 8));
        assert!(ready(&mut b).await.is_none());
        // Just arrived, it lets a smaller request by.
        let mut c = Box::pin(room.acquire(3, 2));
        let c = ready(&mut c).await.expect("let by the large one");
        tokio::time::sleep(SKIP_FOR).await;
        // Waiting longer, it keeps its place, though another would fit...
        let mut d = Box::pin(room.acquire(4, 2));
        assert!(ready(&mut d).await.is_none());
        // ...until it gives up: then the room goes on at once.
        drop(b);
        let d = ready(&mut d)
            .await
            .expect("granted once the large one gave up");
        drop((a, c, d));
        assert_eq!(room.free(), 10);
    }

    #[tokio::test]
    async fn a_request_given_up_leaves_no_units_behind() {
        let room = FairRoom::new(4);
        let all = room.acquire(1, 4).await;
        let mut given_up = Box::pin(room.acquire(2, 3));
        assert!(ready(&mut given_up).await.is_none());
        drop(given_up);
        let mut next = Box::pin(room.acquire(3, 4));
        assert!(ready(&mut next).await.is_none());
        drop(all);
        let next = ready(&mut next).await.expect("granted");
        assert_eq!(room.free(), 0);
        drop(next);
        assert_eq!(room.free(), 4);
        let state = room.lock();
        assert!(state.held.is_empty() && state.waiting.is_empty());
    }
}
