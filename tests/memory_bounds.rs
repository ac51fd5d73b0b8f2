//! Memory bounds the client must keep whatever the broker sends or the caller leaves unread:
//! deliveries held for a `consume()` iterator nobody iterates, deliveries piling up on one
//! channel while another thread waits for a confirm, returned messages nobody handles, and the
//! outbound buffer after one very large publish.
//!
//! Each test measures a process of its own: it re-runs this test binary
//! (`std::env::current_exe()`) with only itself selected (`--exact <name>`) and
//! `COTTONTAIL_MEMORY_CHILD=<name>`, so the child plays the scenario while no other test of the
//! binary allocates beside it. The child prints `REPORT key=value` lines (its peak resident size,
//! `VmHWM`, read from /proc/self/status at the end; or its current one, `VmRSS`) and exits at
//! once, without closing its connection (how a connection ends is not what these tests measure).
//! The parent asserts the bound and states what the child measured.
//!
//! Linux only (/proc/self/status).

mod support;

#[path = "support/fake_broker.rs"]
mod fake_broker;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{basic, confirm, AMQPClass};
use cottontail::{Connection, ConsumeOptions, Consumed, PublishOptions};
use fake_broker::{client_params, spawn_fake, Peer};

const MIB: u64 = 1 << 20;
/// The environment variable that makes this binary the child of the test it names.
const CHILD_ENV: &str = "COTTONTAIL_MEMORY_CHILD";
/// How long a child may run before the parent kills it and fails the test.
const CHILD_LIMIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

/// What a child reported: `key=value` pairs.
#[derive(Debug, Default)]
struct Report(BTreeMap<String, String>);

impl Report {
    fn set(&mut self, key: &str, value: impl ToString) {
        self.0.insert(key.to_string(), value.to_string());
    }

    /// A value reported in bytes.
    fn bytes(&self, key: &str) -> u64 {
        self.0
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("the child reported no number {key:?}: {self}"))
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (key, value)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            match value.parse::<u64>() {
                Ok(n) if key.ends_with("bytes") => write!(f, "{key}={} MiB", n / MIB)?,
                _ => write!(f, "{key}={value}")?,
            }
        }
        Ok(())
    }
}

/// In the child started for `test`: runs `scenario`, prints its report and exits. Anywhere
/// else: starts that child (this binary, only `test` selected) and returns what it reported,
/// failing the test if it did not exit successfully within [`CHILD_LIMIT`].
fn measured_in_a_child(test: &str, scenario: impl FnOnce(&mut Report)) -> Report {
    if std::env::var(CHILD_ENV).as_deref() == Ok(test) {
        let mut report = Report::default();
        scenario(&mut report);
        let mut out = std::io::stdout().lock();
        for (key, value) in &report.0 {
            writeln!(out, "REPORT {key}={value}").expect("writing the report");
        }
        out.flush().expect("flushing the report");
        // Skips the connection's close: a client stuck behind its own back-pressure would make
        // the child wait for close-ok, and that is not what is measured here.
        std::process::exit(0);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut child = Command::new(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, test)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the child process");
    let pid = child.id();
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || {
        let mut out = String::new();
        let mut err = String::new();
        let _ = stdout.read_to_string(&mut out);
        let _ = stderr.read_to_string(&mut err);
        let status = child.wait();
        let _ = done_tx.send((status, out, err));
    });
    let (status, out, err) = match done_rx.recv_timeout(CHILD_LIMIT) {
        Ok(done) => done,
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            let (_, out, err) = done_rx.recv_timeout(Duration::from_secs(5)).unwrap_or((
                Err(std::io::Error::other("?")),
                String::new(),
                String::new(),
            ));
            panic!(
                "the child for {test} did not finish within {CHILD_LIMIT:?} (killed): a hang\n\
                 its stdout:\n{out}\nits stderr:\n{err}"
            );
        }
    };
    let status = status.expect("waiting for the child");
    assert!(
        status.success(),
        "the child for {test} failed ({status})\nits stdout:\n{out}\nits stderr:\n{err}"
    );
    let mut report = Report::default();
    for line in BufReader::new(out.as_bytes()).lines().map_while(Result::ok) {
        // The harness may have printed `test <name> ... ` on the same line first.
        if let Some((key, value)) = line
            .split_once("REPORT ")
            .and_then(|(_, kv)| kv.split_once('='))
        {
            report.set(key, value);
        }
    }
    assert!(
        !report.0.is_empty(),
        "the child for {test} reported nothing\nits stdout:\n{out}\nits stderr:\n{err}"
    );
    report
}

