//! Field tables (message headers, queue and consumer arguments, server properties) as
//! cottontail's own types, so user code never names the codec's string wrappers and does not
//! change when the codec crate does.
//!
//! A table maps names to [`FieldValue`]s; everyday values convert with `.into()` and read back
//! with the `as_*` accessors:
//!
//! ```
//! use cottontail::{FieldTable, FieldValue};
//!
//! let headers = FieldTable::new().with("x-retries", 3).with("source", "billing");
//! assert_eq!(headers.get("x-retries").and_then(FieldValue::as_i64), Some(3));
//! assert_eq!(headers.get("source").and_then(FieldValue::as_str), Some("billing"));
//! ```
//!
//! Conversion to and from the codec's types lives here too (`to_wire`, `from_wire`); a table
//! nested deeper than [`MAX_NESTING`] levels is refused on the way out, as the reader refuses
//! one on the way in.

use std::collections::btree_map;
use std::collections::BTreeMap;
use std::fmt;

use amq_protocol::types as wire;

use super::nesting::MAX_NESTING;
use crate::error::{Error, Result};

/// An AMQP field table: names (at most 255 bytes each) mapped to [`FieldValue`]s, in name order.
///
/// Used for message headers ([`BasicProperties::headers`](crate::BasicProperties::headers)),
/// the `arguments` of declares, binds and consumers (`x-message-ttl`, `x-dead-letter-exchange`,
/// `x-match`...), and the broker's server properties.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct FieldTable(BTreeMap<String, FieldValue>);

/// A value in a [`FieldTable`] or a field array.
///
/// Build one with `.into()` from `bool`, the integer types, `f32`, `f64`, `&str`, `String`,
/// `Vec<u8>` (a byte array), a [`FieldTable`] or a `Vec<FieldValue>`; read one with the
/// `as_*` accessors, which look through the integer widths.
///
/// Strings arrive as the long-string type (`S`, what RabbitMQ and pika send); one whose bytes
/// are not UTF-8 arrives as [`FieldValue::StringBytes`] and is sent back unchanged. A
/// short string (`s`) arrives as [`FieldValue::String`] and is sent as a long string.
///
/// Floats compare by their bits, so equality is an equivalence (a NaN equals the same NaN)
/// and the type is `Eq`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum FieldValue {
    /// `t`: a boolean.
    Bool(bool),
    /// `b`: a signed 8-bit integer.
    I8(i8),
    /// `B`: an unsigned 8-bit integer.
    U8(u8),
    /// `U` (RabbitMQ: `s`): a signed 16-bit integer.
    I16(i16),
    /// `u`: an unsigned 16-bit integer.
    U16(u16),
    /// `I`: a signed 32-bit integer.
    I32(i32),
    /// `i`: an unsigned 32-bit integer.
    U32(u32),
    /// `l`: a signed 64-bit integer.
    I64(i64),
    /// `f`: a 32-bit float.
    F32(f32),
    /// `d`: a 64-bit float.
    F64(f64),
    /// `D`: a decimal, `value / 10^scale`.
    Decimal {
        /// Digits after the decimal point.
        scale: u8,
        /// The unscaled value, signed as pika, the Java client and RabbitMQ encode it
        /// (`Decimal('-1.5')` is scale 1, value -15).
        value: i32,
    },
    /// `S`: a UTF-8 string.
    String(String),
    /// `S` whose bytes are not UTF-8, kept as they came.
    StringBytes(Vec<u8>),
    /// `x`: a byte array.
    Bytes(Vec<u8>),
    /// `A`: an array of values.
    Array(Vec<FieldValue>),
    /// `T`: a timestamp, seconds since the Unix epoch.
    Timestamp(u64),
    /// `F`: a nested table.
    Table(FieldTable),
    /// `V`: no value.
    Void,
}

impl FieldTable {
    /// An empty table.
    pub fn new() -> Self {
        FieldTable::default()
    }

    /// The table with `name` set to `value` (a builder).
    #[must_use]
    pub fn with(mut self, name: impl Into<String>, value: impl Into<FieldValue>) -> Self {
        self.insert(name, value);
        self
    }

