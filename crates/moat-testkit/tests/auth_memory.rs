//! Memory under a password-guessing storm from many addresses: argon2id takes 19 MiB per
//! check while it runs, and at most `max_concurrent_auth` run at once, so the broker's memory
//! grows by about that many times 19 MiB, not by 19 MiB per connection (192 parallel CONNECTs
//! once took a broker from 58 MB to 3.4 GB).
//!
//! Alone in its file: the test reads its own process's peak memory (the broker runs in it).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use moat_auth::password::ARGON2_M_COST_KIB;
use moat_auth::{Password, PasswordFile};
use moat_codec::{ProtocolVersion, ReasonCode};
use moat_server::{FailureKind, ListenerConfig, Server};
use moat_testkit::{connect_packet, RawClient, TestBroker, TIMEOUT};
use tokio::net::TcpSocket;

const ATTACKERS: u8 = 48;
const MAX_AUTH: usize = 2;
/// Thread stacks, connection tasks, allocator slack.
const MARGIN_KIB: u64 = 48 * 1024;

/// `VmHWM` (peak) and `VmRSS` of this process, in KiB.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/self/status"))
    };
    (field("VmHWM:"), field("VmRSS:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guesses_from_many_addresses_take_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    let mut file = PasswordFile::new();
    file.add("alice", &Password::from("right")).unwrap();
    file.save(&passwd).unwrap();

    let mut config = TestBroker::config();
    config.listeners = vec![ListenerConfig::tcp(
        "test",
        SocketAddr::from(([127, 0, 0, 1], 0)),
        false,
    )];
    config.auth.password_file = Some(passwd);
    config.max_concurrent_auth = MAX_AUTH;
    config.connect_timeout = Duration::from_secs(15);
    let server = Server::bind(config).await.unwrap();
    let stats = server.auth_stats();
    let broker = TestBroker::start_server(server);
    let addr = broker.addr();

    // Start the peak afresh where the kernel allows it (Linux 4.0+), else it only counts
    // higher than before.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let (peak_before, rss_before) = memory();

    let mut tasks = Vec::new();
    for i in 0..ATTACKERS {
        // One connection from each of many addresses: no per-address queue holds them back,
        // only the global bound.
        let from = IpAddr::from([127, 0, 1, i + 1]);
        tasks.push(tokio::spawn(async move {
            let socket = TcpSocket::new_v4().unwrap();
            socket.bind(SocketAddr::new(from, 0)).unwrap();
            let stream = tokio::time::timeout(TIMEOUT, socket.connect(addr))
                .await
                .expect("connect timed out")
                .expect("connect");
            let mut c = RawClient::over(stream, ProtocolVersion::V5);
            let mut connect = connect_packet(&format!("c{i}"), ProtocolVersion::V5, true);
            connect.username = Some("alice".into());
            connect.password = Some(bytes::Bytes::from(format!("guess {i}")));
            tokio::time::timeout(TIMEOUT * 2, c.handshake(connect))
                .await
                .expect("no CONNACK in time")
                .expect("closed without CONNACK")
                .reason_code
        }));
    }
    let mut checked = 0u64;
    for t in tasks {
        match t.await.unwrap() {
            ReasonCode::BAD_USER_NAME_OR_PASSWORD => checked += 1,
            ReasonCode::SERVER_BUSY => {}
            other => panic!("unexpected CONNACK {other:?}"),
        }
    }
    let (peak_after, rss_after) = memory();
    eprintln!(
        "threads {}",
        std::fs::read_dir("/proc/self/task").unwrap().count()
    );
    let bound = MAX_AUTH as u64 * u64::from(ARGON2_M_COST_KIB) + MARGIN_KIB;
    eprintln!(
        "{checked} checked; peak {peak_before} -> {peak_after} KiB, rss {rss_before} -> \
         {rss_after} KiB; bound +{bound} KiB"
    );
    assert!(checked >= MAX_AUTH as u64, "real checks ran");
    assert_eq!(stats.failures(FailureKind::WrongPassword), checked);
    assert!(stats.peak_concurrent_checks() <= MAX_AUTH);
    assert!(
        peak_after.saturating_sub(peak_before) <= bound,
        "peak grew by {} KiB, more than {bound}",
        peak_after - peak_before
    );
    assert!(
        rss_after.saturating_sub(rss_before) <= bound,
        "memory kept grew by {} KiB, more than {bound}",
        rss_after - rss_before
    );
    broker.stop().await;
}
