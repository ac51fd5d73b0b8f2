//! Helpers shared by the tutorial examples.
#![allow(dead_code)]

/// Formats `body` the way Python's `print(f"{body}")` shows a `bytes` object (`b'...'`), so the
/// examples print exactly the lines of the official Python tutorials.
pub fn python_bytes(body: &[u8]) -> String {
    let quote = if body.contains(&b'\'') && !body.contains(&b'"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(body.len() + 3);
    out.push('b');
    out.push(quote);
    for &b in body {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            b if b as char == quote => {
                out.push('\\');
                out.push(quote);
            }
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out.push(quote);
    out
}

/// Host of the broker: `localhost` as in the tutorials, or `$AMQP_HOST` if set.
pub fn broker_host() -> String {
    std::env::var("AMQP_HOST").unwrap_or_else(|_| "localhost".into())
}
