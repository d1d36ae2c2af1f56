//! The NATS JetStream sink: one stream per rule, every publish acknowledged.
//!
//! # The stream
//! Created on first connect when missing: file storage, duplicate window 2 minutes, subjects =
//! the rule's subject template with `{topic}` replaced by `>` (`moat.{topic}` -> `moat.>`).
//! An existing stream must already take those subjects (else [`SinkError::Rejected`] says
//! which subject to add); its other settings are left as they are, and a duplicate window
//! under 2 minutes is logged as a warning.
//!
//! # Subjects
//! `subject` is a template of `.`-separated tokens; `{topic}`, when present, must be the whole
//! last token and is replaced by the MQTT topic, one token per topic level (`/` -> `.`). Inside
//! a level, every byte that is not printable ASCII (0x21..=0x7E), and `.`, `*`, `>` and `%`,
//! becomes `%XX` (upper-case hex of each UTF-8 byte), so the mapping can be undone with any URL
//! decoder. An empty level (as in `a//b` or `/a`) becomes `%00` (MQTT topics cannot hold
//! U+0000, so nothing else maps to it). `devices/d 1/temp.c` -> `moat.devices.d%201.temp%2Ec`.
//!
//! # Headers
//! | header | value |
//! |---|---|
//! | `Nats-Msg-Id` | `{rule}:{key}`, the key in decimal: JetStream drops a repeat within the stream's duplicate window (the rule name keeps two rules that write one message to one stream apart) |
//! | `Moat-Topic` | the MQTT topic |
//! | `Moat-Client-Id` | the publisher's client id |
//! | `Moat-Username` | its user name (absent when none) |
//! | `Moat-Cert-Identity` | its certificate identity (absent when none) |
//! | `Moat-Qos` | `0`, `1` or `2` |
//! | `Moat-Retain` | `true` or `false` |
//! | `Moat-Received-At` | Unix milliseconds |
//! | `Moat-Content-Type` | MQTT 5 content type (absent when none) |
//! | `Moat-User-Properties` | MQTT 5 user properties as a JSON array of `[name, value]` pairs (absent when none) |
//!
//! In header values, control characters (below 0x20, and 0x7F) and `%` are written `%XX`, so a
//! value can never break the header block.
//!
//! # Writes
//! All publishes of a batch are sent, then every acknowledgement is awaited; an ack with
//! `duplicate: true` counts as delivered. De-duplication holds within the duplicate window:
//! a batch retried later than that may be stored twice (at least once, never lost).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;

use crate::config::{NatsAuth, NatsConn};
use crate::{BoxError, Record, Sink, SinkError};

/// The duplicate window of a stream the sink creates.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// A checked subject template (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectTemplate {
    /// The tokens before `{topic}`, joined with `.` (may be empty).
    prefix: String,
    /// Whether the topic follows the prefix.
    topic: bool,
}

impl SubjectTemplate {
    /// Checks a template like `moat.{topic}`.
    ///
    /// # Errors
    /// What is wrong with it, in words.
    pub fn parse(template: &str) -> Result<Self, String> {
        let tokens: Vec<&str> = template.split('.').collect();
        let mut topic = false;
        for (i, t) in tokens.iter().enumerate() {
            if *t == "{topic}" {
                if i + 1 != tokens.len() {
                    return Err(format!("{template:?} has {{topic}} before its last token"));
                }
                topic = true;
            } else if t.is_empty() {
                return Err(format!("{template:?} has an empty token"));
            } else if t.contains(['{', '}']) {
                return Err(format!(
                    "{template:?} has a placeholder other than {{topic}}"
                ));
            } else if !t
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'*' && b != b'>')
            {
                return Err(format!(
                    "{template:?} has a wildcard, a space or a non-ASCII character"
                ));
            }
        }
        let prefix_tokens = if topic {
            &tokens[..tokens.len() - 1]
        } else {
            &tokens[..]
        };
        Ok(Self {
            prefix: prefix_tokens.join("."),
            topic,
        })
    }

    /// The subject for an MQTT topic.
    pub fn subject(&self, topic: &str) -> String {
        let mut s = self.prefix.clone();
        if self.topic {
            for level in topic.split('/') {
                if !s.is_empty() {
                    s.push('.');
                }
                push_token(&mut s, level);
            }
        }
        s
    }

    /// The subjects the stream must take: `{topic}` as `>`.
    pub fn stream_subject(&self) -> String {
        match (self.topic, self.prefix.is_empty()) {
            (false, _) => self.prefix.clone(),
            (true, true) => ">".to_owned(),
            (true, false) => format!("{}.>", self.prefix),
        }
    }
}

