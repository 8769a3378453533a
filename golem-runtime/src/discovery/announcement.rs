//! A provider's signed announcement: what it sells and how to reach it.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::identity::{IdentityError, NodeId, NodeKey, Signature};
use crate::net::Relay;
use crate::payment::Payee;
use crate::proto::message::Offer;
use crate::sandbox::EngineFingerprint;

/// Domain of announcement signatures: a signature made for anything else never verifies as
/// an announcement.
const DOMAIN: &str = "golem/announcement/v1";

/// Largest encoded announcement, signature included. Gossip carries messages of up to 4 KiB;
/// this leaves room for its own framing.
pub const MAX_ANNOUNCEMENT_BYTES: usize = 3 << 10;

/// Most addresses an announcement lists.
pub const MAX_ADDRESSES: usize = 8;

/// Longest time an announcement may be valid for, counted from when it is received. A longer
/// expiry is refused, so a copy kept by a stranger cannot be replayed for long.
pub const MAX_TTL_SECS: u64 = 120;

/// What a provider tells the network about itself. Signed by its node key; every receiver
/// checks the signature, the expiry and the sequence number before believing any of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// The provider (the key that signs).
    pub node: NodeId,
    /// Grows with every announcement the provider makes; an older number is a replay.
    pub seq: u64,
    /// Unix time (seconds) after which the announcement is void.
    pub expires_at: u64,
    /// The flavors sold.
    pub offers: Vec<Offer>,
    /// Its sandbox engine: outputs are byte-comparable between equal fingerprints.
    pub engine: Option<EngineFingerprint>,
    /// Where it wants to be paid.
    pub payee: Option<Payee>,
    /// The relay it keeps its home on, where it can be reached when it cannot be dialed
    /// directly.
    pub relay: Option<Relay>,
    /// Addresses it can be reached at directly.
    pub addrs: Vec<SocketAddr>,
}

/// An announcement could not be made or was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AnnouncementError {
    /// The bytes are not an announcement.
    #[error("malformed announcement: {0}")]
    Malformed(String),
    /// The announcement is larger than gossip carries.
    #[error(
        "the announcement takes {size} bytes, more than the {limit} gossip carries: sell fewer \
         flavors or give them shorter names"
    )]
    TooLarge {
        /// Its encoded size.
        size: usize,
        /// [`MAX_ANNOUNCEMENT_BYTES`].
        limit: usize,
    },
    /// It lists more addresses than [`MAX_ADDRESSES`].
    #[error("the announcement lists {count} addresses, more than {MAX_ADDRESSES}")]
    TooManyAddresses {
        /// How many it lists.
        count: usize,
    },
    /// An address listed cannot be dialed (unspecified, multicast, or port 0): peers would
    /// be sent to dial nothing, or everyone.
    #[error("the announcement of node {node} lists an address no node has: {addr}")]
    BadAddress {
        /// Its node.
        node: NodeId,
        /// The address.
        addr: SocketAddr,
    },
    /// The signature is not the announced node's.
    #[error(transparent)]
    Signature(#[from] IdentityError),
    /// Its expiry has passed.
    #[error("the announcement of node {node} expired at {expires_at} (now {now})")]
    Expired {
        /// Its node.
        node: NodeId,
        /// When it expired.
        expires_at: u64,
        /// Now.
        now: u64,
    },
    /// Its expiry is further away than [`MAX_TTL_SECS`] allows.
    #[error(
        "the announcement of node {node} claims to be valid until {expires_at}, beyond the {MAX_TTL_SECS} s allowed (now {now})"
    )]
    TooLong {
        /// Its node.
        node: NodeId,
        /// Its expiry.
        expires_at: u64,
        /// Now.
        now: u64,
    },
    /// A newer announcement of the node is known: this one is a replay, or the node contradicts
    /// itself.
    #[error("announcement {seq} of node {node} is not newer than {latest}, already known")]
    Replayed {
        /// Its node.
        node: NodeId,
        /// Its sequence number.
        seq: u64,
        /// The newest known.
        latest: u64,
    },
    /// The relay named is no relay (an unspecified or multicast address, or port 0).
    #[error("the announcement of node {node} names an impossible relay {relay}")]
    BadRelay {
        /// Its node.
        node: NodeId,
        /// The relay named.
        relay: Relay,
    },
}

/// The bytes that travel: the encoded announcement and its node's signature over them.
#[derive(Serialize, Deserialize)]
struct Signed {
    body: Vec<u8>,
    signature: Signature,
}

