//! Frame reading (with the size and nesting checks amq-protocol leaves to us) and frame
//! encoding. The nesting check itself is in [`nesting`](super::nesting).
//!
//! Methods and content headers are encoded by `amq_protocol::frame::gen_frame`. Body frames are
//! written here around the caller's slice (7-byte header, payload, frame-end octet) so a body is
//! copied once, straight into the outbound buffer; a unit test checks them against `parse_frame`.

use std::io::{self, Read};
use std::ops::Range;

use amq_protocol::frame::{gen_frame, parse_frame, AMQPContentHeader, AMQPFrame, WriteContext};
use amq_protocol::protocol::{basic, constants, AMQPClass};

use super::fast;
use super::methods::Deliver;
use super::properties::{self, BasicProperties};

use super::nesting::check_nesting;
use crate::error::{Error, Result, FRAME_ERROR};

/// Bytes of a frame that are not payload: type (1), channel (2), size (4), frame-end (1).
pub(crate) const FRAME_OVERHEAD: usize = 8;
/// Bytes of a frame header: type (1), channel (2), size (4).
pub(crate) const HEADER_LEN: usize = 7;
const READ_CHUNK: usize = 64 * 1024;

/// One frame taken out of the [`FrameReader`]; consumed at once, so its size does not matter.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// A method, content header or heartbeat frame, parsed by amq-protocol (boxed: an
    /// `AMQPFrame` is 320 bytes, and every frame of every delivery moves an `Inbound`).
    Frame(Box<AMQPFrame>),
    /// A basic.ack from the broker (a publisher confirm), decoded by `fast`.
    Ack(u16, basic::Ack),
    /// A basic.deliver, decoded by `fast` (the usual first frame of a delivery).
    Deliver(u16, Deliver),
    /// A content header without a headers table, decoded by `fast`.
    Header(u16, Header),
    /// A body frame's payload, or a piece of it: `reader.bytes(range)` until the reader's next
    /// `next_frame` or `read_from`. A body frame that has not all arrived is handed out in
    /// pieces as its bytes come, so no body frame is ever buffered whole or moved; its last
    /// piece comes only with its frame-end octet, checked. The `usize` is how many of the
    /// frame's payload bytes are still to come after this piece (0 for a whole frame or its
    /// last piece), so the content assembly counts a frame's whole size from its first piece
    /// and a message completes only from whole, valid frames. No piece is empty but the one
    /// of an empty frame.
    Body(u16, Range<usize>, usize),
}

/// A content header as cottontail reads it.
#[derive(Debug)]
pub(crate) struct Header {
    pub(crate) class_id: u16,
    pub(crate) body_size: u64,
    pub(crate) properties: BasicProperties,
}

impl Header {
    /// amq-protocol's content header as ours.
    pub(crate) fn from_wire(header: &AMQPContentHeader) -> Header {
        Header {
            class_id: header.class_id,
            body_size: header.body_size,
            properties: properties::from_wire(&header.properties),
        }
    }
}

/// Buffers bytes from the socket and cuts them into frames.
///
/// The size in each frame header is checked against the negotiated `frame_max` before anything
/// more is buffered, so a forged size can neither make us allocate nor make us wait for bytes
/// that will never come. Body frames are handed out in pieces as their bytes arrive (see
/// [`Inbound::Body`]): only method, header and heartbeat frames are ever moved to the buffer's
/// front, so a large message's body is copied once, from this buffer into the message.
///
/// The buffer starts at 64 KiB and grows, never past `frame_max` plus 64 KiB, for two
/// reasons: a method or header frame larger than it, and a body frame whose rest is larger
/// than its room (it grows to take that rest, the frame-end octet and the next frame header in
/// one read: with RabbitMQ's 128 KiB frames, one read per body frame instead of two or three,
/// which halved the `recvfrom` calls of a 1 MiB consume; BENCHMARKS.md).
#[derive(Debug)]
pub(crate) struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    frame_max: usize,
    last_deliver: fast::LastDeliver,
    /// Inside a body frame handed out in pieces: its channel, and its payload bytes still to
    /// come (then its frame-end octet).
    body_left: Option<(u16, usize)>,
}

