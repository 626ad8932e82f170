//! Topic rights of an authenticated session: the configured `access_publish` /
//! `access_subscribe` rules (with `%u` and `%c`), narrowed by the token's `mqtt:publish:<filter>`
//! and `mqtt:subscribe:<filter>` scopes. A scope never widens what the configuration grants.

use std::collections::BTreeMap;

use tessera_broker::auth::TopicAcl;
use tessera_broker::codec::Utf8Bytes;
use tessera_broker::codec::topic::matches;
use tessera_config::AccessRule;

pub struct SessionAcl {
    /// Configured filters (placeholders filled in) that admit this user.
    publish: Option<Vec<String>>,
    subscribe: Option<Vec<String>>,
    /// Scope filters; `None` when the token carries none of that kind.
    scope_publish: Option<Vec<String>>,
    scope_subscribe: Option<Vec<String>>,
}

/// Fills `%u` and `%c`. A value holding `/`, `+` or `#` would change the filter's meaning, so
/// such a rule does not apply (`None`).
fn substitute(filter: &str, user: Option<&str>, client_id: &str) -> Option<String> {
    let unsafe_value = |v: &str| v.is_empty() || v.contains(['/', '+', '#']);
    let mut out = filter.to_string();
    if filter.contains("%u") {
        let u = user?;
        if unsafe_value(u) {
            return None;
        }
        out = out.replace("%u", u);
    }
    if filter.contains("%c") {
        if unsafe_value(client_id) {
            return None;
        }
        out = out.replace("%c", client_id);
    }
    Some(out)
}

fn rules_for(
    rules: &BTreeMap<String, AccessRule>,
    user: Option<&str>,
    client_id: &str,
) -> Option<Vec<String>> {
    if rules.is_empty() {
        return None;
    }
    Some(
        rules
            .iter()
            .filter(|(_, r)| r.admits(user))
            .filter_map(|(f, _)| substitute(f, user, client_id))
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

impl SessionAcl {
    pub fn new(
        publish_rules: &BTreeMap<String, AccessRule>,
        subscribe_rules: &BTreeMap<String, AccessRule>,
        user: Option<&str>,
        client_id: &str,
        scopes: &[String],
    ) -> SessionAcl {
        SessionAcl {
            publish: rules_for(publish_rules, user, client_id),
            subscribe: rules_for(subscribe_rules, user, client_id),
            scope_publish: scope_filters(scopes, "mqtt:publish:"),
            scope_subscribe: scope_filters(scopes, "mqtt:subscribe:"),
        }
    }
}

impl TopicAcl for SessionAcl {
    fn can_publish(&self, topic: &Utf8Bytes) -> bool {
        let allowed = |fs: &Option<Vec<String>>| {
            fs.as_ref()
                .is_none_or(|fs| fs.iter().any(|f| matches(f, topic.as_str())))
        };
        allowed(&self.publish) && allowed(&self.scope_publish)
    }

    fn can_subscribe(&self, filter: &str) -> bool {
        // A shared subscription is judged by its inner filter.
        let inner = match tessera_broker::codec::topic::parse_shared(filter) {
            Ok(Some(s)) => s.filter,
            _ => filter,
        };
        let allowed = |fs: &Option<Vec<String>>| {
            fs.as_ref()
                .is_none_or(|fs| fs.iter().any(|f| covers(f, inner)))
        };
        allowed(&self.subscribe) && allowed(&self.scope_subscribe)
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
    use tessera_config::NamedRule;

    fn rules(pairs: &[(&str, AccessRule)]) -> BTreeMap<String, AccessRule> {
        pairs
            .iter()
            .map(|(f, r)| (f.to_string(), r.clone()))
            .collect()
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
            &BTreeMap::new(),
            &BTreeMap::new(),
            Some("u"),
            "c",
            &["mqtt".into()],
        );
        assert!(acl.can_publish(&"any/topic".into()));
        assert!(acl.can_subscribe("#"));
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
}
