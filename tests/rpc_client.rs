//! `RpcClient` against the real broker: many threads sharing one client each get exactly their
//! own replies; deadlines (per call and the connection's `rpc_timeout`) hold, also while the
//! request waits for room in the outbound buffer; pumping passes from a caller that leaves to
//! one that waits, not to one still publishing; a reply that comes after its caller timed out
//! is dropped with a warning, never handed to the next call, and late replies nobody waits for
//! do not pile up against the connection's inbound limit; a failed channel or connection
//! reaches every waiting caller; the caller's properties reach the server and the server's
//! reach the caller; `rpc::serve` cancels its consumer when its handler fails.
//!
//! Servers run `cottontail::rpc::serve` on connections of their own; a request body
//! `slow:<ms>:...` makes them wait that long before answering `echo:<body>`. Where a test needs
//! the client's requests held back (its outbound buffer full, as with a broker that does not
//! read), the client connects through a [`Proxy`] that can stop passing its bytes on.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{mpsc, Arc, Condvar, Mutex, Once};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use cottontail::{
    rpc, BasicConsumeOptions, BasicProperties, CallOptions, Channel, Connection, ConsumeOptions,
    Consumed, Delivery, Error, FieldTable, PublishOptions, RpcClient,
};
use support::consuming::{iterate_on_a_thread, named_queue, passive, Cleanup};
use support::{connect, params, unique, within};

/// How much later than its deadline a call may return on a loaded machine.
const SLACK: Duration = Duration::from_millis(700);

/// Longest a scenario may take before it counts as hung.
const HANG: Duration = Duration::from_secs(60);

fn _assert_shareable() {
    fn shareable<T: Send + Sync + Clone + 'static>() {}
    shareable::<RpcClient>();
}

// ---------------------------------------------------------------------------------------------
// Servers, queues, logs
// ---------------------------------------------------------------------------------------------

/// Declares a queue named for this test, deleted when the returned guard goes.
fn request_queue(prefix: &str) -> (String, Cleanup) {
    let mut cleanup = Cleanup::default();
    let queue = named_queue(&mut cleanup, prefix);
    (queue, cleanup)
}

/// `rpc::serve` on a channel of its own, on a thread of its own: answers `echo:<body>`, after
/// sleeping `<ms>` for a body `slow:<ms>:...`. Stopped (and joined) when dropped.
struct Server {
    channel: Channel,
    thread: Option<JoinHandle<cottontail::Result<()>>>,
}

impl Server {
    fn start(connection: &Connection, queue: &str, prefetch: u16) -> Server {
        let channel = connection.channel().unwrap();
        channel
            .basic_qos(cottontail::QosOptions {
                prefetch_count: prefetch,
                ..Default::default()
            })
            .unwrap();
        let serving = channel.clone();
        let queue = queue.to_string();
        let thread = thread::spawn(move || {
            rpc::serve(&serving, &queue, |_properties, body| {
                if let Some(ms) = slow_ms(body) {
                    thread::sleep(Duration::from_millis(ms));
                }
                Ok([b"echo:", body].concat())
            })
        });
        Server {
            channel,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.channel.stop_consuming(None);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The `<ms>` of a body `slow:<ms>:...`.
fn slow_ms(body: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(body).ok()?;
    text.strip_prefix("slow:")?.split(':').next()?.parse().ok()
}

/// Starts `count` servers on `connection` and waits until the broker has all their consumers.
fn servers(connection: &Connection, queue: &str, count: usize, prefetch: u16) -> Vec<Server> {
    let servers = (0..count)
        .map(|_| Server::start(connection, queue, prefetch))
        .collect();
    let channel = connection.channel().unwrap();
    assert!(
        support::eventually(Duration::from_secs(10), || {
            channel
                .queue_declare(queue, passive())
                .unwrap()
                .consumer_count
                == count as u32
        }),
        "the {count} servers did not start consuming `{queue}`"
    );
    channel.close().unwrap();
    servers
}

fn call(
    client: &RpcClient,
    queue: &str,
    body: &str,
    timeout: Duration,
) -> cottontail::Result<Delivery> {
    client.call(
        "",
        queue,
        body.as_bytes(),
        CallOptions {
            timeout: Some(timeout),
            ..Default::default()
        },
    )
}

fn body_of(reply: &Delivery) -> String {
    String::from_utf8_lossy(&reply.body).into_owned()
}

/// The correlation id a timed-out call names in its error.
fn request_id(error: &Error) -> String {
    let Error::Timeout { context, .. } = error else {
        panic!("expected a timeout, got {error:?}");
    };
    context
        .strip_prefix("waiting for the reply to request ")
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no request id in {context:?}"))
        .to_string()
}

/// Warnings logged in this process.
static WARNINGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Warn
    }
    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let mut warnings = WARNINGS.lock().unwrap_or_else(|p| p.into_inner());
            warnings.push(record.args().to_string());
        }
    }
    fn flush(&self) {}
}

