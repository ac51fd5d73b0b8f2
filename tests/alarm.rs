//! A broker memory alarm: connection.blocked / unblocked reach the callbacks, a consumer
//! that republishes from its callback gets through an alarm (or fails with the blocked
//! connection timeout) instead of hanging, and an `RpcClient` call whose request cannot go out
//! returns at its own deadline. Its own test binary, because the alarm blocks every
//! publisher of the broker while it lasts; its tests take turns.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cottontail::PublishOptions;
use support::{broker_counts, connect, rabbitmqctl};

/// The alarm is broker-wide: the tests of this file take turns.
static ALARM: Mutex<()> = Mutex::new(());

fn one_alarm_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ALARM.lock().unwrap_or_else(|p| p.into_inner())
}

struct RestoreWatermark;

impl Drop for RestoreWatermark {
    fn drop(&mut self) {
        rabbitmqctl(&["set_vm_memory_high_watermark", "0.4"]);
    }
}

/// Waits up to 10 s for `connection.is_blocked()` to become `blocked`; returns whether it did.
fn blocked_within_10_s(connection: &cottontail::Connection, blocked: bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while connection.is_blocked() != blocked && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    connection.is_blocked() == blocked
}

/// A connection with `rpc_timeout` 2 s that the broker blocked (a memory alarm, then a publish
/// to an exclusive queue), its channel, and the guard that lifts the alarm.
fn blocked_connection() -> (
    cottontail::Connection,
    cottontail::Channel,
    RestoreWatermark,
) {
    let connection =
        cottontail::Connection::open(support::params().with_rpc_timeout(Duration::from_secs(2)))
            .unwrap();
    let channel = connection.channel().unwrap();
    let queue = support::exclusive_queue(&channel);
    let restore = RestoreWatermark;
    rabbitmqctl(&["set_vm_memory_high_watermark", "0.0000001"]);
    channel
        .basic_publish("", &queue, b"during the alarm")
        .unwrap();
    assert!(
        blocked_within_10_s(&connection, true),
        "no connection.blocked within 10 s"
    );
    (connection, channel, restore)
}