impl Announcement {
    /// Signs and encodes the announcement with `key` (whose node it must name).
    pub fn sign(&self, key: &NodeKey) -> Result<Vec<u8>, AnnouncementError> {
        debug_assert_eq!(
            self.node,
            key.node_id(),
            "an announcement is signed by its node"
        );
        if self.addrs.len() > MAX_ADDRESSES {
            return Err(AnnouncementError::TooManyAddresses {
                count: self.addrs.len(),
            });
        }
        let body = postcard::to_allocvec(self)
            .map_err(|error| AnnouncementError::Malformed(error.to_string()))?;
        let signature = key.sign(DOMAIN, &body);
        let bytes = postcard::to_allocvec(&Signed { body, signature })
            .map_err(|error| AnnouncementError::Malformed(error.to_string()))?;
        if bytes.len() > MAX_ANNOUNCEMENT_BYTES {
            return Err(AnnouncementError::TooLarge {
                size: bytes.len(),
                limit: MAX_ANNOUNCEMENT_BYTES,
            });
        }
        Ok(bytes)
    }

    /// Decodes `bytes` and checks them: size, signature, addresses, relay URL and expiry (as
    /// of `now`, Unix seconds). Whether it is newer than what is known is the
    /// [`Directory`](super::Directory)'s to check.
    pub fn verify(bytes: &[u8], now: u64) -> Result<Self, AnnouncementError> {
        if bytes.len() > MAX_ANNOUNCEMENT_BYTES {
            return Err(AnnouncementError::TooLarge {
                size: bytes.len(),
                limit: MAX_ANNOUNCEMENT_BYTES,
            });
        }
        let malformed = |error: postcard::Error| AnnouncementError::Malformed(error.to_string());
        let (signed, rest): (Signed, _) = postcard::take_from_bytes(bytes).map_err(malformed)?;
        if !rest.is_empty() {
            return Err(AnnouncementError::Malformed(format!(
                "{} bytes after the announcement",
                rest.len()
            )));
        }
        let (announcement, rest): (Self, _) =
            postcard::take_from_bytes(&signed.body).map_err(malformed)?;
        if !rest.is_empty() {
            return Err(AnnouncementError::Malformed(format!(
                "{} bytes after the body",
                rest.len()
            )));
        }
        let node = announcement.node;
        node.verify(DOMAIN, &signed.body, &signed.signature)?;
        if announcement.addrs.len() > MAX_ADDRESSES {
            return Err(AnnouncementError::TooManyAddresses {
                count: announcement.addrs.len(),
            });
        }
        if let Some(&addr) = announcement
            .addrs
            .iter()
            .find(|addr| !crate::net::relay::is_dialable(**addr))
        {
            return Err(AnnouncementError::BadAddress { node, addr });
        }
        if let Some(relay) = announcement.relay
            && !relay.is_plausible()
        {
            return Err(AnnouncementError::BadRelay { node, relay });
        }
        let expires_at = announcement.expires_at;
        if expires_at <= now {
            return Err(AnnouncementError::Expired {
                node,
                expires_at,
                now,
            });
        }
        if expires_at > now.saturating_add(MAX_TTL_SECS) {
            return Err(AnnouncementError::TooLong {
                node,
                expires_at,
                now,
            });
        }
        Ok(announcement)
    }
}

