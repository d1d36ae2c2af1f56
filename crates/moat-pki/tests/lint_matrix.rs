//! The lint matrix: each bad case made with moat-pki, or with the openssl CLI where the case is
//! an openssl habit, and the exact finding code it must get. Good files must pass.
//!
//! Needs the `openssl` CLI (Debian package `openssl`); fails, never skips, without it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use moat_pki::generate::{self, Ca, CaOptions, ClientOptions, ServerOptions};
use moat_pki::lint::{self, Finding, LintFile, LintInput};
use moat_pki::{key, store, KeyType, LintProfile, Purpose, Severity, Validity};

const DAY: Duration = Duration::from_secs(86_400);

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl CLI is needed for these tests: apt-get install -y openssl");
    assert!(
        out.status.success(),
        "openssl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write(dir: &Path, name: &str, data: impl AsRef<[u8]>) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

fn now() -> SystemTime {
    SystemTime::now()
}

fn root(cn: &str, kt: KeyType) -> Ca {
    let made = generate::root_ca(&CaOptions {
        common_name: cn.into(),
        key_type: kt,
        validity: Validity::days_from(now(), 3650),
    })
    .unwrap();
    Ca {
        cert_der: made.cert_der,
        key: made.key,
        chain: vec![],
        root: None,
    }
}

fn intermediate(cn: &str, issuer: &Ca) -> Ca {
    let made = generate::intermediate_ca(
        &CaOptions {
            common_name: cn.into(),
            key_type: KeyType::P256,
            validity: Validity::days_from(now(), 1825),
        },
        issuer,
    )
    .unwrap();
    let mut chain = Vec::new();
    if issuer.is_intermediate() {
        chain.push(issuer.cert_der.clone());
        chain.extend(issuer.chain.iter().cloned());
    }
    Ca {
        cert_der: made.cert_der,
        key: made.key,
        chain,
        root: Some(issuer.anchor().to_vec()),
    }
}

fn server_with(ca: &Ca, hosts: &[&str], kt: KeyType, validity: Validity) -> generate::Certified {
    generate::server(
        &ServerOptions {
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            key_type: kt,
            validity,
        },
        ca,
    )
    .unwrap()
}

fn server(ca: &Ca, hosts: &[&str]) -> generate::Certified {
    server_with(ca, hosts, KeyType::P256, Validity::days_from(now(), 397))
}

fn pem(der: &[u8]) -> String {
    moat_pki::decode::cert_pem(der)
}

fn file(name: &str, data: impl Into<Vec<u8>>) -> Option<LintFile> {
    Some(LintFile::new(name, data))
}

fn input() -> LintInput {
    LintInput::new(now())
}

fn codes(f: &[Finding]) -> Vec<&'static str> {
    f.iter().map(|f| f.code.as_str()).collect()
}

#[track_caller]
fn assert_finding(findings: &[Finding], code: &str, severity: Severity) {
    let found = findings.iter().find(|f| f.code == code);
    match found {
        Some(f) => {
            assert_eq!(
                f.severity, severity,
                "{code} has severity {:?}: {findings:#?}",
                f.severity
            );
            assert!(!f.message.is_empty());
        }
        None => panic!("expected {code}, got {:?}\n{findings:#?}", codes(findings)),
    }
}

#[track_caller]
fn assert_clean(findings: &[Finding]) {
    assert!(
        !lint::has_errors(findings),
        "expected no errors: {findings:#?}"
    );
}

/// A full moat-made server setup lints clean.
#[test]
fn moat_made_files_pass() {
    let ca = root("Moat Test CA", KeyType::P256);
    let s = server(&ca, &["broker.local", "127.0.0.1"]);
    let mut i = input();
    i.cert = file("server.pem", pem(&s.cert_der));
    i.key = file("server.key", s.key.to_pkcs8_pem().as_bytes());
    i.ca = file("ca.pem", pem(&ca.cert_der));
    i.hosts = vec!["broker.local".into(), "127.0.0.1".into()];
    let f = lint::lint(&i);
    assert!(f.is_empty(), "{f:#?}");

    // A client certificate for the same CA, as the broker's client CA sees it.
    let c = generate::client(
        &ClientOptions {
            common_name: "dev-1".into(),
            key_type: KeyType::P256,
            validity: Validity::days_from(now(), 397),
        },
        &ca,
    )
    .unwrap();
    let mut i = input();
    i.purpose = Purpose::Client;
    i.cert = file("dev-1.pem", pem(&c.cert_der));
    i.key = file("dev-1.key", c.key.to_pkcs8_pem().as_bytes());
    i.client_ca = file("ca.pem", pem(&ca.cert_der));
    let f = lint::lint(&i);
    assert!(f.is_empty(), "{f:#?}");
}

