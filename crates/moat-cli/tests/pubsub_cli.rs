//! `moat pub` and `moat sub` against `moat serve` (TCP, TLS, mutual TLS, WebSocket) and
//! against mosquitto, interoperating with mosquitto_pub and mosquitto_sub both ways.

#[path = "../src/tools/test_support.rs"]
mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use moat_testkit::pki::TestPki;
use support::{moat, must, run, text, wait_output, Moat, Mosquitto, ANON, TIMEOUT};

/// Starts a subscriber whose stderr says when it is subscribed (`marker`), and waits for that.
fn start_subscriber(mut cmd: Command, marker: &'static str) -> Child {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start subscriber");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains(marker) {
                let _ = tx.send(Ok(()));
            }
            seen.push(line);
        }
        let _ = tx.send(Err(seen.join("\n")));
    });
    match rx.recv_timeout(TIMEOUT) {
        Ok(Ok(())) => child,
        Ok(Err(stderr)) => panic!("the subscriber ended before subscribing:\n{stderr}"),
        Err(_) => panic!("the subscriber did not subscribe within {TIMEOUT:?}"),
    }
}

/// `moat sub -d ...` started and subscribed.
fn moat_sub(args: &[&str]) -> Child {
    let mut cmd = moat();
    cmd.arg("sub").arg("-d").args(args);
    start_subscriber(cmd, "subscribed to")
}

