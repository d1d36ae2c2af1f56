//! `moat pub` and `moat sub`: command-line clients with the flags mosquitto_pub and
//! mosquitto_sub users know.
//!
//! Exit codes: 0 done; 1 the broker or the network failed us (refused, closed, a `-W` timeout);
//! 2 usage or local I/O errors.

use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use moat_client::transport::{self, Target};
use moat_client::{
    Client, ConnectOptions, LastWill, Properties, ProtocolVersion, Publish, QoS, RetainHandling,
    SubscriptionOptions,
};

#[path = "tools/common.rs"]
pub(crate) mod common;

use common::TlsArgs;

/// Connection flags shared by `moat pub` and `moat sub`.
#[derive(Debug, clap::Args)]
pub(crate) struct ConnArgs {
    /// Broker host.
    #[arg(short = 'h', long, default_value = "localhost", conflicts_with = "url")]
    host: String,
    /// Broker port (default 1883, or the URL scheme's port).
    #[arg(short = 'p', long)]
    port: Option<u16>,
    /// Broker URL: mqtt://, mqtts://, ws://, wss:// [user[:password]@]host[:port][/topic or /path].
    #[arg(short = 'L', long = "url", value_name = "URL")]
    url: Option<String>,
    /// MQTT version: mqttv5, mqttv311 (default) or mqttv31.
    #[arg(short = 'V', long = "protocol-version", value_parser = common::parse_version, default_value = "mqttv311")]
    version: ProtocolVersion,
    /// Client id (default: moat-pub-RANDOM / moat-sub-RANDOM).
    #[arg(short = 'i', long = "id")]
    id: Option<String>,
    /// Keep alive in seconds.
    #[arg(short = 'k', long = "keepalive", default_value_t = 60)]
    keepalive: u16,
    /// User name.
    #[arg(short = 'u', long)]
    username: Option<String>,
    /// Password (visible to `ps`: prefer --password-file).
    #[arg(short = 'P', long = "pw")]
    password: Option<String>,
    /// Read the password from the first line of this file.
    #[arg(long, value_name = "FILE", conflicts_with = "password")]
    password_file: Option<PathBuf>,
    /// Keep the session: clean session / clean start off (needs -i).
    #[arg(short = 'c', long = "disable-clean-session")]
    keep_session: bool,
    /// Session expiry interval in seconds (v5).
    #[arg(short = 'x', long = "session-expiry")]
    session_expiry: Option<u32>,
    /// Quality of service: 0, 1 or 2.
    #[arg(short = 'q', long, value_parser = common::parse_qos, default_value = "0")]
    qos: QoS,
    /// Print what is sent and received to stderr.
    #[arg(short = 'd', long)]
    debug: bool,
    /// Print no error messages.
    #[arg(long)]
    quiet: bool,
    /// Will topic.
    #[arg(long)]
    will_topic: Option<String>,
    /// Will payload.
    #[arg(long, requires = "will_topic")]
    will_payload: Option<String>,
    /// Will QoS.
    #[arg(long, value_parser = common::parse_qos, default_value = "0")]
    will_qos: QoS,
    /// Retain the will.
    #[arg(long)]
    will_retain: bool,
    /// Seconds to wait for the connection and the CONNACK.
    #[arg(long, default_value_t = 10)]
    connect_timeout: u64,
    #[command(flatten)]
    tls: TlsArgs,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

/// Flags of `moat pub`.
#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true)]
pub(crate) struct PubArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Topic to publish to.
    #[arg(short = 't', long)]
    topic: Option<String>,
    /// The message.
    #[arg(short = 'm', long, group = "source")]
    message: Option<String>,
    /// Send the contents of a file as the message.
    #[arg(short = 'f', long, group = "source")]
    file: Option<PathBuf>,
    /// Send each line of standard input as a message.
    #[arg(short = 'l', long = "stdin-line", group = "source")]
    lines: bool,
    /// Send all of standard input as one message.
    #[arg(short = 's', long = "stdin-file", group = "source")]
    stdin: bool,
    /// Send an empty (null) message.
    #[arg(short = 'n', long = "null-message", group = "source")]
    null: bool,
    /// Retain the message.
    #[arg(short = 'r', long)]
    retain: bool,
}

