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
    count: usize,
}

impl RetainedTree {
    pub fn len(&self) -> usize {
        self.count
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
        if node.message.replace(message).is_none() {
            self.count += 1;
        }
    }

    /// Deletes the retained message of `topic` (an empty retained payload, MQTT-3.3.1-6).
    pub fn remove(&mut self, topic: &[u8]) -> bool {
        let removed = Self::remove_in(&mut self.root, Some(topic));
        if removed {
            self.count -= 1;
        }
        removed
    }

    fn remove_in(node: &mut Node, rest: Option<&[u8]>) -> bool {
        let Some(r) = rest else {
            return node.message.take().is_some();
        };
        let (level, next) = split_level(r);
        let Some(child) = node.children.get_mut(level) else {
            return false;
        };
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
    use crate::codec::topic::matches;
    use crate::codec::{Properties, QoS, Utf8Bytes};
    use bytes::Bytes;

    fn msg(topic: &str) -> Arc<Message> {
        Arc::new(Message {
            topic: Utf8Bytes::from(topic),
            payload: Bytes::from_static(b"x"),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: Properties::default(),
            expires_at: None,
            publisher: 0,
            encoded_properties: Default::default(),
            stored_id: Default::default(),
        })
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
}