impl FrameReader {
    pub(crate) fn new(frame_max: u32) -> Self {
        FrameReader {
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
            frame_max: frame_max as usize,
            last_deliver: fast::LastDeliver::default(),
            body_left: None,
        }
    }

    /// Sets the largest frame accepted (after tune).
    pub(crate) fn set_frame_max(&mut self, frame_max: u32) {
        self.frame_max = frame_max as usize;
    }

    /// True while a body frame is being handed out in pieces (its last piece not yet out).
    #[cfg(test)]
    pub(crate) fn in_body_frame(&self) -> bool {
        self.body_left.is_some()
    }

    /// True when part of a frame is buffered or handed out (EOF now would cut a frame).
    pub(crate) fn has_partial(&self) -> bool {
        self.end > self.start || self.body_left.is_some()
    }

    /// Whether the last [`read_from`](Self::read_from) took less than the room it offered
    /// (on a socket: it took everything there was).
    pub(crate) fn last_read_short(&self) -> bool {
        self.end < self.buf.len()
    }

    /// Reads once from `r` into the buffer. Returns the byte count (0 at EOF).
    pub(crate) fn read_from(&mut self, r: &mut impl Read) -> io::Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.buf.len() - self.end < READ_CHUNK / 4 && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if let Some((_, left)) = self.body_left {
            // Inside a body frame: room for the rest of it, its frame-end octet and the next
            // frame's header, so a large body frame comes in one read (within frame_max).
            let want = self.end + left + 1 + HEADER_LEN;
            if want > self.buf.len() {
                self.buf.resize(want.min(self.capacity_bound()), 0);
            }
        }
        if self.buf.len() - self.end < READ_CHUNK / 4 {
            // Only reached when one frame is larger than the buffer; bounded by frame_max.
            let want = (self.end + READ_CHUNK).min(self.capacity_bound());
            self.buf.resize(want.max(self.buf.len()), 0);
        }
        let n = r.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }

    /// The size of the buffer (what it holds and its free room), for tests of its bound.
    #[cfg(test)]
    pub(crate) fn buffered_capacity(&self) -> usize {
        self.buf.len()
    }

    /// The most the buffer grows to: the largest frame accepted, plus one read's room.
    pub(crate) fn capacity_bound(&self) -> usize {
        self.frame_max.saturating_add(FRAME_OVERHEAD + READ_CHUNK)
    }

    /// The payload bytes of a body frame (or piece) returned by [`next_frame`](Self::next_frame).
    pub(crate) fn bytes(&self, range: Range<usize>) -> &[u8] {
        &self.buf[range]
    }

    /// The next piece of a body frame being handed out in pieces (`left` payload bytes to
    /// come), if there is one. The last piece goes out only once the frame-end octet behind it
    /// has come and is right, so a message completes only from whole, valid frames; the
    /// others are never empty.
    fn next_body_piece(&mut self, channel: u16, left: usize) -> Result<Option<Inbound>> {
        let avail = self.end - self.start;
        let last = avail > left;
        let n = if last {
            left
        } else {
            avail.min(left.saturating_sub(1))
        };
        if n == 0 && !last {
            self.body_left = Some((channel, left));
            return Ok(None);
        }
        let piece = self.start..self.start + n;
        self.start += n;
        if last {
            let octet = self.buf[self.start];
            if octet != constants::FRAME_END {
                return Err(Error::protocol(
                    FRAME_ERROR,
                    format!("bad frame-end octet {octet:#04x}"),
                ));
            }
            self.start += 1;
            self.body_left = None;
        } else {
            self.body_left = Some((channel, left - n));
        }
        Ok(Some(Inbound::Body(channel, piece, left - n)))
    }

    /// Cuts the next complete frame (or the next piece of a body frame) out of the buffer,
    /// `None` if more bytes are needed.
    pub(crate) fn next_frame(&mut self) -> Result<Option<Inbound>> {
        if let Some((channel, left)) = self.body_left {
            return self.next_body_piece(channel, left);
        }
        let avail = &self.buf[self.start..self.end];
        if avail.len() < HEADER_LEN {
            if avail.first() == Some(&b'A') {
                // "AMQP" + version: the broker refuses our protocol version.
                return Err(Error::protocol(
                    FRAME_ERROR,
                    "the peer answered with a protocol header: it does not speak AMQP 0-9-1",
                ));
            }
            return Ok(None);
        }
        let frame_type = avail[0];
        if !matches!(
            frame_type,
            constants::FRAME_METHOD
                | constants::FRAME_HEADER
                | constants::FRAME_BODY
                | constants::FRAME_HEARTBEAT
        ) {
            let reason = if frame_type == b'A' {
                "the peer answered with a protocol header: it does not speak AMQP 0-9-1".to_string()
            } else {
                format!("unknown frame type {frame_type}")
            };
            return Err(Error::protocol(FRAME_ERROR, reason));
        }
        let channel = u16::from_be_bytes([avail[1], avail[2]]);
        let size = u32::from_be_bytes([avail[3], avail[4], avail[5], avail[6]]);
        // In u64: a forged size near u32::MAX plus the overhead would wrap a 32-bit usize.
        let total = u64::from(size) + FRAME_OVERHEAD as u64;
        if total > self.frame_max as u64 {
            return Err(Error::protocol(
                FRAME_ERROR,
                format!(
                    "frame of {total} bytes exceeds frame_max {}",
                    self.frame_max
                ),
            ));
        }
        // Both fit in usize now: no more than frame_max.
        let (size, total) = (size as usize, total as usize);
        if avail.len() < total && frame_type == constants::FRAME_BODY {
            // Handed out piece by piece from here on.
            self.start += HEADER_LEN;
            return self.next_body_piece(channel, size);
        }
        if avail.len() < total {
            if self.buf.len() - self.start < total {
                // Make room for this one frame (bounded by frame_max, checked above).
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
                if self.buf.len() < total {
                    self.buf.resize(total, 0);
                }
            }
            return Ok(None);
        }
        if avail[total - 1] != constants::FRAME_END {
            return Err(Error::protocol(
                FRAME_ERROR,
                format!("bad frame-end octet {:#04x}", avail[total - 1]),
            ));
        }
        let frame_start = self.start;
        self.start += total;
        let payload = frame_start + HEADER_LEN..frame_start + HEADER_LEN + size;
        match frame_type {
            constants::FRAME_BODY => return Ok(Some(Inbound::Body(channel, payload, 0))),
            // AMQP's grammar gives a heartbeat no payload; RabbitMQ refuses one with a payload.
            constants::FRAME_HEARTBEAT if size != 0 => {
                return Err(Error::protocol(
                    FRAME_ERROR,
                    format!("heartbeat frame with a {size}-byte payload"),
                ))
            }
            constants::FRAME_METHOD => {
                let bytes = &self.buf[payload];
                if let Some(deliver) = fast::deliver(bytes, &mut self.last_deliver) {
                    return Ok(Some(Inbound::Deliver(channel, deliver)));
                }
                if let Some(ack) = fast::ack(bytes) {
                    return Ok(Some(Inbound::Ack(channel, ack)));
                }
            }
            constants::FRAME_HEADER => {
                if let Some((class_id, body_size, properties)) = fast::header(&self.buf[payload]) {
                    return Ok(Some(Inbound::Header(
                        channel,
                        Header {
                            class_id,
                            body_size,
                            properties,
                        },
                    )));
                }
            }
            _ => {}
        }
        match parse_checked(&self.buf[frame_start..frame_start + total]) {
            Ok(frame) => Ok(Some(Inbound::Frame(Box::new(frame)))),
            Err(e) => Err(Error::protocol(
                FRAME_ERROR,
                format!("malformed frame on channel {channel}: {e}"),
            )),
        }
    }
}

