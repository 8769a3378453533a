//! What a node believes about the providers it heard of: their newest valid announcements.

use std::collections::HashMap;

use super::announcement::{Announcement, AnnouncementError, MAX_TTL_SECS};
use crate::identity::NodeId;

/// What receiving an announcement changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A provider not known before (or known and expired).
    Added(Announcement),
    /// A known provider announced again; what it sells or where it is may have changed.
    Updated(Announcement),
}

/// The newest valid announcement of each provider, until it expires. Sans-IO: time is passed
/// in (Unix seconds).
///
/// An announcement is believed only when its signature is its node's, it has not expired, it
/// does not claim to last longer than [`MAX_TTL_SECS`], and its sequence number is above every
/// one seen from that node in that time: replays and stale copies are refused with a typed
/// error. The directory holds at most `capacity` providers, so a flood of fresh keys cannot
/// make it grow without bound.
#[derive(Debug)]
pub struct Directory {
    /// Each provider's newest announcement, with the signed bytes it came in (to pass on).
    providers: HashMap<NodeId, (Announcement, Vec<u8>)>,
    /// The newest sequence number seen from each node, with when it stops mattering (the
    /// expiry of that announcement): it outlives the entry, so a replay of an older
    /// announcement after the provider left is still refused.
    latest: HashMap<NodeId, (u64, u64)>,
    capacity: usize,
}

/// The directory is full: a new provider is not taken in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the directory holds {capacity} providers already; node {node} is not taken in")]
pub struct DirectoryFull {
    /// The node refused.
    pub node: NodeId,
    /// The directory's capacity.
    pub capacity: usize,
}

