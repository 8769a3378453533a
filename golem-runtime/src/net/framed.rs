//! Frames over QUIC streams: the [`frame`](crate::proto::frame) codec driven on iroh's streams.
//!
//! A bad frame ends only its own stream: the receiver stops the stream with
//! [`BAD_FRAME`] so the sender learns why, and the connection and every other stream go on.

use iroh::endpoint::{RecvStream, SendStream, VarInt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::proto::frame::{self, FrameDecoder, FrameError};

/// Stream error code sent to a peer whose frame was malformed or too large.
pub const BAD_FRAME: u32 = 2;

/// Bytes read from a stream at a time.
const READ_CHUNK: usize = 64 << 10;

/// A framed stream failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The peer sent a bad frame; the stream is over.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The stream or its connection broke.
    #[error("stream failed: {0}")]
    Io(String),
}

/// The sending half of a framed stream.
#[derive(Debug)]
pub struct FramedSend {
    stream: SendStream,
    limit: usize,
    buffer: Vec<u8>,
}

impl FramedSend {
    /// Frames `stream`, refusing to send frames above `limit` bytes.
    pub fn new(stream: SendStream, limit: usize) -> Self {
        Self {
            stream,
            limit,
            buffer: Vec::new(),
        }
    }

    /// Sends one message as a frame.
    pub async fn send<M: Serialize>(&mut self, message: &M) -> Result<(), StreamError> {
        self.buffer.clear();
        frame::encode_into(message, self.limit, &mut self.buffer)?;
        self.stream
            .write_all(&self.buffer)
            .await
            .map_err(|error| StreamError::Io(error.to_string()))
    }

    /// Sends raw bytes, for tests that play a misbehaving peer.
    #[cfg(test)]
    pub(crate) async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), StreamError> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(|error| StreamError::Io(error.to_string()))
    }

    /// Ends framing: the stream, for raw bytes after the frames sent so far.
    pub fn into_inner(self) -> SendStream {
        self.stream
    }

    /// Ends the stream after everything sent so far.
    pub fn finish(mut self) -> Result<(), StreamError> {
        self.stream
            .finish()
            .map_err(|error| StreamError::Io(error.to_string()))
    }
}

/// The receiving half of a framed stream.
#[derive(Debug)]
pub struct FramedRecv {
    stream: RecvStream,
    decoder: FrameDecoder,
}

impl FramedRecv {
    /// Frames `stream`, refusing frames above `limit` bytes.
    pub fn new(stream: RecvStream, limit: usize) -> Self {
        Self {
            stream,
            decoder: FrameDecoder::new(limit),
        }
    }

    /// The next message; `Ok(None)` when the peer finished the stream on a frame boundary. On a
    /// bad frame the stream is stopped with [`BAD_FRAME`] and the error returned.
    pub async fn recv<M: DeserializeOwned>(&mut self) -> Result<Option<M>, StreamError> {
        loop {
            match self.decoder.next_frame() {
                Ok(Some(message)) => return Ok(Some(message)),
                Ok(None) => {}
                Err(error) => return Err(self.refuse(error)),
            }
            match self.stream.read_chunk(READ_CHUNK).await {
                Ok(Some(chunk)) => self.decoder.push(&chunk),
                Ok(None) => {
                    return match self.decoder.finish() {
                        Ok(()) => self.decoder.next_frame().map_err(StreamError::Frame),
                        Err(error) => Err(self.refuse(error)),
                    };
                }
                Err(error) => return Err(StreamError::Io(error.to_string())),
            }
        }
    }

    /// Ends framing: the bytes already received past the last frame, and the stream.
    pub fn into_raw(mut self) -> (Vec<u8>, RecvStream) {
        (self.decoder.take_rest(), self.stream)
    }