#[test]
fn intermediate_chain_passes_and_breaks() {
    let r = root("Root", KeyType::P256);
    let int1 = intermediate("Int 1", &r);
    let int2 = intermediate("Int 2", &int1);
    let s = server(&int2, &["mqtt.example.com"]);
    let ordered = format!("{}{}", pem(&int2.cert_der), pem(&int1.cert_der));
    let mut i = input();
    i.cert = file("server.pem", pem(&s.cert_der));
    i.chain = file("chain.pem", ordered.clone());
    i.ca = file("root.pem", pem(&r.cert_der));
    i.hosts = vec!["mqtt.example.com".into()];
    let f = lint::lint(&i);
    assert!(f.is_empty(), "{f:#?}");

    // Out of order.
    let mut j = i.clone();
    j.chain = file(
        "chain.pem",
        format!("{}{}", pem(&int1.cert_der), pem(&int2.cert_der)),
    );
    assert_finding(&lint::lint(&j), "chain-order", Severity::Error);

    // Leaf repeated in the chain.
    let mut j = i.clone();
    j.chain = file("chain.pem", format!("{}{ordered}", pem(&s.cert_der)));
    assert_finding(&lint::lint(&j), "chain-leaf-repeated", Severity::Error);

    // Intermediate missing.
    let mut j = i.clone();
    j.chain = file("chain.pem", pem(&int2.cert_der));
    assert_finding(&lint::lint(&j), "chain-incomplete", Severity::Error);
    let mut j = i.clone();
    j.chain = None;
    assert_finding(&lint::lint(&j), "chain-incomplete", Severity::Error);

    // More than one certificate in the certificate file.
    let mut j = i.clone();
    j.cert = file("server.pem", format!("{}{ordered}", pem(&s.cert_der)));
    j.chain = None;
    let f = lint::lint(&j);
    assert_finding(&f, "cert-multiple", Severity::Error);
    j.profile = LintProfile::BrokerStartup;
    let f = lint::lint(&j);
    assert_finding(&f, "cert-multiple", Severity::Warning);
    assert_clean(&f);

    // Not anchored in the given CA: a complete chain to another root.
    let other = root("Other Root", KeyType::P256);
    let mut j = i.clone();
    j.ca = file("other.pem", pem(&other.cert_der));
    j.chain = file("chain.pem", format!("{ordered}{}", pem(&r.cert_der)));
    let f = lint::lint(&j);
    assert_finding(&f, "chain-not-anchored", Severity::Error);
    assert_finding(&f, "chain-has-root", Severity::Info);
}

#[test]
fn not_anchored_in_given_ca() {
    let a = root("CA A", KeyType::P256);
    let b = root("CA B", KeyType::P256);
    let s = server(&a, &["h.example"]);
    let mut i = input();
    i.cert = file("server.pem", pem(&s.cert_der));
    i.ca = file("b.pem", pem(&b.cert_der));
    assert_finding(&lint::lint(&i), "chain-not-anchored", Severity::Error);
    // Same name, different key (a CA made again).
    let a2 = root("CA A", KeyType::P256);
    i.ca = file("a2.pem", pem(&a2.cert_der));
    assert_finding(&lint::lint(&i), "chain-not-anchored", Severity::Error);
}

#[test]
fn validity_rules() {
    let ca = root("CA", KeyType::P256);
    let t = now();
    let expired = server_with(
        &ca,
        &["h"],
        KeyType::P256,
        Validity {
            not_before: t - 30 * DAY,
            not_after: t - DAY,
        },
    );
    let future = server_with(
        &ca,
        &["h"],
        KeyType::P256,
        Validity {
            not_before: t + DAY,
            not_after: t + 30 * DAY,
        },
    );
    let soon = server_with(&ca, &["h"], KeyType::P256, Validity::days_from(t, 10));
    for (c, code, sev) in [
        (&expired, "cert-expired", Severity::Error),
        (&future, "cert-not-yet-valid", Severity::Error),
        (&soon, "cert-expires-soon", Severity::Warning),
    ] {
        let mut i = input();
        i.cert = file("server.pem", pem(&c.cert_der));
        i.ca = file("ca.pem", pem(&ca.cert_der));
        let f = lint::lint(&i);
        assert_finding(&f, code, sev);
        if sev == Severity::Warning {
            assert_clean(&f);
        }
    }
}

