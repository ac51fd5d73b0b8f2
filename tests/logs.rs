//! What the logs hold. Secrets never reach them: everything cottontail logs at every level
//! while it connects (with a good and a wrong password), works and closes is captured and
//! searched. Messages nobody will get are reported there. Its own test binary, because the
//! logger is process-wide.

mod support;

use std::sync::Mutex;

use cottontail::{BasicConsumeOptions, Connection, ConsumeOptions, Consumed, PlainCredentials};
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

/// A channel with an `auto_ack` consumer of `queue` that nobody runs, and the words the logs
/// name that channel with ("channel N").
fn idle_auto_ack_consumer(connection: &Connection, queue: &str) -> (cottontail::Channel, String) {
    let consuming = connection.channel().unwrap();
    consuming
        .basic_consume(
            queue,
            |_, _, _, _| -> () { panic!("nobody runs this consumer") },
            BasicConsumeOptions {
                auto_ack: true,
                ..Default::default()
            },
        )
        .unwrap();
    let words = format!("channel {}", consuming.channel_number());
    (consuming, words)
}

/// Runs the tests that count log lines one at a time, each reading only what was logged
/// since it started (channel numbers repeat across connections).
static COUNTING: Mutex<()> = Mutex::new(());

/// Where the captured logs end now.
fn log_mark() -> usize {
    CAPTURED.lock().unwrap().len()
}

/// What was logged since `mark`.
fn logged_since(mark: usize) -> String {
    CAPTURED.lock().unwrap()[mark..].to_string()
}

/// The number in the first log line holding all of `words`, just before `unit` ("... 9
/// message(s)").
fn logged_count(captured: &str, words: &[&str], unit: &str) -> Option<usize> {
    let line = captured
        .lines()
        .find(|l| words.iter().all(|w| l.contains(w)))?;
    let before = &line[..line.find(unit)?];
    before.split_whitespace().last()?.parse().ok()
}

/// `stop_consuming` of an `auto_ack` callback consumer drops what it received and had not
/// handed out (as pika does); a warning names how many, since the broker no longer holds
/// them.
#[test]
fn stop_consuming_an_auto_ack_consumer_reports_the_messages_it_drops() {
    capture();
    let _one_at_a_time = COUNTING.lock().unwrap_or_else(|p| p.into_inner());
    let mark = log_mark();
    let connection = support::connect();
    let channel = connection.channel().unwrap();
    let queue = support::exclusive_queue(&channel);
    const N: usize = 200;
    support::publish_numbered(&channel, &queue, 0..N as u32);
    let tag = unique("stopped-consumer");
    let handed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = handed.clone();
    channel
        .basic_consume(
            &queue,
            move |ch, _, _, _| -> cottontail::Result<()> {
                if counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                    // Everything else arrives meanwhile.
                    std::thread::sleep(std::time::Duration::from_millis(500));
                    ch.stop_consuming(None)?;
                }
                Ok(())
            },
            BasicConsumeOptions {
                auto_ack: true,
                consumer_tag: Some(tag.clone()),
                ..Default::default()
            },
        )
        .unwrap();
    channel.start_consuming().unwrap();
    let handed = handed.load(std::sync::atomic::Ordering::SeqCst);
    let left = support::message_count(&connection, &queue) as usize;
    let dropped = N - handed - left;
    assert!(
        dropped > 0,
        "nothing was in hand: handed {handed}, left {left}"
    );
    let captured = logged_since(mark);
    assert_eq!(
        logged_count(&captured, &[&tag, "WARN", "auto-acked"], "auto-acked"),
        Some(dropped),
        "no warning names the {dropped} dropped messages:\n{captured}"
    );
    connection.close().unwrap();
}

/// Messages of an `auto_ack` consumer that arrive after the application's `close()` of the
/// channel was sent (before its close-ok) are dropped like those queued when it was sent,
/// and logged like them: every message the broker counts delivered and nobody got is in a
/// log line.
#[test]
fn auto_acked_messages_arriving_while_the_channel_closes_are_reported() {
    capture();
    let _one_at_a_time = COUNTING.lock().unwrap_or_else(|p| p.into_inner());
    let mark = log_mark();
    let connection = support::connect();
    let channel = connection.channel().unwrap();
    let queue = support::named_queue(&channel, "closing-auto-ack");
    const N: usize = 3000;
    let body = vec![7u8; 32 * 1024];
    for _ in 0..N {
        channel.basic_publish("", &queue, &body).unwrap();
    }
    let (consuming, channel_words) = idle_auto_ack_consumer(&connection, &queue);
    // Some arrive (nobody consumes them); close with many more on their way.
    std::thread::sleep(std::time::Duration::from_millis(300));
    consuming.close().unwrap();
    let left = support::message_count(&connection, &queue) as usize;
    assert!(left < N, "the broker sent nothing");
    let captured = logged_since(mark);
    let queued = logged_count(
        &captured,
        &[&channel_words, "not yet handed out"],
        "deliveries",
    )
    .unwrap_or(0);
    let late = logged_count(
        &captured,
        &[&channel_words, "after the application closed"],
        "message(s)",
    )
    .unwrap_or(0);
    assert_eq!(
        queued + late,
        N - left,
        "the broker sent {} messages; the logs report {queued} queued at the close and {late} \
         after it:\n{captured}",
        N - left
    );
    channel.queue_delete(&queue, Default::default()).unwrap();
    connection.close().unwrap();
}

/// A channel dropped after its connection was closed, with `auto_ack` messages it received
/// and nobody took: they are gone with it, and a log line says how many.
#[test]
fn auto_acked_messages_held_by_a_channel_dropped_after_its_connection_closed_are_reported() {
    capture();
    let _one_at_a_time = COUNTING.lock().unwrap_or_else(|p| p.into_inner());
    let mark = log_mark();
    let connection = support::connect();
    let channel = connection.channel().unwrap();
    let queue = support::named_queue(&channel, "dropped-after-close");
    const N: usize = 50;
    support::publish_numbered(&channel, &queue, 0..N as u32);
    let (consuming, channel_words) = idle_auto_ack_consumer(&connection, &queue);
    let other = support::connect();
    assert!(
        support::eventually(std::time::Duration::from_secs(5), || {
            support::message_count(&other, &queue) == 0
        }),
        "the broker did not send them all"
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    connection.close().unwrap();
    drop(consuming);
    let captured = logged_since(mark);
    assert_eq!(
        logged_count(
            &captured,
            &[&channel_words, "not yet handed out"],
            "deliveries"
        ),
        Some(N),
        "no log line reports the {N} messages:\n{captured}"
    );
    drop(channel);
    other
        .channel()
        .unwrap()
        .queue_delete(&queue, Default::default())
        .unwrap();
}
