//! What the logs hold. Secrets never reach them: everything cottontail logs at every level
//! while it connects (with a good and a wrong password), works and closes is captured and
//! searched. Messages nobody will get are reported there. Its own test binary, because the
//! logger is process-wide.

mod support;

use std::sync::Mutex;

use cottontail::{Connection, ConsumeOptions, Consumed, PlainCredentials};
use support::{params, rabbitmqctl, unique};

static CAPTURED: Mutex<String> = Mutex::new(String::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        let mut captured = CAPTURED.lock().unwrap();
        captured.push_str(&format!("{} {}\n", record.level(), record.args()));
    }
    fn flush(&self) {}
}

/// Installs the capturing logger once for the tests of this binary.
fn capture() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        log::set_logger(&Capture).unwrap();
        log::set_max_level(log::LevelFilter::Trace);
    });
}

#[test]
fn passwords_appear_in_no_log_record_at_any_level() {
    capture();
    let user = unique("log-user");
    let password = format!("pw-{}", unique("secret"));
    let wrong = format!("wrong-{}", unique("secret"));
    rabbitmqctl(&["add_user", &user, &password]);
    rabbitmqctl(&["set_permissions", "-p", "/", &user, ".*", ".*", ".*"]);

    let url = format!("amqp://{user}:{password}@127.0.0.1:5672/%2f?heartbeat=5");
    let connection = Connection::open_url(&url).unwrap();
    let channel = connection.channel().unwrap();
    let queue = support::exclusive_queue(&channel);
    channel.basic_publish("", &queue, b"logged?").unwrap();
    assert!(channel.basic_get(&queue, true).unwrap().is_some());
    connection.close().unwrap();
    let refused = Connection::open(
        params()
            .with_credentials(PlainCredentials::new(user.as_str(), wrong.as_str()))
            .with_connection_attempts(2)
            .with_retry_delay(std::time::Duration::from_millis(10)),
    );
    assert!(refused.is_err());
    rabbitmqctl(&["delete_user", &user]);

    let captured = CAPTURED.lock().unwrap().clone();
    assert!(
        captured.contains("TRACE") && captured.contains("WARN"),
        "the logger saw too little to prove anything:\n{captured}"
    );
    assert!(
        !captured.contains(&password),
        "the password was logged:\n{captured}"
    );
    assert!(
        !captured.contains(&wrong),
        "the wrong password was logged:\n{captured}"
    );
}

/// An `auto_ack` iterator dropped with messages received but not yet yielded: the broker no
/// longer holds them, and they are not dropped silently (a warning names how many).
#[test]
fn an_auto_ack_iterator_dropped_with_messages_in_hand_reports_them() {
    capture();
    let connection = support::connect();
    let channel = connection.channel().unwrap();
    let queue = support::exclusive_queue(&channel);
    support::publish_numbered(&channel, &queue, 0..10);
    let tag = unique("dropped-consumer");
    let mut consumer = channel
        .consume(
            &queue,
            ConsumeOptions {
                auto_ack: true,
                consumer_tag: Some(tag.clone()),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(matches!(consumer.next(), Some(Ok(Consumed::Delivery(_)))));
    assert!(
        support::eventually(std::time::Duration::from_secs(5), || {
            consumer.waiting_message_count() == 9
        }),
        "the other nine did not arrive"
    );
    drop(consumer);
    assert_eq!(support::message_count(&connection, &queue), 0);
    let captured = CAPTURED.lock().unwrap().clone();
    let line = captured
        .lines()
        .find(|l| l.contains(&tag) && l.contains("auto-acked"))
        .unwrap_or_else(|| panic!("no log line reports the dropped messages:\n{captured}"));
    assert!(
        line.starts_with("WARN") && line.contains("dropping 9 "),
        "{line}"
    );
    connection.close().unwrap();
}