#[test]
fn names_and_usages() {
    let ca = root("CA", KeyType::P256);
    let s = server(&ca, &["a.example", "10.0.0.1"]);
    let mut i = input();
    i.cert = file("server.pem", pem(&s.cert_der));
    i.ca = file("ca.pem", pem(&ca.cert_der));
    i.hosts = vec!["b.example".into()];
    assert_finding(&lint::lint(&i), "name-mismatch", Severity::Error);
    i.hosts = vec!["10.0.0.2".into()];
    assert_finding(&lint::lint(&i), "name-mismatch", Severity::Error);
    i.hosts = vec!["10.0.0.1".into(), "A.EXAMPLE".into()];
    assert!(lint::lint(&i).is_empty());

    // A server certificate used as a client certificate, and the other way round.
    i.hosts = vec![];
    i.purpose = Purpose::Client;
    assert_finding(&lint::lint(&i), "eku-no-client-auth", Severity::Error);
    let c = generate::client(
        &ClientOptions {
            common_name: "dev".into(),
            key_type: KeyType::P256,
            validity: Validity::days_from(now(), 30 + 397),
        },
        &ca,
    )
    .unwrap();
    let mut i = input();
    i.cert = file("dev.pem", pem(&c.cert_der));
    i.ca = file("ca.pem", pem(&ca.cert_der));
    let f = lint::lint(&i);
    assert_finding(&f, "eku-no-server-auth", Severity::Error);
    assert_finding(&f, "name-cn-only", Severity::Error);
}

#[test]
fn key_rules() {
    let ca = root("CA", KeyType::P256);
    let s = server(&ca, &["h"]);
    let other = KeyType::P256.generate().unwrap();
    let mut i = input();
    i.cert = file("server.pem", pem(&s.cert_der));
    i.key = file("other.key", other.to_pkcs8_pem().as_bytes());
    assert_finding(&lint::lint(&i), "key-mismatch", Severity::Error);

    // Encrypted key: no passphrase, wrong passphrase, right passphrase.
    let enc = s.key.to_encrypted_pkcs8_pem(b"s3cret").unwrap();
    i.key = file("server.key", enc.as_bytes());
    assert_finding(&lint::lint(&i), "key-encrypted", Severity::Error);
    i.key_passphrase = Some(b"wrong".to_vec().into());
    assert_finding(&lint::lint(&i), "key-wrong-passphrase", Severity::Error);
    i.key_passphrase = Some(b"s3cret".to_vec().into());
    assert!(lint::lint(&i)
        .iter()
        .all(|f| !f.code.as_str().starts_with("key-")));

    // Key algorithm unlike the CA's (a warning).
    let rsa = server_with(
        &ca,
        &["h"],
        KeyType::Rsa2048,
        Validity::days_from(now(), 397),
    );
    let mut i = input();
    i.cert = file("server.pem", pem(&rsa.cert_der));
    i.key = file("server.key", rsa.key.to_pkcs8_pem().as_bytes());
    i.ca = file("ca.pem", pem(&ca.cert_der));
    let f = lint::lint(&i);
    assert_finding(&f, "key-alg-unlike-ca", Severity::Warning);
    assert_clean(&f);
}

#[test]
fn file_rules() {
    let ca = root("CA", KeyType::P256);
    let s = server(&ca, &["h"]);
    let mut i = input();
    i.cert = file("server.der", s.cert_der.clone());
    assert_finding(&lint::lint(&i), "file-der", Severity::Error);
    i.cert = file(
        "junk.pem",
        b"\x00\x01garbage \xff\xfe not a certificate".to_vec(),
    );
    assert_finding(&lint::lint(&i), "file-not-pem", Severity::Error);
    i.cert = file("empty.pem", Vec::new());
    assert_finding(&lint::lint(&i), "file-not-pem", Severity::Error);
    i.cert = file(
        "broken.pem",
        b"-----BEGIN CERTIFICATE-----\nMIIB\n".to_vec(),
    );
    assert_finding(&lint::lint(&i), "file-not-pem", Severity::Error);
    i.cert = file("server.key", s.key.to_pkcs8_pem().as_bytes());
    assert_finding(&lint::lint(&i), "pem-wrong-type", Severity::Error);
    i.cert = file(
        "bad.pem",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    );
    assert_finding(&lint::lint(&i), "cert-unparseable", Severity::Error);
    // A certificate given as the key.
    let mut i = input();
    i.cert = file("server.pem", pem(&s.cert_der));
    i.key = file("server.pem", pem(&s.cert_der));
    assert_finding(&lint::lint(&i), "pem-wrong-type", Severity::Error);
}

