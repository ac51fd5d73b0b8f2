//! What a service that runs for months does to the process, continued from `long_running.rs`:
//! many `RpcClient`s and calls whose replies come late, connections the broker closes (with and
//! without recovery), idle heartbeats, piles of timers and threadsafe callbacks, and channels
//! dropped with consumers while recovery records the topology. Measured and run in child
//! processes as `long_running.rs` says (see `support/longrun.rs`).
//!
//! Linux only (/proc/self).

#[path = "support/longrun.rs"]
mod longrun;
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cottontail::{
    BasicConsumeOptions, BasicProperties, CallOptions, Connection, Error, PublishOptions,
    QueueDeclareOptions, QueueDeleteOptions, RecoveryPolicy, RpcClient,
};
use longrun::*;
use support::{broker_connections_named, eventually, named_queue, params, rabbitmqctl, unique};

// ---------------------------------------------------------------------------------------------
// RpcClient
// ---------------------------------------------------------------------------------------------

#[test]
fn rpc_client_new_and_drop_1000() {
    in_child("rpc_client_new_and_drop_1000", || {
        warm_up();
        let name = unique("rpc-churn");
        let c = Connection::open(params().with_connection_name(&name)).unwrap();
        for _ in 0..20 {
            drop(RpcClient::new(&c).unwrap());
        }
        let before = snapshot();
        for _ in 0..1000 {
            drop(RpcClient::new(&c).unwrap());
        }
        let after = snapshot();
        report("1000 x RpcClient::new + drop", before, after);
        assert!(eventually(Duration::from_secs(10), || broker_channels_of(
            &name
        ) == vec![0]));
        assert!(after.fds <= before.fds);
        assert!(after.threads <= before.threads);
        assert!(after.rss_kib - before.rss_kib < 8 * MIB);
        c.close().unwrap();
    });
}

#[test]
fn rpc_calls_that_time_out_and_their_late_replies() {
    in_child("rpc_calls_that_time_out_and_their_late_replies", || {
        warm_up();
        let c = Connection::open(params()).unwrap();
        let setup = c.channel().unwrap();
        let queue = named_queue(&setup, "rpc-late");
        let client = RpcClient::new(&c).unwrap();
        let body = vec![7u8; 16 * 1024];
        let call = |timeout| {
            client.call(
                "",
                &queue,
                &body,
                CallOptions {
                    timeout: Some(timeout),
                    ..Default::default()
                },
            )
        };
        // Warm-up.
        for _ in 0..10 {
            assert!(matches!(
                call(Duration::from_millis(5)),
                Err(Error::Timeout { .. })
            ));
        }
        setup.queue_purge(&queue).unwrap();
        let before = snapshot();
        const CALLS: usize = 1000;
        for _ in 0..CALLS {
            match call(Duration::from_millis(5)) {
                Err(Error::Timeout { .. }) => {}
                other => panic!("{other:?}"),
            }
        }
        let mid = snapshot();
        report("1000 RPC calls timing out (no server)", before, mid);
        // Now a server answers all 1000 requests, late: 16 MiB of replies nobody waits for.
        let server_conn = Connection::open(params()).unwrap();
        let server = server_conn.channel().unwrap();
        let mut answered = 0;
        while let Some(got) = server.basic_get(&queue, true).unwrap() {
            server
                .basic_publish_with(
                    "",
                    got.properties.reply_to().unwrap(),
                    &body,
                    &PublishOptions {
                        properties: BasicProperties::default()
                            .with_correlation_id(got.properties.correlation_id().unwrap()),
                        ..Default::default()
                    },
                )
                .unwrap();
            answered += 1;
        }
        assert_eq!(answered, CALLS);
        std::thread::sleep(Duration::from_secs(1));
        // One more call with a server that answers at once: it must get its own reply.
        let served = {
            let server = server.clone();
            let queue = queue.clone();
            std::thread::spawn(move || {
                cottontail::rpc::serve(&server, &queue, |_props, body| Ok(body.to_vec()))
            })
        };
        let reply = call(Duration::from_secs(5)).unwrap();
        assert_eq!(reply.body.len(), body.len());
        server.stop_consuming(None).unwrap();
        let _ = served.join();
        drop(server);
        server_conn.close().unwrap();
        drop(server_conn);
        let after = settled_snapshot(before.threads, Duration::from_secs(5));
        report(
            "1000 late 16 KiB replies, then one call (server gone)",
            mid,
            after,
        );
        assert!(after.rss_kib - before.rss_kib < 8 * MIB);
        assert!(after.fds <= before.fds);
        setup
            .queue_delete(&queue, QueueDeleteOptions::default())
            .unwrap();
        c.close().unwrap();
    });
}

