//! Topic tries: the subscription tree (filters, matched by topic name) and the retained tree
//! (topic names, matched by filter).
//!
//! Matching walks one path per topic level (exact child, `+` child, `#` child), so its cost
//! depends on the topic's depth and on the subscriptions that match, not on the number of
//! unrelated subscriptions.

use std::collections::{btree_map, BTreeMap, HashMap};
use std::ops::Bound;

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
    /// The routing batch of the last pick and how many picks in a row went to that member.
    pub run: (u64, u32),
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

impl<K, V> Drop for SubNode<K, V> {
    /// Frees the subtree with a loop: dropping a deep chain recursively would overflow the
    /// stack. A leaf (the common case) allocates nothing here.
    fn drop(&mut self) {
        let mut stack = Vec::new();
        self.detach_children(&mut stack);
        while let Some(mut node) = stack.pop() {
            node.detach_children(&mut stack);
        }
    }
}

impl<K, V> SubNode<K, V> {
    fn detach_children(&mut self, out: &mut Vec<Self>) {
        out.extend(std::mem::take(&mut self.children).into_values());
        out.extend(self.plus.take().map(|b| *b));
        out.extend(self.hash.take().map(|b| *b));
    }

    fn child(&self, level: &str) -> Option<&Self> {
        match level {
            "+" => self.plus.as_deref(),
            "#" => self.hash.as_deref(),
            _ => self.children.get(level),
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Self> {
        match level {
            "+" => self.plus.as_deref_mut(),
            "#" => self.hash.as_deref_mut(),
            _ => self.children.get_mut(level),
        }
    }

    /// Holds no subscription and exactly one child (a link in a chain).
    fn holds_only_one_child(&self) -> bool {
        self.plain.is_empty()
            && self.shared.is_empty()
            && self.children.len()
                + usize::from(self.plus.is_some())
                + usize::from(self.hash.is_some())
                == 1
    }

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
                            run: (0, 0),
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

    /// Removes `key`'s subscription to `filter`, returning its data, and the nodes that held
    /// nothing else. A loop, not recursion: filter depth is chosen by clients.
    pub fn remove(&mut self, filter: &Filter, key: &K) -> Option<V> {
        let levels: Vec<&str> = filter.filter.split('/').collect();
        let mut node = &mut self.root;
        for level in &levels {
            node = node.child_mut(level)?;
        }
        let removed = match &filter.share_group {
            None => {
                let i = node.plain.iter().position(|(k, _)| k == key)?;
                node.plain.remove(i).1
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
                v
            }
        };
        self.len -= 1;
        if node.is_empty() {
            self.prune(&levels);
        }
        Some(removed)
    }

    /// Cuts the chain of empty nodes that ends at `levels` below the deepest node on its path
    /// that still holds something.
    fn prune(&mut self, levels: &[&str]) {
        let mut keep = 0;
        let mut node = &self.root;
        for (depth, level) in levels.iter().enumerate() {
            if depth > 0 && !node.holds_only_one_child() {
                keep = depth;
            }
            let Some(child) = node.child(level) else {
                return;
            };
            node = child;
        }
        let mut node = &mut self.root;
        for level in &levels[..keep] {
            let Some(child) = node.child_mut(level) else {
                return;
            };
            node = child;
        }
        // Dropping the cut chain is a loop too (`SubNode`'s Drop).
        match levels[keep] {
            "+" => node.plus = None,
            "#" => node.hash = None,
            level => {
                node.children.remove(level);
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
    /// Ordered, so that a paced walk can resume after a topic.
    children: BTreeMap<Box<str>, Self>,
    value: Option<V>,
}

impl<V> Default for RetNode<V> {
    fn default() -> Self {
        Self {
            children: BTreeMap::new(),
            value: None,
        }
    }
}

impl<V> Drop for RetNode<V> {
    /// Frees the subtree with a loop: dropping a deep chain recursively would overflow the
    /// stack.
    fn drop(&mut self) {
        let mut stack: Vec<Self> = std::mem::take(&mut self.children).into_values().collect();
        while let Some(mut node) = stack.pop() {
            stack.extend(std::mem::take(&mut node.children).into_values());
        }
    }
}

/// The children of one node still to be visited by [`RetainedTree::walk_matches`].
enum Kids<'a, V> {
    One(Option<(&'a str, &'a RetNode<V>)>),
    Range(btree_map::Range<'a, Box<str>, RetNode<V>>),
}

/// One level of the walk's explicit stack.
struct Frame<'a, V> {
    kids: Kids<'a, V>,
    /// The filter level the children match, or `None` below a `#` (everything matches).
    level: Option<usize>,
    /// The children's depth (1: the first topic level).
    depth: usize,
    /// The parent's path length in the walk's path buffer.
    path_len: usize,
    /// The parent lies on the resume topic's path: children at or before it are skipped.
    on_path: bool,
    /// Skip children whose name starts with `$` (wildcards at the first level [MQTT-4.7.2-1]).
    skip_dollar: bool,
}

impl<'a, V> Frame<'a, V> {
    fn next(&mut self) -> Option<(&'a str, &'a RetNode<V>)> {
        loop {
            let kid = match &mut self.kids {
                Kids::One(one) => one.take(),
                Kids::Range(range) => range.next().map(|(name, node)| (&**name, node)),
            }?;
            if !(self.skip_dollar && kid.0.starts_with('$')) {
                return Some(kid);
            }
        }
    }
}

/// Values stored by topic name, found by filter: the retained messages.
///
/// Every walk is a loop over an explicit stack, never recursion: topic depth is chosen by
/// clients.
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

    /// Removes the value under `topic`, and the nodes that held nothing else.
    pub fn remove(&mut self, topic: &str) -> Option<V> {
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.get_mut(level)?;
        }
        let value = node.value.take()?;
        self.len -= 1;
        if node.children.is_empty() {
            self.prune(topic);
        }
        Some(value)
    }

    /// Cuts the chain of empty nodes that ends at `topic` (which holds nothing now) below the
    /// deepest node on its path that still holds something.
    fn prune(&mut self, topic: &str) {
        let levels: Vec<&str> = topic.split('/').collect();
        let mut keep = 0;
        let mut node = &self.root;
        for (depth, level) in levels.iter().enumerate() {
            if depth > 0 && (node.value.is_some() || node.children.len() > 1) {
                keep = depth;
            }
            let Some(child) = node.children.get(*level) else {
                return;
            };
            node = child;
        }
        let mut node = &mut self.root;
        for level in &levels[..keep] {
            let Some(child) = node.children.get_mut(*level) else {
                return;
            };
            node = child;
        }
        // Dropping the cut chain is a loop too (`RetNode`'s Drop).
        node.children.remove(levels[keep]);
    }

    /// Calls `f` with each (topic, value) whose topic matches `filter` (valid, not shared).
    pub fn for_each_match(&self, filter: &str, mut f: impl FnMut(&str, &V)) {
        self.walk_matches(filter, None, |topic, v| {
            f(topic, v);
            true
        });
    }

    /// Calls `f` with each (topic, value) whose topic matches `filter` (valid, not shared), in
    /// topic order (level by level, a topic before the topics below it), starting after the
    /// topic `after`. Stops when `f` returns false and returns the topic to resume after, or
    /// `None` once every match was seen. A resumed walk sees what was stored after the cursor
    /// in the meantime, and nothing twice.
    pub fn walk_matches(
        &self,
        filter: &str,
        after: Option<&str>,
        mut f: impl FnMut(&str, &V) -> bool,
    ) -> Option<String> {
        let levels: Vec<&str> = filter.split('/').collect();
        let cursor: Vec<&str> = after.map(|a| a.split('/').collect()).unwrap_or_default();
        let mut path = String::new();
        let mut stack = Vec::new();
        if let Some(frame) =
            Self::frame(&self.root, &levels, Some(0), 0, 0, after.is_some(), &cursor)
        {
            stack.push(frame);
        }
        while let Some(top) = stack.last_mut() {
            let Some((name, child)) = top.next() else {
                stack.pop();
                continue;
            };
            let depth = top.depth;
            path.truncate(top.path_len);
            if depth > 1 {
                path.push('/');
            }
            path.push_str(name);
            let on_path = top.on_path && cursor.get(depth - 1) == Some(&name);
            // What the child matched, and what its own children must match.
            let (matched, below) = match top.level {
                None => (true, None),
                Some(i) => match levels.get(i + 1) {
                    None => (true, Some(levels.len())),
                    // "a/#" matches "a" itself as well as everything below it.
                    Some(&"#") => (true, None),
                    Some(_) => (false, Some(i + 1)),
                },
            };
            if matched && !on_path {
                if let Some(v) = &child.value {
                    if !f(&path, v) {
                        return Some(path);
                    }
                }
            }
            let path_len = path.len();
            if let Some(frame) =
                Self::frame(child, &levels, below, depth, path_len, on_path, &cursor)
            {
                stack.push(frame);
            }
        }
        None
    }

    /// The frame that visits `node`'s children (at `depth + 1`) matching filter level
    /// `level` (`None`: everything below a `#`; `levels.len()`: nothing).
    fn frame<'a>(
        node: &'a RetNode<V>,
        levels: &[&str],
        level: Option<usize>,
        depth: usize,
        path_len: usize,
        on_path: bool,
        cursor: &[&str],
    ) -> Option<Frame<'a, V>> {
        if node.children.is_empty() {
            return None;
        }
        // Children at or before the cursor's level at this depth are skipped.
        let from = if on_path {
            cursor.get(depth).copied()
        } else {
            None
        };
        let range = || match from {
            Some(c) => node
                .children
                .range::<str, _>((Bound::Included(c), Bound::Unbounded)),
            None => node.children.range::<str, _>(..),
        };
        let (kids, level, skip_dollar) = match level {
            None => (Kids::Range(range()), None, false),
            Some(i) => match levels.get(i)? {
                &"#" => (Kids::Range(range()), None, depth == 0),
                &"+" => (Kids::Range(range()), Some(i), depth == 0),
                literal => {
                    let kid = node.children.get_key_value(*literal);
                    let kid = kid
                        .map(|(name, node)| (&**name, node))
                        .filter(|(name, _)| from.is_none_or(|c| *name >= c));
                    (Kids::One(kid), Some(i), false)
                }
            },
        };
        Some(Frame {
            kids,
            level,
            depth: depth + 1,
            path_len,
            on_path: from.is_some(),
            skip_dollar,
        })
    }
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
        for (i, t) in TOPICS.iter().enumerate() {
            if i != 1 {
                assert_eq!(tree.remove(t), Some(i), "{t}");
            }
        }
        assert!(tree.is_empty());
        assert!(tree.root.children.is_empty());
    }

    /// A walk resumed page by page sees every match once, in increasing topic order, the same
    /// set as one unpaged walk; also when topics are added and removed between pages.
    #[test]
    fn paged_walks_see_every_match_once() {
        let mut tree = RetainedTree::new();
        let mut topics: Vec<String> = TOPICS.iter().map(|t| t.to_string()).collect();
        for a in ["a", "b", "", "$x"] {
            for b in ["", "a", "b", "c"] {
                topics.push(format!("{a}/{b}"));
                topics.push(format!("{a}/{b}/z"));
            }
        }
        for (i, t) in topics.iter().enumerate() {
            tree.insert(t, i);
        }
        let levels = |t: &str| t.split('/').map(str::to_owned).collect::<Vec<_>>();
        for filter in FILTERS
            .iter()
            .chain(&["#", "+/+/+", "a/#", "$x/#", "+/b/z"])
        {
            let mut all = Vec::new();
            tree.for_each_match(filter, |t, _| all.push(t.to_owned()));
            let mut want: Vec<&String> = topics.iter().filter(|t| matches(filter, t)).collect();
            want.sort_unstable();
            want.dedup();
            let mut got_sorted = all.clone();
            got_sorted.sort_unstable();
            assert_eq!(
                got_sorted.iter().collect::<Vec<_>>(),
                want,
                "filter {filter}"
            );
            for page in 1..4 {
                let mut seen = Vec::new();
                let mut after: Option<String> = None;
                for _ in 0..1000 {
                    let mut n = 0;
                    after = tree.walk_matches(filter, after.as_deref(), |t, _| {
                        seen.push(t.to_owned());
                        n += 1;
                        n < page
                    });
                    if after.is_none() {
                        break;
                    }
                }
                assert!(after.is_none(), "filter {filter}: walk did not end");
                assert_eq!(seen, all, "filter {filter}, page {page}");
                for w in seen.windows(2) {
                    assert!(
                        levels(&w[0]) < levels(&w[1]),
                        "{filter}: {w:?} out of order"
                    );
                }
            }
        }
        // Changes between pages: what is stored after the cursor is seen, nothing twice.
        let mut seen = Vec::new();
        let mut after = tree.walk_matches("#", None, |t, _| {
            seen.push(t.to_owned());
            seen.len() < 5
        });
        tree.insert("zz/new", 999);
        tree.remove(&seen[0]);
        while let Some(a) = after {
            after = tree.walk_matches("#", Some(&a), |t, _| {
                seen.push(t.to_owned());
                true
            });
        }
        assert!(seen.contains(&"zz/new".to_string()));
        let unique: std::collections::BTreeSet<_> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len());
    }

    /// Topics far deeper than any limit are inserted, walked, removed and dropped without
    /// recursion: on a thread with a 128 KiB stack.
    #[test]
    fn deep_topics_need_no_stack() {
        let deep = vec!["a"; 50_000].join("/");
        let handle = std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(move || {
                let mut retained = RetainedTree::new();
                retained.insert(&deep, 1);
                retained.insert("a/b", 2);
                let mut n = 0;
                retained.for_each_match("#", |_, _| n += 1);
                assert_eq!(n, 2);
                assert_eq!(retained.remove(&deep), Some(1));
                assert_eq!(retained.len(), 1);
                retained.insert(&deep, 3);
                drop(retained);

                let mut subs: SubscriptionTree<u32, ()> = SubscriptionTree::new();
                let filter = Filter::parse(&deep).unwrap();
                subs.insert(&filter, 1, ());
                subs.insert(&Filter::parse("a/+/#").unwrap(), 2, ());
                assert_eq!(subs.remove(&filter, &1), Some(()));
                assert_eq!(subs.len(), 1);
                subs.insert(&filter, 1, ());
                drop(subs);
            })
            .unwrap();
        handle.join().unwrap();
    }
}