fn moat_pub(args: &[&str]) -> Output {
    let out = run(moat().arg("pub").args(args));
    assert!(out.status.success(), "moat pub {args:?}:\n{}", text(&out));
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn finished(child: Child) -> Output {
    let out = wait_output(child);
    assert!(out.status.success(), "subscriber failed:\n{}", text(&out));
    out
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

#[test]
fn pub_and_sub_over_tcp_in_3_1_1_and_5() {
    let broker = Moat::start(ANON, Path::new("."));
    let port = broker.port("local").to_string();
    for version in ["mqttv311", "mqttv5", "5", "311"] {
        let sub = moat_sub(&[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            version,
            "-t",
            "t/#",
            "-v",
            "-C",
            "2",
            "-q",
            "1",
            "-W",
            "30",
        ]);
        moat_pub(&[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            version,
            "-t",
            "t/a",
            "-m",
            "hello",
            "-q",
            "1",
        ]);
        moat_pub(&[
            "-L",
            &format!("mqtt://127.0.0.1:{port}/t/b"),
            "-V",
            version,
            "-m",
            "world",
            "-q",
            "2",
        ]);
        let out = finished(sub);
        assert_eq!(stdout(&out), "t/a hello\nt/b world\n", "{version}");
    }
}

#[test]
fn pub_message_sources() {
    let broker = Moat::start(ANON, Path::new("."));
    let port = broker.port("local").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = support::write(dir.path(), "payload.bin", b"from a file");
    let sub = moat_sub(&["-p", &port, "-t", "src/#", "-v", "-C", "6", "-W", "30"]);
    // -l: one message per line.
    let mut child = moat()
        .args(["pub", "-p", &port, "-t", "src/lines", "-l", "-q", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("moat pub -l");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"one\ntwo\nthree\n")
        .expect("write stdin");
    let out = wait_output(child);
    assert!(out.status.success(), "{}", text(&out));
    // -s: all of stdin as one message.
    let mut child = moat()
        .args(["pub", "-p", &port, "-t", "src/stdin", "-s"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("moat pub -s");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"a\nb")
        .expect("write stdin");
    let out = wait_output(child);
    assert!(out.status.success(), "{}", text(&out));
    moat_pub(&["-p", &port, "-t", "src/file", "-f", p(&file)]);
    moat_pub(&["-p", &port, "-t", "src/null", "-n"]);
    let out = finished(sub);
    assert_eq!(
        stdout(&out),
        "src/lines one\nsrc/lines two\nsrc/lines three\nsrc/stdin a\nb\nsrc/file from a file\nsrc/null \n"
    );
}

#[test]
fn retained_messages_and_no_retained_flag() {
    let broker = Moat::start(ANON, Path::new("."));
    let port = broker.port("local").to_string();
    moat_pub(&["-p", &port, "-t", "ret/x", "-m", "kept", "-r", "-q", "1"]);
    let out = run(moat().args(["sub", "-p", &port, "-t", "ret/#", "-C", "1", "-W", "20"]));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(stdout(&out), "kept\n");
    // -R: stale retained messages are not printed; -W then ends the wait with exit 1.
    let out = run(moat().args([
        "sub", "-p", &port, "-t", "ret/#", "-C", "1", "-W", "1", "-R",
    ]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(stdout(&out), "");
    assert!(text(&out).contains("timed out after 1 s"), "{}", text(&out));
}

#[test]
fn pub_and_sub_over_tls_mutual_tls_and_websocket() {
    let pki = TestPki::new("PubSub CA");
    let (cert, key) = pki.server("server", &["localhost", "127.0.0.1"]);
    let (ccert, ckey) = pki.client("dev1");
    let config = format!(
        "{ANON}
[[listeners]]
name = \"tls\"
kind = \"tls\"
bind = \"127.0.0.1:0\"
allow_anonymous = true
[listeners.tls]
cert = \"{cert}\"
key = \"{key}\"

[[listeners]]
name = \"mtls\"
kind = \"tls\"
bind = \"127.0.0.1:0\"
allow_anonymous = true
[listeners.tls]
cert = \"{cert}\"
key = \"{key}\"
client_auth = \"required\"
client_ca = \"{ca}\"

[[listeners]]
name = \"ws\"
kind = \"ws\"
bind = \"127.0.0.1:0\"
allow_anonymous = true

[[listeners]]
name = \"wss\"
kind = \"wss\"
bind = \"127.0.0.1:0\"
allow_anonymous = true
[listeners.tls]
cert = \"{cert}\"
key = \"{key}\"
",
        cert = cert.display(),
        key = key.display(),
        ca = pki.ca_pem.display()
    );
    let broker = Moat::start(&config, pki.path());
    let ca = p(&pki.ca_pem);
    let tls = broker.url("tls");
    let mtls = broker.url("mtls");
    let ws = broker.url("ws");
    let wss = broker.url("wss");
    let sub = moat_sub(&[
        "-L", &tls, "--cafile", ca, "-t", "sec/#", "-v", "-C", "4", "-W", "30",
    ]);
    moat_pub(&["-L", &tls, "--cafile", ca, "-t", "sec/tls", "-m", "1"]);
    moat_pub(&[
        "-L",
        &mtls,
        "--cafile",
        ca,
        "--cert",
        p(&ccert),
        "--key",
        p(&ckey),
        "-t",
        "sec/mtls",
        "-m",
        "2",
    ]);
    moat_pub(&["-L", &ws, "-t", "sec/ws", "-m", "3", "-V", "5"]);
    moat_pub(&["-L", &wss, "--cafile", ca, "-t", "sec/wss", "-m", "4"]);
    let out = finished(sub);
    assert_eq!(stdout(&out), "sec/tls 1\nsec/mtls 2\nsec/ws 3\nsec/wss 4\n");

    // -h/-p with --cafile means TLS, mosquitto style.
    let port = broker.port("tls").to_string();
    moat_pub(&[
        "-h",
        "localhost",
        "-p",
        &port,
        "--cafile",
        ca,
        "-t",
        "x",
        "-m",
        "y",
    ]);

    // mTLS without a client certificate: refused, in plain words, exit 1.
    let out = run(moat().args(["pub", "-L", &mtls, "--cafile", ca, "-t", "x", "-m", "y"]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("requires a client certificate"),
        "{}",
        text(&out)
    );
    // The wrong CA: the certificate is refused, and moat check is suggested.
    let other = TestPki::new("Other CA");
    let out = run(moat().args([
        "pub",
        "-L",
        &tls,
        "--cafile",
        p(&other.ca_pem),
        "-t",
        "x",
        "-m",
        "y",
    ]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("moat check"), "{}", text(&out));
    // --insecure without --cafile accepts it.
    moat_pub(&["-L", &tls, "--insecure", "-t", "x", "-m", "y"]);
}

/// mosquitto_sub, subscribed; the receiver yields its message lines once it exits.
fn mosquitto_sub_ready(
    port: u16,
    version: &str,
    topic: &str,
    count: &str,
) -> (Child, std::sync::mpsc::Receiver<Vec<String>>) {
    // mosquitto_sub -d writes its debug lines to stdout, before and among the messages.
    // Line-buffered (stdbuf), so the SUBACK line arrives when it is written.
    let mut child = Command::new("stdbuf")
        .args([
            "-oL",
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-V",
            version,
            "-t",
            topic,
            "-v",
            "-C",
            count,
            "-W",
            "30",
            "-d",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub");
    let stdout = child.stdout.take().expect("stdout");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("received SUBACK") {
                let _ = ready_tx.send(true);
            }
            lines.push(line);
        }
        let _ = ready_tx.send(false);
        let _ = lines_tx.send(lines);
    });
    let ready = ready_rx
        .recv_timeout(TIMEOUT)
        .expect("mosquitto_sub did not subscribe");
    assert!(ready, "mosquitto_sub ended before subscribing");
    (child, lines_rx)
}

/// The message lines (`topic payload`) among mosquitto_sub's output.
fn messages(lines: &std::sync::mpsc::Receiver<Vec<String>>, prefix: &str) -> Vec<String> {
    lines
        .recv_timeout(TIMEOUT)
        .expect("mosquitto_sub output")
        .into_iter()
        .filter(|l| l.starts_with(prefix))
        .collect()
}

#[test]
fn interop_with_mosquitto_both_ways() {
    let broker = Mosquitto::start("allow_anonymous true\n", &[]);
    let port = broker.port.to_string();
    for version in ["mqttv311", "mqttv5"] {
        // mosquitto_pub -> mosquitto -> moat sub
        let sub = moat_sub(&[
            "-p", &port, "-V", version, "-t", "m/#", "-v", "-C", "2", "-q", "2", "-W", "30",
        ]);
        for (t, m, q) in [("m/a", "x", "1"), ("m/b", "y", "2")] {
            must(Command::new("mosquitto_pub").args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-V",
                version,
                "-t",
                t,
                "-m",
                m,
                "-q",
                q,
            ]));
        }
        let out = finished(sub);
        assert_eq!(stdout(&out), "m/a x\nm/b y\n", "{version}");

        // moat pub -> mosquitto -> mosquitto_sub
        let (sub, lines) = mosquitto_sub_ready(broker.port, version, "n/#", "2");
        moat_pub(&[
            "-p", &port, "-V", version, "-t", "n/a", "-m", "one", "-q", "1",
        ]);
        moat_pub(&[
            "-p", &port, "-V", version, "-t", "n/b", "-m", "two", "-q", "2",
        ]);
        let out = wait_output(sub);
        assert!(out.status.success(), "mosquitto_sub: {}", text(&out));
        assert_eq!(messages(&lines, "n/"), ["n/a one", "n/b two"], "{version}");
    }
}

#[test]
fn interop_with_moat_serve_and_mosquitto_clients() {
    let broker = Moat::start(ANON, Path::new("."));
    let port = broker.port("local");
    let (sub, lines) = mosquitto_sub_ready(port, "mqttv5", "k/#", "1");
    moat_pub(&[
        "-p",
        &port.to_string(),
        "-V",
        "5",
        "-t",
        "k/1",
        "-m",
        "hi",
        "-q",
        "1",
    ]);
    let out = wait_output(sub);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(messages(&lines, "k/"), ["k/1 hi"]);
}

#[test]
fn errors_in_plain_words() {
    let dir = tempfile::tempdir().expect("tempdir");
    let passwd = dir.path().join("passwd");
    must(
        Command::new("mosquitto_passwd")
            .args(["-b", "-c"])
            .arg(&passwd)
            .args(["alice", "wonderland"]),
    );
    let data = std::fs::read(&passwd).expect("passwd");
    let broker = Mosquitto::start(
        "allow_anonymous false\npassword_file {dir}/passwd\n",
        &[("passwd", &data)],
    );
    let port = broker.port.to_string();
    let out = run(moat().args([
        "pub", "-p", &port, "-u", "alice", "-P", "nope", "-t", "x", "-m", "y", "-V", "5",
    ]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("bad user name or password"),
        "{}",
        text(&out)
    );
    let out = run(moat().args(["sub", "-p", &port, "-t", "x", "-C", "1"]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("not authorized"), "{}", text(&out));
    let pw = support::write(dir.path(), "pw", b"wonderland\n");
    moat_pub(&[
        "-p",
        &port,
        "-u",
        "alice",
        "--password-file",
        p(&pw),
        "-t",
        "x",
        "-m",
        "y",
    ]);

    // Nothing listening: exit 1; usage errors: exit 2.
    let free = support::free_port().to_string();
    let out = run(moat().args(["pub", "-h", "127.0.0.1", "-p", &free, "-t", "x", "-m", "y"]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("connection refused"), "{}", text(&out));
    let out = run(moat().args(["pub", "-p", &port, "-m", "no topic"]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = run(moat().args(["pub", "-p", &port, "-t", "x"]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = run(moat().args(["sub", "-p", &port, "-q", "3", "-t", "x"]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = run(moat().args(["pub", "--help"]));
    assert!(out.status.success());
    assert!(stdout(&out).contains("--host"), "{}", text(&out));
}
