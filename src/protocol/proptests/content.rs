//! Content assembly: frame streams through a [`FrameReader`](crate::protocol::codec::FrameReader)
//! (in random read splits, by [`feed`]) and then, per channel, through one [`Assembly`] each,
//! routed as `engine::router` routes them: a content method (deliver, get-ok, return) starts
//! an assembly, any other method on a channel asks [`Assembly::expect_method`], content
//! headers and body frames go to their channel's assembly. Channel 0's methods are the
//! connection's and never reach an assembly.
//!
//! The properties:
//! - a valid interleaved stream yields, per channel and in order, exactly the messages the
//!   generator made (method, properties and body bytes equal), the other methods between
//!   them accepted, and nothing left in progress at the end;
//! - a stream damaged by the [`ContentMutation`]s (a content method, header or body frame
//!   dropped, a header or body frame duplicated, a body longer than its header announced, a
//!   stray header, a method in the middle of a content, a header's `body_size` forged up to
//!   `u64::MAX`), with or without the byte-level [`Mutation`]s of `mutations`, never panics,
//!   never lets a body buffer's capacity exceed the body bytes received plus what the
//!   announced size may reserve (at most [`MAX_BODY_PREALLOC`]) nor the sizes announced by
//!   the messages in progress on all channels exceed [`MAX_BODY_SIZE`], and fails only with
//!   `FRAME_ERROR` (501) or `UNEXPECTED_FRAME` (505). With one content mutation and no byte
//!   damage, the failure (or its absence) is the one the mutation calls for, on its channel
//!   (or, for a size forged within the other channels' sizes of that limit, a 501 for them).

use std::collections::BTreeMap;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{basic, AMQPClass, BasicProperties};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;

use super::generators::{channel_method, content_method, frame_max, interleaved_stream, splits};
use super::harness::{feed, protocol_code, Got};
use super::mutations::{encode, mutate, mutation, Mutation};
use super::{config, on_io_stack, run_round};
use crate::error::{Error, FRAME_ERROR, UNEXPECTED_FRAME};
use crate::protocol::content::{
    Assembly, Content, ContentMethod, SpareBody, MAX_BODY_PREALLOC, MAX_BODY_SIZE,
};
use crate::protocol::methods::{Deliver, GetOk, Return};

// ---------------------------------------------------------------------------------------
// Routing frames to assemblies, as the router does.
// ---------------------------------------------------------------------------------------

/// What a channel yields: a whole message, or a method outside content.
#[derive(Debug, PartialEq)]
#[allow(clippy::large_enum_variant)]
enum Event {
    Message {
        method: AMQPClass,
        properties: BasicProperties,
        body: Vec<u8>,
    },
    Method(AMQPClass),
}

impl From<Content> for Event {
    fn from(content: Content) -> Self {
        // Back to the codec's types, to compare with what the frames held.
        let method = match content.method {
            ContentMethod::Deliver(m) => basic::AMQPMethod::Deliver(basic::Deliver {
                consumer_tag: m.consumer_tag.as_str().into(),
                delivery_tag: m.delivery_tag,
                redelivered: m.redelivered,
                exchange: m.exchange.as_str().into(),
                routing_key: m.routing_key.as_str().into(),
            }),
            ContentMethod::GetOk(m) => basic::AMQPMethod::GetOk(basic::GetOk {
                delivery_tag: m.delivery_tag,
                redelivered: m.redelivered,
                exchange: m.exchange.into(),
                routing_key: m.routing_key.into(),
                message_count: m.message_count,
            }),
            ContentMethod::Return(m) => basic::AMQPMethod::Return(basic::Return {
                reply_code: m.reply_code,
                reply_text: m.reply_text.into(),
                exchange: m.exchange.into(),
                routing_key: m.routing_key.into(),
            }),
        };
        Event::Message {
            method: AMQPClass::Basic(method),
            properties: crate::protocol::properties::to_wire(&content.properties)
                .expect("properties that were read can be written"),
            body: content.body,
        }
    }
}

/// The content method `method` is, if it opens content.
fn as_content(method: &AMQPClass) -> Option<ContentMethod> {
    match method {
        AMQPClass::Basic(basic::AMQPMethod::Deliver(m)) => {
            Some(ContentMethod::Deliver(Deliver::from_wire(m.clone())))
        }
        AMQPClass::Basic(basic::AMQPMethod::GetOk(m)) => {
            Some(ContentMethod::GetOk(GetOk::from_wire(m.clone())))
        }
        AMQPClass::Basic(basic::AMQPMethod::Return(m)) => {
            Some(ContentMethod::Return(Return::from_wire(m.clone())))
        }
        _ => None,
    }
}

