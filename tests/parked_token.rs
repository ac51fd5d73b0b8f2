//! A consuming thread that reads the socket itself (plain TCP) and gets a delivery of its own
//! puts the read token down ("parks" it) while the user's callback runs, expecting to come
//! back and read. Whatever needs reading meanwhile must still be read: another thread that
//! waits for something only reading brings (an RPC reply, a confirm, a delivery for another
//! consumer) takes the parked token at once, and otherwise the I/O thread takes it back within
//! a few milliseconds (a publish the broker answers with a channel.close, a broker close seen
//! by a thread that only looks).
//!
//! Each test here makes the consuming thread the socket's reader, has a separate publisher
//! connection publish the message that starts the callback (so that the trigger is no write on
//! the connection under test), and has the callback wait (bounded) for what only reading
//! brings while it still runs: if the parked token were never taken, nothing would read it
//! until the callback returned (the I/O thread of a connection with the default 60 s heartbeat
//! does not wake up on its own for tens of seconds). A last test checks a long run of
//! deliveries, acks and RPCs from the callback.
//!
//! Every blocking consumer runs on a thread of its own and reports through a channel read with
//! `recv_timeout`, and every wait in a callback is bounded, so a bug fails the test instead of
//! hanging it.

mod support;

use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use cottontail::{
    BasicConsumeOptions, BasicProperties, CallbackError, Channel, Connection, ConsumeOptions,
    Consumed, Deliver, Error, PublishOptions, QueueDeclareOptions,
};
use support::consuming::{
    expect_all_in_order, iterate_on_a_thread, nudge, passive, publish, record_in_order, settle,
    start_consuming_on_a_thread, Cleanup, Item,
};
use support::{
    broker_connections_named, connect, eventually, exclusive_queue, params, publish_numbered,
    unique,
};

/// How long a callback waits for what another thread does meanwhile.
const CALLBACK_PATIENCE: Duration = Duration::from_secs(10);
/// How long the test waits for a callback's report (more than the callback waits).
const REPORT_PATIENCE: Duration = Duration::from_secs(15);
/// The RPC timeout of the connections under test: well within `CALLBACK_PATIENCE`, so that a
/// reply nobody reads ends the RPC with `Error::Timeout`, which the callback reports.
const RPC_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts a callback consumer on `queue` and `start_consuming` on a thread of its own, and
/// makes that thread the socket's reader (see [`nudge`]); returns where its result arrives.
fn consume_and_read<F>(
    connection: &Connection,
    channel: &Channel,
    queue: &str,
    callback: F,
) -> mpsc::Receiver<cottontail::Result<()>>
where
    F: FnMut(&Channel, &Deliver, &BasicProperties, &[u8]) -> cottontail::Result<()>
        + Send
        + 'static,
{
    channel
        .basic_consume(queue, callback, BasicConsumeOptions::default())
        .expect("basic_consume");
    let (consumer_thread, result) = start_consuming_on_a_thread(channel);
    nudge(connection, consumer_thread);
    result
}

/// What `start_consuming` returned, within 5 s.
fn consuming_result(
    result: &mpsc::Receiver<cottontail::Result<()>>,
    what: &str,
) -> cottontail::Result<()> {
    result
        .recv_timeout(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{what}: start_consuming did not return within 5 s ({e})"))
}

/// Runs `f` on a new thread and waits for its result at most [`CALLBACK_PATIENCE`] (for use
/// inside a callback: what `f` waits for must arrive while the callback waits here).
fn on_another_thread<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(CALLBACK_PATIENCE).map_err(|e| {
        format!("{what}: no result within {CALLBACK_PATIENCE:?} while the callback ran ({e})")
    })
}

/// A callback's report, within [`REPORT_PATIENCE`].
fn report<T>(rx: &mpsc::Receiver<T>, what: &str) -> T {
    rx.recv_timeout(REPORT_PATIENCE).unwrap_or_else(|e| {
        panic!("{what}: the callback reported nothing within {REPORT_PATIENCE:?} ({e})")
    })
}