/// A field of /proc/self/status in bytes (`VmHWM`: peak resident size; `VmRSS`: current).
fn proc_status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    kib * 1024
}

fn peak_rss() -> u64 {
    proc_status_bytes("VmHWM")
}

fn current_rss() -> u64 {
    proc_status_bytes("VmRSS")
}

/// Publishes `count` messages of `size` bytes to `queue` in confirm mode and waits for the
/// confirms.
fn prefill(channel: &cottontail::Channel, queue: &str, count: usize, size: usize) {
    let body = vec![b'm'; size];
    for _ in 0..count {
        channel
            .basic_publish_deferred("", queue, &body, &PublishOptions::default())
            .expect("publishing the backlog");
    }
    let outcome = channel
        .wait_for_confirms(Some(Duration::from_secs(30)))
        .expect("confirms of the backlog");
    assert!(outcome.nacked.is_empty(), "the broker nacked the backlog");
}

// ---------------------------------------------------------------------------------------------
// (a) Two consume() iterators on one channel, one never iterated
// ---------------------------------------------------------------------------------------------

/// Messages in each of the two queues (1 MiB each).
const ITERATOR_BACKLOG: usize = 300;
/// The peak the child must stay under: the connection's inbound limits (16 MiB while nobody
/// waits, 64 MiB while a consumer waits) and the client's own buffers, with room to spare, but
/// well under one queue's backlog (300 MiB).
const ITERATOR_BOUND: u64 = 200 * MIB;

/// Two `consume()` iterators on one channel, no prefetch limit, then 300 x 1 MiB published
/// to each queue; the second iterator is never iterated. Iterating the first to the end (until
/// it has yielded nothing for 2 s: it may stall once the unread one's messages fill the
/// limit) must not make the client hold the second's whole backlog: the messages kept for an
/// iterator count against the inbound limit like any other.
#[test]
fn unread_consume_iterator_does_not_grow_memory_while_another_iterator_on_its_channel_drains() {
    let report = measured_in_a_child(
        "unread_consume_iterator_does_not_grow_memory_while_another_iterator_on_its_channel_drains",
        |report| {
            let connection = support::connect();
            let channel = connection.channel().expect("channel");
            let drained = support::exclusive_queue(&channel);
            let unread = support::exclusive_queue(&channel);
            let auto_ack = ConsumeOptions {
                auto_ack: true,
                inactivity_timeout: Some(Duration::from_secs(2)),
                ..Default::default()
            };
            // Both consumers first, then the backlogs (from a second connection): each
            // consume-ok comes back at once, and the deliveries of both queues arrive mixed.
            let mut iterated = channel
                .consume(&drained, auto_ack.clone())
                .expect("consume");
            let never_iterated = channel.consume(&unread, auto_ack).expect("consume");
            let other = support::connect();
            let publisher = other.channel().expect("channel");
            publisher.confirm_delivery().expect("confirm mode");
            prefill(&publisher, &drained, ITERATOR_BACKLOG, MIB as usize);
            prefill(&publisher, &unread, ITERATOR_BACKLOG, MIB as usize);
            report.set("after_prefill_peak_bytes", peak_rss());
            let started = Instant::now();
            let mut received = 0;
            // To the end: until it has yielded nothing for 2 s, as a consuming loop would.
            for item in iterated.by_ref() {
                match item.expect("the iterator's item") {
                    Consumed::Delivery(_) => received += 1,
                    _ => break,
                }
            }
            report.set("iterated_received", received);
            report.set("iterating_ms", started.elapsed().as_millis());
            report.set("unread_waiting", never_iterated.waiting_message_count());
            report.set("peak_bytes", peak_rss());
            std::mem::forget(iterated);
            std::mem::forget(never_iterated);
            std::mem::forget(channel);
            std::mem::forget(connection);
            std::mem::forget(publisher);
            std::mem::forget(other);
        },
    );
    let peak = report.bytes("peak_bytes");
    assert!(
        peak < ITERATOR_BOUND,
        "peak resident size {} MiB, over the {} MiB bound, while a consume() iterator nobody \
         reads shared a channel with one that drained {ITERATOR_BACKLOG} x 1 MiB (child: {report})",
        peak / MIB,
        ITERATOR_BOUND / MIB
    );
}

