//! Property tests: random and mutated frame streams fed to the sans-IO pieces, the
//! [`FrameReader`] (in random read splits) and the [`Handshake`].
//!
//! The properties:
//! - a valid stream (methods, content headers with random properties and header tables, body
//!   frames, heartbeats, on interleaved channels) comes out of the reader frame for frame,
//!   body bytes equal, whatever the read splits; a frame larger than the reader's
//!   `frame_max` ends it with `FRAME_ERROR` (501), the frames before it intact;
//! - a mutated stream (truncated, bits flipped, frame sizes forged up to `u32::MAX`, frame
//!   types and frame-end octets overwritten, garbage or deeply nested tables inserted) never
//!   panics, never grows the reader's buffer past `frame_max` + 8 + 64 KiB, gives back the
//!   frames before the first damaged byte unchanged, never hands out a frame nested deeper
//!   than `MAX_NESTING`, and fails only with `FRAME_ERROR`;
//! - [`check_nesting`] never refuses a frame amq-protocol's parser accepts;
//! - a valid handshake (heartbeats anywhere) finishes whatever the splits, and a random or
//!   mutated one ends only in `FRAME_ERROR` or `UNEXPECTED_FRAME` (505) protocol errors or in
//!   the typed refusals the broker's own frames ask for.
//!
//! `cargo test` runs each property for 256 cases (`PROPTEST_CASES` changes that); failures
//! are shrunk and saved under `proptest-regressions/` as usual. For a long run, set
//! `COTTONTAIL_FUZZ_SECS`:
//!
//! ```text
//! COTTONTAIL_FUZZ_SECS=600 cargo test --lib protocol::proptests::fuzz -- --nocapture
//! ```
//!
//! runs every property, round after round with fresh random seeds, on one thread, until that
//! many seconds have passed, then prints the cases run per property and in total.
//!
//! The stream generators ([`channel_stream`], [`interleaved_stream`]) produce what a broker
//! may send, one message's frames contiguous per channel: a property for content assembly can
//! take the same streams.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use amq_protocol::frame::{parse_frame, AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{
    basic, channel, confirm, connection, queue, AMQPClass, BasicProperties,
};
use amq_protocol::types::{AMQPValue, DecimalValue, FieldTable, LongString, ShortString};
use proptest::collection::{btree_map, btree_set, vec};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseResult, TestRunner};

use super::codec::{check_nesting, encode_frame, nested_table, FrameReader, Inbound, MAX_NESTING};
use super::handshake::{negotiate, Handshake, Step};
use crate::error::{Error, FRAME_ERROR, UNEXPECTED_FRAME};
use crate::params::{ConnectionParameters, ExternalCredentials};

/// The I/O thread's stack: the reader parses on it, up to [`MAX_NESTING`] levels deep.
const IO_STACK: usize = 8 << 20;

// ---------------------------------------------------------------------------------------
// Generators: field values, properties, methods, frames, streams.
// ---------------------------------------------------------------------------------------

/// Text for short strings: plain, uppercase hex (`A`-`F` bytes that are not type tags), any
/// printable Unicode.
fn text() -> impl Strategy<Value = String> {
    prop_oneof!["[ -~]{0,24}", "[0-9A-F]{0,60}", "\\PC{0,12}"]
}

/// A short string of [`text`].
fn short_string() -> impl Strategy<Value = ShortString> {
    text().prop_map(ShortString::from)
}

/// Long string contents, up to 300 bytes of hex or base64 among them.
fn long_string() -> impl Strategy<Value = LongString> {
    prop_oneof![
        "[ -~]{0,40}",
        "[0-9A-F]{0,300}",
        "[A-Za-z0-9+/=]{0,300}",
        "\\PC{0,20}"
    ]
    .prop_map(|s| LongString::from(s.into_bytes()))
}

/// Every value type amq-protocol parses back to itself (floats without NaN, so frames compare
/// equal; no `LongLongUInt` or `ShortString`, which it encodes as other types).
fn leaf_value() -> impl Strategy<Value = AMQPValue> {
    prop_oneof![
        any::<bool>().prop_map(AMQPValue::Boolean),
        any::<i8>().prop_map(AMQPValue::ShortShortInt),
        any::<u8>().prop_map(AMQPValue::ShortShortUInt),
        any::<i16>().prop_map(AMQPValue::ShortInt),
        any::<u16>().prop_map(AMQPValue::ShortUInt),
        any::<i32>().prop_map(AMQPValue::LongInt),
        any::<u32>().prop_map(AMQPValue::LongUInt),
        any::<i64>().prop_map(AMQPValue::LongLongInt),
        any::<i32>().prop_map(|i| AMQPValue::Float(i as f32 / 8.0)),
        any::<i64>().prop_map(|i| AMQPValue::Double(i as f64 / 7.0)),
        (any::<u8>(), any::<u32>())
            .prop_map(|(scale, value)| AMQPValue::DecimalValue(DecimalValue { scale, value })),
        long_string().prop_map(AMQPValue::LongString),
        vec(any::<u8>(), 0..32).prop_map(|b| AMQPValue::ByteArray(b.into())),
        any::<u64>().prop_map(AMQPValue::Timestamp),
        Just(AMQPValue::Void),
    ]
}

/// A field value, nesting tables and arrays up to 4 levels.
fn field_value() -> impl Strategy<Value = AMQPValue> {
    leaf_value().prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            btree_map(short_string(), inner.clone(), 0..4)
                .prop_map(|m| AMQPValue::FieldTable(FieldTable::from(m))),
            vec(inner, 0..4).prop_map(|v| AMQPValue::FieldArray(v.into())),
        ]
    })
}