/// One channel's assembly, and the body size its accepted header announced (0 before one).
#[derive(Default)]
struct Channel {
    assembly: Assembly,
    announced: u64,
}

/// The assemblies of every channel seen, and the events they yielded.
#[derive(Default)]
struct Assemblies {
    channels: BTreeMap<u16, Channel>,
    events: BTreeMap<u16, Vec<Event>>,
    /// The channel whose assembly refused a frame.
    failed_on: Option<u16>,
}

impl Assemblies {
    /// Routes one frame from the reader as the router does.
    fn route(&mut self, got: &Got) -> Result<(), Error> {
        let (channel, result) = match got {
            Got::Frame(AMQPFrame::Method(0, _)) => return Ok(()),
            Got::Frame(AMQPFrame::Method(c, method)) => {
                let ch = self.channels.entry(*c).or_default();
                let result = match as_content(method) {
                    Some(content) => ch.assembly.start(*c, content).map(|()| {
                        ch.announced = 0;
                        None
                    }),
                    None => ch
                        .assembly
                        .expect_method(*c)
                        .map(|()| Some(Event::Method(method.clone()))),
                };
                (*c, result)
            }
            Got::Frame(AMQPFrame::Header(c, header)) => {
                let elsewhere = self.receiving(Some(*c));
                let ch = self.channels.entry(*c).or_default();
                let size = header.body_size;
                let header = crate::protocol::codec::Header::from_wire(header);
                let result = ch
                    .assembly
                    .header(*c, header, elsewhere, &SpareBody::default())
                    .map(|done| {
                        ch.announced = size;
                        done.map(Event::from)
                    });
                (*c, result)
            }
            Got::Body(c, data) => {
                let ch = self.channels.entry(*c).or_default();
                (
                    *c,
                    ch.assembly.body(*c, data, 0).map(|d| d.map(Event::from)),
                )
            }
            // Heartbeats, and what the router refuses before any assembly sees it.
            Got::Frame(_) => return Ok(()),
        };
        match result {
            Ok(event) => {
                if let Some(event) = event {
                    self.events.entry(channel).or_default().push(event);
                }
                Ok(())
            }
            Err(error) => {
                self.failed_on = Some(channel);
                Err(error)
            }
        }
    }

    /// What the headers of the messages in progress announced, on all channels but `except`.
    fn receiving(&self, except: Option<u16>) -> u64 {
        self.channels
            .iter()
            .filter(|(c, ch)| Some(**c) != except && ch.assembly.in_progress())
            .map(|(_, ch)| ch.announced)
            .sum()
    }

    /// The memory bound: a body buffer holds no more than the bytes received into it plus
    /// what its header's size may reserve up front (the size, at most `MAX_BODY_PREALLOC`),
    /// and the messages in progress on all channels together announced at most
    /// `MAX_BODY_SIZE`. (Past `MAX_BODY_PREALLOC` received, `Vec`'s doubling could pass the
    /// first; no test body comes near 16 MiB.)
    fn check_bound(&self) -> Result<(), String> {
        let receiving = self.receiving(None);
        if receiving > MAX_BODY_SIZE {
            return Err(format!(
                "{receiving} bytes announced on all channels together"
            ));
        }
        for (channel, ch) in &self.channels {
            if let Some((len, capacity)) = ch.assembly.body_buffer() {
                let bound = len as u64 + ch.announced.min(MAX_BODY_PREALLOC);
                if capacity as u64 > bound {
                    return Err(format!(
                        "channel {channel}: a body buffer of {capacity} bytes for {len} \
                         received and {} announced",
                        ch.announced
                    ));
                }
            }
        }
        Ok(())
    }

    /// Feeds `bytes` through a reader of `frame_max` in `splits`, every frame routed, the
    /// bound checked after each; returns the error that ended the stream, if any.
    fn run(
        &mut self,
        bytes: &[u8],
        splits: &[usize],
        frame_max: u32,
    ) -> Result<Option<Error>, TestCaseError> {
        let mut broken = None;
        let outcome = feed(bytes, splits, frame_max, |got| {
            self.route(got)?;
            self.check_bound().map_err(|e| {
                broken = Some(e);
                Error::protocol(0, "memory bound broken")
            })
        })?;
        if let Some(broken) = broken {
            return Err(TestCaseError::fail(broken));
        }
        Ok(outcome.error)
    }
}

