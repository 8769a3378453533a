//! Nodes on a real network: the async drivers around the sans-IO [`proto`](crate::proto)
//! state machines.
//!
//! * [`ProviderNode`]: listens on a QUIC endpoint, announces itself on the gossip topic
//!   ([`discovery`](crate::discovery)), introduces itself with its offers, fetches only the
//!   blobs it lacks, and runs batches on worker threads in a shared sandbox.
//! * [`Requestor`]: joins the topic through its bootstrap nodes, dials by node id the announced
//!   providers whose offers match its demand, and runs jobs over them with the
//!   [`RequestorSession`](crate::proto::requestor::RequestorSession) scheduler.
//!
//! Both log the path of each connection (direct or relayed) when it is set up and when it
//! changes.
//! * [`BlobStore`]: content-addressed blobs in memory, optionally backed by a directory.

mod blobs;
mod exec;
mod provider;
mod requestor;
mod room;

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

pub use self::blobs::{BLOB_GRACE, Blob, BlobError, BlobStore, MIN_BLOB_RATE};
pub use self::exec::subtask_seed;
pub use self::provider::{ProviderLimits, ProviderNode, ProviderNodeConfig};
pub use self::requestor::{
    JobRequest, ProgressFn, ProviderInfo, RemoteJob, Requestor, RequestorConfig, TransferStats,
};

use crate::discovery::{AnnouncementError, DiscoveryError};
use crate::identity::NodeId;
use crate::net::{Connection, Endpoint, FramedRecv, FramedSend, NetError, PathKind};
use crate::proto::PROTOCOL_VERSION;
use crate::proto::message::{Hello, MAX_REPLY_FRAME, MAX_REQUEST_FRAME, Reply, Request};

/// A node could not start or stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The endpoint could not be set up.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The node could not join the gossip topic.
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    /// The provider's announcement cannot be made (too many flavors, say).
    #[error(transparent)]
    Announcement(#[from] AnnouncementError),
    /// A thread or directory could not be created.
    #[error("{what}: {message}")]
    Io {
        /// What was being done.
        what: String,
        /// The operating system's reason.
        message: String,
    },
    /// The node's settings contradict each other.
    #[error("invalid node configuration: {0}")]
    Config(String),
    /// The node has stopped.
    #[error("the node has stopped")]
    Stopped,
}

impl NodeError {
    pub(crate) fn io(what: impl Into<String>, error: &std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            message: error.to_string(),
        }
    }
}

/// Where to join a network: a node's id and an address it listens on (`NODE_ID@HOST:PORT`).
///
/// The id is not optional: nodes are dialed by their key, and the handshake fails unless the
/// peer holds it. A provider daemon prints its `NODE_ID@HOST:PORT` when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Bootstrap {
    /// The node.
    pub node: NodeId,
    /// Its address.
    pub addr: SocketAddr,
}

impl std::fmt::Display for Bootstrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.node, self.addr)
    }
}

/// A bootstrap address did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a node address (NODE_ID@HOST:PORT): {reason}")]
pub struct BootstrapParseError {
    text: String,
    reason: String,
}

impl FromStr for Bootstrap {
    type Err = BootstrapParseError;

    /// Parses `NODE_ID@HOST:PORT`; a host name is resolved (first address).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = |reason: String| BootstrapParseError {
            text: text.into(),
            reason,
        };
        let (node, addr) = crate::net::parse_node_at(text).map_err(error)?;
        Ok(Self { addr, node })
    }
}

/// How long dialing a node and exchanging hellos may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A dialed connection whose hellos are exchanged, with its control stream.
pub(crate) struct Handshake {
    pub(crate) connection: Connection,
    /// The peer's introduction.
    pub(crate) hello: Hello,
    pub(crate) requests: FramedSend,
    pub(crate) replies: FramedRecv,
}

/// Dials `node` (at `addrs` and wherever it is remembered; the handshake checks its id), opens
/// the control stream, introduces ourselves with `ours` and reads the peer's hello, all within
/// [`HANDSHAKE_TIMEOUT`].
pub(crate) async fn handshake(
    endpoint: &Endpoint,
    node: NodeId,
    addrs: Vec<SocketAddr>,
    ours: Hello,
) -> Result<Handshake, String> {
    let exchange = async {
        let connection = endpoint
            .connect(node, addrs)
            .await
            .map_err(|error| error.to_string())?;
        // A provider that turns us away (busy, say) says why as it closes; whichever step
        // finds the connection closed reports that reason.
        let refused = |error: &dyn std::fmt::Display| {
            let error = error.to_string();
            match connection.quic().close_reason() {
                Some(reason) if !error.contains(&reason.to_string()) => {
                    format!("{error}: {reason}")
                }
                _ => error,
            }
        };
        let (send, recv) = connection
            .quic()
            .open_bi()
            .await
            .map_err(|error| refused(&error))?;
        let mut requests = FramedSend::new(send, MAX_REQUEST_FRAME);
        requests
            .send(&Request::Hello(ours))
            .await
            .map_err(|error| refused(&error))?;
        let mut replies = FramedRecv::new(recv, MAX_REPLY_FRAME);
        let hello = match replies.recv::<Reply>().await {
            Ok(Some(Reply::Hello(hello))) if hello.version == PROTOCOL_VERSION => hello,
            Ok(Some(Reply::Hello(hello))) => {
                return Err(format!(
                    "the node speaks protocol version {}, not {PROTOCOL_VERSION}",
                    hello.version
                ));
            }
            Ok(other) => return Err(format!("expected a hello, got {other:?}")),
            Err(error) => return Err(refused(&error)),
        };
        Ok(Handshake {
            connection,
            hello,
            requests,
            replies,
        })
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("no hello within {HANDSHAKE_TIMEOUT:?}")))
}

/// Logs the path a connection's packets take (direct or relayed) when it is set up and each
/// time it changes, until the connection closes.
pub(crate) async fn log_paths(connection: Connection, mut changed: impl FnMut(&PathKind)) {
    use n0_future::StreamExt;
    let peer = connection.peer();
    let mut last = connection.path();
    tracing::info!(%peer, path = %last, "connection path");
    let mut events = connection.quic().path_events();
    while events.next().await.is_some() {
        let path = connection.path();
        if path != last {
            tracing::info!(%peer, %path, "connection path changed");
            changed(&path);
            last = path;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeKey;

    #[test]
    fn bootstrap_addresses_parse_and_need_a_node_id() {
        let node = NodeKey::from_secret([9; 32]).node_id();
        let pinned: Bootstrap = format!("{node}@[::1]:7").parse().unwrap();
        assert_eq!(pinned.node, node);
        assert_eq!(pinned.addr.port(), 7);
        assert_eq!(pinned.to_string(), format!("{node}@[::1]:7"));
        let bad = "nothex@127.0.0.1:1".parse::<Bootstrap>().unwrap_err();
        assert!(bad.to_string().contains("nothex@127.0.0.1:1"), "{bad}");
        let bare = "127.0.0.1:4433".parse::<Bootstrap>().unwrap_err();
        assert!(bare.to_string().contains("node id is missing"), "{bare}");
        assert!(format!("{node}@127.0.0.1").parse::<Bootstrap>().is_err());
    }
}
