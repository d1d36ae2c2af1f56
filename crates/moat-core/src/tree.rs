//! Topic tries: the subscription tree (filters, matched by topic name) and the retained tree
//! (topic names, matched by filter).
//!
//! Matching walks one path per topic level (exact child, `+` child, `#` child), so its cost
//! depends on the topic's depth and on the subscriptions that match, not on the number of
//! unrelated subscriptions.

use std::collections::HashMap;

use crate::topic::Filter;

/// Splits off the first level of `rest`: ("a", Some("b/c")) for "a/b/c", ("c", None) for "c".
fn split_level(rest: &str) -> (&str, Option<&str>) {
    match rest.split_once('/') {
        Some((level, next)) => (level, Some(next)),
        None => (rest, None),
    }
}

/// The members of one shared subscription group at one filter.
#[derive(Debug)]
pub struct SharedGroup<K, V> {
    /// The group name.
    pub name: Box<str>,
    /// Members, in subscription order.
    pub members: Vec<(K, V)>,
    /// Round-robin cursor: the index to try first next time.
    pub next: usize,
}

/// One match of a topic against the subscription tree.
#[derive(Debug)]
pub enum Match<'a, K, V> {
    /// A plain subscription.
    Plain(&'a K, &'a V),
    /// A shared subscription group: the caller picks one member.
    Shared(&'a mut SharedGroup<K, V>),
}

#[derive(Debug)]
struct SubNode<K, V> {
    children: HashMap<Box<str>, Self>,
    plus: Option<Box<Self>>,
    hash: Option<Box<Self>>,
    plain: Vec<(K, V)>,
    shared: Vec<SharedGroup<K, V>>,
}

impl<K, V> Default for SubNode<K, V> {
    fn default() -> Self {
        Self {
            children: HashMap::new(),
            plus: None,
            hash: None,
            plain: Vec::new(),
            shared: Vec::new(),
        }
    }
}

impl<K, V> SubNode<K, V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_none()
            && self.plain.is_empty()
            && self.shared.is_empty()
    }
}

/// Subscriptions keyed by subscriber `K`, each with data `V`. A subscriber has at most one
/// subscription per filter (per share group).
#[derive(Debug)]
pub struct SubscriptionTree<K, V> {
    root: SubNode<K, V>,
    len: usize,
}

impl<K, V> Default for SubscriptionTree<K, V> {
    fn default() -> Self {
        Self {
            root: SubNode::default(),
            len: 0,
        }
    }
}

impl<K: PartialEq + Clone, V> SubscriptionTree<K, V> {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of subscriptions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds or replaces `key`'s subscription to `filter`. Returns the previous data, if any.
    pub fn insert(&mut self, filter: &Filter, key: K, value: V) -> Option<V> {
        let mut node = &mut self.root;
        let mut rest = Some(filter.filter.as_str());
        while let Some(r) = rest {
            let (level, next) = split_level(r);
            node = match level {
                "+" => node.plus.get_or_insert_with(Box::default),
                "#" => node.hash.get_or_insert_with(Box::default),
                _ => node.children.entry(level.into()).or_default(),
            };
            rest = next;
        }
        let list = match &filter.share_group {
            None => &mut node.plain,
            Some(group) => {
                let idx = match node.shared.iter().position(|g| *g.name == **group) {
                    Some(i) => i,
                    None => {
                        node.shared.push(SharedGroup {
                            name: group.as_str().into(),
                            members: Vec::new(),
                            next: 0,
                        });
                        node.shared.len() - 1
                    }
                };
                &mut node.shared[idx].members
            }
        };
        if let Some(slot) = list.iter_mut().find(|(k, _)| *k == key) {
            return Some(std::mem::replace(&mut slot.1, value));
        }
        list.push((key, value));
        self.len += 1;
        None
    }