/// `parse_frame` for one whole method, content header or heartbeat frame, once
/// [`check_nesting`] has found its field tables no deeper than
/// [`MAX_NESTING`](super::nesting::MAX_NESTING).
fn parse_checked(frame: &[u8]) -> std::result::Result<AMQPFrame, String> {
    check_nesting(frame)?;
    parse_frame(frame)
        .map(|(_, frame)| frame)
        .map_err(|e| e.to_string())
}

/// Refuses whole encoded `frames` if any of them is larger than `frame_max` (0: no limit): the
/// broker would close the whole connection with 501 FRAME_ERROR for it. Only walks the frames
/// when their total is over the limit.
pub(crate) fn check_frames_fit(frames: &[u8], frame_max: u32) -> Result<()> {
    let limit = frame_max as usize;
    if limit == 0 || frames.len() <= limit {
        return Ok(());
    }
    let mut at = 0;
    while let Some(header) = frames.get(at..at + HEADER_LEN) {
        let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]) as usize
            + FRAME_OVERHEAD;
        if size > limit {
            return Err(Error::InvalidArgument(format!(
                "a frame of {size} bytes is over the connection's frame_max of {frame_max} \
                 (properties, headers or arguments too large); nothing was sent"
            )));
        }
        at += size;
    }
    Ok(())
}

