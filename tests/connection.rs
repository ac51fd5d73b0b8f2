//! Opening, tuning, closing and losing connections against a real RabbitMQ.

mod support;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use cottontail::{
    BasicConsumeOptions, Channel, Connection, ConnectionParameters, Error, PlainCredentials,
    QueueDeclareOptions,
};
use support::{broker_connections_named, connect, eventually, params, rabbitmqctl, unique};

#[test]
fn connection_and_channel_are_send_sync_clone() {
    fn assert_shareable<T: Send + Sync + Clone + 'static>() {}
    assert_shareable::<Connection>();
    assert_shareable::<Channel>();
    assert_shareable::<Error>();
}

#[test]
fn open_negotiates_rabbitmq_defaults_and_close_is_clean() {
    let connection = connect();
    assert!(connection.is_open());
    assert_eq!(connection.frame_max(), 131_072);
    assert_eq!(connection.channel_max(), 2047);
    assert_eq!(
        connection.heartbeat(),
        60,
        "heartbeat None takes the broker's 60 s"
    );
    assert_eq!(
        connection
            .server_properties()
            .get("product")
            .and_then(|p| p.as_str()),
        Some("RabbitMQ")
    );
    let channel = connection.channel().unwrap();
    assert_eq!(channel.channel_number(), 1);
    connection.close().unwrap();
    assert!(connection.is_closed());
    assert!(channel.is_closed());
    assert!(matches!(
        connection.channel(),
        Err(Error::ConnectionClosedByClient {
            reply_code: 200,
            ..
        })
    ));
    // Closing twice is harmless.
    connection.close().unwrap();
}

#[test]
fn heartbeat_and_frame_max_requests_are_honoured() {
    let connection = Connection::open(
        params()
            .with_heartbeat(Some(7))
            .with_frame_max(16_384)
            .with_channel_max(10),
    )
    .unwrap();
    assert_eq!(connection.heartbeat(), 7);
    assert_eq!(connection.frame_max(), 16_384);
    assert_eq!(connection.channel_max(), 10);
    let off = Connection::open(params().with_heartbeat(Some(0))).unwrap();
    assert_eq!(off.heartbeat(), 0);
}

