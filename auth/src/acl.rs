//! Topic rights of an authenticated session: the configured `access_publish` /
//! `access_subscribe` rules (with `%u` and `%c`), narrowed by the token's `mqtt:publish:<filter>`
//! and `mqtt:subscribe:<filter>` scopes. A scope never widens what the configuration grants.
//!
//! Rules are ordered, and for a topic the first that matches decides (`allow` or `deny`); none
//! matching refuses. A SUBSCRIBE filter is judged the same way on the filter: a `deny` rule
//! covering all of it refuses it, an `allow` rule covering all of it grants it; a `deny` rule
//! met before that grant which covers only part of the filter (`#` after `deny: secret/#`)
//! lets the subscription be granted, and each message delivered through it is judged by
//! topic ([`TopicAcl::can_receive`]), as mosquitto does.

use std::sync::Arc;

use tessera_broker::auth::{AllowAll, TopicAcl};
use tessera_broker::codec::Utf8Bytes;
use tessera_broker::codec::topic::matches;
use tessera_config::{AccessRules, Effect};

/// One configured rule, as it applies to this session (placeholders filled in).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    effect: Effect,
    filter: String,
}

pub struct SessionAcl {
    /// The rules that apply to this user, in order; `None` when none are configured.
    publish: Option<Vec<Rule>>,
    subscribe: Option<Vec<Rule>>,
    /// Scope filters; `None` when the token carries none of that kind.
    scope_publish: Option<Vec<String>>,
    scope_subscribe: Option<Vec<String>>,
    /// Some subscribe rule denies: deliveries are judged by topic.
    judges_deliveries: bool,
}

/// Fills `%u` and `%c`. A value holding `/`, `+` or `#` (or none at all) would change the
/// filter's meaning: an `allow` rule with one does not apply (`None`), and in a `deny` rule the
/// placeholder becomes `+`, so the rule refuses more rather than less.
fn substitute(filter: &str, effect: Effect, user: Option<&str>, client_id: &str) -> Option<String> {
    let mut out = filter.to_string();
    for (placeholder, value) in [("%u", user), ("%c", Some(client_id))] {
        if !filter.contains(placeholder) {
            continue;
        }
        let usable = value.filter(|v| !v.is_empty() && !v.contains(['/', '+', '#']));
        match (usable, effect) {
            (Some(v), _) => out = out.replace(placeholder, v),
            (None, Effect::Deny) => out = out.replace(placeholder, "+"),
            (None, Effect::Allow) => return None,
        }
    }
    Some(out)
}

fn rules_for(rules: &AccessRules, user: Option<&str>, client_id: &str) -> Option<Vec<Rule>> {
    if rules.is_empty() {
        return None;
    }
    Some(
        rules
            .0
            .iter()
            .filter(|r| r.users.admits(user))
            .filter_map(|r| {
                Some(Rule {
                    effect: r.effect,
                    filter: substitute(&r.filter, r.effect, user, client_id)?,
                })
            })
            .collect(),
    )
}

fn scope_filters(scopes: &[String], prefix: &str) -> Option<Vec<String>> {
    let v: Vec<String> = scopes
        .iter()
        .filter_map(|s| s.strip_prefix(prefix).map(str::to_string))
        .collect();
    (!v.is_empty()).then_some(v)
}

/// The first rule matching `topic` decides; none refuses.
fn topic_allowed(rules: &[Rule], topic: &str) -> bool {
    rules
        .iter()
        .find(|r| matches(&r.filter, topic))
        .is_some_and(|r| r.effect == Effect::Allow)
}

/// A SUBSCRIBE filter against ordered rules (see the module's opening).
fn filter_allowed(rules: &[Rule], filter: &str) -> bool {
    for r in rules {
        match r.effect {
            Effect::Deny if covers(&r.filter, filter) => return false,
            Effect::Allow if covers(&r.filter, filter) => return true,
            // A deny rule that covers only part of the filter is applied per message.
            _ => {}
        }
    }
    false
}

impl SessionAcl {
    pub fn new(
        publish_rules: &AccessRules,
        subscribe_rules: &AccessRules,
        user: Option<&str>,
        client_id: &str,
        scopes: &[String],
    ) -> SessionAcl {
        let subscribe = rules_for(subscribe_rules, user, client_id);
        SessionAcl {
            publish: rules_for(publish_rules, user, client_id),
            judges_deliveries: subscribe
                .as_ref()
                .is_some_and(|rs| rs.iter().any(|r| r.effect == Effect::Deny)),
            subscribe,
            scope_publish: scope_filters(scopes, "mqtt:publish:"),
            scope_subscribe: scope_filters(scopes, "mqtt:subscribe:"),
        }
    }
}

