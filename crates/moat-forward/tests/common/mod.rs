//! Shared helpers: records and rules from a config text, as the broker would build them.
#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use moat_forward::{ForwardFile, Record, RuleSpec, Sink, SinkError};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde::Deserialize;

/// Validates `[forward]` text against files in `dir`.
pub fn rules(text: &str, dir: &Path) -> Vec<RuleSpec> {
    #[derive(Deserialize)]
    struct Top {
        forward: ForwardFile,
    }
    let top: Top = toml::from_str(text).expect("test config parses");
    top.forward.validate(dir).expect("test config is valid")
}

/// A record with every field set when `full`, and only the required ones otherwise.
pub fn record(key: u64, topic: &str, payload: &[u8], full: bool) -> Record {
    Record {
        key,
        topic: topic.to_owned(),
        payload: Bytes::copy_from_slice(payload),
        qos: if full { 2 } else { 0 },
        retain: full,
        client_id: format!("client-{key}"),
        username: full.then(|| "alice".to_owned()),
        cert_identity: full.then(|| "CN=device1".to_owned()),
        received_at_ms: 1_700_000_000_000 + key % 1_000_000,
        content_type: full.then(|| "application/json".to_owned()),
        user_properties: if full {
            vec![
                ("a".into(), "1".into()),
                ("a".into(), "2".into()),
                ("b".into(), "x\ny".into()),
            ]
        } else {
            Vec::new()
        },
    }
}

/// Writes until `Ok`, for at most a minute (a restarted backend may take a moment).
pub async fn write_until_ok(sink: &mut dyn Sink, batch: &[Record]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match sink.write(batch).await {
            Ok(()) => return,
            Err(e) if Instant::now() < deadline => {
                assert!(
                    e.is_unavailable(),
                    "only unavailability is expected here: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("still failing after a minute: {e:?}"),
        }
    }
}

/// The error chain on one line, for assertions on messages.
pub fn chain(e: &SinkError) -> String {
    let mut s = e.to_string();
    let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A CA and a server certificate for 127.0.0.1 and localhost, as PEM: (ca, cert, key).
pub fn pki() -> (String, String, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().expect("ca key");
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = Issuer::new(ca_params, ca_key);
    let params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("server params");
    let key = KeyPair::generate().expect("server key");
    let cert = params.signed_by(&key, &issuer).expect("server cert");
    (ca.pem(), cert.pem(), key.serialize_pem())
}
