//! SNI certificate sets and OCSP stapling over real sockets, checked with the openssl CLI
//! (`s_client -servername`, `-noservername`, `-status`) and this repository's MQTT client:
//! each name gets its own certificate and clients without SNI the default; removing one set's
//! files closes its clients only; a response made by `openssl ocsp` is stapled, and one for
//! another certificate is not.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use moat_codec::{Packet, ProtocolVersion, ReasonCode};
use moat_server::{ListenerConfig, Proof, Server, ServerConfig, TlsSettings};
use moat_testkit::pki::{tls_connect, TestPki};
use moat_testkit::{connect_packet, RawClient, TestBroker, TIMEOUT};
use moat_tls::{LiveTls, OcspCertStatus, ReloadOutcome, SniSet};

const V5: ProtocolVersion = ProtocolVersion::V5;

struct Broker {
    addr: SocketAddr,
    live: Arc<LiveTls>,
    handle: moat_server::BrokerHandle,
    /// Runs the server (stops it when dropped).
    _running: TestBroker,
}

/// A broker with one mqtts listener on 127.0.0.1:0 serving `tls`, anonymous clients allowed.
async fn start(tls: TlsSettings) -> Broker {
    let mut config = ServerConfig::default();
    config.broker.sys_interval = None;
    // Reloads are triggered by the tests (what the file watcher and SIGHUP do).
    config.tls_poll_interval = Duration::from_secs(3600);
    config.listeners = vec![ListenerConfig {
        allow_anonymous: true,
        proof: Proof::Password,
        ..ListenerConfig::tls("mqtts", SocketAddr::from(([127, 0, 0, 1], 0)), tls)
    }];
    let server = Server::bind(config).await.expect("bind");
    let live = server.tls("mqtts").expect("tls state");
    let running = TestBroker::start_server(server);
    Broker {
        addr: running.addr(),
        live,
        handle: running.handle().clone(),
        _running: running,
    }
}

/// Runs the openssl CLI (bounded by coreutils `timeout`, stdin closed) in `dir`; returns
/// stdout and stderr together and whether it succeeded.
async fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let dir = dir.to_owned();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let secs = TIMEOUT.as_secs().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .args(["-k", "5", &secs, "openssl"])
            .args(&args)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .output()
            .expect("timeout and openssl are needed (scripts/test.sh installs openssl)")
    })
    .await
    .expect("openssl task");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `openssl s_client` against `addr` asking for `name` (`None`: no SNI at all), with extra
/// arguments; returns its output.
async fn s_client(dir: &Path, addr: SocketAddr, name: Option<&str>, extra: &[&str]) -> String {
    let connect = addr.to_string();
    let mut args = vec!["s_client", "-connect", connect.as_str()];
    match name {
        Some(n) => args.extend(["-servername", n]),
        None => args.push("-noservername"),
    }
    args.extend(extra);
    let (_, out) = openssl(dir, &args).await;
    assert!(out.contains("BEGIN CERTIFICATE"), "no handshake: {out}");
    out
}

/// The subject line s_client prints for the server certificate.
fn subject(out: &str) -> &str {
    out.lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or_else(|| panic!("no subject line in: {out}"))
}

/// An MQTT v5 client over TLS asking for `name` (verified against it); CONNACK success.
async fn mqtt(pki: &TestPki, addr: SocketAddr, name: &str, id: &str) -> RawClient {
    let tls = tls_connect(addr, name, pki.client_config(None))
        .await
        .unwrap_or_else(|e| panic!("TLS with SNI {name}: {e}"));
    let mut c = RawClient::over(tls, V5);
    let ack = c
        .handshake(connect_packet(id, V5, true))
        .await
        .expect("CONNACK");
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS, "{id}");
    c
}

/// A default certificate for localhost and two SNI sets, `a.example` (its SAN, no `names`)
/// and `b.example` (configured `names`, its certificate also names it).
fn sni_settings(pki: &TestPki) -> TlsSettings {
    let (cert, key) = pki.server("default", &["localhost", "127.0.0.1"]);
    let mut s = TlsSettings::new(cert, key);
    let (a_cert, a_key) = pki.server("a", &["a.example"]);
    let (b_cert, b_key) = pki.server("b", &["b.example"]);
    let mut b = SniSet::new(b_cert, b_key);
    b.names = vec!["b.example".into()];
    s.sni = vec![SniSet::new(a_cert, a_key), b];
    s
}

