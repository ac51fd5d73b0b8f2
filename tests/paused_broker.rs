//! A broker that stops answering (the real RabbitMQ, frozen with SIGSTOP): heartbeats detect it
//! and every waiter gets `HeartbeatTimeout`, and `close()` returns within its deadline (pika
//! #764). Its own test binary: freezing the broker stalls every connection to it.

mod support;

use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cottontail::{Connection, Error};

/// The pid of the process listening on the test broker's port.
fn broker_pid() -> String {
    let out = Command::new("ss")
        .args(["-ltnpH", &format!("sport = :{}", support::PORT)])
        .output()
        .expect("running ss");
    let text = String::from_utf8_lossy(&out.stdout);
    let pid = text
        .split("pid=")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("no process listens on {}: {text}", support::PORT));
    pid.to_string()
}

/// Freezes the broker until dropped (also when a test panics).
struct Frozen(String);

impl Frozen {
    /// Stops the broker and returns once every one of its threads is stopped.
    fn new() -> Frozen {
        let pid = broker_pid();
        assert!(Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success());
        let frozen = Frozen(pid);
        let started = Instant::now();
        while !frozen.all_threads_stopped() {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the broker (pid {}) did not stop",
                frozen.0
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        frozen
    }

    /// Every thread of the broker's process is in state `T` (stopped).
    fn all_threads_stopped(&self) -> bool {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.0)) else {
            return false;
        };
        tasks.flatten().all(|task| {
            // `pid (comm) S ...`: the state follows the last `)`.
            std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
            })
        })
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0]).status();
    }
}

/// A connection to the test broker with this heartbeat and RPC timeout.
fn connect(heartbeat: Option<u16>, rpc_timeout: Duration) -> Connection {
    Connection::open(
        support::params()
            .with_heartbeat(heartbeat)
            .with_rpc_timeout(rpc_timeout),
    )
    .unwrap()
}

/// The tests of this file take turns: each freezes the whole broker.
static FREEZE: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn frozen_broker_is_a_heartbeat_timeout_for_every_waiter() {
    let _turn = FREEZE.lock().unwrap_or_else(|p| p.into_inner());
    let connection = connect(Some(1), Duration::from_secs(30));
    let channel = connection.channel().unwrap();
    let queue = support::exclusive_queue(&channel);
    channel
        .basic_consume(&queue, |_, _, _, _| {}, Default::default())
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let consumer = channel.clone();
    std::thread::spawn(move || tx.send(consumer.start_consuming()).unwrap());
    let other = connection.channel().unwrap();

    let frozen = Frozen::new();
    let started = Instant::now();
    // An RPC whose reply never comes: the heartbeat, not the 30 s rpc_timeout, ends it.
    // (Exclusive: the broker may still run it once thawed, and must not keep the queue.)
    let err = other
        .queue_declare(
            "anything",
            cottontail::QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
        )
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        matches!(err, Error::HeartbeatTimeout { heartbeat: 1, .. }),
        "{err:?}"
    );
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    let consuming = rx
        .recv_timeout(Duration::from_secs(2))
        .expect("start_consuming returned");
    assert!(
        matches!(consuming, Err(Error::HeartbeatTimeout { .. })),
        "{consuming:?}"
    );
    assert!(connection.is_closed());
    drop(frozen);
}

#[test]
fn close_returns_within_its_deadline_while_the_broker_is_frozen() {
    let _turn = FREEZE.lock().unwrap_or_else(|p| p.into_inner());
    let connection = connect(Some(0), Duration::from_secs(2));
    let _channel = connection.channel().unwrap();
    let frozen = Frozen::new();
    // Open until the close: an `Ok` below would then be a close-ok from a frozen broker.
    assert!(connection.is_open(), "{:?}", connection.close_reason());
    let started = Instant::now();
    let result = connection.close();
    let elapsed = started.elapsed();
    drop(frozen);
    assert!(
        matches!(result, Err(Error::Timeout { .. })),
        "{result:?}, then the connection's close reason: {:?}",
        connection.close_reason()
    );
    assert!(elapsed < Duration::from_secs(4), "close took {elapsed:?}");
    assert!(connection.is_closed());
}

