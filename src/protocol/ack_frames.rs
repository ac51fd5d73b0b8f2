//! basic.ack, basic.nack and basic.reject frames, encoded once per thread and channel by
//! amq-protocol, then reused with the delivery tag patched in (see `acks` for which frames a
//! settlement needs).
//!
//! A consumer acks every message; encoding the ack through cookie-factory costs ~1,800
//! instructions and a few allocations, patching 8 bytes of a template almost nothing. The
//! three methods put the delivery tag first, right after the class and method ids.

use std::cell::RefCell;

use amq_protocol::protocol::{basic, AMQPClass};

use crate::error::{Error, Result};
use crate::protocol::acks::AckRun;
use crate::protocol::codec;

/// Offset of the delivery tag: frame header (7), class id (2), method id (2).
const TAG_OFFSET: usize = 11;

/// Which settlement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Settle {
    Ack { multiple: bool },
    Nack { multiple: bool, requeue: bool },
    Reject { requeue: bool },
}

impl Settle {
    fn method(self, delivery_tag: u64) -> AMQPClass {
        AMQPClass::Basic(match self {
            Settle::Ack { multiple } => basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag,
                multiple,
            }),
            Settle::Nack { multiple, requeue } => basic::AMQPMethod::Nack(basic::Nack {
                delivery_tag,
                multiple,
                requeue,
            }),
            Settle::Reject { requeue } => basic::AMQPMethod::Reject(basic::Reject {
                delivery_tag,
                requeue,
            }),
        })
    }
}

thread_local! {
    static TEMPLATES: RefCell<Vec<(u16, Settle, Vec<u8>)>> = const { RefCell::new(Vec::new()) };
}

/// Room for one settlement frame (they are 21 bytes: header, ids, tag, flags, frame end).
const FRAME_ROOM: usize = 32;

/// Up to two settlement frames (a held ack run and the user's own), built on the stack.
#[derive(Debug)]
pub(crate) struct AckFrames {
    buf: [u8; 2 * FRAME_ROOM],
    len: usize,
}

impl AckFrames {
    pub(crate) fn new() -> Self {
        AckFrames {
            buf: [0; 2 * FRAME_ROOM],
            len: 0,
        }
    }

    /// The frame writing `acks`' held run (none if nothing is held); the run counts as
    /// written from now on.
    pub(crate) fn held(channel: u16, acks: &mut AckRun) -> Result<Self> {
        let mut frames = AckFrames::new();
        if let Some((settle, tag)) = acks.take_held() {
            frames.push(channel, settle, tag)?;
        }
        Ok(frames)
    }

    /// The frames so far, in order.
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Appends the frame settling `delivery_tag` on `channel`.
    pub(crate) fn push(&mut self, channel: u16, settle: Settle, delivery_tag: u64) -> Result<()> {
        TEMPLATES.with(|cell| {
            let mut templates = cell.borrow_mut();
            let index = match templates
                .iter()
                .position(|(c, s, _)| *c == channel && *s == settle)
            {
                Some(i) => i,
                None => {
                    let mut buf = Vec::new();
                    codec::encode_method(&mut buf, channel, settle.method(0))?;
                    if templates.len() >= 64 {
                        templates.remove(0);
                    }
                    templates.push((channel, settle, buf));
                    templates.len() - 1
                }
            };
            let frame = &mut templates[index].2;
            frame[TAG_OFFSET..TAG_OFFSET + 8].copy_from_slice(&delivery_tag.to_be_bytes());
            let end = self.len + frame.len();
            if frame.len() > FRAME_ROOM || end > self.buf.len() {
                return Err(Error::InvalidArgument(format!(
                    "a settlement frame of {} bytes does not fit its buffer",
                    frame.len()
                )));
            }
            self.buf[self.len..end].copy_from_slice(frame);
            self.len = end;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patched_templates_equal_fresh_encodings() {
        let kinds = [
            Settle::Ack { multiple: false },
            Settle::Ack { multiple: true },
            Settle::Nack {
                multiple: true,
                requeue: false,
            },
            Settle::Nack {
                multiple: false,
                requeue: true,
            },
            Settle::Reject { requeue: true },
            Settle::Reject { requeue: false },
        ];
        for channel in [1u16, 7, 65535] {
            for settle in kinds {
                for tag in [0u64, 1, 255, 1 << 40, u64::MAX] {
                    let mut frames = AckFrames::new();
                    frames.push(channel, settle, tag).unwrap();
                    let got = frames.as_slice().to_vec();
                    let mut fresh = Vec::new();
                    codec::encode_method(&mut fresh, channel, settle.method(tag)).unwrap();
                    assert_eq!(got, fresh, "{channel} {settle:?} {tag}");
                }
            }
        }
    }
}
