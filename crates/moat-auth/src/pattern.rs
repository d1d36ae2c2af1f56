//! ACL topic patterns compiled into levels, and the three questions the ACL asks of them:
//! does a pattern match a topic, does it cover every topic of a filter, does it meet a filter.
//!
//! `%u` and `%c` are never substituted into a new string: a template level is compared piece
//! by piece with the level it meets, so a check allocates nothing.

/// One piece of a template level such as `dev-%u`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Lit(Box<str>),
    User,
    Client,
}

/// One level of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Lit(Box<str>),
    Plus,
    Hash,
    Template(Box<[Piece]>),
}

/// A compiled pattern (an MQTT filter that may hold `%u` and `%c`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pattern {
    levels: Box<[Level]>,
    /// The first level is `$...` literally (a wildcard-led filter never meets it).
    dollar: bool,
}

/// The substitution values of one check, already vetted: `None` when absent or unusable.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Values<'a> {
    pub(crate) user: Option<&'a str>,
    pub(crate) client: Option<&'a str>,
}

impl<'a> Values<'a> {
    pub(crate) fn new(user: Option<&'a str>, client: &'a str) -> Self {
        Self {
            user: user.filter(|u| usable(u)),
            client: Some(client).filter(|c| usable(c)),
        }
    }
}

/// A value that can stand for one whole level without widening a rule: not empty, no `/`,
/// `+`, `#` or NUL, and not `$...` (which would reach `$SYS` from a `%u/#` rule).
fn usable(v: &str) -> bool {
    !v.is_empty() && !v.starts_with('$') && !v.contains(['/', '+', '#', '\0'])
}

/// A level of a filter or topic given in a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FLevel<'a> {
    Lit(&'a str),
    Plus,
    Hash,
}

/// Parses a filter given in a SUBSCRIBE (no `%` meaning). `None` if it is not a valid filter.
pub(crate) fn parse_filter(filter: &str) -> Option<Vec<FLevel<'_>>> {
    if filter.is_empty() || filter.contains('\0') {
        return None;
    }
    let mut out = Vec::with_capacity(8);
    let mut it = filter.split('/').peekable();
    while let Some(l) = it.next() {
        out.push(match l {
            "+" => FLevel::Plus,
            "#" if it.peek().is_none() => FLevel::Hash,
            _ if l.contains(['+', '#']) => return None,
            _ => FLevel::Lit(l),
        });
    }
    Some(out)
}

