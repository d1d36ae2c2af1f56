//! ACL check per PUBLISH and SUBSCRIBE: 10 rules vs 10,000 (one rule per user plus a few
//! global ones). The common case must not grow with the number of rules.
//!
//! `cargo bench -p moat-auth --bench acl`

use std::fmt::Write;
use std::path::Path;

use divan::{black_box, Bencher};
use moat_auth::{Acl, Subject};

fn main() {
    divan::main();
}

/// `users` users with one rule each, plus four global rules (a deny first, so every check
/// walks past it).
fn acl(users: usize) -> Acl {
    let mut text = String::from(
        "default = \"deny\"\n\
         [[rule]]\nall = true\naction = \"both\"\npermission = \"deny\"\ntopics = [\"admin/#\"]\n\
         [[rule]]\nall = true\naction = \"subscribe\"\npermission = \"allow\"\ntopics = [\"public/#\"]\n",
    );
    for i in 0..users {
        let _ = write!(
            text,
            "[[rule]]\nuser = \"user-{i}\"\naction = \"both\"\npermission = \"allow\"\ntopics = [\"devices/user-{i}/#\"]\n"
        );
    }
    text.push_str(
        "[[rule]]\nall = true\naction = \"publish\"\npermission = \"allow\"\ntopics = [\"clients/%c/#\"]\n\
         [[rule]]\nall = true\naction = \"both\"\npermission = \"allow\"\ntopics = [\"users/%u/#\"]\n",
    );
    Acl::parse(&text, Path::new("bench.toml")).expect("valid")
}

/// Total rules: 4 global ones plus one per user.
const SIZES: [usize; 2] = [10, 10_000];

#[divan::bench(args = SIZES)]
fn publish_own_topic(bencher: Bencher<'_, '_>, rules: usize) {
    let users = rules - 4;
    let acl = acl(users);
    let name = format!("user-{}", users / 2);
    let topic = format!("devices/{name}/temperature");
    bencher.bench_local(|| {
        let s = Subject::new(Some(black_box(&name)), black_box("client-1"));
        assert!(acl.check_publish(&s, black_box(&topic)));
    });
}

#[divan::bench(args = SIZES)]
fn publish_denied(bencher: Bencher<'_, '_>, rules: usize) {
    let users = rules - 4;
    let acl = acl(users);
    let name = format!("user-{}", users / 2);
    bencher.bench_local(|| {
        let s = Subject::new(Some(black_box(&name)), black_box("client-1"));
        assert!(!acl.check_publish(&s, black_box("devices/someone-else/temperature")));
    });
}

#[divan::bench(args = SIZES)]
fn publish_substituted(bencher: Bencher<'_, '_>, rules: usize) {
    let users = rules - 4;
    let acl = acl(users);
    let name = format!("user-{}", users / 2);
    bencher.bench_local(|| {
        let s = Subject::new(Some(black_box(&name)), black_box("client-1"));
        assert!(acl.check_publish(&s, black_box("clients/client-1/status")));
    });
}

#[divan::bench(args = SIZES)]
fn subscribe_wildcard(bencher: Bencher<'_, '_>, rules: usize) {
    let users = rules - 4;
    let acl = acl(users);
    let name = format!("user-{}", users / 2);
    let filter = format!("devices/{name}/+/state");
    bencher.bench_local(|| {
        let s = Subject::new(Some(black_box(&name)), black_box("client-1"));
        assert!(acl.check_subscribe(&s, black_box(&filter)));
    });
}