// ---------------------------------------------------------------------------------------------
// (b) A thread waiting for a confirm while another channel's deliveries pile up
// ---------------------------------------------------------------------------------------------

/// Deliveries the fake broker pushes on the consumer channel (1 MiB each), unless the client
/// stops reading first.
const PILE_MESSAGES: usize = 300;
/// How long a write of the fake broker may stall before it takes the client to have stopped
/// reading (back-pressure) and stops pushing.
const STALL: Duration = Duration::from_secs(2);
/// The peak the child must stay under while the backlog arrives (300 MiB unbounded).
const PILE_BOUND: u64 = 200 * MIB;

/// What the fake broker did in the back-pressure scenario.
#[derive(Debug)]
struct Pushed {
    messages: usize,
    stalled: bool,
}

/// Channel 1 in confirm mode with one publish whose confirm the fake broker withholds until it
/// has pushed `PILE_MESSAGES` x 1 MiB on channel 2's consumer (or the client stopped reading
/// for [`STALL`]); then it confirms and answers what follows.
fn push_a_pile_while_a_confirm_is_outstanding(
    broker: fake_broker::FakeBroker,
    pushed_tx: mpsc::Sender<Pushed>,
) {
    let mut peer = broker.accept_and_handshake(0, 131_072);
    peer.open_channel(1);
    peer.open_channel(2);
    match peer.expect_method() {
        (1, AMQPClass::Confirm(confirm::AMQPMethod::Select(_))) => {}
        other => panic!("fake broker: expected confirm.select on 1, got {other:?}"),
    }
    peer.send_method(
        1,
        AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
    );
    let tag = match peer.expect_method() {
        (2, AMQPClass::Basic(basic::AMQPMethod::Consume(consume))) => consume.consumer_tag,
        other => panic!("fake broker: expected basic.consume on 2, got {other:?}"),
    };
    peer.send_method(
        2,
        AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
            consumer_tag: tag.clone(),
        })),
    );
    // The publish on channel 1: method, header, one body frame.
    match peer.expect_method() {
        (1, AMQPClass::Basic(basic::AMQPMethod::Publish(_))) => {}
        other => panic!("fake broker: expected basic.publish on 1, got {other:?}"),
    }
    match peer.read_frame() {
        Some(AMQPFrame::Header(1, _)) => {}
        other => panic!("fake broker: expected the publish's header, got {other:?}"),
    }
    match peer.read_frame() {
        Some(AMQPFrame::Body(1, _)) => {}
        other => panic!("fake broker: expected the publish's body, got {other:?}"),
    }
    // The pile, on channel 2, nobody consuming it.
    let body_frames: Vec<u8> = vec![b'p'; MIB as usize]
        .chunks(131_072 - 8)
        .flat_map(|piece| Peer::encode(&AMQPFrame::Body(2, piece.to_vec())))
        .collect();
    peer.stream()
        .set_write_timeout(Some(STALL))
        .expect("write timeout");
    let mut messages = 0;
    let mut stalled = false;
    for delivery_tag in 1..=PILE_MESSAGES as u64 {
        let mut bytes = Peer::encode(&AMQPFrame::Method(
            2,
            AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                consumer_tag: tag.clone(),
                delivery_tag,
                redelivered: false,
                exchange: "".into(),
                routing_key: "pile".into(),
            })),
        ));
        bytes.extend(Peer::encode(&AMQPFrame::Header(
            2,
            AMQPContentHeader {
                class_id: 60,
                body_size: MIB,
                properties: amq_protocol::protocol::BasicProperties::default(),
            },
        )));
        let stream = peer.stream();
        if stream.write_all(&bytes).is_err() || stream.write_all(&body_frames).is_err() {
            stalled = true;
            break;
        }
        messages += 1;
    }
    let _ = pushed_tx.send(Pushed { messages, stalled });
    if stalled {
        // Half a frame may be on the wire: nothing more can be said on this connection.
        return;
    }
    let _ = peer.stream().set_write_timeout(None);
    peer.send_method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: 1,
            multiple: false,
        })),
    );
    // Keeps the socket open until the child exits.
    peer.drain();
}