/// Flags of `moat sub`.
#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true)]
pub(crate) struct SubArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Topic filter to subscribe to (repeatable).
    #[arg(short = 't', long)]
    topic: Vec<String>,
    /// Print the topic before the payload.
    #[arg(short = 'v', long)]
    verbose: bool,
    /// Exit after this many messages.
    #[arg(short = 'C', long = "count")]
    count: Option<u64>,
    /// Exit (with code 1) after this many seconds.
    #[arg(short = 'W', long = "timeout")]
    timeout: Option<u64>,
    /// No newline after each payload.
    #[arg(short = 'N')]
    no_newline: bool,
    /// Do not print stale retained messages.
    #[arg(short = 'R')]
    no_retained: bool,
    /// Only print retained messages: exit at the first message that is not.
    #[arg(long)]
    retained_only: bool,
}

/// Runs `moat pub`.
pub(crate) fn run_pub(args: PubArgs) -> anyhow::Result<ExitCode> {
    let quiet = args.conn.quiet;
    let plan = Prepared::new(&args.conn, "pub")?;
    let topic = args
        .topic
        .clone()
        .or_else(|| plan.target.topic.clone())
        .context("give a topic with -t TOPIC (or in the URL: mqtt://host/TOPIC)")?;
    let source = if let Some(m) = &args.message {
        Source::One(Bytes::from(m.clone()))
    } else if let Some(f) = &args.file {
        Source::One(Bytes::from(
            std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?,
        ))
    } else if args.stdin {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("cannot read standard input")?;
        Source::One(Bytes::from(buf))
    } else if args.null {
        Source::One(Bytes::new())
    } else if args.lines {
        Source::Lines
    } else {
        bail!(
            "give the message: -m TEXT, -f FILE, -s (stdin), -l (a message per line) or -n (empty)"
        )
    };
    let rt = common::runtime(1)?;
    rt.block_on(async move {
        let client = match plan.connect().await {
            Ok(c) => c,
            Err(msg) => return Ok(fail(quiet, &msg)),
        };
        let qos = args.conn.qos;
        let result = match source {
            Source::One(payload) => {
                publish(&client, &topic, payload, qos, args.retain, plan.debug).await
            }
            Source::Lines => {
                let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<String>>(64);
                std::thread::spawn(move || {
                    for line in std::io::stdin().lock().lines() {
                        let end = line.is_err();
                        if tx.blocking_send(line).is_err() || end {
                            break;
                        }
                    }
                });
                let mut result = Ok(());
                while let Some(line) = rx.recv().await {
                    let line = line.context("cannot read standard input")?;
                    result = publish(
                        &client,
                        &topic,
                        Bytes::from(line),
                        qos,
                        args.retain,
                        plan.debug,
                    )
                    .await;
                    if result.is_err() {
                        break;
                    }
                }
                result
            }
        };
        if let Err(msg) = result {
            return Ok(fail(quiet, &msg));
        }
        let _ = client.disconnect().await;
        Ok(ExitCode::SUCCESS)
    })
}

