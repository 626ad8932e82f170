//! The subscription index: a trie of topic-filter levels that finds every subscription matching
//! a topic name in time proportional to the name's depth, not to the number of subscriptions.
//!
//! Each node has named children, a `+` child, and the subscribers whose filter ends at the node
//! or at a `#` below it. Shared subscriptions (`$share/group/filter`) sit in the node of their
//! inner filter, grouped by share name; a message goes to one member of each group.
//!
//! Levels are bytes: a topic is matched as the codec decoded it (already UTF-8 checked), with
//! no second check on the routing path.
//!
//! Invariant: a session appears at most once per (node, group) - subscribing again to the same
//! filter replaces the options (MQTT-3.8.4-3).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::codec::SubscriptionOptions;
use crate::session::Session;

#[derive(Clone)]
pub struct Subscriber {
    pub session: Arc<Session>,
    pub options: SubscriptionOptions,
    pub subscription_id: Option<u32>,
}

#[derive(Default)]
struct SubscriberSet {
    /// Keyed by session id.
    direct: HashMap<u64, Subscriber>,
    /// Share name → members, with a round-robin cursor.
    shared: HashMap<Box<str>, SharedGroup>,
}

#[derive(Default)]
struct SharedGroup {
    members: Vec<Subscriber>,
    /// Round-robin cursor; atomic so matching needs only shared access to the tree.
    next: AtomicUsize,
}

impl SubscriberSet {
    fn is_empty(&self) -> bool {
        self.direct.is_empty() && self.shared.is_empty()
    }
}

#[derive(Default)]
struct Node {
    children: HashMap<Box<[u8]>, Node>,
    plus: Option<Box<Node>>,
    /// Filters ending here exactly.
    exact: SubscriberSet,
    /// Filters ending in `/#` below this node (or `#` at the root).
    hash: SubscriberSet,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.exact.is_empty()
            && self.hash.is_empty()
    }
}

/// A match: the subscriber and whether it came through a shared subscription.
pub struct Matched<'a> {
    pub subscriber: &'a Subscriber,
    pub shared: bool,
}

#[derive(Default)]
pub struct SubscriptionTree {
    root: Node,
    count: usize,
}

impl SubscriptionTree {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds or replaces a subscription. Returns true if it replaced one.
    pub fn insert(&mut self, filter: &str, group: Option<&str>, sub: Subscriber) -> bool {
        let set = Self::set_for(&mut self.root, filter);
        let id = sub.session.id;
        let replaced = match group {
            None => set.direct.insert(id, sub).is_some(),
            Some(g) => {
                let grp = set.shared.entry(g.into()).or_default();
                if let Some(m) = grp.members.iter_mut().find(|m| m.session.id == id) {
                    *m = sub;
                    true
                } else {
                    grp.members.push(sub);
                    false
                }
            }
        };
        if !replaced {
            self.count += 1;
        }
        replaced
    }

    /// Removes one session's subscription. Returns true if it existed.
    pub fn remove(&mut self, filter: &str, group: Option<&str>, session_id: u64) -> bool {
        let removed = Self::remove_in(&mut self.root, Some(filter.as_bytes()), group, session_id);
        if removed {
            self.count -= 1;
        }
        removed
    }

    fn remove_in(node: &mut Node, rest: Option<&[u8]>, group: Option<&str>, id: u64) -> bool {
        let Some(rest) = rest else {
            return Self::remove_from_set(&mut node.exact, group, id);
        };
        let (level, next) = split_level(rest);
        if level == b"#" {
            return Self::remove_from_set(&mut node.hash, group, id);
        }
        if level == b"+" {
            let Some(child) = node.plus.as_deref_mut() else {
                return false;
            };
            let removed = Self::remove_in(child, next, group, id);
            if child.is_empty() {
                node.plus = None;
            }
            return removed;
        }
        let Some(child) = node.children.get_mut(level) else {
            return false;
        };
        let removed = Self::remove_in(child, next, group, id);
        if child.is_empty() {
            node.children.remove(level);
        }
        removed
    }

    fn remove_from_set(set: &mut SubscriberSet, group: Option<&str>, id: u64) -> bool {
        match group {
            None => set.direct.remove(&id).is_some(),
            Some(g) => {
                let Some(grp) = set.shared.get_mut(g) else {
                    return false;
                };
                let before = grp.members.len();
                grp.members.retain(|m| m.session.id != id);
                let removed = grp.members.len() != before;
                if grp.members.is_empty() {
                    set.shared.remove(g);
                }
                removed
            }
        }
    }

