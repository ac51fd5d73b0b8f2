//! How channels end and what may follow: a channel the broker closes while the client closes
//! it too (the two closes cross), its number opened again at once, a consumer callback that
//! panics, and a write to a socket the broker reset in a process that did not ignore SIGPIPE.
//! Against a real RabbitMQ, except for the reset (the scripted fake broker of
//! tests/support/fake_broker.rs). Every scenario runs under a watchdog, so a hang fails the
//! test with a message instead of stalling the run.

mod support;

#[path = "support/fake_broker.rs"]
mod fake_broker;

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{basic, AMQPClass};
use cottontail::{BasicConsumeOptions, Connection, Error};
use support::consuming::{named_queue, passive, Cleanup};
use support::{connect, eventually, panic_text, unique, within};

/// Ready messages in `queue`, seen from a separate connection.
fn ready_in(queue: &str) -> u32 {
    let connection = connect();
    let count = connection
        .channel()
        .unwrap()
        .queue_declare(queue, passive())
        .unwrap()
        .message_count;
    connection.close().unwrap();
    count
}

// ---------------------------------------------------------------------------------------------
// A close that crosses the broker's
// ---------------------------------------------------------------------------------------------

/// Each round: a new channel, a passive declare on it (it works), a publish to a missing
/// exchange (the broker closes the channel with 404, asynchronously), then `close()` at once,
/// so that the client's channel.close and the broker's usually cross on the wire.
#[test]
fn closing_a_channel_the_broker_is_closing_returns_ok_and_the_next_channel_works_2000_times() {
    const ROUNDS: usize = 2000;
    let mut cleanup = Cleanup(Vec::new());
    let queue = named_queue(&mut cleanup, "crossed-close");
    let missing = unique("no-such-exchange");
    let result = within(Duration::from_secs(60), "the 2,000 rounds", move || {
        let connection = connect();
        for round in 0..ROUNDS {
            let channel = connection
                .channel()
                .map_err(|e| format!("round {round}: channel() failed: {e:?}"))?;
            let number = channel.channel_number();
            channel.queue_declare(&queue, passive()).map_err(|e| {
                format!("round {round}: queue_declare on the new channel {number} failed: {e:?}")
            })?;
            channel
                .basic_publish(&missing, "k", b"x")
                .map_err(|e| format!("round {round}: basic_publish failed: {e:?}"))?;
            channel.close().map_err(|e| {
                format!("round {round}: close() of channel {number}, which the broker closes with 404, failed: {e:?}")
            })?;
        }
        assert!(connection.is_open(), "{:?}", connection.close_reason());
        connection
            .close()
            .map_err(|e| format!("closing the connection: {e:?}"))
    });
    if let Err(message) = result {
        panic!("{message}");
    }
}

/// As above, but the next channel asks for the very number just closed: it must open (at
/// once, or once the broker's late close-ok for the old channel came) and work; that late
/// close-ok must not close it.
#[test]
fn channel_number_opened_again_after_a_crossed_close_opens_and_works() {
    const ROUNDS: usize = 500;
    let mut cleanup = Cleanup(Vec::new());
    let queue = named_queue(&mut cleanup, "same-number");
    let missing = unique("no-such-exchange");
    let result = within(Duration::from_secs(60), "the 500 rounds", move || {
        let connection = connect();
        let number = 7;
        for round in 0..ROUNDS {
            let channel = connection.channel_with_number(number).map_err(|e| {
                format!("round {round}: channel_with_number({number}) failed: {e:?}")
            })?;
            assert_eq!(channel.channel_number(), number);
            channel.queue_declare(&queue, passive()).map_err(|e| {
                format!("round {round}: queue_declare on the reopened channel {number}: {e:?}")
            })?;
            match channel.basic_get(&queue, true) {
                Ok(None) => {}
                other => {
                    return Err(format!(
                        "round {round}: basic_get of the empty queue on the reopened channel: {other:?}"
                    ))
                }
            }
            channel
                .basic_publish(&missing, "k", b"x")
                .map_err(|e| format!("round {round}: basic_publish failed: {e:?}"))?;
            channel
                .close()
                .map_err(|e| format!("round {round}: close() failed: {e:?}"))?;
        }
        connection
            .close()
            .map_err(|e| format!("closing the connection: {e:?}"))
    });
    if let Err(message) = result {
        panic!("{message}");
    }
}

