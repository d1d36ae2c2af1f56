//! `moat check` against working and deliberately broken set-ups, with `moat serve` and
//! mosquitto: each broken one must name its cause, and exit 1.

#[path = "../src/tools/test_support.rs"]
mod support;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, SystemTime};

use moat_pki::Validity;
use moat_testkit::pki::{openssl_v1_server, TestPki};
use support::{moat, must, run, text, Moat, Mosquitto, ANON};

fn check(url: &str, extra: &[&str]) -> Output {
    run(moat()
        .arg("check")
        .arg(url)
        .args(extra)
        .args(["--timeout", "5"]))
}

fn check_ok(url: &str, extra: &[&str]) -> String {
    let out = check(url, extra);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(t.contains("all checks passed"), "{t}");
    t
}

/// Exit 1 and every `causes` in the output.
fn check_fails(url: &str, extra: &[&str], causes: &[&str]) -> String {
    let out = check(url, extra);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    for c in causes {
        assert!(t.contains(c), "expected {c:?} in:\n{t}");
    }
    assert!(t.contains('✗'), "{t}");
    t
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// A TLS listener named `name` with these files.
fn tls_listener(name: &str, cert: &Path, key: &Path, extra: &str) -> String {
    format!(
        "[[listeners]]\nname = \"{name}\"\nkind = \"tls\"\nbind = \"127.0.0.1:0\"\nallow_anonymous = true\n[listeners.tls]\ncert = \"{}\"\nkey = \"{}\"\n{extra}",
        cert.display(),
        key.display()
    )
}

#[test]
fn plain_tcp_passes_every_step() {
    let broker = Moat::start(ANON, Path::new("."));
    let t = check_ok(&broker.url("local"), &[]);
    for step in ["✓ resolve", "✓ TCP connect", "✓ CONNECT", "✓ round trip"] {
        assert!(t.contains(step), "{t}");
    }
}

#[test]
fn tls_passes_and_describes_the_certificate() {
    let pki = TestPki::new("Check CA");
    let (cert, key) = pki.server("server", &["localhost", "127.0.0.1"]);
    let broker = Moat::start(&tls_listener("tls", &cert, &key, ""), pki.path());
    let t = check_ok(&broker.url("tls"), &["--cafile", p(&pki.ca_pem)]);
    assert!(t.contains("✓ TLS handshake"), "{t}");
    assert!(t.contains("✓ server certificate: CN=localhost"), "{t}");
    assert!(t.contains("issued by CN=Check CA"), "{t}");
    // The same listener by name.
    let url = format!("mqtts://localhost:{}", broker.port("tls"));
    check_ok(&url, &["--cafile", p(&pki.ca_pem)]);
}

#[test]
fn wrong_ca_is_an_unknown_ca() {
    let pki = TestPki::new("Broker CA");
    let other = TestPki::new("Some Other CA");
    let (cert, key) = pki.server("server", &["127.0.0.1"]);
    let broker = Moat::start(&tls_listener("tls", &cert, &key, ""), pki.path());
    check_fails(
        &broker.url("tls"),
        &["--cafile", p(&other.ca_pem)],
        &[
            "✗ server certificate: unknown CA",
            "issued by CN=Broker CA",
            "CN=Some Other CA",
        ],
    );
}

#[test]
fn name_mismatch_names_the_hosts_and_the_fix() {
    let pki = TestPki::new("Check CA");
    let (cert, key) = pki.server("server", &["broker.example"]);
    let broker = Moat::start(&tls_listener("tls", &cert, &key, ""), pki.path());
    check_fails(
        &broker.url("tls"),
        &["--cafile", p(&pki.ca_pem)],
        &[
            "name mismatch",
            "broker.example",
            "you dialed 127.0.0.1",
            "moat cert server --ca DIR --host 127.0.0.1 --host broker.example",
        ],
    );
}

/// `--servername` asks a listener for one of its SNI certificate sets (set up in moat.toml
/// with `[[listeners.tls.sni]]`); a name no set has gets the default, and the mismatch says
/// which name was asked.
#[test]
fn servername_checks_an_sni_set() {
    let pki = TestPki::new("Check CA");
    let (cert, key) = pki.server("server", &["localhost", "127.0.0.1"]);
    let (b_cert, b_key) = pki.server("b", &["b.example"]);
    let sni = format!(
        "[[listeners.tls.sni]]\ncert = \"{}\"\nkey = \"{}\"\nnames = [\"b.example\"]\n",
        b_cert.display(),
        b_key.display()
    );
    let broker = Moat::start(&tls_listener("tls", &cert, &key, &sni), pki.path());
    let t = check_ok(
        &broker.url("tls"),
        &["--cafile", p(&pki.ca_pem), "--servername", "b.example"],
    );
    assert!(t.contains("server name b.example"), "{t}");
    assert!(t.contains("✓ server certificate: CN=b.example"), "{t}");
    check_fails(
        &broker.url("tls"),
        &["--cafile", p(&pki.ca_pem), "--servername", "c.example"],
        &[
            "name mismatch",
            "you asked for c.example (--servername; dialed 127.0.0.1)",
        ],
    );
}

#[test]
fn expired_server_certificate() {
    let pki = TestPki::new("Check CA");
    let now = SystemTime::now();
    let (cert, key) = pki.server_with_validity(
        "expired",
        &["127.0.0.1"],
        Validity {
            not_before: now - Duration::from_secs(40 * 86_400),
            not_after: now - Duration::from_secs(5 * 86_400),
        },
    );
    // moat refuses to serve an expired certificate, as it should: mosquitto serves anything.
    let broker = Mosquitto::start(
        &format!(
            "allow_anonymous true\ncertfile {}\nkeyfile {}\n",
            cert.display(),
            key.display()
        ),
        &[],
    );
    let url = format!("mqtts://127.0.0.1:{}", broker.port);
    check_fails(
        &url,
        &["--cafile", p(&pki.ca_pem)],
        &["the server certificate expired on", "days ago", "renew"],
    );
}

#[test]
fn v1_cn_only_certificate_from_the_openssl_recipe_on_mosquitto() {
    let dir = tempfile::tempdir().expect("tempdir");
    openssl_v1_server(dir.path(), "broker.local");
    let broker = Mosquitto::start(
        &format!(
            "allow_anonymous true\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n",
            d = dir.path().display()
        ),
        &[],
    );
    let url = format!("mqtts://127.0.0.1:{}", broker.port);
    let ca = dir.path().join("ca.pem");
    let t = check_fails(
        &url,
        &["--cafile", p(&ca)],
        &[
            "names broker.local in its CN and has no SAN; you dialed 127.0.0.1",
            "moat cert server --ca DIR --host 127.0.0.1 --host broker.local",
        ],
    );
    // OpenSSL 3.0's `x509 -req` makes v1; later versions add key identifiers (v3).
    let info = moat_pki::inspect::CertInfo::from_der(
        &moat_pki::decode::decode(&std::fs::read(dir.path().join("server.pem")).unwrap())
            .unwrap()
            .certificates()[0],
    )
    .unwrap();
    if info.version == 1 {
        assert!(t.contains("is X.509 v1"), "{t}");
    }
}

#[test]
fn chain_incomplete_when_the_broker_omits_the_intermediate() {
    let root = TestPki::new("Check Root CA");
    let inter = root.intermediate("Check Intermediate CA");
    let (cert, key) = inter.server("leaf", &["127.0.0.1"]);
    let chain = &inter.ca_pem;
    let broker = Moat::start(
        &format!(
            "{}{}",
            tls_listener("short", &cert, &key, ""),
            tls_listener(
                "full",
                &cert,
                &key,
                &format!("chain = \"{}\"\n", chain.display())
            )
        ),
        root.path(),
    );
    check_fails(
        &broker.url("short"),
        &["--cafile", p(&root.ca_pem)],
        &["chain incomplete", "CN=Check Intermediate CA", "chain ="],
    );
    check_ok(&broker.url("full"), &["--cafile", p(&root.ca_pem)]);
}

#[test]
fn mutual_tls_missing_wrong_and_right_client_certificates() {
    let pki = TestPki::new("Check CA");
    let other = TestPki::new("Stranger CA");
    let (cert, key) = pki.server("server", &["127.0.0.1"]);
    let (good_cert, good_key) = pki.client("dev1");
    let (bad_cert, bad_key) = other.client("intruder");
    let broker = Moat::start(
        &tls_listener(
            "mtls",
            &cert,
            &key,
            &format!(
                "client_auth = \"required\"\nclient_ca = \"{}\"\n",
                pki.ca_pem.display()
            ),
        ),
        pki.path(),
    );
    let url = broker.url("mtls");
    let ca = p(&pki.ca_pem);
    check_fails(
        &url,
        &["--cafile", ca],
        &[
            "✗ client certificate: the broker requires a client certificate and none was given",
            "--cert",
        ],
    );
    check_fails(
        &url,
        &["--cafile", ca, "--cert", p(&bad_cert), "--key", p(&bad_key)],
        &[
            "✗ client certificate: the server refused the client certificate",
            "CN=intruder was issued by CN=Stranger CA",
        ],
    );
    let t = check_ok(
        &url,
        &[
            "--cafile",
            ca,
            "--cert",
            p(&good_cert),
            "--key",
            p(&good_key),
        ],
    );
    assert!(
        t.contains("✓ client certificate: CN=dev1 sent and accepted"),
        "{t}"
    );
}

#[test]
fn mosquitto_missing_client_certificate() {
    let pki = TestPki::new("Check CA");
    let (cert, key) = pki.server("server", &["127.0.0.1"]);
    let broker = Mosquitto::start(
        &format!(
            "allow_anonymous true\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            pki.ca_pem.display(),
            cert.display(),
            key.display()
        ),
        &[],
    );
    let url = format!("mqtts://127.0.0.1:{}", broker.port);
    check_fails(
        &url,
        &["--cafile", p(&pki.ca_pem)],
        &["requires a client certificate and none was given"],
    );
    let (c, k) = pki.client("dev1");
    check_ok(
        &url,
        &["--cafile", p(&pki.ca_pem), "--cert", p(&c), "--key", p(&k)],
    );
}

fn mosquitto_with_users(acl: Option<&str>) -> Mosquitto {
    let dir = tempfile::tempdir().expect("tempdir");
    let passwd = dir.path().join("passwd");
    must(
        std::process::Command::new("mosquitto_passwd")
            .args(["-b", "-c"])
            .arg(&passwd)
            .args(["alice", "wonderland"]),
    );
    let data = std::fs::read(&passwd).expect("passwd");
    let mut files: Vec<(&str, &[u8])> = vec![("passwd", &data)];
    let mut config = "allow_anonymous false\npassword_file {dir}/passwd\n".to_owned();
    if let Some(acl) = acl {
        files.push(("acl", acl.as_bytes()));
        config.push_str("acl_file {dir}/acl\n");
    }
    Mosquitto::start(&config, &files)
}

#[test]
fn bad_password_and_anonymous_refusal_on_mosquitto() {
    let broker = mosquitto_with_users(None);
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    check_fails(
        &url,
        &["-u", "alice", "-P", "wrong"],
        &["✗ CONNECT", "bad user name or password", "-u/-P"],
    );
    check_fails(&url, &[], &["✗ CONNECT", "not authorized", "anonymous"]);
    check_ok(&url, &["-u", "alice", "-P", "wonderland"]);
    // The same with MQTT 3.1.1.
    check_fails(
        &url,
        &["-u", "alice", "-P", "wrong", "-V", "mqttv311"],
        &["✗ CONNECT", "refused"],
    );
}

#[test]
fn acl_denial_on_mosquitto() {
    let broker = mosquitto_with_users(Some("user alice\ntopic readwrite allowed/#\n"));
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    check_fails(
        &url,
        &["-u", "alice", "-P", "wonderland"],
        &["✗ round trip", "ACL"],
    );
    check_ok(
        &url,
        &["-u", "alice", "-P", "wonderland", "-t", "allowed/check"],
    );
}

#[test]
fn plain_client_on_a_tls_port_and_nothing_listening() {
    let pki = TestPki::new("Check CA");
    let (cert, key) = pki.server("server", &["127.0.0.1"]);
    let broker = Moat::start(&tls_listener("tls", &cert, &key, ""), pki.path());
    let url = format!("mqtt://127.0.0.1:{}", broker.port("tls"));
    check_fails(&url, &[], &["✗ CONNECT", "mqtts://"]);
    let port = support::free_port();
    check_fails(
        &format!("mqtt://127.0.0.1:{port}"),
        &[],
        &["✗ TCP connect: connection refused"],
    );
}

#[test]
fn usage_errors_exit_2() {
    let out = run(moat().args(["check", "http://x"]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = run(moat().args(["check", "mqtts://127.0.0.1", "--cafile", "/nonexistent.pem"]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn websocket_listeners_and_a_wrong_path() {
    let pki = TestPki::new("Check CA");
    let (cert, key) = pki.server("server", &["127.0.0.1"]);
    let config = format!(
        "[[listeners]]\nname = \"ws\"\nkind = \"ws\"\nbind = \"127.0.0.1:0\"\nallow_anonymous = true\n\n[[listeners]]\nname = \"wss\"\nkind = \"wss\"\nbind = \"127.0.0.1:0\"\nallow_anonymous = true\n[listeners.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let broker = Moat::start(&config, pki.path());
    let t = check_ok(&broker.url("ws"), &[]);
    assert!(t.contains("✓ WebSocket upgrade: /mqtt"), "{t}");
    let t = check_ok(&broker.url("wss"), &["--cafile", p(&pki.ca_pem)]);
    assert!(t.contains("✓ TLS handshake"), "{t}");
    assert!(t.contains("✓ WebSocket upgrade"), "{t}");
    let wrong = format!("ws://127.0.0.1:{}/wrong", broker.port("ws"));
    check_fails(&wrong, &[], &["✗ WebSocket upgrade", "check the path"]);
}

#[test]
fn mosquitto_sending_its_root_with_an_unknown_ca() {
    let pki = TestPki::new("Broker CA");
    let other = TestPki::new("Client Side CA");
    let (cert, key) = pki.server("server", &["127.0.0.1"]);
    let broker = Mosquitto::start(
        &format!(
            "allow_anonymous true\ncafile {}\ncertfile {}\nkeyfile {}\n",
            pki.ca_pem.display(),
            cert.display(),
            key.display()
        ),
        &[],
    );
    let url = format!("mqtts://127.0.0.1:{}", broker.port);
    check_fails(
        &url,
        &["--cafile", p(&other.ca_pem)],
        &["unknown CA", "CN=Broker CA", "CN=Client Side CA"],
    );
    check_ok(&url, &["--cafile", p(&pki.ca_pem)]);
}

#[test]
fn cn_only_certificate_dialed_by_its_cn() {
    let dir = tempfile::tempdir().expect("tempdir");
    openssl_v1_server(dir.path(), "localhost");
    let broker = Mosquitto::start(
        &format!(
            "allow_anonymous true\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n",
            d = dir.path().display()
        ),
        &[],
    );
    let url = format!("mqtts://localhost:{}", broker.port);
    check_fails(
        &url,
        &["--cafile", p(&dir.path().join("ca.pem"))],
        &[
            "names localhost only in its CN and has no SAN",
            "modern TLS clients ignore the CN",
            "moat cert server --ca DIR --host localhost",
        ],
    );
}
