//! Retained messages: at most one per topic name, found by topic filter on SUBSCRIBE.
//!
//! A trie of topic levels, so a selective filter visits only the branches it can match; `#`
//! visits the subtree. Expired messages are dropped when met. This is the in-memory side of the
//! store seam (`crate::store`): the store persists what this holds.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::message::Message;
use crate::subscriptions::split_level;

#[derive(Default)]
struct Node {
    children: HashMap<Box<[u8]>, Node>,
    message: Option<Arc<Message>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.message.is_none()
    }
}

#[derive(Default)]
pub struct RetainedTree {
    root: Node,
    /// Topics holding a message, and their bytes ([`size`]): kept by `insert` and `remove`,
    /// the two ways a value changes, for the limits of `insert_within`.
    count: usize,
    bytes: usize,
}

/// What a retained value counts for against `mqtt.max_retained_bytes`: topic and payload.
fn size(m: &Message) -> usize {
    m.topic.len() + m.payload.len()
}

impl RetainedTree {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Stores `message` for its topic, replacing the previous one.
    pub fn insert(&mut self, message: Arc<Message>) {
        let mut node = &mut self.root;
        let mut rest = Some(message.topic.as_bytes().as_ref());
        while let Some(r) = rest {
            let (level, next) = split_level(r);
            node = node.children.entry(level.into()).or_default();
            rest = next;
        }
        self.bytes += size(&message);
        match node.message.replace(message) {
            Some(old) => self.bytes -= size(&old),
            None => self.count += 1,
        }
    }

    /// `insert`, unless a new topic would take the tree past `max_count` topics, or the value
    /// past `max_bytes` (a replacement no larger than the value it replaces always fits).
    /// Returns whether it was stored; a refused message changes nothing.
    pub fn insert_within(&mut self, message: Arc<Message>, max_count: u64, max_bytes: u64) -> bool {
        let new = size(&message);
        let old = self.get(message.topic.as_bytes()).map(|m| size(m));
        let bytes_after = (self.bytes - old.unwrap_or(0) + new) as u64;
        let fits = match old {
            Some(old) => new <= old || bytes_after <= max_bytes,
            None => (self.count as u64) < max_count && bytes_after <= max_bytes,
        };
        if fits {
            self.insert(message);
        }
        fits
    }

    /// The message retained for exactly `topic`.
    fn get(&self, topic: &[u8]) -> Option<&Arc<Message>> {
        let mut node = &self.root;
        let mut rest = Some(topic);
        while let Some(r) = rest {
            let (level, next) = split_level(r);
            node = node.children.get(level)?;
            rest = next;
        }
        node.message.as_ref()
    }

    /// Deletes the retained message of `topic` (an empty retained payload, MQTT-3.3.1-6).
    pub fn remove(&mut self, topic: &[u8]) -> bool {
        let Some(removed) = Self::remove_in(&mut self.root, Some(topic)) else {
            return false;
        };
        self.count -= 1;
        self.bytes -= size(&removed);
        true
    }

    fn remove_in(node: &mut Node, rest: Option<&[u8]>) -> Option<Arc<Message>> {
        let Some(r) = rest else {
            return node.message.take();
        };
        let (level, next) = split_level(r);
        let child = node.children.get_mut(level)?;
        let removed = Self::remove_in(child, next);
        if child.is_empty() {
            node.children.remove(level);
        }
        removed
    }

    /// Every live retained message whose topic matches `filter`.
    pub fn matching(&self, filter: &str, now: Instant) -> Vec<Arc<Message>> {
        let mut out = Vec::new();
        Self::collect(&self.root, Some(filter.as_bytes()), true, now, &mut out);
        out
    }