/// A field table of up to 4 entries, values nesting up to 4 levels.
fn field_table() -> impl Strategy<Value = FieldTable> {
    btree_map(short_string(), field_value(), 0..5).prop_map(FieldTable::from)
}

/// Basic properties with each property present or not.
fn properties() -> impl Strategy<Value = BasicProperties> {
    type Set = fn(BasicProperties, ShortString) -> BasicProperties;
    const STRINGS: [Set; 10] = [
        BasicProperties::with_content_type,
        BasicProperties::with_content_encoding,
        BasicProperties::with_correlation_id,
        BasicProperties::with_reply_to,
        BasicProperties::with_expiration,
        BasicProperties::with_message_id,
        BasicProperties::with_type,
        BasicProperties::with_user_id,
        BasicProperties::with_app_id,
        BasicProperties::with_cluster_id,
    ];
    let strings = vec(proptest::option::of(short_string()), STRINGS.len());
    let others = (
        proptest::option::of(field_table()),
        proptest::option::of(any::<u8>()),
        proptest::option::of(any::<u8>()),
        proptest::option::of(any::<u64>()),
    );
    (strings, others).prop_map(|(strings, (headers, mode, priority, timestamp))| {
        let mut p = BasicProperties::default();
        for (set, value) in STRINGS.iter().zip(strings) {
            if let Some(value) = value {
                p = set(p, value);
            }
        }
        if let Some(v) = headers {
            p = p.with_headers(v);
        }
        if let Some(v) = mode {
            p = p.with_delivery_mode(v);
        }
        if let Some(v) = priority {
            p = p.with_priority(v);
        }
        if let Some(v) = timestamp {
            p = p.with_timestamp(v);
        }
        p
    })
}

/// A method that opens a message's content: basic.deliver, basic.return or basic.get-ok.
fn content_method() -> impl Strategy<Value = AMQPClass> {
    prop_oneof![
        (
            short_string(),
            any::<u64>(),
            any::<bool>(),
            short_string(),
            short_string()
        )
            .prop_map(
                |(consumer_tag, delivery_tag, redelivered, exchange, routing_key)| {
                    AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                        consumer_tag,
                        delivery_tag,
                        redelivered,
                        exchange,
                        routing_key,
                    }))
                }
            ),
        (any::<u16>(), short_string(), short_string(), short_string()).prop_map(
            |(reply_code, reply_text, exchange, routing_key)| {
                AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                    reply_code,
                    reply_text,
                    exchange,
                    routing_key,
                }))
            }
        ),
        (any::<u64>(), any::<bool>(), short_string(), any::<u32>()).prop_map(
            |(delivery_tag, redelivered, exchange, message_count)| {
                AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
                    delivery_tag,
                    redelivered,
                    exchange,
                    routing_key: "rk".into(),
                    message_count,
                }))
            }
        ),
    ]
}

/// A method without content a broker sends on a channel (and a few carrying field tables,
/// which only a client sends but the reader parses all the same).
fn channel_method() -> impl Strategy<Value = AMQPClass> {
    prop_oneof![
        (any::<u64>(), any::<bool>()).prop_map(|(delivery_tag, multiple)| AMQPClass::Basic(
            basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag,
                multiple
            })
        )),
        (any::<u64>(), any::<bool>(), any::<bool>()).prop_map(
            |(delivery_tag, multiple, requeue)| AMQPClass::Basic(basic::AMQPMethod::Nack(
                basic::Nack {
                    delivery_tag,
                    multiple,
                    requeue
                }
            ))
        ),
        short_string().prop_map(|consumer_tag| AMQPClass::Basic(basic::AMQPMethod::Cancel(
            basic::Cancel {
                consumer_tag,
                nowait: true
            }
        ))),
        short_string().prop_map(
            |consumer_tag| AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                consumer_tag
            }))
        ),
        Just(AMQPClass::Basic(basic::AMQPMethod::GetEmpty(
            basic::GetEmpty {}
        ))),
        (short_string(), any::<u32>(), any::<u32>()).prop_map(
            |(queue, message_count, consumer_count)| AMQPClass::Queue(
                queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                    queue,
                    message_count,
                    consumer_count
                })
            )
        ),
        Just(AMQPClass::Channel(channel::AMQPMethod::OpenOk(
            channel::OpenOk {}
        ))),
        any::<bool>().prop_map(|active| AMQPClass::Channel(channel::AMQPMethod::Flow(
            channel::Flow { active }
        ))),
        (any::<u16>(), short_string()).prop_map(|(reply_code, reply_text)| AMQPClass::Channel(
            channel::AMQPMethod::Close(channel::Close {
                reply_code,
                reply_text,
                class_id: 60,
                method_id: 40
            })
        )),
        Just(AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(
            confirm::SelectOk {}
        ))),
        (short_string(), field_table()).prop_map(|(queue, arguments)| AMQPClass::Queue(
            queue::AMQPMethod::Declare(queue::Declare {
                queue,
                durable: true,
                arguments,
                ..Default::default()
            })
        )),
        (short_string(), field_table()).prop_map(|(queue, arguments)| AMQPClass::Basic(
            basic::AMQPMethod::Consume(basic::Consume {
                queue,
                consumer_tag: "ctag".into(),
                arguments,
                ..Default::default()
            })
        )),
    ]
}

