//! A synchronous method whose reply comes after its caller gave up (the RPC timeout) must not
//! leave the broker and the client disagreeing: a `basic_consume` or `basic_cancel` that timed
//! out while the broker went ahead, or a `basic_get` whose message arrives late. Whatever the
//! broker delivers for them must end up with the caller or back in the queue, never silently
//! dropped (lost with auto-ack, stuck unacknowledged with manual ack until the channel closes).
//!
//! The late replies come from the real broker through a proxy that can hold everything the
//! broker sends to the client (the client's own frames still reach the broker); the broker's
//! view is read with `rabbitmqctl list_queues` while the client idles. One test uses the fake
//! broker to see the exact frame the client answers a late basic.get-ok with.

mod support;

#[path = "support/fake_broker.rs"]
mod fake_broker;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{basic, channel, connection, AMQPClass};
use cottontail::{
    BasicProperties, Channel, Connection, Error, PublishOptions, QueueDeclareOptions,
};
use fake_broker::{client_params, join, spawn_fake, Peer};

/// The client's RPC timeout: short, so the held replies come late.
const RPC_TIMEOUT: Duration = Duration::from_secs(1);
/// Messages published for the orphaned consumer.
const MESSAGES: usize = 20;
/// How long the client idles (handling events) for the broker's view to settle.
const SETTLE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// A proxy that can hold the broker's replies
// ---------------------------------------------------------------------------------------------

/// A TCP proxy between one client and the test broker. While held, nothing the broker sends
/// reaches the client (it waits in the proxy, in order); the client's frames still reach the
/// broker.
struct Proxy {
    port: u16,
    held: Arc<(Mutex<bool>, Condvar)>,
}

impl Proxy {
    fn start() -> Proxy {
        support::ensure_broker();
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let held = Arc::new((Mutex::new(false), Condvar::new()));
        let gate = held.clone();
        thread::spawn(move || {
            let Ok((client, _)) = listener.accept() else {
                return;
            };
            let broker = TcpStream::connect((support::HOST, support::PORT))
                .expect("the proxy connecting to the broker");
            let _ = client.set_nodelay(true);
            let _ = broker.set_nodelay(true);
            let (client_in, broker_out) = (
                client.try_clone().expect("clone"),
                broker.try_clone().expect("clone"),
            );
            thread::spawn(move || pump(client_in, broker_out, None));
            pump(broker, client, Some(gate));
        });
        Proxy { port, held }
    }

    /// From now on, what the broker sends waits in the proxy.
    fn hold(&self) {
        *self.held.0.lock().unwrap() = true;
    }

    /// Passes on what was held, and everything after.
    fn release(&self) {
        *self.held.0.lock().unwrap() = false;
        self.held.1.notify_all();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.release();
    }
}

