//! Streams as bytes, and the damage done to them: generated frames encoded back to back,
//! raw frames carrying deeply nested tables, and the [`Mutation`]s (truncation, bit flips,
//! forged sizes, overwritten frame types and frame-ends, garbage, nested frames inserted) with
//! [`mutate`], which applies them and says where the first damaged byte is.

use amq_protocol::frame::AMQPFrame;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

use crate::protocol::codec::encode_frame;
use crate::protocol::nesting::nested_table;

/// Encodes `frames` back to back; also returns where each frame ends.
pub(super) fn encode(frames: &[AMQPFrame]) -> (Vec<u8>, Vec<usize>) {
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

/// A frame whose tables nest 1 to 8, 29 to 40 (around `MAX_NESTING`) or 101 to 300 levels,
/// tables and arrays mixed.
pub(super) fn nested_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![
            vec(any::<bool>(), 0..8),
            vec(any::<bool>(), 28..40),
            vec(any::<bool>(), 100..300)
        ],
        any::<bool>(),
    )
        .prop_map(|(kinds, as_start)| frame_with_table(&nested_table(&kinds), as_start))
}

/// A frame size to forge into a frame header.
#[derive(Clone, Debug)]
pub(super) enum ForgedSize {
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
pub(super) enum Mutation {
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
pub(super) fn mutation() -> impl Strategy<Value = Mutation> {
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
pub(super) fn mutate(
    bytes: &mut Vec<u8>,
    starts: &[usize],
    mutations: &[Mutation],
    frame_max: u32,
) -> usize {
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
