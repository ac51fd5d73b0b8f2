//! A caller's bad values, against a real RabbitMQ: each is refused with a typed error before
//! anything is sent or changed, and the connection goes on as if the call had not been made.

mod support;

use std::time::Duration;

use cottontail::{
    BasicConsumeOptions, BasicProperties, ConsumeOptions, Consumed, Error, FieldTable,
    PublishOptions, QueueDeclareOptions, RecoveryPolicy,
};
use support::{connect, exclusive_queue, message_count, params};

/// A header table larger than a frame would make the broker close the whole connection with
/// 501 FRAME_ERROR: the publish (and a declare with such arguments) is refused instead, and
/// the connection and channel go on.
#[test]
fn a_frame_over_frame_max_is_refused_and_the_connection_goes_on() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = exclusive_queue(&channel);
    let big = "x".repeat(connection.frame_max() as usize + 1);
    let options = PublishOptions {
        properties: BasicProperties::default().with_header("h", big.as_str()),
        ..Default::default()
    };
    match channel.basic_publish_with("", &queue, b"too big", &options) {
        Err(Error::InvalidArgument(text)) => assert!(text.contains("frame_max"), "{text}"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    let declared = channel.queue_declare(
        "",
        QueueDeclareOptions {
            exclusive: true,
            arguments: FieldTable::new().with("x-big", big.as_str()),
            ..Default::default()
        },
    );
    assert!(
        matches!(declared, Err(Error::InvalidArgument(_))),
        "{declared:?}"
    );
    channel.basic_publish("", &queue, b"fine").unwrap();
    assert!(connection.is_open() && channel.is_open());
    // Counted on another channel, which the publish may not have reached yet.
    assert!(
        support::eventually(Duration::from_secs(5), || message_count(
            &connection,
            &queue
        ) == 1),
        "the queue holds {} messages, not the 1 published after the refused calls",
        message_count(&connection, &queue)
    );
    connection.close().unwrap();
}

/// An empty consumer tag means "make one" (pika makes one whenever the tag is falsy): the
/// consumer gets its messages, under a tag of its own.
#[test]
fn an_empty_consumer_tag_gets_a_tag_of_its_own_and_its_messages() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = exclusive_queue(&channel);
    channel.basic_publish("", &queue, b"one").unwrap();
    let tag = channel
        .basic_consume(
            &queue,
            |ch, _method, _props, body| {
                assert_eq!(body, b"one");
                ch.stop_consuming(None)
            },
            BasicConsumeOptions {
                auto_ack: true,
                consumer_tag: Some(String::new()),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(!tag.is_empty());
    channel.start_consuming().unwrap();
    channel.basic_publish("", &queue, b"two").unwrap();
    let mut consumer = channel
        .consume(
            &queue,
            ConsumeOptions {
                auto_ack: true,
                consumer_tag: Some(String::new()),
                inactivity_timeout: Some(Duration::from_secs(5)),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(!consumer.consumer_tag().is_empty());
    match consumer.next() {
        Some(Ok(Consumed::Delivery(d))) => assert_eq!(d.body, b"two"),
        other => panic!("expected the message, got {other:?}"),
    }
    drop(consumer);
    connection.close().unwrap();
}

/// A close text or an update-secret reason over 255 bytes is refused before anything
/// changes: with recovery on, the connection stays open (its recovery not ended for good),
/// and works on.
#[test]
fn an_overlong_close_text_or_secret_reason_changes_nothing() {
    let connection =
        cottontail::Connection::open(params().with_recovery(RecoveryPolicy::default())).unwrap();
    let long = "r".repeat(256);
    assert!(matches!(
        connection.close_with(200, &long),
        Err(Error::InvalidArgument(_))
    ));
    assert!(connection.is_open(), "{:?}", connection.close_reason());
    assert!(matches!(
        connection.update_secret("not the password", &long),
        Err(Error::InvalidArgument(_))
    ));
    let channel = connection.channel().unwrap();
    let queue = exclusive_queue(&channel);
    channel.basic_publish("", &queue, b"still open").unwrap();
    assert_eq!(message_count(&connection, &queue), 1);
    connection.close().unwrap();
    assert!(connection.is_closed());
}

/// The login (connection.start-ok) must fit in the 4096 bytes AMQP allows a connection's first
/// frames. RabbitMQ 3.10 takes 8 bytes more, then drops one without a word and resets the
/// socket 3 s later, which came back as an opaque I/O error (every attempt paying the 3 s). A
/// connection name or a password that makes it larger than AMQP's limit is refused before any
/// socket, naming the frame's size; the longest name that fits logs in, and the broker shows
/// it.
#[test]
fn a_login_too_large_for_the_first_frames_is_refused_and_the_largest_that_fits_works() {
    let name = |len: usize| {
        let prefix = support::unique("n");
        format!("{prefix}{}", "n".repeat(len - prefix.len()))
    };
    let started = std::time::Instant::now();
    let refused = cottontail::Connection::open(params().with_connection_name(name(4000)));
    let size: usize = match &refused {
        Err(Error::InvalidArgument(why)) if why.contains("before connection.tune") => why
            .split("a frame of ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no frame size in {why:?}")),
        other => panic!("{other:?}"),
    };
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once"
    );
    assert!(size > 4096, "{size}");
    let largest = name(4000 - (size - 4096));
    let connection = cottontail::Connection::open(params().with_connection_name(&largest))
        .expect("the largest login that fits in 4096 bytes");
    assert_eq!(support::broker_connections_named(&largest).len(), 1);
    connection.close().unwrap();
    // A 5,000-byte password (an OAuth2 token, say) likewise.
    let token = "t".repeat(5000);
    let refused = cottontail::Connection::open(
        params().with_credentials(cottontail::PlainCredentials::new("guest", token.as_str())),
    );
    assert!(
        matches!(&refused, Err(Error::InvalidArgument(why)) if why.contains("before connection.tune")),
        "{refused:?}"
    );
    // With recovery on, `update_secret` refuses it before anything changes: the next
    // recovery could not log in with it.
    let connection =
        cottontail::Connection::open(params().with_recovery(RecoveryPolicy::default())).unwrap();
    assert!(matches!(
        connection.update_secret(&token, "rotation"),
        Err(Error::InvalidArgument(_))
    ));
    connection.update_secret("guest", "rotation").unwrap();
    connection.close().unwrap();
}

/// A TLS server name with a NUL byte made the TLS library panic inside `Connection::open` (it
/// becomes a C string), from the builder and from a URL's `ssl_options` alike: it is refused.
#[test]
fn a_tls_server_name_with_a_nul_byte_is_refused_not_a_panic() {
    let ssl = cottontail::SslOptions::new().with_server_hostname("rabbit\0evil");
    let from_builder = cottontail::Connection::open(params().with_ssl_options(Some(ssl)));
    let from_url = cottontail::Connection::open_url(
        "amqps://guest:guest@127.0.0.1:5672/?ssl_options=%7B'server_hostname'%3A'rabbit%5Cx00evil'%7D",
    );
    for opened in [from_builder, from_url] {
        match opened {
            Err(Error::InvalidArgument(why)) => assert!(why.contains("NUL"), "{why}"),
            other => panic!("{:?}", other.map(|_| ())),
        }
    }
}