/// One message as a broker sends it on `channel`: a method that opens content, its content
/// header, and its body in frames of `chunk` bytes at most (`frame_max` - 8), none for an
/// empty body.
pub(crate) fn message(channel: u16, frame_max: u32) -> impl Strategy<Value = Vec<AMQPFrame>> {
    let most = frame_max as usize - 8;
    // Large bodies (several frames even at 128 KiB) patterned rather than random: cheaper.
    let large = (0..(2 * most + 2).min(300_000), any::<u8>())
        .prop_map(|(len, seed)| (0..len).map(|i| (i as u8) ^ seed).collect::<Vec<u8>>());
    let body = prop_oneof![7 => vec(any::<u8>(), 0..64), 1 => large];
    (content_method(), properties(), body, 1..=most).prop_map(
        move |(method, properties, body, chunk)| {
            let mut frames = vec![
                AMQPFrame::Method(channel, method),
                AMQPFrame::Header(
                    channel,
                    AMQPContentHeader {
                        class_id: 60,
                        body_size: body.len() as u64,
                        properties,
                    },
                ),
            ];
            frames.extend(
                body.chunks(chunk)
                    .map(|piece| AMQPFrame::Body(channel, piece.to_vec())),
            );
            frames
        },
    )
}

/// A valid frame stream for one channel: messages (each one's frames contiguous) and other
/// methods, in any order.
pub(crate) fn channel_stream(
    channel: u16,
    frame_max: u32,
) -> impl Strategy<Value = Vec<AMQPFrame>> {
    let item = prop_oneof![
        2 => message(channel, frame_max),
        1 => channel_method().prop_map(move |m| vec![AMQPFrame::Method(channel, m)]),
    ];
    vec(item, 0..5).prop_map(|items| items.concat())
}

/// Channel 0's own traffic: heartbeats, connection.blocked / unblocked, and now and then a
/// connection.start (a table-carrying method on channel 0).
fn connection_stream() -> impl Strategy<Value = Vec<AMQPFrame>> {
    let frame = prop_oneof![
        4 => Just(AMQPFrame::Heartbeat),
        1 => short_string().prop_map(|reason| AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Blocked(connection::Blocked {
                reason
            }))
        )),
        1 => Just(AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Unblocked(
                connection::Unblocked {}
            ))
        )),
        1 => start_frame(),
    ];
    vec(frame, 0..4)
}

/// A valid stream a broker could send on up to 3 channels plus channel 0, the channels'
/// frames interleaved at random (each channel's order kept).
pub(crate) fn interleaved_stream(frame_max: u32) -> impl Strategy<Value = Vec<AMQPFrame>> {
    btree_set(1..=u16::MAX, 0..4)
        .prop_flat_map(move |channels| {
            let mut streams: Vec<BoxedStrategy<Vec<AMQPFrame>>> = channels
                .into_iter()
                .map(|c| channel_stream(c, frame_max).boxed())
                .collect();
            streams.push(connection_stream().boxed());
            (streams, vec(any::<Index>(), 0..48))
        })
        .prop_map(|(streams, picks)| merge(streams, &picks))
}

/// Merges per-channel frame lists into one, keeping each list's order; `picks` choose which
/// list goes next (then the first non-empty one, once they run out).
fn merge(streams: Vec<Vec<AMQPFrame>>, picks: &[Index]) -> Vec<AMQPFrame> {
    let mut streams: Vec<VecDeque<AMQPFrame>> = streams.into_iter().map(Into::into).collect();
    let mut picks = picks.iter();
    let mut out = Vec::new();
    loop {
        let live: Vec<usize> = (0..streams.len())
            .filter(|&i| !streams[i].is_empty())
            .collect();
        let Some(&first) = live.first() else {
            return out;
        };
        let i = picks.next().map_or(first, |p| live[p.index(live.len())]);
        out.extend(streams[i].pop_front());
    }
}

/// The reader's `frame_max`: the spec's smallest, a common one, RabbitMQ's default.
fn frame_max() -> impl Strategy<Value = u32> {
    prop_oneof![Just(4096u32), Just(8192), Just(131_072)]
}

/// Sizes of successive reads: byte by byte, small, or large (cycled).
fn splits() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        vec(1usize..4, 1..4),
        vec(1usize..300, 1..8),
        vec(1usize..200_000, 1..4),
    ]
}

/// A connection.start on channel 0 with random server properties, version and mechanisms.
fn start_frame() -> impl Strategy<Value = AMQPFrame> {
    let version = prop_oneof![4 => Just((0u8, 9u8)), 1 => (any::<u8>(), any::<u8>())];
    let mechanisms = prop_oneof![
        Just("AMQPLAIN PLAIN"),
        Just("PLAIN"),
        Just("EXTERNAL"),
        Just("EXTERNAL PLAIN"),
        Just(""),
    ];
    (version, field_table(), mechanisms).prop_map(|((major, minor), props, mechanisms)| {
        AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
                version_major: major,
                version_minor: minor,
                server_properties: props,
                mechanisms: mechanisms.into(),
                locales: "en_US".into(),
            })),
        )
    })
}

// ---------------------------------------------------------------------------------------
// Raw bytes: encoding, nested tables, mutations.
// ---------------------------------------------------------------------------------------

/// Encodes `frames` back to back; also returns where each frame ends.
fn encode(frames: &[AMQPFrame]) -> (Vec<u8>, Vec<usize>) {
    let mut bytes = Vec::new();
    let mut ends = Vec::with_capacity(frames.len());
    for frame in frames {
        encode_frame(&mut bytes, frame).expect("generated frames encode");
        ends.push(bytes.len());
    }
    (bytes, ends)
}

/// A whole frame of `frame_type` on `channel` around `payload`.
fn raw_frame(frame_type: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![frame_type];
    frame.extend_from_slice(&channel.to_be_bytes());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    frame.push(0xCE);
    frame
}