/// What RabbitMQ does only now and then, played by the fake broker: the broker's
/// channel.close crosses ours, and its answer to ours comes late or never. The number is
/// shadowed meanwhile: `channel()` takes another one, `channel_with_number` waits for the
/// late close-ok or, if none comes, for the shadow's end (about 2 s); a late close-ok closes
/// nothing (not the next channel on the number, still waiting for its open-ok), and the
/// connection stays open.
#[test]
fn a_late_or_missing_close_ok_after_crossed_closes_shadows_the_number_and_closes_nothing() {
    use amq_protocol::protocol::{channel as ch, connection};
    let close_ok = || AMQPClass::Channel(ch::AMQPMethod::CloseOk(ch::CloseOk {}));
    /// The broker crosses the client's close on `number` and reads its close-ok to that.
    fn cross(peer: &mut fake_broker::Peer, number: u16) {
        match peer.expect_method() {
            (n, AMQPClass::Channel(ch::AMQPMethod::Close(_))) if n == number => {}
            other => panic!("fake broker: expected channel.close on {number}, got {other:?}"),
        }
        let not_found = ch::Close {
            reply_code: 404,
            reply_text: "NOT_FOUND - no exchange 'x'".into(),
            class_id: 60,
            method_id: 40,
        };
        peer.send_method(number, AMQPClass::Channel(ch::AMQPMethod::Close(not_found)));
        match peer.expect_method() {
            (n, AMQPClass::Channel(ch::AMQPMethod::CloseOk(_))) if n == number => {}
            other => panic!("fake broker: expected channel.close-ok on {number}, got {other:?}"),
        }
    }
    let (port, fake) = fake_broker::spawn_fake(move |broker| {
        let mut peer = broker.accept_and_handshake(0, 131_072);
        peer.open_channel(1);
        // Our answer to the client's close on 1 never comes.
        cross(&mut peer, 1);
        // channel() passes the shadowed 1 by.
        peer.open_channel(2);
        // channel_with_number(1), once the shadow ended: a late close-ok (for nothing of
        // the client's) before the open-ok.
        match peer.expect_method() {
            (1, AMQPClass::Channel(ch::AMQPMethod::Open(_))) => {}
            other => panic!("fake broker: expected channel.open on 1, got {other:?}"),
        }
        peer.send_method(1, close_ok());
        peer.send_method(1, AMQPClass::Channel(ch::AMQPMethod::OpenOk(ch::OpenOk {})));
        cross(&mut peer, 1);
        // Our answer to this close comes, late: on the free number.
        peer.send_method(1, close_ok());
        peer.open_channel(1);
        peer.expect_qos(1);
        peer.send_method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
        );
        let code = match peer.expect_method() {
            (0, AMQPClass::Connection(connection::AMQPMethod::Close(c))) => c.reply_code,
            other => panic!("fake broker: expected connection.close, got {other:?}"),
        };
        peer.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
        );
        code
    });
    within(Duration::from_secs(20), "the scenario", move || {
        // An rpc_timeout beyond the shadow's 2 s, which channel_with_number waits out first.
        let params = fake_broker::client_params(port).with_rpc_timeout(Duration::from_secs(5));
        let connection = Connection::open(params).expect("connecting to the fake");
        let first = connection.channel_with_number(1).expect("channel 1");
        first.close().expect("closing channel 1 (crossed)");
        let other = connection.channel().expect("channel() while 1 is shadowed");
        assert_eq!(
            other.channel_number(),
            2,
            "channel() takes a number not shadowed"
        );
        let asked = Instant::now();
        let second = connection
            .channel_with_number(1)
            .expect("channel 1 again, once its shadow ended");
        let waited = asked.elapsed();
        assert!(
            waited >= Duration::from_millis(1500),
            "channel_with_number(1) opened after {waited:?}, before the shadow of a close-ok that never came ended"
        );
        assert!(
            second.is_open(),
            "the late close-ok closed the new channel 1"
        );
        second
            .close()
            .expect("closing the second channel 1 (crossed)");
        let asked = Instant::now();
        let third = connection
            .channel_with_number(1)
            .expect("channel 1 a third time, after the late close-ok");
        let waited = asked.elapsed();
        assert!(
            waited < Duration::from_millis(1500),
            "channel_with_number(1) waited {waited:?}: the late close-ok did not lift the shadow"
        );
        third
            .basic_qos(cottontail::QosOptions {
                prefetch_count: 1,
                ..Default::default()
            })
            .expect("basic.qos on the third channel 1");
        assert!(third.is_open(), "the third channel 1 is open");
        assert!(connection.is_open(), "{:?}", connection.close_reason());
        connection.close().expect("closing the connection");
    });
    assert_eq!(
        fake_broker::join(fake),
        200,
        "the client's connection.close"
    );
}