/// Unix time in seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn flavor(name: &str) -> Offer {
        Offer {
            flavor: name.into(),
            memory_bytes: 64 << 20,
            fuel: 1 << 40,
            output_bytes: 64 << 20,
            log_bytes: 64 << 10,
            deadline_ms: 60_000,
            price_per_gfuel: 10,
            concurrency: 2,
        }
    }

    pub(crate) fn announcement(key: &NodeKey, seq: u64, expires_at: u64) -> Announcement {
        Announcement {
            node: key.node_id(),
            seq,
            expires_at,
            offers: vec![flavor("std")],
            engine: Some(EngineFingerprint([3; 32])),
            payee: Some(Payee::Ethereum([7; 20])),
            relay: Some(Relay {
                node: NodeKey::from_secret([9; 32]).node_id(),
                addr: "198.51.100.1:3340".parse().expect("address"),
            }),
            addrs: vec!["198.51.100.1:4433".parse().expect("address")],
        }
    }

    #[test]
    fn a_signed_announcement_verifies_and_round_trips() {
        let key = NodeKey::from_secret([1; 32]);
        let sent = announcement(&key, 5, 1_000);
        let bytes = sent.sign(&key).expect("signs");
        assert_eq!(Announcement::verify(&bytes, 990), Ok(sent.clone()));
    }

    #[test]
    fn an_announcement_listing_an_address_no_node_has_is_refused() {
        let key = NodeKey::from_secret([1; 32]);
        for addr in ["0.0.0.0:4433", "[ff02::1]:4433", "198.51.100.1:0"] {
            let mut sent = announcement(&key, 5, 1_000);
            let addr: SocketAddr = addr.parse().expect("address");
            sent.addrs.push(addr);
            let bytes = sent.sign(&key).expect("signs");
            assert_eq!(
                Announcement::verify(&bytes, 990),
                Err(AnnouncementError::BadAddress {
                    node: key.node_id(),
                    addr
                })
            );
        }
    }

    #[test]
    fn an_announcement_naming_an_impossible_relay_is_refused() {
        let key = NodeKey::from_secret([1; 32]);
        for addr in ["0.0.0.0:3340", "224.0.0.1:3340", "198.51.100.1:0"] {
            let mut sent = announcement(&key, 5, 1_000);
            let relay = Relay {
                node: key.node_id(),
                addr: addr.parse().expect("address"),
            };
            sent.relay = Some(relay);
            let bytes = sent.sign(&key).expect("signs");
            assert_eq!(
                Announcement::verify(&bytes, 990),
                Err(AnnouncementError::BadRelay {
                    node: key.node_id(),
                    relay
                })
            );
        }
    }

    #[test]
    fn a_forged_or_altered_announcement_is_refused() {
        let key = NodeKey::from_secret([1; 32]);
        let forger = NodeKey::from_secret([2; 32]);
        // The forger signs an announcement in the name of `key`'s node.
        let forged = Signed {
            body: postcard::to_allocvec(&announcement(&key, 5, 1_000)).expect("encodes"),
            signature: forger.sign(DOMAIN, b"anything"),
        };
        let bytes = postcard::to_allocvec(&forged).expect("encodes");
        assert!(matches!(
            Announcement::verify(&bytes, 990),
            Err(AnnouncementError::Signature(IdentityError::BadSignature { node }))
                if node == key.node_id()
        ));
        // An honest announcement with one byte of its body changed fails its signature.
        let honest = announcement(&key, 5, 1_000).sign(&key).expect("signs");
        for at in [40, 60, honest.len() - 70] {
            let mut bytes = honest.clone();
            bytes[at] ^= 1;
            assert!(Announcement::verify(&bytes, 990).is_err(), "byte {at}");
        }
        // A signature made for another purpose does not verify as an announcement.
        let body = postcard::to_allocvec(&announcement(&key, 5, 1_000)).expect("encodes");
        let other = Signed {
            signature: key.sign("golem/receipt", &body),
            body,
        };
        let bytes = postcard::to_allocvec(&other).expect("encodes");
        assert!(matches!(
            Announcement::verify(&bytes, 990),
            Err(AnnouncementError::Signature(_))
        ));
        assert!(matches!(
            Announcement::verify(&[0xff; 40], 990),
            Err(AnnouncementError::Malformed(_))
        ));
    }

    #[test]
    fn stale_and_overlong_announcements_are_refused() {
        let key = NodeKey::from_secret([1; 32]);
        let bytes = announcement(&key, 5, 1_000).sign(&key).expect("signs");
        assert!(matches!(
            Announcement::verify(&bytes, 1_000),
            Err(AnnouncementError::Expired { .. })
        ));
        assert!(matches!(
            Announcement::verify(&bytes, 1_000 - MAX_TTL_SECS - 1),
            Err(AnnouncementError::TooLong { .. })
        ));
    }

    #[test]
    fn announcements_stay_within_the_gossip_limit() {
        let key = NodeKey::from_secret([1; 32]);
        let mut many = announcement(&key, 5, 1_000);
        many.offers = (0..16)
            .map(|i| flavor(&format!("flavor-{i:02}-with-a-long-descriptive-name")))
            .collect();
        let bytes = many.sign(&key).expect("sixteen long-named flavors fit");
        assert!(bytes.len() <= MAX_ANNOUNCEMENT_BYTES, "{}", bytes.len());
        many.offers = (0..64)
            .map(|i| flavor(&format!("flavor-{i:02}-with-a-long-descriptive-name")))
            .collect();
        assert!(matches!(
            many.sign(&key),
            Err(AnnouncementError::TooLarge {
                limit: MAX_ANNOUNCEMENT_BYTES,
                ..
            })
        ));
        assert!(matches!(
            Announcement::verify(&vec![0; MAX_ANNOUNCEMENT_BYTES + 1], 990),
            Err(AnnouncementError::TooLarge { .. })
        ));
        let mut addrs = announcement(&key, 5, 1_000);
        addrs.addrs = vec![addrs.addrs[0]; MAX_ADDRESSES + 1];
        assert!(matches!(
            addrs.sign(&key),
            Err(AnnouncementError::TooManyAddresses { .. })
        ));
    }
}
