//! Room shared by peers and handed out fairly: the memory a provider sets aside for blobs being
//! received.
//!
//! A FIFO semaphore lets one peer that opens many streams queue in front of everyone: each of
//! its streams waits its turn, and a peer that comes later waits behind all of them. Here, when
//! room frees, it goes to the waiting peer that holds least, so a peer's own backlog delays
//! itself, not the others.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

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
    /// future gives up its place.
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
                grant,
            });
            (granted, self.grant(&mut state))
        };
        drop(unserved);
        match granted.await {
            Ok(hold) => hold,
            // The sender is dropped only once it has sent, or once this receiver is gone.
            Err(_) => unreachable!("a waiting request is granted before its sender is dropped"),
        }
    }

    /// Hands free units to the waiting: the peer holding least first (the earliest among
    /// equals), as long as its request fits. Returns the holds whose requests were given up,
    /// to be dropped once the lock is released.
    fn grant(self: &Arc<Self>, state: &mut State<K>) -> Vec<RoomHold<K>> {
        let mut unserved = Vec::new();
        state.waiting.retain(|waiting| !waiting.grant.is_closed());
        loop {
            let next = state
                .waiting
                .iter()
                .enumerate()
                .min_by_key(|(_, waiting)| {
                    let held = state.held.get(&waiting.owner).copied().unwrap_or(0);
                    (held, waiting.arrived)
                })
                .map(|(at, _)| at);
            let Some(at) = next else {
                break;
            };
            if state.waiting[at].units > state.free {
                break;
            }
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