#[test]
fn wrong_password_is_an_authentication_error_within_the_deadline() {
    let started = Instant::now();
    let err = Connection::open(
        params()
            .with_credentials(PlainCredentials::new("guest", "not-the-password"))
            .with_stack_timeout(Duration::from_secs(5)),
    )
    .unwrap_err();
    assert!(matches!(err, Error::AuthenticationFailed { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!format!("{err:?}{err}").contains("not-the-password"));
}

#[test]
fn unknown_vhost_is_access_refused() {
    let err = Connection::open(params().with_virtual_host("no-such-vhost")).unwrap_err();
    match err {
        Error::AccessRefused { vhost, reply_text } => {
            assert_eq!(vhost, "no-such-vhost");
            assert!(reply_text.contains("no-such-vhost"), "{reply_text}");
        }
        other => panic!("expected AccessRefused, got {other:?}"),
    }
}

#[test]
fn nothing_listening_is_an_io_error() {
    // Port 1 on loopback: nothing listens there.
    let err = Connection::open(ConnectionParameters::new("127.0.0.1").with_port(1)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Io {
                kind: std::io::ErrorKind::ConnectionRefused,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn open_url_connects_with_percent_encoded_vhost() {
    support::ensure_broker();
    let connection =
        Connection::open_url("amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=5").unwrap();
    assert_eq!(connection.heartbeat(), 5);
    connection.channel().unwrap();
}

#[test]
fn connection_name_shows_on_the_broker_and_drop_closes_the_connection() {
    let name = unique("named-connection");
    let connection = Connection::open(params().with_connection_name(&name)).unwrap();
    let _channel = connection.channel().unwrap();
    assert_eq!(broker_connections_named(&name).len(), 1);
    drop(connection);
    // The channel handle keeps the connection alive; dropping it too closes everything.
    drop(_channel);
    assert!(
        eventually(Duration::from_secs(5), || broker_connections_named(&name)
            .is_empty()),
        "the broker still lists the connection after drop"
    );
}

#[test]
fn broker_forced_close_reaches_a_waiting_consumer() {
    let name = unique("forced");
    let connection = Connection::open(params().with_connection_name(&name)).unwrap();
    let channel = connection.channel().unwrap();
    let queue = support::exclusive_queue(&channel);
    channel
        .basic_consume(&queue, |_, _, _, _| {}, BasicConsumeOptions::default())
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let consumer = channel.clone();
    std::thread::spawn(move || tx.send(consumer.start_consuming()).unwrap());
    let names = broker_connections_named(&name);
    assert_eq!(names.len(), 1);
    rabbitmqctl(&["close_connection", &names[0], "closed by the test"]);
    let result = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("start_consuming returned");
    match result {
        Err(Error::ConnectionClosed {
            reply_code,
            reply_text,
            ..
        }) => {
            assert_eq!(reply_code, 320);
            assert!(reply_text.contains("closed by the test"), "{reply_text}");
        }
        other => panic!("expected ConnectionClosed, got {other:?}"),
    }
    assert!(connection.is_closed());
    assert!(matches!(
        channel.queue_declare("x", Default::default()),
        Err(Error::ConnectionClosed {
            reply_code: 320,
            ..
        })
    ));
}

#[test]
fn slow_callback_does_not_starve_heartbeats() {
    // pika's best-known bug: a callback longer than two heartbeat intervals kills the connection.
    let connection = Connection::open(params().with_heartbeat(Some(1))).unwrap();
    assert_eq!(connection.heartbeat(), 1);
    let channel = connection.channel().unwrap();
    let queue = unique("slow-callback");
    channel
        .queue_declare(&queue, QueueDeclareOptions::default())
        .unwrap();
    for body in [&b"first"[..], b"second"] {
        channel.basic_publish("", &queue, body).unwrap();
    }
    let mut seen = Vec::new();
    channel
        .basic_consume(
            &queue,
            move |ch, method, _, body| -> cottontail::Result<()> {
                seen.push(body.to_vec());
                if seen.len() == 1 {
                    std::thread::sleep(Duration::from_millis(3500));
                }
                ch.basic_ack(method.delivery_tag, false)?;
                if seen.len() == 2 {
                    assert_eq!(seen, vec![b"first".to_vec(), b"second".to_vec()]);
                    ch.stop_consuming(None)?;
                }
                Ok(())
            },
            BasicConsumeOptions::default(),
        )
        .unwrap();
    channel.start_consuming().unwrap();
    assert!(connection.is_open(), "{:?}", connection.close_reason());
    let ok = channel
        .queue_declare(
            &queue,
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(ok.message_count, 0);
    channel.queue_delete(&queue, Default::default()).unwrap();
}

#[test]
fn explicit_channel_numbers_are_checked() {
    let connection = Connection::open(params().with_channel_max(5)).unwrap();
    let three = connection.channel_with_number(3).unwrap();
    assert_eq!(three.channel_number(), 3);
    assert!(matches!(
        connection.channel_with_number(3),
        Err(Error::InvalidChannelNumber { number: 3, .. })
    ));
    assert!(matches!(
        connection.channel_with_number(0),
        Err(Error::InvalidChannelNumber { number: 0, .. })
    ));
    assert!(matches!(
        connection.channel_with_number(6),
        Err(Error::InvalidChannelNumber { number: 6, .. })
    ));
    let mut channels = vec![three];
    for _ in 0..4 {
        channels.push(connection.channel().unwrap());
    }
    let mut numbers: Vec<u16> = channels.iter().map(Channel::channel_number).collect();
    numbers.sort();
    assert_eq!(numbers, vec![1, 2, 3, 4, 5]);
    assert!(matches!(
        connection.channel(),
        Err(Error::NoFreeChannels { channel_max: 5 })
    ));
    // A closed channel's number becomes free again.
    channels[0].close().unwrap();
    assert_eq!(connection.channel().unwrap().channel_number(), 3);
}

#[test]
fn failover_tries_parameter_sets_in_order() {
    // Nothing listens on ports 1 and 2: the third set is used.
    let dead = |port| {
        ConnectionParameters::new("127.0.0.1")
            .with_port(port)
            .with_retry_delay(Duration::from_millis(50))
    };
    let connection = Connection::open(vec![dead(1), dead(2), params()]).unwrap();
    assert!(connection.is_open());
    connection.channel().unwrap();
}

/// pika's rule: the next set is tried at once after one fails; `retry_delay` (the last set's)
/// is only the pause between two passes over the whole list.
#[test]
fn failover_moves_to_the_next_set_without_the_retry_delay() {
    let dead = ConnectionParameters::new("127.0.0.1")
        .with_port(1)
        .with_connection_attempts(5)
        .with_retry_delay(Duration::from_secs(60));
    let live = params()
        .with_connection_attempts(5)
        .with_retry_delay(Duration::from_secs(60));
    let started = Instant::now();
    let connection = Connection::open(vec![dead, live]).unwrap();
    assert!(connection.is_open());
    // A pause would have taken at least 60 s.
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
}

/// A long run of failed attempts (a caller's `connection_attempts`, no delay) keeps only the
/// last attempts' errors, and counts them all.
#[test]
fn many_failed_attempts_keep_a_bounded_list_of_errors() {
    const ATTEMPTS: u32 = 5_000;
    let dead = ConnectionParameters::new("127.0.0.1")
        .with_port(1)
        .with_connection_attempts(ATTEMPTS)
        .with_retry_delay(Duration::ZERO);
    match Connection::open(dead).unwrap_err() {
        Error::AllAttemptsFailed { failed, attempts } => {
            assert_eq!(failed, ATTEMPTS as usize);
            assert_eq!(attempts.len(), cottontail::ATTEMPT_ERRORS_KEPT);
        }
        other => panic!("expected AllAttemptsFailed, got {other:?}"),
    }
}

#[test]
fn every_attempt_is_made_and_reported_when_all_fail() {
    let dead = ConnectionParameters::new("127.0.0.1")
        .with_port(1)
        .with_connection_attempts(1)
        .with_retry_delay(Duration::ZERO);
    // The last set's attempts (3) and delay (100 ms) rule: three passes over both sets.
    let last = dead
        .clone()
        .with_port(2)
        .with_connection_attempts(3)
        .with_retry_delay(Duration::from_millis(100));
    let started = Instant::now();
    let err = Connection::open([dead, last]).unwrap_err();
    match &err {
        Error::AllAttemptsFailed { failed, attempts } => {
            assert_eq!((*failed, attempts.len()), (6, 6));
            assert!(
                attempts.iter().all(|e| matches!(e, Error::Io { .. })),
                "{attempts:?}"
            );
        }
        other => panic!("expected AllAttemptsFailed, got {other:?}"),
    }
    // Two pauses, between the three passes.
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
    assert!(
        err.to_string().starts_with("6 connection attempts failed"),
        "{err}"
    );
    // Every host is named by its attempt's error.
    let Error::AllAttemptsFailed { attempts, .. } = &err else {
        unreachable!()
    };
    let errors: Vec<String> = attempts.iter().map(ToString::to_string).collect();
    let naming = |host: &str| errors.iter().filter(|e| e.contains(host)).count();
    assert_eq!(naming("127.0.0.1:1:"), 3, "{errors:?}");
    assert_eq!(naming("127.0.0.1:2:"), 3, "{errors:?}");
}

#[test]
fn a_refused_login_is_not_retried() {
    let started = Instant::now();
    let err = Connection::open(
        params()
            .with_credentials(PlainCredentials::new("guest", "wrong"))
            .with_connection_attempts(5)
            .with_retry_delay(Duration::from_secs(10)),
    )
    .unwrap_err();
    assert!(matches!(err, Error::AuthenticationFailed { .. }), "{err:?}");
    // A retry would wait 10 s first.
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn tcp_options_apply_keepalive_to_the_socket() {
    let name = unique("keepalive");
    let connection = Connection::open(params().with_connection_name(&name).with_tcp_options(
        cottontail::TcpOptions {
            keepalive_idle: Some(Duration::from_secs(42)),
            keepalive_interval: Some(Duration::from_secs(5)),
            keepalive_count: Some(3),
            user_timeout: Some(Duration::from_secs(20)),
        },
    ))
    .unwrap();
    // Our end of the connection is the broker's peer_port.
    let line = rabbitmqctl(&["list_connections", "-s", "peer_port", "client_properties"])
        .lines()
        .find(|l| l.contains(&name))
        .map(str::to_string)
        .expect("the connection on the broker");
    let port = line.split('\t').next().unwrap().trim().to_string();
    let ss = std::process::Command::new("ss")
        .args([
            "-tno",
            "state",
            "established",
            &format!("( sport = :{port} )"),
        ])
        .output()
        .expect("running ss");
    let ss = String::from_utf8_lossy(&ss.stdout);
    assert!(
        ss.contains("keepalive"),
        "no keepalive timer on port {port}: {ss}"
    );
    drop(connection);
}

#[test]
fn invalid_parameters_are_refused_before_connecting() {
    let started = Instant::now();
    // Port 1 would be refused by the OS; the validation error comes first.
    let err = Connection::open(
        ConnectionParameters::new("127.0.0.1")
            .with_port(1)
            .with_socket_timeout(Duration::ZERO),
    )
    .unwrap_err();
    assert_eq!(
        err,
        Error::InvalidArgument("socket_timeout must be more than 0 seconds, got 0".into())
    );
    assert!(started.elapsed() < Duration::from_millis(100));
}

/// Cleanup that runs while a panic unwinds (a guard's `Drop` that declares, acks or closes)
/// uses the connection like any other call: the calls succeed and the connection stays open.
/// Before, a call that read the socket while the thread was unwinding a panic of the
/// application's took that panic for one of its own while reading, and ended the connection
/// with `StreamLost` ("a panic while reading the socket").
#[test]
fn calls_made_while_a_panic_unwinds_work_and_leave_the_connection_open() {
    struct DeclareOnDrop(Channel, String, mpsc::Sender<Result<u32, Error>>);
    impl Drop for DeclareOnDrop {
        fn drop(&mut self) {
            let passive = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            let declared = self.0.queue_declare(&self.1, passive);
            let _ = self.2.send(declared.map(|ok| ok.message_count));
        }
    }
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = unique("unwinding");
    channel
        .queue_declare(
            &queue,
            QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
        )
        .unwrap();
    channel.basic_publish("", &queue, b"kept").unwrap();
    let (tx, rx) = mpsc::channel();
    let guard = DeclareOnDrop(channel.clone(), queue.clone(), tx);
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _guard = guard;
        panic!("the application's own bug");
    }));
    assert!(unwound.is_err());
    let declared = rx.recv().expect("the guard ran");
    assert!(
        matches!(declared, Ok(0 | 1)),
        "the declare during unwinding: {declared:?}"
    );
    assert!(connection.is_open(), "{:?}", connection.close());
    assert!(channel.is_open());
    channel.queue_delete(&queue, Default::default()).unwrap();
    connection.close().unwrap();
}
