//! Many threads on one connection, and many threads on one channel, against a real RabbitMQ:
//! every message arrives exactly once, intact, and synchronous methods on a shared channel
//! get their own replies.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use cottontail::{
    ConnectionParameters, ConsumeOptions, Consumed, QosOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use support::methods::{broker_view, passive};
use support::{connect, eventually, unique};

/// Deletes the test's queues when it ends, even when it fails.
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        // No panics here: this may run while a failed test unwinds.
        let params = ConnectionParameters::new(support::HOST).with_port(support::PORT);
        let Ok(connection) = cottontail::Connection::open(params) else {
            return;
        };
        for queue in &self.0 {
            if let Ok(channel) = connection.channel() {
                let _ = channel.queue_delete(queue, QueueDeleteOptions::default());
            }
        }
        let _ = connection.close();
    }
}

/// Parses the `"<thread>:<seq>"` id at the start of a body (what follows may be binary).
fn parse(body: &[u8]) -> (usize, usize) {
    let mut fields = body.splitn(3, |&b| b == b':');
    let mut number = || {
        fields
            .next()
            .and_then(|f| std::str::from_utf8(f).ok())
            .and_then(|f| f.parse().ok())
    };
    match (number(), number()) {
        (Some(thread), Some(seq)) => (thread, seq),
        _ => panic!("malformed body starting {:?}", &body[..body.len().min(32)]),
    }
}

#[test]
fn sixteen_publisher_and_four_consumer_threads_on_one_connection_deliver_each_message_once() {
    const PUBLISHERS: usize = 16;
    const PER_PUBLISHER: usize = 500;
    const CONSUMERS: usize = 4;
    const TOTAL: usize = PUBLISHERS * PER_PUBLISHER;

    let connection = connect();
    let queue = unique("many-threads");
    let _cleanup = Cleanup(vec![queue.clone()]);
    connection
        .channel()
        .unwrap()
        .queue_declare(&queue, QueueDeclareOptions::default())
        .unwrap();

    let seen = Arc::new(Mutex::new(HashSet::new()));
    let duplicates = Arc::new(AtomicUsize::new(0));
    let received = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(20);

    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|_| {
            let connection = connection.clone();
            let queue = queue.clone();
            let seen = seen.clone();
            let duplicates = duplicates.clone();
            let received = received.clone();
            thread::spawn(move || {
                let channel = connection.channel().unwrap();
                channel
                    .basic_qos(QosOptions {
                        prefetch_count: 50,
                        ..Default::default()
                    })
                    .unwrap();
                let mut consumer = channel
                    .consume(
                        &queue,
                        ConsumeOptions {
                            inactivity_timeout: Some(Duration::from_millis(100)),
                            ..Default::default()
                        },
                    )
                    .unwrap();
                // Per publisher, this consumer sees a subsequence of the queue: increasing.
                let mut last_seq: BTreeMap<usize, usize> = BTreeMap::new();
                let mut out_of_order = 0;
                while received.load(Ordering::SeqCst) < TOTAL && Instant::now() < deadline {
                    match consumer.next() {
                        Some(Ok(Consumed::Delivery(d))) => {
                            let (publisher, seq) = parse(&d.body);
                            if last_seq
                                .insert(publisher, seq)
                                .is_some_and(|prev| prev >= seq)
                            {
                                out_of_order += 1;
                            }
                            if !seen.lock().unwrap().insert((publisher, seq)) {
                                duplicates.fetch_add(1, Ordering::SeqCst);
                            }
                            channel.basic_ack(d.method.delivery_tag, false).unwrap();
                            received.fetch_add(1, Ordering::SeqCst);
                        }
                        Some(Ok(Consumed::Inactive)) => {}
                        other => panic!("consumer: unexpected {other:?}"),
                    }
                }
                let requeued = consumer.cancel().unwrap();
                channel.close().unwrap();
                (requeued, out_of_order)
            })
        })
        .collect();

    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|publisher| {
            let connection = connection.clone();
            let queue = queue.clone();
            thread::spawn(move || {
                let channel = connection.channel().unwrap();
                for seq in 0..PER_PUBLISHER {
                    channel
                        .basic_publish("", &queue, format!("{publisher}:{seq}").as_bytes())
                        .unwrap();
                }
                channel.close().unwrap();
            })
        })
        .collect();

    for publisher in publishers {
        publisher.join().expect("publisher thread");
    }
    for consumer in consumers {
        let (requeued, out_of_order) = consumer.join().expect("consumer thread");
        assert_eq!(requeued, 0, "messages left waiting at the end");
        assert_eq!(out_of_order, 0, "a publisher's messages out of order");
    }
    assert_eq!(duplicates.load(Ordering::SeqCst), 0, "duplicate deliveries");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), TOTAL, "distinct messages received");
    let expected: HashSet<(usize, usize)> = (0..PUBLISHERS)
        .flat_map(|p| (0..PER_PUBLISHER).map(move |s| (p, s)))
        .collect();
    assert!(*seen == expected, "unexpected message ids");
    assert_eq!(received.load(Ordering::SeqCst), TOTAL);
    // Every consumer channel is closed, so anything not acked would be ready again.
    let view = broker_view(&queue);
    assert_eq!((view.message_count, view.consumer_count), (0, 0));
    assert!(connection.is_open());
    connection.close().unwrap();
}

