//! How requestors learn of providers: signed announcements spread by gossip.
//!
//! * [`Announcement`]: what a provider tells the network (flavors and prices, engine, payee,
//!   relay, addresses), signed by its node key, numbered, and void after its expiry. Gossip
//!   does not authenticate who wrote a message, so everything a node believes about a provider
//!   comes from an announcement that provider signed.
//! * [`Directory`]: the newest valid announcement of each provider; refuses forged, stale and
//!   replayed announcements with a typed error, and holds a bounded number of providers.
//! * [`Discovery`]: a node's part in the gossip topic (iroh-gossip on the node's own endpoint):
//!   providers publish their announcement every [`ANNOUNCE_EVERY`]; every node checks what it
//!   hears, keeps the believed announcements in its directory, and tells its subscribers.
//!   What a neighbour sends its neighbours beyond its rate is dropped unread.
//!
//! A provider that leaves stops being offered when its last announcement expires, at most
//! [`ANNOUNCEMENT_TTL`] after it was made (at once to requestors connected to it).

mod announcement;
mod directory;
mod gossip;

use std::time::Duration;

/// How often a provider announces itself again.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(10);

/// How long an announcement is valid: three refresh periods, so one lost announcement does not
/// make a provider disappear.
pub const ANNOUNCEMENT_TTL: Duration = Duration::from_secs(30);

pub use self::announcement::{
    Announcement, AnnouncementError, MAX_ADDRESSES, MAX_ANNOUNCEMENT_BYTES, MAX_TTL_SECS, unix_now,
};
pub use self::directory::{Change, Directory, DirectoryFull, Refused};
pub use self::gossip::{Discovery, DiscoveryConfig, DiscoveryError, DiscoveryStats, Heard};
