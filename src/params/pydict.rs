//! The Python dict literals pika's URLs carry (`ssl_options={'cafile': '/ca.pem'}`), read the
//! way `ast.literal_eval` would for what those options hold: strings, numbers, booleans,
//! `None` and nested dicts.

use crate::protocol::table::{FieldTable, FieldValue};

/// A value of the literal.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    None,
    Dict(Vec<(String, Value)>),
}

impl Value {
    pub(crate) fn as_text(&self) -> Option<String> {
        match self {
            Value::Text(s) => Some(s.clone()),
            _ => None,
        }
    }

    pub(crate) fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub(crate) fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Int(n) => u64::try_from(*n).ok(),
            _ => None,
        }
    }

    /// The field-table value for client properties.
    pub(crate) fn into_amqp(self) -> FieldValue {
        match self {
            Value::Text(s) => FieldValue::String(s),
            Value::Int(n) => FieldValue::I64(n),
            Value::Float(f) => FieldValue::F64(f),
            Value::Bool(b) => FieldValue::Bool(b),
            Value::None => FieldValue::Void,
            Value::Dict(entries) => {
                let mut table = FieldTable::default();
                for (k, v) in entries {
                    table.insert(k, v.into_amqp());
                }
                FieldValue::Table(table)
            }
        }
    }
}

