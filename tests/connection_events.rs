//! pika's connection-level event loop: process_data_events, sleep, call_later,
//! add_callback_threadsafe, capabilities and update_secret, against a real RabbitMQ.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use cottontail::{BasicConsumeOptions, Connection};
use support::{connect, exclusive_queue, params};

#[test]
fn process_data_events_runs_consumer_callbacks_of_every_channel() {
    let connection = connect();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut channels = Vec::new();
    for name in ["a", "b"] {
        let channel = connection.channel().unwrap();
        let queue = exclusive_queue(&channel);
        let seen = seen.clone();
        channel
            .basic_consume(
                &queue,
                move |_, _, _, body| {
                    seen.lock()
                        .unwrap()
                        .push(format!("{name}:{}", String::from_utf8_lossy(body)));
                },
                BasicConsumeOptions {
                    auto_ack: true,
                    ..Default::default()
                },
            )
            .unwrap();
        channel.basic_publish("", &queue, name.as_bytes()).unwrap();
        channels.push(channel);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.lock().unwrap().len() < 2 && Instant::now() < deadline {
        connection
            .process_data_events(Duration::from_millis(100))
            .unwrap();
    }
    let mut got = seen.lock().unwrap().clone();
    got.sort();
    assert_eq!(got, vec!["a:a".to_string(), "b:b".to_string()]);
}

#[test]
fn process_data_events_with_zero_time_limit_returns_at_once() {
    let connection = connect();
    let started = Instant::now();
    connection.process_data_events(Duration::ZERO).unwrap();
    assert!(started.elapsed() < Duration::from_millis(500));
}

#[test]
fn call_later_runs_on_time_inside_process_data_events_and_remove_timeout_cancels() {
    let connection = connect();
    let fired = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let (tx, rx) = mpsc::channel();
    connection.call_later(Duration::from_millis(200), move || {
        tx.send(started.elapsed()).unwrap()
    });
    let removed = {
        let fired = fired.clone();
        connection.call_later(Duration::from_millis(100), move || {
            fired.fetch_add(1, Ordering::SeqCst);
        })
    };
    assert!(connection.remove_timeout(removed));
    assert!(!connection.remove_timeout(removed));
    // It returns once the timer has run (and at the latest after 5 s).
    connection
        .process_data_events(Duration::from_secs(5))
        .unwrap();
    let at = rx.try_recv().expect("the timer ran");
    assert!(
        at >= Duration::from_millis(200) && at < Duration::from_secs(2),
        "{at:?}"
    );
    assert_eq!(fired.load(Ordering::SeqCst), 0);
}

#[test]
fn add_callback_threadsafe_runs_on_the_consuming_thread() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = exclusive_queue(&channel);
    channel
        .basic_consume(&queue, |_, _, _, _| {}, Default::default())
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let consuming = std::thread::spawn({
        let channel = channel.clone();
        move || {
            tx.send(std::thread::current().id()).unwrap();
            channel.start_consuming()
        }
    });
    let consumer_thread = rx.recv().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let (ran_tx, ran_rx) = mpsc::channel();
    let stopper = channel.clone();
    connection
        .add_callback_threadsafe(move || {
            ran_tx.send(std::thread::current().id()).unwrap();
            stopper.stop_consuming(None)
        })
        .unwrap();
    let ran_on = ran_rx
        .recv_timeout(Duration::from_secs(2))
        .expect("callback ran");
    assert_eq!(ran_on, consumer_thread);
    consuming.join().unwrap().unwrap();
}

#[test]
fn sleep_keeps_a_one_second_heartbeat_connection_alive() {
    let connection = Connection::open(params().with_heartbeat(Some(1))).unwrap();
    connection.sleep(Duration::from_millis(3200)).unwrap();
    assert!(connection.is_open());
    std::thread::sleep(Duration::from_millis(3200));
    assert!(connection.is_open(), "{:?}", connection.close_reason());
    connection.channel().unwrap();
}

#[test]
fn rabbitmq_capabilities_are_reported() {
    let connection = connect();
    assert!(connection.basic_nack_supported());
    assert!(connection.consumer_cancel_notify_supported());
    assert!(connection.exchange_exchange_bindings_supported());
    assert!(connection.publisher_confirms_supported());
    assert!(!connection.is_blocked());
}

#[test]
fn update_secret_with_the_current_password_is_accepted() {
    let connection = connect();
    connection.update_secret("guest", "rotation test").unwrap();
    assert!(connection.is_open());
    connection.channel().unwrap();
}