/// A frame carrying `table`: a content header (as its `headers`) or a connection.start (as
/// its `server_properties`).
fn frame_with_table(table: &[u8], as_start: bool) -> Vec<u8> {
    let mut payload = Vec::new();
    if as_start {
        payload.extend_from_slice(&[0, 10, 0, 10, 0, 9]);
        payload.extend_from_slice(table);
        payload.extend_from_slice(&[0, 0, 0, 5]);
        payload.extend_from_slice(b"PLAIN");
        payload.extend_from_slice(&[0, 0, 0, 5]);
        payload.extend_from_slice(b"en_US");
        raw_frame(1, 0, &payload)
    } else {
        payload.extend_from_slice(&[0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20, 0]);
        payload.extend_from_slice(table);
        raw_frame(2, 1, &payload)
    }
}

/// A frame whose tables nest 1 to 300 levels, tables and arrays mixed.
fn nested_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![vec(any::<bool>(), 0..8), vec(any::<bool>(), 100..300)],
        any::<bool>(),
    )
        .prop_map(|(kinds, as_start)| frame_with_table(&nested_table(&kinds), as_start))
}

/// A frame size to forge into a frame header.
#[derive(Clone, Debug)]
enum ForgedSize {
    Any(u32),
    /// `u32::MAX` minus this.
    NearMax(u8),
    /// The largest size `frame_max` allows, plus this.
    NearLimit(i8),
    /// The frame's real size, minus this (wrapping).
    Shorter(u8),
}

/// One way to damage a stream.
#[derive(Clone, Debug)]
enum Mutation {
    /// Cut the stream there.
    Truncate(Index),
    /// Flip one bit of a byte.
    FlipBit(Index, u8),
    /// Overwrite a frame's size.
    ForgeSize(Index, ForgedSize),
    /// Overwrite a frame's type octet.
    FrameType(Index, u8),
    /// Overwrite a frame's frame-end octet.
    FrameEnd(Index, u8),
    /// Overwrite bytes from some offset.
    Overwrite(Index, Vec<u8>),
    /// Insert garbage at some offset.
    Garbage(Index, Vec<u8>),
    /// Insert a frame with deeply nested tables between two frames.
    Nested(Index, Vec<u8>),
}

/// Any one [`Mutation`], forged sizes near `u32::MAX` and near the limit among them.
fn mutation() -> impl Strategy<Value = Mutation> {
    let forged = prop_oneof![
        any::<u32>().prop_map(ForgedSize::Any),
        any::<u8>().prop_map(ForgedSize::NearMax),
        any::<i8>().prop_map(ForgedSize::NearLimit),
        any::<u8>().prop_map(ForgedSize::Shorter),
    ];
    prop_oneof![
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), 0..8u8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        (any::<Index>(), forged).prop_map(|(i, s)| Mutation::ForgeSize(i, s)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, t)| Mutation::FrameType(i, t)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, e)| Mutation::FrameEnd(i, e)),
        (any::<Index>(), vec(any::<u8>(), 1..16)).prop_map(|(i, b)| Mutation::Overwrite(i, b)),
        (any::<Index>(), vec(any::<u8>(), 1..64)).prop_map(|(i, b)| Mutation::Garbage(i, b)),
        (any::<Index>(), nested_frame()).prop_map(|(i, f)| Mutation::Nested(i, f)),
    ]
}

/// Applies `mutations` to `bytes`, a stream of frames starting at `starts`; returns the
/// offset of the first byte changed (everything before it is as it was).
fn mutate(bytes: &mut Vec<u8>, starts: &[usize], mutations: &[Mutation], frame_max: u32) -> usize {
    let mut first = bytes.len();
    // Frame starts still where they were: mutations may move what follows them.
    let mut starts = starts.to_vec();
    for m in mutations {
        let frame = |i: &Index| (!starts.is_empty()).then(|| starts[i.index(starts.len())]);
        let at = match m {
            Mutation::Truncate(i) => {
                let at = i.index(bytes.len() + 1);
                bytes.truncate(at);
                at
            }
            Mutation::FlipBit(i, bit) if !bytes.is_empty() => {
                let at = i.index(bytes.len());
                bytes[at] ^= 1 << bit;
                at
            }
            Mutation::ForgeSize(i, size) => match frame(i) {
                Some(start) if start + 7 <= bytes.len() => {
                    let real = u32::from_be_bytes(bytes[start + 3..start + 7].try_into().unwrap());
                    let forged = match size {
                        ForgedSize::Any(n) => *n,
                        ForgedSize::NearMax(d) => u32::MAX - *d as u32,
                        ForgedSize::NearLimit(d) => (frame_max - 8).wrapping_add(*d as u32),
                        ForgedSize::Shorter(d) => real.wrapping_sub(*d as u32),
                    };
                    bytes[start + 3..start + 7].copy_from_slice(&forged.to_be_bytes());
                    start + 3
                }
                _ => continue,
            },
            Mutation::FrameType(i, t) => match frame(i) {
                Some(start) if start < bytes.len() => {
                    bytes[start] = *t;
                    start
                }
                _ => continue,
            },
            Mutation::FrameEnd(i, e) => {
                let Some(n) = (!starts.is_empty()).then(|| i.index(starts.len())) else {
                    continue;
                };
                let end = starts.get(n + 1).copied().unwrap_or(bytes.len());
                if end == 0 || end > bytes.len() {
                    continue;
                }
                bytes[end - 1] = *e;
                end - 1
            }
            Mutation::Overwrite(i, b) if !bytes.is_empty() => {
                let at = i.index(bytes.len());
                let end = (at + b.len()).min(bytes.len());
                bytes[at..end].copy_from_slice(&b[..end - at]);
                at
            }
            Mutation::Garbage(i, b) => {
                let at = i.index(bytes.len() + 1);
                bytes.splice(at..at, b.iter().copied());
                shift(&mut starts, at, b.len());
                at
            }
            Mutation::Nested(i, f) => {
                let at = frame(i).unwrap_or(0).min(bytes.len());
                bytes.splice(at..at, f.iter().copied());
                shift(&mut starts, at, f.len());
                starts.push(at);
                starts.sort_unstable();
                at
            }
            _ => continue,
        };
        first = first.min(at);
    }
    first
}

