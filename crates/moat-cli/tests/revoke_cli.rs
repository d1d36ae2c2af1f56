//! `moat cert revoke` and `moat cert crl` end to end: the real binary in a temp dir, openssl as
//! the outside reader and verifier of the CRL it writes. Needs `openssl` (Debian package
//! openssl); fails with a clear message, never skips, when it is missing.

use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::{moat, ok};

#[track_caller]
fn openssl(dir: &Path, args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("openssl is needed for this test ({e}): apt-get install -y openssl")
        })
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The serial openssl prints for a certificate, lower case hex without colons.
fn serial_of(dir: &Path, cert: &str) -> String {
    let out = openssl(dir, &["x509", "-in", cert, "-noout", "-serial"]);
    assert!(out.status.success(), "{}", text(&out));
    let s = String::from_utf8_lossy(&out.stdout);
    s.trim()
        .trim_start_matches("serial=")
        .trim_start_matches("00")
        .to_ascii_lowercase()
}

fn crl_text(dir: &Path) -> String {
    let out = openssl(dir, &["crl", "-in", "pki/ca.crl", "-noout", "-text"]);
    assert!(out.status.success(), "{}", text(&out));
    text(&out)
}

#[test]
fn revoke_writes_a_crl_openssl_reads_and_applies() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    ok(d, &["cert", "ca", "--out", "pki", "--cn", "Revoking CA"]);
    ok(
        d,
        &[
            "cert", "client", "--ca", "pki", "--cn", "dev1", "--out", ".",
        ],
    );
    ok(
        d,
        &[
            "cert", "client", "--ca", "pki", "--cn", "dev2", "--out", ".",
        ],
    );

    let out = ok(
        d,
        &[
            "cert",
            "revoke",
            "--ca",
            "pki",
            "dev1.pem",
            "--reason",
            "keyCompromise",
            "--days",
            "3",
        ],
    );
    assert!(out.contains("revoked dev1.pem"), "{out}");
    assert!(out.contains("reason keyCompromise"), "{out}");
    assert!(out.contains("pki/ca.crl"), "{out}");
    assert!(out.contains("crl = [\"pki/ca.crl\"]"), "{out}");
    assert!(out.contains("CRL number 1"), "{out}");

    // openssl reads it: signed by the CA, the serial with its reason, a next update.
    let crl = crl_text(d);
    let serial1 = serial_of(d, "dev1.pem");
    assert!(
        crl.to_ascii_lowercase().contains(&serial1),
        "{serial1} not in\n{crl}"
    );
    assert!(crl.contains("Key Compromise"), "{crl}");
    assert!(crl.contains("Next Update"), "{crl}");
    let verify = openssl(
        d,
        &[
            "crl",
            "-in",
            "pki/ca.crl",
            "-noout",
            "-CAfile",
            "pki/ca.pem",
        ],
    );
    assert!(text(&verify).contains("verify OK"), "{}", text(&verify));
    // ...and applies it: dev1 is revoked, dev2 is not.
    let check = |cert: &str| {
        openssl(
            d,
            &[
                "verify",
                "-crl_check",
                "-CAfile",
                "pki/ca.pem",
                "-CRLfile",
                "pki/ca.crl",
                cert,
            ],
        )
    };
    let dev1 = check("dev1.pem");
    assert!(!dev1.status.success(), "{}", text(&dev1));
    assert!(text(&dev1).contains("revoked"), "{}", text(&dev1));
    assert!(check("dev2.pem").status.success());

    // By serial (the certificate file is gone); again: no duplicate, a new CRL number.
    let serial2 = serial_of(d, "dev2.pem");
    let out = ok(d, &["cert", "revoke", "--ca", "pki", "--serial", &serial2]);
    assert!(out.contains("CRL number 2, 2 revoked"), "{out}");
    let out = ok(d, &["cert", "revoke", "--ca", "pki", "dev1.pem"]);
    assert!(out.contains("already revoked"), "{out}");
    assert!(out.contains("CRL number 3, 2 revoked"), "{out}");
    let record = std::fs::read_to_string(d.join("pki/revoked.toml")).unwrap();
    assert!(record.contains("keyCompromise"), "{record}");

    // `moat cert crl` signs again: same revocations, a new number.
    let out = ok(d, &["cert", "crl", "--ca", "pki", "--days", "2"]);
    assert!(out.contains("CRL number 4, 2 revoked"), "{out}");
    assert!(check("dev2.pem").status.code() != Some(0));
}

#[test]
fn revoke_refuses_a_certificate_of_another_ca() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    ok(d, &["cert", "ca", "--out", "pki", "--cn", "Ours"]);
    ok(d, &["cert", "ca", "--out", "other", "--cn", "Theirs"]);
    ok(
        d,
        &[
            "cert", "client", "--ca", "other", "--cn", "stranger", "--out", ".",
        ],
    );
    let out = moat(d, &["cert", "revoke", "--ca", "pki", "stranger.pem"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let msg = text(&out);
    assert!(msg.contains("was not issued by this CA"), "{msg}");
    assert!(msg.contains("CN=Theirs"), "{msg}");
    assert!(!d.join("pki/ca.crl").exists());

    let out = moat(d, &["cert", "revoke", "--ca", "pki", "--serial", "xyz"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("not a serial number"), "{}", text(&out));
    let out = moat(d, &["cert", "revoke", "--ca", "pki"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn an_encrypted_ca_key_needs_its_passphrase_file() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::write(d.join("pass"), "correct horse\n").unwrap();
    ok(
        d,
        &["cert", "ca", "--out", "pki", "--passphrase-file", "pass"],
    );
    let out = moat(d, &["cert", "crl", "--ca", "pki"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("encrypted"), "{}", text(&out));
    let out = ok(
        d,
        &["cert", "crl", "--ca", "pki", "--passphrase-file", "pass"],
    );
    assert!(out.contains("CRL number 1, 0 revoked"), "{out}");
    assert!(!out.contains("correct horse"));
}