// ---------------------------------------------------------------------------------------
// Valid streams.
// ---------------------------------------------------------------------------------------

/// What each channel of a generated stream should yield: each content method with the
/// header and body frames that follow it on its channel (the generator keeps a message's
/// frames together and its header's size equal to its body), and the other methods.
fn generated_events(frames: &[AMQPFrame]) -> BTreeMap<u16, Vec<Event>> {
    let mut events: BTreeMap<u16, Vec<Event>> = BTreeMap::new();
    for frame in frames {
        match frame {
            AMQPFrame::Method(0, _) => {}
            AMQPFrame::Method(c, method) => {
                let event = match as_content(method) {
                    Some(_) => Event::Message {
                        method: method.clone(),
                        properties: BasicProperties::default(),
                        body: Vec::new(),
                    },
                    None => Event::Method(method.clone()),
                };
                events.entry(*c).or_default().push(event);
            }
            AMQPFrame::Header(c, header) => {
                if let Some(Event::Message { properties, .. }) =
                    events.get_mut(c).and_then(|e| e.last_mut())
                {
                    *properties = header.properties.clone();
                }
            }
            AMQPFrame::Body(c, data) => {
                if let Some(Event::Message { body, .. }) =
                    events.get_mut(c).and_then(|e| e.last_mut())
                {
                    body.extend_from_slice(data);
                }
            }
            _ => {}
        }
    }
    events
}