#[test]
fn memory_alarm_blocks_then_unblocks_the_connection_with_callbacks() {
    let _turn = one_alarm_at_a_time();
    let connection = connect();
    let events = Arc::new(Mutex::new(Vec::new()));
    {
        let events = events.clone();
        connection.add_on_connection_blocked_callback(move |_, reason| {
            events.lock().unwrap().push(format!("blocked: {reason}"));
        });
    }
    {
        let events = events.clone();
        connection.add_on_connection_unblocked_callback(move |_| {
            events.lock().unwrap().push("unblocked".to_string());
        });
    }
    let channel = connection.channel().unwrap();
    let queue = support::exclusive_queue(&channel);
    let _restore = RestoreWatermark;
    rabbitmqctl(&["set_vm_memory_high_watermark", "0.0000001"]);
    // RabbitMQ blocks a connection when it publishes during the alarm.
    channel
        .basic_publish("", &queue, b"during the alarm")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !connection.is_blocked() && Instant::now() < deadline {
        connection
            .process_data_events(Duration::from_millis(100))
            .unwrap();
    }
    assert!(connection.is_blocked(), "no connection.blocked within 10 s");
    connection.process_data_events(Duration::ZERO).unwrap();
    rabbitmqctl(&["set_vm_memory_high_watermark", "0.4"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while connection.is_blocked() && Instant::now() < deadline {
        connection
            .process_data_events(Duration::from_millis(100))
            .unwrap();
    }
    connection.process_data_events(Duration::ZERO).unwrap();
    let events = events.lock().unwrap().clone();
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(
        events[0].starts_with("blocked: low on memory"),
        "{events:?}"
    );
    assert_eq!(events[1], "unblocked");
    // The message published during the alarm arrives once it is lifted.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = None;
    while got.is_none() && Instant::now() < deadline {
        got = channel.basic_get(&queue, true).unwrap();
    }
    assert_eq!(got.expect("the message").body, b"during the alarm");
    connection.close().unwrap();
}

/// A blocked callback's error ends the `process_data_events` that ran it, with the original
/// error as source; the connection goes on (and the unblocked callback still runs later).
#[test]
fn a_blocked_callbacks_error_ends_process_data_events() {
    use std::error::Error as _;
    let _turn = one_alarm_at_a_time();
    let connection = connect();
    connection.add_on_connection_blocked_callback(|_, reason| {
        Err(std::io::Error::other(format!("blocked: {reason}")))
    });
    let unblocked = Arc::new(Mutex::new(false));
    {
        let unblocked = unblocked.clone();
        connection.add_on_connection_unblocked_callback(move |_| {
            *unblocked.lock().unwrap() = true;
        });
    }
    let channel = connection.channel().unwrap();
    let queue = support::exclusive_queue(&channel);
    let _restore = RestoreWatermark;
    rabbitmqctl(&["set_vm_memory_high_watermark", "0.0000001"]);
    channel
        .basic_publish("", &queue, b"during the alarm")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let err = loop {
        match connection.process_data_events(Duration::from_millis(100)) {
            Ok(()) if Instant::now() < deadline => {}
            Ok(()) => panic!("no blocked callback error within 10 s"),
            Err(e) => break e,
        }
    };
    let source = err.source().map(ToString::to_string).unwrap_or_default();
    assert!(
        matches!(err, cottontail::Error::Callback(_))
            && source.starts_with("blocked: low on memory"),
        "{err:?}"
    );
    assert!(connection.is_open());
    rabbitmqctl(&["set_vm_memory_high_watermark", "0.4"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !*unblocked.lock().unwrap() && Instant::now() < deadline {
        connection
            .process_data_events(Duration::from_millis(100))
            .unwrap();
    }
    assert!(
        *unblocked.lock().unwrap(),
        "the unblocked callback still runs"
    );
    connection.close().unwrap();
}

#[test]
fn blocked_connection_timeout_tears_down_the_connection_and_wakes_publishers() {
    let _turn = one_alarm_at_a_time();
    let connection = cottontail::Connection::open(
        support::params().with_blocked_connection_timeout(Some(Duration::from_secs(1))),
    )
    .unwrap();
    let channel = connection.channel().unwrap();
    let queue = support::exclusive_queue(&channel);
    let _restore = RestoreWatermark;
    rabbitmqctl(&["set_vm_memory_high_watermark", "0.0000001"]);
    channel.basic_publish("", &queue, b"first").unwrap();
    let started = Instant::now();
    // Once blocked, this publish waits, then gets the timeout.
    let mut result = Ok(());
    while result.is_ok() && started.elapsed() < Duration::from_secs(10) {
        result = channel.basic_publish("", &queue, b"more");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        result,
        Err(cottontail::Error::ConnectionBlockedTimeout {
            after: Duration::from_secs(1)
        })
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(connection.is_closed());
    assert!(
        !connection.is_blocked(),
        "a closed connection is not blocked"
    );
}

#[test]
fn close_returns_within_its_deadline_while_the_broker_blocks() {
    let _turn = one_alarm_at_a_time();
    let (connection, _channel, _restore) = blocked_connection();
    let started = Instant::now();
    let result = connection.close();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert!(connection.is_closed());
    // The broker never read our close, so it never answered: the deadline is reported.
    assert!(
        matches!(result, Err(cottontail::Error::Timeout { .. })),
        "{result:?}"
    );
}

/// While the broker blocks the connection, an `RpcClient` call's request cannot go out: the call
/// returns `Error::Timeout` at its own deadline (1 s), not when the connection is unblocked
/// (there is no `blocked_connection_timeout`). The alarm is lifted even if the test fails
/// (`RestoreWatermark`).
#[test]
fn an_rpc_call_returns_at_its_deadline_while_the_broker_blocks_the_connection() {
    let _turn = one_alarm_at_a_time();
    let connection =
        cottontail::Connection::open(support::params().with_rpc_timeout(Duration::from_secs(30)))
            .unwrap();
    let channel = connection.channel().unwrap();
    let queue = support::exclusive_queue(&channel);
    let client = cottontail::RpcClient::new(&connection).unwrap();
    let _restore = RestoreWatermark;
    rabbitmqctl(&["set_vm_memory_high_watermark", "0.0000001"]);
    // RabbitMQ blocks a connection when it publishes during the alarm.
    channel
        .basic_publish("", &queue, b"during the alarm")
        .unwrap();
    assert!(
        blocked_within_10_s(&connection, true),
        "no connection.blocked within 10 s"
    );
    let timeout = Duration::from_secs(1);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let started = Instant::now();
        let result = client.call(
            "",
            &queue,
            b"a request",
            cottontail::CallOptions {
                timeout: Some(timeout),
                ..Default::default()
            },
        );
        let _ = tx.send((result, started.elapsed()));
    });
    let (result, took) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the call did not return within 10 s while the connection was blocked");
    assert!(
        matches!(result, Err(cottontail::Error::Timeout { after, .. }) if after == timeout),
        "{result:?}"
    );
    assert!(
        took >= timeout && took < timeout + Duration::from_millis(1500),
        "a call with a timeout of {timeout:?} returned after {took:?}"
    );
    assert!(connection.is_blocked());
    drop(_restore);
    blocked_within_10_s(&connection, false);
    connection.close().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Publishing from a consumer callback while the broker blocks the connection
// ---------------------------------------------------------------------------------------------

/// Messages prefilled for the consumer: 400 x 100 KiB, 40 MiB, well past the 16 MiB a channel
/// buffers before the client stops reading the socket.
const BACKLOG: usize = 400;
const BACKLOG_BODY: usize = 100 * 1024;
/// How long a consuming test may take before it counts as hung.
const WATCHDOG: Duration = Duration::from_secs(30);

/// A connection (from `params`) with one channel, a source queue holding the backlog (published
/// on a second, confirmed channel of the same connection before any alarm) and an empty target
/// queue, both exclusive. Returns (connection, channel, source, target).
fn connection_with_a_backlog(
    params: cottontail::ConnectionParameters,
) -> (cottontail::Connection, cottontail::Channel, String, String) {
    let connection = cottontail::Connection::open(params).unwrap();
    let channel = connection.channel().unwrap();
    let source = support::exclusive_queue(&channel);
    let target = support::exclusive_queue(&channel);
    let publisher = connection.channel().unwrap();
    publisher.confirm_delivery().unwrap();
    for i in 0..BACKLOG {
        let mut body = vec![b'b'; BACKLOG_BODY];
        body[..4].copy_from_slice(&(i as u32).to_be_bytes());
        publisher
            .basic_publish_deferred("", &source, &body, &PublishOptions::default())
            .unwrap();
    }
    let confirmed = publisher
        .wait_for_confirms(Some(Duration::from_secs(30)))
        .unwrap();
    assert!(confirmed.nacked.is_empty());
    publisher.close().unwrap();
    (connection, channel, source, target)
}

/// Starts a manual-ack consumer on `source` whose callback republishes each message to
/// `target`, then acks it, and stops consuming after the whole backlog; runs `start_consuming`
/// on a thread of its own. Returns how many were republished so far and where the result of
/// `start_consuming` arrives.
fn republish_on_a_thread(
    channel: &cottontail::Channel,
    source: &str,
    target: &str,
) -> (
    Arc<std::sync::atomic::AtomicUsize>,
    std::sync::mpsc::Receiver<cottontail::Result<()>>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let republished = Arc::new(AtomicUsize::new(0));
    let count = republished.clone();
    let target = target.to_string();
    channel
        .basic_consume(
            source,
            move |ch, method, properties, body| -> cottontail::Result<()> {
                ch.basic_publish_with(
                    "",
                    &target,
                    body,
                    &PublishOptions {
                        properties: (*properties).clone(),
                        ..Default::default()
                    },
                )?;
                ch.basic_ack(method.delivery_tag, false)?;
                if count.fetch_add(1, Ordering::SeqCst) + 1 == BACKLOG {
                    ch.stop_consuming(None)?;
                }
                Ok(())
            },
            Default::default(),
        )
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let consuming = channel.clone();
    std::thread::spawn(move || {
        let _ = tx.send(consuming.start_consuming());
    });
    (republished, rx)
}

/// A consumer (manual ack, no prefetch limit) on a queue holding 40 MiB republishes every
/// message from its callback; meanwhile the broker raises a memory alarm, which blocks the
/// connection (connection.blocked), and lifts it 2 s later. The callback's publish waits while
/// the connection is blocked, but the client must go on reading meanwhile (deliveries pile up
/// past the channel's 16 MiB, and connection.unblocked comes behind them): every message is
/// consumed and republished once the alarm is lifted.
#[test]
fn publishing_from_a_consumer_callback_through_a_memory_alarm_republishes_every_message() {
    use std::sync::atomic::Ordering;
    let _turn = one_alarm_at_a_time();
    let (connection, channel, source, target) = connection_with_a_backlog(support::params());
    let _restore = RestoreWatermark;
    // Raised before consuming: the callback's first publish gets the connection blocked.
    rabbitmqctl(&["set_vm_memory_high_watermark", "0.0000001"]);
    let watcher = connection.clone();
    let lifter = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !watcher.is_blocked() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let seen_blocked = watcher.is_blocked();
        std::thread::sleep(Duration::from_secs(2));
        rabbitmqctl(&["set_vm_memory_high_watermark", "0.4"]);
        seen_blocked
    });
    let (republished, result) = republish_on_a_thread(&channel, &source, &target);
    let outcome = result.recv_timeout(WATCHDOG);
    let seen_blocked = lifter.join().unwrap();
    match outcome {
        Ok(result) => assert_eq!(
            result,
            Ok(()),
            "start_consuming failed after {} of {BACKLOG} messages were republished \
             (connection.blocked seen: {seen_blocked})",
            republished.load(Ordering::SeqCst)
        ),
        Err(_) => panic!(
            "the consumer hung: {} of {BACKLOG} messages republished after {WATCHDOG:?} \
             (connection.blocked seen: {seen_blocked}, still blocked for the client: {}); the \
             alarm was lifted 2 s after the block",
            republished.load(Ordering::SeqCst),
            connection.is_blocked()
        ),
    }
    assert!(
        seen_blocked,
        "the broker never blocked the connection: the scenario did not happen"
    );
    assert_eq!(republished.load(Ordering::SeqCst), BACKLOG);
    let mut counts = (None, None);
    let settled = support::eventually(Duration::from_secs(10), || {
        counts = (broker_counts(&target), broker_counts(&source));
        counts == (Some((BACKLOG, 0)), Some((0, 0)))
    });
    assert!(
        settled,
        "the broker holds (ready, unacked) {:?} in the target and {:?} in the source; \
         expected ({BACKLOG}, 0) and (0, 0)",
        counts.0, counts.1
    );
    connection.close().unwrap();
}

/// The same consumer, with `blocked_connection_timeout` of 2 s and an alarm that outlasts it:
/// the callback's publish, waiting on the blocked connection while deliveries pile up, ends
/// with `ConnectionBlockedTimeout` about 2 s after the block, and so does `start_consuming`.
#[test]
fn publish_in_a_consumer_callback_blocked_past_blocked_connection_timeout_ends_with_that_error() {
    use std::sync::atomic::Ordering;
    let _turn = one_alarm_at_a_time();
    let blocked_timeout = Duration::from_secs(2);
    let (connection, channel, source, target) = connection_with_a_backlog(
        support::params().with_blocked_connection_timeout(Some(blocked_timeout)),
    );
    let _restore = RestoreWatermark;
    rabbitmqctl(&["set_vm_memory_high_watermark", "0.0000001"]);
    let started = Instant::now();
    let (republished, result) = republish_on_a_thread(&channel, &source, &target);
    // The block comes with the callback's first publish, right after consuming starts.
    let slack = Duration::from_secs(4);
    let watchdog = blocked_timeout + slack + Duration::from_secs(15);
    let result = result.recv_timeout(watchdog).unwrap_or_else(|_| {
        panic!(
            "the consumer hung: start_consuming did not return within {watchdog:?} with \
             blocked_connection_timeout {blocked_timeout:?} ({} of {BACKLOG} messages \
             republished; blocked for the client: {}, closed: {})",
            republished.load(Ordering::SeqCst),
            connection.is_blocked(),
            connection.is_closed()
        )
    });
    let elapsed = started.elapsed();
    assert_eq!(
        result,
        Err(cottontail::Error::ConnectionBlockedTimeout {
            after: blocked_timeout
        }),
        "after {elapsed:?}, {} of {BACKLOG} messages republished",
        republished.load(Ordering::SeqCst)
    );
    assert!(
        elapsed < blocked_timeout + slack,
        "ConnectionBlockedTimeout came {elapsed:?} after consuming started (timeout \
         {blocked_timeout:?})"
    );
    assert!(connection.is_closed());
}

/// In confirm mode, a publish whose confirm the broker holds back while it blocks the
/// connection waits for the unblock (its `rpc_timeout` counts without the time blocked) and
/// returns `Ok`: the message is in the queue once, and the caller was not told to publish it
/// again. Before, it failed with `Timeout` after `rpc_timeout` although the broker then took
/// the message (a caller retrying on a timeout published it twice).
#[test]
fn a_confirmed_publish_waits_through_a_memory_alarm_for_its_confirm() {
    let _turn = one_alarm_at_a_time();
    let rpc_timeout = Duration::from_secs(2);
    let connection =
        cottontail::Connection::open(support::params().with_rpc_timeout(rpc_timeout)).unwrap();
    let channel = connection.channel().unwrap();
    let queue = support::exclusive_queue(&channel);
    channel.confirm_delivery().unwrap();
    let _restore = RestoreWatermark;
    rabbitmqctl(&["set_vm_memory_high_watermark", "0.0000001"]);
    // Lifts the alarm twice `rpc_timeout` after the broker blocked the connection.
    let lifter = {
        let connection = connection.clone();
        std::thread::spawn(move || {
            let blocked = blocked_within_10_s(&connection, true);
            std::thread::sleep(2 * rpc_timeout);
            rabbitmqctl(&["set_vm_memory_high_watermark", "0.4"]);
            blocked
        })
    };
    let started = Instant::now();
    let published = channel.basic_publish("", &queue, b"through the alarm");
    let took = started.elapsed();
    assert!(lifter.join().unwrap(), "no connection.blocked within 10 s");
    assert_eq!(published, Ok(()), "the publish returned after {took:?}");
    assert!(
        took > rpc_timeout,
        "the confirm came after {took:?}, before the unblock: the broker did not hold it back"
    );
    let declared = channel
        .queue_declare(&queue, support::consuming::passive())
        .unwrap();
    assert_eq!(declared.message_count, 1);
}

/// With recovery on, a connection lost while the broker blocked it comes back unblocked, and
/// the unblocked callbacks hear it (the broker never sends connection.unblocked on the new
/// connection, which it never blocked): an application that paused its publishers on the
/// blocked callback may resume. Before, the blocked callback ran and the unblocked one never
/// did.
#[test]
fn a_connection_lost_while_blocked_reports_unblocked_once_recovered() {
    let _turn = one_alarm_at_a_time();
    let name = support::unique("blocked-lost");
    let connection = cottontail::Connection::open(
        support::params()
            .with_connection_name(&name)
            .with_recovery(cottontail::RecoveryPolicy::default()),
    )
    .unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    {
        let events = events.clone();
        connection.add_on_connection_blocked_callback(move |_, _| {
            events.lock().unwrap().push("blocked");
        });
    }
    {
        let events = events.clone();
        connection.add_on_connection_unblocked_callback(move |_| {
            events.lock().unwrap().push("unblocked");
        });
    }
    let channel = connection.channel().unwrap();
    let queue = support::exclusive_queue(&channel);
    let restore = RestoreWatermark;
    rabbitmqctl(&["set_vm_memory_high_watermark", "0.0000001"]);
    channel
        .basic_publish("", &queue, b"during the alarm")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while events.lock().unwrap().is_empty() && Instant::now() < deadline {
        connection
            .process_data_events(Duration::from_millis(100))
            .unwrap();
    }
    assert_eq!(*events.lock().unwrap(), ["blocked"]);

    let pids = support::broker_connections_named(&name);
    assert_eq!(pids.len(), 1, "{pids:?}");
    rabbitmqctl(&["close_connection", &pids[0], "test: lost while blocked"]);
    drop(restore);
    connection
        .wait_for_recovery(Duration::from_secs(15))
        .expect("the connection recovers");
    let deadline = Instant::now() + Duration::from_secs(10);
    while events.lock().unwrap().len() < 2 && Instant::now() < deadline {
        connection
            .process_data_events(Duration::from_millis(100))
            .unwrap();
    }
    assert_eq!(*events.lock().unwrap(), ["blocked", "unblocked"]);
    assert!(!connection.is_blocked());
    connection.close().unwrap();
}

/// A publish waiting while the broker blocks the connection stops with
/// `ChannelClosedByClient` as soon as another thread closes its channel, instead of waiting
/// for the unblock (for ever without `blocked_connection_timeout`); the close itself gets no
/// close-ok from a broker that reads nothing and times out. Before, the publish waited until
/// the alarm was lifted.
#[test]
fn closing_the_channel_of_a_publish_held_by_connection_blocked_releases_it() {
    let _turn = one_alarm_at_a_time();
    let (connection, channel, restore) = blocked_connection();
    let publishing = {
        let channel = channel.clone();
        std::thread::spawn(move || {
            let result = channel.basic_publish("", "", b"held");
            (result, Instant::now())
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(!publishing.is_finished(), "the publish was not held");
    // Lifts the alarm once the publish returned, or 8 s from now whatever happens, so that a
    // publish still held fails the assertion below instead of hanging the test.
    let (returned_tx, returned_rx) = std::sync::mpsc::channel::<()>();
    let lifter = std::thread::spawn(move || {
        let _ = returned_rx.recv_timeout(Duration::from_secs(8));
        drop(restore);
    });
    let closing = Instant::now();
    let closed = channel.close();
    let (published, returned) = publishing.join().unwrap();
    let _ = returned_tx.send(());
    lifter.join().unwrap();
    assert_eq!(
        published,
        Err(cottontail::Error::ChannelClosedByClient {
            reply_code: 0,
            reply_text: "Normal shutdown".into()
        })
    );
    let waited = returned.saturating_duration_since(closing);
    assert!(
        waited < Duration::from_millis(1500),
        "the publish returned {waited:?} after the close began (the close: {closed:?})"
    );
    assert!(blocked_within_10_s(&connection, false));
    connection.close().unwrap();
}
