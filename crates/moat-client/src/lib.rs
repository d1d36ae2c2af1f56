//! A small async MQTT 3.1.1 and 5.0 client, for moat's tools (`moat pub`, `sub`, `check`,
//! `bench`) and for testing brokers.
//!
//! Two layers, both generic over the transport (`IO: AsyncRead + AsyncWrite + Unpin + Send`,
//! so TCP, TLS and WebSocket streams all fit):
//!
//! - [`Framed`] sends and receives [`Packet`]s and does nothing else: no acknowledgements, no
//!   pings. It is the one raw MQTT connection: tests script exact packet sequences with it
//!   ([`Framed::send_raw`] writes arbitrary, malformed bytes), and `moat bench` batches with it
//!   ([`Framed::feed`] and [`Framed::flush`] put many packets in one write).
//! - [`Client`] is a connected client driven by a background Tokio task: CONNECT/CONNACK with
//!   typed refusals ([`ClientError::Refused`]), publish with the QoS 1 and 2 flows completed,
//!   subscribe, unsubscribe, receiving messages with automatic acknowledgements (a QoS 2
//!   message is delivered once), keep-alive pings, and DISCONNECT in both directions.
//!   [`connect_tcp`] is the shorthand for TCP.
//!
//! The connections themselves: [`transport`] opens TCP, TLS (rustls, *ring*), WebSocket and
//! WebSocket-over-TLS streams from an `mqtt://`, `mqtts://`, `ws://` or `wss://` URL, with a
//! timeout on every step; [`ws`] is the WebSocket adapter alone.
//!
//! ```no_run
//! use moat_client::{connect_tcp, ConnectOptions, ProtocolVersion, QoS, SubscriptionOptions};
//!
//! # async fn run() -> Result<(), moat_client::ClientError> {
//! let opts = ConnectOptions::new("example").protocol(ProtocolVersion::V5);
//! let (client, _connack) = connect_tcp("127.0.0.1:1883", opts).await?;
//! let sub = SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() };
//! client.subscribe(&[("sensors/#", sub)]).await?;
//! client.publish("sensors/t1", "21.5", QoS::AtLeastOnce, false).await?;
//! if let Some(message) = client.recv().await? {
//!     println!("{}: {:?}", message.topic, message.payload);
//! }
//! client.disconnect().await?;
//! # Ok(())
//! # }
//! ```
//!
//! What it does not do: reconnect, keep session state across connections (unacknowledged
//! outgoing messages are not resent after a reconnect), enhanced authentication (AUTH), or
//! send topic aliases on its own. It does not validate topic names
//! or filters: the server is the judge, which is what broker tests want.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod client;
mod error;
mod framed;
mod options;
pub mod transport;
pub mod ws;

pub use client::{connect_framed, connect_tcp, Client};
pub use error::ClientError;
pub use framed::Framed;
pub use options::ConnectOptions;

pub use moat_codec;
pub use moat_codec::{
    ConnAck, Disconnect, LastWill, Packet, PacketId, Properties, ProtocolVersion, PubAck, Publish,
    QoS, ReasonCode, RetainHandling, SubAck, SubscriptionOptions, UnsubAck,
};