impl Pattern {
    /// Compiles a rule's topic pattern.
    ///
    /// # Errors
    /// A lower-case reason when it is not a valid MQTT filter.
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("empty topic pattern".into());
        }
        if s.contains('\0') {
            return Err("topic pattern contains NUL".into());
        }
        if s.len() > 65_535 {
            return Err("topic pattern longer than 65535 bytes".into());
        }
        if s.starts_with("$share/") {
            return Err("write the filter without `$share/group/`: shared subscriptions are checked by their inner filter".into());
        }
        let parts: Vec<&str> = s.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        for (i, l) in parts.iter().enumerate() {
            levels.push(match *l {
                "+" => Level::Plus,
                "#" if i + 1 == parts.len() => Level::Hash,
                "#" => return Err(format!("`#` must be the last level in {s:?}")),
                _ if l.contains(['+', '#']) => {
                    return Err(format!(
                        "`+` and `#` must stand alone in a level, as in `a/+/b` or `a/#` ({s:?})"
                    ))
                }
                _ if l.contains("%u") || l.contains("%c") => Level::Template(template(l)),
                _ => Level::Lit((*l).into()),
            });
        }
        let dollar = matches!(&levels[0], Level::Lit(l) if l.starts_with('$'))
            || matches!(&levels[0], Level::Template(p) if matches!(p.first(), Some(Piece::Lit(l)) if l.starts_with('$')));
        Ok(Self {
            levels: levels.into(),
            dollar,
        })
    }

    fn leading_wildcard(&self) -> bool {
        matches!(self.levels[0], Level::Plus | Level::Hash)
    }

    /// Does this pattern match `topic` (a topic name, no wildcards)? In an allow rule
    /// (`strict`), a leading wildcard does not match a `$` topic, as in MQTT; in a deny rule it
    /// does, and a template with an unusable value matches any level, so a deny rule is never
    /// narrowed by an odd user name.
    pub(crate) fn matches_topic(&self, topic: &str, v: Values<'_>, strict: bool) -> bool {
        if strict && topic.starts_with('$') && self.leading_wildcard() {
            return false;
        }
        let mut t = topic.split('/');
        for l in self.levels.iter() {
            if let Level::Hash = l {
                return true;
            }
            let Some(tl) = t.next() else {
                return false;
            };
            let ok = match l {
                Level::Lit(a) => **a == *tl,
                Level::Plus | Level::Hash => true,
                Level::Template(p) => template_eq(p, tl, v).unwrap_or(!strict),
            };
            if !ok {
                return false;
            }
        }
        t.next().is_none()
    }

    /// Does every topic that `filter` can match also match this pattern (allow-rule
    /// semantics)?
    pub(crate) fn covers(&self, filter: &[FLevel<'_>], v: Values<'_>) -> bool {
        if let Some(FLevel::Lit(f0)) = filter.first() {
            if f0.starts_with('$') && self.leading_wildcard() {
                return false;
            }
        }
        let mut i = 0;
        loop {
            match (self.levels.get(i), filter.get(i)) {
                (Some(Level::Hash), _) => return true,
                (None, None) => return true,
                (None, Some(_)) | (Some(_), None) => return false,
                (Some(_), Some(FLevel::Hash)) => return false,
                (Some(Level::Plus), Some(_)) => {}
                (Some(Level::Lit(a)), Some(FLevel::Lit(b))) => {
                    if **a != **b {
                        return false;
                    }
                }
                (Some(Level::Template(p)), Some(FLevel::Lit(b))) => {
                    if template_eq(p, b, v) != Some(true) {
                        return false;
                    }
                }
                (Some(Level::Lit(_) | Level::Template(_)), Some(FLevel::Plus)) => return false,
            }
            i += 1;
        }
    }

    /// Is there a topic that both this pattern (deny-rule semantics: a leading wildcard matches
    /// `$` topics, an unusable template value matches any level) and `filter` match?
    pub(crate) fn meets(&self, filter: &[FLevel<'_>], v: Values<'_>) -> bool {
        if matches!(filter.first(), Some(FLevel::Plus | FLevel::Hash)) && self.dollar {
            return false;
        }
        let mut i = 0;
        loop {
            match (self.levels.get(i), filter.get(i)) {
                (Some(Level::Hash), _) | (_, Some(FLevel::Hash)) => return true,
                (None, None) => return true,
                (None, Some(_)) | (Some(_), None) => return false,
                (Some(Level::Plus), Some(_)) | (Some(_), Some(FLevel::Plus)) => {}
                (Some(Level::Lit(a)), Some(FLevel::Lit(b))) => {
                    if **a != **b {
                        return false;
                    }
                }
                (Some(Level::Template(p)), Some(FLevel::Lit(b))) => {
                    if template_eq(p, b, v) == Some(false) {
                        return false;
                    }
                }
            }
            i += 1;
        }
    }
}

fn template(level: &str) -> Box<[Piece]> {
    let mut pieces = Vec::new();
    let mut lit = String::new();
    let mut rest = level;
    while let Some(pos) = rest.find('%') {
        let (before, after) = rest.split_at(pos);
        lit.push_str(before);
        let piece = match after.as_bytes().get(1) {
            Some(b'u') => Some(Piece::User),
            Some(b'c') => Some(Piece::Client),
            _ => None,
        };
        match piece {
            Some(p) => {
                if !lit.is_empty() {
                    pieces.push(Piece::Lit(std::mem::take(&mut lit).into()));
                }
                pieces.push(p);
                rest = &after[2..];
            }
            None => {
                lit.push('%');
                rest = &after[1..];
            }
        }
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        pieces.push(Piece::Lit(lit.into()));
    }
    pieces.into()
}

/// Is `level` the template with `v` substituted? `None` if a value it needs is unusable.
fn template_eq(pieces: &[Piece], level: &str, v: Values<'_>) -> Option<bool> {
    let mut rest = level;
    let mut equal = true;
    for p in pieces {
        let s = match p {
            Piece::Lit(l) => &**l,
            Piece::User => v.user?,
            Piece::Client => v.client?,
        };
        match rest.strip_prefix(s) {
            Some(r) if equal => rest = r,
            _ => equal = false,
        }
    }
    Some(equal && rest.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }
    const V: Values<'static> = Values {
        user: Some("alice"),
        client: Some("c1"),
    };
    const NONE: Values<'static> = Values {
        user: None,
        client: None,
    };

    #[test]
    fn invalid_patterns() {
        for bad in ["", "a/#/b", "a+", "a/b#", "#/a", "$share/g/a", "a\0"] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?}");
        }
        for ok in [
            "#",
            "+",
            "a/+/#",
            "/",
            "a//b",
            "$SYS/#",
            "%u",
            "x-%u-%c/%%",
            "100%",
        ] {
            assert!(Pattern::parse(ok).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn topic_matching() {
        let cases: &[(&str, &str, bool)] = &[
            ("a/b", "a/b", true),
            ("a/b", "a/b/c", false),
            ("a/b", "a", false),
            ("a/+", "a/b", true),
            ("a/+", "a/", true),
            ("a/+", "a/b/c", false),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("a/#", "ab", false),
            ("#", "a/b", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("%u/#", "alice/x", true),
            ("%u/#", "bob/x", false),
            ("d/dev-%u-%c", "d/dev-alice-c1", true),
            ("d/dev-%u-%c", "d/dev-alice-c2", false),
            ("d/dev-%u", "d/dev-alicex", false),
            ("50%", "50%", true),
        ];
        for &(pat, topic, want) in cases {
            assert_eq!(
                p(pat).matches_topic(topic, V, true),
                want,
                "{pat} vs {topic}"
            );
        }
        // Deny semantics: `$` topics are reached, unusable values act as `+`.
        assert!(p("#").matches_topic("$SYS/x", V, false));
        assert!(p("%u/#").matches_topic("anyone/x", NONE, false));
        assert!(!p("%u/#").matches_topic("anyone/x", NONE, true));
    }

    #[test]
    fn template_pieces() {
        let pattern = p("x-%u-%c/%%");
        assert!(pattern.matches_topic("x-alice-c1/%%", V, true));
        assert!(!pattern.matches_topic("x-alice-c1/%", V, true));
    }

    #[test]
    fn covers_and_meets() {
        // (pattern, filter, covers, meets)
        let cases: &[(&str, &str, bool, bool)] = &[
            ("a/#", "a/+/c", true, true),
            ("a/#", "a/#", true, true),
            ("a/#", "a", true, true),
            ("a/b", "a/#", false, true),
            ("a/b", "a/+", false, true),
            ("a/b", "a/b", true, true),
            ("a/b", "a/c", false, false),
            ("+/b", "x/b", true, true),
            ("+/b", "+/b", true, true),
            ("+/b", "#", false, true),
            ("+/b", "+/#", false, true),
            ("+/+", "a/#", false, true),
            ("a", "a/#", false, true),
            ("a/+", "a", false, false),
            ("#", "#", true, true),
            ("#", "$SYS/#", false, true),
            ("$SYS/#", "#", false, false),
            ("$SYS/#", "+/x", false, false),
            ("$SYS/#", "$SYS/+", true, true),
            ("%u/#", "alice/+", true, true),
            ("%u/#", "+/x", false, true),
            ("%u/#", "bob/x", false, false),
        ];
        for &(pat, filter, covers, meets) in cases {
            let f = parse_filter(filter).unwrap();
            assert_eq!(p(pat).covers(&f, V), covers, "{pat} covers {filter}");
            assert_eq!(p(pat).meets(&f, V), meets, "{pat} meets {filter}");
        }
    }
}
