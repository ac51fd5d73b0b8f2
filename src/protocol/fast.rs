//! Hand-written decoders for the two frames every delivery starts with, its `basic.deliver`
//! method and a content header without a `headers` table, and for the publisher confirm
//! (`basic.ack` from the broker); and the encoder of a content header without a `headers`
//! table, which a publish whose properties change (an RPC's correlation id) encodes anew.
//! Every other frame (and these whenever they hold anything else) goes through amq-protocol's
//! parser or encoder, which these must agree with: property tests (`proptests`) feed both the
//! same frames, and the same properties.
//!
//! Why: amq-protocol's parser costs about 2,500 instructions per delivery on the consume path
//! (combinator calls, then a conversion to cottontail's own types), about a quarter of the
//! client's whole cost per message (callgrind, BENCHMARKS.md). These read the bytes straight
//! into [`Deliver`] and [`BasicProperties`].
//!
//! Each returns `None` for anything it does not handle exactly (a `headers` table, a second
//! property-flags word, text that is not UTF-8, a size that does not add up): the caller then
//! parses the frame the slow way, which accepts it or reports the error. So these never decide
//! what is malformed.

use amq_protocol::protocol::basic;

use super::methods::Deliver;
use super::properties::BasicProperties;
use super::shared_str::SharedStr;

/// basic.deliver's class and method ids.
const DELIVER: [u8; 4] = [0, 60, 0, 60];
/// basic.ack's class and method ids.
const ACK: [u8; 4] = [0, 60, 0, 80];

/// A cursor over a frame's payload.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
    }

    fn short_string(&mut self) -> Option<String> {
        let len = self.u8()?;
        let bytes = self.take(usize::from(len))?;
        std::str::from_utf8(bytes).ok().map(str::to_owned)
    }

    /// A short string that is often the same as `last` (which it then becomes): a repeat
    /// shares `last`'s text, without an allocation or a second UTF-8 check.
    fn short_string_like(&mut self, last: &mut SharedStr) -> Option<SharedStr> {
        let len = self.u8()?;
        let bytes = self.take(usize::from(len))?;
        if bytes != last.as_bytes() {
            *last = std::str::from_utf8(bytes).ok()?.into();
        }
        Some(last.clone())
    }

    /// Nothing may be left over: a frame with trailing bytes goes the slow way.
    fn end(self) -> Option<()> {
        self.0.is_empty().then_some(())
    }
}

/// The strings of the last `basic.deliver` decoded: most deliveries repeat them (one consumer,
/// one exchange, one routing key), and [`deliver`] shares a repeat instead of allocating it.
#[derive(Debug, Default)]
pub(crate) struct LastDeliver {
    consumer_tag: SharedStr,
    exchange: SharedStr,
    routing_key: SharedStr,
}

/// The `basic.deliver` in a method frame's payload, if it is one this decodes exactly.
pub(crate) fn deliver(payload: &[u8], last: &mut LastDeliver) -> Option<Deliver> {
    let mut b = Bytes(payload);
    if b.take(4)? != DELIVER {
        return None;
    }
    let consumer_tag = b.short_string_like(&mut last.consumer_tag)?;
    let delivery_tag = b.u64()?;
    let bits = b.u8()?;
    if bits > 1 {
        return None;
    }
    let exchange = b.short_string_like(&mut last.exchange)?;
    let routing_key = b.short_string_like(&mut last.routing_key)?;
    b.end()?;
    Some(Deliver {
        consumer_tag,
        delivery_tag,
        redelivered: bits == 1,
        exchange,
        routing_key,
    })
}

