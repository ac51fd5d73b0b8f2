//! `RpcClient` against the real broker: many threads sharing one client each get exactly their
//! own replies; deadlines (per call and the connection's `rpc_timeout`) hold, also while the
//! request waits for room in the outbound buffer; pumping passes from a caller that leaves to
//! one that waits, not to one still publishing; a reply that comes after its caller timed out
//! is dropped with a warning, never handed to the next call, and late replies nobody waits for
//! do not pile up against the connection's inbound limit. (`rpc_failures.rs`: failures,
//! properties, `rpc::serve`; `rpc_mandatory.rs`: mandatory requests.)
//!
//! Servers run `cottontail::rpc::serve` on connections of their own; a request body
//! `slow:<ms>:...` makes them wait that long before answering `echo:<body>`. Where a test needs
//! the client's requests held back (its outbound buffer full, as with a broker that does not
//! read), the client connects through a `Proxy` that can stop passing its bytes on
//! (`support/rpc.rs`).

mod support;

#[path = "support/rpc.rs"]
mod rpc_support;

use std::thread::{self};
use std::time::{Duration, Instant};

use cottontail::{
    BasicProperties, CallOptions, Connection, ConsumeOptions, Consumed, Error, PublishOptions,
    RpcClient,
};
use rpc_support::*;
use support::consuming::iterate_on_a_thread;
use support::{connect, params, within};

// Many threads, one client
// ---------------------------------------------------------------------------------------------