/// The plain order: the broker's close arrives first, then the client closes the closed
/// channel (no error), and a new channel works.
#[test]
fn closing_a_channel_the_broker_already_closed_returns_ok_and_a_new_channel_works() {
    let mut cleanup = Cleanup(Vec::new());
    let queue = named_queue(&mut cleanup, "closed-first");
    let missing = unique("no-such-exchange");
    within(Duration::from_secs(20), "the scenario", move || {
        let connection = connect();
        for _ in 0..20 {
            let channel = connection.channel().expect("channel()");
            channel
                .basic_publish(&missing, "k", b"x")
                .expect("basic_publish");
            assert!(
                eventually(Duration::from_secs(5), || channel.is_closed()),
                "the broker did not close the channel"
            );
            assert_eq!(channel.close(), Ok(()));
            let next = connection.channel().expect("the next channel()");
            next.queue_declare(&queue, passive())
                .expect("queue_declare on the next channel");
            next.close().expect("closing the next channel");
        }
        connection.close().expect("closing the connection");
    });
}

// ---------------------------------------------------------------------------------------------
// A consumer callback that panics
// ---------------------------------------------------------------------------------------------

/// Three messages, manual acks; the callback panics on the first delivery. After the panic
/// (caught around `start_consuming`, or turned into its `Err`), `start_consuming` again runs
/// the callback for messages 2 and 3, which it acks; message 1 (never acked) is back in the
/// queue once the connection closes: nothing is lost.
#[test]
fn consumer_callback_that_panicked_once_still_gets_the_next_deliveries() {
    let mut cleanup = Cleanup(Vec::new());
    let queue = named_queue(&mut cleanup, "panicking-callback");
    let connection = connect();
    let channel = connection.channel().unwrap();
    support::publish_numbered(&channel, &queue, 1..4);
    assert!(
        eventually(Duration::from_secs(5), || ready_in(&queue) == 3),
        "the three messages did not reach the queue"
    );

    let panicked = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    {
        let (panicked, acked) = (panicked.clone(), acked.clone());
        channel
            .basic_consume(
                &queue,
                move |ch, method, _properties, body| -> cottontail::Result<()> {
                    if !panicked.swap(true, Ordering::SeqCst) {
                        panic!("deliberate panic in the consumer callback");
                    }
                    let number = u32::from_be_bytes(body.try_into().expect("a 4-byte body"));
                    ch.basic_ack(method.delivery_tag, false)?;
                    let mut acked = acked.lock().unwrap();
                    acked.insert(number);
                    if acked.contains(&2) && acked.contains(&3) {
                        ch.stop_consuming(None)?;
                    }
                    Ok(())
                },
                BasicConsumeOptions::default(),
            )
            .unwrap();
    }

    let first = channel.clone();
    let outcome = within(
        Duration::from_secs(10),
        "the first start_consuming",
        move || match catch_unwind(AssertUnwindSafe(|| first.start_consuming())) {
            Ok(result) => Ok(result),
            Err(payload) => Err(panic_text(&*payload)),
        },
    );
    assert!(
        panicked.load(Ordering::SeqCst),
        "the callback never ran: {outcome:?}"
    );
    assert!(
        !matches!(outcome, Ok(Ok(()))),
        "start_consuming returned Ok(()) although the callback panicked and no consumer was cancelled"
    );

    let second = channel.clone();
    let again = within(
        Duration::from_secs(10),
        "start_consuming after the callback's panic (the callback did not get messages 2 and 3)",
        move || second.start_consuming(),
    );
    assert_eq!(again, Ok(()), "the second start_consuming");
    let acked_now = acked.lock().unwrap().clone();
    assert!(
        acked_now.contains(&2) && acked_now.contains(&3),
        "the callback acked {acked_now:?}; messages 2 and 3 must reach it"
    );

    connection.close().unwrap();
    let expected_ready = 3 - acked_now.len() as u32;
    let mut ready = 0;
    let settled = eventually(Duration::from_secs(5), || {
        ready = ready_in(&queue);
        ready == expected_ready
    });
    assert!(
        settled,
        "after the connection closed the queue holds {ready} messages; with {acked_now:?} acked it must hold {expected_ready}"
    );
}