/// A CA made the way the vendor recipes do it, with the openssl CLI.
struct OpensslCa {
    dir: tempfile::TempDir,
}

impl OpensslCa {
    fn new(key_alg: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec![
            "req",
            "-new",
            "-x509",
            "-extensions",
            "v3_ca",
            "-nodes",
            "-days",
            "365",
            "-subj",
            "/CN=Test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ];
        args.extend_from_slice(key_alg);
        openssl(dir.path(), &args);
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A server key and CSR with CN = `cn`, signed with `extra` args (e.g. -extfile).
    fn sign(&self, name: &str, cn: &str, key_bits: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
        let d = self.path();
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let crt = format!("{name}.pem");
        openssl(d, &["genrsa", "-out", &key, key_bits]);
        openssl(
            d,
            &[
                "req",
                "-new",
                "-key",
                &key,
                "-subj",
                &format!("/CN={cn}"),
                "-out",
                &csr,
            ],
        );
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "365",
            "-out",
            &crt,
        ];
        args.extend_from_slice(extra);
        openssl(d, &args);
        (d.join(crt), d.join(key))
    }

    fn lint(
        &self,
        cert: &Path,
        key: Option<&Path>,
        hosts: &[&str],
        profile: LintProfile,
    ) -> Vec<Finding> {
        let mut i = input();
        i.cert = file(&cert.display().to_string(), std::fs::read(cert).unwrap());
        i.key = key.map(|k| LintFile::new(k.display().to_string(), std::fs::read(k).unwrap()));
        i.ca = file("ca.pem", std::fs::read(self.path().join("ca.pem")).unwrap());
        i.hosts = hosts.iter().map(|h| (*h).to_owned()).collect();
        i.profile = profile;
        lint::lint(&i)
    }
}

const SAN_EXT: &str = "subjectAltName=DNS:broker.local,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\nbasicConstraints=CA:FALSE\n";

#[test]
fn openssl_recipe_with_san_passes() {
    let ca = OpensslCa::new(&["-newkey", "rsa:2048"]);
    write(ca.path(), "san.ext", SAN_EXT);
    let (crt, key) = ca.sign("server", "broker.local", "2048", &["-extfile", "san.ext"]);
    let f = ca.lint(
        &crt,
        Some(&key),
        &["broker.local", "127.0.0.1"],
        LintProfile::Strict,
    );
    assert!(f.is_empty(), "{f:#?}");

    // The [alt_names] section style of openssl.cnf.
    write(
        ca.path(),
        "v3.cnf",
        "[v3_req]\nbasicConstraints = CA:FALSE\nkeyUsage = digitalSignature, keyEncipherment\nextendedKeyUsage = serverAuth\nsubjectAltName = @alt_names\n[alt_names]\nDNS.1 = broker.local\nDNS.2 = *.mqtt.local\nIP.1 = 192.168.1.10\n",
    );
    let (crt, key) = ca.sign(
        "alt",
        "broker.local",
        "2048",
        &["-extfile", "v3.cnf", "-extensions", "v3_req"],
    );
    let f = ca.lint(
        &crt,
        Some(&key),
        &["broker.local", "x.mqtt.local", "192.168.1.10"],
        LintProfile::Strict,
    );
    assert!(f.is_empty(), "{f:#?}");
}

#[test]
fn openssl_v1_habit() {
    let ca = OpensslCa::new(&["-newkey", "rsa:2048"]);
    let (crt, key) = ca.sign("server", "192.168.1.10", "2048", &[]);
    let f = ca.lint(&crt, Some(&key), &["192.168.1.10"], LintProfile::Strict);
    assert_finding(&f, "cert-v1", Severity::Error);
    assert_finding(&f, "name-cn-only", Severity::Error);
    let v1 = f.iter().find(|f| f.code == "cert-v1").unwrap();
    assert!(v1.message.contains("rustls"), "{v1:?}");
    assert!(
        v1.fix
            .as_deref()
            .unwrap_or_default()
            .contains("moat cert server"),
        "{v1:?}"
    );
    let cn = f.iter().find(|f| f.code == "name-cn-only").unwrap();
    assert!(cn.message.contains("ignore the CN"), "{cn:?}");
    // The broker serves it, with warnings.
    let f = ca.lint(
        &crt,
        Some(&key),
        &["192.168.1.10"],
        LintProfile::BrokerStartup,
    );
    assert_finding(&f, "cert-v1", Severity::Warning);
    assert_finding(&f, "name-cn-only", Severity::Warning);
    assert_clean(&f);
}

#[test]
fn openssl_weak_cases() {
    let ca = OpensslCa::new(&["-newkey", "rsa:2048"]);
    write(ca.path(), "san.ext", SAN_EXT);
    for bits in ["1024", "512"] {
        let (crt, _) = ca.sign(
            &format!("weak{bits}"),
            "broker.local",
            bits,
            &["-extfile", "san.ext"],
        );
        assert_finding(
            &ca.lint(&crt, None, &[], LintProfile::Strict),
            "key-rsa-weak",
            Severity::Error,
        );
    }
    let (crt, _) = ca.sign(
        "sha1",
        "broker.local",
        "2048",
        &["-extfile", "san.ext", "-sha1"],
    );
    assert_finding(
        &ca.lint(&crt, None, &[], LintProfile::Strict),
        "sig-sha1",
        Severity::Error,
    );
    // v3 but no SAN: CN only.
    write(
        ca.path(),
        "nosan.ext",
        "extendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
    );
    let (crt, _) = ca.sign("nosan", "broker.local", "2048", &["-extfile", "nosan.ext"]);
    let f = ca.lint(&crt, None, &["broker.local"], LintProfile::Strict);
    assert_finding(&f, "name-cn-only", Severity::Error);
    assert!(!codes(&f).contains(&"cert-v1"));
    // DER where PEM was expected.
    let d = ca.path();
    openssl(
        d,
        &[
            "x509",
            "-in",
            "sha1.pem",
            "-outform",
            "DER",
            "-out",
            "server.der",
        ],
    );
    assert_finding(
        &ca.lint(&d.join("server.der"), None, &[], LintProfile::Strict),
        "file-der",
        Severity::Error,
    );
}

#[test]
fn openssl_ca_without_ca_true() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(
        d,
        &[
            "req",
            "-new",
            "-x509",
            "-nodes",
            "-newkey",
            "rsa:2048",
            "-days",
            "365",
            "-subj",
            "/CN=Not A CA",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-addext",
            "keyUsage=digitalSignature",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    write(d, "san.ext", SAN_EXT);
    openssl(d, &["genrsa", "-out", "server.key", "2048"]);
    openssl(
        d,
        &[
            "req",
            "-new",
            "-key",
            "server.key",
            "-subj",
            "/CN=broker.local",
            "-out",
            "server.csr",
        ],
    );
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ],
    );
    let mut i = input();
    i.cert = file("server.pem", std::fs::read(d.join("server.pem")).unwrap());
    i.ca = file("ca.pem", std::fs::read(d.join("ca.pem")).unwrap());
    let f = lint::lint(&i);
    assert_finding(&f, "ca-not-ca", Severity::Error);
    assert_finding(&f, "ca-no-keycertsign", Severity::Error);
}