/// One thread waits for a publisher confirm on channel A while the fake broker pushes
/// 300 x 1 MiB deliveries to a consumer on channel B that nobody consumes. A thread in a sync
/// wait must not switch inbound back-pressure off for every channel: the client must stop
/// reading once channel B holds its limit, whatever channel A waits for.
#[test]
fn thread_waiting_for_a_confirm_does_not_lift_back_pressure_on_another_channels_deliveries() {
    let report = measured_in_a_child(
        "thread_waiting_for_a_confirm_does_not_lift_back_pressure_on_another_channels_deliveries",
        |report| {
            let (pushed_tx, pushed_rx) = mpsc::channel();
            let (port, _fake) = spawn_fake(move |broker| {
                push_a_pile_while_a_confirm_is_outstanding(broker, pushed_tx)
            });
            let connection =
                Connection::open(client_params(port).with_rpc_timeout(Duration::from_secs(30)))
                    .expect("open");
            let waiter = connection.channel().expect("channel A");
            let consumer_channel = connection.channel().expect("channel B");
            waiter.confirm_delivery().expect("confirm mode");
            let consumer = consumer_channel
                .consume("pile", ConsumeOptions::default())
                .expect("consume");
            let (confirmed_tx, confirmed_rx) = mpsc::channel();
            thread::spawn(move || {
                let confirmed = waiter.basic_publish("", "q", b"confirm me");
                let _ = confirmed_tx.send(confirmed);
            });
            let pushed = pushed_rx
                .recv_timeout(Duration::from_secs(40))
                .expect("the fake broker's account of the push");
            // What was read and not yet routed settles.
            thread::sleep(Duration::from_millis(300));
            report.set("pushed_messages", pushed.messages);
            report.set("fake_stalled", pushed.stalled);
            report.set(
                "confirm_wait",
                match confirmed_rx.try_recv() {
                    Ok(result) => format!("{result:?}"),
                    Err(_) => "still waiting".to_string(),
                },
            );
            report.set("peak_bytes", peak_rss());
            std::mem::forget(consumer);
            std::mem::forget(consumer_channel);
            std::mem::forget(connection);
        },
    );
    let peak = report.bytes("peak_bytes");
    assert!(
        peak < PILE_BOUND,
        "peak resident size {} MiB, over the {} MiB bound, while one thread waited for a confirm \
         and {PILE_MESSAGES} x 1 MiB deliveries nobody consumed arrived on another channel \
         (child: {report})",
        peak / MIB,
        PILE_BOUND / MIB
    );
}

// ---------------------------------------------------------------------------------------------
// (c) Returned messages nobody handles
// ---------------------------------------------------------------------------------------------

