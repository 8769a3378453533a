//! A requestor that speaks the wire protocol by hand: it sends whatever frames a hostile peer
//! may send (not what [`Requestor`](crate::node::Requestor) sends), for tests that attack a
//! provider.

use std::net::SocketAddr;

use crate::identity::{NodeId, NodeKey};
use crate::net::{Connection, Endpoint, FramedRecv, FramedSend, NetConfig, StreamError};
use crate::node::{Handshake, handshake};
use crate::proto::message::{BlobHeader, BlobId, Hello, Reply, Request};

/// A connection to a provider with its control stream, after the hellos.
#[derive(Debug)]
pub struct RawRequestor {
    _endpoint: Endpoint,
    /// The connection.
    pub connection: Connection,
    /// Requests to the provider.
    pub requests: FramedSend,
    /// Its replies.
    pub replies: FramedRecv,
}

impl RawRequestor {
    /// Binds an endpoint of `key` as `net` says, dials `node` at `addr`, and exchanges hellos.
    /// The error says how far it got (and why the provider closed the connection, if it did).
    pub async fn dial(
        key: &NodeKey,
        net: &NetConfig,
        node: NodeId,
        addr: SocketAddr,
    ) -> Result<Self, String> {
        let endpoint = Endpoint::bind(key, net)
            .await
            .map_err(|error| error.to_string())?;
        let hello = Hello::requestor();
        let Handshake {
            connection,
            requests,
            replies,
            ..
        } = handshake(&endpoint, node, vec![addr], hello).await?;
        Ok(Self {
            _endpoint: endpoint,
            connection,
            requests,
            replies,
        })
    }

    /// Sends `request`.
    pub async fn send(&mut self, request: &Request) -> Result<(), StreamError> {
        self.requests.send(request).await
    }

    /// The next reply; `None` once the provider ended the stream.
    pub async fn reply(&mut self) -> Result<Option<Reply>, StreamError> {
        self.replies.recv().await
    }

    /// Opens a blob stream announcing blob `id` of `len` bytes and writes `bytes` of it (all of
    /// it, part of it, or other bytes); the stream is left open.
    pub async fn blob_stream(
        &self,
        id: BlobId,
        len: u64,
        bytes: &[u8],
    ) -> Result<iroh::endpoint::SendStream, StreamError> {
        let io = |error: &dyn std::fmt::Display| StreamError::Io(error.to_string());
        let stream = self
            .connection
            .quic()
            .open_uni()
            .await
            .map_err(|error| io(&error))?;
        let mut framed = FramedSend::new(stream, 256);
        framed.send(&BlobHeader { id, len }).await?;
        let mut stream = framed.into_inner();
        stream.write_all(bytes).await.map_err(|error| io(&error))?;
        Ok(stream)
    }
}