/// 8 threads x 250 calls on one client, served by two servers that take 20 requests at a time
/// (so replies come back in another order than the requests went out): every call gets the
/// echo of its own body, and nothing is left waiting afterwards.
#[test]
fn eight_threads_get_exactly_their_own_replies() {
    const THREADS: usize = 8;
    const CALLS: usize = 250;
    let (queue, _cleanup) = request_queue("rpc-threads");
    let server_connection = connect();
    let _servers = servers(&server_connection, &queue, 2, 20);
    let connection = connect();
    let client = RpcClient::new(&connection).unwrap();

    let checked = within(HANG, "8 threads x 250 calls", {
        let client = client.clone();
        move || {
            let threads: Vec<_> = (0..THREADS)
                .map(|i| {
                    let client = client.clone();
                    let queue = queue.clone();
                    thread::spawn(move || {
                        for k in 0..CALLS {
                            let body = format!("thread {i} call {k}");
                            let reply = call(&client, &queue, &body, Duration::from_secs(20))
                                .unwrap_or_else(|e| panic!("{body}: {e}"));
                            assert_eq!(
                                body_of(&reply),
                                format!("echo:{body}"),
                                "a reply to another call"
                            );
                            assert!(
                                reply.properties.correlation_id().is_some(),
                                "the reply has no correlation id"
                            );
                        }
                        CALLS
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().expect("a calling thread panicked"))
                .sum::<usize>()
        }
    });
    assert_eq!(checked, THREADS * CALLS);
    let state = format!("{client:?}");
    assert!(
        state.contains("waiting: 0") && state.contains("pumping: false"),
        "{state}"
    );
    connection.close().unwrap();
    server_connection.close().unwrap();
}

/// Another thread running `process_data_events` on the connection meanwhile (it handles every
/// channel nobody else consumes, the client's included, between pumps) takes no reply away.
#[test]
fn process_data_events_on_another_thread_takes_no_reply() {
    let (queue, _cleanup) = request_queue("rpc-events");
    let server_connection = connect();
    let _servers = servers(&server_connection, &queue, 2, 20);
    let connection = connect();
    let client = RpcClient::new(&connection).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let events = {
        let connection = connection.clone();
        let stop = stop.clone();
        thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                connection.process_data_events(Duration::from_millis(5))?;
            }
            Ok::<(), Error>(())
        })
    };

    within(HANG, "calls beside process_data_events", move || {
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let client = client.clone();
                let queue = queue.clone();
                thread::spawn(move || {
                    for k in 0..100 {
                        let body = format!("thread {i} call {k}");
                        let reply = call(&client, &queue, &body, Duration::from_secs(20))
                            .unwrap_or_else(|e| panic!("{body}: {e}"));
                        assert_eq!(body_of(&reply), format!("echo:{body}"));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("a calling thread panicked");
        }
    });
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    events.join().unwrap().unwrap();
    connection.close().unwrap();
    server_connection.close().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Deadlines and the hand-over
// ---------------------------------------------------------------------------------------------

/// With no server, a call times out after its own timeout, or after the connection's
/// `rpc_timeout` when it gives none; 8 concurrent calls with timeouts of 100..800 ms each
/// return at their own deadline, not at another's.
#[test]
fn calls_time_out_at_their_own_deadline() {
    let (queue, _cleanup) = request_queue("rpc-timeout");
    let connection =
        Connection::open(params().with_rpc_timeout(Duration::from_millis(400))).unwrap();
    let client = RpcClient::new(&connection).unwrap();

    within(HANG, "timeouts", move || {
        let started = Instant::now();
        let e = client
            .call("", &queue, b"nobody listens", CallOptions::default())
            .unwrap_err();
        let took = started.elapsed();
        assert!(
            matches!(e, Error::Timeout { after, .. } if after == Duration::from_millis(400)),
            "{e:?}"
        );
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_millis(400) + SLACK,
            "{took:?}"
        );

        let started = Instant::now();
        let e = call(
            &client,
            &queue,
            "nobody listens",
            Duration::from_millis(150),
        )
        .unwrap_err();
        let took = started.elapsed();
        assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
        assert!(
            took >= Duration::from_millis(150) && took < Duration::from_millis(150) + SLACK,
            "{took:?}"
        );

        let threads: Vec<_> = (1..=8u64)
            .map(|i| {
                let client = client.clone();
                let queue = queue.clone();
                thread::spawn(move || {
                    let timeout = Duration::from_millis(100 * i);
                    let started = Instant::now();
                    let e = call(&client, &queue, "nobody listens", timeout).unwrap_err();
                    let took = started.elapsed();
                    assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
                    assert!(
                        took >= timeout && took < timeout + SLACK,
                        "a call with a timeout of {timeout:?} returned after {took:?}"
                    );
                })
            })
            .collect();
        for t in threads {
            t.join().expect("a calling thread failed");
        }
    });
    connection.close().unwrap();
}

/// Caller A waits alone (so it pumps) with a short timeout; caller B, whose reply comes later,
/// waits behind it. When A leaves (timed out, or with its own reply) B must take over the
/// pumping and get its reply as soon as it arrives, long before B's own deadline.
#[test]
fn the_pumping_passes_to_a_caller_still_waiting() {
    let (queue, _cleanup) = request_queue("rpc-handover");
    let server_connection = connect();
    // Two servers taking one request each: A's and B's are answered side by side.
    let _servers = servers(&server_connection, &queue, 2, 1);
    let connection = connect();
    let client = RpcClient::new(&connection).unwrap();

    within(HANG, "hand-over", move || {
        for (a_body, a_timeout, a_answered) in [
            // A times out at 200 ms (its answer comes at 1 s and is dropped).
            ("slow:1000:a", Duration::from_millis(200), false),
            // A gets its own answer at 200 ms.
            ("slow:200:a", Duration::from_secs(20), true),
        ] {
            let a = {
                let client = client.clone();
                let queue = queue.clone();
                thread::spawn(move || call(&client, &queue, a_body, a_timeout))
            };
            thread::sleep(Duration::from_millis(50));
            let started = Instant::now();
            let b =
                call(&client, &queue, "slow:600:b", Duration::from_secs(20)).expect("B's reply");
            let took = started.elapsed();
            assert_eq!(body_of(&b), "echo:slow:600:b");
            assert!(
                took < Duration::from_millis(600) + SLACK,
                "B got its reply after {took:?}: nobody pumped for it after A left"
            );
            match a.join().expect("A's thread panicked") {
                Ok(reply) => {
                    assert!(a_answered, "A should have timed out");
                    assert_eq!(body_of(&reply), format!("echo:{a_body}"));
                }
                Err(e) => {
                    assert!(!a_answered, "A failed: {e}");
                    assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
                }
            }
            // The servers are free again before the next round.
            thread::sleep(Duration::from_millis(1000));
        }
    });
    connection.close().unwrap();
    server_connection.close().unwrap();
}

/// A call whose request cannot go out (the outbound buffer is full: the proxy holds the
/// client's bytes back) returns `Error::Timeout` at its own deadline (500 ms), not at the
/// connection's `rpc_timeout` (20 s) that an untimed publish waits for room; once the bytes go
/// through again, a call gets its reply.
#[test]
fn a_call_returns_at_its_deadline_while_its_request_waits_for_room() {
    let (queue, _cleanup) = request_queue("rpc-room");
    let server_connection = connect();
    let _servers = servers(&server_connection, &queue, 1, 1);
    let proxy = Proxy::start();
    let connection =
        Connection::open(proxy.params().with_rpc_timeout(Duration::from_secs(20))).unwrap();
    let client = RpcClient::new(&connection).unwrap();

    within(HANG, "a call behind a full outbound buffer", move || {
        let _filler = fill_the_outbound_buffer(&proxy, &connection);
        let timeout = Duration::from_millis(500);
        let started = Instant::now();
        let e = call(&client, &queue, "behind the filler", timeout).unwrap_err();
        let took = started.elapsed();
        assert!(
            matches!(e, Error::Timeout { after, .. } if after == timeout),
            "{e:?}"
        );
        assert!(
            took >= timeout && took < timeout + SLACK,
            "a call with a timeout of {timeout:?} returned after {took:?}"
        );
        proxy.hold(false);
        let reply = call(&client, &queue, "after", Duration::from_secs(20)).expect("a reply");
        assert_eq!(body_of(&reply), "echo:after");
        connection.close().unwrap();
    });
    server_connection.close().unwrap();
}

/// Caller A pumps alone (a request nobody serves, 1 s timeout) and caller C sleeps behind it
/// (its reply comes 1.5 s after its call). Then the proxy holds the client's bytes back and
/// the outbound buffer is filled, so 128 more callers (B) are entered in the table but stuck
/// publishing. When A times out, the pumping must go to C, which waits, and not be lost on a
/// B that is not waiting yet: C gets its reply when it arrives, while the Bs are still stuck
/// (until 4 s); then the Bs get theirs. (So many Bs so that a hand-over to any caller without
/// a reply, C's chance being 1 in 129, is all but sure to pick a B.)
#[test]
fn the_pumping_passes_to_a_waiting_caller_not_to_one_still_publishing() {
    const STUCK: usize = 128;
    let (queue, _cleanup) = request_queue("rpc-handover-publishing");
    let (unserved, _cleanup_unserved) = request_queue("rpc-handover-unserved");
    let server_connection = connect();
    let server = servers(&server_connection, &queue, 1, 1);
    let proxy = Proxy::start();
    let connection =
        Connection::open(proxy.params().with_rpc_timeout(Duration::from_secs(30))).unwrap();
    let client = RpcClient::new(&connection).unwrap();

    within(HANG, "hand-over past callers still publishing", move || {
        let started = Instant::now();
        let a = {
            let client = client.clone();
            thread::spawn(move || call(&client, &unserved, "a", Duration::from_secs(1)))
        };
        thread::sleep(Duration::from_millis(100));
        let c = {
            let client = client.clone();
            let queue = queue.clone();
            thread::spawn(move || {
                let started = Instant::now();
                let reply = call(&client, &queue, "slow:1500:c", Duration::from_secs(20));
                (reply, started.elapsed())
            })
        };
        // C's request is out before the proxy holds anything back.
        assert!(
            support::eventually(Duration::from_secs(10), || server[0]
                .has_received("slow:1500:c")),
            "the server never got C's request"
        );
        let _filler = fill_the_outbound_buffer(&proxy, &connection);
        let bs: Vec<_> = (0..STUCK)
            .map(|i| {
                let client = client.clone();
                let queue = queue.clone();
                thread::spawn(move || {
                    call(&client, &queue, &format!("b{i}"), Duration::from_secs(20))
                })
            })
            .collect();
        let e = a.join().expect("A's thread panicked").unwrap_err();
        assert!(matches!(e, Error::Timeout { .. }), "A: {e:?}");
        thread::sleep(Duration::from_secs(4).saturating_sub(started.elapsed()));
        let c_done = c.is_finished();
        proxy.hold(false);
        let (reply, took) = c.join().expect("C's thread panicked");
        let reply = reply.expect("C's reply");
        assert_eq!(body_of(&reply), "echo:slow:1500:c");
        assert!(
            c_done && took < Duration::from_millis(3500),
            "C got its reply after {took:?}: nobody pumped for it after A left (the pumping \
             went to a caller still publishing)"
        );
        for (i, b) in bs.into_iter().enumerate() {
            let reply = b.join().expect("a B thread panicked").expect("a B's reply");
            assert_eq!(body_of(&reply), format!("echo:b{i}"));
        }
        connection.close().unwrap();
    });
    server_connection.close().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Late replies
// ---------------------------------------------------------------------------------------------

/// A server that answers slowly: a call with a short timeout gets `Error::Timeout`, and the
/// next call gets its own reply, not the late one, whether the late one arrives while the next
/// call waits (the pumper drops it) or before it starts (dropped on arrival); each late reply
/// is dropped with a warning naming its correlation id.
#[test]
fn a_late_reply_is_dropped_not_given_to_the_next_call() {
    capture_warnings();
    let (queue, _cleanup) = request_queue("rpc-late");
    let server_connection = connect();
    // One server, one request at a time: the late answer goes out before the next call's.
    let _servers = servers(&server_connection, &queue, 1, 1);
    let connection = connect();
    let client = RpcClient::new(&connection).unwrap();

    within(HANG, "late replies", move || {
        // The late reply arrives while the next call waits (and pumps).
        let e = call(
            &client,
            &queue,
            "slow:600:first",
            Duration::from_millis(200),
        )
        .unwrap_err();
        let late = request_id(&e);
        let reply =
            call(&client, &queue, "second", Duration::from_secs(20)).expect("the second call");
        assert_eq!(
            body_of(&reply),
            "echo:second",
            "the second call got another reply"
        );
        assert!(
            dropped_with_warning(&late),
            "no warning dropped the late reply {late}"
        );

        // The late reply arrives while no call waits: it is dropped on arrival.
        let e = call(
            &client,
            &queue,
            "slow:300:third",
            Duration::from_millis(100),
        )
        .unwrap_err();
        let late = request_id(&e);
        thread::sleep(Duration::from_millis(800));
        let reply =
            call(&client, &queue, "fourth", Duration::from_secs(20)).expect("the fourth call");
        assert_eq!(
            body_of(&reply),
            "echo:fourth",
            "the fourth call got another reply"
        );
        assert!(
            dropped_with_warning(&late),
            "no warning dropped the late reply {late}"
        );
    });
    connection.close().unwrap();
    server_connection.close().unwrap();
}

/// 80 calls time out; then their replies, 1 MiB each (80 MiB, past the connection's 64 MiB
/// hard inbound limit), arrive while no call waits, and while a consumer on another channel of
/// the same connection waits (so reading goes on past the 16 MiB soft limit). The replies are
/// dropped as they arrive (each with a warning naming its correlation id), not held for the
/// reply consumer: that consumer still gets a message published after them, at once, and a
/// new call gets its reply.
#[test]
fn late_replies_nobody_waits_for_do_not_stall_the_connection() {
    const CALLS: usize = 80;
    const REPLY_BYTES: usize = 1024 * 1024;
    capture_warnings();
    let (queue, _cleanup) = request_queue("rpc-late-flood");
    let (other, _cleanup_other) = request_queue("rpc-late-flood-other");
    let connection = connect();
    let client = RpcClient::new(&connection).unwrap();
    let consumer = connection
        .channel()
        .unwrap()
        .consume(
            &other,
            ConsumeOptions {
                auto_ack: true,
                ..Default::default()
            },
        )
        .unwrap();
    let (_, consumed) = iterate_on_a_thread(consumer);
    let server_connection = connect();

    within(HANG, "late replies past the inbound limit", move || {
        // Nobody serves yet: every call times out, its request left in the queue.
        let calls: Vec<_> = (0..CALLS)
            .map(|i| {
                let client = client.clone();
                let queue = queue.clone();
                thread::spawn(move || {
                    call(
                        &client,
                        &queue,
                        &format!("late {i}"),
                        Duration::from_millis(300),
                    )
                })
            })
            .collect();
        let ids: Vec<String> = calls
            .into_iter()
            .map(|c| request_id(&c.join().expect("a calling thread panicked").unwrap_err()))
            .collect();

        // Now each request is answered with 1 MiB.
        let server = server_connection.channel().unwrap();
        let body = vec![b'r'; REPLY_BYTES];
        for _ in 0..CALLS {
            let request = server
                .basic_get(&queue, true)
                .unwrap()
                .expect("a request in the queue");
            let reply = PublishOptions {
                properties: BasicProperties::default().with_correlation_id(
                    request
                        .properties
                        .correlation_id()
                        .expect("a correlation id"),
                ),
                ..Default::default()
            };
            let reply_to = request.properties.reply_to().expect("a reply_to");
            server
                .basic_publish_with("", reply_to, &body, &reply)
                .unwrap();
        }
        // The replies are on their way first; then a message for the other consumer.
        thread::sleep(Duration::from_secs(1));
        server
            .basic_publish("", &other, b"behind the late replies")
            .unwrap();

        let started = Instant::now();
        match consumed.recv_timeout(Duration::from_secs(5)) {
            Ok(Some(Ok(Consumed::Delivery(d)))) => assert_eq!(d.body, b"behind the late replies"),
            Ok(other) => panic!("the consumer on another channel got {other:?}"),
            Err(_) => panic!(
                "the consumer on another channel got nothing within 5 s: the late replies \
                 stalled the connection"
            ),
        }
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(3),
            "the message came after {took:?}"
        );
        assert!(
            support::eventually(Duration::from_secs(10), || dropped_on_arrival(&ids)
                == CALLS),
            "{} of the {CALLS} late replies were dropped on arrival with a warning",
            dropped_on_arrival(&ids)
        );

        let servers = servers(&server_connection, &queue, 1, 1);
        let reply =
            call(&client, &queue, "after the flood", Duration::from_secs(20)).expect("a reply");
        assert_eq!(body_of(&reply), "echo:after the flood");
        connection.close().unwrap();
        drop(servers);
        server_connection.close().unwrap();
    });
}

/// A service that calls another from its consumer callback may make its `RpcClient` there
/// (on first use): the client never iterates its reply consumer, so the rule that
/// `consume()` is `Error::Reentrancy` inside a callback does not apply to it. A
/// `consume()` iterator made outside and iterated inside a callback yields `Reentrancy`
/// once, then ends (it would never work there).
#[test]
fn an_rpc_client_made_and_called_inside_a_consumer_callback_works() {
    let (queue, _cleanup) = request_queue("rpc-in-callback");
    let server_connection = connect();
    let _servers = servers(&server_connection, &queue, 1, 10);
    let connection = connect();
    let channel = connection.channel().unwrap();
    let trigger = support::exclusive_queue(&channel);
    channel.basic_publish("", &trigger, b"go").unwrap();
    let mut outside = channel
        .consume(&support::exclusive_queue(&channel), Default::default())
        .unwrap();
    let conn = connection.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    channel
        .basic_consume(
            &trigger,
            move |ch, method, _, _| -> cottontail::Result<()> {
                let client = RpcClient::new(&conn)?;
                let reply = call(&client, &queue, "from a callback", Duration::from_secs(10))?;
                let iterated: Vec<_> = (&mut outside).take(3).collect();
                tx.send((body_of(&reply), iterated)).unwrap();
                ch.basic_ack(method.delivery_tag, false)?;
                ch.stop_consuming(None)
            },
            Default::default(),
        )
        .unwrap();
    within(HANG, "RpcClient inside a callback", move || {
        channel.start_consuming()
    })
    .unwrap();
    let (reply, iterated) = rx.recv().unwrap();
    assert_eq!(reply, "echo:from a callback");
    assert_eq!(iterated.len(), 1, "{iterated:?}");
    assert!(matches!(iterated[0], Err(cottontail::Error::Reentrancy)));
    connection.close().unwrap();
    server_connection.close().unwrap();
}