fn push_token(out: &mut String, level: &str) {
    if level.is_empty() {
        out.push_str("%00");
        return;
    }
    for b in level.bytes() {
        if b.is_ascii_graphic() && !matches!(b, b'.' | b'*' | b'>' | b'%') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// A header value: control characters and `%` as `%XX`.
fn header_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii_control() || c == '%' {
            out.push_str(&format!("%{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether subject pattern `outer` takes every subject `inner` does.
fn covers(outer: &str, inner: &str) -> bool {
    let mut o = outer.split('.');
    let mut i = inner.split('.');
    loop {
        match (o.next(), i.next()) {
            (Some(">"), Some(_)) => return true,
            (Some(a), Some(b)) if a == b || (a == "*" && b != ">") => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The sink of one JetStream rule. Connects on the first write; the client then reconnects
/// by itself, and a write while it is away fails with [`SinkError::Unavailable`].
pub struct JetStreamSink {
    conn: Arc<NatsConn>,
    rule: String,
    stream: String,
    subject: SubjectTemplate,
    state: Option<Connected>,
}

struct Connected {
    js: jetstream::Context,
    /// Whether the stream was found or created (again after "no stream").
    stream_ready: bool,
}

impl JetStreamSink {
    /// A sink publishing to `stream` under `subject` for `rule`; connects on the first write.
    pub fn new(
        conn: Arc<NatsConn>,
        rule: String,
        stream: String,
        subject: SubjectTemplate,
    ) -> Self {
        Self {
            conn,
            rule,
            stream,
            subject,
            state: None,
        }
    }

    fn unavailable(&self, source: impl Into<BoxError>) -> SinkError {
        SinkError::Unavailable {
            target: self.describe(),
            source: source.into(),
        }
    }

    fn rejected(&self, problem: impl Into<String>, source: Option<BoxError>) -> SinkError {
        SinkError::Rejected {
            target: self.describe(),
            problem: problem.into(),
            source,
        }
    }

    async fn connect(&self) -> Result<Connected, SinkError> {
        let c = &self.conn;
        let mut opts = async_nats::ConnectOptions::new()
            .name("moat")
            .connection_timeout(c.connect_timeout)
            // Subscriptions are not used; publishes wait for their acks below.
            .request_timeout(Some(c.write_timeout));
        match &c.auth {
            None => {}
            Some(NatsAuth::UserPassword(user, password)) => {
                opts = opts.user_and_password(user.clone(), password.to_string());
            }
            Some(NatsAuth::Token(token)) => opts = opts.token(token.to_string()),
        }
        if let Some(tls) = &c.tls {
            opts = opts
                .require_tls(true)
                .tls_client_config(rustls::ClientConfig::clone(tls));
        }
        let client = opts.connect(c.url.as_str()).await.map_err(|e| {
            use async_nats::ConnectErrorKind as K;
            match e.kind() {
                K::Authentication | K::AuthorizationViolation => self.rejected(
                    format!("{e}; fix: check the sink's credentials_file"),
                    Some(Box::new(e)),
                ),
                _ => self.unavailable(e),
            }
        })?;
        let mut js = jetstream::new(client);
        js.set_timeout(c.write_timeout);
        tracing::info!(sink = %self.describe(), "connected");
        Ok(Connected {
            js,
            stream_ready: false,
        })
    }

    async fn ensure_stream(&self, js: &jetstream::Context) -> Result<(), SinkError> {
        let wanted = self.subject.stream_subject();
        let config = stream::Config {
            name: self.stream.clone(),
            subjects: vec![wanted.clone()],
            storage: stream::StorageType::File,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        };
        let s = js.get_or_create_stream(config).await.map_err(|e| {
            use async_nats::jetstream::context::CreateStreamErrorKind as K;
            match e.kind() {
                // No answer, or JetStream not (yet) up after a restart: try again soon.
                K::TimedOut | K::JetStreamUnavailable => self.unavailable(e),
                _ => self.rejected(
                    format!("cannot get or create stream {}: {e}", self.stream),
                    Some(Box::new(e)),
                ),
            }
        })?;
        let info = s.cached_info();
        if !info.config.subjects.iter().any(|s| covers(s, &wanted)) {
            return Err(self.rejected(
                format!(
                    "stream {} exists with subjects {:?}, which do not take {wanted}; fix: add {wanted} to the stream's subjects, or choose another stream",
                    self.stream, info.config.subjects
                ),
                None,
            ));
        }
        if info.config.duplicate_window < DUPLICATE_WINDOW {
            tracing::warn!(
                sink = %self.describe(),
                window = ?info.config.duplicate_window,
                "the stream's duplicate window is under 2 minutes: a batch retried later may be stored twice"
            );
        }
        Ok(())
    }

    fn headers(&self, r: &Record) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("{}:{}", self.rule, r.key).as_str(),
        );
        h.insert("Moat-Topic", header_value(&r.topic).as_str());
        h.insert("Moat-Client-Id", header_value(&r.client_id).as_str());
        if let Some(u) = &r.username {
            h.insert("Moat-Username", header_value(u).as_str());
        }
        if let Some(c) = &r.cert_identity {
            h.insert("Moat-Cert-Identity", header_value(c).as_str());
        }
        h.insert("Moat-Qos", r.qos.to_string().as_str());
        h.insert("Moat-Retain", if r.retain { "true" } else { "false" });
        h.insert("Moat-Received-At", r.received_at_ms.to_string().as_str());
        if let Some(ct) = &r.content_type {
            h.insert("Moat-Content-Type", header_value(ct).as_str());
        }
        if !r.user_properties.is_empty() {
            let pairs: Vec<[&str; 2]> = r
                .user_properties
                .iter()
                .map(|(n, v)| [n.as_str(), v.as_str()])
                .collect();
            let json = serde_json::to_string(&pairs).unwrap_or_default();
            h.insert("Moat-User-Properties", header_value(&json).as_str());
        }
        h
    }

    fn publish_error(&mut self, e: jetstream::context::PublishError) -> SinkError {
        match e.kind() {
            PublishErrorKind::TimedOut
            | PublishErrorKind::BrokenPipe
            | PublishErrorKind::MaxAckPending => self.unavailable(e),
            PublishErrorKind::StreamNotFound => {
                // Deleted under us: create it again on the next write.
                if let Some(s) = &mut self.state {
                    s.stream_ready = false;
                }
                self.unavailable(e)
            }
            _ => self.rejected(format!("publish refused: {e}"), Some(Box::new(e))),
        }
    }

    async fn write_batch(&mut self, batch: &[Record]) -> Result<(), SinkError> {
        if self.state.is_none() {
            self.state = Some(self.connect().await?);
        }
        let Some(state) = &self.state else {
            return Err(self.unavailable("not connected"));
        };
        let js = state.js.clone();
        if !state.stream_ready {
            self.ensure_stream(&js).await?;
            if let Some(s) = &mut self.state {
                s.stream_ready = true;
            }
        }
        if js.client().connection_state() != async_nats::connection::State::Connected {
            return Err(self.unavailable("the NATS connection is down; the client is reconnecting"));
        }
        let mut acks = Vec::with_capacity(batch.len());
        for r in batch {
            let subject = self.subject.subject(&r.topic);
            match js
                .publish_with_headers(subject, self.headers(r), r.payload.clone())
                .await
            {
                Ok(ack) => acks.push(ack),
                Err(e) => return Err(self.publish_error(e)),
            }
        }
        for ack in acks {
            match ack.await {
                // duplicate: true is a repeat JetStream already holds: delivered.
                Ok(_) => {}
                Err(e) => return Err(self.publish_error(e)),
            }
        }
        Ok(())
    }
}

impl Sink for JetStreamSink {
    fn describe(&self) -> String {
        format!("{} stream {}", self.conn.describe(), self.stream)
    }

    fn write<'a>(
        &'a mut self,
        batch: &'a [Record],
    ) -> Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>> {
        Box::pin(async move {
            if batch.is_empty() {
                return Ok(());
            }
            let limit = self.conn.write_timeout;
            match tokio::time::timeout(limit, self.write_batch(batch)).await {
                Ok(r) => r,
                Err(_) => Err(self.unavailable(format!("no answer within {limit:?}"))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_map_every_level_to_a_safe_token() {
        let t = SubjectTemplate::parse("moat.{topic}").expect("valid");
        assert_eq!(
            t.subject("devices/d1/telemetry"),
            "moat.devices.d1.telemetry"
        );
        assert_eq!(
            t.subject("devices/d 1/temp.c"),
            "moat.devices.d%201.temp%2Ec"
        );
        assert_eq!(t.subject("/a//b/"), "moat.%00.a.%00.b.%00");
        assert_eq!(t.subject("a*/>/%"), "moat.a%2A.%3E.%25");
        assert_eq!(t.subject("é"), "moat.%C3%A9");
        assert_eq!(t.stream_subject(), "moat.>");
        let bare = SubjectTemplate::parse("{topic}").expect("valid");
        assert_eq!(bare.subject("a/b"), "a.b");
        assert_eq!(bare.stream_subject(), ">");
        let fixed = SubjectTemplate::parse("all.events").expect("valid");
        assert_eq!(fixed.subject("a/b"), "all.events");
        assert_eq!(fixed.stream_subject(), "all.events");
        for bad in [
            "moat.{topic}.x",
            "moat..x",
            "moat.*",
            "moat.>",
            "a b",
            "moat.{x}",
            "",
        ] {
            assert!(SubjectTemplate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn coverage() {
        assert!(covers("moat.>", "moat.>"));
        assert!(covers(">", "moat.>"));
        assert!(!covers("moat.*", "moat.>"));
        assert!(covers("moat.*", "moat.x"));
        assert!(!covers("other.>", "moat.>"));
        assert!(!covers("moat", "moat.>"));
    }

    #[test]
    fn header_values_cannot_break_lines() {
        assert_eq!(header_value("a\r\nb%"), "a%0D%0Ab%25");
        assert_eq!(header_value("é"), "é");
    }
}