/// Copies `from` to `to` until EOF, waiting at `gate` (while it is held) before each write.
fn pump(mut from: TcpStream, mut to: TcpStream, gate: Option<Arc<(Mutex<bool>, Condvar)>>) {
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(gate) = &gate {
            let mut held = gate.0.lock().unwrap();
            while *held {
                held = gate.1.wait(held).unwrap();
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

// ---------------------------------------------------------------------------------------------
// The broker's view
// ---------------------------------------------------------------------------------------------

/// A queue on the test broker, deleted when dropped.
struct TestQueue {
    name: String,
    admin: Connection,
}

impl TestQueue {
    fn declare(prefix: &str) -> TestQueue {
        let admin = support::connect();
        let name = support::unique(prefix);
        admin
            .channel()
            .unwrap()
            .queue_declare(&name, QueueDeclareOptions::default())
            .unwrap();
        TestQueue { name, admin }
    }

    /// Publishes `count` messages through the admin connection, confirmed.
    fn publish(&self, count: usize) {
        let channel = self.admin.channel().unwrap();
        channel.confirm_delivery().unwrap();
        for i in 0..count {
            channel
                .basic_publish_deferred(
                    "",
                    &self.name,
                    format!("message {i}").as_bytes(),
                    &PublishOptions::default(),
                )
                .unwrap();
        }
        assert!(channel.wait_for_confirms(None).unwrap().nacked.is_empty());
        channel.close().unwrap();
    }

    /// The broker's counts for the queue.
    fn broker_view(&self) -> BrokerView {
        let out = support::rabbitmqctl(&[
            "list_queues",
            "name",
            "messages_ready",
            "messages_unacknowledged",
            "consumers",
        ]);
        let line = out
            .lines()
            .find(|line| line.split('\t').next() == Some(self.name.as_str()))
            .unwrap_or_else(|| panic!("queue {} not listed:\n{out}", self.name));
        let fields: Vec<usize> = line
            .split('\t')
            .skip(1)
            .map(|n| n.trim().parse().expect("a count"))
            .collect();
        BrokerView {
            ready: fields[0],
            unacked: fields[1],
            consumers: fields[2],
        }
    }
}

impl Drop for TestQueue {
    fn drop(&mut self) {
        if let Ok(channel) = self.admin.channel() {
            let _ = channel.queue_delete(&self.name, Default::default());
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct BrokerView {
    ready: usize,
    unacked: usize,
    consumers: usize,
}

/// Lets `client` idle (handling its events) until the broker holds every one of `published`
/// messages as ready, except those the caller `got` (and acked), with none unacknowledged and
/// no consumer left; at most [`SETTLE`]. Returns the last view and the caller's count.
fn settle(
    client: &Connection,
    queue: &TestQueue,
    published: usize,
    got: &AtomicUsize,
) -> (bool, BrokerView, usize) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let idle_until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < idle_until {
            if let Err(e) = client.process_data_events(Duration::from_millis(100)) {
                panic!("the client failed while idling: {e:?}");
            }
        }
        let view = queue.broker_view();
        let got = got.load(Ordering::SeqCst);
        let settled = view.ready + got == published && view.unacked == 0 && view.consumers == 0;
        if settled || Instant::now() >= deadline {
            return (settled, view, got);
        }
    }
}

/// A connection to the test broker through `proxy`, with the short RPC timeout.
fn connect_through(proxy: &Proxy) -> Connection {
    Connection::open(
        support::params()
            .with_port(proxy.port)
            .with_heartbeat(Some(0))
            .with_rpc_timeout(RPC_TIMEOUT),
    )
    .expect("connecting through the proxy")
}

/// A manual-ack consumer callback that counts and acks what it is given.
fn counting_callback(
    got: &Arc<AtomicUsize>,
) -> impl FnMut(&Channel, &cottontail::Deliver, &BasicProperties, &[u8]) -> cottontail::Result<()>
       + Send
       + 'static {
    let got = got.clone();
    move |channel, method, _, _| {
        got.fetch_add(1, Ordering::SeqCst);
        channel.basic_ack(method.delivery_tag, false)
    }
}

fn assert_timed_out<T: std::fmt::Debug>(result: cottontail::Result<T>, what: &str) {
    assert!(
        matches!(result, Err(Error::Timeout { .. })),
        "{what} must time out while the proxy holds the broker's reply; got {result:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// basic.consume
// ---------------------------------------------------------------------------------------------

/// basic.consume times out on our side, but the broker registered the consumer and delivers
/// to it once consume-ok arrives (late). With manual ack, those deliveries must reach the
/// caller or go back to the queue: the broker ends with every message ready (or acked by the
/// caller), none unacknowledged, and no consumer the caller does not know of.
#[test]
fn timed_out_basic_consume_leaves_no_orphaned_consumer_and_no_message_stuck_unacked() {
    let queue = TestQueue::declare("timed-out-consume");
    let proxy = Proxy::start();
    let client = connect_through(&proxy);
    let channel = client.channel().unwrap();
    let got = Arc::new(AtomicUsize::new(0));

    proxy.hold();
    let consumed = channel.basic_consume(&queue.name, counting_callback(&got), Default::default());
    assert_timed_out(consumed, "basic_consume");
    queue.publish(MESSAGES);
    proxy.release();

    let (settled, view, got) = settle(&client, &queue, MESSAGES, &got);
    assert!(
        settled,
        "{SETTLE:?} after a timed-out basic_consume and {MESSAGES} messages published, the \
         broker shows {view:?} and the caller got {got}: every message must be ready or handed \
         to the caller, none unacknowledged, no consumer left"
    );
    assert!(channel.is_open());
}

// ---------------------------------------------------------------------------------------------
// basic.cancel
// ---------------------------------------------------------------------------------------------

/// A manual-ack consumer has messages in flight (sent by the broker, not yet read) when its
/// basic.cancel times out on our side; the broker cancels it and its deliveries and cancel-ok
/// arrive late. Those deliveries must reach the caller or go back to the queue, not be dropped
/// and left unacknowledged.
#[test]
fn timed_out_basic_cancel_leaves_no_message_stuck_unacked() {
    let queue = TestQueue::declare("timed-out-cancel");
    let proxy = Proxy::start();
    let client = connect_through(&proxy);
    let channel = client.channel().unwrap();
    let got = Arc::new(AtomicUsize::new(0));
    let tag = channel
        .basic_consume(&queue.name, counting_callback(&got), Default::default())
        .unwrap();

    proxy.hold();
    queue.publish(MESSAGES);
    // The broker hands them to the consumer (they wait in the proxy).
    assert!(
        support::eventually(Duration::from_secs(10), || queue.broker_view().unacked
            == MESSAGES),
        "the broker did not deliver the messages: {:?}",
        queue.broker_view()
    );
    assert_timed_out(channel.basic_cancel(&tag), "basic_cancel");
    proxy.release();

    let (settled, view, got) = settle(&client, &queue, MESSAGES, &got);
    assert!(
        settled,
        "{SETTLE:?} after a basic_cancel that timed out with {MESSAGES} deliveries in flight, \
         the broker shows {view:?} and the caller got {got}: every message must be ready or \
         handed to the caller, none unacknowledged, no consumer left"
    );
    assert!(channel.is_open());
}

// ---------------------------------------------------------------------------------------------
// basic.get
// ---------------------------------------------------------------------------------------------

/// basic.get (manual ack) times out on our side; the broker's get-ok arrives afterwards. The
/// message must go back to the queue (the client rejects it with requeue), not stay
/// unacknowledged until the channel closes.
#[test]
fn timed_out_basic_get_puts_the_late_message_back_in_the_queue() {
    let queue = TestQueue::declare("timed-out-get");
    queue.publish(1);
    let proxy = Proxy::start();
    let client = connect_through(&proxy);
    let channel = client.channel().unwrap();

    proxy.hold();
    assert_timed_out(channel.basic_get(&queue.name, false), "basic_get");
    proxy.release();

    let nobody = AtomicUsize::new(0);
    let (settled, view, _) = settle(&client, &queue, 1, &nobody);
    assert!(
        settled,
        "{SETTLE:?} after a basic_get that timed out, the broker shows {view:?}: the late \
         message must be back in the queue, not unacknowledged"
    );
    assert!(channel.is_open());
}

/// Whether `frame` rejects `delivery_tag` with requeue (basic.reject, or basic.nack covering it).
fn requeues(frame: &AMQPFrame, delivery_tag: u64) -> bool {
    match frame {
        AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Reject(reject))) => {
            reject.delivery_tag == delivery_tag && reject.requeue
        }
        AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Nack(nack))) => {
            nack.requeue
                && (nack.delivery_tag == delivery_tag
                    || (nack.multiple
                        && (nack.delivery_tag == 0 || nack.delivery_tag > delivery_tag)))
        }
        _ => false,
    }
}

/// The fake broker answers basic.get (no_ack=false) with get-ok, header and body only after the
/// client's RPC timeout. The client must reject that delivery with requeue (basic.reject or
/// basic.nack, requeue=true) rather than drop it without a word.
#[test]
fn late_get_ok_after_the_timeout_is_rejected_with_requeue() {
    const DELIVERY_TAG: u64 = 7;
    let (port, fake) = spawn_fake(|broker| {
        let mut peer = broker.accept_and_handshake(0, 131_072);
        peer.open_channel(1);
        match peer.expect_method() {
            (1, AMQPClass::Basic(basic::AMQPMethod::Get(get))) => {
                assert!(!get.no_ack, "basic_get(.., false) must ask for manual ack")
            }
            other => panic!("fake broker: expected basic.get on 1, got {other:?}"),
        }
        thread::sleep(RPC_TIMEOUT + Duration::from_millis(500));
        let mut bytes = Peer::encode(&AMQPFrame::Method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
                delivery_tag: DELIVERY_TAG,
                redelivered: false,
                exchange: "".into(),
                routing_key: "q".into(),
                message_count: 0,
            })),
        ));
        bytes.extend(Peer::encode(&AMQPFrame::Header(
            1,
            AMQPContentHeader {
                class_id: 60,
                body_size: 4,
                properties: amq_protocol::protocol::BasicProperties::default(),
            },
        )));
        bytes.extend(Peer::encode(&AMQPFrame::Body(1, b"late".to_vec())));
        peer.send_raw(&bytes);
        // Everything the client sends until it closes (answered, so its close returns).
        let mut frames = Vec::new();
        while let Some(frame) = peer.read_frame() {
            match &frame {
                AMQPFrame::Method(ch, AMQPClass::Channel(channel::AMQPMethod::Close(_))) => {
                    peer.send_method(
                        *ch,
                        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                    );
                }
                AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(_))) => {
                    peer.send_method(
                        0,
                        AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                            connection::CloseOk {},
                        )),
                    );
                    frames.push(frame);
                    break;
                }
                _ => {}
            }
            frames.push(frame);
        }
        frames
    });
    let connection = Connection::open(client_params(port).with_rpc_timeout(RPC_TIMEOUT)).unwrap();
    let channel = connection.channel().unwrap();
    assert_timed_out(channel.basic_get("q", false), "basic_get");
    // The client idles a while after the late get-ok arrived, then closes.
    connection.sleep(Duration::from_secs(1)).unwrap();
    let _ = connection.close();
    let frames = join(fake);
    assert!(
        frames.iter().any(|f| requeues(f, DELIVERY_TAG)),
        "the client never rejected (with requeue) the get-ok for delivery {DELIVERY_TAG} that \
         came after its timeout; it sent: {frames:?}"
    );
}

