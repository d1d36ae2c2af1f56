//! Certificate sets over real sockets: a set is staged, activated with a test handshake on
//! both listeners that share it (tls and wss), restored, refused with its findings, rolled
//! back when a test handshake fails, deleted (clients disconnected, handshakes refused, also
//! after a restart) and switched to client certificates.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use moat_codec::{Packet, ProtocolVersion, ReasonCode};
use moat_pki::{LintCode, Validity};
use moat_server::{
    CertError, CertUpload, ClientAuth, ExpiryKind, ListenerConfig, ListenerKind, Proof, Server,
    ServerConfig, SetState, TlsSettings,
};
use moat_testkit::pki::{tls_connect, TestPki};
use moat_testkit::{connect_packet, RawClient, TestBroker, TIMEOUT};
use zeroize::Zeroizing;

const V5: ProtocolVersion = ProtocolVersion::V5;
const HOSTS: &[&str] = &["localhost", "127.0.0.1"];

/// A data dir whose `pki/server.pem` and `server.key` hold certificate A of `pki`.
struct Env {
    pki: TestPki,
    data: tempfile::TempDir,
    /// Certificate A, DER.
    a: Vec<u8>,
}

fn first_cert(path: &Path) -> Vec<u8> {
    let pem = std::fs::read(path).expect("read cert");
    moat_pki::decode::decode(&pem)
        .expect("decode")
        .certificates()
        .remove(0)
}

impl Env {
    fn new() -> Self {
        let pki = TestPki::new("Sets CA");
        let (cert, key) = pki.server("a", HOSTS);
        let data = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(data.path().join("pki")).expect("pki dir");
        std::fs::copy(&cert, data.path().join("pki/server.pem")).expect("copy cert");
        std::fs::copy(&key, data.path().join("pki/server.key")).expect("copy key");
        Self {
            a: first_cert(&cert),
            pki,
            data,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.data.path().join(p)
    }

    /// An anonymous tcp listener, then `mqtts` (tls) and `wss` sharing the data dir's files.
    fn config(&self) -> ServerConfig {
        let tls = TlsSettings::new(self.path("pki/server.pem"), self.path("pki/server.key"));
        let mut wss_tls = tls.clone();
        wss_tls.alpn = vec![b"http/1.1".to_vec()];
        let listener = |name: &str, kind, tls| ListenerConfig {
            name: name.into(),
            kind,
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            allow_anonymous: true,
            proof: Proof::Either,
            tls,
            path: "/mqtt".into(),
            client_id: Default::default(),
            on_client_cert_expiry: Default::default(),
        };
        let mut config = ServerConfig::default();
        config.broker.sys_interval = None;
        config.tls_poll_interval = Duration::from_secs(3600);
        config.tls_state_dir = self.path("tls");
        config.listeners = vec![
            listener("local", ListenerKind::Tcp, None),
            listener("mqtts", ListenerKind::Tls, Some(tls)),
            listener("wss", ListenerKind::Wss, Some(wss_tls)),
        ];
        config
    }

    /// A new certificate of the same CA and its upload.
    fn upload(&self, stem: &str) -> (CertUpload, Vec<u8>) {
        let (cert, key) = self.pki.server(stem, HOSTS);
        let upload = CertUpload {
            cert: std::fs::read(&cert).expect("cert"),
            key: Zeroizing::new(std::fs::read(&key).expect("key")),
            ..CertUpload::default()
        };
        (upload, first_cert(&cert))
    }
}

struct Running {
    broker: TestBroker,
    mqtts: SocketAddr,
    wss: SocketAddr,
}

async fn start(config: ServerConfig) -> Running {
    let server = Server::bind(config).await.expect("bind");
    let addr = |name: &str| {
        server
            .local_addrs()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a)
            .expect("listener")
    };
    let (mqtts, wss) = (addr("mqtts"), addr("wss"));
    Running {
        broker: TestBroker::start_server(server),
        mqtts,
        wss,
    }
}

