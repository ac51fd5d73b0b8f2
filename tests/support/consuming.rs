//! Helpers for the tests of consuming threads that read the socket themselves
//! (tests/consumer_reads.rs, tests/input_lending.rs): consumers on threads of their own that
//! report through channels, making the consuming thread the socket's reader, cleanup.

use std::sync::{mpsc, Mutex};
use std::thread::{self, ThreadId};
use std::time::Duration;

use cottontail::{
    BoxError, Channel, Connection, ConnectionParameters, Consumed, Consumer, QueueDeclareOptions,
};

/// What a consumer thread reports: each item its iterator yields, then `None` once it ended.
pub type Item = Option<cottontail::Result<Consumed>>;

/// Iterates `consumer` on a thread of its own, sending every item (and the final `None`);
/// returns the thread's id and where the items arrive.
pub fn iterate_on_a_thread(mut consumer: Consumer) -> (ThreadId, mpsc::Receiver<Item>) {
    let (tx, rx) = mpsc::channel();
    let handle = thread::spawn(move || loop {
        let item = consumer.next();
        let end = item.is_none();
        if tx.send(item).is_err() || end {
            break;
        }
    });
    (handle.thread().id(), rx)
}

/// Runs `start_consuming` on a thread of its own; returns the thread's id and where its result
/// arrives.
pub fn start_consuming_on_a_thread(
    channel: &Channel,
) -> (ThreadId, mpsc::Receiver<cottontail::Result<()>>) {
    let (tx, rx) = mpsc::channel();
    let channel = channel.clone();
    let handle = thread::spawn(move || {
        let _ = tx.send(channel.start_consuming());
    });
    (handle.thread().id(), rx)
}

pub fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

pub fn publish(channel: &Channel, queue: &str, body: &[u8]) {
    channel.basic_publish("", queue, body).expect("publishing");
}

/// Lets a consumer that was just started settle into waiting (reading the socket).
pub fn settle() {
    thread::sleep(Duration::from_millis(300));
}

/// Makes sure the consumer on `consumer_thread` waits by reading the socket itself: a consumer
/// whose wait began while the I/O thread held the reading half (it keeps it for a moment after
/// routing the reply that let `consume`/`basic_consume` return) sleeps until an event instead.
/// A threadsafe callback is such an event: it runs on the consuming thread (checked), and the
/// wait that follows starts by taking the idle reading half.
pub fn nudge(connection: &Connection, consumer_thread: ThreadId) {
    settle();
    let (tx, rx) = mpsc::channel();
    connection
        .add_callback_threadsafe(move || {
            let _ = tx.send(thread::current().id());
        })
        .expect("queueing a threadsafe callback");
    let ran_on = rx
        .recv_timeout(Duration::from_secs(2))
        .expect("a threadsafe callback ran within 2 s");
    assert_eq!(
        ran_on, consumer_thread,
        "the threadsafe callback ran on another thread"
    );
    settle();
}

/// Deletes the test's named queues when it ends, even when it fails.
#[derive(Default)]
pub struct Cleanup(pub Vec<String>);

/// Declares a plain (non-exclusive) queue named after `prefix` on a connection of its own,
/// deleted when `cleanup` drops.
pub fn named_queue(cleanup: &mut Cleanup, prefix: &str) -> String {
    let queue = super::unique(prefix);
    let connection = super::connect();
    connection
        .channel()
        .unwrap()
        .queue_declare(&queue, QueueDeclareOptions::default())
        .unwrap();
    connection.close().unwrap();
    cleanup.0.push(queue.clone());
    queue
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // No panics here: this may run while a failed test unwinds.
        let params = ConnectionParameters::new(super::HOST).with_port(super::PORT);
        let Ok(connection) = Connection::open(params) else {
            return;
        };
        for queue in &self.0 {
            if let Ok(channel) = connection.channel() {
                let _ = channel.queue_delete(queue, Default::default());
            }
        }
        let _ = connection.close();
    }
}

/// Records the big-endian `u32` counter in `body` and checks that it is the next one expected
/// (messages numbered from 0 must arrive in order); the callback's error otherwise.
pub fn record_in_order(received: &Mutex<Vec<u32>>, body: &[u8]) -> Result<u32, BoxError> {
    let n = u32::from_be_bytes(
        body.try_into()
            .map_err(|_| format!("a body of {} bytes", body.len()))?,
    );
    let mut got = received.lock().unwrap_or_else(|p| p.into_inner());
    let expected = got.len() as u32;
    got.push(n);
    if n != expected {
        return Err(format!("message {n} arrived when {expected} was expected").into());
    }
    Ok(n)
}

/// Waits (at most `within`) for `start_consuming` to return Ok after a consumer fed by
/// [`record_in_order`] got messages 0..`n`, and checks that it got exactly those, in order.
pub fn expect_all_in_order(
    result: &mpsc::Receiver<cottontail::Result<()>>,
    received: &Mutex<Vec<u32>>,
    n: u32,
    within: Duration,
) {
    let outcome = result.recv_timeout(within).unwrap_or_else(|_| {
        panic!(
            "start_consuming did not return; {} of {n} received",
            received.lock().unwrap_or_else(|p| p.into_inner()).len()
        )
    });
    outcome.expect("start_consuming ended with an error");
    let got = received.lock().unwrap_or_else(|p| p.into_inner());
    assert_eq!(*got, (0..n).collect::<Vec<_>>());
}
