//! Unit tests of the frame codec (`codec.rs`).

use super::*;

/// Body frames written the plain way: the reference `encode_tail` and `write_direct` are
/// checked against.
fn encode_body(buf: &mut Vec<u8>, channel: u16, body: &[u8], frame_max: u32) {
    let chunk = (frame_max as usize) - FRAME_OVERHEAD;
    for piece in body.chunks(chunk) {
        buf.extend_from_slice(&body_frame_header(channel, piece.len()));
        buf.extend_from_slice(piece);
        buf.push(constants::FRAME_END);
    }
}

#[test]
fn frames_over_frame_max_are_refused_by_size() {
    let mut frames = Vec::new();
    encode_method(
        &mut frames,
        1,
        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 1,
            global: false,
        })),
    )
    .unwrap();
    let small = frames.len();
    let mut big = frames.clone();
    encode_content_header(
        &mut big,
        1,
        0,
        &BasicProperties::default().with_message_id("m"),
    )
    .unwrap();
    let header = big.len() - small;
    // Together over the limit, each within it: fine.
    assert!(check_frames_fit(&big, header.max(small) as u32).is_ok());
    assert!(check_frames_fit(&big, 0).is_ok());
    let err = check_frames_fit(&big, header as u32 - 1).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
}

#[test]
fn encode_tail_leaves_out_exactly_what_was_written() {
    let prefix = b"held acks";
    let frames = b"method and header frames";
    let body: Vec<u8> = (0..20_000u32).map(|i| (i * 7) as u8).collect();
    let mut full = prefix.to_vec();
    full.extend_from_slice(frames);
    encode_body(&mut full, 9, &body, 8192);
    for skip in 0..=full.len() {
        let mut tail = Vec::new();
        encode_tail(&mut tail, skip, prefix, frames, Some((9, &body)), 8192);
        assert!(tail == full[skip..], "skip {skip}");
    }
    let mut no_body = Vec::new();
    encode_tail(&mut no_body, 3, prefix, frames, None, 8192);
    assert_eq!(no_body, [&prefix[3..], &frames[..]].concat());
}
use amq_protocol::protocol::basic;

fn read_all(reader: &mut FrameReader, mut bytes: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    reader.read_from(&mut bytes).unwrap();
    while let Some(f) = reader.next_frame().unwrap() {
        match f {
            Inbound::Body(ch, r, _) => out.push((ch, reader.bytes(r).to_vec())),
            other => panic!("unexpected {other:?}"),
        }
    }
    out
}