impl SessionAcl {
    /// The rights of a session as the broker holds them: the shared [`AllowAll`] when nothing
    /// restricts it (no rules, no scope filters), so such a session costs no allocation.
    pub fn into_shared(self) -> Arc<dyn TopicAcl> {
        let unrestricted = self.publish.is_none()
            && self.subscribe.is_none()
            && self.scope_publish.is_none()
            && self.scope_subscribe.is_none();
        if unrestricted {
            AllowAll::shared()
        } else {
            Arc::new(self)
        }
    }
}

impl TopicAcl for SessionAcl {
    fn can_publish(&self, topic: &Utf8Bytes) -> bool {
        // Without rules the topic is not looked at: its checked `&str` view costs a UTF-8 pass
        // per message (see `TopicAcl::can_publish`).
        self.publish
            .as_ref()
            .is_none_or(|rs| topic_allowed(rs, topic.as_str()))
            && self
                .scope_publish
                .as_ref()
                .is_none_or(|fs| fs.iter().any(|f| matches(f, topic.as_str())))
    }

    fn can_subscribe(&self, filter: &str) -> bool {
        // A shared subscription is judged by its inner filter.
        let inner = match tessera_broker::codec::topic::parse_shared(filter) {
            Ok(Some(s)) => s.filter,
            _ => filter,
        };
        self.subscribe
            .as_ref()
            .is_none_or(|rs| filter_allowed(rs, inner))
            && self
                .scope_subscribe
                .as_ref()
                .is_none_or(|fs| fs.iter().any(|f| covers(f, inner)))
    }

    fn judges_deliveries(&self) -> bool {
        self.judges_deliveries
    }

    fn can_receive(&self, topic: &Utf8Bytes) -> bool {
        self.subscribe
            .as_ref()
            .is_none_or(|rs| topic_allowed(rs, topic.as_str()))
    }
}