    fn collect(
        node: &Node,
        rest: Option<&[u8]>,
        at_root: bool,
        now: Instant,
        out: &mut Vec<Arc<Message>>,
    ) {
        let Some(r) = rest else {
            if let Some(m) = &node.message
                && !m.is_expired(now)
            {
                out.push(m.clone());
            }
            return;
        };
        let (level, next) = split_level(r);
        match level {
            b"#" => {
                // "a/#" also matches "a" itself.
                if let Some(m) = &node.message
                    && !at_root
                    && !m.is_expired(now)
                {
                    out.push(m.clone());
                }
                for (name, child) in &node.children {
                    if at_root && name.first() == Some(&b'$') {
                        continue;
                    }
                    Self::collect_all(child, now, out);
                }
            }
            b"+" => {
                for (name, child) in &node.children {
                    if at_root && name.first() == Some(&b'$') {
                        continue;
                    }
                    Self::collect(child, next, false, now, out);
                }
            }
            _ => {
                if let Some(child) = node.children.get(level) {
                    Self::collect(child, next, false, now, out);
                }
            }
        }
    }

    /// Every live retained message but the broker's own `$SYS` ones (for snapshots).
    pub fn all(&self, now: Instant) -> Vec<Arc<Message>> {
        let mut out = Vec::with_capacity(self.count);
        for (name, child) in &self.root.children {
            if &**name != b"$SYS" {
                Self::collect_all(child, now, &mut out);
            }
        }
        out
    }

    fn collect_all(node: &Node, now: Instant, out: &mut Vec<Arc<Message>>) {
        if let Some(m) = &node.message
            && !m.is_expired(now)
        {
            out.push(m.clone());
        }
        for child in node.children.values() {
            Self::collect_all(child, now, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;
    use crate::codec::topic::matches;
    use bytes::Bytes;

    fn msg(topic: &str) -> Arc<Message> {
        sized(topic, 1)
    }

    fn sized(topic: &str, payload: usize) -> Arc<Message> {
        let payload = Bytes::from(vec![b'x'; payload]);
        Arc::new(Message::plain(topic.into(), payload, QoS::AtMostOnce, true))
    }

    #[test]
    fn agrees_with_reference_matcher() {
        let topics = [
            "a", "a/b", "a/b/c", "/", "/x", "a/", "$SYS/up", "b/b", "a//c",
        ];
        let filters = [
            "#", "+", "a/#", "a/+", "+/b", "/+", "$SYS/#", "+/+/c", "a/b", "a/+/c",
        ];
        let mut tree = RetainedTree::default();
        for t in topics {
            tree.insert(msg(t));
        }
        assert_eq!(tree.len(), topics.len());
        let now = Instant::now();
        for f in filters {
            let mut got: Vec<String> = tree
                .matching(f, now)
                .iter()
                .map(|m| m.topic.to_string())
                .collect();
            got.sort();
            let mut want: Vec<String> = topics
                .iter()
                .filter(|t| matches(f, t))
                .map(|t| t.to_string())
                .collect();
            want.sort();
            assert_eq!(got, want, "filter {f}");
        }
        for t in topics {
            assert!(tree.remove(t.as_bytes()));
        }
        assert!(tree.len() == 0 && tree.root.is_empty());
    }

    #[test]
    fn limits_count_topics_and_bytes_and_let_replacements_shrink() {
        let mut tree = RetainedTree::default();
        // Two topics at most, 20 bytes at most (topic + payload).
        assert!(tree.insert_within(sized("a", 4), 2, 20)); // 5
        assert!(tree.insert_within(sized("b", 9), 2, 20)); // 15
        assert!(!tree.insert_within(sized("c", 1), 2, 20), "a third topic");
        assert!(
            !tree.insert_within(sized("a", 10), 2, 20),
            "grows past 20 bytes"
        );
        assert!(
            tree.insert_within(sized("a", 9), 2, 20),
            "grows to exactly 20"
        );
        assert_eq!((tree.len(), tree.bytes()), (2, 20));
        assert!(
            tree.insert_within(sized("b", 1), 2, 20),
            "a smaller replacement"
        );
        assert_eq!(tree.bytes(), 12);
        assert!(tree.remove(b"a"));
        assert_eq!((tree.len(), tree.bytes()), (1, 2));
        assert!(tree.insert_within(sized("c", 1), 2, 20));
        assert!(
            tree.get(b"d").is_none() && tree.root.children.len() == 2,
            "a refusal leaves no node"
        );
    }
}