    fn refuse(&mut self, error: FrameError) -> StreamError {
        // The stream may already be over; either way nothing more is read from it.
        let _ = self.stream.stop(VarInt::from_u32(BAD_FRAME));
        StreamError::Frame(error)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::mpsc;

    use super::*;
    use crate::identity::NodeKey;
    use crate::net::{Connection, Endpoint, NetConfig};
    use crate::proto::frame::DEFAULT_MAX_FRAME;

    const LIMIT: usize = 1024;

    /// Serves every stream of every connection: doubles each `u64` frame it receives, and
    /// reports each stream's error.
    fn doubling_server(endpoint: Arc<Endpoint>) -> mpsc::UnboundedReceiver<StreamError> {
        let (errors, receiver) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(connection)) = endpoint.accept().await {
                let errors = errors.clone();
                tokio::spawn(async move {
                    while let Ok((send, recv)) = connection.quic().accept_bi().await {
                        let errors = errors.clone();
                        tokio::spawn(async move {
                            let (mut send, mut recv) =
                                (FramedSend::new(send, LIMIT), FramedRecv::new(recv, LIMIT));
                            loop {
                                match recv.recv::<u64>().await {
                                    Ok(Some(x)) => {
                                        if send.send(&(2 * x)).await.is_err() {
                                            break;
                                        }
                                    }
                                    Ok(None) => break,
                                    Err(error) => {
                                        let _ = errors.send(error);
                                        break;
                                    }
                                }
                            }
                        });
                    }
                });
            }
        });
        receiver
    }

    /// A client node connected to `server`; the endpoint must live as long as the connection.
    async fn client(server: &Endpoint, seed: u8) -> (Endpoint, Connection) {
        let key = NodeKey::from_secret([seed; 32]);
        let endpoint = Endpoint::bind(&key, &NetConfig::loopback())
            .await
            .expect("bind");
        let connection = endpoint
            .connect(server.node_id(), [server.local_addr()])
            .await
            .expect("connects");
        (endpoint, connection)
    }

    async fn open(connection: &Connection) -> (FramedSend, FramedRecv) {
        let (send, recv) = connection.quic().open_bi().await.expect("stream");
        (
            FramedSend::new(send, DEFAULT_MAX_FRAME),
            FramedRecv::new(recv, LIMIT),
        )
    }

    async fn next_error(errors: &mut mpsc::UnboundedReceiver<StreamError>) -> StreamError {
        tokio::time::timeout(Duration::from_secs(10), errors.recv())
            .await
            .expect("the server reported in time")
            .expect("the server is running")
    }

    #[tokio::test]
    async fn frames_round_trip_and_bad_frames_end_only_their_stream() {
        let server = Arc::new(
            Endpoint::bind(&NodeKey::from_secret([1; 32]), &NetConfig::loopback())
                .await
                .expect("bind"),
        );
        let mut errors = doubling_server(Arc::clone(&server));
        let (_honest_node, honest) = client(&server, 2).await;
        let (_hostile_node, hostile) = client(&server, 3).await;

        let (mut send, mut recv) = open(&honest).await;
        send.send(&21u64).await.expect("send");
        assert_eq!(recv.recv::<u64>().await, Ok(Some(42)));

        // An oversized announcement: refused before the body arrives.
        let (mut bad_send, _bad_recv) = open(&hostile).await;
        bad_send
            .send_raw(&u32::MAX.to_le_bytes())
            .await
            .expect("send");
        assert_eq!(
            next_error(&mut errors).await,
            StreamError::Frame(FrameError::TooLarge {
                size: u32::MAX as usize,
                limit: LIMIT
            })
        );
        // A malformed body: an unfinished varint.
        let (mut bad_send, _bad_recv) = open(&hostile).await;
        bad_send.send_raw(&[1, 0, 0, 0, 0xff]).await.expect("send");
        assert!(matches!(
            next_error(&mut errors).await,
            StreamError::Frame(FrameError::Malformed(_))
        ));

        // The honest stream, a new stream of the hostile connection, and the server go on.
        send.send(&5u64).await.expect("send");
        assert_eq!(recv.recv::<u64>().await, Ok(Some(10)));
        let (mut again_send, mut again_recv) = open(&hostile).await;
        again_send.send(&1u64).await.expect("send");
        assert_eq!(again_recv.recv::<u64>().await, Ok(Some(2)));

        // A clean finish ends the stream without an error.
        send.finish().expect("finish");
        assert_eq!(recv.recv::<u64>().await, Ok(None));
        server.close();
    }
}