/// A message of two body frames fed to a reader one byte at a time, its pieces into a
/// content assembly: it completes at the last frame-end octet and not before, its body
/// whole; with that octet wrong it never completes, and the reader fails with FRAME_ERROR.
#[test]
fn a_body_fed_byte_by_byte_completes_only_at_its_last_valid_frame_end() {
    use crate::protocol::content::{Assembly, ContentMethod, SpareBody};
    let body: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
    // Two body frames of 200 and 100 bytes (frame_max 208).
    let mut two = Vec::new();
    encode_content_header(&mut two, 3, body.len() as u64, &BasicProperties::default()).unwrap();
    encode_body(&mut two, 3, &body[..200], 208);
    encode_body(&mut two, 3, &body[200..], 208);
    for bad_end in [false, true] {
        let mut bytes = two.clone();
        if bad_end {
            *bytes.last_mut().unwrap() = 0xAB;
        }
        let mut reader = FrameReader::new(4096);
        let mut assembly = Assembly::default();
        assembly
            .start(3, ContentMethod::Deliver(Deliver::default()))
            .unwrap();
        let mut completed = None;
        let mut failed = None;
        for (at, byte) in bytes.iter().enumerate() {
            reader.read_from(&mut &[*byte][..]).unwrap();
            loop {
                match reader.next_frame() {
                    Ok(Some(Inbound::Header(ch, header))) => {
                        assert!(assembly
                            .header(ch, header, 0, &SpareBody::default())
                            .unwrap()
                            .is_none());
                    }
                    Ok(Some(Inbound::Body(ch, range, rest))) => {
                        if let Some(content) = assembly.body(ch, reader.bytes(range), rest).unwrap()
                        {
                            completed = Some((at, content.body));
                        }
                    }
                    Ok(Some(other)) => panic!("unexpected {other:?}"),
                    Ok(None) => break,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
        }
        if bad_end {
            assert!(
                completed.is_none(),
                "completed despite a bad frame-end octet"
            );
            assert!(
                matches!(
                    failed,
                    Some(Error::Protocol {
                        reply_code: FRAME_ERROR,
                        ..
                    })
                ),
                "{failed:?}"
            );
        } else {
            assert!(failed.is_none(), "{failed:?}");
            assert_eq!(completed, Some((bytes.len() - 1, body.clone())));
            assert!(!reader.has_partial());
        }
    }
    // A zero-size body frame split before its octet comes out once, whole, and empty.
    let mut reader = FrameReader::new(4096);
    let mut empty = body_frame_header(3, 0).to_vec();
    empty.push(constants::FRAME_END);
    reader.read_from(&mut &empty[..7]).unwrap();
    assert!(reader.next_frame().unwrap().is_none());
    assert!(reader.has_partial());
    reader.read_from(&mut &empty[7..]).unwrap();
    match reader.next_frame().unwrap() {
        Some(Inbound::Body(3, range, 0)) => assert!(range.is_empty()),
        other => panic!("{other:?}"),
    }
    assert!(reader.next_frame().unwrap().is_none());
    assert!(!reader.has_partial());
}

#[test]
fn body_frames_round_trip_through_parse_frame() {
    let body: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
    let mut buf = Vec::new();
    encode_body(&mut buf, 7, &body, 8192);
    // 20000 bytes at 8184 per frame: 3 frames.
    assert_eq!(buf.len(), body.len() + 3 * FRAME_OVERHEAD);
    let mut rest = &buf[..];
    let mut joined = Vec::new();
    while !rest.is_empty() {
        let (r, frame) = parse_frame(rest).unwrap();
        match frame {
            AMQPFrame::Body(7, data) => joined.extend(data),
            other => panic!("unexpected {other:?}"),
        }
        rest = r;
    }
    assert_eq!(joined, body);
    let mut reader = FrameReader::new(8192);
    let frames = read_all(&mut reader, &buf);
    assert_eq!(frames.len(), 3);
    assert_eq!(frames.concat_bodies(), body);
}

trait Concat {
    fn concat_bodies(&self) -> Vec<u8>;
}
impl Concat for Vec<(u16, Vec<u8>)> {
    fn concat_bodies(&self) -> Vec<u8> {
        self.iter().flat_map(|(_, b)| b.clone()).collect()
    }
}
#[test]
fn empty_body_writes_no_frame() {
    let mut buf = Vec::new();
    encode_tail(&mut buf, 0, &[], &[], Some((1, b"")), 131_072);
    assert!(buf.is_empty());
    assert_eq!(body_frames_len(0, 131_072), 0);
}

#[test]
fn method_and_header_frames_parse_back() {
    let mut buf = Vec::new();
    let publish = AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
        exchange: "ex".into(),
        routing_key: "rk".into(),
        mandatory: true,
        immediate: false,
    }));
    encode_method(&mut buf, 3, publish.clone()).unwrap();
    let props = BasicProperties::default().with_content_type("text/plain");
    encode_content_header(&mut buf, 3, 5, &props).unwrap();
    let mut reader = FrameReader::new(131_072);
    reader.read_from(&mut &buf[..]).unwrap();
    match reader.next_frame().unwrap() {
        Some(Inbound::Frame(frame)) => match *frame {
            AMQPFrame::Method(3, m) => assert_eq!(m, publish),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    // A header without a headers table takes the fast decoder (`fast`).
    match reader.next_frame().unwrap() {
        Some(Inbound::Header(3, h)) => {
            assert_eq!((h.class_id, h.body_size), (60, 5));
            assert_eq!(h.properties, props);
        }
        other => panic!("{other:?}"),
    }
    assert!(reader.next_frame().unwrap().is_none());
    assert!(!reader.has_partial());
}

#[test]
fn oversized_frame_is_rejected_before_buffering() {
    // A body frame header announcing 2 GiB.
    let bytes = [3u8, 0, 1, 0x80, 0, 0, 0];
    let mut reader = FrameReader::new(131_072);
    reader.read_from(&mut &bytes[..]).unwrap();
    let err = reader.next_frame().unwrap_err();
    assert_eq!(err.reply_code(), Some(FRAME_ERROR));
    assert!(
        reader.buf.len() <= READ_CHUNK,
        "buffer grew to {}",
        reader.buf.len()
    );
}

#[test]
fn size_of_u32_max_is_rejected_without_overflow() {
    // u32::MAX + 8 wraps a 32-bit usize to 7; the size must be refused all the same, even
    // by a reader whose frame_max is u32::MAX.
    for frame_max in [131_072, u32::MAX] {
        for frame_type in [constants::FRAME_METHOD, constants::FRAME_BODY] {
            let mut bytes = [frame_type, 0, 1, 0, 0, 0, 0, constants::FRAME_END];
            bytes[3..7].copy_from_slice(&u32::MAX.to_be_bytes());
            let mut reader = FrameReader::new(frame_max);
            reader.read_from(&mut &bytes[..]).unwrap();
            let err = reader.next_frame().unwrap_err();
            assert_eq!(err.reply_code(), Some(FRAME_ERROR), "{err}");
            assert!(err.to_string().contains("4294967303 bytes"), "{err}");
            assert!(
                reader.buf.len() <= READ_CHUNK,
                "buffer grew to {}",
                reader.buf.len()
            );
        }
    }
}

#[test]
fn bad_frame_end_is_rejected() {
    let mut buf = Vec::new();
    encode_heartbeat(&mut buf);
    *buf.last_mut().unwrap() = 0;
    let mut reader = FrameReader::new(131_072);
    reader.read_from(&mut &buf[..]).unwrap();
    assert_eq!(
        reader.next_frame().unwrap_err().reply_code(),
        Some(FRAME_ERROR)
    );
}

#[test]
fn unknown_frame_type_is_rejected() {
    let bytes = [9u8, 0, 0, 0, 0, 0, 0, 0xCE];
    let mut reader = FrameReader::new(131_072);
    reader.read_from(&mut &bytes[..]).unwrap();
    assert!(reader.next_frame().is_err());
}

#[test]
fn frames_split_across_reads_are_reassembled() {
    let body = vec![0xAB; 100_000];
    let mut buf = Vec::new();
    encode_body(&mut buf, 2, &body, 131_072);
    let mut reader = FrameReader::new(131_072);
    let mut got = Vec::new();
    for piece in buf.chunks(1000) {
        reader.read_from(&mut &piece[..]).unwrap();
        while let Some(Inbound::Body(_, r, _)) = reader.next_frame().unwrap() {
            got.extend_from_slice(reader.bytes(r));
        }
    }
    assert_eq!(got, body);
}

/// A reader that hands out as much as it is asked for, and counts the reads.
struct Counting<'a>(&'a [u8], usize);