/// Whether every topic `inner` matches is also matched by `outer`.
pub fn covers(outer: &str, inner: &str) -> bool {
    // `#` or `+` as the first level do not reach `$` topics; neither may a cover.
    let mut o = outer.split('/');
    let mut i = inner.split('/');
    loop {
        match (o.next(), i.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(l)) if l != "#" => {}
            (Some(a), Some(b)) if a == b && a != "+" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_config::{AccessRule, NamedRule, TopicRule};

    /// The map form: allow rules.
    fn rules(pairs: &[(&str, AccessRule)]) -> AccessRules {
        AccessRules(
            pairs
                .iter()
                .map(|(f, r)| TopicRule {
                    effect: Effect::Allow,
                    filter: f.to_string(),
                    users: r.clone(),
                })
                .collect(),
        )
    }

    /// The list form: `+filter` allows, `-filter` denies, for everyone.
    fn ordered(items: &[&str]) -> AccessRules {
        AccessRules(
            items
                .iter()
                .map(|i| TopicRule {
                    effect: if i.starts_with('+') {
                        Effect::Allow
                    } else {
                        Effect::Deny
                    },
                    filter: i[1..].to_string(),
                    users: ALL,
                })
                .collect(),
        )
    }
    const ALL: AccessRule = AccessRule::Named(NamedRule::All);

    #[test]
    fn covers_is_filter_inclusion() {
        assert!(covers("#", "a/b"));
        assert!(covers("a/#", "a/+/c"));
        assert!(covers("a/+", "a/b"));
        assert!(!covers("a/+", "a/#"));
        assert!(!covers("a/b", "a/+"));
        assert!(covers("a/+/c", "a/+/c"));
        assert!(!covers("a/b", "a/b/c"));
    }

    #[test]
    fn empty_configuration_and_no_scopes_allow_everything() {
        let acl = SessionAcl::new(
            &AccessRules::default(),
            &AccessRules::default(),
            Some("u"),
            "c",
            &["mqtt".into()],
        );
        assert!(acl.can_publish(&"any/topic".into()));
        assert!(acl.can_subscribe("#"));
        // Held as the one shared instance: no allocation per session.
        assert!(Arc::ptr_eq(&acl.into_shared(), &AllowAll::shared()));
    }

    #[test]
    fn a_restricted_session_keeps_its_own_rights() {
        let publish = rules(&[("devices/%u/#", ALL)]);
        let acl =
            SessionAcl::new(&publish, &AccessRules::default(), Some("ann"), "c", &[]).into_shared();
        assert!(!Arc::ptr_eq(&acl, &AllowAll::shared()));
        assert!(acl.can_publish(&"devices/ann/t".into()));
        assert!(!acl.can_publish(&"devices/bob/t".into()));
        let scoped = SessionAcl::new(
            &AccessRules::default(),
            &AccessRules::default(),
            Some("ann"),
            "c",
            &["mqtt:subscribe:status/#".into()],
        )
        .into_shared();
        assert!(!scoped.can_subscribe("#"));
        assert!(scoped.can_subscribe("status/x"));
    }

    #[test]
    fn placeholders_and_rules() {
        let publish = rules(&[
            ("devices/%u/#", ALL),
            ("clients/%c", ALL),
            ("admin/#", AccessRule::Users(vec!["root".into()])),
        ]);
        let acl = SessionAcl::new(&publish, &publish, Some("alice"), "dev1", &[]);
        assert!(acl.can_publish(&"devices/alice/temp".into()));
        assert!(!acl.can_publish(&"devices/bob/temp".into()));
        assert!(acl.can_publish(&"clients/dev1".into()));
        assert!(!acl.can_publish(&"admin/x".into()));
        assert!(acl.can_subscribe("devices/alice/+"));
        assert!(!acl.can_subscribe("devices/+/temp"));
        // A client id with a wildcard cannot widen its rights.
        let sneaky = SessionAcl::new(&publish, &publish, Some("alice"), "#", &[]);
        assert!(!sneaky.can_publish(&"clients/x".into()));
        assert!(!sneaky.can_subscribe("clients/#"));
    }

    #[test]
    fn scopes_narrow_but_never_widen() {
        let publish = rules(&[("devices/%u/#", ALL)]);
        let scopes = vec![
            "mqtt".to_string(),
            "mqtt:publish:devices/alice/telemetry".to_string(),
            "mqtt:publish:elsewhere/#".to_string(),
            "mqtt:subscribe:devices/alice/cmd/#".to_string(),
        ];
        let acl = SessionAcl::new(&publish, &publish, Some("alice"), "c", &scopes);
        assert!(acl.can_publish(&"devices/alice/telemetry".into()));
        assert!(!acl.can_publish(&"devices/alice/other".into()));
        // The scope names it, the configuration does not grant it.
        assert!(!acl.can_publish(&"elsewhere/x".into()));
        assert!(acl.can_subscribe("devices/alice/cmd/+"));
        assert!(!acl.can_subscribe("devices/alice/#"));
        assert!(acl.can_subscribe("$share/g/devices/alice/cmd/x"));
    }

    #[test]
    fn first_matching_rule_decides_and_deny_rules_say_everything_but() {
        let rules = ordered(&["-$SYS/#", "-secret/#", "+devices/%u/#", "-devices/#", "+#"]);
        let acl = SessionAcl::new(&rules, &rules, Some("ann"), "c1", &[]);
        assert!(acl.can_publish(&"weather/now".into()));
        assert!(!acl.can_publish(&"secret/plans".into()));
        assert!(acl.can_publish(&"devices/ann/t".into()));
        assert!(!acl.can_publish(&"devices/bob/t".into()));
        assert!(!acl.can_publish(&"$SYS/x".into()));
        // Subscribe: a deny covering the filter refuses it...
        assert!(!acl.can_subscribe("secret/#"));
        assert!(!acl.can_subscribe("$SYS/broker/uptime"));
        assert!(!acl.can_subscribe("devices/+/t"));
        // ...a grant after a partial deny is given, and its messages are judged by topic.
        assert!(acl.can_subscribe("#"));
        assert!(acl.judges_deliveries());
        assert!(acl.can_receive(&"weather/now".into()));
        assert!(!acl.can_receive(&"secret/plans".into()));
        assert!(!acl.can_receive(&"devices/bob/t".into()));
        assert!(acl.can_receive(&"devices/ann/t".into()));
        // No rule matching refuses.
        let only = ordered(&["+a/#"]);
        let acl = SessionAcl::new(&only, &only, Some("ann"), "c1", &[]);
        assert!(!acl.can_publish(&"b".into()));
        assert!(
            !acl.can_subscribe("#"),
            "an allow covering part of a filter grants nothing"
        );
        assert!(!acl.judges_deliveries());
    }

    #[test]
    fn a_deny_rule_whose_placeholder_cannot_be_filled_refuses_more_not_less() {
        let rules = ordered(&["-private/%u/#", "+#"]);
        // No user (anonymous), and a user name with a wildcard.
        for user in [None, Some("a+b")] {
            let acl = SessionAcl::new(&rules, &rules, user, "c", &[]);
            assert!(!acl.can_publish(&"private/anyone/x".into()), "{user:?}");
            assert!(acl.can_publish(&"public/x".into()));
        }
        let acl = SessionAcl::new(&rules, &rules, Some("eve"), "c", &[]);
        assert!(!acl.can_publish(&"private/eve/x".into()));
        assert!(acl.can_publish(&"private/bob/x".into()));
    }

    #[test]
    fn rules_apply_to_their_users_only() {
        let rules = AccessRules(vec![
            TopicRule {
                effect: Effect::Deny,
                filter: "#".into(),
                users: AccessRule::Users(vec!["guest".into()]),
            },
            TopicRule {
                effect: Effect::Allow,
                filter: "#".into(),
                users: ALL,
            },
        ]);
        let guest = SessionAcl::new(&rules, &rules, Some("guest"), "c", &[]);
        let ann = SessionAcl::new(&rules, &rules, Some("ann"), "c", &[]);
        assert!(!guest.can_publish(&"x".into()) && !guest.can_subscribe("x"));
        assert!(ann.can_publish(&"x".into()) && ann.can_subscribe("#"));
    }
}
