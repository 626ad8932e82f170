//! MQTT topics and filters as NATS subjects. A topic level becomes a subject token; NATS
//! reserves `.`, `*`, `>` and whitespace, and a token may not be empty, while an MQTT level may
//! hold anything but `/`, `+`, `#` and be empty. So every byte outside `[A-Za-z0-9_-]` is
//! written `=XX` (hex) and an empty level is `=`. A filter's `+` becomes `*`; its `#` becomes
//! `>` and, since MQTT's `a/#` also matches `a`, the parent subject too.
//!
//! `<prefix>.m.<levels>` carries messages (to the nodes whose subscriptions match) and
//! `<prefix>.r.<levels>` retained ones (to every node, which keeps the retained value).

fn level(out: &mut String, l: &str) {
    if l.is_empty() {
        out.push('=');
        return;
    }
    for b in l.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
}

/// The subject of a message on `topic` under `base` (`<prefix>.m`).
pub fn topic_subject(base: &str, topic: &str) -> String {
    let mut s = String::with_capacity(base.len() + topic.len() + 8);
    s.push_str(base);
    for l in topic.split('/') {
        s.push('.');
        level(&mut s, l);
    }
    s
}

/// The subjects a node subscribes to for `filter` (one, or two for a trailing `#`).
pub fn filter_subjects(base: &str, filter: &str) -> Vec<String> {
    let levels: Vec<&str> = filter.split('/').collect();
    let mut s = String::from(base);
    for (i, l) in levels.iter().enumerate() {
        match *l {
            "#" => {
                let parent = s.clone();
                s.push_str(".>");
                // `#` alone matches every topic; `a/#` matches `a` as well.
                return if i == 0 { vec![s] } else { vec![parent, s] };
            }
            "+" => s.push_str(".*"),
            l => {
                s.push('.');
                level(&mut s, l);
            }
        }
    }
    vec![s]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_become_valid_subjects() {
        assert_eq!(topic_subject("t.m", "a/b/c"), "t.m.a.b.c");
        assert_eq!(topic_subject("t.m", "/x//y "), "t.m.=.x.=.y=20");
        assert_eq!(topic_subject("t.m", "a.b/*/>"), "t.m.a=2Eb.=2A.=3E");
        assert_eq!(topic_subject("t.m", "temp=5"), "t.m.temp=3D5");
    }

    #[test]
    fn filters_become_subjects_that_match_the_same_topics() {
        assert_eq!(filter_subjects("t.m", "a/+/c"), ["t.m.a.*.c"]);
        assert_eq!(filter_subjects("t.m", "#"), ["t.m.>"]);
        assert_eq!(filter_subjects("t.m", "a/#"), ["t.m.a", "t.m.a.>"]);
        assert_eq!(
            filter_subjects("t.m", "a.b/x"),
            [topic_subject("t.m", "a.b/x")]
        );
        // An empty level in a filter is an empty level of the topic.
        assert_eq!(filter_subjects("t.m", "/+"), ["t.m.=.*"]);
    }
}