/// Moves the frame starts after `at` on by `by` bytes.
fn shift(starts: &mut [usize], at: usize, by: usize) {
    for s in starts.iter_mut().filter(|s| **s >= at) {
        *s += by;
    }
}

// ---------------------------------------------------------------------------------------
// Driving the reader and the handshake.
// ---------------------------------------------------------------------------------------

/// A frame as the reader hands it out, body bytes copied.
#[derive(Debug, PartialEq)]
#[allow(clippy::large_enum_variant)]
enum Got {
    Frame(AMQPFrame),
    Body(u16, Vec<u8>),
}

impl From<AMQPFrame> for Got {
    fn from(frame: AMQPFrame) -> Self {
        match frame {
            AMQPFrame::Body(channel, bytes) => Got::Body(channel, bytes),
            other => Got::Frame(other),
        }
    }
}

/// What a reader made of a stream: the frames it gave, and the error that stopped it.
#[derive(Debug)]
struct Outcome {
    frames: Vec<Got>,
    error: Option<Error>,
}

/// Feeds `bytes` to a new reader in reads of `splits` bytes (cycled), taking every complete
/// frame after each read, as the I/O thread does, until the bytes run out or it fails; `each`
/// sees every frame as it comes (and may stop the run with an error). Checks after every read
/// that the buffer stays within its bound.
fn feed(
    bytes: &[u8],
    splits: &[usize],
    frame_max: u32,
    mut each: impl FnMut(&Got) -> Result<(), Error>,
) -> std::result::Result<Outcome, TestCaseError> {
    let mut reader = FrameReader::new(frame_max);
    let mut frames = Vec::new();
    let mut sizes = splits.iter().cycle();
    let mut pos = 0;
    while pos < bytes.len() {
        let len = (*sizes.next().unwrap()).min(bytes.len() - pos);
        let mut piece = &bytes[pos..pos + len];
        pos += len;
        while !piece.is_empty() {
            let n = reader.read_from(&mut piece).unwrap();
            prop_assert!(n > 0, "the reader left no room to read into");
            prop_assert!(
                reader.buffered_capacity() <= reader.capacity_bound(),
                "buffer of {} bytes, more than {}",
                reader.buffered_capacity(),
                reader.capacity_bound()
            );
            loop {
                let got = match reader.next_frame() {
                    Ok(Some(Inbound::Frame(frame))) => {
                        let depth = frame_depth(&frame);
                        prop_assert!(depth <= MAX_NESTING, "a frame nested {} deep", depth);
                        Got::Frame(frame)
                    }
                    Ok(Some(Inbound::Body(channel, range))) => {
                        Got::Body(channel, reader.bytes(range).to_vec())
                    }
                    Ok(None) => break,
                    Err(error) => {
                        return Ok(Outcome {
                            frames,
                            error: Some(error),
                        })
                    }
                };
                let stop = each(&got);
                frames.push(got);
                if let Err(error) = stop {
                    return Ok(Outcome {
                        frames,
                        error: Some(error),
                    });
                }
            }
        }
    }
    Ok(Outcome {
        frames,
        error: None,
    })
}

/// How deeply the field tables and arrays in `frame` nest (0 without a table), walked
/// without recursion: the reader must never hand out more than [`MAX_NESTING`].
fn frame_depth(frame: &AMQPFrame) -> usize {
    let table = match frame {
        AMQPFrame::Header(_, header) => header.properties.headers().as_ref(),
        AMQPFrame::Method(_, AMQPClass::Connection(connection::AMQPMethod::Start(m))) => {
            Some(&m.server_properties)
        }
        AMQPFrame::Method(_, AMQPClass::Connection(connection::AMQPMethod::StartOk(m))) => {
            Some(&m.client_properties)
        }
        AMQPFrame::Method(_, AMQPClass::Queue(queue::AMQPMethod::Declare(m))) => Some(&m.arguments),
        AMQPFrame::Method(_, AMQPClass::Basic(basic::AMQPMethod::Consume(m))) => Some(&m.arguments),
        _ => None,
    };
    let Some(table) = table else {
        return 0;
    };
    let mut deepest = 1;
    let mut pending: Vec<(&AMQPValue, usize)> = table.inner().values().map(|v| (v, 2)).collect();
    while let Some((value, depth)) = pending.pop() {
        match value {
            AMQPValue::FieldTable(t) => {
                deepest = deepest.max(depth);
                pending.extend(t.inner().values().map(|v| (v, depth + 1)));
            }
            AMQPValue::FieldArray(a) => {
                deepest = deepest.max(depth);
                pending.extend(a.as_slice().iter().map(|v| (v, depth + 1)));
            }
            _ => {}
        }
    }
    deepest
}

/// The reply code of a protocol error, `None` for any other error.
fn protocol_code(error: &Error) -> Option<u16> {
    match error {
        Error::Protocol { reply_code, .. } => Some(*reply_code),
        _ => None,
    }
}

/// How a handshake run ended.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum HandshakeEnd {
    Done(crate::protocol::handshake::Tuned),
    /// The stream ended first.
    Waiting,
    /// Failed on this frame (`None`: the reader failed).
    Failed(Option<Got>, Error),
}