/// A channel the application closes while other threads wait on it (a queue.declare the
/// broker does not answer, another caller waiting for its turn behind it) releases them at
/// once with `ChannelClosedByClient`, before the close-ok (which comes 4 s later), as the Java
/// client does: after channel.close the broker answers nothing but the close-ok. Before, each
/// waited out its `rpc_timeout`, and the close itself waited for the declare's turn first.
#[test]
fn closing_a_channel_releases_the_threads_waiting_on_it_at_once() {
    const CLOSE_OK_AFTER: Duration = Duration::from_secs(4);
    let (port, fake) = spawn_fake(|broker| {
        let mut peer = broker.accept_and_handshake(0, 131_072);
        peer.open_channel(1);
        // The declare is never answered; the close is, 4 s later.
        peer.expect_queue_declare(1);
        loop {
            match peer.expect_method() {
                (1, AMQPClass::Channel(channel::AMQPMethod::Close(_))) => {
                    thread::sleep(CLOSE_OK_AFTER);
                    peer.send_method(
                        1,
                        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                    )
                }
                (0, AMQPClass::Connection(connection::AMQPMethod::Close(_))) => {
                    peer.send_method(
                        0,
                        AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                            connection::CloseOk {},
                        )),
                    );
                    break;
                }
                other => panic!("fake broker: unexpected {other:?}"),
            }
        }
        peer.drain();
    });
    let connection =
        Connection::open(client_params(port).with_rpc_timeout(Duration::from_secs(10))).unwrap();
    let channel = connection.channel().unwrap();
    let declare = |queue: &'static str| {
        let channel = channel.clone();
        thread::spawn(move || {
            let started = Instant::now();
            let declared = channel.queue_declare(queue, QueueDeclareOptions::default());
            (declared.map(|_| ()), started.elapsed())
        })
    };
    let first = declare("never-answered");
    thread::sleep(Duration::from_millis(200));
    let behind = declare("waiting-for-its-turn");
    thread::sleep(Duration::from_millis(200));

    let started = Instant::now();
    channel.close().expect("closing the channel");
    let closing = started.elapsed();
    let ours = Err(Error::ChannelClosedByClient {
        reply_code: 0,
        reply_text: "Normal shutdown".into(),
    });
    for (what, waiter) in [("the declare", first), ("the caller behind it", behind)] {
        let (declared, waited) = waiter.join().unwrap();
        assert_eq!(declared, ours, "{what}, after {waited:?}");
        assert!(
            waited < Duration::from_millis(2500),
            "{what} waited {waited:?}: until the close-ok ({CLOSE_OK_AFTER:?}), or its \
             rpc_timeout (10 s)"
        );
    }
    assert!(
        closing >= CLOSE_OK_AFTER && closing < Duration::from_secs(8),
        "close took {closing:?}"
    );
    connection.close().unwrap();
    join(fake);
}
