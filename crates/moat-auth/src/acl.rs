//! ACL rules from their own TOML file, compiled into a matcher indexed by principal.
//!
//! ```toml
//! default = "deny"                 # allow | deny: the answer when no rule decides
//!
//! [groups]
//! sensors = ["dev-001", "dev-002"] # members are user names (a certificate identity is the
//!                                  # user name on listeners that map it)
//!
//! [bindings]
//! "dev-001" = ["10.3.0.0/24", "192.168.1.7"]   # where an identity may connect from
//!
//! [[rule]]
//! group = "sensors"                # exactly one of: user (alias identity), client_id, group,
//!                                  # all = true, anonymous = true
//! action = "publish"               # publish | subscribe | both
//! permission = "allow"             # allow | deny
//! topics = ["sensors/%u/#"]        # MQTT filters; %u = user name, %c = client id
//! ```
//!
//! Rules apply in file order and the first one that decides wins. For a PUBLISH (and for a
//! message about to be delivered, see [`Acl::check_receive`]) a rule decides when the topic
//! matches one of its patterns. For a SUBSCRIBE an allow rule decides only when one of its
//! patterns covers every topic the filter can match (`a/#` covers `a/+/c`; `a/b` does not
//! cover `a/#`), and a deny rule decides as soon as one of its patterns can match a topic the
//! filter matches. See docs/AUTH.md for the full semantics.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use crate::binding::{parse_net, Bindings};
use crate::error::{read, LoadError};
use crate::pattern::{parse_filter, Pattern, Values};

/// Who is asking: the effective user name (after certificate mapping) and the client id.
/// Groups come from the ACL's own `[groups]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subject<'a> {
    /// The authenticated user name, `None` for an anonymous client.
    pub username: Option<&'a str>,
    /// The client identifier.
    pub client_id: &'a str,
}

impl<'a> Subject<'a> {
    /// A subject.
    pub fn new(username: Option<&'a str>, client_id: &'a str) -> Self {
        Self {
            username,
            client_id,
        }
    }
}

/// What a rule is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// PUBLISH (and will messages).
    Publish,
    /// SUBSCRIBE, and delivery of messages (retained ones included).
    Subscribe,
    /// Both.
    Both,
}

impl Action {
    fn includes(self, other: Self) -> bool {
        self == Self::Both || self == other
    }
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// Let it through.
    Allow,
    /// Refuse it.
    Deny,
}

/// Compiled ACL rules, group membership and address bindings. Immutable: a reload builds a new
/// one and the server swaps an `Arc`.
#[derive(Clone)]
pub struct Acl {
    default: Permission,
    rules: Vec<Rule>,
    /// Per user name: the sorted indexes of its own rules and its groups' rules.
    users: HashMap<Box<str>, UserEntry>,
    clients: HashMap<Box<str>, Box<[u32]>>,
    all: Box<[u32]>,
    anonymous: Box<[u32]>,
    bindings: Bindings,
}

#[derive(Clone, Default)]
struct UserEntry {
    rules: Box<[u32]>,
    groups: Box<[Box<str>]>,
}

#[derive(Clone)]
struct Rule {
    action: Action,
    permission: Permission,
    patterns: Box<[Pattern]>,
}

impl Default for Acl {
    /// No rules, default deny.
    fn default() -> Self {
        Self::with_default(Permission::Deny)
    }
}

impl fmt::Debug for Acl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acl")
            .field("default", &self.default)
            .field("rules", &self.rules.len())
            .field("users", &self.users.len())
            .field("bindings", &self.bindings.len())
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    default: Option<Permission>,
    #[serde(default)]
    groups: BTreeMap<String, Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    bindings: BTreeMap<String, Spanned<Vec<Spanned<String>>>>,
    #[serde(default, rename = "rule")]
    rules: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(alias = "identity")]
    user: Option<String>,
    client_id: Option<String>,
    group: Option<String>,
    all: Option<bool>,
    anonymous: Option<bool>,
    action: Action,
    permission: Permission,
    topics: Spanned<Vec<Spanned<String>>>,
}

enum Selector {
    User(String),
    Client(String),
    Group(String),
    All,
    Anonymous,
}

impl Acl {
    /// No rules: everything gets `default`.
    pub fn with_default(default: Permission) -> Self {
        Self {
            default,
            rules: Vec::new(),
            users: HashMap::new(),
            clients: HashMap::new(),
            all: Box::new([]),
            anonymous: Box::new([]),
            bindings: Bindings::new(),
        }
    }

