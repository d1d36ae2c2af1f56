//! Password guessing with many parallel connections: the checks of one address run one at a
//! time, each after the delay the address earned, so 64 parallel connections guess no faster
//! than one client trying again and again; what cannot be checked in time is refused with
//! "server busy", and every refusal is counted.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use moat_auth::{Password, PasswordFile};
use moat_codec::{Connect, ProtocolVersion, ReasonCode};
use moat_server::{FailureKind, ListenerConfig, Server, ServerConfig};
use moat_testkit::{connect_packet, RawClient, TestBroker, TIMEOUT};
use tokio::net::TcpSocket;

const ATTACKERS: usize = 64;
const RIGHT: &str = "correct horse battery staple";

/// A password file with one user, alice (argon2id with the default cost).
fn password_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("passwd");
    let mut file = PasswordFile::new();
    file.add("alice", &Password::from(RIGHT)).unwrap();
    file.save(&path).unwrap();
    path
}

/// A password-only listener on 127.0.0.1:0 with `passwd`.
fn config(passwd: std::path::PathBuf, connect_timeout: Duration, max_auth: usize) -> ServerConfig {
    let mut config = TestBroker::config();
    config.listeners = vec![ListenerConfig::tcp(
        "test",
        SocketAddr::from(([127, 0, 0, 1], 0)),
        false,
    )];
    config.auth.password_file = Some(passwd);
    config.connect_timeout = connect_timeout;
    config.max_concurrent_auth = max_auth;
    config
}

fn login(version: ProtocolVersion, id: &str, password: &str) -> Connect {
    let mut c = connect_packet(id, version, true);
    c.username = Some("alice".into());
    c.password = Some(bytes::Bytes::copy_from_slice(password.as_bytes()));
    c
}

/// Opens a connection to `addr` from the loopback address `from` (127.0.0.0/8 is all local).
async fn open_from(from: IpAddr, addr: SocketAddr, version: ProtocolVersion) -> RawClient {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let stream = tokio::time::timeout(TIMEOUT, socket.connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect");
    RawClient::over(stream, version)
}

/// The CONNACK code for `connect`, sent from `from`.
async fn try_login(from: IpAddr, addr: SocketAddr, connect: Connect) -> ReasonCode {
    let version = connect.protocol;
    let mut c = open_from(from, addr, version).await;
    // The broker answers within its CONNECT timeout plus one check.
    let ack = tokio::time::timeout(TIMEOUT * 2, c.handshake(connect))
        .await
        .expect("no CONNACK in time")
        .expect("closed without CONNACK");
    ack.reason_code
}

/// The delays a client trying again after each refusal waits before its n-th check (the
/// defaults of moat_auth::ThrottleConfig: 3 free failures, then 0.5 s doubling up to 5 s),
/// summed: the earliest moment its n-th check can start.
fn sequential_start(n: usize) -> Duration {
    (1..n)
        .map(|failures| match failures {
            0..=3 => Duration::ZERO,
            f => Duration::from_millis(500)
                .saturating_mul(1 << (f - 4).min(8))
                .min(Duration::from_secs(5)),
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guesses_from_one_address_are_no_faster_than_sequential_ones() {
    let dir = tempfile::tempdir().unwrap();
    let connect_timeout = Duration::from_secs(5);
    let server = Server::bind(config(password_file(dir.path()), connect_timeout, 8))
        .await
        .unwrap();
    let stats = server.auth_stats();
    let broker = TestBroker::start_server(server);
    let addr = broker.addr();
    let attacker: IpAddr = [127, 0, 0, 1].into();

    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..ATTACKERS {
        // Half speak 5.0, half 3.1.1.
        let version = if i % 2 == 0 {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V3_1_1
        };
        let connect = login(version, &format!("guess-{i}"), &format!("guess {i}"));
        tasks.push(tokio::spawn(async move {
            let code = try_login(attacker, addr, connect).await;
            (code, start.elapsed())
        }));
    }
    // Another address is not held up by the attacker's queue.
    let other = try_login(
        [127, 0, 0, 2].into(),
        addr,
        login(ProtocolVersion::V5, "legit-during", RIGHT),
    )
    .await;
    assert_eq!(other, ReasonCode::SUCCESS);

    let mut wrong = Vec::new();
    let mut busy = 0;
    for t in tasks {
        let (code, at) = t.await.unwrap();
        match code {
            // v5 0x86, and v3 4 (which decodes to 0x86).
            ReasonCode::BAD_USER_NAME_OR_PASSWORD => wrong.push(at),
            // v5 0x89; v3 3 decodes to 0x88 "server unavailable".
            ReasonCode::SERVER_BUSY | ReasonCode::SERVER_UNAVAILABLE => busy += 1,
            other => panic!("unexpected CONNACK {other:?}"),
        }
    }
    let elapsed = start.elapsed();
    wrong.sort();
    eprintln!(
        "{} checked, {busy} busy, in {elapsed:?}; refusal times {wrong:?}",
        wrong.len()
    );

    // Each check of the attacker's address started no earlier than it could have for one
    // client trying again after each refusal.
    assert!(wrong.len() >= 3, "the free failures were checked");
    for (n, at) in wrong.iter().enumerate() {
        let earliest = sequential_start(n + 1);
        assert!(
            *at >= earliest,
            "check {} answered after {at:?}, before the sequential {earliest:?}",
            n + 1
        );
    }
    // Counted: every wrong password, every busy refusal; one check ran at a time per address
    // (the attacker's and the other client's at most).
    assert_eq!(
        stats.failures(FailureKind::WrongPassword),
        wrong.len() as u64
    );
    assert_eq!(stats.failures(FailureKind::ServerBusy), busy);
    assert_eq!(wrong.len() + busy as usize, ATTACKERS);
    assert_eq!(stats.password_checks(), wrong.len() as u64 + 1);
    assert!(
        stats.peak_concurrent_checks() <= 2,
        "{}",
        stats.peak_concurrent_checks()
    );
    assert_eq!(stats.queued_addresses(), 0);

    // The broker still serves a legitimate client.
    let after = try_login(
        [127, 0, 0, 3].into(),
        addr,
        login(ProtocolVersion::V3_1_1, "legit-after", RIGHT),
    )
    .await;
    assert_eq!(after, ReasonCode::SUCCESS);
    broker.stop().await;
}
