//! `moat cert ...` end to end: the real binary in a temp dir, openssl as an outside verifier,
//! and mosquitto (broker) with mosquitto_sub/mosquitto_pub (clients) in one-way and two-way TLS.
//!
//! Needs `openssl`, `mosquitto`, `mosquitto_sub` and `mosquitto_pub` (Debian packages openssl,
//! mosquitto, mosquitto-clients). Fails with a clear message, never skips, when one is missing.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{moat, ok};

#[track_caller]
fn tool(dir: &Path, prog: &str, args: &[&str]) -> Output {
    Command::new(prog).args(args).current_dir(dir).output().unwrap_or_else(|e| {
        panic!("{prog} is needed for this test ({e}): apt-get install -y openssl mosquitto mosquitto-clients")
    })
}

#[track_caller]
fn openssl_ok(dir: &Path, args: &[&str]) {
    let out = tool(dir, "openssl", args);
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn make_inspect_lint_verify() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    ok(d, &["cert", "ca", "--out", "pki", "--cn", "Test CA"]);
    ok(
        d,
        &[
            "cert",
            "server",
            "--ca",
            "pki",
            "--host",
            "broker.local",
            "--host",
            "127.0.0.1",
            "--out",
            "pki",
        ],
    );
    ok(
        d,
        &[
            "cert", "client", "--ca", "pki", "--cn", "sensor-1", "--out", "clients",
        ],
    );
    #[cfg(unix)]
    for k in ["pki/ca.key", "pki/server.key", "clients/sensor-1.key"] {
        assert_eq!(mode(&d.join(k)), 0o600, "{k}");
    }
    // Never overwrite without --force; never print a secret.
    let out = moat(
        d,
        &[
            "cert",
            "server",
            "--ca",
            "pki",
            "--host",
            "broker.local",
            "--out",
            "pki",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let out = ok(
        d,
        &[
            "cert",
            "server",
            "--ca",
            "pki",
            "--host",
            "broker.local",
            "--host",
            "127.0.0.1",
            "--out",
            "pki",
            "--force",
        ],
    );
    assert!(!out.contains("PRIVATE KEY"));
    #[cfg(unix)]
    assert_eq!(mode(&d.join("pki/server.key")), 0o600);

    openssl_ok(
        d,
        &[
            "verify",
            "-CAfile",
            "pki/ca.pem",
            "pki/server.pem",
            "clients/sensor-1.pem",
        ],
    );

    let text = ok(d, &["cert", "inspect", "pki/server.pem", "pki/ca.pem"]);
    assert!(
        text.contains("DNS:broker.local")
            && text.contains("IP:127.0.0.1")
            && text.contains("sha256"),
        "{text}"
    );
    let json = ok(d, &["cert", "inspect", "--json", "pki/server.pem"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["entries"][0]["version"], 3);
    assert_eq!(v[0]["entries"][0]["common_names"][0], "broker.local");

    ok(
        d,
        &[
            "cert",
            "lint",
            "--cert",
            "pki/server.pem",
            "--key",
            "pki/server.key",
            "--ca",
            "pki/ca.pem",
            "--host",
            "broker.local",
        ],
    );
    let out = moat(
        d,
        &[
            "cert",
            "lint",
            "--cert",
            "pki/server.pem",
            "--ca",
            "pki",
            "--host",
            "other.local",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["findings"][0]["code"], "name-mismatch");
    assert!(v["findings"][0]["fix"]
        .as_str()
        .unwrap()
        .starts_with("moat cert server"));
    // The key of another certificate.
    let out = moat(
        d,
        &[
            "cert",
            "lint",
            "--cert",
            "pki/server.pem",
            "--key",
            "clients/sensor-1.key",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("[key-mismatch]"));

    ok(
        d,
        &[
            "cert",
            "verify",
            "pki/server.pem",
            "--ca",
            "pki/ca.pem",
            "--host",
            "127.0.0.1",
        ],
    );
    ok(
        d,
        &[
            "cert",
            "verify",
            "clients/sensor-1.pem",
            "--ca",
            "pki",
            "--purpose",
            "client",
        ],
    );
    let out = moat(
        d,
        &[
            "cert",
            "verify",
            "pki/server.pem",
            "--ca",
            "pki/ca.pem",
            "--host",
            "10.9.9.9",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let out = moat(
        d,
        &[
            "cert",
            "verify",
            "clients/sensor-1.pem",
            "--ca",
            "pki/ca.pem",
            "--purpose",
            "server",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    // Usage and I/O errors are exit 2.
    assert_eq!(
        moat(d, &["cert", "lint", "--cert", "missing.pem"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        moat(d, &["cert", "server", "--ca", "pki"]).status.code(),
        Some(2)
    );
}

#[test]
fn intermediate_split_and_encrypted_keys() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::write(d.join("pass"), "correct horse\n").unwrap();
    ok(
        d,
        &[
            "cert",
            "ca",
            "--out",
            "root",
            "--key-type",
            "p384",
            "--passphrase-file",
            "pass",
        ],
    );
    assert!(std::fs::read_to_string(d.join("root/ca.key"))
        .unwrap()
        .contains("ENCRYPTED PRIVATE KEY"));
    // The encrypted root key needs its passphrase.
    let out = moat(
        d,
        &[
            "cert",
            "ca",
            "--intermediate",
            "--ca",
            "root",
            "--out",
            "int",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ca-passphrase-file"));
    ok(
        d,
        &[
            "cert",
            "ca",
            "--intermediate",
            "--ca",
            "root",
            "--ca-passphrase-file",
            "pass",
            "--out",
            "int",
        ],
    );
    ok(
        d,
        &[
            "cert",
            "server",
            "--ca",
            "int",
            "--host",
            "mqtt.example.com",
            "--out",
            "srv",
        ],
    );
    assert!(d.join("srv/chain.pem").exists());
    openssl_ok(
        d,
        &[
            "verify",
            "-CAfile",
            "root/ca.pem",
            "-untrusted",
            "srv/chain.pem",
            "srv/server.pem",
        ],
    );
    ok(
        d,
        &[
            "cert",
            "lint",
            "--cert",
            "srv/server.pem",
            "--chain",
            "srv/chain.pem",
            "--key",
            "srv/server.key",
            "--ca",
            "root/ca.pem",
            "--host",
            "mqtt.example.com",
        ],
    );
    ok(
        d,
        &[
            "cert",
            "verify",
            "srv/server.pem",
            "--chain",
            "srv/chain.pem",
            "--ca",
            "int",
            "--host",
            "mqtt.example.com",
        ],
    );
    let out = moat(
        d,
        &[
            "cert",
            "lint",
            "--cert",
            "srv/server.pem",
            "--ca",
            "root/ca.pem",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("[chain-incomplete]"));

    // A bundle in the wrong order: root, leaf, intermediate.
    let bundle: String = ["root/ca.pem", "srv/server.pem", "srv/chain.pem"]
        .iter()
        .map(|f| std::fs::read_to_string(d.join(f)).unwrap())
        .collect();
    std::fs::write(d.join("bundle.pem"), bundle).unwrap();
    let out = moat(d, &["cert", "lint", "--cert", "bundle.pem"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("[cert-multiple]"));
    let text = ok(d, &["cert", "split", "bundle.pem", "--out", "split"]);
    assert!(text.contains("root:"), "{text}");
    assert_eq!(
        std::fs::read(d.join("split/leaf.pem")).unwrap(),
        std::fs::read(d.join("srv/server.pem")).unwrap()
    );
    assert_eq!(
        std::fs::read(d.join("split/chain.pem")).unwrap(),
        std::fs::read(d.join("srv/chain.pem")).unwrap()
    );
    assert_eq!(
        std::fs::read(d.join("split/root.pem")).unwrap(),
        std::fs::read(d.join("root/ca.pem")).unwrap()
    );

    // decrypt-key: openssl's legacy "Proc-Type: 4,ENCRYPTED" and PKCS#8 encrypted keys.
    std::fs::write(d.join("pw"), "s3cret\n").unwrap();
    openssl_ok(d, &["genrsa", "-out", "plain.key", "2048"]);
    openssl_ok(
        d,
        &[
            "rsa",
            "-in",
            "plain.key",
            "-aes256",
            "-traditional",
            "-passout",
            "pass:s3cret",
            "-out",
            "legacy.key",
        ],
    );
    openssl_ok(
        d,
        &[
            "rsa",
            "-in",
            "plain.key",
            "-des3",
            "-passout",
            "pass:s3cret",
            "-out",
            "pkcs8.key",
        ],
    );
    for k in ["legacy.key", "pkcs8.key"] {
        let out = moat(d, &["cert", "lint", "--cert", "srv/server.pem", "--key", k]);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("[key-encrypted]"),
            "{k}"
        );
        let dec = format!("{k}.dec");
        ok(
            d,
            &[
                "cert",
                "decrypt-key",
                k,
                "--out",
                &dec,
                "--passphrase-file",
                "pw",
            ],
        );
        #[cfg(unix)]
        assert_eq!(mode(&d.join(&dec)), 0o600);
        let a = tool(d, "openssl", &["pkey", "-in", &dec, "-pubout"]).stdout;
        let b = tool(d, "openssl", &["pkey", "-in", "plain.key", "-pubout"]).stdout;
        assert_eq!(a, b, "{k}");
    }
    // Without a passphrase and without a terminal: a usage error, no prompt.
    let out = Command::new(env!("CARGO_BIN_EXE_moat"))
        .args(["cert", "decrypt-key", "legacy.key", "--out", "x.key"])
        .current_dir(d)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// Kills mosquitto when the test ends, however it ends.
struct Broker {
    child: Child,
    port: u16,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_mosquitto(dir: &Path, extra: &str) -> Broker {
    let port = free_port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "per_listener_settings false\nallow_anonymous true\n{user}listener {port} 127.0.0.1\ncafile {d}/pki/ca.pem\ncertfile {d}/pki/server.pem\nkeyfile {d}/pki/server.key\n{extra}\n",
            d = dir.display(),
            // As root, mosquitto drops to the user "mosquitto", which cannot read 0600 keys.
            user = if is_root() { "user root\n" } else { "" },
        ),
    )
    .unwrap();
    let child = Command::new("mosquitto")
        .args(["-c", &conf.display().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect(
            "mosquitto is needed for this test: apt-get install -y mosquitto mosquitto-clients",
        );
    let mut broker = Broker { child, port };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return broker;
        }
        if let Ok(Some(status)) = broker.child.try_wait() {
            panic!("mosquitto exited: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "mosquitto did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Subscribes, publishes once the subscription is up, and returns what the subscriber got.
fn round_trip(dir: &Path, port: u16, client: Option<(&str, &str)>, ca: &str) -> (bool, String) {
    let port = port.to_string();
    let mut common: Vec<String> = vec![
        "-h".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port,
        "--cafile".into(),
        ca.into(),
    ];
    if let Some((cert, key)) = client {
        common.extend(["--cert".into(), cert.into(), "--key".into(), key.into()]);
    }
    let mut sub_args = common.clone();
    sub_args.extend([
        "-t".into(),
        "moat/test".into(),
        "-C".into(),
        "1".into(),
        "-W".into(),
        "10".into(),
    ]);
    let sub = Command::new("mosquitto_sub")
        .args(&sub_args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub is needed: apt-get install -y mosquitto-clients");
    // Publish retained, so the subscriber gets it whenever its subscription lands.
    let mut pub_args = common;
    pub_args.extend([
        "-t".into(),
        "moat/test".into(),
        "-m".into(),
        "hello-moat".into(),
        "-r".into(),
    ]);
    let publ = tool(
        dir,
        "mosquitto_pub",
        &pub_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let out = sub.wait_with_output().unwrap();
    let text = format!(
        "pub: {} {}\nsub: {} {}",
        String::from_utf8_lossy(&publ.stdout),
        String::from_utf8_lossy(&publ.stderr),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        publ.status.success()
            && out.status.success()
            && String::from_utf8_lossy(&out.stdout).contains("hello-moat"),
        text,
    )
}

#[test]
fn mosquitto_tls_and_mtls() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    ok(d, &["cert", "ca", "--out", "pki"]);
    ok(
        d,
        &[
            "cert",
            "server",
            "--ca",
            "pki",
            "--host",
            "127.0.0.1",
            "--host",
            "localhost",
            "--out",
            "pki",
        ],
    );
    ok(
        d,
        &[
            "cert", "client", "--ca", "pki", "--cn", "dev-1", "--out", "clients",
        ],
    );
    ok(d, &["cert", "ca", "--out", "other", "--cn", "Other CA"]);
    ok(
        d,
        &[
            "cert", "client", "--ca", "other", "--cn", "intruder", "--out", "other",
        ],
    );

    // One-way TLS.
    {
        let broker = start_mosquitto(d, "");
        let (good, text) = round_trip(d, broker.port, None, "pki/ca.pem");
        assert!(good, "one-way TLS round trip failed:\n{text}");
        // A client that trusts another CA refuses the broker.
        let (good, text) = round_trip(d, broker.port, None, "other/ca.pem");
        assert!(!good, "a client trusting another CA connected:\n{text}");
    }
    // Two-way TLS.
    {
        let broker = start_mosquitto(
            d,
            "require_certificate true\nuse_identity_as_username true\n",
        );
        let (good, text) = round_trip(
            d,
            broker.port,
            Some(("clients/dev-1.pem", "clients/dev-1.key")),
            "pki/ca.pem",
        );
        assert!(good, "mTLS round trip failed:\n{text}");
        let (good, text) = round_trip(d, broker.port, None, "pki/ca.pem");
        assert!(!good, "a client without a certificate connected:\n{text}");
        let (good, text) = round_trip(
            d,
            broker.port,
            Some(("other/intruder.pem", "other/intruder.key")),
            "pki/ca.pem",
        );
        assert!(
            !good,
            "a client with another CA's certificate connected:\n{text}"
        );
    }
}
