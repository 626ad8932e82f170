//! Record keys as NATS KV keys. A KV key may hold only `[-/_=.a-zA-Z0-9]` and a dot separates
//! subject tokens, while a client id may hold `:` and a user name `.`: every other byte is
//! written `=XX` (hex), `=` and `.` included. The mapping keeps prefixes (`scan` relies on it)
//! and is reversible.

pub fn escape(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'/' {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

pub fn unescape(key: &str) -> Option<String> {
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            let hex = key.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_round_trips_and_keeps_prefixes() {
        for k in ["alice", "client:one", "a.b", "=x", "über", "abc123", ""] {
            assert_eq!(unescape(&escape(k)).as_deref(), Some(k));
            let e = escape(k);
            assert!(
                e.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-/_=".contains(&b)),
                "{e}"
            );
        }
        assert!(escape("client:one").starts_with(&escape("client:")));
        assert_eq!(unescape("=G1"), None);
    }
}
