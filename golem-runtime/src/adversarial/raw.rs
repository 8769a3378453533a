//! A requestor that speaks the wire protocol by hand: it sends whatever frames a hostile peer
//! may send (not what [`Requestor`](crate::node::Requestor) sends), for tests that attack a
//! provider.

use std::net::SocketAddr;

use crate::identity::{NodeId, NodeKey};
use crate::net::{Connection, Endpoint, FramedRecv, FramedSend, NetConfig, StreamError};
use crate::proto::PROTOCOL_VERSION;
use crate::proto::message::{
    BlobHeader, BlobId, Hello, MAX_REPLY_FRAME, MAX_REQUEST_FRAME, Reply, Request,
};

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
        let connection = endpoint
            .connect(node, [addr])
            .await
            .map_err(|error| error.to_string())?;
        let (send, recv) = connection
            .quic()
            .open_bi()
            .await
            .map_err(|error| error.to_string())?;
        let mut raw = Self {
            _endpoint: endpoint,
            connection,
            requests: FramedSend::new(send, MAX_REQUEST_FRAME),
            replies: FramedRecv::new(recv, MAX_REPLY_FRAME),
        };
        let hello = Request::Hello(Hello {
            version: PROTOCOL_VERSION,
            offers: Vec::new(),
            engine: None,
            payee: None,
        });
        let exchanged = match raw.requests.send(&hello).await {
            Ok(()) => raw.replies.recv::<Reply>().await,
            Err(error) => Err(error),
        };
        match exchanged {
            Ok(Some(Reply::Hello(_))) => Ok(raw),
            other => Err(format!(
                "no hello: {other:?}, closed: {:?}",
                raw.connection.quic().close_reason()
            )),
        }
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