/// Valid streams, whatever the splits, yield the generated messages and methods in order on
/// each channel, and end with nothing in progress.
pub(super) fn valid_streams_assemble(config: &Config) -> u64 {
    let strategy = frame_max().prop_flat_map(|max| (Just(max), interleaved_stream(max), splits()));
    run_round(config, strategy, |(frame_max, frames, splits)| {
        let mut assemblies = Assemblies::default();
        let error = assemblies.run(&encode(&frames).0, &splits, frame_max)?;
        prop_assert!(error.is_none(), "{:?}", error);
        let expected = generated_events(&frames);
        // Compared channel by channel, so a failure names one channel's events.
        for channel in expected.keys().chain(assemblies.events.keys()) {
            prop_assert_eq!(
                assemblies.events.get(channel),
                expected.get(channel),
                "channel {}",
                channel
            );
        }
        for (channel, ch) in &assemblies.channels {
            prop_assert!(
                !ch.assembly.in_progress(),
                "channel {} in progress",
                channel
            );
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------
// Damaged streams.
// ---------------------------------------------------------------------------------------

/// A body size to forge into a content header.
#[derive(Clone, Debug)]
enum ForgedBodySize {
    Any(u64),
    /// `u64::MAX` minus this.
    NearMax(u8),
    /// `MAX_BODY_SIZE` plus this.
    NearLimit(i8),
    /// `MAX_BODY_PREALLOC` plus this.
    NearPrealloc(i8),
    /// The real size plus this (wrapping).
    Off(i8),
}

/// One way to damage a stream's contents, at the frame level. Each picks a message (the
/// first `Index`), then a body frame or a place in it where it needs one.
#[derive(Clone, Debug)]
enum ContentMutation {
    /// Drop the content method: its header comes without one.
    DropMethod(Index),
    DropHeader(Index),
    /// The header twice in a row.
    DuplicateHeader(Index),
    DropBody(Index, Index),
    /// A body frame twice in a row.
    DuplicateBody(Index, Index),
    /// These bytes appended to a body frame (or, if it would outgrow `frame_max`, sent in a
    /// body frame of their own right after it).
    LongerBody(Index, Index, Vec<u8>),
    BodySize(Index, ForgedBodySize),
    /// A header (announcing this size) inserted anywhere, on the channel of some frame.
    StrayHeader(Index, Index, u8),
    /// A method inserted after one of a message's frames but its last.
    MethodInContent(Index, Index, AMQPClass),
}

fn content_mutation() -> impl Strategy<Value = ContentMutation> {
    use ContentMutation::*;
    let forged = prop_oneof![
        any::<u64>().prop_map(ForgedBodySize::Any),
        any::<u8>().prop_map(ForgedBodySize::NearMax),
        any::<i8>().prop_map(ForgedBodySize::NearLimit),
        any::<i8>().prop_map(ForgedBodySize::NearPrealloc),
        any::<i8>().prop_map(ForgedBodySize::Off),
    ];
    let method = prop_oneof![channel_method(), content_method()];
    prop_oneof![
        any::<Index>().prop_map(DropMethod),
        any::<Index>().prop_map(DropHeader),
        any::<Index>().prop_map(DuplicateHeader),
        any::<(Index, Index)>().prop_map(|(m, b)| DropBody(m, b)),
        any::<(Index, Index)>().prop_map(|(m, b)| DuplicateBody(m, b)),
        (any::<(Index, Index)>(), vec(any::<u8>(), 1..16))
            .prop_map(|((m, b), extra)| LongerBody(m, b, extra)),
        (any::<Index>(), forged).prop_map(|(m, size)| BodySize(m, size)),
        any::<(Index, Index, u8)>().prop_map(|(at, on, size)| StrayHeader(at, on, size)),
        (any::<(Index, Index)>(), method)
            .prop_map(|((m, at), method)| MethodInContent(m, at, method)),
    ]
}

/// Where one message's frames are in a stream: a content method, then the header and body
/// frames on its channel up to its next method.
#[derive(Debug)]
struct Message {
    channel: u16,
    method: usize,
    header: Option<usize>,
    bodies: Vec<usize>,
    /// Its last frame.
    last: usize,
}

fn channel_of(frame: &AMQPFrame) -> u16 {
    match frame {
        AMQPFrame::Method(c, _)
        | AMQPFrame::Header(c, _)
        | AMQPFrame::Body(c, _)
        | AMQPFrame::InvalidHeartbeat(c) => *c,
        AMQPFrame::Heartbeat | AMQPFrame::ProtocolHeader(_) => 0,
    }
}

fn messages(frames: &[AMQPFrame]) -> Vec<Message> {
    let mut open: BTreeMap<u16, usize> = BTreeMap::new();
    let mut found: Vec<Message> = Vec::new();
    for (i, frame) in frames.iter().enumerate() {
        match frame {
            AMQPFrame::Method(0, _) => {}
            AMQPFrame::Method(c, method) => {
                open.remove(c);
                if as_content(method).is_some() {
                    open.insert(*c, found.len());
                    found.push(Message {
                        channel: *c,
                        method: i,
                        header: None,
                        bodies: Vec::new(),
                        last: i,
                    });
                }
            }
            AMQPFrame::Header(c, _) => {
                if let Some(m) = open.get(c).map(|&m| &mut found[m]) {
                    if m.header.is_none() && m.bodies.is_empty() {
                        m.header = Some(i);
                        m.last = i;
                    }
                }
            }
            AMQPFrame::Body(c, _) => {
                if let Some(m) = open.get(c).map(|&m| &mut found[m]) {
                    m.bodies.push(i);
                    m.last = i;
                }
            }
            _ => {}
        }
    }
    found
}

/// What a header announcing `size` followed by body frames of `bodies` bytes must come to,
/// by the spec and content.rs's limits: a size over `MAX_BODY_SIZE` or a body past the size
/// is `FRAME_ERROR`; a body frame after the body is complete is `UNEXPECTED_FRAME`, and so
/// is any later frame on the channel (always a method) while the body is short.
fn body_outcome(size: u64, bodies: &[usize], more_on_channel: bool) -> Option<u16> {
    if size > MAX_BODY_SIZE {
        return Some(FRAME_ERROR);
    }
    let mut received = 0u64;
    let mut complete = size == 0;
    for &len in bodies {
        if complete {
            return Some(UNEXPECTED_FRAME);
        }
        received += len as u64;
        if received > size {
            return Some(FRAME_ERROR);
        }
        complete = received == size;
    }
    (!complete && more_on_channel).then_some(UNEXPECTED_FRAME)
}

/// What one content mutation of an otherwise valid stream must end in: the channel whose
/// assembly fails and the reply code, or `None` for no failure.
#[derive(Debug, Default)]
struct Expected {
    channel: u16,
    code: Option<u16>,
    /// A forged size so close to `MAX_BODY_SIZE` that, with another channel's message in
    /// progress, one of the two may be refused (501) for the bodies of all channels together.
    or_over_budget: bool,
}

/// Applies `mutation` to `frames`; returns what it must end in, or `None` when the stream
/// has nothing it applies to (left unchanged).
fn apply(
    frames: &mut Vec<AMQPFrame>,
    mutation: &ContentMutation,
    frame_max: u32,
) -> Option<Expected> {
    use ContentMutation::*;
    let found = messages(frames);
    // A message (one with body frames if `bodied`) and what the stream holds for it.
    let pick = |i: &Index, bodied: bool| {
        let candidates: Vec<&Message> = found
            .iter()
            .filter(|m| m.header.is_some() && (!bodied || !m.bodies.is_empty()))
            .collect();
        (!candidates.is_empty()).then(|| {
            let m = candidates[i.index(candidates.len())];
            let more = frames[m.last + 1..]
                .iter()
                .any(|f| channel_of(f) == m.channel);
            let size = match &frames[m.header.unwrap()] {
                AMQPFrame::Header(_, h) => h.body_size,
                _ => unreachable!(),
            };
            let lens: Vec<usize> = m
                .bodies
                .iter()
                .map(|&b| match &frames[b] {
                    AMQPFrame::Body(_, data) => data.len(),
                    other => unreachable!("not a body frame: {other:?}"),
                })
                .collect();
            (m, more, size, lens)
        })
    };
    let unexpected = |m: &Message| {
        Some(Expected {
            channel: m.channel,
            code: Some(UNEXPECTED_FRAME),
            ..Expected::default()
        })
    };
    match mutation {
        DropMethod(i) => {
            let (m, ..) = pick(i, false)?;
            frames.remove(m.method);
            unexpected(m)
        }
        DropHeader(i) => {
            let (m, more, _, lens) = pick(i, false)?;
            frames.remove(m.header.unwrap());
            let code = (!lens.is_empty() || more).then_some(UNEXPECTED_FRAME);
            Some(Expected {
                channel: m.channel,
                code,
                ..Expected::default()
            })
        }
        DuplicateHeader(i) => {
            let (m, ..) = pick(i, false)?;
            let header = m.header.unwrap();
            frames.insert(header + 1, frames[header].clone());
            unexpected(m)
        }
        DropBody(i, b) | DuplicateBody(i, b) | LongerBody(i, b, _) => {
            let (m, more, size, mut lens) = pick(i, true)?;
            let k = b.index(m.bodies.len());
            let at = m.bodies[k];
            match mutation {
                DropBody(..) => {
                    frames.remove(at);
                    lens.remove(k);
                }
                DuplicateBody(..) => {
                    frames.insert(at + 1, frames[at].clone());
                    lens.insert(k + 1, lens[k]);
                }
                LongerBody(.., extra) => {
                    if lens[k] + extra.len() <= frame_max as usize - 8 {
                        if let AMQPFrame::Body(_, data) = &mut frames[at] {
                            data.extend_from_slice(extra);
                        }
                        lens[k] += extra.len();
                    } else {
                        frames.insert(at + 1, AMQPFrame::Body(m.channel, extra.clone()));
                        lens.insert(k + 1, extra.len());
                    }
                }
                _ => unreachable!(),
            }
            Some(Expected {
                channel: m.channel,
                code: body_outcome(size, &lens, more),
                ..Expected::default()
            })
        }
        BodySize(i, forged) => {
            let (m, more, real, lens) = pick(i, false)?;
            let size = match forged {
                ForgedBodySize::Any(n) => *n,
                ForgedBodySize::NearMax(d) => u64::MAX - *d as u64,
                ForgedBodySize::NearLimit(d) => MAX_BODY_SIZE.wrapping_add_signed(*d as i64),
                ForgedBodySize::NearPrealloc(d) => MAX_BODY_PREALLOC.wrapping_add_signed(*d as i64),
                ForgedBodySize::Off(d) => real.wrapping_add_signed(*d as i64),
            };
            if let AMQPFrame::Header(_, h) = &mut frames[m.header.unwrap()] {
                h.body_size = size;
            }
            let elsewhere: u64 = frames
                .iter()
                .filter_map(|f| match f {
                    AMQPFrame::Header(c, h) if *c != m.channel => Some(h.body_size),
                    _ => None,
                })
                .fold(0, u64::saturating_add);
            Some(Expected {
                channel: m.channel,
                code: body_outcome(size, &lens, more),
                or_over_budget: size <= MAX_BODY_SIZE
                    && size > MAX_BODY_SIZE.saturating_sub(elsewhere),
            })
        }
        StrayHeader(at, on, size) => {
            // Whatever the channel's state there, this header or the channel's next one is
            // out of place: no content, or a header already in (or this one taken for it).
            let channel = frames
                .get(on.index(frames.len().max(1)))
                .map_or(1, channel_of);
            let header = AMQPContentHeader {
                class_id: 60,
                body_size: *size as u64,
                properties: BasicProperties::default(),
            };
            frames.insert(
                at.index(frames.len() + 1),
                AMQPFrame::Header(channel, header),
            );
            Some(Expected {
                channel,
                code: Some(UNEXPECTED_FRAME),
                ..Expected::default()
            })
        }
        MethodInContent(i, at, method) => {
            let (m, ..) = pick(i, false)?;
            let mut inside = vec![m.method, m.header.unwrap()];
            inside.extend(&m.bodies);
            inside.pop();
            let after = inside[at.index(inside.len())];
            frames.insert(after + 1, AMQPFrame::Method(m.channel, method.clone()));
            unexpected(m)
        }
    }
}

/// Damaged contents: no panic, body buffers within the bound (checked after every frame),
/// only `FRAME_ERROR` or `UNEXPECTED_FRAME` (the reader's own failures only the former), and
/// with a single content mutation, exactly the failure it calls for.
pub(super) fn mutated_contents_fail_cleanly(config: &Config) -> u64 {
    let strategy = frame_max().prop_flat_map(|max| {
        let no_bytes = || Just(Vec::<Mutation>::new());
        let damage = prop_oneof![
            3 => (vec(content_mutation(), 1..2), no_bytes()),
            1 => (vec(content_mutation(), 2..4), no_bytes()),
            1 => (vec(content_mutation(), 0..3), vec(mutation(), 1..3)),
        ];
        let stream = interleaved_stream(max).prop_filter("a message", |frames| {
            frames.iter().any(|f| matches!(f, AMQPFrame::Header(..)))
        });
        (Just(max), stream, damage, splits())
    });
    run_round(
        config,
        strategy,
        |(frame_max, mut frames, (content, damage), splits)| {
            let expected: Vec<Option<Expected>> = content
                .iter()
                .map(|m| apply(&mut frames, m, frame_max))
                .collect();
            let (mut bytes, ends) = encode(&frames);
            let mut starts = vec![0];
            starts.extend_from_slice(&ends[..ends.len().saturating_sub(1)]);
            mutate(&mut bytes, &starts, &damage, frame_max);
            let mut assemblies = Assemblies::default();
            let error = assemblies.run(&bytes, &splits, frame_max)?;
            if let Some(error) = &error {
                let code = protocol_code(error);
                prop_assert!(
                    matches!(code, Some(FRAME_ERROR | UNEXPECTED_FRAME)),
                    "{:?}",
                    error
                );
                prop_assert!(
                    assemblies.failed_on.is_some() || code == Some(FRAME_ERROR),
                    "the reader failed with {:?}",
                    error
                );
            }
            if let ([one], true) = (&expected[..], damage.is_empty()) {
                match one {
                    // Refused for the bodies of all channels together, on either side.
                    Some(Expected {
                        or_over_budget: true,
                        ..
                    }) if error
                        .as_ref()
                        .is_some_and(|e| e.to_string().contains("on other channels")) =>
                    {
                        prop_assert_eq!(error.as_ref().and_then(protocol_code), Some(FRAME_ERROR));
                    }
                    Some(Expected {
                        channel,
                        code: Some(code),
                        ..
                    }) => {
                        prop_assert_eq!(error.as_ref().and_then(protocol_code), Some(*code));
                        prop_assert_eq!(assemblies.failed_on, Some(*channel), "{:?}", error);
                    }
                    _ => prop_assert!(error.is_none(), "{:?}", error),
                }
            }
            Ok(())
        },
    )
}

#[test]
fn valid_streams_assemble_into_the_generated_messages() {
    on_io_stack(|| valid_streams_assemble(&config()));
}

#[test]
fn mutated_contents_fail_with_frame_or_unexpected_frame_within_the_bound() {
    on_io_stack(|| mutated_contents_fail_cleanly(&config()));
}

#[test]
fn the_expected_body_outcomes() {
    assert_eq!(body_outcome(5, &[2, 3], true), None);
    assert_eq!(body_outcome(5, &[2, 4], false), Some(FRAME_ERROR));
    assert_eq!(body_outcome(5, &[5, 5], false), Some(UNEXPECTED_FRAME));
    assert_eq!(body_outcome(0, &[1], false), Some(UNEXPECTED_FRAME));
    assert_eq!(body_outcome(5, &[2], true), Some(UNEXPECTED_FRAME));
    assert_eq!(body_outcome(5, &[2], false), None);
    assert_eq!(body_outcome(u64::MAX, &[], false), Some(FRAME_ERROR));
}