/// Appends the content header frame of a basic-class message of `body_size` bytes with
/// `properties` on `channel`, if it is one this encodes exactly (no `headers` table, no text
/// over 255 bytes); returns `false`, with nothing appended, otherwise: the caller encodes it
/// with amq-protocol, which also reports what is wrong. Allocates nothing but `buf`'s growth
/// (amq-protocol's encoder takes an allocation per text property and ~2,000 instructions).
pub(crate) fn encode_header(
    buf: &mut Vec<u8>,
    channel: u16,
    body_size: u64,
    properties: &BasicProperties,
) -> bool {
    let p = properties.fields();
    // The text properties in wire order, with their flag bits.
    let texts = [
        (15, &p.content_type),
        (14, &p.content_encoding),
        (10, &p.correlation_id),
        (9, &p.reply_to),
        (8, &p.expiration),
        (7, &p.message_id),
        (5, &p.message_type),
        (4, &p.user_id),
        (3, &p.app_id),
        (2, &p.cluster_id),
    ];
    if p.headers.is_some()
        || texts
            .iter()
            .any(|(_, t)| t.as_ref().is_some_and(|t| t.len() > 255))
    {
        return false;
    }
    let mut flags = 0u16;
    for (bit, text) in &texts {
        if text.is_some() {
            flags |= 1 << bit;
        }
    }
    for (bit, set) in [
        (12, p.delivery_mode.is_some()),
        (11, p.priority.is_some()),
        (6, p.timestamp.is_some()),
    ] {
        if set {
            flags |= 1 << bit;
        }
    }
    let start = buf.len();
    buf.push(amq_protocol::protocol::constants::FRAME_HEADER);
    buf.extend_from_slice(&channel.to_be_bytes());
    buf.extend_from_slice(&[0; 4]); // the payload size, set below
    buf.extend_from_slice(&60u16.to_be_bytes()); // basic
    buf.extend_from_slice(&0u16.to_be_bytes()); // weight
    buf.extend_from_slice(&body_size.to_be_bytes());
    buf.extend_from_slice(&flags.to_be_bytes());
    let text = |buf: &mut Vec<u8>, t: &Option<String>| {
        if let Some(t) = t {
            buf.push(t.len() as u8); // at most 255, checked above
            buf.extend_from_slice(t.as_bytes());
        }
    };
    text(buf, &p.content_type);
    text(buf, &p.content_encoding);
    buf.extend(p.delivery_mode);
    buf.extend(p.priority);
    text(buf, &p.correlation_id);
    text(buf, &p.reply_to);
    text(buf, &p.expiration);
    text(buf, &p.message_id);
    if let Some(t) = p.timestamp {
        buf.extend_from_slice(&t.to_be_bytes());
    }
    text(buf, &p.message_type);
    text(buf, &p.user_id);
    text(buf, &p.app_id);
    text(buf, &p.cluster_id);
    // At most 14 fixed bytes, 10 of mode, priority and timestamp, and 10 texts of 256.
    let size = (buf.len() - start - 7) as u32;
    buf[start + 3..start + 7].copy_from_slice(&size.to_be_bytes());
    buf.push(amq_protocol::protocol::constants::FRAME_END);
    true
}

/// The `basic.ack` in a method frame's payload (a publisher confirm), if it is one.
pub(crate) fn ack(payload: &[u8]) -> Option<basic::Ack> {
    let mut b = Bytes(payload);
    if b.take(4)? != ACK {
        return None;
    }
    let delivery_tag = b.u64()?;
    let bits = b.u8()?;
    if bits > 1 {
        return None;
    }
    b.end()?;
    Some(basic::Ack {
        delivery_tag,
        multiple: bits == 1,
    })
}