    /// Sets `name` to `value`, returning the value it replaces.
    pub fn insert(
        &mut self,
        name: impl Into<String>,
        value: impl Into<FieldValue>,
    ) -> Option<FieldValue> {
        self.0.insert(name.into(), value.into())
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&FieldValue> {
        self.0.get(name)
    }

    /// The value of `name`, to change in place.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut FieldValue> {
        self.0.get_mut(name)
    }

    /// Removes `name`, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<FieldValue> {
        self.0.remove(name)
    }

    /// True if the table has `name`.
    pub fn contains_key(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True if the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The entries, in name order.
    pub fn iter(&self) -> btree_map::Iter<'_, String, FieldValue> {
        self.0.iter()
    }

    /// About how many bytes the table holds in memory (names, values, and a per-entry
    /// allowance for the map's nodes and the values' headers): what a held message's headers
    /// count for memory bounds.
    pub(crate) fn held_bytes(&self) -> usize {
        self.0
            .iter()
            .map(|(name, value)| ENTRY_OVERHEAD + name.len() + value.held_bytes())
            .sum()
    }
}

/// What a table entry or array element costs besides its own bytes: the map node's share, the
/// `String` and enum headers, allocator rounding.
const ENTRY_OVERHEAD: usize = 64;

impl fmt::Debug for FieldTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.iter()).finish()
    }
}

impl<K: Into<String>, V: Into<FieldValue>> FromIterator<(K, V)> for FieldTable {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        FieldTable(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

impl<K: Into<String>, V: Into<FieldValue>> Extend<(K, V)> for FieldTable {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        self.0
            .extend(iter.into_iter().map(|(k, v)| (k.into(), v.into())));
    }
}

impl IntoIterator for FieldTable {
    type Item = (String, FieldValue);
    type IntoIter = btree_map::IntoIter<String, FieldValue>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a FieldTable {
    type Item = (&'a String, &'a FieldValue);
    type IntoIter = btree_map::Iter<'a, String, FieldValue>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl PartialEq for FieldValue {
    fn eq(&self, other: &Self) -> bool {
        use FieldValue as V;
        match (self, other) {
            (V::F32(a), V::F32(b)) => a.to_bits() == b.to_bits(),
            (V::F64(a), V::F64(b)) => a.to_bits() == b.to_bits(),
            (V::Bool(a), V::Bool(b)) => a == b,
            (V::I8(a), V::I8(b)) => a == b,
            (V::U8(a), V::U8(b)) => a == b,
            (V::I16(a), V::I16(b)) => a == b,
            (V::U16(a), V::U16(b)) => a == b,
            (V::I32(a), V::I32(b)) => a == b,
            (V::U32(a), V::U32(b)) => a == b,
            (V::I64(a), V::I64(b)) => a == b,
            (
                V::Decimal {
                    scale: s1,
                    value: v1,
                },
                V::Decimal {
                    scale: s2,
                    value: v2,
                },
            ) => s1 == s2 && v1 == v2,
            (V::String(a), V::String(b)) => a == b,
            (V::StringBytes(a), V::StringBytes(b)) | (V::Bytes(a), V::Bytes(b)) => a == b,
            (V::Array(a), V::Array(b)) => a == b,
            (V::Timestamp(a), V::Timestamp(b)) => a == b,
            (V::Table(a), V::Table(b)) => a == b,
            (V::Void, V::Void) => true,
            _ => false,
        }
    }
}

impl Eq for FieldValue {}

impl FieldValue {
    /// Bytes the value holds on the heap (see [`FieldTable::held_bytes`]).
    fn held_bytes(&self) -> usize {
        match self {
            FieldValue::String(s) => s.len(),
            FieldValue::StringBytes(b) | FieldValue::Bytes(b) => b.len(),
            FieldValue::Array(items) => items.iter().map(|v| ENTRY_OVERHEAD + v.held_bytes()).sum(),
            FieldValue::Table(t) => t.held_bytes(),
            _ => 0,
        }
    }

