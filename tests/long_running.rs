//! What a service that runs for months does to the process: many cycles of opening and closing
//! (or dropping) connections, channels and consumers (`long_running_events.rs` has RPC clients,
//! connections the broker closes, heartbeats, timers and callbacks). Each test measures the
//! process's open file descriptors, threads and resident size, and what the broker still
//! lists, before and after (see `support/longrun.rs`).
//!
//! Each test runs in a process of its own: it re-runs this test binary with only itself
//! selected and `COTTONTAIL_LONGRUN_CHILD=<name>`, so no other test's threads or sockets are
//! counted. The child prints `REPORT` lines; the parent forwards them and fails when the child
//! does. Assertions are on counts (with slack for allocator noise on RSS), never on timings.
//!
//! Linux only (/proc/self).

#[path = "support/longrun.rs"]
mod longrun;
mod support;

use std::time::Duration;

use cottontail::{
    BasicConsumeOptions, Connection, ConsumeOptions, Consumed, Error, QueueDeleteOptions,
};
use longrun::*;
use support::{broker_connections_named, eventually, named_queue, params, unique};

// ---------------------------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------------------------

const CONNECTIONS: usize = 1000;

#[test]
fn open_close_1000_connections() {
    in_child("open_close_1000_connections", || {
        warm_up();
        let name = unique("open-close");
        let before = snapshot();
        for _ in 0..CONNECTIONS {
            let c = Connection::open(params().with_connection_name(&name)).unwrap();
            c.close().unwrap();
        }
        let after = settled_snapshot(before.threads, Duration::from_secs(5));
        report("1000 x open + close", before, after);
        assert!(eventually(Duration::from_secs(10), || {
            broker_connections_named(&name).is_empty()
        }));
        assert_eq!(after.io_threads, 0);
        assert!(after.fds <= before.fds);
        assert!(after.threads <= before.threads);
        assert!(after.rss_kib - before.rss_kib < 8 * MIB);
    });
}

#[test]
fn open_drop_1000_connections() {
    in_child("open_drop_1000_connections", || {
        warm_up();
        let name = unique("open-drop");
        let before = snapshot();
        for _ in 0..CONNECTIONS {
            let c = Connection::open(params().with_connection_name(&name)).unwrap();
            drop(c);
        }
        let after = settled_snapshot(before.threads, Duration::from_secs(5));
        report("1000 x open + drop", before, after);
        let listed = broker_connections_named(&name).len();
        println!("REPORT broker lists {listed} of the dropped connections");
        assert!(eventually(Duration::from_secs(10), || {
            broker_connections_named(&name).is_empty()
        }));
        assert_eq!(after.io_threads, 0);
        assert!(after.fds <= before.fds);
        assert!(after.threads <= before.threads);
        assert!(after.rss_kib - before.rss_kib < 8 * MIB);
    });
}

// ---------------------------------------------------------------------------------------------
// Channels
// ---------------------------------------------------------------------------------------------

#[test]
fn channel_open_close_and_drop_5000() {
    in_child("channel_open_close_and_drop_5000", || {
        warm_up();
        let name = unique("channels");
        let c = Connection::open(params().with_connection_name(&name)).unwrap();
        for _ in 0..50 {
            c.channel().unwrap().close().unwrap();
        }
        let before = snapshot();
        for _ in 0..5000 {
            let ch = c.channel().unwrap();
            ch.close().unwrap();
        }
        let mid = snapshot();
        report("5000 x channel open + close", before, mid);
        assert_eq!(broker_channels_of(&name), vec![0]);
        let mut highest = 0;
        for _ in 0..5000 {
            let ch = c.channel().unwrap();
            highest = highest.max(ch.channel_number());
            drop(ch);
        }
        let after = snapshot();
        report("5000 x channel open + drop", mid, after);
        println!("REPORT highest channel number used while dropping: {highest}");
        assert!(
            eventually(Duration::from_secs(10), || broker_channels_of(&name)
                == vec![0]),
            "broker still lists {:?} channels",
            broker_channels_of(&name)
        );
        assert!(after.fds <= before.fds);
        assert!(after.threads <= before.threads);
        assert!(after.rss_kib - before.rss_kib < 8 * MIB);
        c.close().unwrap();
    });
}