fn capture_warnings() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        log::set_logger(&Capture).expect("installing the test logger");
        log::set_max_level(log::LevelFilter::Warn);
    });
}

/// Whether a warning says the reply with correlation id `id` was dropped: by the pumper
/// ("dropping a reply"), or, when no call waited, on arrival ("a late RPC reply nobody waits
/// for").
fn dropped_with_warning(id: &str) -> bool {
    let quoted = format!("{id:?}");
    WARNINGS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .any(|w| {
            (w.contains("dropping a reply") || w.contains(LATE_REPLY_DROPPED))
                && w.contains(&quoted)
        })
}

/// What the warning of a reply dropped on arrival (no call waiting) calls it.
const LATE_REPLY_DROPPED: &str = "a late RPC reply nobody waits for";

/// How many of `ids` a warning says were dropped on arrival, while no call waited.
fn dropped_on_arrival(ids: &[String]) -> usize {
    let warnings = WARNINGS.lock().unwrap_or_else(|p| p.into_inner());
    ids.iter()
        .filter(|id| {
            let quoted = format!("{id:?}");
            warnings
                .iter()
                .any(|w| w.contains(LATE_REPLY_DROPPED) && w.contains(&quoted))
        })
        .count()
}

/// A TCP proxy between one client and the test broker that can hold the client's bytes back
/// (stop reading them) while the broker's still reach the client: the client's outbound
/// buffer then fills as with a broker that does not read. Everything goes through again when
/// it is released, and when the proxy is dropped.
struct Proxy {
    port: u16,
    held: Arc<(Mutex<bool>, Condvar)>,
}

impl Proxy {
    /// Listens on 127.0.0.1 for one client and connects it to the broker.
    fn start() -> Proxy {
        support::ensure_broker();
        // A small receive buffer on the client's side, so that the kernel holds little of
        // what the proxy does not read: the client's own buffer fills instead.
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(64 * 1024).unwrap();
        socket
            .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        socket.listen(1).unwrap();
        let listener: TcpListener = socket.into();
        let port = listener.local_addr().unwrap().port();
        let held = Arc::new((Mutex::new(false), Condvar::new()));
        let gate = held.clone();
        thread::spawn(move || {
            let Ok((client, _)) = listener.accept() else {
                return;
            };
            let broker = TcpStream::connect((support::HOST, support::PORT)).unwrap();
            let (mut from_client, mut to_broker) =
                (client.try_clone().unwrap(), broker.try_clone().unwrap());
            thread::spawn(move || {
                let mut chunk = vec![0u8; 64 * 1024];
                loop {
                    {
                        let (lock, cond) = &*gate;
                        let mut held = lock.lock().unwrap();
                        while *held {
                            held = cond.wait(held).unwrap();
                        }
                    }
                    match from_client.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if to_broker.write_all(&chunk[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = to_broker.shutdown(Shutdown::Write);
            });
            let (mut from_broker, mut to_client) = (broker, client);
            let _ = std::io::copy(&mut from_broker, &mut to_client);
            let _ = to_client.shutdown(Shutdown::Both);
        });
        Proxy { port, held }
    }

    /// Connection parameters for the broker through this proxy.
    fn params(&self) -> cottontail::ConnectionParameters {
        params().with_port(self.port)
    }

    /// Holds the client's bytes back (`true`) or passes them on again (`false`).
    fn hold(&self, hold: bool) {
        let (lock, cond) = &*self.held;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = hold;
        cond.notify_all();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.hold(false);
    }
}

/// Fills the client's outbound buffer past its high-water mark (4 MiB) while `proxy` holds its
/// bytes back, with messages to a queue that does not exist (the broker drops them once it
/// gets them) on a channel of their own: 16 MiB, which the I/O thread takes out of the buffer
/// and is still writing when the proxy stops reading, then 8 MiB, which stays in the buffer.
/// Later publishes of that connection wait for room until the proxy lets the bytes through.
fn fill_the_outbound_buffer(proxy: &Proxy, connection: &Connection) -> Channel {
    let filler = connection.channel().unwrap();
    let nowhere = unique("rpc-nowhere");
    proxy.hold(true);
    filler
        .basic_publish("", &nowhere, &vec![b'f'; 16 * 1024 * 1024])
        .unwrap();
    thread::sleep(Duration::from_millis(200));
    filler
        .basic_publish("", &nowhere, &vec![b'f'; 8 * 1024 * 1024])
        .unwrap();
    filler
}

// ---------------------------------------------------------------------------------------------
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
    let _servers = servers(&server_connection, &queue, 1, 1);
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
        thread::sleep(Duration::from_millis(100));
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
            c_done && took < Duration::from_millis(1500) + SLACK,
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
