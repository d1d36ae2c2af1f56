use std::path::Path;

use super::*;

/// Made by `mosquitto_passwd -b`: alice / secret1 (fast to verify, unlike argon2id).
const PASSWD: &str = "alice:$7$101$dOZc6WBFVkKHJqPj$fOADZ+c5xJPImDt3S9jmASsH4hGAvOlaP7ua8OuAZzpkJX9sggAUYTBTSQH7ef5grhKX9nqN9VV6GrQ09kEnzA==\n";

const ACL: &str = r#"
[groups]
sensors = ["dev-001"]
[bindings]
"dev-001" = ["10.3.0.0/24"]
"alice" = ["127.0.0.1", "::1"]
"#;

fn files() -> (PasswordFile, Acl) {
    (
        PasswordFile::parse(PASSWD, Path::new("passwd")).unwrap(),
        Acl::parse(ACL, Path::new("acl.toml")).unwrap(),
    )
}

fn req<'a>(
    user: Option<&'a str>,
    pw: Option<&'a str>,
    cert: Option<&'a str>,
    ip: &str,
) -> AuthRequest<'a> {
    AuthRequest {
        username: user,
        password: pw.map(str::as_bytes),
        cert_identity: cert,
        peer_ip: ip.parse().unwrap(),
    }
}

const LOCAL: &str = "127.0.0.1";

