//! The password file against hashes made by other tools: mosquitto_passwd (committed fixtures
//! and one made at test time) and the argon2 reference implementation.

use std::path::{Path, PathBuf};
use std::process::Command;

use moat_auth::{HashScheme, Password, PasswordFile, Verdict};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn check(file: &PasswordFile, cases: &[(&str, &[u8], Verdict)]) {
    for &(user, pw, want) in cases {
        assert_eq!(
            file.verify(user, pw),
            want,
            "{user} / {:?}",
            String::from_utf8_lossy(pw)
        );
    }
}

#[test]
fn mosquitto_sha512_pbkdf2_fixture() {
    let f = PasswordFile::load(&fixture("mosquitto-pbkdf2.passwd")).unwrap();
    assert_eq!(f.len(), 2);
    check(
        &f,
        &[
            ("alice", b"secret1", Verdict::Ok),
            ("alice", b"secret2", Verdict::WrongPassword),
            ("alice", b"", Verdict::WrongPassword),
            ("bob", "p@ss:wörd".as_bytes(), Verdict::Ok),
            ("bob", b"p@ss:word", Verdict::WrongPassword),
            ("carol", b"secret1", Verdict::UnknownUser),
        ],
    );
    let schemes: Vec<_> = f.users().collect();
    assert_eq!(
        schemes,
        [
            ("alice", HashScheme::Pbkdf2Sha512),
            ("bob", HashScheme::Pbkdf2Sha512)
        ]
    );
}

#[test]
fn mosquitto_sha512_fixture() {
    let f = PasswordFile::load(&fixture("mosquitto-sha512.passwd")).unwrap();
    check(
        &f,
        &[
            ("carol", b"hunter2", Verdict::Ok),
            ("carol", b"hunter3", Verdict::WrongPassword),
            ("dave", b"", Verdict::Ok),
            ("dave", b"x", Verdict::WrongPassword),
            ("alice", b"hunter2", Verdict::UnknownUser),
        ],
    );
}

#[test]
fn argon2_reference_fixture() {
    let f = PasswordFile::load(&fixture("argon2.passwd")).unwrap();
    check(
        &f,
        &[
            ("erin", b"correct horse", Verdict::Ok),
            ("erin", b"correct horse ", Verdict::WrongPassword),
            ("frank", b"battery staple", Verdict::Ok),
            ("frank", b"battery", Verdict::WrongPassword),
            ("gina", b"gina pw", Verdict::Ok),
            ("nobody", b"gina pw", Verdict::UnknownUser),
        ],
    );
}

/// mosquitto_passwd is part of Debian's `mosquitto` package, which scripts/test.sh installs.
fn mosquitto_passwd() -> PathBuf {
    for p in [
        "/usr/bin/mosquitto_passwd",
        "/usr/local/bin/mosquitto_passwd",
    ] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!(
        "mosquitto_passwd is not installed: install Debian's `mosquitto` package (scripts/test.sh does)"
    );
}

#[test]
fn hashes_made_now_by_mosquitto_passwd() {
    let bin = mosquitto_passwd();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("passwd");
    let run = |args: &[&str]| {
        let out = Command::new(&bin).args(args).output().unwrap();
        assert!(out.status.success(), "mosquitto_passwd {args:?}: {out:?}");
    };
    let p = path.to_str().unwrap();
    run(&["-c", "-b", p, "u1", "pw one"]);
    run(&["-H", "sha512", "-b", p, "u2", "pw two"]);
    run(&["-H", "sha512-pbkdf2", "-b", p, "u3", "ünïcode"]);
    let f = PasswordFile::load(&path).unwrap();
    check(
        &f,
        &[
            ("u1", b"pw one", Verdict::Ok),
            ("u1", b"pw two", Verdict::WrongPassword),
            ("u2", b"pw two", Verdict::Ok),
            ("u2", b"pw one", Verdict::WrongPassword),
            ("u3", "ünïcode".as_bytes(), Verdict::Ok),
            ("u4", b"pw one", Verdict::UnknownUser),
        ],
    );
}

#[test]
fn save_is_0600_and_round_trips_foreign_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("passwd");
    let original = std::fs::read_to_string(fixture("mosquitto-pbkdf2.passwd")).unwrap();
    let mut f = PasswordFile::parse(&original, &path).unwrap();
    f.add("zoe", &Password::from("zoe pw")).unwrap();
    f.set_password("bob", &Password::from("new")).unwrap();
    f.save(&path).unwrap();

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let orig: Vec<&str> = original.lines().collect();
    // comments, the blank line and alice's mosquitto hash are untouched
    assert_eq!(lines[..4], orig[..4]);
    assert!(lines[4].starts_with("bob:$argon2id$"));
    assert!(lines[5].starts_with("zoe:$argon2id$"));
    let g = PasswordFile::load(&path).unwrap();
    check(
        &g,
        &[
            ("alice", b"secret1", Verdict::Ok),
            ("bob", b"new", Verdict::Ok),
            ("bob", "p@ss:wörd".as_bytes(), Verdict::WrongPassword),
            ("zoe", b"zoe pw", Verdict::Ok),
        ],
    );
    // No temporary file is left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn load_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let err = PasswordFile::load(&missing).unwrap_err();
    assert!(err.is_not_found());
    assert!(err.to_string().starts_with(missing.to_str().unwrap()));

    let bad = dir.path().join("bad");
    std::fs::write(&bad, "# ok\nalice:$7$101$AAAA\n").unwrap();
    let err = PasswordFile::load(&bad).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}:2: a `$7$` hash must be `$7$iterations$salt$hash`",
            bad.display()
        )
    );
}

/// An unknown user costs a hash of the same scheme and cost as a known one. A loose bound: a
/// missing dummy hash would make it about a thousand times cheaper.
#[test]
fn unknown_user_costs_as_much_as_a_wrong_password() {
    use std::time::Instant;
    let mut f = PasswordFile::new();
    f.add("alice", &Password::from("pw")).unwrap();
    let time = |user: &str| {
        let mut best = std::time::Duration::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            let _ = f.verify(user, b"wrong");
            best = best.min(t.elapsed());
        }
        best
    };
    let known = time("alice");
    let unknown = time("mallory");
    assert!(
        unknown * 3 > known && known * 3 > unknown,
        "known {known:?}, unknown {unknown:?}"
    );

    // The same for a mosquitto file: the dummy follows the file's scheme.
    let f = PasswordFile::load(&fixture("mosquitto-pbkdf2.passwd")).unwrap();
    assert_eq!(f.verify("nobody", b"x"), Verdict::UnknownUser);
}