/// The certificate a TLS client is served at `addr` (trusting the test CA), or `None` if the
/// handshake is refused.
async fn served(pki: &TestPki, addr: SocketAddr) -> Option<Vec<u8>> {
    let tls = tls_connect(addr, "localhost", pki.client_config(None))
        .await
        .ok()?;
    let der = tls.get_ref().1.peer_certificates()?.first()?.to_vec();
    Some(der)
}

/// An MQTT v5 client over TLS (`wss`: over WebSocket over TLS) with CONNACK received.
async fn connect_v5(pki: &TestPki, addr: SocketAddr, wss: bool, id: &str) -> RawClient {
    let tls = tls_connect(addr, "localhost", pki.client_config(None))
        .await
        .expect("TLS handshake");
    let mut c = if wss {
        let ws = moat_client::ws::connect(tls, "localhost", "/mqtt")
            .await
            .expect("WebSocket upgrade");
        RawClient::over(ws, V5)
    } else {
        RawClient::over(tls, V5)
    };
    let ack = c
        .handshake(connect_packet(id, V5, true))
        .await
        .expect("CONNACK");
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    c
}

/// True when an MQTT client over TLS cannot get a CONNACK at `addr` (the TLS layer refuses
/// it, on connect or on the first read).
async fn refused(pki: &TestPki, addr: SocketAddr, client: Option<(&Path, &Path)>) -> bool {
    let Ok(tls) = tls_connect(addr, "localhost", pki.client_config(client)).await else {
        return true;
    };
    let mut c = RawClient::over(tls, V5);
    c.send(&Packet::Connect(Box::new(connect_packet(
        "probe", V5, true,
    ))))
    .await;
    c.closed_within(TIMEOUT).await
}

fn codes(err: &CertError) -> Vec<LintCode> {
    match err {
        CertError::Refused { findings, .. } => findings.iter().map(|f| f.code).collect(),
        other => panic!("expected Refused, got {other:?}"),
    }
}

#[tokio::test]
async fn stage_activate_and_restore_on_both_listeners() {
    let env = Env::new();
    let run = start(env.config()).await;
    let h = run.broker.handle();

    let sets = h.certificate_sets();
    assert_eq!(sets.len(), 1, "mqtts and wss share one set: {sets:?}");
    assert_eq!(sets[0].id, "mqtts");
    assert_eq!(sets[0].listeners, ["mqtts", "wss"]);
    assert_eq!(sets[0].state, SetState::Active);
    assert!(sets[0].pending.is_none() && !sets[0].previous);
    assert_eq!(h.certificate_set_of("wss").as_deref(), Some("mqtts"));

    let (upload, b) = env.upload("b");
    let pending = h.stage_certificates("mqtts", upload).await.expect("staged");
    let set = h.certificate_set("mqtts").expect("set");
    assert_eq!(set.pending, Some(pending.clone()));
    // Staged is not served.
    assert_eq!(served(&env.pki, run.mqtts).await, Some(env.a.clone()));

    let activation = h.activate_pending("mqtts").await.expect("activated");
    assert_eq!(activation.listeners, ["mqtts", "wss"]);
    assert!(activation.test_handshake.iter().all(|t| t.ok));
    assert_eq!(activation.test_handshake.len(), 2);
    assert_eq!(activation.settings.len(), 2);
    assert_eq!(served(&env.pki, run.mqtts).await, Some(b.clone()));
    assert_eq!(served(&env.pki, run.wss).await, Some(b.clone()));
    let set = h.certificate_set("mqtts").expect("set");
    assert!(set.pending.is_none() && set.previous);
    assert_eq!(
        set.certificate.map(|c| c.fingerprint_sha256),
        Some(pending.certificate.fingerprint_sha256)
    );
    // The files were written to the set's folder in the data dir (the listener's settings
    // point there; the operator's pki/ files are untouched): a restart serves the same.
    assert_eq!(first_cert(&env.path("tls/mqtts/active/cert.pem")), b);
    assert_eq!(first_cert(&env.path("pki/server.pem")), env.a);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &str| {
            std::fs::metadata(env.path(p))
                .expect("file")
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("tls/mqtts/active/key.pem"), 0o600);
        assert_eq!(mode("tls/mqtts/previous/key.pem"), 0o600);
    }

    let expiry = h.expiry();
    assert!(expiry
        .iter()
        .any(|e| e.kind == ExpiryKind::Server && e.certificate_set.as_deref() == Some("mqtts")));
    assert!(expiry
        .windows(2)
        .all(|w| w[0].seconds_left <= w[1].seconds_left));

    let restored = h.restore_previous("mqtts").await.expect("restored");
    assert!(restored.test_handshake.iter().all(|t| t.ok));
    assert_eq!(served(&env.pki, run.mqtts).await, Some(env.a.clone()));
    assert_eq!(served(&env.pki, run.wss).await, Some(env.a.clone()));
    // And back again: B is now the previous one.
    h.restore_previous("mqtts").await.expect("restored");
    assert_eq!(served(&env.pki, run.mqtts).await, Some(b));

    assert!(matches!(
        h.discard_pending("mqtts"),
        Err(CertError::NoPending)
    ));
    assert!(h.certificate_set("nope").is_none());
}

