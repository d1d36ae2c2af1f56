//! Subscription matching: the cost must follow the topic's depth and the matches, not the number
//! of unrelated subscriptions. Run: `cargo bench -p moat-core --bench tree`.

use divan::{black_box, Bencher};
use moat_core::topic::Filter;
use moat_core::tree::{Match, SubscriptionTree};

fn main() {
    divan::main();
}

/// `n` devices, each subscribed to its own command topic and its own wildcard, plus a few
/// global wildcards.
fn tree(n: u32) -> SubscriptionTree<u32, ()> {
    let mut t = SubscriptionTree::new();
    for i in 0..n {
        t.insert(&Filter::parse(&format!("devices/{i}/cmd")).unwrap(), i, ());
        t.insert(
            &Filter::parse(&format!("devices/{i}/config/#")).unwrap(),
            i,
            (),
        );
    }
    t.insert(&Filter::parse("devices/+/telemetry").unwrap(), n, ());
    t.insert(&Filter::parse("$SYS/#").unwrap(), n + 1, ());
    t
}

#[divan::bench(args = [100, 10_000, 100_000])]
fn match_one_device_topic(bencher: Bencher, n: u32) {
    let mut t = tree(n);
    let topic = format!("devices/{}/cmd", n / 2);
    bencher.bench_local(|| {
        let mut hits = 0u32;
        t.for_each_match(black_box(&topic), |m| {
            if let Match::Plain(..) = m {
                hits += 1;
            }
        });
        hits
    });
}

#[divan::bench(args = [100, 10_000, 100_000])]
fn match_wildcard_fanin(bencher: Bencher, n: u32) {
    let mut t = tree(n);
    let topic = format!("devices/{}/telemetry", n / 3);
    bencher.bench_local(|| {
        let mut hits = 0u32;
        t.for_each_match(black_box(&topic), |_| hits += 1);
        hits
    });
}