/// Why an announcement was not taken in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    /// The announcement itself is bad (forged, stale, replayed, malformed).
    #[error(transparent)]
    Announcement(#[from] AnnouncementError),
    /// The directory is full.
    #[error(transparent)]
    Full(#[from] DirectoryFull),
}

impl Directory {
    /// A directory of at most `capacity` providers.
    pub fn new(capacity: usize) -> Self {
        Self {
            providers: HashMap::new(),
            latest: HashMap::new(),
            capacity,
        }
    }

    /// Checks `bytes` as a signed announcement received at `now` and takes it in when it is
    /// valid and newer than what is known of its node.
    pub fn receive(&mut self, bytes: &[u8], now: u64) -> Result<Change, Refused> {
        let announcement = Announcement::verify(bytes, now)?;
        let node = announcement.node;
        if let Some(&(latest, _)) = self.latest.get(&node)
            && announcement.seq <= latest
        {
            return Err(AnnouncementError::Replayed {
                node,
                seq: announcement.seq,
                latest,
            }
            .into());
        }
        let known = self.providers.contains_key(&node);
        if !known && self.providers.len() >= self.capacity {
            self.expire(now);
            if self.providers.len() >= self.capacity {
                return Err(DirectoryFull {
                    node,
                    capacity: self.capacity,
                }
                .into());
            }
        }
        self.latest
            .insert(node, (announcement.seq, announcement.expires_at));
        self.providers
            .insert(node, (announcement.clone(), bytes.to_vec()));
        Ok(if known {
            Change::Updated(announcement)
        } else {
            Change::Added(announcement)
        })
    }

    /// Drops the announcements expired at `now`; returns their nodes.
    pub fn expire(&mut self, now: u64) -> Vec<NodeId> {
        let mut gone: Vec<NodeId> = self
            .providers
            .iter()
            .filter(|(_, (announcement, _))| announcement.expires_at <= now)
            .map(|(node, _)| *node)
            .collect();
        gone.sort();
        for node in &gone {
            self.providers.remove(node);
        }
        // A sequence number matters while an announcement carrying it could still verify.
        self.latest
            .retain(|_, (_, until)| until.saturating_add(MAX_TTL_SECS) > now);
        gone
    }

    /// Forgets `node`'s announcement (its sequence number is still remembered).
    pub fn forget(&mut self, node: &NodeId) {
        self.providers.remove(node);
    }

    /// The announcement of `node`, if it is known and valid.
    pub fn get(&self, node: &NodeId) -> Option<&Announcement> {
        self.providers
            .get(node)
            .map(|(announcement, _)| announcement)
    }

    /// Every provider known, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Announcement> {
        self.providers
            .values()
            .map(|(announcement, _)| announcement)
    }

    /// The signed bytes of up to `limit` announcements, the latest to expire first: what a
    /// node passes to a new neighbour so it need not wait for every provider to announce
    /// itself again.
    pub fn signed(&self, limit: usize) -> Vec<Vec<u8>> {
        let mut newest: Vec<&(Announcement, Vec<u8>)> = self.providers.values().collect();
        newest.sort_by_key(|(announcement, _)| std::cmp::Reverse(announcement.expires_at));
        newest
            .into_iter()
            .take(limit)
            .map(|(_, bytes)| bytes.clone())
            .collect()
    }

    /// How many providers are known.
    pub fn len(&self) -> usize {
        self.providers.len()
    }

    /// Whether no provider is known.
    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::announcement::tests::announcement;
    use crate::identity::NodeKey;

    #[test]
    fn newer_announcements_replace_older_ones_and_replays_are_refused() {
        let key = NodeKey::from_secret([1; 32]);
        let mut directory = Directory::new(10);
        let first = announcement(&key, 5, 1_060).sign(&key).expect("signs");
        assert!(matches!(
            directory.receive(&first, 1_000),
            Ok(Change::Added(a)) if a.seq == 5
        ));
        let mut newer = announcement(&key, 6, 1_070);
        newer.offers[0].price_per_gfuel = 99;
        let newer_bytes = newer.sign(&key).expect("signs");
        assert_eq!(
            directory.receive(&newer_bytes, 1_010),
            Ok(Change::Updated(newer.clone()))
        );
        // The first announcement again (a replay), and the same one twice: both refused.
        for replay in [&first, &newer_bytes] {
            assert!(matches!(
                directory.receive(replay, 1_020),
                Err(Refused::Announcement(AnnouncementError::Replayed {
                    latest: 6,
                    ..
                }))
            ));
        }
        assert_eq!(directory.get(&key.node_id()), Some(&newer));
        assert_eq!(directory.signed(10), vec![newer_bytes]);
        assert!(directory.signed(0).is_empty());
    }

    #[test]
    fn providers_that_stop_announcing_expire_and_their_old_announcements_stay_refused() {
        let key = NodeKey::from_secret([1; 32]);
        let mut directory = Directory::new(10);
        let old = announcement(&key, 5, 1_030).sign(&key).expect("signs");
        let last = announcement(&key, 6, 1_060).sign(&key).expect("signs");
        directory.receive(&old, 1_000).expect("taken");
        directory.receive(&last, 1_001).expect("taken");
        assert_eq!(directory.expire(1_059), Vec::<NodeId>::new());
        assert_eq!(directory.expire(1_060), vec![key.node_id()]);
        assert!(directory.is_empty());
        // The provider left; a replay of its last announcement is expired, and a fresh one
        // from it is welcome again.
        assert!(matches!(
            directory.receive(&last, 1_061),
            Err(Refused::Announcement(AnnouncementError::Expired { .. }))
        ));
        let back = announcement(&key, 7, 1_100).sign(&key).expect("signs");
        assert!(matches!(
            directory.receive(&back, 1_070),
            Ok(Change::Added(_))
        ));
    }

    #[test]
    fn an_older_announcement_is_refused_even_after_a_newer_one_expired() {
        let key = NodeKey::from_secret([1; 32]);
        let mut directory = Directory::new(10);
        // The older one lasts longer than the newer (a restart with a shorter lifetime).
        let older = announcement(&key, 5, 1_100).sign(&key).expect("signs");
        let newer = announcement(&key, 6, 1_020).sign(&key).expect("signs");
        directory.receive(&older, 1_000).expect("taken");
        directory.receive(&newer, 1_001).expect("taken");
        assert_eq!(directory.expire(1_030), vec![key.node_id()]);
        assert!(matches!(
            directory.receive(&older, 1_040),
            Err(Refused::Announcement(AnnouncementError::Replayed {
                latest: 6,
                ..
            }))
        ));
    }

    #[test]
    fn a_full_directory_refuses_new_nodes_but_keeps_updating_known_ones() {
        let mut directory = Directory::new(2);
        let keys: Vec<NodeKey> = (1..=3).map(|i| NodeKey::from_secret([i; 32])).collect();
        for key in &keys[..2] {
            let bytes = announcement(key, 1, 1_060).sign(key).expect("signs");
            directory.receive(&bytes, 1_000).expect("room");
        }
        let third = announcement(&keys[2], 1, 1_060)
            .sign(&keys[2])
            .expect("signs");
        assert!(matches!(
            directory.receive(&third, 1_000),
            Err(Refused::Full(DirectoryFull { capacity: 2, .. }))
        ));
        let update = announcement(&keys[0], 2, 1_070)
            .sign(&keys[0])
            .expect("signs");
        assert!(matches!(
            directory.receive(&update, 1_001),
            Ok(Change::Updated(_))
        ));
        // Once the others expire there is room again.
        assert!(matches!(
            directory.receive(&third, 1_059),
            Err(Refused::Full(_))
        ));
        let later = announcement(&keys[2], 2, 1_120)
            .sign(&keys[2])
            .expect("signs");
        assert!(matches!(
            directory.receive(&later, 1_065),
            Ok(Change::Added(_))
        ));
        assert_eq!(directory.len(), 2);
    }
}
