//! [`ConnectOptions`]: what goes into CONNECT, plus the client's own limits.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use moat_codec::{Connect, LastWill, Properties, ProtocolVersion, DEFAULT_MAX_PACKET_SIZE};

/// Options for [`Client::connect`](crate::Client::connect).
///
/// Fields are public; the builder-style methods are shorthands. `Debug` never shows the
/// password.
///
/// ```
/// use moat_client::{ConnectOptions, ProtocolVersion};
///
/// let opts = ConnectOptions::new("sensor-1")
///     .protocol(ProtocolVersion::V5)
///     .keep_alive(30)
///     .credentials("alice", "secret");
/// assert!(!format!("{opts:?}").contains("secret"));
/// ```
#[derive(Clone)]
pub struct ConnectOptions {
    /// The client identifier; empty asks the server to assign one (v5 returns it in CONNACK's
    /// assigned client identifier).
    pub client_id: String,
    /// Clean Start (v5) or Clean Session (v3.1.1). Default `true`.
    pub clean_start: bool,
    /// Keep alive in seconds; 0 turns keep-alive off. Default 60. In v5 the server's "server
    /// keep alive" in CONNACK takes precedence.
    pub keep_alive: u16,
    /// User name.
    pub username: Option<String>,
    /// Password; never logged nor shown by `Debug`.
    pub password: Option<Bytes>,
    /// The will message.
    pub will: Option<LastWill>,
    /// Protocol version: [`ProtocolVersion::V3_1_1`] (default) or [`ProtocolVersion::V5`].
    pub protocol: ProtocolVersion,
    /// Session expiry interval in seconds (v5). `None` sends no property (the session ends
    /// with the connection).
    pub session_expiry: Option<u32>,
    /// How many incoming QoS 1 and 2 messages the server may have in flight to us (v5).
    /// `None` sends no property (65,535).
    pub receive_maximum: Option<u16>,
    /// Further CONNECT properties (v5), sent as they are, except that
    /// [`session_expiry`](Self::session_expiry) and [`receive_maximum`](Self::receive_maximum)
    /// replace the corresponding fields when they are `Some`. Ignored for v3.1.1.
    pub properties: Properties,
    /// The most requests awaiting an acknowledgement at once: QoS 1 and 2 publishes,
    /// subscribes and unsubscribes. Further requests wait. In v5 the server's receive maximum
    /// lowers it further. Default 20, which is also mosquitto's default limit for incoming
    /// messages in flight (with 3.1.1 it drops QoS 2 messages beyond it); at least 1.
    pub max_inflight: u16,
    /// How long to wait for the CONNACK. Default 10 s.
    pub connect_timeout: Duration,
    /// The largest packet accepted from the server. Default 1 MiB.
    pub max_packet_size: u32,
    /// How many received messages are buffered for [`Client::recv`](crate::Client::recv)
    /// before the client stops reading from the connection. Default 1024; at least 1.
    pub incoming_capacity: usize,
}

impl ConnectOptions {
    /// Default options with this client identifier.
    pub fn new(client_id: impl Into<String>) -> Self {
        Self {
            client_id: client_id.into(),
            ..Self::default()
        }
    }

    /// Sets the protocol version.
    #[must_use]
    pub fn protocol(mut self, protocol: ProtocolVersion) -> Self {
        self.protocol = protocol;
        self
    }

    /// Sets Clean Start (v5) / Clean Session (v3.1.1).
    #[must_use]
    pub fn clean_start(mut self, clean_start: bool) -> Self {
        self.clean_start = clean_start;
        self
    }

    /// Sets the keep alive in seconds (0: off).
    #[must_use]
    pub fn keep_alive(mut self, seconds: u16) -> Self {
        self.keep_alive = seconds;
        self
    }

    /// Sets the user name and password.
    #[must_use]
    pub fn credentials(mut self, username: impl Into<String>, password: impl Into<Bytes>) -> Self {
        self.username = Some(username.into());
        self.password = Some(password.into());
        self
    }

    /// Sets the will message.
    #[must_use]
    pub fn will(mut self, will: LastWill) -> Self {
        self.will = Some(will);
        self
    }

    /// Sets the session expiry interval in seconds (v5).
    #[must_use]
    pub fn session_expiry(mut self, seconds: u32) -> Self {
        self.session_expiry = Some(seconds);
        self
    }

    /// Sets the receive maximum (v5).
    #[must_use]
    pub fn receive_maximum(mut self, max: u16) -> Self {
        self.receive_maximum = Some(max);
        self
    }

    /// Sets the most requests awaiting an acknowledgement at once.
    #[must_use]
    pub fn max_inflight(mut self, max: u16) -> Self {
        self.max_inflight = max;
        self
    }

    /// Sets the further CONNECT properties (v5).
    #[must_use]
    pub fn properties(mut self, properties: Properties) -> Self {
        self.properties = properties;
        self
    }

    /// The CONNECT packet these options describe.
    pub fn to_connect(&self) -> Connect {
        let properties = if self.protocol.is_v5() {
            let mut p = self.properties.clone();
            if self.session_expiry.is_some() {
                p.session_expiry_interval = self.session_expiry;
            }
            if self.receive_maximum.is_some() {
                p.receive_maximum = self.receive_maximum;
            }
            p
        } else {
            Properties::default()
        };
        let will = self.will.clone().map(|mut w| {
            if !self.protocol.is_v5() {
                w.properties = Properties::default();
            }
            w
        });
        Connect {
            protocol: self.protocol,
            clean_start: self.clean_start,
            keep_alive: self.keep_alive,
            client_id: self.client_id.clone(),
            will,
            username: self.username.clone(),
            password: self.password.clone(),
            properties,
        }
    }
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            client_id: String::new(),
            clean_start: true,
            keep_alive: 60,
            username: None,
            password: None,
            will: None,
            protocol: ProtocolVersion::V3_1_1,
            session_expiry: None,
            receive_maximum: None,
            properties: Properties::default(),
            max_inflight: 20,
            connect_timeout: Duration::from_secs(10),
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            incoming_capacity: 1024,
        }
    }
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("client_id", &self.client_id)
            .field("clean_start", &self.clean_start)
            .field("keep_alive", &self.keep_alive)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("will", &self.will)
            .field("protocol", &self.protocol)
            .field("session_expiry", &self.session_expiry)
            .field("receive_maximum", &self.receive_maximum)
            .field("properties", &self.properties)
            .field("max_inflight", &self.max_inflight)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_packet_size", &self.max_packet_size)
            .field("incoming_capacity", &self.incoming_capacity)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_the_password() {
        let opts = ConnectOptions::new("c").credentials("alice", "hunter2");
        let debug = format!("{opts:?}");
        assert!(debug.contains("alice"));
        assert!(debug.contains("<redacted>"));
        assert!(!debug.contains("hunter2"));
    }

    #[test]
    fn dedicated_fields_override_properties() {
        let props = Properties::from(moat_codec::PropertySet {
            session_expiry_interval: Some(5),
            receive_maximum: Some(7),
            ..Default::default()
        });
        let connect = ConnectOptions::new("c")
            .protocol(ProtocolVersion::V5)
            .properties(props.clone())
            .session_expiry(60)
            .to_connect();
        assert_eq!(connect.properties.session_expiry_interval, Some(60));
        assert_eq!(connect.properties.receive_maximum, Some(7));

        let v3 = ConnectOptions::new("c")
            .properties(props)
            .session_expiry(60)
            .to_connect();
        assert!(v3.properties.is_empty());
    }
}