/// Mandatory 1 MiB messages published to a queue that does not exist.
const RETURNED_MESSAGES: usize = 400;
/// The peak the child must stay under: tens of MiB for the client and what it keeps of the
/// returns; keeping every one of them takes 400 MiB.
const RETURNS_BOUND: u64 = 100 * MIB;

/// 400 mandatory, unroutable 1 MiB messages come back as basic.return on a channel with no
/// return callback. What the client keeps of them for a callback registered later must be
/// bounded in bytes, not only in count (10,000 messages of any size).
#[test]
fn unhandled_returned_messages_are_bounded_in_bytes_not_only_in_count() {
    let report = measured_in_a_child(
        "unhandled_returned_messages_are_bounded_in_bytes_not_only_in_count",
        |report| {
            let connection = support::connect();
            let channel = connection.channel().expect("channel");
            let nowhere = support::unique("no-such-queue");
            let body = vec![b'r'; MIB as usize];
            let started = Instant::now();
            for _ in 0..RETURNED_MESSAGES {
                channel
                    .basic_publish_with(
                        "",
                        &nowhere,
                        &body,
                        &PublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                    )
                    .expect("publishing");
            }
            // The broker answers this after every return of the publishes before it.
            support::exclusive_queue(&channel);
            report.set("publishing_ms", started.elapsed().as_millis());
            report.set("peak_bytes", peak_rss());
            std::mem::forget(channel);
            std::mem::forget(connection);
        },
    );
    let peak = report.bytes("peak_bytes");
    assert!(
        peak < RETURNS_BOUND,
        "peak resident size {} MiB, over the {} MiB bound, after {RETURNED_MESSAGES} x 1 MiB \
         unroutable mandatory messages came back with no return callback (child: {report})",
        peak / MIB,
        RETURNS_BOUND / MIB
    );
}

// ---------------------------------------------------------------------------------------------
// (d) The outbound buffer after one large publish
// ---------------------------------------------------------------------------------------------

/// The one large message.
const LARGE_BODY: usize = 64 * MIB as usize;
/// How far above what it was before the publish the resident size may stay once the publish is
/// written and the connection idled: a quarter of the message.
const SHRINK_MARGIN: u64 = 16 * MIB;

/// After one 64 MiB publish has gone out (and the caller dropped its body) and the connection
/// idled for a moment, the outbound buffers give the memory back: the resident size (VmRSS, not
/// the peak) settles near what it was before the publish.
#[test]
fn outbound_buffers_shrink_back_after_one_64_mib_publish() {
    let report = measured_in_a_child(
        "outbound_buffers_shrink_back_after_one_64_mib_publish",
        |report| {
            let connection = support::connect();
            let channel = connection.channel().expect("channel");
            let queue = support::exclusive_queue(&channel);
            // Confirm mode: a publish returns once the broker has the whole message.
            channel.confirm_delivery().expect("confirm mode");
            // Warm up: one small publish, so the buffers every connection keeps are in the
            // baseline.
            channel
                .basic_publish("", &queue, b"small")
                .expect("publishing");
            channel.queue_purge(&queue).expect("purge");
            report.set("before_bytes", current_rss());
            let body = vec![b'L'; LARGE_BODY];
            channel
                .basic_publish("", &queue, &body)
                .expect("publishing 64 MiB");
            drop(body);
            connection
                .sleep(Duration::from_millis(500))
                .expect("idling");
            report.set("after_idle_bytes", current_rss());
            report.set("peak_bytes", peak_rss());
            std::mem::forget(channel);
            std::mem::forget(connection);
        },
    );
    let before = report.bytes("before_bytes");
    let after = report.bytes("after_idle_bytes");
    assert!(
        after < before + SHRINK_MARGIN,
        "resident size {} MiB after a 64 MiB publish and 500 ms idle, {} MiB before it: the \
         outbound buffers kept the message's size (bound: before + {} MiB; child: {report})",
        after / MIB,
        before / MIB,
        SHRINK_MARGIN / MIB
    );
}