    /// Removes `key`'s subscription to `filter`, returning its data.
    pub fn remove(&mut self, filter: &Filter, key: &K) -> Option<V> {
        let removed = Self::remove_at(&mut self.root, Some(filter.filter.as_str()), filter, key);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    fn remove_at(
        node: &mut SubNode<K, V>,
        rest: Option<&str>,
        filter: &Filter,
        key: &K,
    ) -> Option<V> {
        let Some(r) = rest else {
            return match &filter.share_group {
                None => {
                    let i = node.plain.iter().position(|(k, _)| k == key)?;
                    Some(node.plain.remove(i).1)
                }
                Some(group) => {
                    let gi = node.shared.iter().position(|g| *g.name == **group)?;
                    let g = &mut node.shared[gi];
                    let i = g.members.iter().position(|(k, _)| k == key)?;
                    let v = g.members.remove(i).1;
                    if g.members.is_empty() {
                        node.shared.remove(gi);
                    } else if g.next > i {
                        g.next -= 1;
                    }
                    Some(v)
                }
            };
        };
        let (level, next) = split_level(r);
        match level {
            "+" => {
                let child = node.plus.as_deref_mut()?;
                let v = Self::remove_at(child, next, filter, key);
                if child.is_empty() {
                    node.plus = None;
                }
                v
            }
            "#" => {
                let child = node.hash.as_deref_mut()?;
                let v = Self::remove_at(child, next, filter, key);
                if child.is_empty() {
                    node.hash = None;
                }
                v
            }
            _ => {
                let child = node.children.get_mut(level)?;
                let v = Self::remove_at(child, next, filter, key);
                if child.is_empty() {
                    node.children.remove(level);
                }
                v
            }
        }
    }

    /// Calls `f` for every subscription matching `topic` (a valid topic name).
    pub fn for_each_match(&mut self, topic: &str, mut f: impl FnMut(Match<'_, K, V>)) {
        let dollar = topic.starts_with('$');
        Self::walk(&mut self.root, Some(topic), dollar, &mut f);
    }

    fn walk(
        node: &mut SubNode<K, V>,
        rest: Option<&str>,
        skip_wildcards: bool,
        f: &mut impl FnMut(Match<'_, K, V>),
    ) {
        if !skip_wildcards {
            if let Some(h) = node.hash.as_deref_mut() {
                Self::visit(h, f);
            }
        }
        let Some(r) = rest else {
            Self::visit(node, f);
            return;
        };
        let (level, next) = split_level(r);
        if let Some(c) = node.children.get_mut(level) {
            Self::walk(c, next, false, f);
        }
        if !skip_wildcards {
            if let Some(p) = node.plus.as_deref_mut() {
                Self::walk(p, next, false, f);
            }
        }
    }

    fn visit(node: &mut SubNode<K, V>, f: &mut impl FnMut(Match<'_, K, V>)) {
        for (k, v) in &node.plain {
            f(Match::Plain(k, v));
        }
        for g in &mut node.shared {
            f(Match::Shared(g));
        }
    }
}

#[derive(Debug)]
struct RetNode<V> {
    children: HashMap<Box<str>, Self>,
    value: Option<V>,
}

impl<V> Default for RetNode<V> {
    fn default() -> Self {
        Self {
            children: HashMap::new(),
            value: None,
        }
    }
}

/// Values stored by topic name, found by filter: the retained messages.
#[derive(Debug)]
pub struct RetainedTree<V> {
    root: RetNode<V>,
    len: usize,
}

impl<V> Default for RetainedTree<V> {
    fn default() -> Self {
        Self {
            root: RetNode::default(),
            len: 0,
        }
    }
}

impl<V> RetainedTree<V> {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of values stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stores `value` under `topic`, returning the value it replaces.
    pub fn insert(&mut self, topic: &str, value: V) -> Option<V> {
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let old = node.value.replace(value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// The value stored under `topic`.
    pub fn get(&self, topic: &str) -> Option<&V> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.value.as_ref()
    }

    /// Removes the value under `topic`.
    pub fn remove(&mut self, topic: &str) -> Option<V> {
        let v = Self::remove_at(&mut self.root, Some(topic));
        if v.is_some() {
            self.len -= 1;
        }
        v
    }

    fn remove_at(node: &mut RetNode<V>, rest: Option<&str>) -> Option<V> {
        let Some(r) = rest else {
            return node.value.take();
        };
        let (level, next) = split_level(r);
        let child = node.children.get_mut(level)?;
        let v = Self::remove_at(child, next);
        if child.value.is_none() && child.children.is_empty() {
            node.children.remove(level);
        }
        v
    }

    /// Calls `f` with each (topic, value) whose topic matches `filter` (valid, not shared).
    pub fn for_each_match(&self, filter: &str, mut f: impl FnMut(&str, &V)) {
        let mut path = String::new();
        Self::walk(&self.root, Some(filter), true, &mut path, &mut f);
    }

    fn walk(
        node: &RetNode<V>,
        rest: Option<&str>,
        at_root: bool,
        path: &mut String,
        f: &mut impl FnMut(&str, &V),
    ) {
        let Some(r) = rest else {
            if let Some(v) = &node.value {
                f(path, v);
            }
            return;
        };
        let (level, next) = split_level(r);
        match level {
            "#" => {
                // "a/#" matches "a" itself as well as everything below it.
                if !at_root {
                    if let Some(v) = &node.value {
                        f(path, v);
                    }
                }
                for (name, child) in &node.children {
                    if at_root && name.starts_with('$') {
                        continue;
                    }
                    let len = path.len();
                    push_level(path, name, at_root);
                    Self::walk_all(child, path, f);
                    path.truncate(len);
                }
            }
            "+" => {
                for (name, child) in &node.children {
                    if at_root && name.starts_with('$') {
                        continue;
                    }
                    let len = path.len();
                    push_level(path, name, at_root);
                    Self::walk(child, next, false, path, f);
                    path.truncate(len);
                }
            }
            _ => {
                if let Some(child) = node.children.get(level) {
                    let len = path.len();
                    push_level(path, level, at_root);
                    Self::walk(child, next, false, path, f);
                    path.truncate(len);
                }
            }
        }
    }

    fn walk_all(node: &RetNode<V>, path: &mut String, f: &mut impl FnMut(&str, &V)) {
        if let Some(v) = &node.value {
            f(path, v);
        }
        for (name, child) in &node.children {
            let len = path.len();
            push_level(path, name, false);
            Self::walk_all(child, path, f);
            path.truncate(len);
        }
    }

    /// Removes every value for which `keep` returns false.
    pub fn retain(&mut self, mut keep: impl FnMut(&V) -> bool) {
        let removed = Self::retain_at(&mut self.root, &mut keep);
        self.len -= removed;
    }

    fn retain_at(node: &mut RetNode<V>, keep: &mut impl FnMut(&V) -> bool) -> usize {
        let mut removed = 0;
        if node.value.as_ref().is_some_and(|v| !keep(v)) {
            node.value = None;
            removed += 1;
        }
        node.children.retain(|_, child| {
            removed += Self::retain_at(child, keep);
            child.value.is_some() || !child.children.is_empty()
        });
        removed
    }
}

fn push_level(path: &mut String, level: &str, at_root: bool) {
    if !at_root {
        path.push('/');
    }
    path.push_str(level);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::matches;

    fn f(s: &str) -> Filter {
        Filter::parse(s).unwrap()
    }

    fn plain_matches(tree: &mut SubscriptionTree<u32, &'static str>, topic: &str) -> Vec<u32> {
        let mut out = Vec::new();
        tree.for_each_match(topic, |m| {
            if let Match::Plain(k, _) = m {
                out.push(*k);
            }
        });
        out.sort_unstable();
        out
    }

    const FILTERS: &[&str] = &[
        "a/b", "a/+", "a/#", "#", "+/+", "+", "/+", "a/+/c", "+/#", "$SYS/#", "$SYS/+", "a/b/",
        "a/b/#", "TopicA/+", "Topic/C", "/#", "+/b/#",
    ];
    const TOPICS: &[&str] = &[
        "a", "a/b", "a/b/c", "/a", "a//c", "$SYS/x", "$SYS", "a/b/", "TopicA/B", "Topic/C", "/",
        "x/b", "x/b/y/z",
    ];

    #[test]
    fn tree_agrees_with_matches() {
        let mut tree = SubscriptionTree::new();
        for (i, filter) in FILTERS.iter().enumerate() {
            assert!(tree.insert(&f(filter), i as u32, "v").is_none());
        }
        assert_eq!(tree.len(), FILTERS.len());
        for topic in TOPICS {
            let want: Vec<u32> = FILTERS
                .iter()
                .enumerate()
                .filter(|(_, filter)| matches(filter, topic))
                .map(|(i, _)| i as u32)
                .collect();
            assert_eq!(plain_matches(&mut tree, topic), want, "topic {topic}");
        }
        for (i, filter) in FILTERS.iter().enumerate() {
            assert_eq!(tree.remove(&f(filter), &(i as u32)), Some("v"));
        }
        assert!(tree.is_empty());
        assert!(tree.root.is_empty());
    }

    #[test]
    fn replace_and_shared() {
        let mut tree = SubscriptionTree::new();
        assert_eq!(tree.insert(&f("a/b"), 1, "x"), None);
        assert_eq!(tree.insert(&f("a/b"), 1, "y"), Some("x"));
        tree.insert(&f("$share/g/a/+"), 2, "s");
        tree.insert(&f("$share/g/a/+"), 3, "s");
        tree.insert(&f("$share/h/a/+"), 4, "s");
        assert_eq!(tree.len(), 4);
        let mut groups = Vec::new();
        tree.for_each_match("a/b", |m| {
            if let Match::Shared(g) = m {
                groups.push((g.name.to_string(), g.members.len()));
            }
        });
        groups.sort();
        assert_eq!(groups, vec![("g".to_string(), 2), ("h".to_string(), 1)]);
        assert_eq!(tree.remove(&f("$share/g/a/+"), &2), Some("s"));
        assert_eq!(tree.remove(&f("$share/g/a/+"), &2), None);
        assert_eq!(tree.remove(&f("a/+"), &3), None);
        assert_eq!(tree.len(), 3);
    }

    #[test]
    fn retained_by_filter() {
        let mut tree = RetainedTree::new();
        for (i, t) in TOPICS.iter().enumerate() {
            tree.insert(t, i);
        }
        assert_eq!(tree.len(), TOPICS.len());
        for filter in FILTERS {
            let mut got = Vec::new();
            tree.for_each_match(filter, |topic, v| {
                assert_eq!(TOPICS[*v], topic);
                got.push(*v);
            });
            got.sort_unstable();
            let want: Vec<usize> = TOPICS
                .iter()
                .enumerate()
                .filter(|(_, t)| matches(filter, t))
                .map(|(i, _)| i)
                .collect();
            assert_eq!(got, want, "filter {filter}");
        }
        assert_eq!(tree.remove("a/b"), Some(1));
        assert_eq!(tree.get("a/b"), None);
        assert_eq!(tree.get("a/b/c"), Some(&2));
        tree.retain(|v| *v % 2 == 0);
        assert!(tree.get("a/b/c").is_some());
        assert!(tree.get("/a").is_none());
        assert_eq!(tree.len(), (0..TOPICS.len()).filter(|i| i % 2 == 0).count());
    }
}
