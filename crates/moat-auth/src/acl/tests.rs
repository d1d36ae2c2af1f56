use std::path::Path;

use super::*;

fn acl(text: &str) -> Acl {
    Acl::parse(text, Path::new("acl.toml")).unwrap_or_else(|e| panic!("{e}"))
}

const FILE: &str = r##"
default = "deny"

[groups]
sensors = ["dev-001", "dev-002"]
admins = ["alice"]

[bindings]
"dev-001" = ["10.3.0.0/24"]

[[rule]]
user = "mallory"
action = "both"
permission = "deny"
topics = ["#"]

[[rule]]
group = "admins"
action = "both"
permission = "allow"
topics = ["#", "$SYS/#"]

[[rule]]
group = "sensors"
action = "publish"
permission = "allow"
topics = ["sensors/%u/#"]

[[rule]]
all = true
action = "subscribe"
permission = "deny"
topics = ["secret/#"]

[[rule]]
all = true
action = "subscribe"
permission = "allow"
topics = ["public/#", "a/#", "x/+/c", "+/b", "users/%u/#", "clients/%c/#"]

[[rule]]
client_id = "logger"
action = "subscribe"
permission = "allow"
topics = ["secret/logs"]

[[rule]]
anonymous = true
action = "publish"
permission = "allow"
topics = ["anon/%c"]

[[rule]]
identity = "dev-003"
action = "publish"
permission = "allow"
topics = ["sensors/dev-003/#"]
"##;

#[test]
fn publish_table() {
    let acl = acl(FILE);
    let cases: &[(Option<&str>, &str, &str, bool)] = &[
        // group rule with %u
        (Some("dev-001"), "c", "sensors/dev-001/temp", true),
        (Some("dev-001"), "c", "sensors/dev-001", true),
        (Some("dev-001"), "c", "sensors/dev-002/temp", false),
        (Some("dev-002"), "c", "sensors/dev-002/temp", true),
        (Some("dev-009"), "c", "sensors/dev-009/temp", false),
        // the user selector's alias `identity`
        (Some("dev-003"), "c", "sensors/dev-003/x", true),
        // admins get everything, $SYS only because it is listed
        (Some("alice"), "c", "anything/at/all", true),
        (Some("alice"), "c", "$SYS/broker/x", true),
        // first match wins: mallory's deny comes before everything
        (Some("mallory"), "c", "public/x", false),
        // subscribe-only rules don't allow publishing
        (Some("bob"), "c", "public/x", false),
        // anonymous rule with %c
        (None, "c9", "anon/c9", true),
        (None, "c9", "anon/c8", false),
        (Some("bob"), "c9", "anon/c9", false),
        // default deny
        (None, "c9", "other", false),
    ];
    for &(user, client, topic, want) in cases {
        let s = Subject::new(user, client);
        assert_eq!(
            acl.check_publish(&s, topic),
            want,
            "{user:?}/{client} publish {topic}"
        );
    }
}

#[test]
fn subscribe_table() {
    let acl = acl(FILE);
    let cases: &[(Option<&str>, &str, &str, bool)] = &[
        (Some("bob"), "c", "public/x", true),
        (Some("bob"), "c", "public/#", true),
        (Some("bob"), "c", "public", true),
        // a/# covers a/+/c
        (Some("bob"), "c", "a/+/c", true),
        // x/+/c covers x/1/c and x/+/c but not x/#
        (Some("bob"), "c", "x/1/c", true),
        (Some("bob"), "c", "x/+/c", true),
        (Some("bob"), "c", "x/#", false),
        (Some("bob"), "c", "x/+/+", false),
        // +/b covers x/b and +/b but not # nor +/#
        (Some("bob"), "c", "x/b", true),
        // +/b would be covered, but it can match secret/b, which the earlier deny rule meets
        (Some("bob"), "c", "+/b", false),
        (Some("bob"), "c", "#", false),
        (Some("bob"), "c", "+/#", false),
        // a deny rule that meets the filter decides, even if an allow rule follows
        (Some("bob"), "c", "secret/x", false),
        (Some("bob"), "c", "+/x", false),
        (Some("bob"), "c", "+/+", false),
        // the client-id rule comes after the global deny: denied
        (Some("bob"), "logger", "secret/logs", false),
        // %u and %c
        (Some("bob"), "c", "users/bob/#", true),
        (Some("bob"), "c", "users/alice/#", false),
        (Some("bob"), "c", "users/+/x", false),
        (Some("bob"), "c7", "clients/c7/x", true),
        (Some("bob"), "c7", "clients/c8/x", false),
        // anonymous: %u never matches
        (None, "c", "users/#", false),
        (None, "c", "users//x", false),
        (None, "c", "public/x", true),
        // $share: the inner filter is checked
        (Some("bob"), "c", "$share/g/public/#", true),
        (Some("bob"), "c", "$share/g/secret/#", false),
        (Some("bob"), "c", "$share/g", false),
        (Some("bob"), "c", "$share//public/x", false),
        // invalid filters are refused
        (Some("alice"), "c", "a/#/b", false),
        (Some("alice"), "c", "a+", false),
        (Some("alice"), "c", "", false),
        // admins: # covers everything but $ topics, which $SYS/# adds
        (Some("alice"), "c", "#", true),
        (Some("alice"), "c", "$SYS/#", true),
        (Some("alice"), "c", "secret/x", true),
        // mallory
        (Some("mallory"), "c", "public/x", false),
    ];
    for &(user, client, filter, want) in cases {
        let s = Subject::new(user, client);
        assert_eq!(
            acl.check_subscribe(&s, filter),
            want,
            "{user:?}/{client} subscribe {filter}"
        );
    }
}