/// Every key format openssl writes loads, and matches its certificate.
#[test]
fn openssl_key_formats() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // (file, command, passphrase)
    let cases: Vec<(&str, Vec<&str>, Option<&str>)> = vec![
        (
            "rsa-pkcs8.key",
            vec!["genrsa", "-out", "rsa-pkcs8.key", "2048"],
            None,
        ),
        (
            "rsa-pkcs1.key",
            vec![
                "rsa",
                "-in",
                "rsa-pkcs8.key",
                "-traditional",
                "-out",
                "rsa-pkcs1.key",
            ],
            None,
        ),
        (
            "rsa-aes256.key",
            vec![
                "rsa",
                "-in",
                "rsa-pkcs8.key",
                "-aes256",
                "-passout",
                "pass:secret",
                "-out",
                "rsa-aes256.key",
            ],
            Some("secret"),
        ),
        (
            "rsa-des3.key",
            vec![
                "rsa",
                "-in",
                "rsa-pkcs8.key",
                "-des3",
                "-passout",
                "pass:secret",
                "-out",
                "rsa-des3.key",
            ],
            Some("secret"),
        ),
        (
            "rsa-legacy-aes256.key",
            vec![
                "rsa",
                "-in",
                "rsa-pkcs8.key",
                "-aes256",
                "-traditional",
                "-passout",
                "pass:secret",
                "-out",
                "rsa-legacy-aes256.key",
            ],
            Some("secret"),
        ),
        (
            "rsa-legacy-aes128.key",
            vec![
                "rsa",
                "-in",
                "rsa-pkcs8.key",
                "-aes128",
                "-traditional",
                "-passout",
                "pass:secret",
                "-out",
                "rsa-legacy-aes128.key",
            ],
            Some("secret"),
        ),
        (
            "rsa-legacy-des3.key",
            vec![
                "rsa",
                "-in",
                "rsa-pkcs8.key",
                "-des3",
                "-traditional",
                "-passout",
                "pass:secret",
                "-out",
                "rsa-legacy-des3.key",
            ],
            Some("secret"),
        ),
        (
            "ec-sec1.key",
            vec![
                "ecparam",
                "-genkey",
                "-name",
                "prime256v1",
                "-out",
                "ec-sec1.key",
            ],
            None,
        ),
        (
            "ec-pkcs8.key",
            vec![
                "pkcs8",
                "-topk8",
                "-nocrypt",
                "-in",
                "ec-sec1.key",
                "-out",
                "ec-pkcs8.key",
            ],
            None,
        ),
        (
            "ec-legacy-aes256.key",
            vec![
                "ec",
                "-in",
                "ec-sec1.key",
                "-aes256",
                "-passout",
                "pass:secret",
                "-out",
                "ec-legacy-aes256.key",
            ],
            Some("secret"),
        ),
        (
            "ec384.key",
            vec![
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-384",
                "-out",
                "ec384.key",
            ],
            None,
        ),
        (
            "ed25519.key",
            vec!["genpkey", "-algorithm", "ED25519", "-out", "ed25519.key"],
            None,
        ),
        (
            "ed25519-enc.key",
            vec![
                "pkcs8",
                "-topk8",
                "-in",
                "ed25519.key",
                "-v2",
                "aes-256-cbc",
                "-passout",
                "pass:secret",
                "-out",
                "ed25519-enc.key",
            ],
            Some("secret"),
        ),
    ];
    for (name, cmd, pass) in &cases {
        openssl(d, cmd);
        let data = std::fs::read(d.join(name)).unwrap();
        if pass.is_some() {
            assert!(
                matches!(
                    key::load(&data, None),
                    Err(moat_pki::KeyError::Encrypted(_))
                ),
                "{name}"
            );
            assert_eq!(
                key::load(&data, Some(b"wrong")).unwrap_err(),
                moat_pki::KeyError::WrongPassphrase,
                "{name}"
            );
        }
        let k = key::load(&data, pass.map(str::as_bytes)).unwrap_or_else(|e| panic!("{name}: {e}"));
        // A self-signed certificate for the key, made by openssl, matches it.
        let mut args = vec![
            "req", "-new", "-x509", "-key", name, "-subj", "/CN=k", "-days", "1", "-out", "k.pem",
        ];
        if let Some(p) = pass {
            args.push("-passin");
            args.push(Box::leak(format!("pass:{p}").into_boxed_str()));
        }
        openssl(d, &args);
        let cert = moat_pki::decode::decode(&std::fs::read(d.join("k.pem")).unwrap())
            .unwrap()
            .certificates()
            .remove(0);
        assert_eq!(k.matches_certificate(&cert), Some(true), "{name}");
        // The decrypted key is usable by openssl.
        write(d, "plain.key", k.to_pkcs8_pem().as_bytes());
        openssl(d, &["pkey", "-in", "plain.key", "-noout"]);
    }
    // The legacy headers really are there.
    let legacy = std::fs::read_to_string(d.join("rsa-legacy-des3.key")).unwrap();
    assert!(legacy.contains("Proc-Type: 4,ENCRYPTED") && legacy.contains("DES-EDE3-CBC"));
}

