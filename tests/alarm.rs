//! A broker memory alarm: connection.blocked / unblocked reach the callbacks. Its own test
//! binary, because the alarm blocks every publisher of the broker while it lasts.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cottontail::BasicProperties;
use support::{connect, rabbitmqctl};

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
        .basic_publish(
            "",
            &queue,
            b"during the alarm",
            &BasicProperties::default(),
            false,
        )
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

#[test]
fn blocked_connection_timeout_tears_down_the_connection_and_wakes_publishers() {
    let _turn = one_alarm_at_a_time();
    let connection = cottontail::Connection::open(
        support::params().blocked_connection_timeout(Some(Duration::from_secs(1))),
    )
    .unwrap();
    let channel = connection.channel().unwrap();
    let queue = support::exclusive_queue(&channel);
    let _restore = RestoreWatermark;
    rabbitmqctl(&["set_vm_memory_high_watermark", "0.0000001"]);
    channel
        .basic_publish("", &queue, b"first", &BasicProperties::default(), false)
        .unwrap();
    let started = Instant::now();
    // Once blocked, this publish waits, then gets the timeout.
    let mut result = Ok(());
    while result.is_ok() && started.elapsed() < Duration::from_secs(10) {
        result = channel.basic_publish("", &queue, b"more", &BasicProperties::default(), false);
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
}

#[test]
fn close_returns_within_its_deadline_while_the_broker_blocks() {
    let _turn = one_alarm_at_a_time();
    let connection =
        cottontail::Connection::open(support::params().rpc_timeout(Duration::from_secs(2)))
            .unwrap();
    let channel = connection.channel().unwrap();
    let queue = support::exclusive_queue(&channel);
    let _restore = RestoreWatermark;
    rabbitmqctl(&["set_vm_memory_high_watermark", "0.0000001"]);
    channel
        .basic_publish(
            "",
            &queue,
            b"during the alarm",
            &BasicProperties::default(),
            false,
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !connection.is_blocked() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(connection.is_blocked());
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