    /// Reads and compiles an ACL file.
    ///
    /// # Errors
    /// [`LoadError::Io`] if it cannot be read; [`LoadError::Invalid`] with the line and the
    /// reason for a TOML error, an unknown key, a rule without exactly one principal, an
    /// unknown group, an invalid topic pattern or an invalid address.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        Self::parse(&read(path)?, path)
    }

    /// Compiles the text of an ACL file; `origin` names it in errors.
    ///
    /// # Errors
    /// As [`Acl::load`].
    pub fn parse(text: &str, origin: &Path) -> Result<Self, LoadError> {
        let at = |offset: usize, reason: String| {
            let line = text[..offset.min(text.len())].matches('\n').count() + 1;
            LoadError::invalid(origin, line, reason)
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            at(offset, e.message().trim_end().to_owned())
        })?;

        let mut acl = Self::with_default(raw.default.unwrap_or(Permission::Deny));

        for (identity, nets) in &raw.bindings {
            let mut out = Vec::with_capacity(nets.get_ref().len());
            for n in nets.get_ref() {
                out.push(parse_net(n.get_ref()).map_err(|r| at(n.span().start, r))?);
            }
            acl.bindings.bind(identity, out);
        }

        // Group name -> rule indexes; user -> own rule indexes.
        let mut group_rules: HashMap<&str, Vec<u32>> = HashMap::new();
        for g in raw.groups.keys() {
            group_rules.insert(g, Vec::new());
        }
        let mut user_rules: HashMap<String, Vec<u32>> = HashMap::new();
        let mut clients: HashMap<String, Vec<u32>> = HashMap::new();
        let mut all = Vec::new();
        let mut anonymous = Vec::new();

        for spanned in &raw.rules {
            let start = spanned.span().start;
            let r = spanned.get_ref();
            let selector = selector(r).map_err(|reason| at(start, reason))?;
            let topics = r.topics.get_ref();
            if topics.is_empty() {
                return Err(at(
                    r.topics.span().start,
                    "`topics` is empty: list at least one topic pattern".into(),
                ));
            }
            let mut patterns = Vec::with_capacity(topics.len());
            for t in topics {
                patterns.push(Pattern::parse(t.get_ref()).map_err(|e| at(t.span().start, e))?);
            }
            let idx =
                u32::try_from(acl.rules.len()).map_err(|_| at(start, "too many rules".into()))?;
            match selector {
                Selector::User(u) => user_rules.entry(u).or_default().push(idx),
                Selector::Client(c) => clients.entry(c).or_default().push(idx),
                Selector::Group(g) => match group_rules.get_mut(g.as_str()) {
                    Some(v) => v.push(idx),
                    None => {
                        return Err(at(
                            start,
                            format!("unknown group {g:?}: define it under [groups]"),
                        ))
                    }
                },
                Selector::All => all.push(idx),
                Selector::Anonymous => anonymous.push(idx),
            }
            acl.rules.push(Rule {
                action: r.action,
                permission: r.permission,
                patterns: patterns.into(),
            });
        }

        // Every user that has rules or groups gets one merged, sorted list.
        let mut groups_of: HashMap<&str, Vec<&str>> = HashMap::new();
        for (g, members) in &raw.groups {
            for m in members.get_ref() {
                let list = groups_of.entry(m.get_ref()).or_default();
                if !list.contains(&g.as_str()) {
                    list.push(g);
                }
            }
        }
        let mut names: Vec<&str> = user_rules.keys().map(String::as_str).collect();
        names.extend(groups_of.keys().copied());
        names.sort_unstable();
        names.dedup();
        for name in names {
            let mut rules = user_rules.get(name).cloned().unwrap_or_default();
            let groups = groups_of.get(name).cloned().unwrap_or_default();
            for g in &groups {
                rules.extend_from_slice(&group_rules[g]);
            }
            rules.sort_unstable();
            rules.dedup();
            acl.users.insert(
                name.into(),
                UserEntry {
                    rules: rules.into(),
                    groups: groups.into_iter().map(Into::into).collect(),
                },
            );
        }
        acl.clients = clients
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        acl.all = all.into();
        acl.anonymous = anonymous.into();
        Ok(acl)
    }

    /// The answer when no rule decides.
    pub fn default_permission(&self) -> Permission {
        self.default
    }

    /// The number of rules.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// The groups `username` belongs to, sorted by group name.
    pub fn groups_of(&self, username: &str) -> &[Box<str>] {
        self.users.get(username).map_or(&[], |u| &u.groups)
    }

    /// The `[bindings]` table.
    pub fn bindings(&self) -> &Bindings {
        &self.bindings
    }

    /// May `subject` publish to `topic` (a topic name)? Also for a will message, checked when
    /// it is published.
    pub fn check_publish(&self, subject: &Subject<'_>, topic: &str) -> bool {
        let v = Values::new(subject.username, subject.client_id);
        for i in self.candidates(subject) {
            let rule = &self.rules[i as usize];
            if !rule.action.includes(Action::Publish) {
                continue;
            }
            let strict = rule.permission == Permission::Allow;
            if rule
                .patterns
                .iter()
                .any(|p| p.matches_topic(topic, v, strict))
            {
                return strict;
            }
        }
        self.default == Permission::Allow
    }

    /// May `subject` subscribe to `filter`? A `$share/group/` prefix is removed first; an
    /// invalid filter is refused.
    pub fn check_subscribe(&self, subject: &Subject<'_>, filter: &str) -> bool {
        let inner = match filter.strip_prefix("$share/") {
            Some(rest) => match rest.split_once('/') {
                Some((group, f)) if !group.is_empty() && !group.contains(['+', '#']) => f,
                _ => return false,
            },
            None => filter,
        };
        let Some(levels) = parse_filter(inner) else {
            return false;
        };
        let v = Values::new(subject.username, subject.client_id);
        for i in self.candidates(subject) {
            let rule = &self.rules[i as usize];
            if !rule.action.includes(Action::Subscribe) {
                continue;
            }
            match rule.permission {
                Permission::Allow => {
                    if rule.patterns.iter().any(|p| p.covers(&levels, v)) {
                        return true;
                    }
                }
                Permission::Deny => {
                    if rule.patterns.iter().any(|p| p.meets(&levels, v)) {
                        return false;
                    }
                }
            }
        }
        self.default == Permission::Allow
    }

    /// May `subject` receive a message on `topic` (a retained message sent on SUBSCRIBE, or
    /// any delivery the server wants to re-check after a reload)? The subscribe rules applied
    /// to one topic.
    pub fn check_receive(&self, subject: &Subject<'_>, topic: &str) -> bool {
        let v = Values::new(subject.username, subject.client_id);
        for i in self.candidates(subject) {
            let rule = &self.rules[i as usize];
            if !rule.action.includes(Action::Subscribe) {
                continue;
            }
            let strict = rule.permission == Permission::Allow;
            if rule
                .patterns
                .iter()
                .any(|p| p.matches_topic(topic, v, strict))
            {
                return strict;
            }
        }
        self.default == Permission::Allow
    }

    /// The indexes of the rules that can apply to `subject`, in file order: its user's and
    /// groups' rules, its client id's, the `all` rules and, if anonymous, the `anonymous` ones.
    fn candidates(&self, subject: &Subject<'_>) -> Merge<'_> {
        let user: &[u32] = match subject.username {
            Some(u) => self.users.get(u).map_or(&[], |e| &e.rules),
            None => &self.anonymous,
        };
        let client: &[u32] = if self.clients.is_empty() {
            &[]
        } else {
            self.clients.get(subject.client_id).map_or(&[], |r| r)
        };
        Merge {
            lists: [user, client, &self.all],
        }
    }
}

