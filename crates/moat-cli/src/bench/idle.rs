//! `moat bench --idle N`: open N connections that then stay idle (CONNECT, CONNACK, and nothing
//! more for `--hold` seconds), for the memory a broker spends per idle client. With
//! `--broker-pid` the broker's resident memory (Linux `/proc/PID/status`, VmRSS) is read before
//! the first connection and once all are open, and the difference per connection is reported.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{wire::Connected, BenchArgs, Plan};

/// The broker's resident set size in bytes, from `/proc/PID/status`.
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

pub(super) async fn idle(plan: Arc<Plan>, args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let total = args.connections;
    let before = args.broker_pid.and_then(rss_bytes);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency.min(total) {
        let plan = Arc::clone(&plan);
        let next = Arc::clone(&next);
        tasks.push(tokio::spawn(async move {
            let mut open: Vec<Connected> = Vec::new();
            let mut first_error = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= u64::from(total) {
                    break;
                }
                match plan
                    .open(format!("moat-idle-{}-{i}", plan.run_id), None)
                    .await
                {
                    Ok(c) => open.push(c),
                    Err(e) => {
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
            (open, first_error)
        }));
    }
    let mut open = Vec::new();
    let mut first_error = None;
    for t in tasks {
        if let Ok((mut o, e)) = t.await {
            open.append(&mut o);
            if first_error.is_none() {
                first_error = e;
            }
        }
    }
    let connect_secs = start.elapsed().as_secs_f64();
    let opened = open.len();
    // Let the broker settle (handshake buffers released, tasks parked), then measure.
    tokio::time::sleep(Duration::from_secs(args.hold.max(1))).await;
    let after = args.broker_pid.and_then(rss_bytes);
    let per_conn = match (before, after) {
        (Some(b), Some(a)) if opened > 0 => Some(a.saturating_sub(b) as f64 / opened as f64),
        _ => None,
    };
    drop(open);
    let report = json!({
        "mode": "idle",
        "url": plan.target.to_string(),
        "tls": plan.target.scheme.is_tls(),
        "connections": total,
        "opened": opened,
        "failed": total as usize - opened,
        "connect_secs": connect_secs,
        "broker_rss_before": before,
        "broker_rss_after": after,
        "broker_bytes_per_connection": per_conn,
        "first_error": first_error,
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "moat bench --idle {}: {opened} of {total} connections open ({:.1} s to connect)",
            plan.target, connect_secs
        );
        if let (Some(b), Some(a), Some(p)) = (before, after, per_conn) {
            println!(
                "broker RSS {:.1} MiB -> {:.1} MiB: {:.0} bytes ({:.2} KiB) per idle connection",
                b as f64 / 1048576.0,
                a as f64 / 1048576.0,
                p,
                p / 1024.0
            );
        }
        if let Some(e) = &first_error {
            println!("first error: {e}");
        }
    }
    Ok(if opened < total as usize {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