#[test]
fn decisions() {
    let (pw, acl) = files();
    let open = ListenerPolicy {
        proof: Proof::Either,
        allow_anonymous: true,
        identity_as_username: false,
    };
    let either = ListenerPolicy {
        allow_anonymous: false,
        identity_as_username: true,
        ..open
    };
    let password = ListenerPolicy {
        proof: Proof::Password,
        ..either
    };
    let cert = ListenerPolicy {
        proof: Proof::Certificate,
        ..either
    };
    let both = ListenerPolicy {
        proof: Proof::Both,
        ..either
    };
    let cert_unmapped = ListenerPolicy {
        identity_as_username: false,
        ..cert
    };
    type Want = Result<Option<&'static str>, (FailureKind, u8)>;
    let bad = |k| Err((k, 0x86));
    let denied = |k| Err((k, 0x87));
    let cases: Vec<(&str, ListenerPolicy, AuthRequest<'_>, Want)> = vec![
        (
            "anonymous allowed",
            open,
            req(None, None, None, LOCAL),
            Ok(None),
        ),
        (
            "anonymous refused",
            either,
            req(None, None, None, LOCAL),
            denied(FailureKind::AnonymousNotAllowed),
        ),
        (
            "right password",
            password,
            req(Some("alice"), Some("secret1"), None, LOCAL),
            Ok(Some("alice")),
        ),
        (
            "right password on open",
            open,
            req(Some("alice"), Some("secret1"), None, LOCAL),
            Ok(Some("alice")),
        ),
        (
            "wrong password",
            password,
            req(Some("alice"), Some("secret2"), None, LOCAL),
            bad(FailureKind::WrongPassword),
        ),
        (
            "wrong password on open",
            open,
            req(Some("alice"), Some("nope"), None, LOCAL),
            bad(FailureKind::WrongPassword),
        ),
        (
            "unknown user",
            password,
            req(Some("zed"), Some("secret1"), None, LOCAL),
            bad(FailureKind::UnknownUser),
        ),
        (
            "user without password",
            password,
            req(Some("alice"), None, None, LOCAL),
            bad(FailureKind::IncompleteCredentials),
        ),
        (
            "password without user",
            password,
            req(None, Some("x"), None, LOCAL),
            bad(FailureKind::IncompleteCredentials),
        ),
        (
            "cert on password listener",
            password,
            req(None, None, Some("dev-001"), "10.3.0.1"),
            denied(FailureKind::PasswordRequired),
        ),
        (
            "cert",
            cert,
            req(None, None, Some("dev-001"), "10.3.0.1"),
            Ok(Some("dev-001")),
        ),
        (
            "cert with its own name",
            cert,
            req(Some("dev-001"), None, Some("dev-001"), "10.3.0.1"),
            Ok(Some("dev-001")),
        ),
        (
            "cert with another name",
            cert,
            req(Some("dev-002"), None, Some("dev-001"), "10.3.0.1"),
            denied(FailureKind::IdentityMismatch),
        ),
        (
            "cert from elsewhere",
            cert,
            req(None, None, Some("dev-001"), "10.4.0.1"),
            denied(FailureKind::AddressNotAllowed),
        ),
        (
            "cert from mapped v6",
            cert,
            req(None, None, Some("dev-001"), "::ffff:10.3.0.9"),
            Ok(Some("dev-001")),
        ),
        (
            "no cert on cert listener",
            cert,
            req(Some("alice"), Some("secret1"), None, LOCAL),
            denied(FailureKind::CertificateRequired),
        ),
        (
            "unmapped cert",
            cert_unmapped,
            req(None, None, Some("dev-001"), "10.3.0.1"),
            Ok(None),
        ),
        (
            "unmapped cert still bound",
            cert_unmapped,
            req(None, None, Some("dev-001"), "10.4.0.1"),
            denied(FailureKind::AddressNotAllowed),
        ),
        (
            "either: cert",
            either,
            req(None, None, Some("dev-009"), LOCAL),
            Ok(Some("dev-009")),
        ),
        (
            "either: password",
            either,
            req(Some("alice"), Some("secret1"), None, LOCAL),
            Ok(Some("alice")),
        ),
        (
            "either: bad password with cert",
            either,
            req(Some("alice"), Some("x"), Some("alice"), LOCAL),
            bad(FailureKind::WrongPassword),
        ),
        (
            "both",
            both,
            req(Some("alice"), Some("secret1"), Some("alice"), LOCAL),
            Ok(Some("alice")),
        ),
        (
            "both: cert missing",
            both,
            req(Some("alice"), Some("secret1"), None, LOCAL),
            denied(FailureKind::CertificateRequired),
        ),
        (
            "both: password missing",
            both,
            req(None, None, Some("alice"), LOCAL),
            denied(FailureKind::PasswordRequired),
        ),
        (
            "both: names differ",
            both,
            req(Some("alice"), Some("secret1"), Some("dev-009"), LOCAL),
            denied(FailureKind::IdentityMismatch),
        ),
        (
            "user bound elsewhere",
            password,
            req(Some("alice"), Some("secret1"), None, "10.0.0.1"),
            denied(FailureKind::AddressNotAllowed),
        ),
        (
            "user bound, v6 loopback",
            password,
            req(Some("alice"), Some("secret1"), None, "::1"),
            Ok(Some("alice")),
        ),
    ];
    for (name, policy, r, want) in cases {
        let got = policy
            .authenticate(&r, Some(&pw), Some(&acl))
            .map(|p| p.username)
            .map_err(|f| (FailureKind::of(&f), f.reason_code().0));
        let want = want.map(|u| u.map(str::to_owned));
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn groups_and_codes() {
    let (pw, acl) = files();
    let cert = ListenerPolicy {
        proof: Proof::Certificate,
        allow_anonymous: false,
        identity_as_username: true,
    };
    let p = cert
        .authenticate(
            &req(None, None, Some("dev-001"), "10.3.0.1"),
            Some(&pw),
            Some(&acl),
        )
        .unwrap();
    assert_eq!(p.groups, ["sensors"]);
    assert_eq!(p.cert_identity.as_deref(), Some("dev-001"));

    let f = ListenerPolicy::default()
        .authenticate(&req(Some("a"), Some("b"), None, LOCAL), None, None)
        .unwrap_err();
    assert_eq!(f, AuthFailure::NoPasswordFile);
    assert_eq!(f.v3_return_code(), 4);
    assert_eq!(AuthFailure::AnonymousNotAllowed.v3_return_code(), 5);
    // Busy: v5 0x89, v3 3 (server unavailable), its own counter.
    assert_eq!(AuthFailure::ServerBusy.reason_code().0, 0x89);
    assert_eq!(AuthFailure::ServerBusy.v3_return_code(), 3);
    assert_eq!(AuthFailure::ServerBusy.counter_name(), "server_busy");
    assert_eq!(
        AuthFailure::AnonymousNotAllowed.counter_name(),
        "anonymous_not_allowed"
    );

    let counters = FailureCounters::new();
    counters.record(&f);
    counters.record(&f);
    counters.record(&AuthFailure::CertificateRequired);
    assert_eq!(counters.get(FailureKind::NoPasswordFile), 2);
    assert_eq!(counters.snapshot().iter().map(|(_, n)| n).sum::<u64>(), 3);
}

#[test]
fn request_debug_hides_the_password() {
    let r = req(Some("alice"), Some("secret1"), None, LOCAL);
    let d = format!("{r:?}");
    assert!(!d.contains("secret1") && d.contains("<redacted>"), "{d}");
}