#[tokio::test]
async fn each_name_gets_its_certificate_and_no_sni_the_default() {
    let pki = TestPki::new("SNI CA");
    let broker = start(sni_settings(&pki)).await;
    let dir = pki.path();

    let a = s_client(dir, broker.addr, Some("a.example"), &[]).await;
    assert!(subject(&a).contains("CN = a.example"), "{}", subject(&a));
    let b = s_client(dir, broker.addr, Some("B.EXAMPLE"), &[]).await;
    assert!(subject(&b).contains("CN = b.example"), "{}", subject(&b));
    let none = s_client(dir, broker.addr, None, &[]).await;
    assert!(
        subject(&none).contains("CN = localhost"),
        "{}",
        subject(&none)
    );
    let other = s_client(dir, broker.addr, Some("c.example"), &[]).await;
    assert!(
        subject(&other).contains("CN = localhost"),
        "{}",
        subject(&other)
    );

    // A real MQTT client asking for b.example verifies b's certificate and is served.
    let mut c = mqtt(&pki, broker.addr, "b.example", "b-client").await;
    c.assert_alive().await;

    // Every SNI certificate is in the expiry metric's list.
    let subjects: Vec<String> = broker
        .live
        .certificates()
        .into_iter()
        .map(|c| c.subject)
        .collect();
    for cn in ["CN=localhost", "CN=a.example", "CN=b.example"] {
        assert!(subjects.iter().any(|s| s.contains(cn)), "{subjects:?}");
    }
}

