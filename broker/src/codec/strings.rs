//! `Utf8Bytes`: a shared, zero-copy string that is known to satisfy MQTT's UTF-8 rules.
//!
//! Invariant: the bytes are valid UTF-8 (which excludes surrogates) and contain no U+0000
//! (MQTT-1.5.4-1, -2). Every constructor checks it, so `as_str` needs no check.

use bytes::Bytes;

#[derive(Clone, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Utf8Bytes(Bytes);

impl Utf8Bytes {
    /// Wraps `bytes` if they are an MQTT UTF-8 string; `None` otherwise.
    pub fn try_from_bytes(bytes: Bytes) -> Option<Utf8Bytes> {
        let s = std::str::from_utf8(&bytes).ok()?;
        if s.as_bytes().contains(&0) {
            return None;
        }
        Some(Utf8Bytes(bytes))
    }

    /// From a static string; `None` if it holds U+0000.
    pub fn from_static(s: &'static str) -> Utf8Bytes {
        Utf8Bytes::try_from_bytes(Bytes::from_static(s.as_bytes()))
            .unwrap_or_else(|| Utf8Bytes(Bytes::new()))
    }

    /// From an owned string; U+0000 characters are removed to keep the invariant.
    pub fn from_string(s: String) -> Utf8Bytes {
        if s.contains('\0') {
            Utf8Bytes(Bytes::from(s.replace('\0', "")))
        } else {
            Utf8Bytes(Bytes::from(s))
        }
    }

    /// A copy that owns its bytes: a value kept for a connection's life made from a packet
    /// would otherwise keep the whole read buffer the packet was decoded from.
    pub fn detached(&self) -> Utf8Bytes {
        Utf8Bytes(Bytes::copy_from_slice(&self.0))
    }

    pub fn as_str(&self) -> &str {
        // Every constructor checked the bytes, so this cannot fail. Checking again instead of
        // `from_utf8_unchecked` keeps the workspace free of `unsafe` (`unsafe_code = "forbid"`);
        // a topic is tens of ASCII bytes, validated in a few nanoseconds, and the per-subscriber
        // delivery path writes topics as bytes without this view (docs/benchmarks.md).
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl AsRef<[u8]> for Utf8Bytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl std::ops::Deref for Utf8Bytes {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for Utf8Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for Utf8Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for Utf8Bytes {
    fn from(s: &str) -> Utf8Bytes {
        Utf8Bytes::from_string(s.to_string())
    }
}

impl From<String> for Utf8Bytes {
    fn from(s: String) -> Utf8Bytes {
        Utf8Bytes::from_string(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_nul_and_bad_utf8() {
        assert!(Utf8Bytes::try_from_bytes(Bytes::from_static(b"a\0b")).is_none());
        // An encoded surrogate (U+D800) is not UTF-8.
        assert!(Utf8Bytes::try_from_bytes(Bytes::from_static(b"\xED\xA0\x80")).is_none());
        assert!(Utf8Bytes::try_from_bytes(Bytes::from_static(b"\xC3")).is_none());
        assert_eq!(
            Utf8Bytes::try_from_bytes(Bytes::from_static("ünï".as_bytes()))
                .unwrap()
                .as_str(),
            "ünï"
        );
    }

    #[test]
    fn from_string_drops_nul() {
        assert_eq!(Utf8Bytes::from_string("a\0b".into()).as_str(), "ab");
    }
}