/// Runs a handshake over `bytes` as the engine does: frames through the reader, each into
/// `on_frame`, a body frame an `UNEXPECTED_FRAME` error. Also returns what was sent.
fn run_handshake(
    params: &ConnectionParameters,
    bytes: &[u8],
    splits: &[usize],
) -> std::result::Result<(HandshakeEnd, Vec<Vec<AMQPClass>>), TestCaseError> {
    let mut hs = Handshake::new(params);
    let mut sent = Vec::new();
    let mut done = None;
    let mut failed_on = None;
    let outcome = feed(bytes, splits, 131_072, |got| {
        if done.is_some() {
            // The engine hands the reader to the I/O loop here; stop reading.
            return Err(Error::protocol(0, "done"));
        }
        let step = match got {
            Got::Body(..) => Err(Error::protocol(UNEXPECTED_FRAME, "body frame")),
            Got::Frame(frame) => hs.on_frame(frame.clone()),
        };
        match step {
            Ok(Step::Send(methods)) => {
                sent.push(methods);
                Ok(())
            }
            Ok(Step::Done(tuned)) => {
                done = Some(tuned);
                Ok(())
            }
            Err(e) => {
                failed_on = Some(match got {
                    Got::Frame(f) => Got::Frame(f.clone()),
                    Got::Body(c, b) => Got::Body(*c, b.clone()),
                });
                Err(e)
            }
        }
    })?;
    let end = match (done, outcome.error) {
        (Some(tuned), _) => HandshakeEnd::Done(tuned),
        (None, Some(error)) => HandshakeEnd::Failed(failed_on, error),
        (None, None) => HandshakeEnd::Waiting,
    };
    Ok((end, sent))
}

// ---------------------------------------------------------------------------------------
// The properties.
// ---------------------------------------------------------------------------------------

/// Valid streams come out frame for frame whatever the splits. Now and then the reader's
/// `frame_max` is set below the sender's: the first frame over it ends the stream with
/// `FRAME_ERROR`, the frames before it intact.
fn valid_streams_round_trip(config: &Config) -> u64 {
    let strategy = frame_max().prop_flat_map(|max| {
        let reader_max = prop_oneof![7 => Just(max), 1 => 64..512u32];
        (reader_max, interleaved_stream(max), splits())
    });
    run_round(config, strategy, |(reader_max, frames, splits)| {
        let (bytes, ends) = encode(&frames);
        let mut starts = vec![0];
        starts.extend_from_slice(&ends);
        let fits = starts
            .windows(2)
            .take_while(|w| w[1] - w[0] <= reader_max as usize)
            .count();
        let outcome = feed(&bytes, &splits, reader_max, |_| Ok(()))?;
        let expected: Vec<Got> = frames.into_iter().take(fits).map(Got::from).collect();
        prop_assert_eq!(&outcome.frames, &expected);
        if fits < ends.len() {
            let code = outcome.error.as_ref().and_then(protocol_code);
            prop_assert_eq!(code, Some(FRAME_ERROR), "{:?}", outcome.error);
        } else {
            prop_assert!(outcome.error.is_none(), "{:?}", outcome.error);
        }
        Ok(())
    })
}

/// Damaged streams: no panic, a bounded buffer (checked in [`feed`]), the frames before the
/// damage unchanged, and `FRAME_ERROR` as the only failure.
fn mutated_streams_fail_cleanly(config: &Config) -> u64 {
    let strategy = frame_max().prop_flat_map(|max| {
        (
            Just(max),
            interleaved_stream(max),
            vec(mutation(), 1..4),
            splits(),
        )
    });
    run_round(
        config,
        strategy,
        |(frame_max, frames, mutations, splits)| {
            let (mut bytes, ends) = encode(&frames);
            let mut starts = vec![0];
            starts.extend_from_slice(&ends[..ends.len().saturating_sub(1)]);
            let first_damage = mutate(&mut bytes, &starts, &mutations, frame_max);
            // The frames wholly before the damage, as long as each fits frame_max.
            let mut begin = 0;
            let clean = ends
                .iter()
                .take_while(|&&end| {
                    let ok = end <= first_damage && end - begin <= frame_max as usize;
                    begin = end;
                    ok
                })
                .count();
            let outcome = feed(&bytes, &splits, frame_max, |_| Ok(()))?;
            prop_assert!(
                outcome.frames.len() >= clean,
                "{} frames before the damage, {} out: {:?}",
                clean,
                outcome.frames.len(),
                outcome.error
            );
            let expected: Vec<Got> = frames.into_iter().take(clean).map(Got::from).collect();
            prop_assert_eq!(&outcome.frames[..clean], &expected[..]);
            if let Some(error) = &outcome.error {
                prop_assert_eq!(protocol_code(error), Some(FRAME_ERROR), "{:?}", error);
            }
            Ok(())
        },
    )
}

/// One method or content header frame, valid, damaged, or nested deep.
fn single_frame() -> impl Strategy<Value = Vec<u8>> {
    let valid = prop_oneof![
        (any::<u16>(), channel_method()).prop_map(|(c, m)| AMQPFrame::Method(c, m)),
        start_frame(),
        (any::<u16>(), properties(), any::<u64>()).prop_map(|(c, properties, body_size)| {
            AMQPFrame::Header(
                c,
                AMQPContentHeader {
                    class_id: 60,
                    body_size,
                    properties,
                },
            )
        }),
    ]
    .prop_map(|f| encode(&[f]).0);
    let frame = prop_oneof![3 => valid, 1 => nested_frame()];
    let damage = vec((any::<Index>(), any::<u8>()), 0..4);
    (frame, damage).prop_map(|(mut frame, damage)| {
        // Damage the payload only: the frame header and frame-end stay right.
        let payload = 7..frame.len() - 1;
        for (i, byte) in damage {
            if !payload.is_empty() {
                frame[payload.start + i.index(payload.len())] = byte;
            }
        }
        frame
    })
}

