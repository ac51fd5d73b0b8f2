//! `RpcClient` calls with `CallOptions::mandatory` against the real broker: a request no queue
//! takes fails at once with `Error::Unroutable` carrying the request, instead of waiting for
//! its timeout; routable and unroutable calls from many threads each get their own outcome;
//! and a return handled by another thread's `process_data_events` still reaches its call.

mod support;

#[path = "support/rpc.rs"]
mod rpc_support;

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use cottontail::{CallOptions, Error, RpcClient};
use rpc_support::{request_queue, servers};
use support::{connect, unique};

/// Each call's own timeout: far longer than a return takes to come back.
const TIMEOUT: Duration = Duration::from_secs(10);

fn mandatory() -> CallOptions {
    CallOptions {
        timeout: Some(TIMEOUT),
        mandatory: true,
        ..Default::default()
    }
}

/// Checks that `result` is the broker's return of request `body` sent to `routing_key`, and
/// came well before the call's timeout.
fn assert_unroutable(
    result: &cottontail::Result<cottontail::Delivery>,
    routing_key: &str,
    body: &[u8],
    took: Duration,
) {
    match result {
        Err(Error::Unroutable {
            reply_code,
            message,
            ..
        }) => {
            assert_eq!(*reply_code, 312, "NO_ROUTE");
            assert_eq!(message.routing_key, routing_key);
            assert_eq!(message.body, body);
            assert!(message.properties.correlation_id().is_some());
        }
        other => panic!("expected Unroutable for {routing_key:?}, got {other:?}"),
    }
    assert!(
        took < TIMEOUT / 2,
        "the return took {took:?}: the call must fail when it comes, not at its timeout"
    );
}

#[test]
fn a_mandatory_request_nobody_takes_fails_at_once_as_unroutable() {
    let connection = connect();
    let client = RpcClient::new(&connection).unwrap();
    let nowhere = unique("no-such-queue");
    let started = Instant::now();
    let result = client.call("", &nowhere, b"ping", mandatory());
    assert_unroutable(&result, &nowhere, b"ping", started.elapsed());

    // The client goes on: a routable call gets its reply.
    let (queue, _cleanup) = request_queue("rpc-mandatory");
    let server = connect();
    let _servers = servers(&server, &queue, 1, 1);
    let reply = client.call("", &queue, b"hello", mandatory()).unwrap();
    assert_eq!(reply.body, b"echo:hello");
}

#[test]
fn routable_and_unroutable_calls_from_eight_threads_each_get_their_own_outcome() {
    const THREADS: usize = 8;
    const CALLS: usize = 20;
    let (queue, _cleanup) = request_queue("rpc-mandatory-threads");
    let server = connect();
    let _servers = servers(&server, &queue, 1, 1);
    let connection = connect();
    let client = RpcClient::new(&connection).unwrap();
    let nowhere = Arc::new(unique("no-such-queue"));
    let queue = Arc::new(queue);
    let callers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (client, queue, nowhere) = (client.clone(), queue.clone(), nowhere.clone());
            thread::spawn(move || {
                for i in 0..CALLS {
                    let body = format!("{t}-{i}");
                    let started = Instant::now();
                    if (t + i) % 2 == 0 {
                        let result = client.call("", &nowhere, body.as_bytes(), mandatory());
                        assert_unroutable(&result, &nowhere, body.as_bytes(), started.elapsed());
                    } else {
                        let reply = client
                            .call("", &queue, body.as_bytes(), mandatory())
                            .unwrap_or_else(|e| panic!("call {body}: {e:?}"));
                        assert_eq!(reply.body, format!("echo:{body}").as_bytes());
                    }
                }
            })
        })
        .collect();
    for caller in callers {
        caller.join().expect("a calling thread failed");
    }
}

/// Another thread runs `process_data_events` on the client's connection all along, so it may
/// be the one that runs the client channel's return callback while the call's thread pumps:
/// the call must still fail when the return comes, not at its timeout.
#[test]
fn a_return_handled_by_process_data_events_on_another_thread_still_reaches_its_call() {
    let connection = Arc::new(connect());
    let client = RpcClient::new(&connection).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let events = {
        let (connection, stop) = (connection.clone(), stop.clone());
        thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                connection
                    .process_data_events(Duration::from_millis(1))
                    .unwrap();
            }
        })
    };
    let nowhere = unique("no-such-queue");
    for i in 0..50 {
        let body = format!("request {i}");
        let started = Instant::now();
        let result = client.call("", &nowhere, body.as_bytes(), mandatory());
        assert_unroutable(&result, &nowhere, body.as_bytes(), started.elapsed());
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    events.join().unwrap();
}
