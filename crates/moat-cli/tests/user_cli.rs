//! `moat user` as a user runs it: the real binary in a temp dir.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use moat_auth::{PasswordFile, Verdict};

fn moat(dir: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_moat"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run moat");
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        // The command may exit before reading (exit 1 on an existing user).
        let _ = input.write_all(s.as_bytes());
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn add_passwd_remove_list_in_the_default_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let out = moat(d, &["user", "add", "alice", "--stdin"], Some("first pw\n"));
    assert_eq!(code(&out), 0, "{}", text(&out));
    let path = d.join("moat-data/passwd");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let file = PasswordFile::load(&path).unwrap();
    assert_eq!(file.verify("alice", b"first pw"), Verdict::Ok);
    assert!(std::fs::read_to_string(&path)
        .unwrap()
        .starts_with("alice:$argon2id$v=19$m=19456,t=2,p=1$"));

    // The same user again: a problem, exit 1, the file unchanged.
    let before = std::fs::read_to_string(&path).unwrap();
    let out = moat(d, &["user", "add", "alice", "--stdin"], Some("x\n"));
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(text(&out).contains("already exists"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), before);

    // A second user from a password file; CRLF is trimmed.
    std::fs::write(d.join("pw.txt"), "bob pw\r\nsecond line\n").unwrap();
    let out = moat(
        d,
        &["user", "add", "bob", "--password-file", "pw.txt"],
        None,
    );
    assert_eq!(code(&out), 0, "{}", text(&out));

    let out = moat(
        d,
        &["user", "passwd", "alice", "--stdin"],
        Some("second pw"),
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    let file = PasswordFile::load(&path).unwrap();
    assert_eq!(file.verify("alice", b"second pw"), Verdict::Ok);
    assert_eq!(file.verify("alice", b"first pw"), Verdict::WrongPassword);
    assert_eq!(file.verify("bob", b"bob pw"), Verdict::Ok);

    let out = moat(d, &["user", "list"], None);
    assert_eq!(code(&out), 0);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "alice\nbob\n");
    let out = moat(d, &["user", "list", "--long"], None);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "alice\targon2\nbob\targon2\n"
    );

    let out = moat(d, &["user", "remove", "alice"], None);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let out = moat(d, &["user", "remove", "alice"], None);
    assert_eq!(code(&out), 1, "{}", text(&out));
    let out = moat(d, &["user", "passwd", "alice", "--stdin"], Some("x"));
    assert_eq!(code(&out), 1, "{}", text(&out));
    let out = moat(d, &["user", "list"], None);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "bob\n");

    // Nothing printed ever holds a hash or a password.
    for args in [&["user", "list", "-l"][..], &["user", "remove", "bob"]] {
        let t = text(&moat(d, args, None));
        assert!(!t.contains('$') && !t.contains("bob pw"), "{t}");
    }
}

#[test]
fn keeps_a_mosquitto_file_and_its_comments() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../moat-auth/tests/fixtures/mosquitto-pbkdf2.passwd");
    let original = std::fs::read_to_string(fixture).unwrap();
    std::fs::write(d.join("passwd"), &original).unwrap();
    let out = moat(
        d,
        &["user", "--file", "passwd", "add", "carol", "--stdin"],
        Some("c\n"),
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    let now = std::fs::read_to_string(d.join("passwd")).unwrap();
    assert!(now.starts_with(&original), "{now}");
    let out = moat(d, &["user", "list", "-l", "-f", "passwd"], None);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "alice\tsha512-pbkdf2\nbob\tsha512-pbkdf2\ncarol\targon2\n"
    );
}

#[test]
fn usage_and_io_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: &[(&[&str], Option<&str>, &str)] = &[
        // no terminal to prompt on, and no other source given
        (&["user", "add", "alice"], None, "--password-file"),
        // empty password
        (&["user", "add", "alice", "--stdin"], Some("\n"), "empty"),
        // the password is never an argument
        (
            &["user", "add", "alice", "secret"],
            None,
            "unexpected argument",
        ),
        (
            &["user", "add", "alice", "--password", "secret"],
            None,
            "unexpected argument",
        ),
        // both sources
        (
            &["user", "add", "a", "--stdin", "--password-file", "x"],
            None,
            "cannot be used with",
        ),
        // a name that cannot be a line of the file
        (
            &["user", "add", "a:b", "--stdin"],
            Some("pw"),
            "invalid user name",
        ),
        // a missing password file
        (
            &["user", "add", "a", "--password-file", "nope"],
            None,
            "nope",
        ),
        // no password file yet
        (&["user", "list"], None, "moat user add"),
        (&["user", "remove", "a"], None, "No such file"),
    ];
    for (args, stdin, needle) in cases {
        let out = moat(d, args, *stdin);
        assert_eq!(code(&out), 2, "{args:?}: {}", text(&out));
        assert!(text(&out).contains(needle), "{args:?}: {}", text(&out));
    }
    assert!(!d.join("moat-data/passwd").exists());

    // An invalid file is reported with its line, and left alone.
    std::fs::write(d.join("bad"), "# c\nalice\n").unwrap();
    let out = moat(d, &["user", "add", "b", "-f", "bad", "--stdin"], Some("pw"));
    assert_eq!(code(&out), 2);
    assert!(
        text(&out).contains("bad:2: expected `username:hash`"),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read_to_string(d.join("bad")).unwrap(),
        "# c\nalice\n"
    );
}
