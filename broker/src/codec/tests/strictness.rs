//! What the decoder refuses, and with which error (the reason-code rule is beside
//! `DecodeError`): one case per rule, as the bytes a client would send.

use super::*;

fn err_of(bytes: &str, v: Version) -> DecodeError {
    decode(&mut hex(bytes), v, 1 << 20).unwrap_err()
}

#[test]
fn strictness() {
    use DecodeError::*;
    // Remaining length with a fifth continuation byte.
    assert!(matches!(err_of("30ffffffff01", Version::V5), Malformed(_)));
    // PUBREL with flags 0000 instead of 0010.
    assert!(matches!(err_of("60020001", Version::V5), Malformed(_)));
    // SUBSCRIBE with flags 0000.
    assert!(matches!(
        err_of("8006000100016100", Version::V3_1_1),
        Malformed(_)
    ));
    // PUBLISH QoS 3.
    assert!(matches!(
        err_of("36050001610001", Version::V3_1_1),
        Malformed(_)
    ));
    // DUP on QoS 0: well formed, against a rule (0x82 as EMQX and mosquitto).
    assert!(matches!(err_of("3803000161", Version::V3_1_1), Protocol(_)));
    // Topic with a wildcard: 0x90, the code the standard names.
    assert!(matches!(
        err_of("300300012b", Version::V3_1_1),
        TopicNameInvalid(_)
    ));
    // Will Topic with a wildcard.
    assert!(matches!(
        err_of(
            "101400044d51545405 06 003c 00 000163 00 00012b 0000",
            Version::V5
        ),
        TopicNameInvalid(_)
    ));
    // Response Topic with a wildcard.
    assert!(matches!(
        err_of("3008000161 04 0800012b", Version::V5),
        Protocol(_)
    ));
    // Zero-length topic filters (MQTT-4.7.3-1) in SUBSCRIBE and UNSUBSCRIBE.
    assert!(matches!(
        err_of("8206000100 0000 00", Version::V5),
        Protocol(_)
    ));
    assert!(matches!(
        err_of("a20500010000 00", Version::V5),
        Protocol(_)
    ));
    assert!(matches!(
        err_of("a2040001 0000", Version::V3_1_1),
        Protocol(_)
    ));
    // Reason codes the acknowledgement does not define.
    assert!(matches!(err_of("4003000101", Version::V5), Protocol(_)));
    assert!(matches!(err_of("5003000192", Version::V5), Protocol(_)));
    assert!(matches!(err_of("6203000110", Version::V5), Protocol(_)));
    assert!(matches!(err_of("7003000180", Version::V5), Protocol(_)));
    assert!(matches!(err_of("e00101", Version::V5), Protocol(_)));
    // ...and ones it does.
    for ok in [
        "4003000110",
        "5003000197",
        "6203000192",
        "7003000192",
        "e00104",
        "e001a2",
    ] {
        assert!(decode(&mut hex(ok), Version::V5, 1 << 20).is_ok(), "{ok}");
    }
    // Topic with U+0000.
    assert!(matches!(
        err_of("3003000100", Version::V3_1_1),
        Malformed(_)
    ));
    // Topic with an encoded surrogate.
    assert!(matches!(
        err_of("30050003eda080", Version::V3_1_1),
        Malformed(_)
    ));
    // String longer than the packet.
    assert!(matches!(
        err_of("3003000561", Version::V3_1_1),
        Malformed(_)
    ));
    // Packet id 0 on QoS 1.
    assert!(matches!(
        err_of("320500016100 00", Version::V3_1_1),
        Protocol(_)
    ));
    // Duplicate property: two Payload Format Indicators.
    assert!(matches!(
        err_of("3008000161 04 01000100", Version::V5),
        Protocol(_)
    ));
    // Property not allowed in PUBLISH (Session Expiry Interval).
    assert!(matches!(
        err_of("3009000161 05 1100000001", Version::V5),
        Malformed(_)
    ));
    // SUBSCRIBE with no filter.
    assert!(matches!(err_of("8203000100", Version::V5), Protocol(_)));
    // Subscription options with reserved bits.
    assert!(matches!(
        err_of("820700010000016140", Version::V5),
        Malformed(_)
    ));
    // Retain handling 3.
    assert!(matches!(
        err_of("820700010000016130", Version::V5),
        Protocol(_)
    ));
    // CONNECT with the reserved flag.
    assert!(matches!(
        err_of("100d00044d5154540401003c000163", Version::V5),
        Malformed(_)
    ));
    // CONNECT for an unknown level.
    assert_eq!(
        err_of("100d00044d5154540702003c000163", Version::V5),
        UnsupportedProtocol { level: 7 }
    );
    // Bytes after the last field.
    assert!(matches!(err_of("c00100", Version::V5), Malformed(_)));
    // Reserved packet type 0.
    assert!(matches!(err_of("0000", Version::V5), Malformed(_)));
    // Too large: refused from the fixed header alone.
    assert!(matches!(
        decode(&mut hex("30ff7f"), Version::V5, 1000),
        Err(TooLarge { .. })
    ));
    // Receive Maximum 0 in CONNECT.
    assert!(matches!(
        err_of("101000044d5154540502003c03210000000163", Version::V5),
        Protocol(_)
    ));
    assert_eq!(Malformed("x").reason_code(), ReasonCode::MALFORMED_PACKET);
    assert_eq!(Protocol("x").reason_code(), ReasonCode::PROTOCOL_ERROR);
    assert_eq!(
        TopicNameInvalid("x").reason_code(),
        ReasonCode::TOPIC_NAME_INVALID
    );
}