/// Runs `moat sub`.
pub(crate) fn run_sub(args: SubArgs) -> anyhow::Result<ExitCode> {
    let quiet = args.conn.quiet;
    let plan = Prepared::new(&args.conn, "sub")?;
    let mut filters = args.topic.clone();
    if filters.is_empty() {
        filters.extend(plan.target.topic.clone());
    }
    if filters.is_empty() {
        bail!("give at least one topic filter with -t FILTER (or in the URL: mqtt://host/FILTER)");
    }
    let rt = common::runtime(1)?;
    rt.block_on(async move {
        let client = match plan.connect().await {
            Ok(c) => c,
            Err(msg) => return Ok(fail(quiet, &msg)),
        };
        let opts = SubscriptionOptions {
            qos: args.conn.qos,
            retain_handling: if args.no_retained {
                RetainHandling::DoNotSend
            } else {
                RetainHandling::default()
            },
            ..SubscriptionOptions::default()
        };
        let pairs: Vec<(&str, SubscriptionOptions)> =
            filters.iter().map(|f| (f.as_str(), opts)).collect();
        let suback = match client.subscribe(&pairs).await {
            Ok(s) => s,
            Err(e) => {
                return Ok(fail(
                    quiet,
                    &common::explain_client_error(&e, plan.has_credentials, plan.has_password),
                ))
            }
        };
        for (filter, rc) in filters.iter().zip(&suback.reason_codes) {
            if rc.is_error() {
                let msg = format!(
                    "the broker refused the subscription to {filter}: {} (0x{:02X})\n  fix: \
                     the broker's ACL does not allow this client to subscribe to it",
                    rc.description(),
                    rc.0
                );
                return Ok(fail(quiet, &msg));
            }
            if plan.debug {
                eprintln!("moat sub: subscribed to {filter} (granted {})", rc.0);
            }
        }
        let deadline = args
            .timeout
            .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
        let mut received = 0u64;
        let mut out = std::io::stdout().lock();
        let code = loop {
            if args.count.is_some_and(|c| received >= c) {
                break ExitCode::SUCCESS;
            }
            let next = match deadline {
                Some(d) => match tokio::time::timeout_at(d, client.recv()).await {
                    Ok(r) => r,
                    Err(_) => {
                        if !quiet {
                            eprintln!(
                                "moat sub: timed out after {} s ({received} messages received)",
                                args.timeout.unwrap_or_default()
                            );
                        }
                        break ExitCode::from(1);
                    }
                },
                None => client.recv().await,
            };
            let message = match next {
                Ok(Some(m)) => m,
                Ok(None) => break ExitCode::SUCCESS,
                Err(e) => {
                    break fail(
                        quiet,
                        &common::explain_client_error(&e, plan.has_credentials, plan.has_password),
                    )
                }
            };
            if args.retained_only && !message.retain {
                break ExitCode::SUCCESS;
            }
            if args.no_retained && message.retain {
                continue;
            }
            if plan.debug {
                eprintln!(
                    "moat sub: received PUBLISH (q{}, r{}, {} bytes) on {}",
                    message.qos as u8,
                    u8::from(message.retain),
                    message.payload.len(),
                    message.topic
                );
            }
            if print_message(&mut out, &message, args.verbose, !args.no_newline).is_err() {
                // stdout closed (a pipe into `head`): stop quietly.
                break ExitCode::SUCCESS;
            }
            received += 1;
        };
        drop(out);
        let _ = client.disconnect().await;
        Ok(code)
    })
}

enum Source {
    One(Bytes),
    Lines,
}

fn print_message(
    out: &mut impl Write,
    message: &Publish,
    verbose: bool,
    newline: bool,
) -> std::io::Result<()> {
    if verbose {
        out.write_all(message.topic.as_bytes())?;
        out.write_all(b" ")?;
    }
    out.write_all(&message.payload)?;
    if newline {
        out.write_all(b"\n")?;
    }
    out.flush()
}

async fn publish(
    client: &Client,
    topic: &str,
    payload: Bytes,
    qos: QoS,
    retain: bool,
    debug: bool,
) -> Result<(), String> {
    let len = payload.len();
    let publish = Publish {
        dup: false,
        qos,
        retain,
        topic: topic.to_owned(),
        packet_id: None,
        properties: Properties::default(),
        payload,
    };
    let outcome = match client.publish_with(publish).await {
        Err(moat_client::ClientError::PublishRejected(rc)) => Ok(rc),
        other => other,
    };
    match outcome {
        Ok(rc) if rc.is_error() => Err(format!(
            "the broker refused the message to {topic}: {} (0x{:02X})\n  fix: the broker's ACL \
             may not allow this client to publish there",
            rc.description(),
            rc.0
        )),
        Ok(rc) => {
            if debug {
                eprintln!(
                    "moat pub: sent PUBLISH (q{}, r{}, {len} bytes) to {topic}: {}",
                    qos as u8,
                    u8::from(retain),
                    rc.description()
                );
            }
            Ok(())
        }
        Err(e) => Err(common::explain_client_error(&e, false, false)),
    }
}