/// How many consumers the broker lists on `queue`.
fn broker_consumers(queue: &str) -> Option<usize> {
    support::rabbitmqctl(&["list_queues", "name", "consumers"])
        .lines()
        .find_map(|line| line.strip_prefix(queue)?.strip_prefix('\t'))
        .and_then(|n| n.trim().parse().ok())
}

/// A `basic_consume` that times out while the broker is frozen: once the broker runs again it
/// registers the consumer and answers late. The client must then end that consumer without
/// breaking anything: the connection and channel stay open, the broker is left with no
/// consumer, and the queue's messages are all ready again (none stuck unacknowledged).
/// Cancelling right behind the unanswered consume crashed RabbitMQ 3.10's channel process,
/// which closed the whole connection with 541.
#[test]
fn basic_consume_timed_out_on_a_frozen_broker_leaves_the_connection_and_queue_intact() {
    const MESSAGES: usize = 10;
    let _turn = FREEZE.lock().unwrap_or_else(|p| p.into_inner());
    let connection = connect(Some(0), Duration::from_secs(2));
    let channel = connection.channel().unwrap();
    let queue = support::unique("frozen-consume");
    channel.queue_declare(&queue, Default::default()).unwrap();
    let _cleanup = support::consuming::Cleanup(vec![queue.clone()]);
    for i in 0..MESSAGES {
        channel
            .basic_publish("", &queue, i.to_string().as_bytes())
            .unwrap();
    }
    assert_eq!(support::message_count(&connection, &queue), MESSAGES as u32);

    let tag = || cottontail::BasicConsumeOptions {
        consumer_tag: Some(format!("{queue}-consumer")),
        ..Default::default()
    };
    let frozen = Frozen::new();
    let consumed = channel.basic_consume(&queue, |_, _, _, _| {}, tag());
    // The broker may still register that tag: a second consume with it would be refused
    // (530, closing the channel), so the client refuses it while the reply is due.
    let again = channel.basic_consume(&queue, |_, _, _, _| {}, tag());
    drop(frozen);
    assert!(
        matches!(consumed, Err(Error::Timeout { .. })),
        "basic_consume on a frozen broker: {consumed:?}"
    );
    assert!(
        matches!(&again, Err(Error::DuplicateConsumerTag(t)) if *t == format!("{queue}-consumer")),
        "basic_consume again with the same tag while the first one's reply is due: {again:?}"
    );

    // The late consume-ok and the deliveries that follow it arrive while the client idles.
    let settled = support::eventually(Duration::from_secs(15), || {
        if let Err(e) = connection.process_data_events(Duration::from_millis(200)) {
            panic!("the connection failed after the late consume-ok: {e:?}");
        }
        broker_consumers(&queue) == Some(0) && support::broker_counts(&queue) == Some((MESSAGES, 0))
    });
    assert!(
        settled,
        "the broker shows {:?} consumers and (ready, unacked) {:?}; expected 0 and \
         ({MESSAGES}, 0)",
        broker_consumers(&queue),
        support::broker_counts(&queue)
    );
    assert!(connection.is_open(), "{:?}", connection.close_reason());
    assert!(channel.is_open());
    // The channel still works: its next RPC is answered, not taken by the late reply.
    let ok = channel
        .queue_declare(&queue, support::consuming::passive())
        .unwrap();
    assert_eq!(ok.message_count, MESSAGES as u32);
    // Once the late reply came (and the consumer was cancelled), the tag is free again.
    channel
        .basic_consume(&queue, |_, _, _, _| {}, tag())
        .unwrap();
    assert!(support::eventually(Duration::from_secs(5), || {
        broker_consumers(&queue) == Some(1)
    }));
}
