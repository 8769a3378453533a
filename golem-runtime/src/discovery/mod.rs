//! How requestors learn of providers: signed announcements spread by gossip.
//!
//! * [`Announcement`]: what a provider tells the network (flavors and prices, engine, payee,
//!   relay, addresses), signed by its node key, numbered, and void after its expiry. Gossip
//!   does not authenticate who wrote a message, so everything a node believes about a provider
//!   comes from an announcement that provider signed.
//! * [`Directory`]: the newest valid announcement of each provider; refuses forged, stale and
//!   replayed announcements with a typed error, and holds a bounded number of providers.

mod announcement;
mod directory;

pub use self::announcement::{
    Announcement, AnnouncementError, MAX_ADDRESSES, MAX_ANNOUNCEMENT_BYTES, MAX_TTL_SECS, unix_now,
};
pub use self::directory::{Change, Directory, DirectoryFull, Refused};
