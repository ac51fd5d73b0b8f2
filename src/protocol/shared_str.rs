//! [`SharedStr`]: the string type of [`Deliver`](super::methods::Deliver)'s fields.
//!
//! A consumer's deliveries nearly always repeat the same consumer tag, exchange and routing
//! key; the decoder hands each delivery the previous one's string when the bytes match
//! (`fast::LastDeliver`), so a repeat costs a reference count, not an allocation, a copy and a
//! free (about a sixth of the client's instructions per small delivery, BENCHMARKS.md).

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// An immutable, cheaply cloned string: the consumer tag, exchange and routing key of a
/// [`Deliver`](crate::Deliver).
///
/// It reads like a `&str` (it derefs to one, so every `str` method works), compares with
/// `&str` and `String` both ways, and prints as the text it holds. Cloning it shares the
/// text. `String::from(s)` or `s.to_string()` gives an owned copy.
///
/// ```
/// use cottontail::SharedStr;
///
/// let key = SharedStr::from("logs.info");
/// assert_eq!(key, "logs.info");
/// assert!(key.starts_with("logs."));
/// let owned: String = key.clone().into();
/// assert_eq!(owned, key.as_str());
/// ```
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SharedStr(Arc<str>);

impl SharedStr {
    /// The text as a `&str`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True if both hold the same allocation (a repeat the decoder shared).
    #[cfg(test)]
    pub(crate) fn shares(&self, other: &SharedStr) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Deref for SharedStr {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for SharedStr {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for SharedStr {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl From<&str> for SharedStr {
    fn from(s: &str) -> Self {
        SharedStr(s.into())
    }
}

impl From<String> for SharedStr {
    fn from(s: String) -> Self {
        SharedStr(s.into())
    }
}

impl From<SharedStr> for String {
    fn from(s: SharedStr) -> Self {
        s.0.as_ref().to_owned()
    }
}

impl PartialEq<str> for SharedStr {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for SharedStr {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<String> for SharedStr {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<SharedStr> for str {
    fn eq(&self, other: &SharedStr) -> bool {
        self == &*other.0
    }
}

impl PartialEq<SharedStr> for &str {
    fn eq(&self, other: &SharedStr) -> bool {
        *self == &*other.0
    }
}

impl PartialEq<SharedStr> for String {
    fn eq(&self, other: &SharedStr) -> bool {
        **self == *other.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn reads_compares_and_prints_as_its_text() {
        let s = SharedStr::from("amq.ctag-1");
        assert_eq!(s, "amq.ctag-1");
        assert_eq!("amq.ctag-1", s);
        assert_eq!(s, String::from("amq.ctag-1"));
        assert_eq!(String::from("amq.ctag-1"), s);
        assert_ne!(s, "amq.ctag-2");
        assert_eq!(s.len(), 10);
        assert_eq!(format!("{s}|{s:?}"), "amq.ctag-1|\"amq.ctag-1\"");
        assert_eq!(String::from(s.clone()), "amq.ctag-1");
        assert_eq!(SharedStr::default(), "");
        let mut by_tag = HashMap::new();
        by_tag.insert(s.clone(), 1);
        assert_eq!(by_tag.get("amq.ctag-1"), Some(&1));
        assert!(s.clone().shares(&s));
        assert!(!SharedStr::from("amq.ctag-1").shares(&s));
    }
}
