//! Private PostgreSQL and nats-server instances for tests (feature `testing`).
//!
//! Each server lives in its own temporary directory, listens on 127.0.0.1 on a free port, and
//! is stopped by pid when dropped. Both can be killed (SIGKILL) and started again on the same
//! port and storage, which is how tests cut a sink off its backend.
//!
//! PostgreSQL refuses to run as root: when the tests run as root, `initdb` and `postgres` run
//! as the `postgres` user (Debian's package creates it), or `nobody`, and the directory is
//! given to that user.

use std::fs;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to accept connections.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long a stopping server may take before it is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// Between two readiness probes.
const POLL: Duration = Duration::from_millis(50);

/// The user name of the private PostgreSQL's superuser.
pub const PG_USER: &str = "moat";
/// Its password (password authentication over TCP, so tests exercise `password_file`).
pub const PG_PASSWORD: &str = "moat-test-password";

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The first of `name` on PATH, then in each of `dirs` (globs of one `*` level allowed).
fn find_binary(name: &str, extra: &[&str]) -> io::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut candidates: Vec<PathBuf> = std::env::split_paths(&path).map(|d| d.join(name)).collect();
    for dir in extra {
        if let Some((head, tail)) = dir.split_once('*') {
            // /usr/lib/postgresql/*/bin: newest version first.
            let mut found: Vec<PathBuf> = fs::read_dir(head)
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .map(|e| e.path().join(tail.trim_start_matches('/')).join(name))
                        .collect()
                })
                .unwrap_or_default();
            found.sort();
            candidates.extend(found.into_iter().rev());
        } else {
            candidates.push(Path::new(dir).join(name));
        }
    }
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{name} not found on PATH or in {extra:?}; scripts/test.sh installs it"),
        )
    })
}

/// The user to run PostgreSQL as: none when not root, else `postgres` or `nobody`.
fn unprivileged_user() -> io::Result<Option<(u32, u32)>> {
    // The owner of /proc/self is this process's effective user.
    if fs::metadata("/proc/self")?.uid() != 0 {
        return Ok(None);
    }
    let passwd = fs::read_to_string("/etc/passwd")?;
    for wanted in ["postgres", "nobody"] {
        for line in passwd.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() > 3 && f[0] == wanted {
                if let (Ok(uid), Ok(gid)) = (f[2].parse(), f[3].parse()) {
                    return Ok(Some((uid, gid)));
                }
            }
        }
    }
    Err(io::Error::other(
        "running as root and there is no postgres or nobody user to run PostgreSQL as",
    ))
}