/// Appends a method frame to `buf`.
pub(crate) fn encode_method(buf: &mut Vec<u8>, channel: u16, method: AMQPClass) -> Result<()> {
    encode_frame(buf, &AMQPFrame::Method(channel, method))
}

/// Appends any frame that amq-protocol generates to `buf`.
pub(crate) fn encode_frame(buf: &mut Vec<u8>, frame: &AMQPFrame) -> Result<()> {
    let owned = std::mem::take(buf);
    match gen_frame(frame)(WriteContext::from(owned)) {
        Ok(ctx) => {
            *buf = ctx.into_inner().0;
            Ok(())
        }
        // cookie-factory consumed the buffer, so `buf` is left empty: callers encode into
        // scratch buffers of their own, never into the shared outbound buffer.
        Err(e) => Err(Error::InvalidArgument(format!("cannot encode frame: {e}"))),
    }
}

/// Appends a content header frame for a basic-class message of `body_size` bytes.
pub(crate) fn encode_content_header(
    buf: &mut Vec<u8>,
    channel: u16,
    body_size: u64,
    properties: &BasicProperties,
) -> Result<()> {
    if fast::encode_header(buf, channel, body_size, properties) {
        return Ok(());
    }
    encode_frame(
        buf,
        &AMQPFrame::Header(
            channel,
            AMQPContentHeader {
                class_id: 60,
                body_size,
                properties: properties::to_wire(properties)?,
            },
        ),
    )
}

/// Appends what a direct write (`engine::direct::write_direct`) writes for `prefix`, `frames` and `body` to `buf`,
/// leaving out the first `skip` bytes (what a direct write already took): each byte is copied
/// once, whatever part the socket took.
pub(crate) fn encode_tail(
    buf: &mut Vec<u8>,
    mut skip: usize,
    prefix: &[u8],
    frames: &[u8],
    body: Option<(u16, &[u8])>,
    frame_max: u32,
) {
    fn put(buf: &mut Vec<u8>, part: &[u8], skip: &mut usize) {
        if *skip >= part.len() {
            *skip -= part.len();
        } else {
            buf.extend_from_slice(&part[*skip..]);
            *skip = 0;
        }
    }
    let total =
        prefix.len() + frames.len() + body.map_or(0, |(_, b)| body_frames_len(b.len(), frame_max));
    buf.reserve(total.saturating_sub(skip));
    put(buf, prefix, &mut skip);
    put(buf, frames, &mut skip);
    let Some((channel, body)) = body else {
        return;
    };
    let chunk = body_chunk(frame_max);
    for piece in body.chunks(chunk) {
        put(buf, &body_frame_header(channel, piece.len()), &mut skip);
        put(buf, piece, &mut skip);
        put(buf, &[constants::FRAME_END], &mut skip);
    }
}

/// The most body bytes one body frame carries at `frame_max` (`frame_max - 8`, at least 1).
pub(crate) fn body_chunk(frame_max: u32) -> usize {
    (frame_max as usize).saturating_sub(FRAME_OVERHEAD).max(1)
}

/// Bytes of the body frames (of at most `frame_max - 8` payload bytes each) for a body of
/// `len` bytes.
pub(crate) fn body_frames_len(len: usize, frame_max: u32) -> usize {
    let chunk = body_chunk(frame_max);
    len + len.div_ceil(chunk) * FRAME_OVERHEAD
}

