//! Length-prefixed postcard frames.
//!
//! A frame is a 4-byte little-endian length followed by that many bytes of a postcard-encoded
//! message. The length is checked against a hard cap before any byte of the body is buffered,
//! so a peer cannot make the decoder allocate more than the cap. Any error ends the stream:
//! after it, the decoder yields the same error again and buffers nothing more.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Size of the length prefix.
pub const PREFIX_BYTES: usize = 4;

/// Default cap on a frame body: small subtasks travel in frames, large data as blobs.
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;

/// A stream of frames could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A frame announced (or, when encoding, had) a body larger than the cap.
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The announced or actual body size.
        size: usize,
        /// The cap.
        limit: usize,
    },
    /// A frame's body is not a valid message.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The stream ended in the middle of a frame.
    #[error("the stream ended {missing} bytes short of a complete frame")]
    Truncated {
        /// Bytes still expected.
        missing: usize,
    },
}

/// Encodes `message` as one frame appended to `out`; on error `out` is left as it was.
pub fn encode_into<M: Serialize>(
    message: &M,
    limit: usize,
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    let body =
        postcard::to_allocvec(message).map_err(|error| FrameError::Malformed(error.to_string()))?;
    let size = body.len();
    let prefix = u32::try_from(size)
        .ok()
        .filter(|_| size <= limit)
        .ok_or(FrameError::TooLarge { size, limit })?;
    out.reserve(PREFIX_BYTES + size);
    out.extend_from_slice(&prefix.to_le_bytes());
    out.extend_from_slice(&body);
    Ok(())
}

/// Encodes `message` as one frame.
pub fn encode<M: Serialize>(message: &M, limit: usize) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    encode_into(message, limit, &mut out)?;
    Ok(out)
}

/// Reassembles frames from bytes as they arrive.
#[derive(Debug)]
pub struct FrameDecoder {
    limit: usize,
    buffer: Vec<u8>,
    /// Bytes of `buffer` already handed out as frames.
    consumed: usize,
    failed: Option<FrameError>,
}