    /// The string, for [`FieldValue::String`] (and [`FieldValue::StringBytes`] or
    /// [`FieldValue::Bytes`] that hold UTF-8).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            FieldValue::String(s) => Some(s),
            FieldValue::StringBytes(b) | FieldValue::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The bytes of a string or byte array.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            FieldValue::String(s) => Some(s.as_bytes()),
            FieldValue::StringBytes(b) | FieldValue::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The value of any integer type (and of a timestamp) that fits in an `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            FieldValue::I8(v) => Some(v.into()),
            FieldValue::U8(v) => Some(v.into()),
            FieldValue::I16(v) => Some(v.into()),
            FieldValue::U16(v) => Some(v.into()),
            FieldValue::I32(v) => Some(v.into()),
            FieldValue::U32(v) => Some(v.into()),
            FieldValue::I64(v) => Some(v),
            FieldValue::Timestamp(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value of a float or a decimal, or of an integer type, as an `f64`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            FieldValue::F32(v) => Some(v.into()),
            FieldValue::F64(v) => Some(v),
            FieldValue::Decimal { scale, value } => {
                Some(f64::from(value) / 10f64.powi(i32::from(scale)))
            }
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    /// The value of a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            FieldValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// The nested table.
    pub fn as_table(&self) -> Option<&FieldTable> {
        match self {
            FieldValue::Table(t) => Some(t),
            _ => None,
        }
    }

    /// The elements of an array.
    pub fn as_array(&self) -> Option<&[FieldValue]> {
        match self {
            FieldValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

macro_rules! from_scalar {
    ($($t:ty => $variant:ident),* $(,)?) => {
        $(impl From<$t> for FieldValue {
            fn from(v: $t) -> Self {
                FieldValue::$variant(v)
            }
        })*
    };
}

from_scalar! {
    bool => Bool, i8 => I8, u8 => U8, i16 => I16, u16 => U16, i32 => I32, u32 => U32,
    i64 => I64, f32 => F32, f64 => F64, String => String, Vec<u8> => Bytes,
    FieldTable => Table, Vec<FieldValue> => Array,
}

impl From<&str> for FieldValue {
    fn from(v: &str) -> Self {
        FieldValue::String(v.to_owned())
    }
}

impl From<&String> for FieldValue {
    fn from(v: &String) -> Self {
        FieldValue::String(v.clone())
    }
}

impl From<&[u8]> for FieldValue {
    fn from(v: &[u8]) -> Self {
        FieldValue::Bytes(v.to_vec())
    }
}

/// The codec's table for `table`; a name over 255 bytes or nesting deeper than
/// [`MAX_NESTING`] is an [`Error::InvalidArgument`].
pub(crate) fn to_wire(table: &FieldTable) -> Result<wire::FieldTable> {
    table_to_wire(table, 1)
}

fn table_to_wire(table: &FieldTable, depth: usize) -> Result<wire::FieldTable> {
    if depth > MAX_NESTING {
        return Err(nested_too_deep());
    }
    let mut out = wire::FieldTable::default();
    for (name, value) in table {
        let name = wire::ShortString::try_new(name.as_str()).map_err(|_| {
            Error::InvalidArgument(format!(
                "field table name of {} bytes (at most 255): {:.40}...",
                name.len(),
                name
            ))
        })?;
        out.insert(name, value_to_wire(value, depth)?);
    }
    Ok(out)
}

fn nested_too_deep() -> Error {
    Error::InvalidArgument(format!(
        "field tables and arrays nested deeper than {MAX_NESTING} levels"
    ))
}

fn value_to_wire(value: &FieldValue, depth: usize) -> Result<wire::AMQPValue> {
    use wire::AMQPValue as W;
    Ok(match value {
        FieldValue::Bool(v) => W::Boolean(*v),
        FieldValue::I8(v) => W::ShortShortInt(*v),
        FieldValue::U8(v) => W::ShortShortUInt(*v),
        FieldValue::I16(v) => W::ShortInt(*v),
        FieldValue::U16(v) => W::ShortUInt(*v),
        FieldValue::I32(v) => W::LongInt(*v),
        FieldValue::U32(v) => W::LongUInt(*v),
        FieldValue::I64(v) => W::LongLongInt(*v),
        FieldValue::F32(v) => W::Float(*v),
        FieldValue::F64(v) => W::Double(*v),
        // amq-protocol calls the 32 bits unsigned; they are the same bits.
        FieldValue::Decimal { scale, value } => W::DecimalValue(wire::DecimalValue {
            scale: *scale,
            value: u32::from_be_bytes(value.to_be_bytes()),
        }),
        FieldValue::String(s) => W::LongString(s.as_bytes().into()),
        FieldValue::StringBytes(b) => W::LongString(b.clone().into()),
        FieldValue::Bytes(b) => W::ByteArray(b.as_slice().into()),
        FieldValue::Array(items) => {
            if depth >= MAX_NESTING {
                return Err(nested_too_deep());
            }
            let items = items
                .iter()
                .map(|v| value_to_wire(v, depth + 1))
                .collect::<Result<Vec<_>>>()?;
            W::FieldArray(items.into())
        }
        FieldValue::Timestamp(v) => W::Timestamp(*v),
        FieldValue::Table(t) => W::FieldTable(table_to_wire(t, depth + 1)?),
        FieldValue::Void => W::Void,
    })
}

/// Our table for the codec's. The reader has already refused anything nested deeper than
/// [`MAX_NESTING`]; deeper levels (only a local caller could build them) become `Void`.
pub(crate) fn from_wire(table: &wire::FieldTable) -> FieldTable {
    table_from_wire(table, 1)
}

fn table_from_wire(table: &wire::FieldTable, depth: usize) -> FieldTable {
    FieldTable(
        table
            .into_iter()
            .map(|(k, v)| (k.as_str().to_owned(), value_from_wire(v, depth)))
            .collect(),
    )
}

fn value_from_wire(value: &wire::AMQPValue, depth: usize) -> FieldValue {
    use wire::AMQPValue as W;
    if depth > MAX_NESTING {
        return FieldValue::Void;
    }
    match value {
        W::Boolean(v) => FieldValue::Bool(*v),
        W::ShortShortInt(v) => FieldValue::I8(*v),
        W::ShortShortUInt(v) => FieldValue::U8(*v),
        W::ShortInt(v) => FieldValue::I16(*v),
        W::ShortUInt(v) => FieldValue::U16(*v),
        W::LongInt(v) => FieldValue::I32(*v),
        W::LongUInt(v) => FieldValue::U32(*v),
        W::LongLongInt(v) => FieldValue::I64(*v),
        W::Float(v) => FieldValue::F32(*v),
        W::Double(v) => FieldValue::F64(*v),
        W::DecimalValue(d) => FieldValue::Decimal {
            scale: d.scale,
            value: i32::from_be_bytes(d.value.to_be_bytes()),
        },
        W::ShortString(s) => FieldValue::String(s.as_str().to_owned()),
        W::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(text) => FieldValue::String(text.to_owned()),
            Err(_) => FieldValue::StringBytes(s.as_bytes().to_vec()),
        },
        W::FieldArray(a) => FieldValue::Array(
            a.as_slice()
                .iter()
                .map(|v| value_from_wire(v, depth + 1))
                .collect(),
        ),
        W::Timestamp(v) => FieldValue::Timestamp(*v),
        W::FieldTable(t) => FieldValue::Table(table_from_wire(t, depth + 1)),
        W::ByteArray(b) => FieldValue::Bytes(b.as_slice().to_vec()),
        W::Void => FieldValue::Void,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> FieldTable {
        FieldTable::new()
            .with("bool", true)
            .with("i8", -3i8)
            .with("u8", 3u8)
            .with("i16", -300i16)
            .with("u16", 300u16)
            .with("i32", -70_000)
            .with("u32", 70_000u32)
            .with("i64", -5_000_000_000i64)
            .with("f32", 1.5f32)
            .with("f64", 2.25)
            .with(
                "dec",
                FieldValue::Decimal {
                    scale: 2,
                    value: 125,
                },
            )
            .with(
                "negative dec",
                FieldValue::Decimal {
                    scale: 1,
                    value: -15,
                },
            )
            .with("text", "héllo")
            .with("odd", FieldValue::StringBytes(vec![0xff, 0x00]))
            .with("bytes", vec![1u8, 2, 3])
            .with("array", vec![FieldValue::from(1), "two".into()])
            .with("ts", FieldValue::Timestamp(1_700_000_000))
            .with("nested", FieldTable::new().with("x-match", "all"))
            .with("void", FieldValue::Void)
    }

    #[test]
    fn every_value_round_trips_through_the_codec_encoding() {
        use amq_protocol::frame::{parse_frame, AMQPFrame};
        use amq_protocol::protocol::{queue, AMQPClass};

        let table = sample();
        let frame = AMQPFrame::Method(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: "q".into(),
                arguments: to_wire(&table).unwrap(),
                ..Default::default()
            })),
        );
        let mut buf = Vec::new();
        crate::protocol::codec::encode_frame(&mut buf, &frame).unwrap();
        let (_, parsed) = parse_frame(buf.as_slice()).unwrap();
        let AMQPFrame::Method(_, AMQPClass::Queue(queue::AMQPMethod::Declare(d))) = parsed else {
            panic!("not a declare: {parsed:?}");
        };
        assert_eq!(from_wire(&d.arguments), table);
    }

    /// A decimal's value is signed on the wire, as pika and the Java client write it:
    /// `Decimal('-1.5')` is `D`, scale 1, then -15 as a big-endian two's complement.
    #[test]
    fn a_negative_decimal_has_the_wire_bytes_pika_writes() {
        let table = FieldTable::new().with(
            "d",
            FieldValue::Decimal {
                scale: 1,
                value: -15,
            },
        );
        let wire = to_wire(&table).unwrap();
        match wire.inner().get("d") {
            Some(wire::AMQPValue::DecimalValue(d)) => {
                assert_eq!(
                    (d.scale, d.value.to_be_bytes()),
                    (1, [0xff, 0xff, 0xff, 0xf1])
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(from_wire(&wire), table);
    }

    #[test]
    fn accessors_look_through_integer_widths() {
        let t = sample();
        assert_eq!(t.get("u8").and_then(FieldValue::as_i64), Some(3));
        assert_eq!(t.get("i16").and_then(FieldValue::as_i64), Some(-300));
        assert_eq!(t.get("u32").and_then(FieldValue::as_i64), Some(70_000));
        assert_eq!(t.get("dec").and_then(FieldValue::as_f64), Some(1.25));
        assert_eq!(
            t.get("negative dec").and_then(FieldValue::as_f64),
            Some(-1.5)
        );
        assert_eq!(t.get("text").and_then(FieldValue::as_str), Some("héllo"));
        assert_eq!(t.get("odd").and_then(FieldValue::as_str), None);
        assert_eq!(
            t.get("nested")
                .and_then(FieldValue::as_table)
                .and_then(|n| n.get("x-match"))
                .and_then(FieldValue::as_str),
            Some("all")
        );
        assert_eq!(t.get("bool").and_then(FieldValue::as_bool), Some(true));
        assert_eq!(t.get("text").and_then(FieldValue::as_i64), None);
    }

    #[test]
    fn a_long_name_or_deep_nesting_is_refused_on_the_way_out() {
        let long = FieldTable::new().with("k".repeat(256), 1);
        assert!(
            matches!(to_wire(&long), Err(Error::InvalidArgument(m)) if m.contains("256 bytes"))
        );
        let mut deep = FieldTable::new().with("leaf", 1);
        for _ in 0..MAX_NESTING {
            deep = FieldTable::new().with("k", deep);
        }
        assert!(matches!(to_wire(&deep), Err(Error::InvalidArgument(m)) if m.contains("nested")));
        let mut ok = FieldTable::new().with("leaf", 1);
        for _ in 1..MAX_NESTING {
            ok = FieldTable::new().with("k", ok);
        }
        assert!(to_wire(&ok).is_ok());
    }
}