#[tokio::test]
async fn bad_inputs_are_refused_with_findings_and_nothing_changes() {
    let env = Env::new();
    let run = start(env.config()).await;
    let h = run.broker.handle();
    let untouched = |h: &moat_server::BrokerHandle| {
        let set = h.certificate_set("mqtts").expect("set");
        assert!(set.pending.is_none(), "nothing staged");
        assert!(!set.previous);
    };

    // Expired.
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    let (cert, key) = env.pki.server_with_validity(
        "expired",
        HOSTS,
        Validity {
            not_before: now - 60 * day,
            not_after: now - 30 * day,
        },
    );
    let upload = CertUpload {
        cert: std::fs::read(&cert).unwrap(),
        key: Zeroizing::new(std::fs::read(&key).unwrap()),
        ..CertUpload::default()
    };
    let err = h.stage_certificates("mqtts", upload).await.unwrap_err();
    assert!(codes(&err).contains(&LintCode::CertExpired), "{err:?}");
    untouched(h);

    // A key that does not match.
    let (mut upload, _) = env.upload("b");
    let (_, other_key) = env.pki.server("c", HOSTS);
    upload.key = Zeroizing::new(std::fs::read(&other_key).unwrap());
    let err = h.stage_certificates("mqtts", upload).await.unwrap_err();
    assert!(codes(&err).contains(&LintCode::KeyMismatch), "{err:?}");
    untouched(h);

    // RSA 1024, made by the openssl CLI.
    let dir = env.pki.path();
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:1024",
            "-nodes",
            "-keyout",
            "rsa.key",
            "-out",
            "rsa.pem",
            "-days",
            "30",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ])
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let upload = CertUpload {
        cert: std::fs::read(dir.join("rsa.pem")).unwrap(),
        key: Zeroizing::new(std::fs::read(dir.join("rsa.key")).unwrap()),
        ..CertUpload::default()
    };
    let err = h.stage_certificates("mqtts", upload).await.unwrap_err();
    assert!(codes(&err).contains(&LintCode::KeyRsaWeak), "{err:?}");
    untouched(h);

    // An encrypted key without its passphrase; then with it.
    let (mut upload, b) = env.upload("b");
    let key = moat_pki::key::load(&upload.key, None).unwrap();
    upload.key = Zeroizing::new(key.to_encrypted_pkcs8_pem(b"s3cret").unwrap().into_bytes());
    let err = h
        .stage_certificates("mqtts", upload.clone())
        .await
        .unwrap_err();
    assert_eq!(codes(&err), [LintCode::KeyEncrypted]);
    match &err {
        CertError::Refused { findings, .. } => {
            assert!(
                findings[0].message.contains("give its passphrase"),
                "{err:?}"
            );
        }
        _ => unreachable!(),
    }
    untouched(h);
    upload.key_passphrase = Some(Zeroizing::new("s3cret".into()));
    let pending = h.stage_certificates("mqtts", upload).await.expect("staged");
    assert!(
        pending.notes.iter().any(|n| n.contains("decrypted")),
        "{pending:?}"
    );
    h.activate_pending("mqtts").await.expect("activated");
    assert_eq!(served(&env.pki, run.mqtts).await, Some(b));
    // Stored decrypted: the key file loads without a passphrase.
    assert!(moat_pki::key::load(&std::fs::read(env.path("pki/server.key")).unwrap(), None).is_ok());

    // Everything refused above changed nothing: A was served until the activation, and the
    // previous set is A.
    assert_eq!(first_cert(&env.path("tls/mqtts/previous/cert.pem")), env.a);
}

