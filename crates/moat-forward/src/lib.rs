//! Interface stub: replaced by the real crate (records, sinks, configuration).
#![forbid(unsafe_code)]

use std::future::Future;
use std::pin::Pin;

/// One accepted message to deliver.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Record {
    /// Unique message key.
    pub key: u64,
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: bytes::Bytes,
    /// QoS.
    pub qos: u8,
    /// Retain flag.
    pub retain: bool,
    /// Publisher.
    pub client_id: String,
    /// Its user name.
    pub username: Option<String>,
    /// Its certificate identity.
    pub cert_identity: Option<String>,
    /// Unix ms.
    pub received_at_ms: u64,
    /// MQTT 5 content type.
    pub content_type: Option<String>,
    /// MQTT 5 user properties.
    pub user_properties: Vec<(String, String)>,
}

/// Undecodable bytes.
#[derive(Debug, thiserror::Error)]
#[error("bad record")]
pub struct DecodeError;

fn put(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(b);
}

fn put_opt(out: &mut Vec<u8>, s: Option<&String>) {
    match s {
        Some(s) => {
            out.push(1);
            put(out, s.as_bytes());
        }
        None => out.push(0),
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().map_err(|_| DecodeError)?,
        ))
    }
    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = u32::from_be_bytes(self.take(4)?.try_into().map_err(|_| DecodeError)?);
        self.take(usize::try_from(n).map_err(|_| DecodeError)?)
    }
    fn string(&mut self) -> Result<String, DecodeError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| DecodeError)
    }
    fn opt(&mut self) -> Result<Option<String>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            _ => self.string().map(Some),
        }
    }
}

impl Record {
    /// Encodes for the spool.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(0);
        out.extend_from_slice(&self.key.to_be_bytes());
        put(out, self.topic.as_bytes());
        put(out, &self.payload);
        out.push(self.qos);
        out.push(u8::from(self.retain));
        put(out, self.client_id.as_bytes());
        put_opt(out, self.username.as_ref());
        put_opt(out, self.cert_identity.as_ref());
        out.extend_from_slice(&self.received_at_ms.to_be_bytes());
        put_opt(out, self.content_type.as_ref());
        out.extend_from_slice(
            &u32::try_from(self.user_properties.len())
                .unwrap_or(0)
                .to_be_bytes(),
        );
        for (k, v) in &self.user_properties {
            put(out, k.as_bytes());
            put(out, v.as_bytes());
        }
    }

    /// Decodes.
    ///
    /// # Errors
    /// [`DecodeError`].
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader(b);
        if r.u8()? != 0 {
            return Err(DecodeError);
        }
        let key = r.u64()?;
        let topic = r.string()?;
        let payload = bytes::Bytes::copy_from_slice(r.bytes()?);
        let qos = r.u8()?;
        let retain = r.u8()? != 0;
        let client_id = r.string()?;
        let username = r.opt()?;
        let cert_identity = r.opt()?;
        let received_at_ms = r.u64()?;
        let content_type = r.opt()?;
        let n = u32::from_be_bytes(r.take(4)?.try_into().map_err(|_| DecodeError)?);
        let mut user_properties = Vec::new();
        for _ in 0..n.min(65_535) {
            user_properties.push((r.string()?, r.string()?));
        }
        Ok(Self {
            key,
            topic,
            payload,
            qos,
            retain,
            client_id,
            username,
            cert_identity,
            received_at_ms,
            content_type,
            user_properties,
        })
    }
}

/// A sink's failure.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// A backend.
pub trait Sink: Send + 'static {
    /// For logs.
    fn describe(&self) -> String;
    /// Delivers a batch.
    fn write<'a>(
        &'a mut self,
        batch: &'a [Record],
    ) -> Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>>;
}