#[test]
fn process_data_events_returns_once_it_handled_an_event() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = exclusive_queue(&channel);
    let got = Arc::new(AtomicUsize::new(0));
    {
        let got = got.clone();
        channel
            .basic_consume(
                &queue,
                move |_, _, _, _| {
                    got.fetch_add(1, Ordering::SeqCst);
                },
                BasicConsumeOptions {
                    auto_ack: true,
                    ..Default::default()
                },
            )
            .unwrap();
    }
    let publisher = connection.clone();
    let queue_name = queue.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        let channel = publisher.channel().unwrap();
        channel.basic_publish("", &queue_name, b"wake up").unwrap();
    });
    let started = Instant::now();
    // pika's time_limit=None: wait until something happens.
    connection.process_data_events(Duration::MAX).unwrap();
    assert_eq!(got.load(Ordering::SeqCst), 1);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn call_later_fires_inside_start_consuming_and_consume() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = exclusive_queue(&channel);
    channel
        .basic_consume(&queue, |_, _, _, _| {}, Default::default())
        .unwrap();
    let stopper = channel.clone();
    let started = Instant::now();
    connection.call_later(Duration::from_millis(300), move || {
        stopper.stop_consuming(None).unwrap();
    });
    channel.start_consuming().unwrap();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );

    // A timer inside a consume() iteration with no inactivity timeout: it runs, and the
    // iterator goes on waiting for messages instead of reporting inactivity.
    let publisher = connection.channel().unwrap();
    let queue_name = queue.clone();
    connection.call_later(Duration::from_millis(200), move || {
        publisher
            .basic_publish("", &queue_name, b"after the timer")
            .unwrap();
    });
    let mut consumer = channel
        .consume(
            &queue,
            cottontail::ConsumeOptions {
                auto_ack: true,
                ..Default::default()
            },
        )
        .unwrap();
    match consumer.next() {
        Some(Ok(cottontail::Consumed::Delivery(d))) => assert_eq!(d.body, b"after the timer"),
        other => panic!("expected the delivery the timer published, got {other:?}"),
    }
}

/// `Connection::close` called from a consumer callback while `start_consuming` works through
/// a backlog: every delivery the client had read before the close still reaches the callback
/// (the broker counts those auto-acked ones delivered), none is lost; the callbacks are
/// dropped once `start_consuming` returns. The close comes once the broker has sent every
/// message (auto-acked ones in flight at a close are lost by nature).
#[test]
fn a_close_from_a_callback_still_hands_out_what_was_read_before_it() {
    const MESSAGES: usize = 500;
    let connection = connect();
    let setup = connect();
    let setup_channel = setup.channel().unwrap();
    let queue = support::named_queue(&setup_channel, "close-in-callback");
    for i in 0..MESSAGES {
        setup_channel
            .basic_publish("", &queue, i.to_string().as_bytes())
            .unwrap();
    }
    let channel = connection.channel().unwrap();
    let got = Arc::new(AtomicUsize::new(0));
    let counted = got.clone();
    let held = Arc::new(());
    let in_callback = held.clone();
    let watcher = setup.channel().unwrap();
    let watched = queue.clone();
    channel
        .basic_consume(
            &queue,
            move |ch, _, _, _| {
                let _ = &in_callback;
                if counted.fetch_add(1, Ordering::SeqCst) == 5 {
                    // Every message sent by the broker, and given time to arrive.
                    let sent = support::eventually(Duration::from_secs(10), || {
                        (watcher.queue_declare(&watched, support::consuming::passive()))
                            .unwrap()
                            .message_count
                            == 0
                    });
                    assert!(sent, "the broker did not send every message");
                    std::thread::sleep(Duration::from_millis(300));
                    ch.connection().close().unwrap();
                }
            },
            BasicConsumeOptions {
                auto_ack: true,
                ..Default::default()
            },
        )
        .unwrap();
    // Ends once what was read is handed out (as pika's, without an error: the application
    // closed the connection itself).
    let consumed = channel.start_consuming();
    assert!(
        matches!(
            consumed,
            Ok(()) | Err(cottontail::Error::ConnectionClosedByClient { .. })
        ),
        "{consumed:?}"
    );
    let got = got.load(Ordering::SeqCst);
    assert_eq!(got, MESSAGES, "the callback got {got}: the rest was lost");
    assert_eq!(
        Arc::strong_count(&held),
        1,
        "the consumer callback outlived the close"
    );
    // Callbacks registered on a closed connection are not kept either.
    let registered = held.clone();
    connection.add_on_connection_blocked_callback(move |_, _| {
        let _ = &registered;
    });
    let registered = held.clone();
    connection.call_later(Duration::from_secs(3600), move || {
        let _ = &registered;
    });
    let registered = held.clone();
    channel.add_on_return_callback(move |_, _, _, _| {
        let _ = &registered;
    });
    assert_eq!(Arc::strong_count(&held), 1, "a callback was kept");
    setup_channel
        .queue_delete(&queue, Default::default())
        .unwrap();
    setup.close().unwrap();
}