/// [`check_nesting`] agrees with amq-protocol: it never refuses a frame that parses.
fn nesting_check_never_refuses_what_parses(config: &Config) -> u64 {
    run_round(config, single_frame(), |frame| {
        match check_nesting(&frame) {
            // Too deep: never handed to the parser, which would recurse that deep.
            Err(e) if e.contains("nested") => {}
            scan => {
                let parsed = parse_frame(&frame[..]);
                prop_assert!(
                    scan.is_ok() || parsed.is_err(),
                    "refused ({:?}) a frame that parses: {:?}",
                    scan,
                    parsed
                );
            }
        }
        Ok(())
    })
}

/// A valid handshake, heartbeats anywhere, read in any splits: start-ok, then tune-ok and
/// open, then done with what `negotiate` settles.
fn valid_handshakes_finish(config: &Config) -> u64 {
    let strategy = (
        field_table(),
        any::<(u16, u32, u16)>(),
        vec(0..3usize, 0..4),
        splits(),
    );
    run_round(
        config,
        strategy,
        |(server_properties, (channel_max, frame_max, heartbeat), beats, splits)| {
            let params = ConnectionParameters::default();
            let tune = connection::Tune {
                channel_max,
                frame_max,
                heartbeat,
            };
            let mut frames = vec![
                connection::AMQPMethod::Start(connection::Start {
                    version_major: 0,
                    version_minor: 9,
                    server_properties: server_properties.clone(),
                    mechanisms: "AMQPLAIN PLAIN".into(),
                    locales: "en_US".into(),
                }),
                connection::AMQPMethod::Tune(tune.clone()),
                connection::AMQPMethod::OpenOk(connection::OpenOk {}),
            ]
            .into_iter()
            .map(|m| AMQPFrame::Method(0, AMQPClass::Connection(m)))
            .collect::<Vec<_>>();
            for at in beats {
                frames.insert(at.min(2), AMQPFrame::Heartbeat);
            }
            let (end, sent) = run_handshake(&params, &encode(&frames).0, &splits)?;
            let HandshakeEnd::Done(tuned) = end else {
                return Err(TestCaseError::fail(format!("{end:?}")));
            };
            let expected = negotiate(&params, &tune);
            prop_assert_eq!(
                (tuned.channel_max, tuned.frame_max, tuned.heartbeat),
                (expected.channel_max, expected.frame_max, expected.heartbeat)
            );
            prop_assert_eq!(&tuned.server_properties, &server_properties);
            let sent: Vec<Vec<AMQPClass>> = sent.into_iter().filter(|s| !s.is_empty()).collect();
            prop_assert_eq!(sent.len(), 2);
            prop_assert!(matches!(
                &sent[0][..],
                [AMQPClass::Connection(connection::AMQPMethod::StartOk(_))]
            ));
            prop_assert!(matches!(
                &sent[1][..],
                [
                    AMQPClass::Connection(connection::AMQPMethod::TuneOk(_)),
                    AMQPClass::Connection(connection::AMQPMethod::Open(_))
                ]
            ));
            Ok(())
        },
    )
}

/// A frame a handshake may meet: its own methods (good or bad), a close, a challenge,
/// heartbeats, or anything else a broker sends.
fn handshake_frame() -> impl Strategy<Value = AMQPFrame> {
    let method = |m: connection::AMQPMethod| AMQPFrame::Method(0, AMQPClass::Connection(m));
    prop_oneof![
        3 => start_frame(),
        2 => any::<(u16, u32, u16)>().prop_map(move |(channel_max, frame_max, heartbeat)| method(
            connection::AMQPMethod::Tune(connection::Tune {
                channel_max,
                frame_max,
                heartbeat
            })
        )),
        2 => Just(method(connection::AMQPMethod::OpenOk(connection::OpenOk {}))),
        1 => prop_oneof![Just(403u16), Just(530), Just(320), Just(501), any::<u16>()].prop_map(
            move |reply_code| method(connection::AMQPMethod::Close(connection::Close {
                reply_code,
                reply_text: "NOPE".into(),
                class_id: 10,
                method_id: 40,
            }))
        ),
        1 => Just(method(connection::AMQPMethod::Secure(connection::Secure {
            challenge: "c".into()
        }))),
        2 => Just(AMQPFrame::Heartbeat),
        1 => (any::<u16>(), channel_method()).prop_map(|(c, m)| AMQPFrame::Method(c, m)),
        1 => (any::<u16>(), content_method()).prop_map(|(c, m)| AMQPFrame::Method(c, m)),
        1 => (any::<u16>(), properties()).prop_map(|(c, properties)| AMQPFrame::Header(
            c,
            AMQPContentHeader {
                class_id: 60,
                body_size: 3,
                properties
            }
        )),
        1 => (any::<u16>(), vec(any::<u8>(), 0..8)).prop_map(|(c, b)| AMQPFrame::Body(c, b)),
    ]
}