// ---------------------------------------------------------------------------------------------
// A write to a socket the broker reset
// ---------------------------------------------------------------------------------------------

/// Selects the child role of [`write_to_a_reset_socket_is_an_error_not_a_sigpipe_death`].
const SIGPIPE_CHILD: &str = "COTTONTAIL_TEST_SIGPIPE_CHILD";
/// What the child prints once a publish failed.
const CHILD_SAW_ERROR: &str = "sigpipe-child: publish failed";

/// Rust's runtime ignores SIGPIPE for its binaries, but a library also lives in hosts that do
/// not (a C program, a Python extension). The test binary runs itself again as such a host: the
/// child restores SIGPIPE's default action (death), connects to a fake broker that resets the
/// socket (SO_LINGER 0, then close) while the child publishes from several threads, and must
/// see the failure as an `Err`, then exit normally, not be killed by signal 13.
#[test]
fn write_to_a_reset_socket_is_an_error_not_a_sigpipe_death() {
    if std::env::var_os(SIGPIPE_CHILD).is_some() {
        sigpipe_child();
        return;
    }
    use std::os::unix::process::ExitStatusExt;
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut child = Command::new(exe)
        .env(SIGPIPE_CHILD, "1")
        .args([
            "--exact",
            "write_to_a_reset_socket_is_an_error_not_a_sigpipe_death",
            "--nocapture",
            "--test-threads=1",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running the test binary again as the child");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the child") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the child did not finish within 30 s (hung)");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let output = child.wait_with_output().expect("the child's output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        status.signal() != Some(libc::SIGPIPE),
        "the child was killed by SIGPIPE writing to the reset socket\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        status.success(),
        "the child failed: {status:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains(CHILD_SAW_ERROR),
        "the child never saw a publish fail\nstdout:\n{stdout}"
    );
}

/// The child's side: many rounds (each a new connection that the fake resets while three
/// threads publish), so that a write landing after the reset is all but certain.
fn sigpipe_child() {
    // SAFETY: restoring the default action of one signal; no handler runs Rust code.
    let previous = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    assert_ne!(previous, libc::SIG_ERR, "signal(SIGPIPE, SIG_DFL) failed");
    // Which write lands first after the reset is a race: a round takes some 10 ms, and one in
    // about ten ends with a write that raises SIGPIPE in the current code.
    const ROUNDS: usize = 100;
    for round in 0..ROUNDS {
        let (port, fake) = fake_broker::spawn_fake(|broker| {
            let mut peer = broker.accept_and_handshake(0, 131_072);
            peer.open_channel(1);
            // Let the publishers get going, then reset the socket under them.
            let mut publishes = 0;
            while publishes < 200 {
                match peer.read_frame() {
                    Some(AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Publish(_)))) => {
                        publishes += 1
                    }
                    Some(_) => {}
                    None => panic!("fake broker: the client went away before publishing"),
                }
            }
            socket2::SockRef::from(&*peer.stream())
                .set_linger(Some(Duration::ZERO))
                .expect("SO_LINGER 0");
            // Dropping the socket with linger 0 (and unread bytes) sends an RST.
            drop(peer);
        });
        let connection =
            Connection::open(fake_broker::client_params(port)).expect("connecting to the fake");
        let channel = connection.channel().expect("channel()");
        let failures: Vec<Option<Error>> = thread::scope(|scope| {
            let publishers: Vec<_> = (0..3)
                .map(|_| {
                    let channel = channel.clone();
                    scope.spawn(move || {
                        let body = vec![0u8; 1024];
                        let started = Instant::now();
                        while started.elapsed() < Duration::from_millis(1500) {
                            if let Err(e) = channel.basic_publish("", "q", &body) {
                                return Some(e);
                            }
                        }
                        None
                    })
                })
                .collect();
            publishers
                .into_iter()
                .map(|p| p.join().expect("a publisher thread panicked"))
                .collect()
        });
        fake_broker::join(fake);
        let error = failures
            .into_iter()
            .flatten()
            .next()
            .unwrap_or_else(|| panic!("round {round}: no publish failed after the reset"));
        println!("{CHILD_SAW_ERROR} (round {round}): {error:?}");
    }
}
