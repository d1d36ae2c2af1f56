//! `moat bench` with small, bounded runs against `moat serve` (TCP and TLS) and mosquitto.

#[path = "../src/tools/test_support.rs"]
mod support;

use std::path::Path;

use moat_testkit::pki::TestPki;
use support::{moat, run, text, Moat, Mosquitto, ANON};

fn bench_json(args: &[&str]) -> serde_json::Value {
    let out = run(moat().arg("bench").args(args).arg("--json"));
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {t}"))
}

fn u(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no number {key} in {v}"))
}

#[test]
fn qos_1_delivers_everything_in_order() {
    let broker = Moat::start(ANON, Path::new("."));
    let url = broker.url("local");
    let r = bench_json(&[
        "-L", &url, "--pub", "2", "--sub", "2", "--count", "2000", "-q", "1", "--size", "100",
    ]);
    assert_eq!(r["mode"], "pubsub");
    assert_eq!(u(&r, "sent"), 2000);
    assert_eq!(u(&r, "expected"), 4000);
    assert_eq!(u(&r, "received"), 4000, "{r}");
    assert_eq!(u(&r, "losses"), 0, "{r}");
    assert_eq!(u(&r, "duplicates"), 0, "{r}");
    assert_eq!(u(&r, "out_of_order"), 0, "{r}");
    let lat = &r["latency_us"];
    assert_eq!(lat["samples"].as_u64(), Some(4000), "{r}");
    let (p50, p99, max) = (u(lat, "p50"), u(lat, "p99"), u(lat, "max"));
    assert!(p50 > 0 && p50 <= p99 && p99 <= max, "{r}");
    assert!(r["sent_per_sec"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
}

/// Persistent subscribers: every QoS 1 delivery goes through the durable store.
#[test]
fn persistent_subscribers_through_the_store() {
    let broker = Moat::start(ANON, Path::new("."));
    let url = broker.url("local");
    let r = bench_json(&[
        "-L",
        &url,
        "--pub",
        "1",
        "--sub",
        "1",
        "--count",
        "1000",
        "-q",
        "1",
        "--persistent",
    ]);
    assert_eq!(u(&r, "received"), 1000, "{r}");
    assert_eq!(u(&r, "losses"), 0, "{r}");
    assert_eq!(u(&r, "duplicates"), 0, "{r}");
}

#[test]
fn qos_0_and_2_and_a_target_rate() {
    let broker = Moat::start(ANON, Path::new("."));
    let url = broker.url("local");
    let r = bench_json(&[
        "-L", &url, "--pub", "2", "--sub", "2", "--count", "2000", "-q", "0",
    ]);
    assert_eq!(u(&r, "sent"), 2000);
    // QoS 0 may drop under load; what arrived is consistent.
    assert_eq!(
        u(&r, "received") + u(&r, "losses"),
        4000 + u(&r, "duplicates"),
        "{r}"
    );
    let r = bench_json(&[
        "-L", &url, "--count", "300", "-q", "2", "--rate", "300", "-V", "5",
    ]);
    assert_eq!(u(&r, "received"), 300, "{r}");
    // 300 messages at 300/s take about a second.
    let secs = r["publish_secs"].as_f64().unwrap_or(0.0);
    assert!(secs > 0.7, "{r}");
}

#[test]
fn human_output_names_the_figures() {
    let broker = Moat::start(ANON, Path::new("."));
    let out = run(moat().args([
        "bench",
        "-L",
        &broker.url("local"),
        "--count",
        "200",
        "-q",
        "1",
    ]));
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    for word in [
        "sent",
        "msgs/s",
        "received",
        "p50",
        "p90",
        "p99",
        "max",
        "losses 0",
        "duplicates 0",
        "out of order 0",
    ] {
        assert!(t.contains(word), "{word:?} missing in {t}");
    }
}

#[test]
fn connection_storm_over_tcp_and_tls() {
    let pki = TestPki::new("Bench CA");
    let (cert, key) = pki.server("server", &["127.0.0.1"]);
    let config = format!(
        "{ANON}\n[[listeners]]\nname = \"tls\"\nkind = \"tls\"\nbind = \"127.0.0.1:0\"\nallow_anonymous = true\n[listeners.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let broker = Moat::start(&config, pki.path());
    let r = bench_json(&["-L", &broker.url("local"), "--storm", "--connections", "50"]);
    assert_eq!(r["mode"], "storm");
    assert_eq!(u(&r, "succeeded"), 50, "{r}");
    assert_eq!(u(&r, "failed"), 0, "{r}");
    assert!(
        r["connections_per_sec"].as_f64().unwrap_or(0.0) > 0.0,
        "{r}"
    );
    let ca = pki.ca_pem.to_str().expect("utf-8");
    let r = bench_json(&[
        "-L",
        &broker.url("tls"),
        "--cafile",
        ca,
        "--storm",
        "--connections",
        "50",
        "--concurrency",
        "4",
    ]);
    assert_eq!(r["tls"], true);
    assert_eq!(u(&r, "succeeded"), 50, "{r}");
    assert!(u(&r["connect_latency_us"], "p99") > 0, "{r}");
    assert_eq!(u(&r, "tls_full_handshakes"), 50, "{r}");
    assert_eq!(u(&r, "tls_resumed"), 0, "{r}");
    // With --resume, only the connections that started before any ticket came back (at most
    // one per concurrent slot) make full handshakes.
    let r = bench_json(&[
        "-L",
        &broker.url("tls"),
        "--cafile",
        ca,
        "--storm",
        "--resume",
        "--connections",
        "50",
        "--concurrency",
        "4",
    ]);
    assert_eq!(u(&r, "succeeded"), 50, "{r}");
    assert!(u(&r, "tls_full_handshakes") <= 4, "{r}");
    assert_eq!(
        u(&r, "tls_resumed") + u(&r, "tls_full_handshakes"),
        50,
        "{r}"
    );
}

#[test]
fn against_mosquitto_too() {
    let broker = Mosquitto::start("allow_anonymous true\n", &[]);
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let r = bench_json(&[
        "-L", &url, "--pub", "2", "--sub", "1", "--count", "1000", "-q", "1",
    ]);
    assert_eq!(u(&r, "received"), 1000, "{r}");
    assert_eq!(u(&r, "losses"), 0, "{r}");
}

#[test]
fn bounds_are_enforced() {
    for args in [
        &["--duration", "601"][..],
        &["--count", "20000000"],
        &["--storm", "--connections", "20001"],
        &["--size", "8"],
        &["--pub", "0"],
    ] {
        let out = run(moat().arg("bench").args(args));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
    }
    // Nothing listening: the first connection fails, in plain words.
    let port = support::free_port();
    let out = run(moat().args([
        "bench",
        "-L",
        &format!("mqtt://127.0.0.1:{port}"),
        "--count",
        "1",
    ]));
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("connection refused"), "{}", text(&out));
}