impl Read for Counting<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.1 += 1;
        self.0.read(out)
    }
}

#[test]
fn each_read_inside_a_large_body_frame_takes_the_rest_of_it() {
    // A 1 MiB body in nine frames (eight of 128 KiB, one of 64 bytes), then a heartbeat,
    // from a source that gives all it is asked for: every read after the first ends the
    // frame it started in, so ten reads (a 64 KiB buffer took seventeen).
    let body: Vec<u8> = (0..1 << 20).map(|i| i as u8).collect();
    let mut buf = Vec::new();
    encode_body(&mut buf, 2, &body, 131_072);
    encode_heartbeat(&mut buf);
    let mut reader = FrameReader::new(131_072);
    let mut source = Counting(&buf, 0);
    let (mut got, mut heartbeat) = (Vec::new(), false);
    while !heartbeat {
        assert!(reader.read_from(&mut source).unwrap() > 0);
        while let Some(inbound) = reader.next_frame().unwrap() {
            match inbound {
                Inbound::Body(2, r, _) => got.extend_from_slice(reader.bytes(r)),
                Inbound::Frame(f) if matches!(*f, AMQPFrame::Heartbeat) => heartbeat = true,
                other => panic!("{other:?}"),
            }
        }
    }
    assert!(got == body);
    assert_eq!(source.1, 10);
    assert!(reader.buf.len() <= reader.capacity_bound());

    // Small body frames cut by the end of the buffer do not grow it.
    let mut buf = Vec::new();
    for _ in 0..2_000 {
        encode_body(&mut buf, 1, &[7; 100], 131_072);
    }
    let mut reader = FrameReader::new(131_072);
    let mut source = Counting(&buf, 0);
    let mut total = 0;
    while reader.read_from(&mut source).unwrap() > 0 {
        while let Some(inbound) = reader.next_frame().unwrap() {
            if let Inbound::Body(1, r, _) = inbound {
                total += r.len();
            }
        }
    }
    assert_eq!((total, reader.buf.len()), (200_000, READ_CHUNK));
}