#[tokio::test]
async fn bundles_are_split_and_der_is_converted() {
    let env = Env::new();
    let run = start(env.config()).await;
    let h = run.broker.handle();

    // DER.
    let (cert, key) = env.pki.server("der", HOSTS);
    let upload = CertUpload {
        cert: first_cert(&cert),
        key: Zeroizing::new(std::fs::read(&key).unwrap()),
        ..CertUpload::default()
    };
    let pending = h.stage_certificates("mqtts", upload).await.expect("staged");
    assert!(
        pending.notes.iter().any(|n| n.contains("DER")),
        "{pending:?}"
    );
    assert!(pending.warnings.iter().any(|f| f.code == LintCode::FileDer));
    h.discard_pending("mqtts").expect("discarded");
    assert!(h.certificate_set("mqtts").unwrap().pending.is_none());

    // An intermediate CA's leaf pasted after the intermediate: the leaf is the one that
    // matches the key, the intermediate goes to the chain.
    let inter = env.pki.intermediate("Sets Intermediate");
    let (cert, key) = inter.server("leaf", HOSTS);
    let mut bundle = std::fs::read(&inter.ca_pem).unwrap();
    bundle.extend(std::fs::read(&cert).unwrap());
    let upload = CertUpload {
        cert: bundle,
        key: Zeroizing::new(std::fs::read(&key).unwrap()),
        ..CertUpload::default()
    };
    let pending = h.stage_certificates("mqtts", upload).await.expect("staged");
    assert!(
        pending
            .notes
            .iter()
            .any(|n| n.starts_with("2 certificates were pasted into the certificate field")),
        "{pending:?}"
    );
    assert!(pending
        .warnings
        .iter()
        .any(|f| f.code == LintCode::CertMultiple));
    assert_eq!(pending.chain.len(), 1);
    assert!(pending.chain[0].is_ca);
    assert!(!pending.certificate.is_ca);
    assert_eq!(pending.certificate.subject, first_subject(&cert));
    h.activate_pending("mqtts").await.expect("activated");
    let tls = tls_connect(run.mqtts, "localhost", env.pki.client_config(None))
        .await
        .expect("the chain reaches the root");
    assert_eq!(tls.get_ref().1.peer_certificates().map(<[_]>::len), Some(2));

    // The intermediate's leaf alone: the chain is incomplete (a warning that names the
    // missing issuer); a new leaf of the same intermediate keeps the chain that fits it.
    let (cert2, key2) = inter.server("leaf2", HOSTS);
    let upload = CertUpload {
        cert: std::fs::read(&cert2).unwrap(),
        key: Zeroizing::new(std::fs::read(&key2).unwrap()),
        ..CertUpload::default()
    };
    let pending = h.stage_certificates("mqtts", upload).await.expect("staged");
    assert_eq!(
        pending.chain.len(),
        1,
        "the fitting chain is kept: {pending:?}"
    );
    assert!(!pending
        .warnings
        .iter()
        .any(|f| f.code == LintCode::ChainIncomplete));
    // A leaf of the root itself does not fit the intermediate chain: it is left out, said so.
    let (cert3, key3) = env.pki.server("root-leaf", HOSTS);
    let upload = CertUpload {
        cert: std::fs::read(&cert3).unwrap(),
        key: Zeroizing::new(std::fs::read(&key3).unwrap()),
        ..CertUpload::default()
    };
    let pending = h.stage_certificates("mqtts", upload).await.expect("staged");
    assert!(pending.chain.is_empty(), "{pending:?}");
    assert!(pending
        .notes
        .iter()
        .any(|n| n.contains("chain served until now was left out")));
    // A leaf of another intermediate, given without its intermediate: the old chain does
    // not fit it and the new one is missing; the warning names the missing issuer.
    h.discard_pending("mqtts").unwrap();
    let other = env.pki.intermediate("Other Intermediate");
    let (cert4, key4) = other.server("other-leaf", HOSTS);
    let upload = CertUpload {
        cert: std::fs::read(&cert4).unwrap(),
        key: Zeroizing::new(std::fs::read(&key4).unwrap()),
        ..CertUpload::default()
    };
    let pending = h.stage_certificates("mqtts", upload).await.expect("staged");
    assert!(pending.chain.is_empty(), "{pending:?}");
    let incomplete = pending
        .warnings
        .iter()
        .find(|f| f.code == LintCode::ChainIncomplete)
        .unwrap_or_else(|| panic!("no chain-incomplete warning: {pending:?}"));
    assert!(
        incomplete.message.contains("Other Intermediate"),
        "{incomplete:?}"
    );
    assert!(incomplete
        .fix
        .as_deref()
        .is_some_and(|f| f.contains("add its certificate")));
}