/// Publishes to `exchange` (which does not exist) every 5 ms until `basic_publish` fails, at
/// most 5 s; returns the error and when it came, or `None` if none came.
fn publish_until_refused(channel: &Channel, exchange: &str) -> Option<(Error, Duration)> {
    let started = Instant::now();
    loop {
        if let Err(e) = channel.basic_publish(exchange, "nowhere", b"lost") {
            return Some((e, started.elapsed()));
        }
        if started.elapsed() > Duration::from_secs(5) {
            return None;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Checks that `outcome` is the broker's 404 channel.close for a publish to `exchange`.
fn assert_refused_publish(outcome: &Option<(Error, Duration)>, exchange: &str) -> Error {
    let Some((err, after)) = outcome else {
        panic!("basic_publish to a missing exchange kept succeeding for 5 s");
    };
    match err {
        Error::ChannelClosed {
            reply_code: 404,
            reply_text,
            class_id: 60,
            method_id: 40,
        } => assert!(reply_text.contains(exchange), "{reply_text}"),
        other => {
            panic!("expected Err(ChannelClosed {{ 404, basic.publish }}), got {other:?}")
        }
    }
    assert!(
        *after < Duration::from_secs(3),
        "the close came after {after:?}"
    );
    err.clone()
}

// ---------------------------------------------------------------------------------------------
// Against RabbitMQ
// ---------------------------------------------------------------------------------------------

#[test]
fn an_rpc_from_another_thread_completes_while_the_callback_runs() {
    let connection = Connection::open(params().with_rpc_timeout(RPC_TIMEOUT)).unwrap();
    let channel = connection.channel().unwrap();
    let queue = exclusive_queue(&channel);
    let other = connection.channel().unwrap();
    let (tx, rx) = mpsc::channel();
    let result = {
        let own_queue = queue.clone();
        consume_and_read(&connection, &channel, &queue, move |ch, method, _, body| {
            let (other, queue) = (other.clone(), own_queue.clone());
            let declared = on_another_thread("queue.declare on another channel", move || {
                other.queue_declare(&queue, passive())
            });
            let _ = tx.send((body.to_vec(), declared));
            ch.basic_ack(method.delivery_tag, false)?;
            ch.stop_consuming(None)
        })
    };

    let publisher = connect();
    publish(&publisher.channel().unwrap(), &queue, b"start");
    let (body, declared) = report(&rx, "the RPC");
    assert_eq!(body, b"start");
    let ok = declared
        .unwrap()
        .unwrap_or_else(|e| panic!("the RPC from another thread failed: {e:?}"));
    // The message being handled is unacked, so not counted.
    assert_eq!((ok.message_count, ok.consumer_count), (0, 1));

    consuming_result(&result, "after the RPC").unwrap();
    assert!(connection.is_open(), "{:?}", connection.close_reason());
    publisher.close().unwrap();
    connection.close().unwrap();
}

#[test]
fn confirms_for_another_thread_arrive_while_the_callback_runs() {
    let connection = Connection::open(params().with_rpc_timeout(RPC_TIMEOUT)).unwrap();
    let channel = connection.channel().unwrap();
    let queue = exclusive_queue(&channel);
    let confirming = connection.channel().unwrap();
    let confirmed_queue = exclusive_queue(&confirming);
    confirming.confirm_delivery().unwrap();
    let (tx, rx) = mpsc::channel();
    let result = {
        let (confirming, confirmed_queue) = (confirming.clone(), confirmed_queue.clone());
        consume_and_read(&connection, &channel, &queue, move |ch, method, _, _| {
            let (c, q) = (confirming.clone(), confirmed_queue.clone());
            let one = on_another_thread("a confirmed basic_publish", move || {
                c.basic_publish("", &q, b"one")
            });
            let (c, q) = (confirming.clone(), confirmed_queue.clone());
            let window = on_another_thread("wait_for_confirms", move || {
                for body in [b"two", b"tri", b"for"] {
                    c.basic_publish_deferred("", &q, body, &PublishOptions::default())?;
                }
                c.wait_for_confirms(Some(RPC_TIMEOUT))
            });
            let _ = tx.send((one, window));
            ch.basic_ack(method.delivery_tag, false)?;
            ch.stop_consuming(None)
        })
    };

    let publisher = connect();
    publish(&publisher.channel().unwrap(), &queue, b"start");
    let (one, window) = report(&rx, "the confirms");
    one.unwrap()
        .unwrap_or_else(|e| panic!("the confirmed basic_publish failed: {e:?}"));
    let outcome = window
        .unwrap()
        .unwrap_or_else(|e| panic!("wait_for_confirms failed: {e:?}"));
    assert!(outcome.all_confirmed(), "{outcome:?}");

    consuming_result(&result, "after the confirms").unwrap();
    let ok = confirming
        .queue_declare(&confirmed_queue, passive())
        .unwrap();
    assert_eq!(ok.message_count, 4, "the confirmed messages");
    assert!(connection.is_open(), "{:?}", connection.close_reason());
    publisher.close().unwrap();
    connection.close().unwrap();
}

#[test]
fn another_consumer_gets_its_message_while_the_callback_runs() {
    let connection = Connection::open(params().with_rpc_timeout(RPC_TIMEOUT)).unwrap();
    let channel_a = connection.channel().unwrap();
    let queue_a = exclusive_queue(&channel_a);
    let channel_b = connection.channel().unwrap();
    let queue_b = exclusive_queue(&channel_b);
    // Shared so that the test can still see B's iterator end after the callback is gone.
    let items_b: Arc<Mutex<Option<mpsc::Receiver<Item>>>> = Arc::new(Mutex::new(None));
    let (started_tx, started_rx) = mpsc::channel();
    let (tx, rx) = mpsc::channel();
    let result = {
        let items_b = items_b.clone();
        consume_and_read(
            &connection,
            &channel_a,
            &queue_a,
            move |ch, method, _, _| {
                let _ = started_tx.send(());
                let item = match items_b.lock().unwrap().as_ref() {
                    Some(items) => items.recv_timeout(CALLBACK_PATIENCE).map_err(|e| {
                        format!("B yielded nothing within {CALLBACK_PATIENCE:?} ({e})")
                    }),
                    None => Err("B's iterator is not running".to_string()),
                };
                let _ = tx.send(item);
                ch.basic_ack(method.delivery_tag, false)?;
                ch.stop_consuming(None)
            },
        )
    };
    // A reads the socket; B, started now, finds it taken and waits on its channel.
    let consumer_b = channel_b
        .consume(
            &queue_b,
            ConsumeOptions {
                auto_ack: true,
                ..Default::default()
            },
        )
        .unwrap();
    let (_, items) = iterate_on_a_thread(consumer_b);
    *items_b.lock().unwrap() = Some(items);
    settle();

    let publisher = connect();
    let publishing = publisher.channel().unwrap();
    publish(&publishing, &queue_a, b"for A");
    started_rx
        .recv_timeout(REPORT_PATIENCE)
        .expect("A's callback started");
    publish(&publishing, &queue_b, b"for B");
    match report(&rx, "B's message") {
        Ok(Some(Ok(Consumed::Delivery(d)))) => assert_eq!(d.body, b"for B"),
        other => panic!("expected B's delivery while A's callback ran, got {other:?}"),
    }

    consuming_result(&result, "A").unwrap();
    assert_eq!(channel_b.cancel().unwrap(), 0, "B's messages requeued");
    let items = items_b.lock().unwrap().take().unwrap();
    match items.recv_timeout(Duration::from_secs(2)) {
        Ok(None) => {}
        other => panic!("expected B's iterator to end after cancel, got {other:?}"),
    }
    assert!(connection.is_open(), "{:?}", connection.close_reason());
    publisher.close().unwrap();
    connection.close().unwrap();
}

#[test]
fn a_bad_publish_from_the_callback_gets_its_channel_close_while_the_callback_runs() {
    let connection = Connection::open(params().with_rpc_timeout(RPC_TIMEOUT)).unwrap();
    let channel = connection.channel().unwrap();
    let queue = exclusive_queue(&channel);
    let missing = unique("no-such-exchange");
    let (tx, rx) = mpsc::channel();
    let result = {
        let missing = missing.clone();
        consume_and_read(&connection, &channel, &queue, move |ch, _, _, _| {
            // Record the error and return: start_consuming then ends with the channel's error.
            let _ = tx.send(publish_until_refused(ch, &missing));
            Ok(())
        })
    };

    let publisher = connect();
    publish(&publisher.channel().unwrap(), &queue, b"start");
    let err = assert_refused_publish(&report(&rx, "the bad publishes"), &missing);

    match consuming_result(&result, "after the channel close") {
        Err(e) => assert_eq!(e, err, "start_consuming's error"),
        Ok(()) => panic!("start_consuming returned Ok on a closed channel"),
    }
    assert!(channel.is_closed());
    assert!(connection.is_open(), "{:?}", connection.close_reason());
    // A new channel works; the unacked message went back to the queue with the old one.
    let fresh = connection.channel().unwrap();
    assert!(
        eventually(Duration::from_secs(5), || {
            let ok = fresh.queue_declare(&queue, passive()).unwrap();
            (ok.message_count, ok.consumer_count) == (1, 0)
        }),
        "{:?}",
        fresh.queue_declare(&queue, passive())
    );
    publisher.close().unwrap();
    connection.close().unwrap();
}

#[test]
fn a_bad_publish_from_another_thread_gets_its_channel_close_while_the_callback_runs() {
    let connection = Connection::open(params().with_rpc_timeout(RPC_TIMEOUT)).unwrap();
    let channel = connection.channel().unwrap();
    let queue = exclusive_queue(&channel);
    let doomed = connection.channel().unwrap();
    let missing = unique("no-such-exchange");
    let (tx, rx) = mpsc::channel();
    let result = {
        let (doomed, missing) = (doomed.clone(), missing.clone());
        consume_and_read(&connection, &channel, &queue, move |ch, method, _, _| {
            let (doomed, missing) = (doomed.clone(), missing.clone());
            let outcome = on_another_thread("the bad publishes", move || {
                publish_until_refused(&doomed, &missing)
            });
            let _ = tx.send(outcome);
            ch.basic_ack(method.delivery_tag, false)?;
            ch.stop_consuming(None)
        })
    };

    let publisher = connect();
    publish(&publisher.channel().unwrap(), &queue, b"start");
    let outcome = report(&rx, "the bad publishes").unwrap();
    assert_refused_publish(&outcome, &missing);

    consuming_result(&result, "after the other channel's close").unwrap();
    assert!(doomed.is_closed());
    assert!(channel.is_open());
    assert!(connection.is_open(), "{:?}", connection.close_reason());
    let fresh = connection.channel().unwrap();
    let ok = fresh.queue_declare(&queue, passive()).unwrap();
    assert_eq!((ok.message_count, ok.consumer_count), (0, 0));
    publisher.close().unwrap();
    connection.close().unwrap();
}

#[test]
fn a_thread_that_only_looks_sees_the_broker_close_the_connection_while_the_callback_runs() {
    // A health check polling is_open() from another thread must see a broker's close while a
    // consumer callback runs, without waiting or writing (default heartbeat: the I/O thread
    // has no heartbeat duty for tens of seconds).
    sees_the_broker_close_while_the_callback_runs(params());
}

#[test]
fn with_heartbeats_off_a_parked_token_still_lets_a_broker_close_be_read() {
    // heartbeat=0: the I/O thread has no timer at all; what it reads after the token was
    // parked must not depend on one.
    sees_the_broker_close_while_the_callback_runs(params().with_heartbeat(Some(0)));
}

fn sees_the_broker_close_while_the_callback_runs(params: cottontail::ConnectionParameters) {
    let name = unique("parked-close");
    let connection = Connection::open(params.with_connection_name(&name)).unwrap();
    let channel = connection.channel().unwrap();
    let queue = exclusive_queue(&channel);
    let (reports, report_rx) = mpsc::channel();
    let watcher = connection.clone();
    let result = consume_and_read(&connection, &channel, &queue, move |_, _, _, _| {
        let names = broker_connections_named(&name);
        support::rabbitmqctl(&["close_connection", &names[0], "closed by the test"]);
        let watcher = watcher.clone();
        let seen = on_another_thread("polling is_open", move || {
            let started = Instant::now();
            while watcher.is_open() {
                if started.elapsed() > Duration::from_secs(5) {
                    return None;
                }
                thread::sleep(Duration::from_millis(10));
            }
            watcher.close_reason()
        });
        let _ = reports.send(seen);
        Ok(())
    });
    let publisher = connect();
    publish(&publisher.channel().unwrap(), &queue, b"start");
    match report(&report_rx, "the watcher") {
        Ok(Some(Error::ConnectionClosed { reply_code, .. })) => assert_eq!(reply_code, 320),
        other => panic!("expected the broker's close (320) while the callback ran: {other:?}"),
    }
    assert!(matches!(
        consuming_result(&result, "after the close"),
        Err(Error::ConnectionClosed {
            reply_code: 320,
            ..
        })
    ));
    publisher.close().unwrap();
}

#[test]
fn messages_keep_arriving_for_an_iterator_whose_caller_only_looks() {
    // After a consume() step hands a message over, the caller may only poll
    // waiting_message_count(): messages published meanwhile must still be read for it.
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = exclusive_queue(&channel);
    let mut consumer = channel.consume(&queue, ConsumeOptions::default()).unwrap();
    let publisher = connect();
    let publishing = publisher.channel().unwrap();
    publish(&publishing, &queue, b"first");
    match consumer.next() {
        Some(Ok(Consumed::Delivery(d))) => assert_eq!(d.body, b"first"),
        other => panic!("expected the first delivery, got {other:?}"),
    }
    for i in 0..5u8 {
        publish(&publishing, &queue, &[i]);
    }
    assert!(
        eventually(Duration::from_secs(5), || consumer.waiting_message_count()
            == 5),
        "only {} of 5 messages arrived while the caller looked",
        consumer.waiting_message_count()
    );
    assert_eq!(channel.waiting_message_count(), 5);
    for i in 0..5u8 {
        match consumer.next() {
            Some(Ok(Consumed::Delivery(d))) => assert_eq!(d.body, [i]),
            other => panic!("expected delivery {i}, got {other:?}"),
        }
    }
    publisher.close().unwrap();
    connection.close().unwrap();
}

#[test]
fn a_long_callback_does_not_starve_a_short_heartbeat() {
    let name = unique("long-callback-heartbeat");
    let connection = Connection::open(
        params()
            .with_heartbeat(Some(1))
            .with_connection_name(&name)
            .with_rpc_timeout(RPC_TIMEOUT),
    )
    .unwrap();
    assert_eq!(connection.heartbeat(), 1);
    let channel = connection.channel().unwrap();
    let queue = exclusive_queue(&channel);
    let (tx, rx) = mpsc::channel();
    let result = consume_and_read(&connection, &channel, &queue, move |ch, method, _, _| {
        // Without calling the library: only the I/O thread can read the broker's heartbeats
        // meanwhile, and with 1 s heartbeats it gives up after 2 s of silence.
        thread::sleep(Duration::from_millis(3500));
        let acked = ch.basic_ack(method.delivery_tag, false);
        let stopped = ch.stop_consuming(None);
        let _ = tx.send((acked, stopped));
        Ok(())
    });

    let publisher = connect();
    publish(&publisher.channel().unwrap(), &queue, b"start");
    let (acked, stopped) = report(&rx, "the long callback");
    acked.unwrap_or_else(|e| panic!("basic_ack after the long callback: {e:?}"));
    stopped.unwrap_or_else(|e| panic!("stop_consuming after the long callback: {e:?}"));
    consuming_result(&result, "after the long callback").unwrap();

    assert!(connection.is_open(), "{:?}", connection.close_reason());
    assert_eq!(connection.close_reason(), None);
    let listed = broker_connections_named(&name);
    assert_eq!(listed.len(), 1, "the broker's connections: {listed:?}");
    // The ack reached the broker: closing the channel requeues nothing.
    channel.close().unwrap();
    thread::sleep(Duration::from_millis(300));
    let checking = connection.channel().unwrap();
    let ok = checking.queue_declare(&queue, passive()).unwrap();
    assert_eq!((ok.message_count, ok.consumer_count), (0, 0));
    assert!(connection.is_open(), "{:?}", connection.close_reason());
    publisher.close().unwrap();
    connection.close().unwrap();
}

#[test]
fn a_burst_with_acks_and_rpcs_from_the_callback_arrives_in_order() {
    const N: u32 = 2000;
    const RPC_EVERY: u32 = 100;
    let queue = unique("parked-burst");
    let _cleanup = Cleanup(vec![queue.clone()]);
    let consuming = Connection::open(params().with_rpc_timeout(RPC_TIMEOUT)).unwrap();
    let channel = consuming.channel().unwrap();
    channel
        .queue_declare(&queue, QueueDeclareOptions::default())
        .unwrap();
    let received = Arc::new(Mutex::new(Vec::with_capacity(N as usize)));
    let rpcs = Arc::new(Mutex::new(0u32));
    let result = {
        let (received, rpcs, own_queue) = (received.clone(), rpcs.clone(), queue.clone());
        consume_and_read(&consuming, &channel, &queue, move |ch, method, _, body| {
            let n = record_in_order(&received, body)
                .map_err(|e| Error::Callback(CallbackError::new(e)))?;
            ch.basic_ack(method.delivery_tag, false)?;
            if (n + 1) % RPC_EVERY == 0 {
                let ok = ch.queue_declare(&own_queue, passive())?;
                if ok.consumer_count != 1 {
                    return Err(Error::Callback(CallbackError::new(format!(
                        "at message {n}: {} consumers",
                        ok.consumer_count
                    ))));
                }
                *rpcs.lock().unwrap() += 1;
            }
            if n + 1 == N {
                ch.stop_consuming(None)?;
            }
            Ok(())
        })
    };

    let publisher = connect();
    let publishing = publisher.channel().unwrap();
    publish_numbered(&publishing, &queue, 0..N);
    expect_all_in_order(&result, &received, N, Duration::from_secs(60));
    assert_eq!(
        *rpcs.lock().unwrap(),
        N / RPC_EVERY,
        "RPCs from the callback"
    );
    assert!(channel.consumer_tags().is_empty());

    // From the other connection: nothing ready...
    let checking = publisher.channel().unwrap();
    let ok = checking.queue_declare(&queue, passive()).unwrap();
    assert_eq!((ok.message_count, ok.consumer_count), (0, 0));
    // ...and nothing unacked: closing the consumer's connection requeues nothing.
    assert!(consuming.is_open(), "{:?}", consuming.close_reason());
    consuming.close().unwrap();
    thread::sleep(Duration::from_millis(300));
    let ok = checking.queue_declare(&queue, passive()).unwrap();
    assert_eq!(
        ok.message_count, 0,
        "unacked messages came back after close"
    );
    publisher.close().unwrap();
}
