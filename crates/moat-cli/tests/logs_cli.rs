//! What `moat serve` writes to stderr when it is not a terminal: plain text without colour
//! codes, JSON lines with `--log-format json` (or `MOAT_LOG_FORMAT=json`), and a fatal error
//! that states each cause once.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A config with one loopback listener on an ephemeral port and the store in `data`.
fn write_config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("moat.toml");
    std::fs::write(
        &path,
        "data_dir = \"data\"\n[[listeners]]\nname = \"local\"\nbind = \"127.0.0.1:0\"\n\
         [admin]\nbind = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    path
}

fn moat(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_moat"));
    cmd.args(args)
        .current_dir(dir)
        .env_remove("NO_COLOR")
        .env_remove("MOAT_LOG_FORMAT")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// A running `moat serve` (killed on drop) whose stderr is collected by a thread.
struct Serve {
    child: Child,
    stderr: std::sync::mpsc::Receiver<Vec<u8>>,
}

impl Serve {
    /// Starts it and waits for the listener line on stdout.
    fn start(mut cmd: Command) -> Self {
        let mut child = cmd.spawn().expect("start moat serve");
        let stderr = collect(child.stderr.take().unwrap());
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
        assert!(line.contains("mqtt://127.0.0.1:"), "{line}");
        Self { child, stderr }
    }

    /// SIGTERM, then the exit status and everything written to stderr.
    fn stop(mut self) -> (ExitStatus, Vec<u8>) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = wait(&mut self.child);
        let err = self.stderr.recv_timeout(TIMEOUT).expect("stderr closed");
        (status, err)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads a pipe to its end on a thread; the bytes arrive on the channel.
fn collect(mut pipe: impl Read + Send + 'static) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    rx
}

fn wait(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "moat did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn logs_to_a_pipe_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    // TERM says colours would work on a terminal; stderr is a pipe, so none.
    let mut cmd = moat(dir.path(), &["serve", "--config", config.to_str().unwrap()]);
    cmd.env("TERM", "xterm-256color");
    let (status, err) = Serve::start(cmd).stop();
    assert!(status.success(), "{status}");
    let text = String::from_utf8_lossy(&err);
    // Levels and fields are there (a WARN for the missing password file, the listener).
    assert!(
        text.contains("WARN") && text.contains("listening"),
        "{text}"
    );
    assert!(!err.contains(&0x1b), "escape codes in the log:\n{text:?}");
}

#[test]
fn json_log_lines_are_json_objects() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let config = config.to_str().unwrap();
    for (args, env) in [
        (
            vec!["serve", "--config", config, "--log-format", "json"],
            None,
        ),
        (vec!["serve", "--config", config], Some("json")),
    ] {
        let mut cmd = moat(dir.path(), &args);
        if let Some(v) = env {
            cmd.env("MOAT_LOG_FORMAT", v);
        }
        let (status, err) = Serve::start(cmd).stop();
        assert!(status.success(), "{status}");
        let text = String::from_utf8(err).expect("UTF-8 log");
        let mut listening = false;
        let mut n = 0;
        for line in text.lines() {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
            let obj = v
                .as_object()
                .unwrap_or_else(|| panic!("not an object: {line}"));
            assert!(
                obj.contains_key("level") && obj.contains_key("fields"),
                "{line}"
            );
            listening |= obj["fields"]["message"] == "listening";
            n += 1;
        }
        assert!(n >= 3 && listening, "{text}");
        assert!(!text.contains('\x1b'), "{text:?}");
    }

    // An unknown format is refused before anything starts.
    let out = moat(dir.path(), &["serve", "--config", config])
        .env("MOAT_LOG_FORMAT", "xml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("MOAT_LOG_FORMAT") && err.contains("json"),
        "{err}"
    );
}

#[test]
fn a_second_serve_on_the_same_data_dir_names_the_store_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let config = config.to_str().unwrap();
    let first = Serve::start(moat(dir.path(), &["serve", "--config", config]));

    let mut second = moat(dir.path(), &["serve", "--config", config])
        .spawn()
        .unwrap();
    let err = collect(second.stderr.take().unwrap());
    let status = wait(&mut second);
    let err = String::from_utf8(err.recv_timeout(TIMEOUT).unwrap()).unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("moat: error:"))
        .unwrap_or_else(|| panic!("no error line: {err}"));
    assert!(line.contains("in use by another process"), "{line}");
    assert_eq!(line.matches("moat.redb").count(), 1, "{line}");
    assert_eq!(line.matches("in use").count(), 1, "{line}");

    let (status, _) = first.stop();
    assert!(status.success());
}