    fn set_for<'a>(root: &'a mut Node, filter: &str) -> &'a mut SubscriberSet {
        let mut node = root;
        let mut rest = Some(filter.as_bytes());
        while let Some(r) = rest {
            let (level, next) = split_level(r);
            if level == b"#" {
                return &mut node.hash;
            }
            node = if level == b"+" {
                node.plus.get_or_insert_with(Default::default)
            } else {
                node.children.entry(level.into()).or_default()
            };
            rest = next;
        }
        &mut node.exact
    }

    /// Calls `f` for every direct subscriber matching `topic`, and for one member of every
    /// shared group matching it (chosen round-robin, preferring connected members).
    pub fn for_each_match<'t>(&'t self, topic: &[u8], f: &mut dyn FnMut(Matched<'t>)) {
        self.for_each_match_of(topic, true, f)
    }

    /// `for_each_match`, shared groups left out unless `groups` (in a cluster a group spans
    /// the nodes, which pick its member between them: `cluster/`).
    pub fn for_each_match_of<'t>(
        &'t self,
        topic: &[u8],
        groups: bool,
        f: &mut dyn FnMut(Matched<'t>),
    ) {
        // `$` topics are not matched by a wildcard in the first level (MQTT-4.7.2-1).
        let dollar = topic.first() == Some(&b'$');
        Self::walk(&self.root, Some(topic), true, dollar, groups, f);
    }

    /// One member of the group `group` of the filter `filter` (round robin, preferring
    /// connected members).
    pub fn group_member(&self, filter: &str, group: &str) -> Option<&Subscriber> {
        let mut node = &self.root;
        let mut rest = Some(filter.as_bytes());
        let set = loop {
            let Some(r) = rest else { break &node.exact };
            let (level, next) = split_level(r);
            if level == b"#" {
                break &node.hash;
            }
            node = if level == b"+" {
                node.plus.as_deref()?
            } else {
                node.children.get(level)?
            };
            rest = next;
        };
        set.shared.get(group).and_then(SharedGroup::pick)
    }

    fn walk<'t>(
        node: &'t Node,
        rest: Option<&[u8]>,
        at_root: bool,
        dollar: bool,
        groups: bool,
        f: &mut dyn FnMut(Matched<'t>),
    ) {
        let wild_ok = !(at_root && dollar);
        if wild_ok {
            // `#` matches the parent level too: "a/#" matches "a".
            Self::emit(&node.hash, groups, f);
        }
        let Some(rest) = rest else {
            Self::emit(&node.exact, groups, f);
            return;
        };
        let (level, next) = split_level(rest);
        if let Some(child) = node.children.get(level) {
            Self::walk(child, next, false, dollar, groups, f);
        }
        if wild_ok && let Some(plus) = node.plus.as_deref() {
            Self::walk(plus, next, false, dollar, groups, f);
        }
    }

    fn emit<'t>(set: &'t SubscriberSet, groups: bool, f: &mut dyn FnMut(Matched<'t>)) {
        for s in set.direct.values() {
            f(Matched {
                subscriber: s,
                shared: false,
            });
        }
        if !groups {
            return;
        }
        for grp in set.shared.values() {
            if let Some(subscriber) = grp.pick() {
                f(Matched {
                    subscriber,
                    shared: true,
                });
            }
        }
    }
}

impl SharedGroup {
    /// The next member, round robin, skipping offline ones when any is online.
    fn pick(&self) -> Option<&Subscriber> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let pick = (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| self.members[i].session.is_online())
            .unwrap_or(start);
        Some(&self.members[pick])
    }
}

/// Splits off the first level of a topic: `"a/b/c"` → `("a", Some("b/c"))`, `"a"` → `("a", None)`.
pub(crate) fn split_level(s: &[u8]) -> (&[u8], Option<&[u8]>) {
    match s.iter().position(|&b| b == b'/') {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::topic::matches;

    fn sub(id: u64) -> Subscriber {
        Subscriber {
            session: Session::new_for_test(id),
            options: SubscriptionOptions::default(),
            subscription_id: None,
        }
    }

    fn matched(tree: &SubscriptionTree, topic: &str) -> Vec<u64> {
        let mut ids = Vec::new();
        tree.for_each_match(topic.as_bytes(), &mut |m| ids.push(m.subscriber.session.id));
        ids.sort();
        ids
    }

    #[test]
    fn agrees_with_reference_matcher() {
        let filters = [
            "#", "+", "a", "a/b", "a/+", "a/#", "+/b", "+/+", "a/b/c", "a/+/c", "+/+/+", "/", "/+",
            "+/", "a//b", "$SYS/#", "$SYS/+", "a/b/#", "",
        ];
        let topics = [
            "a", "a/b", "a/b/c", "b", "/", "/a", "a/", "a//b", "$SYS/x", "$SYS", "a/x/c", "x/b",
            "$x/b",
        ];
        let mut tree = SubscriptionTree::default();
        let filters: Vec<_> = filters.iter().filter(|f| !f.is_empty()).collect();
        for (i, f) in filters.iter().enumerate() {
            tree.insert(f, None, sub(i as u64));
        }
        assert_eq!(tree.len(), filters.len());
        for t in topics {
            let want: Vec<u64> = filters
                .iter()
                .enumerate()
                .filter(|(_, f)| matches(f, t))
                .map(|(i, _)| i as u64)
                .collect();
            assert_eq!(matched(&tree, t), want, "topic {t}");
        }
        for (i, f) in filters.iter().enumerate() {
            assert!(tree.remove(f, None, i as u64));
        }
        assert!(tree.root.is_empty());
        assert_eq!(tree.len(), 0);
    }

    #[test]
    fn resubscribe_replaces() {
        let mut tree = SubscriptionTree::default();
        assert!(!tree.insert("a/+", None, sub(1)));
        assert!(tree.insert("a/+", None, sub(1)));
        assert_eq!(tree.len(), 1);
        assert_eq!(matched(&tree, "a/x"), vec![1]);
    }

    #[test]
    fn shared_group_delivers_to_one_member_round_robin() {
        let mut tree = SubscriptionTree::default();
        tree.insert("t/+", Some("g"), sub(1));
        tree.insert("t/+", Some("g"), sub(2));
        tree.insert("t/+", Some("h"), sub(3));
        let mut seen = Vec::new();
        for _ in 0..4 {
            let m = matched(&tree, "t/x");
            assert_eq!(m.len(), 2, "{m:?}");
            assert!(m.contains(&3));
            seen.push(m[0]);
        }
        assert!(seen.contains(&1) && seen.contains(&2), "{seen:?}");
        assert!(tree.remove("t/+", Some("g"), 1));
        assert!(!tree.remove("t/+", Some("g"), 1));
    }
}