#[tokio::test]
async fn removing_one_sets_files_closes_its_clients_only() {
    let pki = TestPki::new("SNI CA");
    let settings = sni_settings(&pki);
    let broker = start(settings.clone()).await;
    let mut a = mqtt(&pki, broker.addr, "a.example", "a-client").await;
    let mut b = mqtt(&pki, broker.addr, "b.example", "b-client").await;
    let mut d = mqtt(&pki, broker.addr, "localhost", "default-client").await;

    std::fs::remove_file(&settings.sni[1].cert).expect("remove b's certificate");
    match broker.live.reload(SystemTime::now()) {
        ReloadOutcome::Replaced {
            sets_removed,
            closed,
            ..
        } => {
            assert_eq!(closed, 1);
            assert_eq!(sets_removed.len(), 1);
            assert!(sets_removed[0].contains("b.example"), "{sets_removed:?}");
        }
        other => panic!("expected Replaced, got {other:?}"),
    }
    // b's client is told why and closed; the others stay.
    match b.recv().await {
        Some(Packet::Disconnect(dis)) => {
            assert_eq!(dis.reason_code, ReasonCode::ADMINISTRATIVE_ACTION)
        }
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    assert!(b.closed_within(TIMEOUT).await);
    a.assert_alive().await;
    d.assert_alive().await;

    // b.example now gets the default certificate.
    let out = s_client(pki.path(), broker.addr, Some("b.example"), &[]).await;
    assert!(
        subject(&out).contains("CN = localhost"),
        "{}",
        subject(&out)
    );
    // Nothing changed since: the next reload leaves everything as it is.
    assert!(matches!(
        broker.live.reload(SystemTime::now()),
        ReloadOutcome::Unchanged
    ));
}

/// Writes an openssl-ca index listing the certificate in `cert` as valid, and makes the
/// CA's OCSP response for it with `openssl ocsp`; returns the response file.
async fn ocsp_response(pki: &TestPki, cert: &Path, out: &str) -> PathBuf {
    let dir = pki.path();
    let cert_arg = cert.to_str().expect("utf-8 path");
    let (ok, serial) = openssl(dir, &["x509", "-in", cert_arg, "-noout", "-serial"]).await;
    assert!(ok, "{serial}");
    let serial = serial
        .trim()
        .strip_prefix("serial=")
        .unwrap_or_else(|| panic!("serial: {serial}"))
        .to_owned();
    let index = format!("V\t351231235959Z\t\t{serial}\tunknown\t/CN=server\n");
    let index_path = dir.join(format!("{out}.index.txt"));
    std::fs::write(&index_path, index).expect("write index");
    let index_arg = index_path.to_str().expect("utf-8 path");
    let (ok, text) = openssl(
        dir,
        &[
            "ocsp", "-index", index_arg, "-rsigner", "ca.pem", "-rkey", "ca.key", "-CA", "ca.pem",
            "-issuer", "ca.pem", "-cert", cert_arg, "-respout", out, "-ndays", "1",
        ],
    )
    .await;
    assert!(ok, "openssl ocsp: {text}");
    dir.join(out)
}

#[tokio::test]
async fn an_openssl_ocsp_response_is_stapled_and_one_for_another_cert_is_not() {
    let pki = TestPki::new("OCSP CA");
    let (cert, key) = pki.server("server", &["localhost", "127.0.0.1"]);
    let response = ocsp_response(&pki, &cert, "server.ocsp.der").await;
    let mut settings = TlsSettings::new(&cert, key);
    settings.ocsp = Some(response.clone());
    // An SNI set with a response of its own.
    let (a_cert, a_key) = pki.server("a", &["a.example"]);
    let mut a = SniSet::new(&a_cert, a_key);
    a.ocsp = Some(ocsp_response(&pki, &a_cert, "a.ocsp.der").await);
    settings.sni = vec![a];
    let broker = start(settings).await;

    for version in ["-tls1_3", "-tls1_2"] {
        let out = s_client(
            pki.path(),
            broker.addr,
            Some("localhost"),
            &["-status", version],
        )
        .await;
        assert!(
            out.contains("OCSP Response Status: successful"),
            "{version}: {out}"
        );
        assert!(out.contains("Cert Status: good"), "{version}: {out}");
    }
    let out = s_client(pki.path(), broker.addr, Some("a.example"), &["-status"]).await;
    assert!(subject(&out).contains("CN = a.example"), "{out}");
    assert!(out.contains("Cert Status: good"), "{out}");
    let status = broker.live.ocsp_status(SystemTime::now());
    assert_eq!(status.len(), 2);
    assert!(status.iter().all(|s| s.stapled));
    assert!(status
        .iter()
        .all(|s| s.status == Some(OcspCertStatus::Good)));
    // Past its nextUpdate (-ndays 1) it is no longer stapled.
    let later = SystemTime::now() + Duration::from_secs(2 * 86_400);
    assert!(!broker.live.check_ocsp(later)[0].stapled);
    // The expiry listing (moat cert inventory) has both responses' next updates.
    let ocsp_items = broker
        .handle
        .expiry()
        .into_iter()
        .filter(|i| i.kind == moat_server::ExpiryKind::OcspNextUpdate)
        .count();
    assert_eq!(ocsp_items, 2);

    // The file now holds a response for another certificate: not stapled after the reload,
    // and the certificate is still served.
    let (other, _) = pki.server("other", &["other.example"]);
    let wrong = ocsp_response(&pki, &other, "other.ocsp.der").await;
    std::fs::copy(&wrong, &response).expect("rewrite the response file");
    assert!(matches!(
        broker.live.reload(SystemTime::now()),
        ReloadOutcome::Replaced { .. }
    ));
    let out = s_client(pki.path(), broker.addr, Some("localhost"), &["-status"]).await;
    assert!(out.contains("OCSP response: no response sent"), "{out}");
    let status = broker.live.ocsp_status(SystemTime::now());
    assert!(!status[0].stapled && status[0].status.is_none());
    // The SNI set's response is untouched.
    assert!(status[1].stapled);
}

#[test]
fn a_bad_sni_set_refuses_the_material_naming_its_file() {
    let pki = TestPki::new("SNI CA");
    let mut settings = sni_settings(&pki);
    // An expired certificate in one set: lint refuses it all, naming that file.
    let past = moat_pki::Validity {
        not_before: SystemTime::now() - Duration::from_secs(10 * 86_400),
        not_after: SystemTime::now() - Duration::from_secs(86_400),
    };
    let (old_cert, old_key) = pki.server_with_validity("old", &["old.example"], past);
    settings.sni.push(SniSet::new(&old_cert, old_key));
    let e = moat_tls::Material::load(&settings, SystemTime::now()).unwrap_err();
    assert!(
        e.to_string().contains(&old_cert.display().to_string()),
        "{e}"
    );

    // Two sets whose certificates name the same host: refused, naming both files.
    let mut settings = sni_settings(&pki);
    let (twin, twin_key) = pki.server("twin", &["a.example"]);
    settings.sni.push(SniSet::new(&twin, twin_key));
    let e = moat_tls::Material::load(&settings, SystemTime::now()).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("a.example")
            && text.contains(&settings.sni[0].cert.display().to_string())
            && text.contains(&twin.display().to_string()),
        "{text}"
    );

    // A missing file of a set at start-up is an error (while running it removes the set).
    let mut settings = sni_settings(&pki);
    std::fs::remove_file(&settings.sni[0].key).unwrap();
    settings.sni.truncate(1);
    assert!(moat_tls::Material::load(&settings, SystemTime::now()).is_err());
}

/// SNI sets sharing the default's intermediate list it once (one metric series per
/// certificate), and every leaf.
#[test]
fn a_shared_intermediate_is_listed_once() {
    let root = TestPki::new("Root CA");
    let inter = root.intermediate("Issuing CA");
    let (cert, key) = inter.server("default", &["localhost"]);
    let mut settings = TlsSettings::new(cert, key);
    settings.chain = Some(inter.ca_pem.clone());
    for host in ["a.example", "b.example"] {
        let (c, k) = inter.server(host, &[host]);
        let mut set = SniSet::new(c, k);
        set.chain = Some(inter.ca_pem.clone());
        settings.sni.push(set);
    }
    let m = moat_tls::Material::load(&settings, SystemTime::now()).expect("material");
    let roles: Vec<_> = m.certificates.iter().map(|c| c.role.label()).collect();
    assert_eq!(
        roles,
        ["server", "chain", "server", "server"],
        "{:?}",
        m.certificates
    );
    assert_eq!(m.served().sni.len(), 2);
    assert!(m.served().sni.iter().all(|s| s.chain.len() == 1));
}