/// The 7-byte header of a body frame of `len` payload bytes on `channel`.
pub(crate) fn body_frame_header(channel: u16, len: usize) -> [u8; 7] {
    let mut header = [constants::FRAME_BODY, 0, 0, 0, 0, 0, 0];
    header[1..3].copy_from_slice(&channel.to_be_bytes());
    header[3..7].copy_from_slice(&(len as u32).to_be_bytes());
    header
}

/// Appends a heartbeat frame.
pub(crate) fn encode_heartbeat(buf: &mut Vec<u8>) {
    buf.extend_from_slice(&[
        constants::FRAME_HEARTBEAT,
        0,
        0,
        0,
        0,
        0,
        0,
        constants::FRAME_END,
    ]);
}

/// `s` as an AMQP short string, or a clear error when it is longer than 255 bytes.
pub(crate) fn short(s: &str) -> Result<amq_protocol::types::ShortString> {
    amq_protocol::types::ShortString::try_new(s).map_err(|_| {
        Error::InvalidArgument(format!(
            "{:?} is {} bytes long; AMQP short strings hold at most 255",
            truncate_for_display(s),
            s.len()
        ))
    })
}

fn truncate_for_display(s: &str) -> String {
    match s.char_indices().nth(40) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;

/// What a synchronous request awaits, read from its own method frame: its class and method id,
/// and for basic.consume and basic.cancel the consumer tag, which their -ok must echo (AMQP
/// 0-9-1: the tag "specified by the client"; cottontail always names one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Awaited {
    /// Class and method id.
    pub(crate) id: (u16, u16),
    /// The consumer tag, for basic.consume (60.20) and basic.cancel (60.30).
    pub(crate) consumer_tag: Option<String>,
}

impl Awaited {
    /// What the method frame `frame` awaits; `None` for anything shorter than a method's ids.
    pub(crate) fn of(frame: &[u8]) -> Option<Awaited> {
        let id = method_id(frame)?;
        // The arguments after the ids: basic.consume's reserved short and queue name come
        // before its tag; basic.cancel's tag comes first.
        let args = frame.get(11..).unwrap_or_default();
        let tag_at = match id {
            (60, 20) => args.get(2).map(|&queue_len| 2 + 1 + usize::from(queue_len)),
            (60, 30) => Some(0),
            _ => None,
        };
        let consumer_tag = tag_at.and_then(|at| {
            let len = usize::from(*args.get(at)?);
            let tag = args.get(at + 1..at + 1 + len)?;
            Some(String::from_utf8_lossy(tag).into_owned())
        });
        Some(Awaited { id, consumer_tag })
    }

    /// Whether method `reply` (class and method id) is this request's -ok, whatever its
    /// arguments (see [`answers`]).
    pub(crate) fn method_answered_by(&self, reply: (u16, u16)) -> bool {
        answers(self.id, reply)
    }

    /// Whether a reply (its class and method id, and the consumer tag of a consume-ok or
    /// cancel-ok) answers this request: see [`answers`]; a consumer tag must be the one asked
    /// for.
    pub(crate) fn answered_by(&self, reply: (u16, u16), consumer_tag: Option<&str>) -> bool {
        self.method_answered_by(reply)
            && match (&self.consumer_tag, consumer_tag) {
                (Some(asked), Some(got)) => asked == got,
                _ => true,
            }
    }
}

/// The class and method id of the method frame `frame` starts with (its payload's first four
/// bytes); `None` for anything shorter.
fn method_id(frame: &[u8]) -> Option<(u16, u16)> {
    let ids = frame.get(7..11)?;
    Some((
        u16::from_be_bytes([ids[0], ids[1]]),
        u16::from_be_bytes([ids[2], ids[3]]),
    ))
}

/// Whether method `reply` (class and method id) answers the synchronous method `request`:
/// the same class, and the method's `-ok`, which AMQP 0-9-1 numbers one past the request
/// except `exchange.unbind-ok` (51 for 40) and `basic.get-empty` (72 for 70, with get-ok 71).
fn answers(request: (u16, u16), reply: (u16, u16)) -> bool {
    const EXCHANGE: u16 = 40;
    const BASIC: u16 = 60;
    request.0 == reply.0
        && (reply.1 == request.1.wrapping_add(1)
            || (request == (EXCHANGE, 40) && reply.1 == 51)
            || (request == (BASIC, 70) && reply.1 == 72))
}