/// A content header's class id, body size and properties, if it is one this decodes
/// exactly (no `headers` table, one flags word).
pub(crate) fn header(payload: &[u8]) -> Option<(u16, u64, BasicProperties)> {
    let mut b = Bytes(payload);
    let class_id = b.u16()?;
    let _weight = b.u16()?;
    let body_size = b.u64()?;
    let flags = b.u16()?;
    if flags == 0 {
        // No property at all: the most common header there is.
        b.end()?;
        return Some((class_id, body_size, BasicProperties::default()));
    }
    // Bit 13 is the headers table; bits 1 and 0 are unused and the continuation flag.
    if flags & (1 << 13 | 0b11) != 0 {
        return None;
    }
    let set = |bit: u16| flags & (1 << bit) != 0;
    let text = |bit: u16, b: &mut Bytes<'_>| -> Option<Option<String>> {
        match set(bit) {
            true => b.short_string().map(Some),
            false => Some(None),
        }
    };
    let content_type = text(15, &mut b)?;
    let content_encoding = text(14, &mut b)?;
    let delivery_mode = if set(12) { Some(b.u8()?) } else { None };
    let priority = if set(11) { Some(b.u8()?) } else { None };
    let correlation_id = text(10, &mut b)?;
    let reply_to = text(9, &mut b)?;
    let expiration = text(8, &mut b)?;
    let message_id = text(7, &mut b)?;
    let timestamp = if set(6) { Some(b.u64()?) } else { None };
    let message_type = text(5, &mut b)?;
    let user_id = text(4, &mut b)?;
    let app_id = text(3, &mut b)?;
    let cluster_id = text(2, &mut b)?;
    b.end()?;
    let properties = BasicProperties::from_fields(super::properties::Fields {
        content_type,
        content_encoding,
        headers: None,
        delivery_mode,
        priority,
        correlation_id,
        reply_to,
        expiration,
        message_id,
        timestamp,
        message_type,
        user_id,
        app_id,
        cluster_id,
    });
    Some((class_id, body_size, properties))
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::frame::{gen_frame, AMQPContentHeader, AMQPFrame, WriteContext};
    use amq_protocol::protocol::{basic, AMQPClass};

    fn payload(frame: &AMQPFrame) -> Vec<u8> {
        let bytes = gen_frame(frame)(WriteContext::from(Vec::new()))
            .unwrap()
            .into_inner()
            .0;
        bytes[7..bytes.len() - 1].to_vec()
    }

    #[test]
    fn delivers_decoded_one_after_another_keep_their_own_strings() {
        let frame = |tag: &str, exchange: &str, key: &str| {
            payload(&AMQPFrame::Method(
                1,
                AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                    consumer_tag: tag.into(),
                    delivery_tag: 7,
                    redelivered: false,
                    exchange: exchange.into(),
                    routing_key: key.into(),
                })),
            ))
        };
        let mut last = LastDeliver::default();
        for (tag, exchange, key) in [
            ("c1", "", "k"),
            ("c1", "", "k"),
            ("c2", "x", "k"),
            ("c1", "", "ké"),
            ("", "", ""),
            ("c1", "", "ké"),
        ] {
            let got = deliver(&frame(tag, exchange, key), &mut last).unwrap();
            assert_eq!(
                (
                    got.consumer_tag.as_str(),
                    got.exchange.as_str(),
                    got.routing_key.as_str()
                ),
                (tag, exchange, key)
            );
        }
        // A repeat shares the previous delivery's text; a change does not.
        let a = deliver(&frame("c1", "x", "k"), &mut last).unwrap();
        let b = deliver(&frame("c1", "x", "k"), &mut last).unwrap();
        let c = deliver(&frame("c1", "x", "j"), &mut last).unwrap();
        assert!(a.consumer_tag.shares(&b.consumer_tag) && a.routing_key.shares(&b.routing_key));
        assert!(a.consumer_tag.shares(&c.consumer_tag) && !a.routing_key.shares(&c.routing_key));
        // Bytes that are not UTF-8 are refused even right after a valid string of that length.
        let mut bad = frame("c1", "", "ab");
        let at = bad.len() - 1;
        bad[at] = 0xff;
        deliver(&frame("c1", "", "ab"), &mut last).unwrap();
        assert_eq!(deliver(&bad, &mut last), None);
        assert_eq!(
            deliver(&frame("c1", "", "ab"), &mut last)
                .unwrap()
                .routing_key,
            "ab"
        );
    }

    #[test]
    fn a_header_with_a_text_over_255_bytes_is_left_to_amq_protocol() {
        let mut buf = Vec::new();
        let long = BasicProperties::default().with_correlation_id("x".repeat(256));
        assert!(!encode_header(&mut buf, 1, 0, &long));
        assert!(buf.is_empty());
        // ...which refuses it, naming the property.
        let err = crate::protocol::codec::encode_content_header(&mut buf, 1, 0, &long);
        assert!(
            matches!(&err, Err(crate::Error::InvalidArgument(m)) if m.contains("correlation_id")),
            "{err:?}"
        );
        let longest = BasicProperties::default().with_correlation_id("x".repeat(255));
        assert!(encode_header(&mut buf, 1, 0, &longest));
        let mut expected = Vec::new();
        crate::protocol::codec::encode_frame(
            &mut expected,
            &AMQPFrame::Header(
                1,
                AMQPContentHeader {
                    class_id: 60,
                    body_size: 0,
                    properties: super::super::properties::to_wire(&longest).unwrap(),
                },
            ),
        )
        .unwrap();
        assert_eq!(buf, expected);
    }

    #[test]
    fn a_deliver_decodes_as_amq_protocol_encodes_it() {
        let frame = AMQPFrame::Method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                consumer_tag: "ctag1.ab".into(),
                delivery_tag: 1 << 40,
                redelivered: true,
                exchange: "".into(),
                routing_key: "héllo".into(),
            })),
        );
        let got = deliver(&payload(&frame), &mut LastDeliver::default()).unwrap();
        assert_eq!(got.consumer_tag, "ctag1.ab");
        assert_eq!(got.delivery_tag, 1 << 40);
        assert!(got.redelivered);
        assert_eq!(
            (got.exchange.as_str(), got.routing_key.as_str()),
            ("", "héllo")
        );
    }

    #[test]
    fn a_header_without_headers_decodes_and_one_with_headers_is_left_to_the_parser() {
        let full = BasicProperties::default()
            .with_content_type("text/plain")
            .with_delivery_mode(2)
            .with_priority(3)
            .with_correlation_id("c")
            .with_reply_to("r")
            .with_expiration("60000")
            .with_message_id("m")
            .with_timestamp(7)
            .with_message_type("t")
            .with_user_id("guest")
            .with_app_id("a")
            .with_cluster_id("x")
            .with_content_encoding("gzip");
        let frame = |props: &BasicProperties| {
            AMQPFrame::Header(
                1,
                AMQPContentHeader {
                    class_id: 60,
                    body_size: 12,
                    properties: super::super::properties::to_wire(props).unwrap(),
                },
            )
        };
        assert_eq!(
            header(&payload(&frame(&full))),
            Some((60, 12, full.clone()))
        );
        let empty = BasicProperties::default();
        assert_eq!(header(&payload(&frame(&empty))), Some((60, 12, empty)));
        let with_headers = full.with_header("k", 1);
        assert_eq!(header(&payload(&frame(&with_headers))), None);
    }

    #[test]
    fn an_ack_decodes_as_amq_protocol_encodes_it() {
        for multiple in [false, true] {
            let sent = basic::Ack {
                delivery_tag: 1 << 33,
                multiple,
            };
            let frame =
                AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Ack(sent.clone())));
            let bytes = payload(&frame);
            assert_eq!(ack(&bytes), Some(sent));
            assert_eq!(ack(&bytes[..bytes.len() - 1]), None);
            assert_eq!(deliver(&bytes, &mut LastDeliver::default()), None);
        }
    }

    #[test]
    fn anything_it_does_not_decode_exactly_goes_the_slow_way() {
        let deliver_payload = payload(&AMQPFrame::Method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                consumer_tag: "t".into(),
                delivery_tag: 1,
                redelivered: false,
                exchange: "x".into(),
                routing_key: "k".into(),
            })),
        ));
        // Cut short anywhere, or with a byte too many.
        for len in 0..deliver_payload.len() {
            assert_eq!(
                deliver(&deliver_payload[..len], &mut LastDeliver::default()),
                None,
                "{len}"
            );
        }
        let mut longer = deliver_payload.clone();
        longer.push(0);
        assert_eq!(deliver(&longer, &mut LastDeliver::default()), None);
        // Not UTF-8.
        let mut bad = deliver_payload.clone();
        bad[5] = 0xff;
        assert_eq!(deliver(&bad, &mut LastDeliver::default()), None);
        // Another method.
        let mut other = deliver_payload;
        other[3] = 61;
        assert_eq!(deliver(&other, &mut LastDeliver::default()), None);
        // A second flags word.
        let mut continued = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 1];
        assert_eq!(header(&continued), None);
        continued[13] = 0;
        assert_eq!(header(&continued).map(|(_, size, _)| size), Some(5));
    }
}
