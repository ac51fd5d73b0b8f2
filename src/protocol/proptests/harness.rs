//! Driving the sans-IO pieces as the engine does: [`feed`] hands a byte stream to a
//! [`FrameReader`] in given read splits, checking the buffer bound and the nesting of every
//! frame it hands out; [`run_handshake`] puts the frames through a [`Handshake`].

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{basic, connection, queue, AMQPClass};
use amq_protocol::types::AMQPValue;
use proptest::prelude::*;

use crate::error::{Error, UNEXPECTED_FRAME};
use crate::params::ConnectionParameters;
use crate::protocol::codec::{FrameReader, Inbound};
use crate::protocol::handshake::{Handshake, Step};
use crate::protocol::nesting::MAX_NESTING;

/// A frame as the reader hands it out, body bytes copied.
#[derive(Debug, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub(super) enum Got {
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
pub(super) struct Outcome {
    pub(super) frames: Vec<Got>,
    pub(super) error: Option<Error>,
}

/// Feeds `bytes` to a new reader in reads of `splits` bytes (cycled), taking every complete
/// frame after each read, as the I/O thread does, until the bytes run out or it fails; `each`
/// sees every frame as it comes (and may stop the run with an error). Checks after every read
/// that the buffer stays within its bound.
pub(super) fn feed(
    bytes: &[u8],
    splits: &[usize],
    frame_max: u32,
    mut each: impl FnMut(&Got) -> Result<(), Error>,
) -> std::result::Result<Outcome, TestCaseError> {
    let mut reader = FrameReader::new(frame_max);
    let mut frames = Vec::new();
    let mut sizes = splits.iter().cycle();
    let mut body: Option<(u16, Vec<u8>)> = None;
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
                        Got::Frame(*frame)
                    }
                    // A body frame handed out in pieces is one frame here: its last piece
                    // comes with its frame-end octet taken, and the reader is then out of it.
                    Ok(Some(Inbound::Body(channel, range, _))) => {
                        let bytes = reader.bytes(range);
                        match &mut body {
                            Some((_, gathered)) => gathered.extend_from_slice(bytes),
                            None => body = Some((channel, bytes.to_vec())),
                        }
                        if reader.in_body_frame() {
                            continue;
                        }
                        let (channel, bytes) = body.take().expect("gathered above");
                        Got::Body(channel, bytes)
                    }
                    // The fast decoders' frames, as amq-protocol would have parsed them: the
                    // round trip then checks that both agree.
                    Ok(Some(Inbound::Deliver(channel, d))) => Got::Frame(AMQPFrame::Method(
                        channel,
                        AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                            consumer_tag: d.consumer_tag.as_str().into(),
                            delivery_tag: d.delivery_tag,
                            redelivered: d.redelivered,
                            exchange: d.exchange.as_str().into(),
                            routing_key: d.routing_key.as_str().into(),
                        })),
                    )),
                    Ok(Some(Inbound::Ack(channel, ack))) => Got::Frame(AMQPFrame::Method(
                        channel,
                        AMQPClass::Basic(basic::AMQPMethod::Ack(ack)),
                    )),
                    Ok(Some(Inbound::Header(channel, h))) => Got::Frame(AMQPFrame::Header(
                        channel,
                        amq_protocol::frame::AMQPContentHeader {
                            class_id: h.class_id,
                            body_size: h.body_size,
                            properties: crate::protocol::properties::to_wire(&h.properties)
                                .expect("decoded properties encode"),
                        },
                    )),
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
pub(super) fn protocol_code(error: &Error) -> Option<u16> {
    match error {
        Error::Protocol { reply_code, .. } => Some(*reply_code),
        _ => None,
    }
}

/// How a handshake run ended.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(super) enum HandshakeEnd {
    Done(crate::protocol::handshake::Tuned),
    /// The stream ended first.
    Waiting,
    /// Failed on this frame (`None`: the reader failed).
    Failed(Option<Got>, Error),
}

/// Runs a handshake over `bytes` as the engine does: frames through the reader, each into
/// `on_frame`, a body frame an `UNEXPECTED_FRAME` error. Also returns what was sent.
pub(super) fn run_handshake(
    params: &ConnectionParameters,
    bytes: &[u8],
    splits: &[usize],
) -> std::result::Result<(HandshakeEnd, Vec<Vec<AMQPClass>>), TestCaseError> {
    let settings = super::super::handshake::Settings::from(params);
    let mut hs = Handshake::new(&settings);
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