/// Random and damaged handshake streams (after a valid start of 0 to 3 frames) end only in the documented errors: `FRAME_ERROR` or
/// `UNEXPECTED_FRAME`, or the typed refusals that a close, a SASL challenge or a start
/// without our mechanism ask for.
fn handshake_fails_only_as_documented(config: &Config) -> u64 {
    let strategy = (
        0..=3usize,
        vec(handshake_frame(), 0..6),
        vec(mutation(), 0..3),
        any::<bool>(),
        splits(),
    );
    run_round(
        config,
        strategy,
        |(valid, tail, mutations, external, splits)| {
            let params = if external {
                ConnectionParameters::default().credentials(ExternalCredentials)
            } else {
                ConnectionParameters::default()
            };
            // A valid start of a handshake, so the tail meets every stage.
            let method = |m| AMQPFrame::Method(0, AMQPClass::Connection(m));
            let mut frames = vec![
                method(connection::AMQPMethod::Start(connection::Start {
                    version_major: 0,
                    version_minor: 9,
                    server_properties: FieldTable::default(),
                    mechanisms: "EXTERNAL PLAIN".into(),
                    locales: "en_US".into(),
                })),
                method(connection::AMQPMethod::Tune(connection::Tune::default())),
                method(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
            ];
            frames.truncate(valid);
            frames.extend(tail);
            let (mut bytes, ends) = encode(&frames);
            let mut starts = vec![0];
            starts.extend_from_slice(&ends[..ends.len().saturating_sub(1)]);
            mutate(&mut bytes, &starts, &mutations, 131_072);
            let (end, _) = run_handshake(&params, &bytes, &splits)?;
            let HandshakeEnd::Failed(on, error) = end else {
                return Ok(());
            };
            let method = match &on {
                Some(Got::Frame(AMQPFrame::Method(0, AMQPClass::Connection(m)))) => Some(m),
                _ => None,
            };
            match (&error, method) {
                (Error::Protocol { reply_code, .. }, _) => {
                    prop_assert!(
                        [FRAME_ERROR, UNEXPECTED_FRAME].contains(reply_code),
                        "{:?}",
                        error
                    );
                    // A reader failure is always a frame error.
                    prop_assert!(on.is_some() || *reply_code == FRAME_ERROR, "{:?}", error);
                }
                (
                    Error::AuthenticationFailed { .. },
                    Some(
                        connection::AMQPMethod::Close(_)
                        | connection::AMQPMethod::Secure(_)
                        | connection::AMQPMethod::Start(_),
                    ),
                ) => {}
                (
                    Error::AccessRefused { .. } | Error::ConnectionClosed { .. },
                    Some(connection::AMQPMethod::Close(_)),
                ) => {}
                _ => return Err(TestCaseError::fail(format!("{error:?} on {on:?}"))),
            }
            Ok(())
        },
    )
}

// ---------------------------------------------------------------------------------------
// Running them.
// ---------------------------------------------------------------------------------------

/// One round of a property under a config, returning the number of cases it ran.
type Property = fn(&Config) -> u64;

/// Every property, by name.
const PROPERTIES: &[(&str, Property)] = &[
    ("valid_streams_round_trip", valid_streams_round_trip),
    ("mutated_streams_fail_cleanly", mutated_streams_fail_cleanly),
    (
        "nesting_check_never_refuses_what_parses",
        nesting_check_never_refuses_what_parses,
    ),
    ("valid_handshakes_finish", valid_handshakes_finish),
    (
        "handshake_fails_only_as_documented",
        handshake_fails_only_as_documented,
    ),
];

/// proptest's defaults (256 cases unless `PROPTEST_CASES` says otherwise, a fresh random
/// seed), failures saved next to this file's crate.
fn config() -> Config {
    Config {
        source_file: Some(file!()),
        ..Config::default()
    }
}

/// Runs `test` over `strategy` for one round of `config.cases` cases, panicking with the
/// shrunk failing input on failure; returns the number of cases run.
fn run_round<S: Strategy>(
    config: &Config,
    strategy: S,
    test: impl Fn(S::Value) -> TestCaseResult,
) -> u64 {
    let count = AtomicU64::new(0);
    let mut runner = TestRunner::new(config.clone());
    let result = runner.run(&strategy, |value| {
        count.fetch_add(1, Ordering::Relaxed);
        test(value)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    count.into_inner()
}

/// Runs `f` on a thread with the I/O thread's stack, passing on its panic.
fn on_io_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(IO_STACK)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

#[test]
fn valid_streams_round_trip_whatever_the_split() {
    on_io_stack(|| valid_streams_round_trip(&config()));
}

#[test]
fn mutated_streams_fail_with_frame_error_and_bounded_buffer() {
    on_io_stack(|| mutated_streams_fail_cleanly(&config()));
}

#[test]
fn nesting_check_never_refuses_a_frame_that_parses() {
    on_io_stack(|| nesting_check_never_refuses_what_parses(&config()));
}

#[test]
fn valid_handshakes_finish_whatever_the_split() {
    on_io_stack(|| valid_handshakes_finish(&config()));
}

#[test]
fn random_handshakes_fail_only_with_documented_errors() {
    on_io_stack(|| handshake_fails_only_as_documented(&config()));
}

/// The long run: with `COTTONTAIL_FUZZ_SECS` set, every property round after round until
/// that many seconds have passed; prints the case counts. Does nothing without it.
#[test]
fn fuzz() {
    let Some(secs) = std::env::var("COTTONTAIL_FUZZ_SECS").ok() else {
        return;
    };
    let secs: u64 = secs
        .parse()
        .expect("COTTONTAIL_FUZZ_SECS is a number of seconds");
    on_io_stack(move || {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(secs);
        let mut counts = BTreeMap::new();
        let mut rounds = 0u64;
        'run: loop {
            for (name, property) in PROPERTIES {
                if Instant::now() >= deadline {
                    break 'run;
                }
                *counts.entry(*name).or_insert(0u64) += property(&config());
            }
            rounds += 1;
        }
        for (name, count) in &counts {
            println!("{name}: {count} cases");
        }
        println!(
            "total: {} cases ({} full rounds) in {:.1} s",
            counts.values().sum::<u64>(),
            rounds,
            started.elapsed().as_secs_f64()
        );
    });
}
