//! Topic names and topic filters (MQTT 5.0 section 4.7), parsed once.

use std::fmt;

/// Why a topic name or filter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// Topic names and filters are at least one character long.
    #[error("empty topic [MQTT-4.7.3-1]")]
    Empty,
    /// A topic name may not contain '+' or '#'.
    #[error("wildcard in a topic name [MQTT-3.3.2-2]")]
    WildcardInName,
    /// '#' must be the last level, alone.
    #[error("'#' is not alone in the last level [MQTT-4.7.1-1]")]
    BadMultiLevelWildcard,
    /// '+' must occupy a whole level.
    #[error("'+' does not occupy a whole level [MQTT-4.7.1-2]")]
    BadSingleLevelWildcard,
    /// The NUL character is not allowed.
    #[error("NUL character in topic [MQTT-4.7.3-2]")]
    Nul,
    /// `$share/` needs a non-empty group name without wildcards and a filter.
    #[error("invalid shared subscription; expected $share/{{group}}/{{filter}} [MQTT-4.8.2-1]")]
    BadShare,
    /// More levels than the broker's `max_topic_levels`.
    #[error("more than {max} topic levels")]
    TooManyLevels {
        /// The limit.
        max: usize,
    },
    /// Longer than the broker's `max_topic_length`.
    #[error("topic longer than {max} bytes")]
    TooLong {
        /// The limit.
        max: usize,
    },
}

/// The broker's own limits on topic names and filters (beyond the specification's 65,535
/// bytes). Checked before a topic reaches a tree or the store, so no walk is deeper than
/// `max_levels`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicLimits {
    /// Levels (one more than the number of '/') at most.
    pub max_levels: usize,
    /// Bytes at most (for `$share/group/filter`, the whole string).
    pub max_len: usize,
}

impl TopicLimits {
    /// Checks a topic name or filter against the limits.
    ///
    /// # Errors
    /// [`TopicError::TooLong`] or [`TopicError::TooManyLevels`].
    pub fn check(&self, topic: &str) -> Result<(), TopicError> {
        if topic.len() > self.max_len {
            return Err(TopicError::TooLong { max: self.max_len });
        }
        // Counted without splitting: a 60 KB topic of '/' is 60,001 levels.
        if topic.bytes().filter(|&b| b == b'/').count() >= self.max_levels {
            return Err(TopicError::TooManyLevels {
                max: self.max_levels,
            });
        }
        Ok(())
    }
}

/// Checks a topic name from a PUBLISH or a will.
///
/// # Errors
/// [`TopicError`] names the rule broken.
pub fn validate_topic_name(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(TopicError::WildcardInName);
    }
    if topic.contains('\0') {
        return Err(TopicError::Nul);
    }
    Ok(())
}

/// Checks the wildcard syntax of a (non-shared) topic filter.
///
/// # Errors
/// [`TopicError`] names the rule broken.
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    if filter.contains('\0') {
        return Err(TopicError::Nul);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::BadMultiLevelWildcard);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::BadSingleLevelWildcard);
        }
    }
    Ok(())
}

/// A subscription filter as given in SUBSCRIBE: plain or shared.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Filter {
    /// The share group of a `$share/group/filter` subscription.
    pub share_group: Option<String>,
    /// The filter matched against topic names (without the `$share/group/` prefix).
    pub filter: String,
}

impl Filter {
    /// Parses and validates a filter from SUBSCRIBE or UNSUBSCRIBE.
    ///
    /// # Errors
    /// [`TopicError`] names the rule broken.
    pub fn parse(raw: &str) -> Result<Self, TopicError> {
        if let Some(rest) = raw.strip_prefix("$share/") {
            let (group, filter) = rest.split_once('/').ok_or(TopicError::BadShare)?;
            if group.is_empty() || group.contains(['+', '#']) || filter.is_empty() {
                return Err(TopicError::BadShare);
            }
            validate_filter(filter)?;
            return Ok(Self {
                share_group: Some(group.to_owned()),
                filter: filter.to_owned(),
            });
        }
        if raw == "$share" {
            return Err(TopicError::BadShare);
        }
        validate_filter(raw)?;
        Ok(Self {
            share_group: None,
            filter: raw.to_owned(),
        })
    }

    /// True if the filter contains a wildcard.
    pub fn has_wildcard(&self) -> bool {
        self.filter.contains(['+', '#'])
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.share_group {
            Some(g) => write!(f, "$share/{g}/{}", self.filter),
            None => f.write_str(&self.filter),
        }
    }
}

/// Does `filter` (valid, not shared) match `topic` (a valid topic name)?
///
/// Topics starting with `$` are not matched by a filter starting with a wildcard
/// [MQTT-4.7.2-1].
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_validation() {
        for ok in [
            "a", "a/b", "+", "#", "a/+/c", "a/#", "+/+", "/", "//", "$SYS/#", "a/+",
        ] {
            assert_eq!(validate_filter(ok), Ok(()), "{ok}");
        }
        for (bad, err) in [
            ("", TopicError::Empty),
            ("a/#/b", TopicError::BadMultiLevelWildcard),
            ("a#", TopicError::BadMultiLevelWildcard),
            ("a/b#", TopicError::BadMultiLevelWildcard),
            ("a+", TopicError::BadSingleLevelWildcard),
            ("a/+b/c", TopicError::BadSingleLevelWildcard),
            ("a\0", TopicError::Nul),
        ] {
            assert_eq!(validate_filter(bad), Err(err), "{bad}");
        }
    }

    #[test]
    fn topic_name_validation() {
        assert_eq!(validate_topic_name("a/b"), Ok(()));
        assert_eq!(validate_topic_name("/"), Ok(()));
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        assert_eq!(validate_topic_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a/#"), Err(TopicError::WildcardInName));
    }

    #[test]
    fn shared_filters() {
        let f = Filter::parse("$share/g1/a/+").unwrap();
        assert_eq!(f.share_group.as_deref(), Some("g1"));
        assert_eq!(f.filter, "a/+");
        assert_eq!(f.to_string(), "$share/g1/a/+");
        for bad in [
            "$share/",
            "$share//a",
            "$share/g",
            "$share/g/",
            "$share/g+/a",
            "$share",
        ] {
            assert!(Filter::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Filter::parse("$sharex/a").unwrap().share_group, None);
    }

    #[test]
    fn matching() {
        let table = [
            ("a/b", "a/b", true),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "a/b", true),
            ("+/+", "/a", true),
            ("+", "/a", false),
            ("/+", "/a", true),
            ("a/+/c", "a//c", true),
            ("+/#", "a", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("$SYS/+", "$SYS/x", true),
            ("a/b", "a/b/", false),
            ("a/b/", "a/b/", true),
            ("a/b/#", "a/b", true),
            ("TopicA/+", "TopicA/B", true),
            ("Topic/C", "TopicA/C", false),
        ];
        for (f, t, want) in table {
            assert_eq!(matches(f, t), want, "{f} vs {t}");
        }
    }
}