/// Merges three sorted index lists.
struct Merge<'a> {
    lists: [&'a [u32]; 3],
}

impl Iterator for Merge<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        let mut best: Option<(usize, u32)> = None;
        for (k, l) in self.lists.iter().enumerate() {
            if let Some(&x) = l.first() {
                if best.is_none_or(|(_, b)| x < b) {
                    best = Some((k, x));
                }
            }
        }
        let (k, x) = best?;
        self.lists[k] = &self.lists[k][1..];
        Some(x)
    }
}

fn selector(r: &RawRule) -> Result<Selector, String> {
    let mut found = Vec::new();
    if let Some(u) = &r.user {
        found.push(Selector::User(u.clone()));
    }
    if let Some(c) = &r.client_id {
        found.push(Selector::Client(c.clone()));
    }
    if let Some(g) = &r.group {
        found.push(Selector::Group(g.clone()));
    }
    for (flag, name, sel) in [
        (r.all, "all", Selector::All),
        (r.anonymous, "anonymous", Selector::Anonymous),
    ] {
        match flag {
            Some(true) => found.push(sel),
            Some(false) => return Err(format!("write `{name} = true` or leave `{name}` out")),
            None => {}
        }
    }
    if found.len() != 1 {
        return Err(
            "a rule needs exactly one of `user`, `client_id`, `group`, `all = true`, `anonymous = true`"
                .into(),
        );
    }
    Ok(found.remove(0))
}

#[cfg(test)]
mod tests;
