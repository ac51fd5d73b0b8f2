//! Property tests: random and mutated frame streams fed to the sans-IO pieces, the
//! [`FrameReader`](super::codec::FrameReader) (in random read splits), the
//! [`Handshake`](super::handshake::Handshake) and content
//! [`Assembly`](super::content::Assembly).
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
//! - the hand-written content header encoder ([`fast::encode_header`]) writes exactly
//!   amq-protocol's bytes for any properties without a `headers` table, and leaves those with
//!   one to amq-protocol;
//! - a valid handshake (heartbeats anywhere) finishes whatever the splits, and a random or
//!   mutated one ends only in `FRAME_ERROR` or `UNEXPECTED_FRAME` (505) protocol errors or in
//!   the typed refusals the broker's own frames ask for;
//! - a valid stream, read in any splits and routed per channel to an `Assembly` as the
//!   router does, yields exactly the generated messages (method, properties, body bytes) in
//!   order on each channel; a stream with contents damaged (frames of a content dropped or
//!   duplicated, a body longer than announced, a stray header, a method inside a content,
//!   `body_size` forged up to `u64::MAX`, plus the byte mutations above) never panics, never
//!   lets a body buffer's capacity pass the bytes received plus `MAX_BODY_PREALLOC`, and
//!   fails only with `FRAME_ERROR` or `UNEXPECTED_FRAME`, the one a single mutation calls for
//!   (see [`content`]).
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
//! The stream generators ([`generators::channel_stream`], [`generators::interleaved_stream`])
//! produce what a broker may send, one message's frames contiguous per channel; the content
//! properties take the same streams.
//!
//! The pieces: this file holds the properties and what runs them; [`content`] the content
//! assembly properties, with their routing and content-level damage; [`generators`] what a
//! broker sends, [`mutations`] the encoding of streams and the damage done to them,
//! [`harness`] the feeding of bytes to the reader and of frames to the handshake.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use amq_protocol::frame::{parse_frame, AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{connection, AMQPClass};
use amq_protocol::types::FieldTable;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseResult, TestRunner};

use super::fast;
use super::handshake::negotiate;
use super::nesting::check_nesting;
use super::properties;
use crate::error::{Error, FRAME_ERROR, SYNTAX_ERROR, UNEXPECTED_FRAME};
use crate::params::{ConnectionParameters, ExternalCredentials};
use generators::{
    channel_method, content_method, field_table, frame_max, interleaved_stream, properties, splits,
    start_frame,
};
use harness::{feed, protocol_code, run_handshake, Got, HandshakeEnd};
use mutations::{encode, mutate, mutation, nested_frame};

mod content;
pub(crate) mod generators;
mod harness;
mod mutations;

/// The I/O thread's stack: the reader parses on it, up to
/// [`MAX_NESTING`](super::nesting::MAX_NESTING) levels deep.
const IO_STACK: usize = 8 << 20;

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

/// [`fast::encode_header`] agrees with amq-protocol's encoder byte for byte, and declines
/// (appending nothing) exactly the properties with a `headers` table.
fn header_encoder_agrees(config: &Config) -> u64 {
    let strategy = (generators::properties(), any::<u16>(), any::<u64>());
    run_round(config, strategy, |(wire, channel, body_size)| {
        let ours = properties::from_wire(&wire);
        let mut buf = b"before".to_vec();
        let encoded = fast::encode_header(&mut buf, channel, body_size, &ours);
        if wire.headers().is_some() {
            prop_assert!(!encoded);
            prop_assert_eq!(&buf[..], b"before");
            return Ok(());
        }
        prop_assert!(encoded);
        let mut expected = b"before".to_vec();
        let (amq_protocols, _) = mutations::encode(&[AMQPFrame::Header(
            channel,
            AMQPContentHeader {
                class_id: 60,
                body_size,
                properties: wire,
            },
        )]);
        expected.extend(amq_protocols);
        prop_assert_eq!(buf, expected);
        Ok(())
    })
}

/// A valid handshake, heartbeats anywhere, read in any splits: start-ok, then tune-ok and
/// open, then done with what `negotiate` settles.
fn valid_handshakes_finish(config: &Config) -> u64 {
    // A valid tune's frame_max is 0 (no limit) or at least the protocol's 4096.
    let frame_max = prop_oneof![Just(0u32), 4096u32..];
    let strategy = (
        field_table(),
        (any::<u16>(), frame_max, any::<u16>()),
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
            let expected = negotiate(&super::handshake::Settings::from(&params), &tune);
            prop_assert_eq!(
                (tuned.channel_max, tuned.frame_max, tuned.heartbeat),
                (expected.channel_max, expected.frame_max, expected.heartbeat)
            );
            prop_assert_eq!(
                &tuned.server_properties,
                &crate::protocol::table::from_wire(&server_properties)
            );
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
                ConnectionParameters::default().with_credentials(ExternalCredentials::new())
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
                    // 502 only for a tune below the protocol's minimum frame size.
                    let bad_tune = *reply_code == SYNTAX_ERROR
                        && matches!(method, Some(connection::AMQPMethod::Tune(t))
                            if (1..4096).contains(&t.frame_max));
                    prop_assert!(
                        [FRAME_ERROR, UNEXPECTED_FRAME].contains(reply_code) || bad_tune,
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
    ("header_encoder_agrees", header_encoder_agrees),
    ("valid_handshakes_finish", valid_handshakes_finish),
    (
        "handshake_fails_only_as_documented",
        handshake_fails_only_as_documented,
    ),
    ("valid_streams_assemble", content::valid_streams_assemble),
    (
        "mutated_contents_fail_cleanly",
        content::mutated_contents_fail_cleanly,
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
fn the_header_encoder_writes_amq_protocols_bytes() {
    header_encoder_agrees(&config());
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
