//! `moat serve` as a user runs it: the real binary, a config file in a temp dir, and
//! third-party clients (mosquitto_pub / mosquitto_sub from Debian's mosquitto-clients).

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A `moat serve` process, killed on drop.
struct Moat {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

fn with_admin_port0(config: &str) -> String {
    if config.contains("[admin]") {
        config.to_owned()
    } else {
        format!("{config}\n[admin]\nbind = \"127.0.0.1:0\"\n")
    }
}

impl Moat {
    fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("moat.toml");
        // The admin API on an ephemeral port, so that tests can run side by side.
        std::fs::write(&path, with_admin_port0(config)).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_moat"))
            .args(["serve", "--config"])
            .arg(&path)
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moat serve");
        // The first stdout line names the bound address.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(TIMEOUT)
            .expect("moat serve printed no listener line");
        let addr = line
            .rsplit("mqtt://")
            .next()
            .unwrap()
            .trim()
            .parse()
            .expect(&line);
        Self {
            child,
            addr,
            _dir: dir,
        }
    }

    fn port(&self) -> String {
        self.addr.port().to_string()
    }

    /// SIGTERM, then the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "moat did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Moat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const ANON: &str =
    "[[listeners]]\nname = \"local\"\nbind = \"127.0.0.1:0\"\nallow_anonymous = true\n";

fn tool(name: &str) -> Command {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{name} is not installed: run scripts/test.sh, which installs mosquitto-clients"
    );
    Command::new(name)
}

fn wait_output(child: Child) -> Output {
    let deadline = Instant::now() + TIMEOUT;
    let mut child = child;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("client did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts `mosquitto_sub -C count -v`.
fn sub(moat: &Moat, version: &str, topic: &str, count: usize, extra: &[&str]) -> Child {
    let mut cmd = tool("mosquitto_sub");
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &moat.port(),
        "-V",
        version,
        "-t",
        topic,
        "-v",
    ])
    .args(["-C", &count.to_string(), "-W", "20"])
    .args(extra)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    cmd.spawn().unwrap()
}

fn publish(moat: &Moat, version: &str, args: &[&str]) {
    let out = tool("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &moat.port(), "-V", version])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mosquitto_pub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Publishes (a bounded number of times) until the subscriber has received its count and
/// exited: this waits for its subscription without sleeping for a guessed time.
fn pub_until_received(moat: &Moat, version: &str, child: Child, topic: &str, qos: &str) -> String {
    let mut child = child;
    let deadline = Instant::now() + TIMEOUT;
    let mut n = 0;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline && n < 2000,
            "subscriber never received"
        );
        publish(
            moat,
            version,
            &["-t", topic, "-m", &format!("m{n}"), "-q", qos],
        );
        n += 1;
        std::thread::sleep(Duration::from_millis(25));
    }
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    out
}

#[test]
fn mosquitto_clients_pubsub_v311_and_v5_all_qos() {
    let moat = Moat::start(ANON);
    for version in ["mqttv311", "mqttv5"] {
        for qos in ["0", "1", "2"] {
            let topic = format!("interop/{version}/{qos}");
            let child = sub(&moat, version, &topic, 1, &["-q", qos]);
            let out = pub_until_received(&moat, version, child, &topic, qos);
            assert!(
                out.starts_with(&format!("{topic} m")),
                "{version} qos {qos}: {out:?}"
            );
        }
    }
    assert!(
        moat.terminate().success(),
        "moat serve should exit 0 on SIGTERM"
    );
}

#[test]
fn mosquitto_retained_and_will() {
    let moat = Moat::start(ANON);
    publish(
        &moat,
        "mqttv311",
        &["-t", "ret/a", "-m", "kept", "-r", "-q", "1"],
    );
    let out = wait_output(sub(&moat, "mqttv5", "ret/#", 1, &[]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ret/a kept");
    // Clear it: a new subscriber gets nothing within its timeout.
    publish(
        &moat,
        "mqttv311",
        &["-t", "ret/a", "-m", "", "-r", "-q", "1"],
    );
    let out = wait_output(sub(&moat, "mqttv5", "ret/#", 1, &["-W", "1"]));
    assert!(
        out.stdout.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A will: a retained probe tells each client when its subscription is in place.
    publish(&moat, "mqttv311", &["-t", "will/probe", "-m", "here", "-r"]);
    let mut watcher = sub(&moat, "mqttv311", "will/#", 2, &[]);
    let mut watcher_lines = BufReader::new(watcher.stdout.take().unwrap()).lines();
    assert_eq!(watcher_lines.next().unwrap().unwrap(), "will/probe here");
    let mut victim = tool("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &moat.port(),
            "-t",
            "will/probe",
            "-k",
            "60",
        ])
        .args([
            "--will-topic",
            "will/victim",
            "--will-payload",
            "died",
            "--will-qos",
            "1",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut victim_lines = BufReader::new(victim.stdout.take().unwrap()).lines();
    assert_eq!(victim_lines.next().unwrap().unwrap(), "here");
    victim.kill().unwrap();
    let _ = victim.wait();
    assert_eq!(watcher_lines.next().unwrap().unwrap(), "will/victim died");
    let _ = watcher.wait();
    drop(moat);
}

#[test]
fn bad_config_names_file_key_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("moat.toml");
    std::fs::write(&path, "[[listeners]]\nbind = \"localhost:1883\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_moat"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("moat.toml"), "{err}");
    assert!(err.contains("listeners[0].bind"), "{err}");
    assert!(err.contains("IP:PORT"), "{err}");

    let missing = Command::new(env!("CARGO_BIN_EXE_moat"))
        .args(["serve", "--config"])
        .arg(dir.path().join("nope.toml"))
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nope.toml"));
}