#[test]
fn injection_through_names_does_not_widen_rules() {
    let acl = acl(r##"
[[rule]]
all = true
action = "both"
permission = "allow"
topics = ["users/%u/#", "c/%c"]
"##);
    for bad in ["+", "#", "a/b", "", "$SYS", "x+", "a#"] {
        let s = Subject::new(Some(bad), bad);
        for topic in [
            "users/x/y",
            "users/+/y",
            "users/a/b/y",
            "c/x",
            "users//y",
            "$SYS/x",
        ] {
            assert!(
                !acl.check_publish(&s, topic),
                "user {bad:?} publish {topic}"
            );
        }
        for filter in ["users/#", "users/+/#", "#", "c/+", "users/a/b/#", "$SYS/#"] {
            assert!(
                !acl.check_subscribe(&s, filter),
                "user {bad:?} subscribe {filter}"
            );
        }
    }
    let ok = Subject::new(Some("bob"), "c1");
    assert!(acl.check_publish(&ok, "users/bob/x"));
    assert!(acl.check_publish(&ok, "c/c1"));
    assert!(acl.check_subscribe(&ok, "users/bob/#"));
}

#[test]
fn deny_rules_with_unusable_values_still_deny() {
    let acl = acl(r##"
default = "allow"
[[rule]]
all = true
action = "both"
permission = "deny"
topics = ["private/%u/#"]
"##);
    let anon = Subject::new(None, "c");
    assert!(!acl.check_publish(&anon, "private/bob/x"));
    assert!(!acl.check_subscribe(&anon, "private/+/x"));
    let bob = Subject::new(Some("bob"), "c");
    assert!(!acl.check_publish(&bob, "private/bob/x"));
    assert!(acl.check_publish(&bob, "private/alice/x"));
    // A filter that meets bob's private tree is denied; one that cannot is allowed.
    assert!(!acl.check_subscribe(&bob, "private/+/x"));
    assert!(acl.check_subscribe(&bob, "private/alice/x"));
    assert!(acl.check_subscribe(&bob, "public/#"));
}

#[test]
fn defaults_and_partial_allow() {
    let text = |d: &str| {
        format!(
            "default = \"{d}\"\n[[rule]]\nall = true\naction = \"subscribe\"\npermission = \"allow\"\ntopics = [\"a/b\"]\n"
        )
    };
    let s = Subject::new(Some("u"), "c");
    let deny = acl(&text("deny"));
    assert!(deny.check_subscribe(&s, "a/b"));
    // a/b only partly covers a/#: the rule does not decide, the default does.
    assert!(!deny.check_subscribe(&s, "a/#"));
    assert!(!deny.check_subscribe(&s, "a/+"));
    assert!(!deny.check_publish(&s, "a/b"));
    let allow = acl(&text("allow"));
    assert!(allow.check_subscribe(&s, "a/#"));
    assert!(allow.check_publish(&s, "z"));
    // No `default` key: deny.
    assert!(!acl("").check_publish(&s, "z"));
    assert!(!Acl::default().check_subscribe(&s, "z"));
    assert!(Acl::with_default(Permission::Allow).check_subscribe(&s, "z"));
}

#[test]
fn first_match_wins_across_principal_lists() {
    // Rule order interleaves user, client, group and global rules; the merge must keep it.
    let acl = acl(r##"
[groups]
g = ["u"]
[[rule]]
all = true
action = "publish"
permission = "deny"
topics = ["t/1"]
[[rule]]
user = "u"
action = "publish"
permission = "allow"
topics = ["t/1", "t/2"]
[[rule]]
client_id = "c"
action = "publish"
permission = "deny"
topics = ["t/2", "t/3"]
[[rule]]
group = "g"
action = "publish"
permission = "allow"
topics = ["t/3", "t/4"]
[[rule]]
all = true
action = "publish"
permission = "deny"
topics = ["t/4"]
[[rule]]
all = true
action = "publish"
permission = "allow"
topics = ["t/5"]
"##);
    let u_c = Subject::new(Some("u"), "c");
    let u_d = Subject::new(Some("u"), "d");
    let v_c = Subject::new(Some("v"), "c");
    let want = [
        ("t/1", [false, false, false]),
        ("t/2", [true, true, false]),
        ("t/3", [false, true, false]),
        ("t/4", [true, true, false]),
        ("t/5", [true, true, true]),
    ];
    for (topic, w) in want {
        let got = [
            acl.check_publish(&u_c, topic),
            acl.check_publish(&u_d, topic),
            acl.check_publish(&v_c, topic),
        ];
        assert_eq!(got, w, "{topic}");
    }
    assert_eq!(acl.groups_of("u"), [Box::<str>::from("g")]);
    assert!(acl.groups_of("v").is_empty());
}

#[test]
fn receive_uses_subscribe_rules() {
    let acl = acl(FILE);
    let bob = Subject::new(Some("bob"), "c");
    assert!(acl.check_receive(&bob, "public/x"));
    assert!(!acl.check_receive(&bob, "secret/x"));
    assert!(!acl.check_receive(&bob, "sensors/x"));
    let dev = Subject::new(Some("dev-001"), "c");
    // publish-only rule: may publish, may not receive
    assert!(acl.check_publish(&dev, "sensors/dev-001/t"));
    assert!(!acl.check_receive(&dev, "sensors/dev-001/t"));
}

#[test]
fn bindings_come_from_the_file() {
    let acl = acl(FILE);
    assert!(acl.bindings().check("dev-001", "10.3.0.4".parse().unwrap()));
    assert!(!acl.bindings().check("dev-001", "10.9.0.4".parse().unwrap()));
    assert!(acl.bindings().check("dev-002", "10.9.0.4".parse().unwrap()));
}

#[test]
fn errors_name_the_line_and_reason() {
    let rule = |body: &str| format!("default = \"deny\"\n\n[[rule]]\n{body}\n");
    let cases: Vec<(String, usize, &str)> = vec![
        ("default = \"maybe\"\n".into(), 1, "unknown variant"),
        ("[x]\n".into(), 1, "unknown field"),
        ("a = [\n".into(), 2, ""),
        (
            rule("action = \"publish\"\npermission = \"allow\"\ntopics = [\"a\"]"),
            3,
            "exactly one of",
        ),
        (
            rule("user = \"a\"\ngroup = \"g\"\naction = \"publish\"\npermission = \"allow\"\ntopics = [\"a\"]"),
            3,
            "exactly one of",
        ),
        (
            rule("all = false\naction = \"publish\"\npermission = \"allow\"\ntopics = [\"a\"]"),
            3,
            "all = true",
        ),
        (
            rule("group = \"nope\"\naction = \"publish\"\npermission = \"allow\"\ntopics = [\"a\"]"),
            3,
            "unknown group",
        ),
        (
            rule("all = true\naction = \"publish\"\npermission = \"allow\"\ntopics = [\n  \"a\",\n  \"a/#/b\",\n]"),
            9,
            "`#` must be the last level",
        ),
        (
            rule("all = true\naction = \"publish\"\npermission = \"allow\"\ntopics = []"),
            7,
            "`topics` is empty",
        ),
        (
            rule("all = true\naction = \"publsh\"\npermission = \"allow\"\ntopics = [\"a\"]"),
            5,
            "unknown variant",
        ),
        (
            rule("all = true\naction = \"publish\"\npermission = \"allow\"\ntopic = [\"a\"]"),
            7,
            "unknown field",
        ),
        (
            rule("all = true\naction = \"publish\"\npermission = \"allow\"\ntopics = [\"$share/g/a\"]"),
            7,
            "$share",
        ),
        ("[bindings]\nx = [\"10.0.0.0/8\",\n \"10.0.0.0/40\"]\n".into(), 3, "CIDR"),
    ];
    for (text, line, needle) in cases {
        let err = Acl::parse(&text, Path::new("acl.toml"))
            .err()
            .unwrap_or_else(|| panic!("{text} parsed"));
        let msg = err.to_string();
        assert_eq!(err.line(), Some(line), "{text}\n=> {msg}");
        assert!(msg.starts_with(&format!("acl.toml:{line}: ")), "{msg}");
        assert!(msg.contains(needle), "{text}\n=> {msg}");
    }
}