/// Parses `{'key': value, ...}`; keys must be strings of at most 255 bytes.
pub(crate) fn parse(text: &str) -> Result<Vec<(String, Value)>, String> {
    let mut p = Parser {
        chars: text.chars().collect(),
        pos: 0,
        depth: 0,
    };
    let value = p.value()?;
    p.skip_ws();
    if p.pos != p.chars.len() {
        return Err(format!(
            "unexpected text after the dict at character {}",
            p.pos
        ));
    }
    match value {
        Value::Dict(entries) => Ok(entries),
        _ => Err("expected a dict like {'key': 'value'}".into()),
    }
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn skip_ws(&mut self) {
        while self.chars.get(self.pos).is_some_and(|c| c.is_whitespace()) {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<char> {
        self.skip_ws();
        self.chars.get(self.pos).copied()
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!("expected {c:?} at character {}", self.pos))
        }
    }

    fn value(&mut self) -> Result<Value, String> {
        match self.peek() {
            Some('{') => self.dict(),
            Some(q @ ('\'' | '"')) => self.string(q).map(Value::Text),
            Some(c) if c.is_ascii_digit() || c == '-' || c == '+' || c == '.' => self.number(),
            Some(c) if c.is_alphabetic() => {
                let start = self.pos;
                while self
                    .chars
                    .get(self.pos)
                    .is_some_and(|c| c.is_alphanumeric())
                {
                    self.pos += 1;
                }
                let word: String = self.chars[start..self.pos].iter().collect();
                match word.as_str() {
                    "True" => Ok(Value::Bool(true)),
                    "False" => Ok(Value::Bool(false)),
                    "None" => Ok(Value::None),
                    // Not echoed: the text may be a secret (an unquoted password).
                    _ => Err(format!("unexpected word at character {start}")),
                }
            }
            Some(c) => Err(format!("unexpected {c:?} at character {}", self.pos)),
            None => Err("unexpected end".into()),
        }
    }

    fn dict(&mut self) -> Result<Value, String> {
        self.depth += 1;
        if self.depth > 8 {
            return Err("dicts nested too deeply".into());
        }
        self.expect('{')?;
        let mut entries = Vec::new();
        loop {
            match self.peek() {
                Some('}') => {
                    self.pos += 1;
                    break;
                }
                Some(q @ ('\'' | '"')) => {
                    let key = self.string(q)?;
                    if key.len() > 255 {
                        return Err(format!("key {key:?} is longer than 255 bytes"));
                    }
                    self.expect(':')?;
                    let value = self.value()?;
                    entries.push((key, value));
                    match self.peek() {
                        Some(',') => self.pos += 1,
                        Some('}') => {}
                        _ => return Err(format!("expected ',' or '}}' at character {}", self.pos)),
                    }
                }
                _ => return Err(format!("expected a string key at character {}", self.pos)),
            }
        }
        self.depth -= 1;
        Ok(Value::Dict(entries))
    }

    fn string(&mut self, quote: char) -> Result<String, String> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.chars.get(self.pos).copied() {
                None => return Err("unterminated string".into()),
                Some(c) if c == quote => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some('\\') => {
                    let escaped = self
                        .chars
                        .get(self.pos + 1)
                        .copied()
                        .ok_or("unterminated string")?;
                    // Python's escapes; an unknown one keeps its backslash (`'C:\dir'`).
                    let simple = match escaped {
                        'n' => Some('\n'),
                        't' => Some('\t'),
                        'r' => Some('\r'),
                        'a' => Some('\x07'),
                        'b' => Some('\x08'),
                        'f' => Some('\x0c'),
                        'v' => Some('\x0b'),
                        '\\' | '\'' | '"' => Some(escaped),
                        _ => None,
                    };
                    let digits = match escaped {
                        'x' => 2,
                        'u' => 4,
                        'U' => 8,
                        _ => 0,
                    };
                    if let Some(c) = simple {
                        out.push(c);
                        self.pos += 2;
                    } else if escaped.is_digit(8) {
                        // Octal, one to three digits: `\0`, `\012`.
                        let start = self.pos + 1;
                        let mut end = start;
                        while end < start + 3 && self.chars.get(end).is_some_and(|c| c.is_digit(8))
                        {
                            end += 1;
                        }
                        let octal: String = self.chars[start..end].iter().collect();
                        let code = u32::from_str_radix(&octal, 8).expect("octal digits");
                        out.push(char::from_u32(code).expect("at most 0o777"));
                        self.pos = end;
                    } else if digits > 0 {
                        let at = self.pos;
                        let hex: String = self
                            .chars
                            .get(at + 2..at + 2 + digits)
                            .ok_or_else(|| {
                                format!("truncated \\{escaped} escape at character {at}")
                            })?
                            .iter()
                            .collect();
                        let c = u32::from_str_radix(&hex, 16)
                            .ok()
                            .and_then(char::from_u32)
                            .ok_or_else(|| format!("bad \\{escaped} escape at character {at}"))?;
                        out.push(c);
                        self.pos += 2 + digits;
                    } else {
                        out.push('\\');
                        out.push(escaped);
                        self.pos += 2;
                    }
                }
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    fn number(&mut self) -> Result<Value, String> {
        let start = self.pos;
        while self
            .chars
            .get(self.pos)
            .is_some_and(|c| c.is_ascii_digit() || matches!(c, '-' | '+' | '.' | 'e' | 'E' | '_'))
        {
            self.pos += 1;
        }
        let text: String = self.chars[start..self.pos]
            .iter()
            .filter(|c| **c != '_')
            .collect();
        if let Ok(n) = text.parse::<i64>() {
            return Ok(Value::Int(n));
        }
        let digits = text.trim_start_matches(['-', '+']);
        if !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()) {
            // An integer, too large for any AMQP integer: not silently a float.
            return Err(format!("integer {text} out of range at character {start}"));
        }
        text.parse::<f64>()
            .map(Value::Float)
            .map_err(|_| format!("bad number at character {start}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_escapes_and_integers_out_of_range() {
        let dict = parse(r"{'a': '\x41\u00e9\U0001F600', 'b': 'C:\dir\n', 'c': '\'q\''}").unwrap();
        let text = |k: &str| match dict.iter().find(|(key, _)| key == k) {
            Some((_, Value::Text(s))) => s.clone(),
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(text("a"), "A\u{e9}\u{1F600}");
        assert_eq!(text("b"), "C:\\dir\n");
        assert_eq!(text("c"), "'q'");
        let octal = parse(r"{'o': '\0\012\1010'}").unwrap();
        assert!(
            matches!(&octal[0].1, Value::Text(s) if s == "\0\nA0"),
            "{octal:?}"
        );
        let err = parse("{'n': 1-2}").unwrap_err();
        assert!(err.contains("bad number"), "{err}");
        assert!(parse(r"{'a': '\x4'}").is_err());
        assert!(parse(r"{'a': '\udfff'}").is_err());
        let err = parse("{'n': 99999999999999999999}").unwrap_err();
        assert!(err.contains("out of range"), "{err}");
        assert!(parse("{'f': 1e30}").is_ok());
    }

    #[test]
    fn parses_what_pika_urls_carry() {
        let dict = parse("{'cafile': '/etc/ca.pem', \"n\": 3, 'f': 2.5, 'on': True, 'off': False, 'x': None, 'd': {'k': 'v'}}").unwrap();
        assert_eq!(
            dict,
            vec![
                ("cafile".into(), Value::Text("/etc/ca.pem".into())),
                ("n".into(), Value::Int(3)),
                ("f".into(), Value::Float(2.5)),
                ("on".into(), Value::Bool(true)),
                ("off".into(), Value::Bool(false)),
                ("x".into(), Value::None),
                (
                    "d".into(),
                    Value::Dict(vec![("k".into(), Value::Text("v".into()))])
                ),
            ]
        );
        assert_eq!(parse("{}").unwrap(), vec![]);
        assert_eq!(
            parse("{'a': 'it\\'s',}").unwrap(),
            vec![("a".into(), Value::Text("it's".into()))]
        );
    }

    #[test]
    fn rejects_what_is_not_a_dict_literal() {
        for bad in [
            "",
            "[]",
            "'x'",
            "{'a' 1}",
            "{'a': }",
            "{'a': 1",
            "{1: 2}",
            "{'a': os.system}",
            "{'a': 1} x",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
        let deep = "{'a': ".repeat(20) + "1" + &"}".repeat(20);
        assert!(parse(&deep).is_err());
    }
}
