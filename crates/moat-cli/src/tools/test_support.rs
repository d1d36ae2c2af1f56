//! Helpers for the client tools' integration tests (`tests/pubsub_cli.rs`, `check_cli.rs`,
//! `bench_cli.rs` include this file with `#[path]`; it is not part of the binary): the real
//! `moat` binary, `moat serve` with a config in a temp dir, mosquitto, and the openssl CLI.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long any process may take.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// The `moat` binary.
pub fn moat() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_moat"));
    cmd.stdin(Stdio::null());
    cmd
}

/// The finished process's output, failing the test after [`TIMEOUT`].
pub fn wait_output(mut child: Child) -> Output {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if child.try_wait().expect("poll").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "process did not finish in {TIMEOUT:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `cmd` to completion with piped output.
pub fn run(cmd: &mut Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_output(child)
}

/// stdout and stderr together, for assertions and messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A `moat serve` process, killed on drop; `listeners` maps names to URLs.
pub struct Moat {
    child: Child,
    pub listeners: HashMap<String, String>,
    pub dir: tempfile::TempDir,
}

impl Moat {
    /// Starts `moat serve` with `config` written to a temp dir; `{dir}` in it stands for
    /// `files_dir` (where test certificates are).
    pub fn start(config: &str, files_dir: &Path) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = config.replace("{dir}", &files_dir.display().to_string());
        // The admin API on an ephemeral port, so that tests can run side by side.
        if !config.contains("[admin]") {
            config.push_str("\n[admin]\nbind = \"127.0.0.1:0\"\n");
        }
        let expected = config.matches("[[listeners]]").count();
        let path = dir.path().join("moat.toml");
        std::fs::write(&path, &config).expect("write config");
        let mut child = moat()
            .args(["serve", "--config"])
            .arg(&path)
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moat serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut listeners = HashMap::new();
        while listeners.len() < expected {
            let line = rx
                .recv_timeout(TIMEOUT)
                .unwrap_or_else(|_| panic!("moat serve printed no listener line for {config}"));
            // moat: listener NAME on URL
            let mut words = line.split_whitespace();
            if let (Some("moat:"), Some("listener"), Some(name), Some("on"), Some(url)) = (
                words.next(),
                words.next(),
                words.next(),
                words.next(),
                words.next(),
            ) {
                listeners.insert(name.to_owned(), url.to_owned());
            }
        }
        Self {
            child,
            listeners,
            dir,
        }
    }

    /// The URL of listener `name`.
    pub fn url(&self, name: &str) -> String {
        self.listeners
            .get(name)
            .unwrap_or_else(|| panic!("no listener {name}: {:?}", self.listeners))
            .clone()
    }

    /// The port of listener `name`.
    pub fn port(&self, name: &str) -> u16 {
        let url = self.url(name);
        let authority = url.split("://").nth(1).expect("url");
        let authority = authority.split('/').next().expect("authority");
        authority
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port")
    }
}

impl Drop for Moat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An anonymous plain listener named "local".
pub const ANON: &str =
    "[[listeners]]\nname = \"local\"\nbind = \"127.0.0.1:0\"\nallow_anonymous = true\n";

/// A mosquitto process, killed on drop.
pub struct Mosquitto {
    child: Child,
    pub port: u16,
    log: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts mosquitto with `listener PORT 127.0.0.1` followed by `extra` (in which `{dir}`
    /// stands for a temp dir holding `files`).
    pub fn start(extra: &str, files: &[(&str, &[u8])]) -> Self {
        let bin = ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .expect("mosquitto is not installed: apt-get install -y mosquitto");
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, data) in files {
            std::fs::write(dir.path().join(name), data).expect("write file");
        }
        let port = free_port();
        let extra = extra.replace("{dir}", &dir.path().display().to_string());
        let config = dir.path().join("mosquitto.conf");
        // `user root` keeps a broker started as root from dropping privileges (and losing
        // access to the temp dir and 0600 keys); it has no effect otherwise.
        std::fs::write(
            &config,
            format!("per_listener_settings false\nlistener {port} 127.0.0.1\npersistence false\nuser root\n{extra}"),
        )
        .expect("write mosquitto.conf");
        let log = dir.path().join("mosquitto.log");
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log"))
            .spawn()
            .expect("start mosquitto");
        let mut m = Self {
            child,
            port,
            log,
            dir,
        };
        let deadline = Instant::now() + TIMEOUT;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        loop {
            if let Some(status) = m.child.try_wait().expect("poll") {
                panic!("mosquitto exited with {status}; log:\n{}", m.log());
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto did not start: {}",
                m.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A path in its temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago and that this test binary did not hand out before.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

/// Runs a command that must succeed (mosquitto_passwd, ...).
pub fn must(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed:\n{}", text(&out));
    out
}

/// Writes `data` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let path = dir.join(name);
    let mut f = File::create(&path).expect("create");
    f.write_all(data).expect("write");
    path
}