impl FrameDecoder {
    /// A decoder that refuses frames with bodies above `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            buffer: Vec::new(),
            consumed: 0,
            failed: None,
        }
    }

    /// Adds bytes received from the stream. Ignored after an error.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            // Drop what was handed out before growing, so the buffer holds at most one frame
            // plus what arrived with it.
            if self.consumed > 0 {
                self.buffer.drain(..self.consumed);
                self.consumed = 0;
            }
            self.buffer.extend_from_slice(bytes);
        }
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed, or the error that ends
    /// the stream.
    pub fn next_frame<M: DeserializeOwned>(&mut self) -> Result<Option<M>, FrameError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let pending = &self.buffer[self.consumed..];
        let Some(prefix) = pending.get(..PREFIX_BYTES) else {
            return Ok(None);
        };
        let size = u32::from_le_bytes(prefix.try_into().expect("four bytes")) as usize;
        if size > self.limit {
            return Err(self.fail(FrameError::TooLarge {
                size,
                limit: self.limit,
            }));
        }
        let Some(body) = pending.get(PREFIX_BYTES..PREFIX_BYTES + size) else {
            return Ok(None);
        };
        match postcard::take_from_bytes(body) {
            Ok((message, [])) => {
                self.consumed += PREFIX_BYTES + size;
                Ok(Some(message))
            }
            Ok((_, rest)) => Err(self.fail(FrameError::Malformed(format!(
                "{} bytes left over after the message",
                rest.len()
            )))),
            Err(error) => Err(self.fail(FrameError::Malformed(error.to_string()))),
        }
    }

    /// Called when the stream ends: an error if it ended inside a frame. Complete frames not
    /// yet read stay readable.
    pub fn finish(&mut self) -> Result<(), FrameError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let mut at = self.consumed;
        loop {
            let rest = &self.buffer[at..];
            if rest.is_empty() {
                return Ok(());
            }
            let missing = match rest.get(..PREFIX_BYTES) {
                None => PREFIX_BYTES - rest.len(),
                Some(prefix) => {
                    let frame = PREFIX_BYTES
                        + u32::from_le_bytes(prefix.try_into().expect("four bytes")) as usize;
                    if rest.len() >= frame {
                        at += frame;
                        continue;
                    }
                    frame - rest.len()
                }
            };
            return Err(self.fail(FrameError::Truncated { missing }));
        }
    }

    /// Takes the bytes buffered and not yet handed out, for a stream that switches from frames
    /// to raw bytes.
    pub fn take_rest(&mut self) -> Vec<u8> {
        let rest = self.buffer.split_off(self.consumed);
        self.buffer.clear();
        self.consumed = 0;
        rest
    }

    /// Bytes buffered and not yet handed out.
    pub fn buffered(&self) -> usize {
        self.buffer.len() - self.consumed
    }

    fn fail(&mut self, error: FrameError) -> FrameError {
        self.buffer = Vec::new();
        self.consumed = 0;
        self.failed = Some(error.clone());
        error
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Message {
        Ping(u64),
        Data { id: u32, bytes: Vec<u8> },
    }

    fn messages() -> Vec<Message> {
        (0..50)
            .map(|i| {
                if i % 3 == 0 {
                    Message::Ping(i)
                } else {
                    Message::Data {
                        id: i as u32,
                        bytes: vec![i as u8; (i * 37) as usize % 500],
                    }
                }
            })
            .collect()
    }

    fn stream(messages: &[Message]) -> Vec<u8> {
        let mut out = Vec::new();
        for message in messages {
            encode_into(message, DEFAULT_MAX_FRAME, &mut out).expect("encodes");
        }
        out
    }

    #[test]
    fn frames_survive_any_split_of_the_stream() {
        let sent = messages();
        let bytes = stream(&sent);
        // Deterministic pseudo-random cut points, from 1-byte dribbles to large reads.
        let mut state = 0x9e37_79b9_u64;
        for round in 0..200 {
            let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
            let mut received = Vec::new();
            let mut at = 0;
            while at < bytes.len() {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(round);
                let step = 1 + (state >> 33) as usize % if round % 2 == 0 { 7 } else { 900 };
                let end = (at + step).min(bytes.len());
                decoder.push(&bytes[at..end]);
                at = end;
                while let Some(message) = decoder.next_frame::<Message>().expect("valid") {
                    received.push(message);
                }
            }
            decoder.finish().expect("ends on a frame boundary");
            assert_eq!(received, sent);
            assert_eq!(decoder.buffered(), 0);
        }
    }

    #[test]
    fn oversized_announcement_is_refused_before_buffering() {
        let mut decoder = FrameDecoder::new(1024);
        decoder.push(&(1_000_000u32).to_le_bytes());
        assert_eq!(
            decoder.next_frame::<Message>(),
            Err(FrameError::TooLarge {
                size: 1_000_000,
                limit: 1024
            })
        );
        // The stream is over: more bytes are ignored and the error repeats.
        decoder.push(&[0; 64]);
        assert_eq!(decoder.buffered(), 0);
        assert!(matches!(
            decoder.next_frame::<Message>(),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn oversized_message_is_not_encoded() {
        let message = Message::Data {
            id: 1,
            bytes: vec![0; 2048],
        };
        let mut out = vec![9, 9];
        let error = encode_into(&message, 1024, &mut out).unwrap_err();
        assert!(matches!(error, FrameError::TooLarge { limit: 1024, .. }));
        assert_eq!(out, [9, 9], "nothing half-written");
    }

    #[test]
    fn malformed_body_is_a_typed_error() {
        let mut decoder = FrameDecoder::new(1024);
        // A frame whose body names enum variant 7, which does not exist.
        decoder.push(&[1, 0, 0, 0, 7]);
        assert!(matches!(
            decoder.next_frame::<Message>(),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn stream_ending_inside_a_frame_is_truncated() {
        let bytes = stream(&messages()[..2]);
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
        decoder.push(&bytes[..bytes.len() - 3]);
        assert!(
            decoder
                .next_frame::<Message>()
                .expect("first frame")
                .is_some()
        );
        assert_eq!(decoder.next_frame::<Message>(), Ok(None));
        assert_eq!(decoder.finish(), Err(FrameError::Truncated { missing: 3 }));

        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
        decoder.push(&[5, 0]);
        assert_eq!(decoder.finish(), Err(FrameError::Truncated { missing: 2 }));
    }

    #[test]
    fn unread_frames_are_not_truncation() {
        let bytes = stream(&messages()[..3]);
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
        decoder.push(&bytes);
        assert_eq!(decoder.finish(), Ok(()));
        decoder.push(&[]);
        assert_eq!(
            decoder.next_frame::<Message>(),
            Ok(Some(messages()[0].clone()))
        );
    }

    #[test]
    fn trailing_bytes_inside_a_frame_are_malformed() {
        let mut bytes = postcard::to_allocvec(&Message::Ping(1)).expect("encodes");
        bytes.push(0);
        let mut framed = (bytes.len() as u32).to_le_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        let mut decoder = FrameDecoder::new(1024);
        decoder.push(&framed);
        assert!(matches!(
            decoder.next_frame::<Message>(),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn garbage_never_panics() {
        let mut state = 0x2545_f491_u64;
        for _ in 0..2_000 {
            let mut decoder = FrameDecoder::new(4096);
            let len = (state % 64) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            decoder.push(&bytes);
            while let Ok(Some(_)) = decoder.next_frame::<Message>() {}
            let _ = decoder.finish();
        }
    }
}