fn chown_tree(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    if path.is_dir() {
        for e in fs::read_dir(path)? {
            chown_tree(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}

fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .stderr(Stdio::null())
        .status();
}

/// Sends `sig`, waits up to [`STOP_DEADLINE`], then SIGKILL.
fn stop(child: &mut Child, sig: &str) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    signal(child, sig);
    let deadline = Instant::now() + STOP_DEADLINE;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(POLL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A private PostgreSQL server (superuser [`PG_USER`], password [`PG_PASSWORD`]).
pub struct PgServer {
    dir: tempfile::TempDir,
    port: u16,
    run_as: Option<(u32, u32)>,
    postgres: PathBuf,
    /// `-c name=value` settings given to every start.
    settings: Vec<String>,
    child: Option<Child>,
}

impl PgServer {
    /// Like [`PgServer::start`], with TLS on (`ssl = on`) serving this certificate chain and
    /// key (PEM); clients may still connect without TLS.
    ///
    /// # Errors
    /// As [`PgServer::start`].
    pub async fn start_with_tls(cert_pem: &str, key_pem: &str) -> io::Result<Self> {
        Self::start_inner(Some((cert_pem, key_pem))).await
    }

    /// Runs `initdb` into a new temporary directory and starts the server.
    ///
    /// # Errors
    /// When the binaries are missing, `initdb` fails or the server does not accept connections
    /// within a minute (the error quotes its log).
    pub async fn start() -> io::Result<Self> {
        Self::start_inner(None).await
    }

    async fn start_inner(tls: Option<(&str, &str)>) -> io::Result<Self> {
        let dirs = ["/usr/lib/postgresql/*/bin"];
        let initdb = find_binary("initdb", &dirs)?;
        let postgres = find_binary("postgres", &dirs)?;
        let run_as = unprivileged_user()?;
        let dir = tempfile::Builder::new().prefix("moat-pg-").tempdir()?;
        fs::create_dir(dir.path().join("sock"))?;
        fs::write(dir.path().join("pwfile"), PG_PASSWORD)?;
        if let Some((uid, gid)) = run_as {
            chown_tree(dir.path(), uid, gid)?;
        }
        let mut cmd = Command::new(&initdb);
        cmd.arg("-D")
            .arg(dir.path().join("data"))
            .args(["-U", PG_USER, "-E", "UTF8", "--locale=C", "--no-sync"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg("--pwfile")
            .arg(dir.path().join("pwfile"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some((uid, gid)) = run_as {
            cmd.uid(uid).gid(gid);
        }
        let out = cmd.output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let mut settings = Vec::new();
        if let Some((cert, key)) = tls {
            let (cert_path, key_path) =
                (dir.path().join("server.crt"), dir.path().join("server.key"));
            fs::write(&cert_path, cert)?;
            fs::write(&key_path, key)?;
            // PostgreSQL refuses a key others can read.
            fs::set_permissions(
                &key_path,
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )?;
            if let Some((uid, gid)) = run_as {
                chown_tree(&cert_path, uid, gid)?;
                chown_tree(&key_path, uid, gid)?;
            }
            settings.push("ssl=on".to_owned());
            settings.push(format!("ssl_cert_file={}", cert_path.display()));
            settings.push(format!("ssl_key_file={}", key_path.display()));
        }
        let mut server = Self {
            dir,
            port: free_port()?,
            run_as,
            postgres,
            settings,
            child: None,
        };
        server.spawn_and_wait().await?;
        Ok(server)
    }

    async fn spawn_and_wait(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + START_DEADLINE;
        let log = self.dir.path().join("postgres.log");
        loop {
            let mut cmd = Command::new(&self.postgres);
            cmd.arg("-D")
                .arg(self.dir.path().join("data"))
                .arg("-k")
                .arg(self.dir.path().join("sock"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(self.settings.iter().flat_map(|s| ["-c", s.as_str()]))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(
                    fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&log)?,
                );
            if let Some((uid, gid)) = self.run_as {
                cmd.uid(uid).gid(gid);
            }
            let mut child = cmd.spawn()?;
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    // After a SIGKILL the old backends may hold shared memory for a moment:
                    // start again until the deadline.
                    if Instant::now() > deadline {
                        return Err(io::Error::other(format!(
                            "postgres exited ({status}):\n{}",
                            log_tail(&log)
                        )));
                    }
                    tokio::time::sleep(POLL).await;
                    break;
                }
                if self.try_connect().await.is_ok() {
                    self.child = Some(child);
                    return Ok(());
                }
                if Instant::now() > deadline {
                    stop(&mut child, "KILL");
                    return Err(io::Error::other(format!(
                        "postgres did not accept connections within {START_DEADLINE:?}:\n{}",
                        log_tail(&log)
                    )));
                }
                tokio::time::sleep(POLL).await;
            }
        }
    }

    async fn try_connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user(PG_USER)
            .password(PG_PASSWORD)
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(5))
            .connect(tokio_postgres::NoTls)
            .await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// A new client connection, for checking what the sink wrote.
    ///
    /// # Errors
    /// When the server does not accept it.
    pub async fn client(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        self.try_connect().await
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgresql://moat@127.0.0.1:PORT/postgres` (no password: see [`PG_PASSWORD`]).
    pub fn url(&self) -> String {
        format!("postgresql://{PG_USER}@127.0.0.1:{}/postgres", self.port)
    }

    /// Kills the server with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and data directory (after [`PgServer::kill`]).
    ///
    /// # Errors
    /// As [`PgServer::start`].
    pub async fn restart(&mut self) -> io::Result<()> {
        self.kill();
        self.spawn_and_wait().await
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGINT is PostgreSQL's "fast" shutdown (SIGTERM would wait for clients).
            stop(&mut child, "INT");
        }
    }
}

/// A private nats-server with JetStream.
pub struct NatsServer {
    dir: tempfile::TempDir,
    port: u16,
    binary: PathBuf,
    /// Whether clients must use TLS.
    tls: bool,
    /// `--user`, `--pass` when clients must authenticate.
    auth: Option<(String, String)>,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts `nats-server -js` in a new temporary directory.
    ///
    /// # Errors
    /// When the binary is missing or the server does not answer within a minute.
    pub async fn start() -> io::Result<Self> {
        Self::start_inner(None, None).await
    }

    /// Like [`NatsServer::start`], requiring TLS from clients with this certificate chain and
    /// key (PEM).
    ///
    /// # Errors
    /// As [`NatsServer::start`].
    pub async fn start_with_tls(cert_pem: &str, key_pem: &str) -> io::Result<Self> {
        Self::start_inner(Some((cert_pem, key_pem)), None).await
    }

    /// Like [`NatsServer::start`], requiring this user name and password from clients.
    ///
    /// # Errors
    /// As [`NatsServer::start`].
    pub async fn start_with_user(user: &str, password: &str) -> io::Result<Self> {
        Self::start_inner(None, Some((user.to_owned(), password.to_owned()))).await
    }

    async fn start_inner(
        tls: Option<(&str, &str)>,
        auth: Option<(String, String)>,
    ) -> io::Result<Self> {
        let binary = find_binary("nats-server", &["/usr/sbin", "/usr/local/sbin"])?;
        let dir = tempfile::Builder::new().prefix("moat-nats-").tempdir()?;
        if let Some((cert, key)) = tls {
            fs::write(dir.path().join("server.crt"), cert)?;
            fs::write(dir.path().join("server.key"), key)?;
        }
        let mut server = Self {
            dir,
            port: free_port()?,
            binary,
            tls: tls.is_some(),
            auth,
            child: None,
        };
        server.spawn_and_wait().await?;
        Ok(server)
    }

    async fn spawn_and_wait(&mut self) -> io::Result<()> {
        let log = self.dir.path().join("nats.log");
        let mut cmd = Command::new(&self.binary);
        cmd.args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("-sd")
            .arg(self.dir.path().join("js"));
        if self.tls {
            cmd.arg("--tls")
                .arg("--tlscert")
                .arg(self.dir.path().join("server.crt"))
                .arg("--tlskey")
                .arg(self.dir.path().join("server.key"));
        }
        if let Some((user, pass)) = &self.auth {
            cmd.args(["--user", user, "--pass", pass]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)?,
            )
            .spawn()?;
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(io::Error::other(format!(
                    "nats-server exited ({status}):\n{}",
                    log_tail(&log)
                )));
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() && self.jetstream_ready().await
            {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                stop(&mut child, "KILL");
                return Err(io::Error::other(format!(
                    "nats-server did not answer within {START_DEADLINE:?}:\n{}",
                    log_tail(&log)
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn jetstream_ready(&self) -> bool {
        if self.tls || self.auth.is_some() {
            // A plain client cannot ask; the server logs this once JetStream is up.
            let log = fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default();
            return log.contains("Server is ready");
        }
        let Ok(client) = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .connect(self.url().as_str())
            .await
        else {
            return false;
        };
        // A raw account-info request: JetStream answers once it is up (the typed
        // query_account does not parse nats-server 2.9's answer).
        match client.request("$JS.API.INFO", bytes::Bytes::new()).await {
            Ok(reply) => {
                !reply.payload.is_empty() && !reply.payload.windows(7).any(|w| w == b"\"error\"")
            }
            Err(_) => false,
        }
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A new JetStream context, for checking what the sink wrote.
    ///
    /// # Errors
    /// When the server does not accept the connection.
    pub async fn jetstream(
        &self,
    ) -> Result<async_nats::jetstream::Context, async_nats::ConnectError> {
        Ok(async_nats::jetstream::new(
            async_nats::connect(self.url()).await?,
        ))
    }

    /// Kills the server with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and storage directory.
    ///
    /// # Errors
    /// As [`NatsServer::start`].
    pub async fn restart(&mut self) -> io::Result<()> {
        self.kill();
        self.spawn_and_wait().await
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop(&mut child, "TERM");
        }
    }
}
