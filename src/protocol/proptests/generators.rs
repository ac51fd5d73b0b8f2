//! Generators of what a broker sends: field values and tables, basic properties, methods,
//! whole messages (method, content header, body frames), per-channel and interleaved frame
//! streams, `frame_max` values and read splits.

use std::collections::VecDeque;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{
    basic, channel, confirm, connection, queue, AMQPClass, BasicProperties,
};
use amq_protocol::types::{AMQPValue, DecimalValue, FieldTable, LongString, ShortString};
use proptest::collection::{btree_map, btree_set, vec};
use proptest::prelude::*;
use proptest::sample::Index;

/// Text for short strings: plain, uppercase hex (`A`-`F` bytes that are not type tags), any
/// printable Unicode, and now and then up to the 255 bytes a short string holds (lengths
/// past 127, where a length octet read as signed would go wrong).
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[ -~]{0,24}",
        3 => "[0-9A-F]{0,60}",
        3 => "\\PC{0,12}",
        1 => "[a-z]{120,255}",
    ]
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
pub(super) fn field_table() -> impl Strategy<Value = FieldTable> {
    btree_map(short_string(), field_value(), 0..5).prop_map(FieldTable::from)
}

/// Basic properties with each property present or not.
pub(super) fn properties() -> impl Strategy<Value = BasicProperties> {
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
pub(super) fn content_method() -> impl Strategy<Value = AMQPClass> {
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
pub(super) fn channel_method() -> impl Strategy<Value = AMQPClass> {
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
pub(super) fn frame_max() -> impl Strategy<Value = u32> {
    prop_oneof![Just(4096u32), Just(8192), Just(131_072)]
}

/// Sizes of successive reads: byte by byte, small, or large (cycled).
pub(super) fn splits() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        vec(1usize..4, 1..4),
        vec(1usize..300, 1..8),
        vec(1usize..200_000, 1..4),
    ]
}

/// A connection.start on channel 0 with random server properties, version and mechanisms.
pub(super) fn start_frame() -> impl Strategy<Value = AMQPFrame> {
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