fn first_subject(path: &Path) -> String {
    moat_pki::inspect::CertInfo::from_der(&first_cert(path))
        .unwrap()
        .subject
}

/// The test handshake fails for real: the broker is at its connection limit, so the
/// activation's own connection is closed at accept. Every listener is rolled back.
#[tokio::test]
async fn failed_test_handshake_rolls_back() {
    let env = Env::new();
    let mut config = env.config();
    config.max_connections = 1;
    let local = {
        let server = Server::bind(config).await.expect("bind");
        let local = server.local_addrs()[0].1;
        (
            Running {
                mqtts: server.local_addrs()[1].1,
                wss: server.local_addrs()[2].1,
                broker: TestBroker::start_server(server),
            },
            local,
        )
    };
    let (run, local) = local;
    let h = run.broker.handle();
    // The only connection slot, held by a plain MQTT client (CONNACK: it has its permit).
    let holder = RawClient::connect(local, V5, "holder", true).await;

    let (upload, b) = env.upload("b");
    h.stage_certificates("mqtts", upload).await.expect("staged");
    let err = h.activate_pending("mqtts").await.unwrap_err();
    match &err {
        CertError::TestHandshakeFailed { listener, .. } => assert_eq!(listener, "mqtts"),
        other => panic!("expected TestHandshakeFailed, got {other:?}"),
    }
    assert!(err.to_string().contains("rolled back"));
    // Rolled back: files, view, no previous; the pending set is still there to retry.
    assert_eq!(first_cert(&env.path("pki/server.pem")), env.a);
    let set = h.certificate_set("mqtts").unwrap();
    assert!(set.pending.is_some() && !set.previous);
    let a_detail = moat_server::CertDetail::of(&env.a, SystemTime::now()).unwrap();
    assert_eq!(set.certificate, Some(a_detail));

    // Once the slot is free, A is what is served, and the retry succeeds.
    holder.abort();
    let served_a = tokio::time::timeout(TIMEOUT, async {
        loop {
            if let Some(der) = served(&env.pki, run.mqtts).await {
                return der;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a handshake once the slot is free");
    assert_eq!(served_a, env.a);
    // The probe above used the slot; it is released when its task ends.
    let activated = tokio::time::timeout(TIMEOUT, async {
        loop {
            match h.activate_pending("mqtts").await {
                Ok(a) => return a,
                Err(CertError::TestHandshakeFailed { .. }) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("{e:?}"),
            }
        }
    })
    .await
    .expect("activation once the slot is free");
    assert!(activated.test_handshake.iter().all(|t| t.ok));
    assert_eq!(served(&env.pki, run.wss).await, Some(b));
}

#[tokio::test]
async fn delete_disconnects_refuses_and_survives_a_restart() {
    let env = Env::new();
    let run = start(env.config()).await;
    let h = run.broker.handle();
    let mut tls_client = connect_v5(&env.pki, run.mqtts, false, "over-tls").await;
    let mut wss_client = connect_v5(&env.pki, run.wss, true, "over-wss").await;

    let preview = h.delete_preview("mqtts").expect("preview");
    assert_eq!(preview.total, 2);
    assert_eq!(
        preview
            .listeners
            .iter()
            .map(|l| (l.name.as_str(), l.clients))
            .collect::<Vec<_>>(),
        [("mqtts", 1), ("wss", 1)]
    );
    assert_eq!(h.certificate_set("mqtts").unwrap().connected_clients, 2);

    let report = h.delete_certificates("mqtts").await.expect("deleted");
    assert_eq!(report, preview);
    for c in [&mut tls_client, &mut wss_client] {
        match c.recv().await {
            Some(Packet::Disconnect(d)) => {
                assert_eq!(d.reason_code, ReasonCode::ADMINISTRATIVE_ACTION);
            }
            other => panic!("expected DISCONNECT 0x98, got {other:?}"),
        }
    }
    assert!(refused(&env.pki, run.mqtts, None).await);
    assert!(served(&env.pki, run.wss).await.is_none());
    let set = h.certificate_set("mqtts").unwrap();
    assert_eq!(set.state, SetState::Removed);
    assert!(set.certificate.is_none() && set.previous);
    assert!(env.path("tls/mqtts/removed").exists());
    assert!(!env.path("pki/server.pem").exists());
    let failures = h.handshake_failures();
    assert!(
        failures.by_reason.contains_key("no_server_certificate"),
        "{failures:?}"
    );
    assert!(failures
        .recent
        .iter()
        .any(|r| r.reason == "no_server_certificate"));
    run.broker.stop().await;

    // A restart on the same data dir: the listeners bind and refuse handshakes.
    let run = start(env.config()).await;
    let h = run.broker.handle();
    assert_eq!(h.certificate_set("mqtts").unwrap().state, SetState::Removed);
    assert!(refused(&env.pki, run.mqtts, None).await);
    assert!(served(&env.pki, run.wss).await.is_none());

    let restored = h.restore_previous("mqtts").await.expect("restored");
    assert!(restored.test_handshake.iter().all(|t| t.ok));
    assert_eq!(served(&env.pki, run.mqtts).await, Some(env.a.clone()));
    assert_eq!(served(&env.pki, run.wss).await, Some(env.a.clone()));
    assert!(!env.path("tls/mqtts/removed").exists());
    assert_eq!(h.certificate_set("mqtts").unwrap().state, SetState::Active);
}

#[tokio::test]
async fn client_auth_none_to_required_applies_to_new_handshakes() {
    let env = Env::new();
    let run = start(env.config()).await;
    let h = run.broker.handle();
    let mut before = connect_v5(&env.pki, run.mqtts, false, "before").await;

    // Only client_auth and the client CA change; the certificate and key stay.
    let upload = CertUpload {
        cert: std::fs::read(env.path("pki/server.pem")).unwrap(),
        key: Zeroizing::new(std::fs::read(env.path("pki/server.key")).unwrap()),
        client_auth: Some(ClientAuth::Required),
        ..CertUpload::default()
    };
    let err = h
        .stage_certificates("mqtts", upload.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, CertError::Invalid(_)), "{err:?}");

    let upload = CertUpload {
        client_ca: Some(std::fs::read(&env.pki.ca_pem).unwrap()),
        ..upload
    };
    let pending = h.stage_certificates("mqtts", upload).await.expect("staged");
    assert_eq!(pending.client_auth, ClientAuth::Required);
    assert_eq!(pending.client_ca.len(), 1);
    let activation = h.activate_pending("mqtts").await.expect("activated");
    assert!(activation.test_handshake.iter().all(|t| t.ok));
    for (name, s) in &activation.settings {
        assert_eq!(s.client_auth, ClientAuth::Required, "{name}");
        assert_eq!(
            s.client_ca.as_deref(),
            Some(env.path("tls/mqtts/active/client_ca.pem").as_path()),
            "{name}"
        );
    }
    let set = h.certificate_set("mqtts").unwrap();
    assert_eq!(set.client_auth, ClientAuth::Required);
    assert_eq!(set.client_ca.len(), 1);

    // New handshakes need a client certificate; the connected client stays.
    assert!(refused(&env.pki, run.mqtts, None).await);
    let (cert, key) = env.pki.client("device1");
    assert!(!refused(&env.pki, run.mqtts, Some((&cert, &key))).await);
    before.send(&Packet::PingReq).await;
    assert_eq!(before.recv().await, Some(Packet::PingResp));
    let failures = tokio::time::timeout(TIMEOUT, async {
        loop {
            let f = h.handshake_failures();
            if f.by_reason.contains_key("no_client_certificate") {
                return f;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the refusal is counted");
    let recent = failures
        .recent
        .iter()
        .find(|r| r.reason == "no_client_certificate")
        .expect("remembered");
    assert_eq!(recent.listener, "mqtts");
    assert!(recent.peer.starts_with("127.0.0.1:"));
}

/// The JSON the admin API returns as is: field names exactly as docs/ADMIN-API.md has them.
#[tokio::test]
async fn serialized_shapes_match_the_admin_api_contract() {
    fn keys(v: &serde_json::Value) -> Vec<String> {
        let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
        k.sort();
        k
    }
    fn sorted(names: &[&str]) -> Vec<String> {
        let mut k: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        k.sort();
        k
    }
    let env = Env::new();
    let run = start(env.config()).await;
    let h = run.broker.handle();
    let (upload, _) = env.upload("b");
    h.stage_certificates("mqtts", upload).await.expect("staged");

    let set = serde_json::to_value(h.certificate_set("mqtts").unwrap()).unwrap();
    assert_eq!(
        keys(&set),
        sorted(&[
            "id",
            "listeners",
            "state",
            "client_auth",
            "certificate",
            "chain",
            "client_ca",
            "crls",
            "warnings",
            "pending",
            "previous",
            "connected_clients",
        ])
    );
    assert_eq!(set["state"], "active");
    assert_eq!(set["client_auth"], "none");
    let detail = &set["certificate"];
    assert_eq!(
        keys(detail),
        sorted(&[
            "subject",
            "sans",
            "issuer",
            "serial",
            "not_before",
            "not_after",
            "days_left",
            "key_type",
            "fingerprint_sha256",
            "is_ca",
        ])
    );
    assert_eq!(detail["key_type"], "P-256");
    assert!(detail["not_after"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        keys(&set["pending"]),
        sorted(&[
            "certificate",
            "chain",
            "client_ca",
            "client_auth",
            "warnings",
            "notes",
            "uploaded_at",
        ])
    );

    let activation = serde_json::to_value(h.activate_pending("mqtts").await.unwrap()).unwrap();
    assert_eq!(
        keys(&activation),
        sorted(&["activated", "listeners", "test_handshake", "warnings"])
    );
    assert_eq!(
        activation["test_handshake"][0],
        serde_json::json!({"listener": "mqtts", "ok": true})
    );

    let preview = serde_json::to_value(h.delete_preview("mqtts").unwrap()).unwrap();
    assert_eq!(
        preview,
        serde_json::json!({"listeners": [{"name": "mqtts", "clients": 0}, {"name": "wss", "clients": 0}], "total": 0})
    );

    let expiry = serde_json::to_value(h.expiry()).unwrap();
    assert_eq!(
        keys(&expiry[0]),
        sorted(&[
            "kind",
            "certificate_set",
            "client_id",
            "subject",
            "not_after",
            "seconds_left",
            "days_left",
            "level",
        ])
    );
    let client = moat_server::ExpiryItem::client("dev1", "CN=dev1", 0, SystemTime::now());
    let client = serde_json::to_value(client).unwrap();
    assert_eq!(client["kind"], "client");
    assert_eq!(client["level"], "expired");
    assert_eq!(client["client_id"], "dev1");

    let failures = serde_json::to_value(h.handshake_failures()).unwrap();
    assert_eq!(keys(&failures), sorted(&["by_reason", "recent"]));
}
