//! The client's error type.

use std::io;
use std::sync::Arc;

use moat_codec::{DecodeError, EncodeError, ReasonCode};

/// Why a client operation failed.
///
/// `Clone`, so that the error that ended a connection can be handed to every caller that was
/// waiting on it (I/O errors are shared behind an [`Arc`]).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Reading from or writing to the transport failed.
    #[error("i/o error")]
    Io(#[source] Arc<io::Error>),
    /// The server sent bytes that do not decode as a valid packet.
    #[error("invalid packet from the server")]
    Decode(#[from] DecodeError),
    /// A packet could not be encoded (a field too long, say); nothing was sent.
    #[error("cannot encode the packet")]
    Encode(#[from] EncodeError),
    /// The server answered CONNECT with a failure reason code.
    #[error("connection refused: {}", .0.description())]
    Refused(ReasonCode),
    /// The server acknowledged a QoS 1 or 2 PUBLISH with a failure reason code (v5).
    #[error("publish rejected: {}", .0.description())]
    PublishRejected(ReasonCode),
    /// The packet is larger than the maximum packet size the server announced; nothing was sent.
    #[error("packet of {size} bytes exceeds the server's maximum packet size of {max} bytes")]
    PacketTooLarge {
        /// The encoded size of the packet.
        size: usize,
        /// The server's limit.
        max: u32,
    },
    /// The server broke the protocol (an unexpected packet, an acknowledgement for a packet id
    /// that is not in flight, ...).
    #[error("protocol violation by the server: {0}")]
    Protocol(String),
    /// The server closed the connection: with a DISCONNECT carrying this reason code (v5), or
    /// without one (`None`: end of stream).
    #[error("{}", disconnected_message(*.0))]
    Disconnected(Option<ReasonCode>),
    /// The server did not answer in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The request cannot be sent as asked (an empty filter list, say); nothing was sent.
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
    /// The WebSocket upgrade failed: the server refused it, chose a subprotocol other than
    /// "mqtt", or does not speak WebSocket.
    #[error("websocket handshake failed: {0}")]
    WebSocket(String),
    /// The client was disconnected by [`Client::disconnect`](crate::Client::disconnect) (or its
    /// connection task is gone); no further operations are possible.
    #[error("the client is closed")]
    Closed,
}

impl ClientError {
    /// The MQTT reason code this error carries, if any: the CONNACK code for
    /// [`Refused`](Self::Refused), the acknowledgement's code for
    /// [`PublishRejected`](Self::PublishRejected) and the DISCONNECT's code for
    /// [`Disconnected`](Self::Disconnected).
    pub fn reason_code(&self) -> Option<ReasonCode> {
        match self {
            Self::Refused(rc) | Self::PublishRejected(rc) => Some(*rc),
            Self::Disconnected(rc) => *rc,
            _ => None,
        }
    }
}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        Self::Io(Arc::new(e))
    }
}

fn disconnected_message(rc: Option<ReasonCode>) -> String {
    match rc {
        Some(rc) => format!("disconnected by the server: {}", rc.description()),
        None => "connection closed by the server".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_uses_plain_words() {
        let cases = [
            (
                ClientError::Refused(ReasonCode::BAD_USER_NAME_OR_PASSWORD),
                "connection refused: bad user name or password",
            ),
            (
                ClientError::Refused(ReasonCode::NOT_AUTHORIZED),
                "connection refused: not authorized",
            ),
            (
                ClientError::PublishRejected(ReasonCode::QUOTA_EXCEEDED),
                "publish rejected: quota exceeded",
            ),
            (
                ClientError::Disconnected(Some(ReasonCode::SESSION_TAKEN_OVER)),
                "disconnected by the server: session taken over",
            ),
            (
                ClientError::Disconnected(None),
                "connection closed by the server",
            ),
            (
                ClientError::Timeout("PINGRESP"),
                "timed out waiting for PINGRESP",
            ),
        ];
        for (err, want) in cases {
            assert_eq!(err.to_string(), want);
        }
    }

    #[test]
    fn reason_code_is_exposed() {
        assert_eq!(
            ClientError::Refused(ReasonCode::BANNED).reason_code(),
            Some(ReasonCode::BANNED)
        );
        assert_eq!(ClientError::Disconnected(None).reason_code(), None);
        assert_eq!(ClientError::Closed.reason_code(), None);
    }
}