#[test]
fn channel_max_reached_by_held_channels_then_freed() {
    in_child("channel_max_reached_by_held_channels_then_freed", || {
        let name = unique("chanmax");
        let c = Connection::open(
            params()
                .with_connection_name(&name)
                .with_channel_max(64)
                .with_rpc_timeout(Duration::from_secs(3)),
        )
        .unwrap();
        assert_eq!(c.channel_max(), 64);
        let held: Vec<_> = (0..64).map(|_| c.channel().unwrap()).collect();
        match c.channel() {
            Err(Error::NoFreeChannels { .. }) => {}
            other => panic!("65th channel: {other:?}"),
        }
        drop(held);
        // A dropped channel's number is busy until the broker's close-ok (a round trip):
        // channel() must wait for it (within rpc_timeout), as it does for a shadowed number,
        // rather than report the connection out of numbers.
        let first = c.channel();
        let first_error = first.as_ref().err().map(|e| e.to_string());
        drop(first);
        let retried = eventually(Duration::from_secs(2), || {
            (0..64)
                .map(|_| c.channel())
                .collect::<Result<Vec<_>, _>>()
                .is_ok()
        });
        println!(
            "REPORT channel_max 64, 64 channels dropped: next channel() at once -> {:?}; \
             all 64 numbers usable again within 2 s: {retried}",
            first_error
        );
        assert!(retried, "dropped channels' numbers never came back");
        assert_eq!(
            first_error, None,
            "channel() right after dropping channels at channel_max"
        );
        // Every number comes back: 10 rounds of the whole range.
        for round in 0..10 {
            let again: Vec<_> = (0..64)
                .map(|i| {
                    c.channel()
                        .unwrap_or_else(|e| panic!("round {round}, channel {i}: {e}"))
                })
                .collect();
            drop(again);
        }
        assert!(eventually(Duration::from_secs(10), || broker_channels_of(
            &name
        ) == vec![0]));
        println!("REPORT channel_max 64: 65th refused, 10 x 64 dropped channels reopened");
        c.close().unwrap();
    });
}

// ---------------------------------------------------------------------------------------------
// Consumers
// ---------------------------------------------------------------------------------------------

#[test]
fn consumer_churn_5000() {
    in_child("consumer_churn_5000", || {
        warm_up();
        let c = Connection::open(params()).unwrap();
        let ch = c.channel().unwrap();
        let queue = named_queue(&ch, "churn");
        for _ in 0..50 {
            let tag = ch
                .basic_consume(&queue, |_, _, _, _| {}, BasicConsumeOptions::default())
                .unwrap();
            ch.basic_cancel(&tag).unwrap();
        }
        let before = snapshot();
        for _ in 0..5000 {
            let tag = ch
                .basic_consume(&queue, |_, _, _, _| {}, BasicConsumeOptions::default())
                .unwrap();
            ch.basic_cancel(&tag).unwrap();
        }
        let after = snapshot();
        report("5000 x basic_consume + basic_cancel", before, after);
        assert!(ch.consumer_tags().is_empty());
        assert_eq!(queue_counts(&queue).2, 0);
        assert!(after.rss_kib - before.rss_kib < 8 * MIB);
        // The same with consume() iterators dropped at once.
        let before = snapshot();
        for _ in 0..5000 {
            drop(ch.consume(&queue, ConsumeOptions::default()).unwrap());
        }
        let after = snapshot();
        report("5000 x consume() + drop", before, after);
        assert!(ch.consumer_tags().is_empty());
        assert_eq!(queue_counts(&queue).2, 0);
        assert!(after.rss_kib - before.rss_kib < 8 * MIB);
        ch.queue_delete(&queue, QueueDeleteOptions::default())
            .unwrap();
        c.close().unwrap();
    });
}

#[test]
fn consume_iterators_dropped_mid_stream_requeue_what_they_held() {
    in_child(
        "consume_iterators_dropped_mid_stream_requeue_what_they_held",
        || {
            let c = Connection::open(params()).unwrap();
            let ch = c.channel().unwrap();
            let queue = named_queue(&ch, "midstream");
            const N: u32 = 200;
            support::publish_numbered(&ch, &queue, 0..N);
            assert!(eventually(Duration::from_secs(5), || queue_counts(&queue)
                .0
                == N as u64));
            // 100 iterators, each takes and acks one message and is dropped with the rest held.
            for _ in 0..100 {
                let mut it = ch
                    .consume(
                        &queue,
                        ConsumeOptions {
                            inactivity_timeout: Some(Duration::from_secs(5)),
                            ..Default::default()
                        },
                    )
                    .unwrap();
                match it.next() {
                    Some(Ok(Consumed::Delivery(d))) => {
                        ch.basic_ack(d.method.delivery_tag, false).unwrap()
                    }
                    other => panic!("{other:?}"),
                }
                drop(it);
            }
            let counts = eventually(Duration::from_secs(10), || {
                let (ready, unacked, consumers) = queue_counts(&queue);
                ready == (N - 100) as u64 && unacked == 0 && consumers == 0
            });
            let (ready, unacked, consumers) = queue_counts(&queue);
            println!(
            "REPORT 100 consume() iterators dropped mid-stream: ready {ready}, unacked {unacked}, \
             consumers {consumers} (expected {} / 0 / 0)",
            N - 100
        );
            assert!(counts);
            // An unacked message taken from a dropped iterator stays the application's until it
            // settles it or the channel closes (AMQP): it is settled by its tag after the drop.
            let mut it = ch.consume(&queue, ConsumeOptions::default()).unwrap();
            let tag = match it.next() {
                Some(Ok(Consumed::Delivery(d))) => d.method.delivery_tag,
                other => panic!("{other:?}"),
            };
            drop(it);
            ch.basic_ack(tag, false).unwrap();
            assert!(eventually(Duration::from_secs(10), || queue_counts(&queue)
                == ((N - 101) as u64, 0, 0)));
            ch.queue_delete(&queue, QueueDeleteOptions::default())
                .unwrap();
            c.close().unwrap();
        },
    );
}