// ---------------------------------------------------------------------------------------------
// Connections the broker closes
// ---------------------------------------------------------------------------------------------

/// Closes, on the broker (320 CONNECTION_FORCED, as `rabbitmqctl close_connection` does),
/// every connection whose name is `name`; returns how many. One rabbitmqctl call for all.
fn force_close_named(name: &str) -> usize {
    // `erlang_ours` skips a connection still opening (no client properties yet: a parallel
    // test's), which made `lists:keyfind` fail with badarg here.
    let expr = format!(
        "{ours} length([rabbit_networking:close_connection(P, \"forced by the test\") \
         || P <- rabbit_networking:connections(), Ours(P)]).",
        ours = support::recovery::erlang_ours(name)
    );
    rabbitmqctl(&["eval", &expr]).trim().parse().unwrap()
}

#[test]
fn broker_closed_connections_without_recovery_40() {
    in_child("broker_closed_connections_without_recovery_40", || {
        warm_up();
        let name = unique("forced-norec");
        // A name per cycle: the broker may still list the last cycle's closed connection.
        let cycle = |n: usize| {
            let own = format!("{name}-{n}");
            let c = Connection::open(params().with_connection_name(&own)).unwrap();
            let ch = c.channel().unwrap();
            assert_eq!(force_close_named(&own), 1, "cycle {n}");
            assert!(eventually(Duration::from_secs(10), || c.is_closed()));
            assert!(ch.basic_publish("", "x", b"x").is_err());
        };
        for n in 0..10 {
            cycle(n);
        }
        let before = settled_snapshot(2, Duration::from_secs(5));
        for n in 10..50 {
            cycle(n);
            if n % 10 == 9 {
                println!(
                    "REPORT forced close {}: {:?}",
                    n + 1,
                    settled_snapshot(2, Duration::from_secs(5))
                );
            }
        }
        let after = settled_snapshot(before.threads, Duration::from_secs(5));
        report(
            "40 broker-closed connections (no recovery), dropped",
            before,
            after,
        );
        assert!(broker_connections_named(&name).is_empty());
        assert_eq!(after.io_threads, 0);
        assert!(after.fds <= before.fds);
        assert!(after.threads <= before.threads);
        assert!(after.rss_kib - before.rss_kib < 8 * MIB);
    });
}

#[test]
fn broker_closed_connection_with_recovery_20() {
    in_child("broker_closed_connection_with_recovery_20", || {
        warm_up();
        let name = unique("forced-rec");
        let c = Connection::open(
            params()
                .with_connection_name(&name)
                .with_recovery(RecoveryPolicy::default()),
        )
        .unwrap();
        let ch = c.channel().unwrap();
        let queue = named_queue(&ch, "forced-rec");
        ch.basic_consume(&queue, |_, _, _, _| {}, BasicConsumeOptions::default())
            .unwrap();
        let forced = |n: u64| {
            assert_eq!(force_close_named(&name), 1, "before recovery {n}");
            assert!(
                eventually(Duration::from_secs(20), || c.recovery_generation() == n
                    && !c.is_recovering()),
                "recovery {n} did not happen"
            );
        };
        forced(1);
        forced(2);
        let before = settled_snapshot(usize::MAX, Duration::ZERO);
        for n in 3..=20 {
            forced(n);
        }
        c.process_data_events(Duration::ZERO).unwrap();
        let after = settled_snapshot(before.threads, Duration::from_secs(5));
        report("18 forced closes with recovery", before, after);
        assert_eq!(broker_connections_named(&name).len(), 1);
        assert_eq!(broker_channels_of(&name), vec![1]);
        assert_eq!(queue_counts(&queue).2, 1);
        assert_eq!(after.io_threads, 1);
        assert!(after.fds <= before.fds);
        assert!(after.threads <= before.threads);
        assert!(after.rss_kib - before.rss_kib < 8 * MIB);
        ch.basic_publish("", &queue, b"after").unwrap();
        ch.queue_delete(&queue, QueueDeleteOptions::default())
            .unwrap();
        c.close().unwrap();
    });
}

// ---------------------------------------------------------------------------------------------
// Heartbeats
// ---------------------------------------------------------------------------------------------

