//! What the broker accepts beyond what the standard requires, each limit an operator sets in
//! `mqtt:` and each answered with the reason code the standard names for "well formed, but not
//! accepted here": control characters in identifiers and topics, topic length and levels. (The
//! count limits, subscriptions per client and retained messages, are kept where the counts
//! live: `subscribe.rs` and `routing.rs`; the inbound rate limit in `connection/rate.rs`.)

use tessera_config::MqttConfig;

/// Why a topic name or filter is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TopicRefusal {
    ControlCharacter,
    TooLong,
    TooManyLevels,
}

impl TopicRefusal {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            TopicRefusal::ControlCharacter => "topic contains a control character",
            TopicRefusal::TooLong => "topic longer than the broker's maximum topic length",
            TopicRefusal::TooManyLevels => "topic has more levels than the broker's maximum",
        }
    }
}

/// A topic name or filter against `max_topic_length`, `max_topic_levels` and, unless allowed,
/// control characters. One pass over the bytes: it runs for every PUBLISH that names a topic.
pub(crate) fn check_topic(topic: &[u8], cfg: &MqttConfig) -> Result<(), TopicRefusal> {
    if topic.len() > cfg.max_topic_length as usize {
        return Err(TopicRefusal::TooLong);
    }
    let mut levels = 1u32;
    let mut control = false;
    let mut prev = 0u8;
    for &b in topic {
        levels += (b == b'/') as u32;
        // C0 and DEL are single bytes; C1 (U+0080-U+009F) is 0xC2 followed by 0x80-0x9F.
        control |= b < 0x20 || b == 0x7F || (prev == 0xC2 && (0x80..=0x9F).contains(&b));
        prev = b;
    }
    if levels > cfg.max_topic_levels {
        return Err(TopicRefusal::TooManyLevels);
    }
    if control && !cfg.allow_control_characters {
        return Err(TopicRefusal::ControlCharacter);
    }
    Ok(())
}

/// Whether `s` holds a C0 or C1 control character (U+0001-U+001F, U+007F-U+009F; U+0000 never
/// reaches here, the codec refuses it).
pub(crate) fn has_control_character(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// A client identifier or user name the broker refuses: a control character, unless allowed
/// (the standard allows them, §1.5.4; mosquitto refuses them, and they forge log lines and
/// confuse every tool an operator pipes names through).
pub(crate) fn refuses_name(s: &str, cfg: &MqttConfig) -> bool {
    !cfg.allow_control_characters && has_control_character(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_of_both_ranges_are_found_in_names_and_topics() {
        let cfg = MqttConfig::default();
        for bad in [
            "a\nb",
            "a\u{1}",
            "\u{7f}",
            "x\u{85}y",
            "\u{9f}",
            "tab\there",
        ] {
            assert!(has_control_character(bad), "{bad:?}");
            assert!(refuses_name(bad, &cfg), "{bad:?}");
            assert_eq!(
                check_topic(bad.as_bytes(), &cfg),
                Err(TopicRefusal::ControlCharacter),
                "{bad:?}"
            );
        }
        for good in ["sensors/é/1", "\u{a0}", "日本/温度", "a/b/c", "\u{100}"] {
            assert!(!has_control_character(good), "{good:?}");
            assert_eq!(check_topic(good.as_bytes(), &cfg), Ok(()), "{good:?}");
        }
        let allowing = MqttConfig {
            allow_control_characters: true,
            ..MqttConfig::default()
        };
        assert!(!refuses_name("a\nb", &allowing));
        assert_eq!(check_topic(b"a\nb", &allowing), Ok(()));
    }

    #[test]
    fn length_and_levels_are_bounded() {
        let cfg = MqttConfig {
            max_topic_length: 8,
            max_topic_levels: 3,
            ..MqttConfig::default()
        };
        assert_eq!(check_topic(b"a/b/c", &cfg), Ok(()));
        assert_eq!(
            check_topic(b"a/b/c/d", &cfg),
            Err(TopicRefusal::TooManyLevels)
        );
        assert_eq!(check_topic(b"/b/", &cfg), Ok(()));
        assert_eq!(check_topic(b"//b/", &cfg), Err(TopicRefusal::TooManyLevels));
        assert_eq!(check_topic(b"abcdefgh", &cfg), Ok(()));
        assert_eq!(check_topic(b"abcdefghi", &cfg), Err(TopicRefusal::TooLong));
    }
}
