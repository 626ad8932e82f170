//! Topic name and topic filter syntax (MQTT 5.0 §4.7), and matching one name against one filter.
//!
//! The broker's subscription index matches many filters at once; `matches` here is the reference
//! used by tests and by the retained-message store.

/// A topic name a client may publish to: non-empty, no `+` or `#` (MQTT-3.3.2-2, 4.7.3-1).
/// Judged on the bytes, so a decoded [`super::Utf8Bytes`] is not checked for UTF-8 again.
pub fn valid_topic_name(name: impl AsRef<[u8]>) -> bool {
    let name = name.as_ref();
    !name.is_empty() && !name.iter().any(|&b| b == b'+' || b == b'#') && name.len() <= 65535
}

/// A topic filter: non-empty; `#` only as a whole last level; `+` only as a whole level
/// (MQTT-4.7.1-1, -2).
pub fn valid_topic_filter(filter: &str) -> bool {
    if filter.is_empty() {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        if level.contains('#') && (level != "#" || !last) {
            return false;
        }
        if level.contains('+') && level != "+" {
            return false;
        }
    }
    true
}

/// Whether a filter has a wildcard level.
pub fn has_wildcard(filter: &str) -> bool {
    filter.bytes().any(|b| b == b'+' || b == b'#')
}

/// A parsed `$share/{ShareName}/{filter}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedFilter<'a> {
    pub group: &'a str,
    pub filter: &'a str,
}

/// A `$share/...` filter whose share name or inner filter is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidSharedFilter;

/// Splits a shared subscription. `Ok(None)` for an ordinary filter; `Err` when it starts with
/// `$share/` but the share name or filter is invalid (MQTT-4.8.2-1, -2).
pub fn parse_shared(filter: &str) -> Result<Option<SharedFilter<'_>>, InvalidSharedFilter> {
    let Some(rest) = filter.strip_prefix("$share/") else {
        if filter == "$share" {
            return Err(InvalidSharedFilter);
        }
        return Ok(None);
    };
    let Some((group, inner)) = rest.split_once('/') else {
        return Err(InvalidSharedFilter);
    };
    if group.is_empty() || group.contains('+') || group.contains('#') {
        return Err(InvalidSharedFilter);
    }
    if !valid_topic_filter(inner) {
        return Err(InvalidSharedFilter);
    }
    Ok(Some(SharedFilter {
        group,
        filter: inner,
    }))
}

/// `$share/g/a/b` → `(Some("g"), "a/b")`; any other filter, a malformed shared one included,
/// → `(None, filter)`.
pub fn split_shared(filter: &str) -> (Option<&str>, &str) {
    match parse_shared(filter) {
        Ok(Some(s)) => (Some(s.group), s.filter),
        _ => (None, filter),
    }
}

/// Whether `name` matches `filter`. Names starting with `$` are not matched by a filter whose
/// first level is a wildcard (MQTT-4.7.2-1).
pub fn matches(filter: &str, name: &str) -> bool {
    if name.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut n = name.split('/');
    loop {
        match (f.next(), n.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(nl)) if fl == nl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_topic_name("a/b"));
        assert!(valid_topic_name("/"));
        assert!(!valid_topic_name(""));
        assert!(!valid_topic_name("a/+"));
        assert!(!valid_topic_name("a/#"));
    }

    #[test]
    fn filters() {
        for ok in [
            "#",
            "+",
            "a/#",
            "a/+/b",
            "+/+",
            "/",
            "a//b",
            "sport/tennis/#",
        ] {
            assert!(valid_topic_filter(ok), "{ok}");
        }
        for bad in ["", "a/#/b", "a#", "a/b+", "+a", "##", "#/"] {
            assert!(!valid_topic_filter(bad), "{bad}");
        }
    }

    #[test]
    fn matching() {
        assert!(matches("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking"
        ));
        assert!(matches("sport/#", "sport"));
        assert!(matches("sport/+", "sport/"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/#", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
    }

    #[test]
    fn shared() {
        assert_eq!(
            parse_shared("$share/g/a/+"),
            Ok(Some(SharedFilter {
                group: "g",
                filter: "a/+"
            }))
        );
        assert_eq!(parse_shared("a/b"), Ok(None));
        assert!(parse_shared("$share/g").is_err());
        assert!(parse_shared("$share//a").is_err());
        assert!(parse_shared("$share/g+/a").is_err());
        assert!(parse_shared("$share/g/a#").is_err());
    }
}