#[test]
fn idle_connection_and_slow_callback_survive_heartbeat_2s() {
    in_child(
        "idle_connection_and_slow_callback_survive_heartbeat_2s",
        || {
            let c = Connection::open(params().with_heartbeat(Some(2))).unwrap();
            assert_eq!(c.heartbeat(), 2);
            let ch = c.channel().unwrap();
            let queue = named_queue(&ch, "hb");
            // Idle: nobody calls anything for 3 intervals and more.
            std::thread::sleep(Duration::from_secs(7));
            assert!(c.is_open(), "idle: {:?}", c.close_reason());
            // A consumer callback that sleeps 7 s.
            ch.basic_publish("", &queue, b"slow").unwrap();
            let ran = Arc::new(AtomicUsize::new(0));
            let ran2 = ran.clone();
            ch.basic_consume(
                &queue,
                move |ch, method, _, _| -> cottontail::Result<()> {
                    std::thread::sleep(Duration::from_secs(7));
                    ran2.fetch_add(1, Ordering::SeqCst);
                    ch.basic_ack(method.delivery_tag, false)?;
                    ch.stop_consuming(None)
                },
                BasicConsumeOptions::default(),
            )
            .unwrap();
            ch.start_consuming().unwrap();
            assert_eq!(ran.load(Ordering::SeqCst), 1);
            assert!(c.is_open(), "slow callback: {:?}", c.close_reason());
            ch.basic_publish("", &queue, b"after").unwrap();
            assert!(ch.basic_get(&queue, true).unwrap().is_some());
            println!("REPORT heartbeat 2 s: 7 s idle and a 7 s callback, connection open");
            ch.queue_delete(&queue, QueueDeleteOptions::default())
                .unwrap();
            c.close().unwrap();
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Timers and threadsafe callbacks
// ---------------------------------------------------------------------------------------------

#[test]
fn timers_and_threadsafe_callbacks_100000() {
    in_child("timers_and_threadsafe_callbacks_100000", || {
        let c = Connection::open(params()).unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let run_all = |expected: usize| {
            while count.load(Ordering::SeqCst) < expected {
                c.process_data_events(Duration::from_millis(100)).unwrap();
            }
        };
        // Warm-up.
        for _ in 0..1000 {
            let k = count.clone();
            c.call_later(Duration::ZERO, move || {
                k.fetch_add(1, Ordering::SeqCst);
            });
        }
        run_all(1000);
        count.store(0, Ordering::SeqCst);
        let before = snapshot();
        for round in 1..=10 {
            for _ in 0..10_000 {
                let k = count.clone();
                c.call_later(Duration::ZERO, move || {
                    k.fetch_add(1, Ordering::SeqCst);
                });
                let k = count.clone();
                c.add_callback_threadsafe(move || {
                    k.fetch_add(1, Ordering::SeqCst);
                })
                .unwrap();
            }
            run_all(round * 20_000);
            if round % 2 == 0 {
                println!(
                    "REPORT timers round {round}: VmRSS {} KiB",
                    snapshot().rss_kib
                );
            }
        }
        let after = snapshot();
        report(
            "100000 call_later + 100000 add_callback_threadsafe, run",
            before,
            after,
        );
        assert!(after.rss_kib - before.rss_kib < 8 * MIB);
        // Timers set and removed (a service's per-request timeouts).
        let before = snapshot();
        for _ in 0..100_000 {
            let id = c.call_later(Duration::from_secs(3600), || {});
            assert!(c.remove_timeout(id));
        }
        let after = snapshot();
        report("100000 call_later + remove_timeout", before, after);
        assert!(after.rss_kib - before.rss_kib < 8 * MIB);
        c.close().unwrap();
    });
}

// ---------------------------------------------------------------------------------------------
// Recovery's recorded topology on a connection that is never lost
// ---------------------------------------------------------------------------------------------

/// `cycles` x: a channel, a server-named exclusive auto-delete queue, a consumer on it, the
/// channel dropped (the broker cancels the consumer and deletes the queue). Returns the RSS
/// growth in KiB.
fn dropped_channels_with_consumers(recovery: bool, cycles: usize) -> i64 {
    let name = unique("dropped-consumers");
    let mut p = params().with_connection_name(&name);
    if recovery {
        p = p.with_recovery(RecoveryPolicy::default());
    }
    let c = Connection::open(p).unwrap();
    let cycle = || {
        let ch = c.channel().unwrap();
        let q = ch
            .queue_declare(
                "",
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
            )
            .unwrap()
            .queue;
        ch.basic_consume(&q, |_, _, _, _| {}, BasicConsumeOptions::default())
            .unwrap();
        drop(ch);
    };
    for _ in 0..200 {
        cycle();
    }
    let before = snapshot();
    for _ in 0..cycles {
        cycle();
    }
    let after = snapshot();
    report(
        &format!("{cycles} x channel + auto-delete queue + consumer, channel dropped, recovery {recovery}"),
        before,
        after,
    );
    if recovery {
        // What the next recovery makes of the records (reported, not asserted).
        let started = std::time::Instant::now();
        assert_eq!(force_close_named(&name), 1);
        let recovered = eventually(Duration::from_secs(120), || {
            c.recovery_generation() == 1 && !c.is_recovering()
        });
        println!(
            "REPORT the recovery after {cycles} dropped channels: recovered {recovered} in {:?}; \
             then {:?}",
            started.elapsed(),
            snapshot()
        );
    }
    c.close().unwrap();
    after.rss_kib - before.rss_kib
}

#[test]
fn dropped_channels_leave_nothing_recorded_for_recovery() {
    in_child(
        "dropped_channels_leave_nothing_recorded_for_recovery",
        || {
            warm_up();
            const CYCLES: usize = 10_000;
            let without = dropped_channels_with_consumers(false, CYCLES);
            let with = dropped_channels_with_consumers(true, CYCLES);
            println!(
            "REPORT RSS growth over {CYCLES} dropped channels: {without} KiB without recovery, \
             {with} KiB with recovery"
        );
            assert!(
            with - without < 2 * MIB,
            "recovery on: {with} KiB for {CYCLES} channels dropped (off: {without} KiB): their \
             consumers and queues stay recorded"
        );
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Callbacks that hold handles of their own connection
// ---------------------------------------------------------------------------------------------

/// Callbacks that hold a handle of their own connection (a consumer and a return callback that
/// captured their channel, a timer holding the connection as one that re-arms itself does, a
/// threadsafe callback still queued, a blocked callback) do not keep a closed connection:
/// `Connection::close` drops them all, `Channel::close` drops the channel's, so the socket, the
/// I/O thread and the memory go. Even cycles close the connection; odd ones close the channel
/// only and drop the handles (the last one closes the connection). Before, each cycle kept the
/// connection's descriptors, and the odd ones its I/O thread and its broker connection too.
#[test]
fn callbacks_holding_handles_do_not_keep_closed_connections_50() {
    in_child(
        "callbacks_holding_handles_do_not_keep_closed_connections_50",
        || {
            warm_up();
            let name = unique("cb-holding");
            let cycle = |n: usize| {
                let c =
                    Connection::open(params().with_connection_name(format!("{name}-{n}"))).unwrap();
                let ch = c.channel().unwrap();
                let exclusive = QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                };
                let queue = ch.queue_declare("", exclusive).unwrap().queue;
                let held = ch.clone();
                ch.basic_consume(
                    &queue,
                    move |_, _, _, _| {
                        let _ = &held;
                    },
                    BasicConsumeOptions::default(),
                )
                .unwrap();
                let held = ch.clone();
                ch.add_on_return_callback(move |_, _, _, _| {
                    let _ = &held;
                });
                if n.is_multiple_of(2) {
                    let held = c.clone();
                    c.call_later(Duration::from_secs(3600), move || {
                        let _ = &held;
                    });
                    let held = ch.clone();
                    c.add_callback_threadsafe(move || {
                        let _ = &held;
                    })
                    .unwrap();
                    let held = c.clone();
                    c.add_on_connection_blocked_callback(move |_, _| {
                        let _ = &held;
                    });
                    c.close().unwrap();
                } else {
                    ch.close().unwrap();
                }
            };
            for n in 0..4 {
                cycle(n);
            }
            let before = settled_snapshot(2, Duration::from_secs(5));
            for n in 4..54 {
                cycle(n);
            }
            let after = settled_snapshot(before.threads, Duration::from_secs(10));
            report(
                "50 connections whose callbacks held their handles, closed",
                before,
                after,
            );
            assert!(
                eventually(Duration::from_secs(10), || broker_connections_named(&name)
                    .is_empty()),
                "connections left open on the broker: {:?}",
                broker_connections_named(&name)
            );
            assert_eq!(after.io_threads, 0);
            assert!(after.fds <= before.fds, "{before:?} -> {after:?}");
            assert!(after.threads <= before.threads, "{before:?} -> {after:?}");
        },
    );
}