#[test]
fn every_synchronous_request_is_answered_by_its_own_ok_only() {
    use amq_protocol::protocol::{channel, confirm, exchange, queue, tx};
    let id = |m: AMQPClass| {
        let mut frame = Vec::new();
        encode_method(&mut frame, 1, m.clone()).unwrap();
        let from_frame = method_id(&frame).unwrap();
        assert_eq!(from_frame, (m.get_amqp_class_id(), m.get_amqp_method_id()));
        from_frame
    };
    let pairs = [
        (
            id(AMQPClass::Channel(channel::AMQPMethod::Open(
                channel::Open {},
            ))),
            id(AMQPClass::Channel(channel::AMQPMethod::OpenOk(
                channel::OpenOk {},
            ))),
        ),
        (
            id(AMQPClass::Exchange(exchange::AMQPMethod::Unbind(
                exchange::Unbind::default(),
            ))),
            id(AMQPClass::Exchange(exchange::AMQPMethod::UnbindOk(
                exchange::UnbindOk {},
            ))),
        ),
        (
            id(AMQPClass::Queue(queue::AMQPMethod::Unbind(
                queue::Unbind::default(),
            ))),
            id(AMQPClass::Queue(queue::AMQPMethod::UnbindOk(
                queue::UnbindOk {},
            ))),
        ),
        (
            id(AMQPClass::Basic(basic::AMQPMethod::Get(
                basic::Get::default(),
            ))),
            id(AMQPClass::Basic(basic::AMQPMethod::GetEmpty(
                basic::GetEmpty {},
            ))),
        ),
        (
            id(AMQPClass::Basic(basic::AMQPMethod::Qos(
                basic::Qos::default(),
            ))),
            id(AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {}))),
        ),
        (
            id(AMQPClass::Tx(tx::AMQPMethod::Commit(tx::Commit {}))),
            id(AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {}))),
        ),
        (
            id(AMQPClass::Confirm(confirm::AMQPMethod::Select(
                confirm::Select::default(),
            ))),
            id(AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(
                confirm::SelectOk {},
            ))),
        ),
    ];
    for (request, reply) in pairs {
        assert!(answers(request, reply), "{request:?} -> {reply:?}");
    }
    // basic.get-ok (60.71) answers basic.get; nothing answers across classes or with
    // another method's ok.
    assert!(answers((60, 70), (60, 71)));
    assert!(!answers((50, 10), (60, 71)), "get-ok for queue.declare");
    assert!(!answers((60, 10), (60, 21)), "consume-ok for basic.qos");
    assert!(!answers((40, 40), (40, 31)), "bind-ok for exchange.unbind");
    assert!(!answers((60, 20), (60, 20)));
    assert_eq!(method_id(&[1, 0, 1, 0, 0, 0, 4, 0]), None);
}

#[test]
fn a_consume_or_cancel_awaits_an_ok_that_echoes_its_consumer_tag() {
    let awaited = |m: AMQPClass| {
        let mut frame = Vec::new();
        encode_method(&mut frame, 1, m).unwrap();
        Awaited::of(&frame).unwrap()
    };
    let consume = awaited(AMQPClass::Basic(basic::AMQPMethod::Consume(
        basic::Consume {
            queue: "a-queue-name".into(),
            consumer_tag: "ctag1.abc".into(),
            ..Default::default()
        },
    )));
    assert_eq!(consume.id, (60, 20));
    assert_eq!(consume.consumer_tag.as_deref(), Some("ctag1.abc"));
    assert!(consume.answered_by((60, 21), Some("ctag1.abc")));
    assert!(!consume.answered_by((60, 21), Some("ctag1.abd")));
    assert!(
        !consume.answered_by((60, 31), Some("ctag1.abc")),
        "cancel-ok"
    );
    let cancel = awaited(AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
        consumer_tag: "t".into(),
        nowait: false,
    })));
    assert_eq!(cancel.consumer_tag.as_deref(), Some("t"));
    assert!(cancel.answered_by((60, 31), Some("t")));
    assert!(!cancel.answered_by((60, 31), Some("")));
    // An empty queue name, and requests without a tag.
    let empty = awaited(AMQPClass::Basic(basic::AMQPMethod::Consume(
        basic::Consume {
            consumer_tag: "x".into(),
            ..Default::default()
        },
    )));
    assert_eq!(empty.consumer_tag.as_deref(), Some("x"));
    let qos = awaited(AMQPClass::Basic(basic::AMQPMethod::Qos(
        basic::Qos::default(),
    )));
    assert_eq!((qos.id, qos.consumer_tag), ((60, 10), None));
    // A truncated frame has no tag to compare, never a panic.
    let mut frame = Vec::new();
    encode_method(
        &mut frame,
        1,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: "q".into(),
            consumer_tag: "long-tag".into(),
            ..Default::default()
        })),
    )
    .unwrap();
    for cut in 11..frame.len() {
        let _ = Awaited::of(&frame[..cut]);
    }
    assert_eq!(Awaited::of(&frame[..16]).unwrap().consumer_tag, None);
}

#[test]
fn a_heartbeat_with_a_payload_is_a_frame_error() {
    let mut reader = FrameReader::new(4096);
    let mut bytes = Vec::new();
    encode_heartbeat(&mut bytes);
    bytes.extend_from_slice(&[constants::FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 2, b'h', b'i']);
    bytes.push(constants::FRAME_END);
    reader.read_from(&mut &bytes[..]).unwrap();
    assert!(matches!(
        reader.next_frame(),
        Ok(Some(Inbound::Frame(frame))) if matches!(*frame, AMQPFrame::Heartbeat)
    ));
    match reader.next_frame() {
        Err(Error::Protocol { reply_code, reason }) => {
            assert_eq!(reply_code, FRAME_ERROR);
            assert!(reason.contains("2-byte payload"), "{reason}");
        }
        other => panic!("expected a frame error, got {other:?}"),
    }
}