/// Certificates made by moat-pki pass openssl's verifier and host checks, and webpki.
#[test]
fn moat_made_pass_openssl_and_webpki() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for kt in [
        KeyType::P256,
        KeyType::P384,
        KeyType::Ed25519,
        KeyType::Rsa2048,
    ] {
        let ca = root(&format!("CA {kt}"), kt);
        let s = server_with(
            &ca,
            &["broker.local", "127.0.0.1", "::1"],
            kt,
            Validity::days_from(now(), 30 + 397),
        );
        let c = generate::client(
            &ClientOptions {
                common_name: "dev".into(),
                key_type: kt,
                validity: Validity::days_from(now(), 397),
            },
            &ca,
        )
        .unwrap();
        write(d, "ca.pem", pem(&ca.cert_der));
        write(d, "server.pem", pem(&s.cert_der));
        write(d, "client.pem", pem(&c.cert_der));
        openssl(
            d,
            &[
                "verify",
                "-CAfile",
                "ca.pem",
                "-purpose",
                "sslserver",
                "server.pem",
            ],
        );
        openssl(
            d,
            &[
                "verify",
                "-CAfile",
                "ca.pem",
                "-purpose",
                "sslclient",
                "client.pem",
            ],
        );
        openssl(
            d,
            &["verify", "-x509_strict", "-CAfile", "ca.pem", "ca.pem"],
        );
        for (flag, v) in [
            ("-checkhost", "broker.local"),
            ("-checkip", "127.0.0.1"),
            ("-checkip", "::1"),
        ] {
            let out = Command::new("openssl")
                .args(["x509", "-in", "server.pem", "-noout", flag, v])
                .current_dir(d)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("does match"), "{kt}: {flag} {v}: {text}");
        }
        let anchors = vec![ca.cert_der.clone()];
        moat_pki::verify::verify(
            &s.cert_der,
            &[],
            &anchors,
            Some("broker.local"),
            Purpose::Server,
            now(),
        )
        .unwrap();
        moat_pki::verify::verify(
            &s.cert_der,
            &[],
            &anchors,
            Some("::1"),
            Purpose::Server,
            now(),
        )
        .unwrap();
        moat_pki::verify::verify(&c.cert_der, &[], &anchors, None, Purpose::Client, now()).unwrap();
        let e = moat_pki::verify::verify(
            &s.cert_der,
            &[],
            &anchors,
            Some("other.local"),
            Purpose::Server,
            now(),
        )
        .unwrap_err();
        assert!(e.webpki.contains("CertNotValidForName"), "{e:?}");
        let e = moat_pki::verify::verify(&c.cert_der, &[], &anchors, None, Purpose::Server, now())
            .unwrap_err();
        assert!(e.webpki.contains("Eku"), "{e:?}");
    }
    // An intermediate chain, with openssl -untrusted.
    let r = root("Root", KeyType::P256);
    let i = intermediate("Int", &r);
    let s = server(&i, &["broker.local"]);
    write(d, "root.pem", pem(&r.cert_der));
    write(d, "int.pem", pem(&i.cert_der));
    write(d, "server.pem", pem(&s.cert_der));
    openssl(
        d,
        &[
            "verify",
            "-x509_strict",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "int.pem",
            "server.pem",
        ],
    );
    moat_pki::verify::verify(
        &s.cert_der,
        std::slice::from_ref(&i.cert_der),
        std::slice::from_ref(&r.cert_der),
        Some("broker.local"),
        Purpose::Server,
        now(),
    )
    .unwrap();
}

#[test]
fn ca_dir_round_trip_with_passphrase() {
    let dir = tempfile::tempdir().unwrap();
    let ca = root("CA", KeyType::P384);
    let files = store::write_ca(dir.path(), &ca, Some(b"pw"), false).unwrap();
    assert_eq!(files.len(), 2);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(matches!(
        store::write_ca(dir.path(), &ca, None, false),
        Err(moat_pki::Error::Exists(_))
    ));
    assert!(store::ca_key_is_encrypted(dir.path()));
    assert!(store::load_ca(dir.path(), None).is_err());
    let loaded = store::load_ca(dir.path(), Some(b"pw")).unwrap();
    assert_eq!(loaded.cert_der, ca.cert_der);
    // openssl reads the encrypted key.
    openssl(
        dir.path(),
        &["pkey", "-in", "ca.key", "-passin", "pass:pw", "-noout"],
    );
}
