//! `RpcClient` and `rpc::serve` against the real broker: a failed channel or connection, or the
//! client's own close, reaches every waiting caller; the caller's properties reach the server
//! and the server's reach the caller; `rpc::serve` acks a request without `reply_to` and
//! cancels its consumer when its handler fails. Helpers in `support/rpc.rs`.

mod support;

#[path = "support/rpc.rs"]
mod rpc_support;

use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use cottontail::{
    rpc, BasicConsumeOptions, BasicProperties, CallOptions, Delivery, Error, FieldTable,
    PublishOptions, RpcClient,
};
use rpc_support::*;
use support::consuming::passive;
use support::{connect, unique, within};

// ---------------------------------------------------------------------------------------------
// Failures reach every waiting caller
// ---------------------------------------------------------------------------------------------

/// Starts `count` calls that nobody answers (30 s timeouts) on threads of their own, and lets
/// them settle into waiting.
fn waiting_calls(
    client: &RpcClient,
    queue: &str,
    count: usize,
) -> Vec<JoinHandle<(cottontail::Result<Delivery>, Duration)>> {
    let calls = (0..count)
        .map(|_| {
            let client = client.clone();
            let queue = queue.to_string();
            thread::spawn(move || {
                let started = Instant::now();
                let result = call(&client, &queue, "unanswered", Duration::from_secs(30));
                (result, started.elapsed())
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    calls
}

/// Each waiting call's error, checked to have come at once (well before its 30 s timeout).
fn errors_of(calls: Vec<JoinHandle<(cottontail::Result<Delivery>, Duration)>>) -> Vec<Error> {
    calls
        .into_iter()
        .map(|c| {
            let (result, took) = c.join().expect("a calling thread panicked");
            let e = result.expect_err("a waiting call got a reply from nobody");
            assert!(
                took < Duration::from_secs(5),
                "a waiting call returned after {took:?}"
            );
            e
        })
        .collect()
}

/// A request to an exchange that does not exist makes the broker close the client's channel
/// (404): that call and the 4 waiting ones return the error at once, and so does a later call.
#[test]
fn a_channel_closed_by_the_broker_fails_every_waiting_call() {
    let (queue, _cleanup) = request_queue("rpc-channel-closed");
    let connection = connect();
    let client = RpcClient::new(&connection).unwrap();

    within(HANG, "channel closed by the broker", move || {
        let calls = waiting_calls(&client, &queue, 4);
        let missing = unique("no-such-exchange");
        let e = client
            .call(&missing, "x", b"", CallOptions::default())
            .expect_err("a call to a missing exchange");
        assert!(
            matches!(
                e,
                Error::ChannelClosed {
                    reply_code: 404,
                    ..
                }
            ),
            "{e:?}"
        );
        for e in errors_of(calls) {
            assert!(
                matches!(
                    e,
                    Error::ChannelClosed {
                        reply_code: 404,
                        ..
                    }
                ),
                "{e:?}"
            );
        }
        let e = call(&client, &queue, "after", Duration::from_secs(30)).unwrap_err();
        assert!(
            matches!(
                e,
                Error::ChannelClosed {
                    reply_code: 404,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(!client.is_open());
        // The connection is fine: a new client works.
        assert!(RpcClient::new(&connection).unwrap().is_open());
    });
}

/// Closing the connection from another thread fails the 4 waiting calls at once, with the
/// connection's error; a later call gets it too.
#[test]
fn a_closed_connection_fails_every_waiting_call() {
    let (queue, _cleanup) = request_queue("rpc-connection-closed");
    let connection = connect();
    let client = RpcClient::new(&connection).unwrap();

    within(HANG, "connection closed", move || {
        let calls = waiting_calls(&client, &queue, 4);
        connection.close().unwrap();
        for e in errors_of(calls) {
            assert!(matches!(e, Error::ConnectionClosedByClient { .. }), "{e:?}");
        }
        let e = call(&client, &queue, "after", Duration::from_secs(30)).unwrap_err();
        assert!(e.is_connection_error(), "{e:?}");
    });
}

/// `RpcClient::close` from another thread fails the 4 waiting calls at once.
#[test]
fn closing_the_client_fails_every_waiting_call() {
    let (queue, _cleanup) = request_queue("rpc-client-closed");
    let connection = connect();
    let client = RpcClient::new(&connection).unwrap();

    within(HANG, "client closed", move || {
        let calls = waiting_calls(&client, &queue, 4);
        client.close().unwrap();
        for e in errors_of(calls) {
            assert!(matches!(e, Error::ChannelClosedByClient { .. }), "{e:?}");
        }
        assert!(!client.is_open());
        let e = call(&client, &queue, "after", Duration::from_secs(30)).unwrap_err();
        assert!(matches!(e, Error::ChannelClosedByClient { .. }), "{e:?}");
        connection.close().unwrap();
    });
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

fn header(properties: &BasicProperties, name: &str) -> Option<String> {
    let value = properties.header(name)?;
    Some(
        value
            .as_str()
            .map_or_else(|| format!("{value:?}"), str::to_owned),
    )
}

/// The caller's headers and content type reach the server, with the client's own `reply_to`
/// and correlation id in place of those the caller tried to set; the server's headers and
/// content type reach the caller.
#[test]
fn properties_pass_through_both_ways() {
    let (queue, _cleanup) = request_queue("rpc-properties");
    let server_connection = connect();
    let server = server_connection.channel().unwrap();
    let (seen_tx, seen_rx) = mpsc::channel();
    server
        .basic_consume(
            &queue,
            move |ch, _method, props, _body| {
                let _ = seen_tx.send(props.clone());
                let mut reply = BasicProperties::default()
                    .with_headers(FieldTable::new().with("x-reply", "from the server"))
                    .with_content_type("application/json");
                if let Some(id) = props.correlation_id() {
                    reply = reply.with_correlation_id(id);
                }
                let reply_to = props.reply_to().expect("a reply_to");
                let reply = PublishOptions {
                    properties: reply,
                    ..Default::default()
                };
                ch.basic_publish_with("", reply_to, b"{}", &reply)
            },
            BasicConsumeOptions {
                auto_ack: true,
                ..Default::default()
            },
        )
        .unwrap();
    let serving = {
        let server = server.clone();
        thread::spawn(move || server.start_consuming())
    };

    let connection = connect();
    let client = RpcClient::new(&connection).unwrap();
    let headers = FieldTable::new().with("x-request", "from the caller");
    let reply = client
        .call(
            "",
            &queue,
            b"hello",
            CallOptions {
                properties: BasicProperties::default()
                    .with_headers(headers)
                    .with_content_type("text/plain")
                    .with_correlation_id("set by the caller")
                    .with_reply_to("elsewhere"),
                timeout: Some(Duration::from_secs(20)),
                ..Default::default()
            },
        )
        .expect("the reply");

    let request = seen_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        header(&request, "x-request").as_deref(),
        Some("from the caller")
    );
    assert_eq!(request.content_type(), Some("text/plain"));
    let reply_to = request
        .reply_to()
        .as_ref()
        .map(|r| r.to_string())
        .unwrap_or_default();
    assert!(
        reply_to.starts_with("amq.rabbitmq.reply-to."),
        "the server saw reply_to {reply_to:?}"
    );
    let request_id = request.correlation_id().as_ref().map(|c| c.to_string());
    assert!(
        request_id
            .as_deref()
            .is_some_and(|id| id != "set by the caller" && !id.is_empty()),
        "the server saw correlation id {request_id:?}"
    );

    assert_eq!(reply.body, b"{}");
    assert_eq!(
        header(&reply.properties, "x-reply").as_deref(),
        Some("from the server")
    );
    assert_eq!(reply.properties.content_type(), Some("application/json"));
    assert_eq!(
        reply
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.to_string()),
        request_id
    );

    server.stop_consuming(None).unwrap();
    serving.join().unwrap().unwrap();
    connection.close().unwrap();
    server_connection.close().unwrap();
}

/// `rpc::serve` acks a request without `reply_to` and drops its answer; the next request is
/// served. Once the server's connection is closed nothing is requeued: both were acked.
#[test]
fn serve_acks_a_request_without_reply_to() {
    let (queue, _cleanup) = request_queue("rpc-no-reply-to");
    let server_connection = connect();
    let servers = servers(&server_connection, &queue, 1, 1);
    let connection = connect();
    let channel = connection.channel().unwrap();
    channel.basic_publish("", &queue, b"no reply_to").unwrap();
    let client = RpcClient::new(&connection).unwrap();
    let reply = call(&client, &queue, "next", Duration::from_secs(20)).expect("the next call");
    assert_eq!(body_of(&reply), "echo:next");
    drop(servers);
    server_connection.close().unwrap();
    let ok = channel.queue_declare(&queue, passive()).unwrap();
    assert_eq!(
        ok.message_count, 0,
        "a request was left unacked and requeued"
    );
    connection.close().unwrap();
}

/// A handler that fails ends `rpc::serve` with its error and cancels its consumer: the broker
/// shows no consumer on the queue afterwards and the channel has none. `serve` again on the
/// same channel is then the queue's only consumer, and answers.
#[test]
fn serve_cancels_its_consumer_when_its_handler_fails() {
    let (queue, _cleanup) = request_queue("rpc-serve-fails");
    let server_connection = connect();
    let channel = server_connection.channel().unwrap();
    let consumers = || {
        let check = server_connection.channel().unwrap();
        let count = check
            .queue_declare(&queue, passive())
            .unwrap()
            .consumer_count;
        check.close().unwrap();
        count
    };
    let first = {
        let serving = channel.clone();
        let queue = queue.clone();
        thread::spawn(move || {
            rpc::serve(&serving, &queue, |_properties, body| {
                if body == b"fail" {
                    return Err(Error::InvalidArgument("the handler refuses".into()));
                }
                Ok(body.to_vec())
            })
        })
    };
    assert!(support::eventually(Duration::from_secs(10), || consumers() == 1));
    let connection = connect();
    let client = RpcClient::new(&connection).unwrap();
    let e = call(&client, &queue, "fail", Duration::from_millis(500)).unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
    let served = within(HANG, "the failing serve", move || first.join().unwrap());
    assert_eq!(
        served,
        Err(Error::InvalidArgument("the handler refuses".into()))
    );
    assert!(
        support::eventually(Duration::from_secs(5), || consumers() == 0),
        "the failed serve left {} consumer(s) on the queue",
        consumers()
    );
    assert_eq!(channel.consumer_tags(), Vec::<String>::new());

    let second = {
        let serving = channel.clone();
        let queue = queue.clone();
        thread::spawn(move || {
            rpc::serve(&serving, &queue, |_properties, body| {
                Ok([b"second:", body].concat())
            })
        })
    };
    assert!(support::eventually(Duration::from_secs(10), || consumers() >= 1));
    for i in 0..4 {
        let body = format!("request {i}");
        let reply = call(&client, &queue, &body, Duration::from_secs(20)).expect("a reply");
        assert_eq!(body_of(&reply), format!("second:{body}"));
    }
    assert_eq!(consumers(), 1, "the second serve is not the only consumer");
    assert_eq!(channel.consumer_tags().len(), 1);
    channel.stop_consuming(None).unwrap();
    let served = within(HANG, "the second serve", move || second.join().unwrap());
    assert_eq!(served, Ok(()));
    connection.close().unwrap();
    server_connection.close().unwrap();
}