fn fail(quiet: bool, msg: &str) -> ExitCode {
    if !quiet {
        eprintln!("moat: {msg}");
    }
    ExitCode::from(1)
}

/// A connection, ready to be opened.
struct Prepared {
    target: Target,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    opts: ConnectOptions,
    has_credentials: bool,
    has_password: bool,
    debug: bool,
    timeout: Duration,
}

impl Prepared {
    fn new(conn: &ConnArgs, tool: &str) -> anyhow::Result<Self> {
        let tls_opts = conn.tls.options()?;
        let target = common::target(conn.url.as_deref(), &conn.host, conn.port, &tls_opts)?;
        let tls = if target.scheme.is_tls() {
            Some(transport::client_config(&tls_opts, None)?)
        } else {
            if tls_opts.is_set() && !conn.quiet {
                eprintln!(
                    "moat: warning: TLS flags are ignored for {}: use mqtts:// or wss://",
                    target.scheme
                );
            }
            None
        };
        let id = conn
            .id
            .clone()
            .unwrap_or_else(|| format!("moat-{tool}-{}", common::random_suffix()));
        if conn.keep_session && conn.id.is_none() {
            bail!("-c (keep the session) needs a client id: add -i ID");
        }
        let username = conn.username.clone().or_else(|| target.username.clone());
        if conn.password.is_some() {
            common::warn_password_flag(conn.quiet);
        }
        let password = match (&conn.password, &conn.password_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(f)) => Some(common::read_password_file(f)?),
            (None, None) => target.password.clone(),
        };
        if password.is_some() && username.is_none() {
            bail!("a password needs a user name: add -u NAME");
        }
        let mut opts = ConnectOptions::new(id)
            .protocol(conn.version)
            .keep_alive(conn.keepalive)
            .clean_start(!conn.keep_session);
        opts.connect_timeout = Duration::from_secs(conn.connect_timeout.max(1));
        opts.username = username;
        opts.password = password.map(Bytes::from);
        if let Some(s) = conn.session_expiry {
            opts = opts.session_expiry(s);
        }
        if let Some(topic) = &conn.will_topic {
            opts = opts.will(LastWill {
                topic: topic.clone(),
                payload: Bytes::from(conn.will_payload.clone().unwrap_or_default()),
                qos: conn.will_qos,
                retain: conn.will_retain,
                properties: Properties::default(),
            });
        }
        let has_credentials = opts.username.is_some() || tls_opts.cert.is_some();
        let has_password = opts.password.is_some();
        Ok(Self {
            target,
            tls,
            opts,
            has_credentials,
            has_password,
            debug: conn.debug,
            timeout: Duration::from_secs(conn.connect_timeout.max(1)),
        })
    }

    /// Opens the transport and connects; the error is in plain words.
    async fn connect(&self) -> Result<Client, String> {
        if self.debug {
            eprintln!(
                "moat: connecting to {} as {} ({})",
                self.target, self.opts.client_id, self.opts.protocol
            );
        }
        let io = transport::open_with(&self.target, self.tls.as_ref(), self.timeout)
            .await
            .map_err(|e| common::explain_transport_error(&e, &self.target))?;
        match Client::connect(io, self.opts.clone()).await {
            Ok((client, connack)) => {
                if self.debug {
                    eprintln!(
                        "moat: connected (session present: {})",
                        connack.session_present
                    );
                }
                Ok(client)
            }
            Err(e) => Err(common::explain_client_error(
                &e,
                self.has_credentials,
                self.has_password,
            )),
        }
    }
}