/// The body of message `seq` of thread `thread`: an id, then filler derived from both, long
/// enough for every 25th message to span several frames (frame_max is 128 KiB).
fn shared_channel_body(thread: usize, seq: usize) -> Vec<u8> {
    let mut body = format!("{thread}:{seq}:").into_bytes();
    let filler = if seq.is_multiple_of(25) { 300_000 } else { 64 };
    body.extend((0..filler).map(|k| ((thread * 31 + seq * 7 + k) % 251) as u8));
    body
}

#[test]
fn eight_threads_publishing_on_one_shared_channel_deliver_each_message_once_and_intact() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 250;
    const TOTAL: usize = THREADS * PER_THREAD;

    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = unique("shared-channel");
    let _cleanup = Cleanup(vec![queue.clone()]);
    channel
        .queue_declare(&queue, QueueDeclareOptions::default())
        .unwrap();
    let start = Arc::new(Barrier::new(THREADS));
    let publishers: Vec<_> = (0..THREADS)
        .map(|thread| {
            let channel = channel.clone();
            let queue = queue.clone();
            let start = start.clone();
            thread::spawn(move || {
                start.wait();
                for seq in 0..PER_THREAD {
                    channel
                        .basic_publish("", &queue, &shared_channel_body(thread, seq))
                        .unwrap();
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.join().expect("publisher thread");
    }
    assert!(
        eventually(Duration::from_secs(10), || channel
            .queue_declare(&queue, passive())
            .unwrap()
            .message_count
            == TOTAL as u32),
        "the broker holds {} messages",
        broker_view(&queue).message_count
    );
    assert!(channel.is_open());

    // Read them back on another connection.
    let reader = connect();
    let reading = reader.channel().unwrap();
    let consumer = reading
        .consume(
            &queue,
            ConsumeOptions {
                auto_ack: true,
                inactivity_timeout: Some(Duration::from_secs(2)),
                ..Default::default()
            },
        )
        .unwrap();
    let mut seen = HashSet::new();
    let mut last_seq: BTreeMap<usize, usize> = BTreeMap::new();
    for item in consumer {
        let delivery = match item.unwrap() {
            Consumed::Delivery(d) => d,
            _ => break,
        };
        let (thread, seq) = parse(&delivery.body);
        assert!(
            delivery.body == shared_channel_body(thread, seq),
            "body of {thread}:{seq} corrupted ({} bytes)",
            delivery.body.len()
        );
        assert!(seen.insert((thread, seq)), "{thread}:{seq} delivered twice");
        // One thread's publishes are sequential, so they reach the queue in order.
        if let Some(prev) = last_seq.insert(thread, seq) {
            assert!(prev < seq, "thread {thread}: {seq} after {prev}");
        }
        if seen.len() == TOTAL {
            break;
        }
    }
    assert_eq!(seen.len(), TOTAL);
    assert_eq!(broker_view(&queue).message_count, 0);
    reader.close().unwrap();
    connection.close().unwrap();
}

#[test]
fn eight_threads_doing_queue_declare_on_one_shared_channel_each_get_their_own_reply() {
    const THREADS: usize = 8;
    const DECLARES: usize = 25;

    let connection = connect();
    let channel = connection.channel().unwrap();
    let queues: Vec<String> = (0..THREADS).map(|_| unique("shared-rpc")).collect();
    let _cleanup = Cleanup(queues.clone());
    // Queue i holds i + 1 messages, so each reply says whose it is.
    for (i, queue) in queues.iter().enumerate() {
        channel
            .queue_declare(queue, QueueDeclareOptions::default())
            .unwrap();
        for _ in 0..=i {
            channel.basic_publish("", queue, b"x").unwrap();
        }
    }
    for (i, queue) in queues.iter().enumerate() {
        assert!(eventually(Duration::from_secs(5), || {
            broker_view(queue).message_count == i as u32 + 1
        }));
    }
    let start = Arc::new(Barrier::new(THREADS));
    let workers: Vec<_> = queues
        .iter()
        .enumerate()
        .map(|(i, queue)| {
            let channel = channel.clone();
            let queue = queue.clone();
            let start = start.clone();
            thread::spawn(move || {
                start.wait();
                for round in 0..DECLARES {
                    let options = if round % 2 == 0 {
                        QueueDeclareOptions::default()
                    } else {
                        passive()
                    };
                    let ok = channel.queue_declare(&queue, options).unwrap();
                    assert_eq!(
                        (ok.queue.as_str(), ok.message_count, ok.consumer_count),
                        (queue.as_str(), i as u32 + 1, 0),
                        "round {round}"
                    );
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker thread");
    }
    assert!(channel.is_open());
    channel.close().unwrap();
    connection.close().unwrap();
}
