//! Races between the application and a recovery under way, found by a review of the recovery
//! (fixed in cb5a7be). The broker side of our connection is closed (320 CONNECTION_FORCED) on
//! node ct3 of the private cluster of `tests/support/cluster.rs`; one test scripts the fake
//! broker of `tests/support/fake_broker.rs` instead. They show that:
//!
//! - `Connection::close` during a recovery stops it: once close returns, the broker holds no
//!   connection of ours and no consumer was registered for it (an auto-ack consumer's queue
//!   keeps its messages),
//! - a `basic_cancel` that times out during a recovery leaves no consumer on the broker, and
//!   the queue's messages stay ready,
//! - `Channel::close` of a channel the recovery has already reopened closes it on the broker
//!   (its consumer goes, its messages stay ready, its number is free again),
//! - a `Channel::close` waiting behind another call when the connection is lost returns Ok,
//!   and the recovery does not open the channel again (fake broker),
//! - the same consumer tag on two channels: both consumers come back; on a channel the
//!   broker closed and the new channel that took its number: only the new one's,
//! - a topology filter that panics: the entity is skipped (reported with the panic), the
//!   recovery ends, and close leaves no I/O thread behind,
//! - `start_consuming` and a `consume()` iterator end quietly (`Ok(())`, `None`) when the
//!   application closes the connection during a recovery.
//!
//! Where a test needs the recovery to be at a given step, a topology filter holds the
//! recovery thread there (a [`Gate`]) until the test lets it go on. The tests share the
//! cluster and count this process's I/O threads, so they run one at a time (a static mutex).

#[path = "support/fake_broker.rs"]
mod fake_broker;
mod support;

use std::collections::BTreeSet;
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{channel, connection, AMQPClass};
use cottontail::{
    BasicConsumeOptions, Channel, Connection, ConnectionParameters, ConsumeOptions, Entity, Error,
    QueueDeclareOptions, RecoveryPolicy,
};
use fake_broker::{client_params, join, spawn_fake};
use support::cluster::Cluster;
use support::consuming::{iterate_on_a_thread, start_consuming_on_a_thread, Item};
use support::recovery::*;
use support::{eventually, message_count, publish_numbered, unique};

/// The cluster node the tests connect to (ct3).
const NODE: usize = 2;
/// How long a [`Gate`] holds the recovery thread at most (a test that failed before opening
/// it does not leave the recovery stuck).
const HOLD: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A connection name no other test uses, and no other name contains (`connections_named`
/// matches by substring: "x-1" is in "x-10", not "x-1-conn" in "x-10-conn").
fn connection_name(prefix: &str) -> String {
    format!("{}-conn", unique(prefix))
}

/// Parameters for node ct3, named `name`, recovering with `policy`.
fn params(cluster: Cluster, name: &str, policy: RecoveryPolicy) -> ConnectionParameters {
    cluster
        .params(NODE)
        .with_connection_name(name)
        .with_recovery(policy)
}

/// Deletes `queues` through ct3 when dropped (declare it first: it drops last).
fn tidy(cluster: Cluster, queues: &[&str]) -> Tidy {
    Tidy {
        cluster,
        node: NODE,
        queues: queues.iter().map(|q| q.to_string()).collect(),
        exchanges: Vec::new(),
    }
}

/// Closes the broker side of our connection named `name` (320 CONNECTION_FORCED, as
/// `rabbitmqctl close_connection` does; one `rabbitmqctl eval` finds and closes it, as in
/// `tests/recovery_storms.rs`, with `support::recovery::erlang_ours`) and waits until the
/// client has noticed.
fn force_close(cluster: Cluster, connection: &Connection, name: &str) {
    let script = format!(
        "{ours} \
         Pids = [P || P <- rabbit_networking:connections_local(), Ours(P)], \
         [rabbit_networking:close_connection(P, \"test: forced close\") || P <- Pids], \
         length(Pids).",
        ours = erlang_ours(name)
    );
    let closed = cluster.rabbitmqctl(NODE, &["eval", &script]);
    assert_eq!(closed.trim(), "1", "broker connections named {name} closed");
    assert!(
        eventually(Duration::from_secs(10), || connection.is_recovering()
            || connection.recovery_generation() > 0),
        "the client did not notice the loss"
    );
}

/// The consumer tags the broker lists for each of `queues` (one `rabbitmqctl` call).
fn consumer_tags(cluster: Cluster, queues: &[&str]) -> Vec<BTreeSet<String>> {
    let listed = cluster.rabbitmqctl(
        NODE,
        &["list_consumers", "-s", "queue_name", "consumer_tag"],
    );
    let mut tags = vec![BTreeSet::new(); queues.len()];
    for (queue, tag) in listed.lines().filter_map(|line| line.split_once('\t')) {
        if let Some(i) = queues.iter().position(|q| *q == queue) {
            tags[i].insert(tag.to_string());
        }
    }
    tags
}

/// (ready messages, consumers) of `queue`, by a passive declare on a channel of its own of
/// `connection` (a connection to ct3 that is not the one under test).
fn queue_view(connection: &Connection, queue: &str) -> (u32, u32) {
    let channel = connection.channel().unwrap();
    let ok = channel
        .queue_declare(queue, support::consuming::passive())
        .unwrap();
    channel.close().unwrap();
    (ok.message_count, ok.consumer_count)
}

fn tagged(tag: &str, auto_ack: bool) -> BasicConsumeOptions {
    BasicConsumeOptions {
        consumer_tag: Some(tag.into()),
        auto_ack,
        ..Default::default()
    }
}

/// `n` consumers tagged `{prefix}-00000`... on `queue` (declared), on a channel of its own.
/// A recovery registers consumers one by one, by channel then tag: consumers on a channel
/// opened after the others, with tags after theirs, keep it busy once those are back.
fn filler_consumers(connection: &Connection, queue: &str, prefix: &str, n: usize) -> Channel {
    let channel = connection.channel().unwrap();
    channel
        .queue_declare(queue, QueueDeclareOptions::default())
        .unwrap();
    for i in 0..n {
        channel
            .basic_consume(
                queue,
                |_c, _m, _p, _b| {},
                tagged(&format!("{prefix}-{i:05}"), false),
            )
            .unwrap();
    }
    channel
}

/// Where a topology filter holds the recovery thread (at the entity it is made for) until the
/// test lets it through: the recovery is then at a known step for as long as the test needs.
/// Each time the filter gets there (once per recovery attempt) is an arrival, let through by
/// its own [`release`](Gate::release), or by [`open`](Gate::open) for good.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<GateState>, Condvar)>);

#[derive(Default)]
struct GateState {
    arrivals: u32,
    released: u32,
}

impl Gate {
    /// A recovery policy whose topology filter keeps every entity, and holds the recovery
    /// thread at this gate when it asks about one for which `here` is true.
    fn policy(&self, here: impl Fn(&Entity) -> bool + Send + Sync + 'static) -> RecoveryPolicy {
        let gate = self.clone();
        policy().with_topology_filter(move |entity| {
            if here(entity) {
                gate.hold();
            }
            true
        })
    }

    fn state(&self) -> (MutexGuard<'_, GateState>, &Condvar) {
        let (state, cond) = &*self.0;
        (state.lock().unwrap_or_else(|p| p.into_inner()), cond)
    }

    /// On the recovery thread: arrives, then waits until this arrival is let through.
    fn hold(&self) {
        let (mut s, cond) = self.state();
        s.arrivals += 1;
        let me = s.arrivals;
        cond.notify_all();
        let _ = cond.wait_timeout_while(s, HOLD, |s| s.released < me);
    }

    /// Waits (at most 15 s) for the `n`th arrival; panics otherwise.
    fn wait_reached(&self, n: u32) {
        let (s, cond) = self.state();
        let (s, _) = cond
            .wait_timeout_while(s, Duration::from_secs(15), |s| s.arrivals < n)
            .unwrap_or_else(|p| p.into_inner());
        assert!(
            s.arrivals >= n,
            "the recovery reached the gate {} times, not {n}",
            s.arrivals
        );
    }

    /// Lets the first `n` arrivals through.
    fn release(&self, n: u32) {
        let (mut s, cond) = self.state();
        s.released = s.released.max(n);
        cond.notify_all();
    }

    /// Lets every arrival through, from now on too.
    fn open(&self) {
        self.release(u32::MAX);
    }
}

fn queue_named(queue: &str) -> impl Fn(&Entity) -> bool + Send + Sync + 'static {
    let queue = queue.to_string();
    move |entity| matches!(entity, Entity::Queue { name, .. } if *name == queue)
}

/// Closes `connection` on a thread of its own (the close may wait for the recovery thread,
/// which a gate holds) and returns once the close has begun: the connection reports itself
/// closed by the application. The thread's result is the close's.
fn close_in_background(connection: &Connection) -> thread::JoinHandle<cottontail::Result<()>> {
    let closing = {
        let connection = connection.clone();
        thread::spawn(move || connection.close())
    };
    assert!(
        eventually(Duration::from_secs(5), || connection
            .close_reason()
            .is_some_and(|e| e.is_closed_by_client())),
        "the close did not begin: {:?}",
        connection.close_reason()
    );
    closing
}

// ---------------------------------------------------------------------------------------
// Connection::close during a recovery
// ---------------------------------------------------------------------------------------

/// A close made while the recovery is declaring the topology again (held at the queue's
/// declare) stops the recovery there: once close() returns, the broker has no connection of
/// ours, and the auto-ack consumer was not registered again, so the messages published during
/// the recovery are still in its queue. Before the fix close() returned at once and the
/// recovery went on: it registered the consumer on its new connection (the 5 messages were
/// consumed, 0 left), then found the connection closed and closed its own.
#[test]
fn a_close_during_a_recovery_stops_it_before_it_consumes_anything() {
    let _serial = one_at_a_time();
    let cluster = Cluster::start();
    let name = connection_name("rr-close");
    let queue = unique("rr-close-q");
    let _tidy = tidy(cluster, &[&queue]);
    let gate = Gate::default();
    let connection =
        Connection::open(params(cluster, &name, gate.policy(queue_named(&queue)))).unwrap();
    let channel = connection.channel().unwrap();
    channel
        .queue_declare(&queue, QueueDeclareOptions::default())
        .unwrap();
    channel
        .basic_consume(&queue, |_c, _m, _p, _b| {}, tagged("auto", true))
        .unwrap();
    force_close(cluster, &connection, &name);
    gate.wait_reached(1);
    let publisher = cluster.connect(NODE);
    publish_numbered(&publisher.channel().unwrap(), &queue, 0..5);
    assert_eq!(message_count(&publisher, &queue), 5);

    let closing = close_in_background(&connection);
    gate.open();
    closing.join().unwrap().expect("close during the recovery");
    let left = cluster.connections_named(NODE, &name);
    // Before the fix, the recovery outlived close(): it ends once it finds the connection
    // closed (it then closes its own), so count the messages after that.
    eventually(Duration::from_secs(10), || {
        cluster.connections_named(NODE, &name).is_empty()
    });
    let kept = message_count(&publisher, &queue);
    publisher.close().unwrap();
    assert_eq!(
        (left, kept),
        (Vec::new(), 5),
        "(broker connections of ours once close() returned, messages left in the queue)"
    );
}

// ---------------------------------------------------------------------------------------
// basic_cancel during a recovery
// ---------------------------------------------------------------------------------------

/// basic_cancel made while the connection recovers waits for the recovery, and here times
/// out (rpc_timeout 12 s: "early" must still wait through a forced close, `rabbitmqctl` taking
/// seconds on a loaded machine, and the second attempt's handshake) before the recovery ends: the recovery is held at a consumer it
/// registers after "early" and "late". "early" is cancelled before the attempt that succeeds
/// plans the consumers (the first attempt, held, is cut short by a second forced close),
/// "late" after (the second attempt, held at the same consumer). After the recovery the
/// broker has no consumer "early", and once messages arrive none "late" either ("late" was
/// planned and registered: the fix cancels it at its first delivery, requeued); the messages
/// published afterwards stay ready. Before the fix the recovery registered both while their
/// cancels waited, which then gave up: the broker delivered to them for ever, the client
/// requeuing each delivery.
#[test]
fn cancels_that_time_out_during_a_recovery_leave_no_consumer_on_the_broker() {
    let _serial = one_at_a_time();
    let cluster = Cluster::start();
    let name = connection_name("rr-cancel");
    let (early_q, late_q) = (unique("rr-cancel-early"), unique("rr-cancel-late"));
    let held_q = unique("rr-cancel-held");
    let _tidy = tidy(cluster, &[&early_q, &late_q, &held_q]);
    let gate = Gate::default();
    let held = gate.policy(|e| matches!(e, Entity::Consumer { tag, .. } if tag == "zz-held"));
    let connection =
        Connection::open(params(cluster, &name, held).with_rpc_timeout(Duration::from_secs(12)))
            .unwrap();
    let consumer = |queue: &str, tag: &'static str| {
        let channel = connection.channel().unwrap();
        channel
            .queue_declare(queue, QueueDeclareOptions::default())
            .unwrap();
        channel
            .basic_consume(queue, |_c, _m, _p, _b| {}, tagged(tag, false))
            .unwrap();
        channel
    };
    let (early_ch, late_ch) = (consumer(&early_q, "early"), consumer(&late_q, "late"));
    // Registered last (its channel is the last one, its tag the last one).
    let _held = consumer(&held_q, "zz-held");
    let cancel = |channel: &Channel, tag: &'static str| {
        let channel = channel.clone();
        thread::spawn(move || channel.basic_cancel(tag).map(|_| ()))
    };

    force_close(cluster, &connection, &name);
    gate.wait_reached(1);
    let early = cancel(&early_ch, "early");
    force_close(cluster, &connection, &name);
    gate.release(1);
    gate.wait_reached(2);
    assert!(
        !early.is_finished(),
        "the cancel of \"early\" ended before the second attempt registered the consumers"
    );
    let late = cancel(&late_ch, "late");
    let cancelled = (early.join().unwrap(), late.join().unwrap());
    gate.open();
    connection
        .wait_for_recovery(Duration::from_secs(10))
        .expect("the connection recovers");
    assert!(
        matches!(
            cancelled,
            (Err(Error::Timeout { .. }), Err(Error::Timeout { .. }))
        ),
        "the cancels did not time out: {cancelled:?}"
    );
    let publisher = cluster.connect(NODE);
    let early_after = queue_view(&publisher, &early_q);
    let publishing = publisher.channel().unwrap();
    for queue in [&early_q, &late_q] {
        publish_numbered(&publishing, queue, 0..3);
    }
    let views = || {
        (
            queue_view(&publisher, &early_q),
            queue_view(&publisher, &late_q),
        )
    };
    eventually(Duration::from_secs(5), || views() == ((3, 0), (3, 0)));
    let views = views();
    publisher.close().unwrap();
    connection.close().unwrap();
    assert_eq!(
        (early_after, views),
        ((0, 0), ((3, 0), (3, 0))),
        "(ready, consumers): of early after the recovery, then of (early, late) once 3 \
         messages were published to each"
    );
}

// ---------------------------------------------------------------------------------------
// Channel::close during a recovery
// ---------------------------------------------------------------------------------------

/// Channel::close of a channel the recovery has already opened again, with its consumer
/// back (the recovery held at a later consumer), closes it on the new connection once the
/// recovery is done: the broker has no consumer on its queue, the messages delivered to it
/// and those published later are ready, and its number can be taken again. Before the fix
/// the close only marked the channel closed here (the connection was recovering): the
/// channel and its consumer stayed on the broker, every message went to it and stayed
/// unacked, and the number stayed taken.
#[test]
fn a_close_of_a_channel_the_recovery_reopened_closes_it_on_the_broker() {
    let _serial = one_at_a_time();
    let cluster = Cluster::start();
    let name = connection_name("rr-chclose");
    let queue = unique("rr-chclose-q");
    let held_queue = unique("rr-chclose-held");
    let _tidy = tidy(cluster, &[&queue, &held_queue]);
    let gate = Gate::default();
    let held = gate.policy(|e| matches!(e, Entity::Consumer { tag, .. } if tag == "zz-held"));
    let connection =
        Connection::open(params(cluster, &name, held).with_rpc_timeout(Duration::from_secs(10)))
            .unwrap();
    let victim = connection.channel().unwrap();
    victim
        .queue_declare(&queue, QueueDeclareOptions::default())
        .unwrap();
    let consumer = victim
        .consume(&queue, consume_options("aa-victim", Duration::from_secs(5)))
        .unwrap();
    // Registered after the victim's consumer: the gate holds the recovery there, and 200
    // more consumers after it keep the recovery busy a while once the gate opens.
    let holder = filler_consumers(&connection, &held_queue, "zz-tail", 200);
    holder
        .basic_consume(&held_queue, |_c, _m, _p, _b| {}, tagged("zz-held", false))
        .unwrap();
    let number = victim.channel_number();

    force_close(cluster, &connection, &name);
    gate.wait_reached(1);
    let publisher = cluster.connect(NODE);
    let publishing = publisher.channel().unwrap();
    publish_numbered(&publishing, &queue, 0..10);
    // The victim's consumer is back: the messages went to it.
    assert!(
        eventually(Duration::from_secs(5), || queue_view(&publisher, &queue)
            == (0, 1)),
        "the victim's consumer is not back: (ready, consumers) {:?}",
        queue_view(&publisher, &queue)
    );

    let (began_tx, began) = mpsc::channel();
    let closing = {
        let (victim, connection) = (victim.clone(), connection.clone());
        thread::spawn(move || {
            let generation = connection.recovery_generation();
            began_tx.send(()).unwrap();
            (generation, victim.close())
        })
    };
    began.recv().unwrap();
    gate.open();
    let (generation_at_close, closed) = closing.join().unwrap();
    connection
        .wait_for_recovery(Duration::from_secs(10))
        .expect("the connection recovers");
    assert_eq!(generation_at_close, 0, "the close began after the recovery");
    closed.expect("Channel::close during the recovery");
    drop(consumer);

    publish_numbered(&publishing, &queue, 10..15);
    eventually(Duration::from_secs(5), || {
        queue_view(&publisher, &queue) == (15, 0)
    });
    let view = queue_view(&publisher, &queue);
    let again = connection.channel_with_number(number);
    publisher.close().unwrap();
    assert_eq!(view, (15, 0), "(ready, consumers)");
    let again = again.expect("the closed channel's number is free");
    again
        .queue_declare(&queue, support::consuming::passive())
        .expect("a call on the channel that took the number");
    connection.close().unwrap();
}

/// Channel::close while another thread's call is outstanding (a queue.declare the fake never
/// answers), then the connection is lost before the close-ok: the call ends with the close's
/// error at once (the close takes no turn behind it), the close returns Ok, and the channel
/// stays closed: the recovery does not open it again (the second connection has no channel of
/// ours open when the client closes it; the recovery's own channel is opened and closed).
/// Before the fix the close returned Ok, yet the recovery opened the channel again: is_open()
/// true, and channel 1 open on the second connection.
#[test]
fn a_close_while_a_call_is_outstanding_at_the_loss_leaves_the_channel_closed() {
    let _serial = one_at_a_time();
    let (declared_tx, declared) = mpsc::channel();
    let (cut_tx, cut) = mpsc::channel::<()>();
    let (port, fake) = spawn_fake(move |broker| {
        let mut first = broker.accept_and_handshake(0, 131_072);
        first.open_channel(1);
        first.expect_queue_declare(1); // never answered
        declared_tx.send(()).unwrap();
        cut.recv().unwrap();
        first.send_connection_close(320, "CONNECTION_FORCED - test");
        first.drain();
        // The second connection: channels opened and not closed when the client closes it.
        let mut second = broker.accept_and_handshake(0, 131_072);
        let mut open = BTreeSet::new();
        while let Some(frame) = second.read_frame() {
            let AMQPFrame::Method(ch, method) = frame else {
                continue;
            };
            let reply = match method {
                AMQPClass::Channel(channel::AMQPMethod::Open(_)) => {
                    open.insert(ch);
                    AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {}))
                }
                AMQPClass::Channel(channel::AMQPMethod::Close(_)) => {
                    open.remove(&ch);
                    AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {}))
                }
                AMQPClass::Connection(connection::AMQPMethod::Close(_)) => {
                    let ok = connection::AMQPMethod::CloseOk(connection::CloseOk {});
                    second.send_method(0, AMQPClass::Connection(ok));
                    break;
                }
                _ => continue,
            };
            second.send_method(ch, reply);
        }
        open
    });
    let connection = Connection::open(
        client_params(port)
            .with_rpc_timeout(Duration::from_secs(5))
            .with_recovery(
                RecoveryPolicy::default()
                    .with_initial_delay(Duration::from_millis(20))
                    .with_max_delay(Duration::from_millis(100)),
            ),
    )
    .unwrap();
    let ch = connection.channel().unwrap();
    let declaring = {
        let ch = ch.clone();
        thread::spawn(move || ch.queue_declare("q", QueueDeclareOptions::default()))
    };
    declared.recv_timeout(Duration::from_secs(5)).unwrap();
    let closing = {
        let ch = ch.clone();
        thread::spawn(move || ch.close())
    };
    // Ordering only: the close is sent before the loss. (Were it late, it would find the
    // channel lost, which both before and after the fix close here.)
    thread::sleep(Duration::from_millis(200));
    cut_tx.send(()).unwrap();
    let declare = declaring.join().unwrap();
    let closed = closing.join().unwrap();
    connection
        .wait_for_recovery(Duration::from_secs(5))
        .expect("the connection recovers");
    let open_after = ch.is_open();
    connection.close().unwrap();
    let left_open = join(fake);
    assert_eq!(
        declare.map(|_| ()),
        Err(Error::ChannelClosedByClient {
            reply_code: 0,
            reply_text: "Normal shutdown".into()
        })
    );
    assert_eq!(closed, Ok(()));
    assert!(!open_after, "the recovery opened the closed channel again");
    assert_eq!(
        left_open,
        BTreeSet::new(),
        "channels open on the second connection"
    );
}

// ---------------------------------------------------------------------------------------
// Consumers
// ---------------------------------------------------------------------------------------

/// Consumer tags are unique within a channel only: the same tag on two channels is two
/// consumers, and the recovery registers both again. Before the fix the recovery recorded
/// consumers by tag alone: the second replaced the first, and only one queue had its
/// consumer back.
#[test]
fn the_same_consumer_tag_on_two_channels_recovers_both() {
    let _serial = one_at_a_time();
    let cluster = Cluster::start();
    let name = connection_name("rr-sametag");
    let (q1, q2) = (unique("rr-sametag-q1"), unique("rr-sametag-q2"));
    let _tidy = tidy(cluster, &[&q1, &q2]);
    let connection = Connection::open(params(cluster, &name, policy())).unwrap();
    let channels: Vec<Channel> = [&q1, &q2]
        .into_iter()
        .map(|queue| {
            let channel = connection.channel().unwrap();
            channel
                .queue_declare(queue, QueueDeclareOptions::default())
                .unwrap();
            channel
                .basic_consume(queue, |_c, _m, _p, _b| {}, tagged("worker", false))
                .unwrap();
            channel
        })
        .collect();
    let both = vec![BTreeSet::from(["worker".to_string()]); 2];
    assert_eq!(consumer_tags(cluster, &[&q1, &q2]), both);

    force_close(cluster, &connection, &name);
    connection
        .wait_for_recovery(Duration::from_secs(15))
        .expect("the connection recovers");
    let after = consumer_tags(cluster, &[&q1, &q2]);
    drop(channels);
    connection.close().unwrap();
    assert_eq!(after, both, "consumer tags on [q1, q2]");
}

/// The same tag on a channel the broker closed (404; the application keeps its handle) and
/// on the new channel that took its number: only the new channel's consumer comes back.
/// Before (with consumers recorded by channel and tag, matched by number), the recovery
/// registered the old channel's consumer on the new channel too; the second consume of the
/// tag was refused with 530, which closed the new connection, and the new channel ended
/// closed with no consumer on either queue.
#[test]
fn a_broker_closed_channels_consumer_does_not_come_back_on_its_number() {
    let _serial = one_at_a_time();
    let cluster = Cluster::start();
    let name = connection_name("rr-reused");
    let (q1, q2) = (unique("rr-reused-q1"), unique("rr-reused-q2"));
    let _tidy = tidy(cluster, &[&q1, &q2]);
    let connection = Connection::open(params(cluster, &name, policy())).unwrap();
    let old = connection.channel().unwrap();
    old.queue_declare(&q1, QueueDeclareOptions::default())
        .unwrap();
    old.basic_consume(&q1, |_c, _m, _p, _b| {}, tagged("w", false))
        .unwrap();
    let missing = old.queue_declare(&unique("rr-missing"), support::consuming::passive());
    assert!(missing.is_err() && old.is_closed(), "{missing:?}");
    let new = connection.channel().unwrap();
    assert_eq!(new.channel_number(), old.channel_number());
    new.queue_declare(&q2, QueueDeclareOptions::default())
        .unwrap();
    new.basic_consume(&q2, |_c, _m, _p, _b| {}, tagged("w", false))
        .unwrap();

    force_close(cluster, &connection, &name);
    connection
        .wait_for_recovery(Duration::from_secs(15))
        .expect("the connection recovers");
    let after = consumer_tags(cluster, &[&q1, &q2]);
    let open = new.is_open();
    drop((old, new));
    connection.close().unwrap();
    assert!(open, "the new channel is open after the recovery");
    assert_eq!(
        after,
        vec![BTreeSet::new(), BTreeSet::from(["w".to_string()])],
        "consumer tags on [q1, q2]"
    );
}

// ---------------------------------------------------------------------------------------
// A panicking topology filter
// ---------------------------------------------------------------------------------------

/// A topology filter that panics (on the queue) is an error of its own: the queue is
/// skipped, reported in the Recovered event with an error whose is_panic() is true, and the
/// recovery goes on and ends; close() then leaves no I/O thread and no broker connection of
/// ours. Before the fix the panic killed the recovery thread: the connection recovered for
/// ever (wait_for_recovery timed out), and the new connection the attempt had opened stayed,
/// with its I/O thread, after close().
#[test]
fn a_panicking_topology_filter_skips_the_entity_and_the_recovery_ends() {
    let _serial = one_at_a_time();
    let cluster = Cluster::start();
    let io_before = threads_named("cottontail-io");
    let name = connection_name("rr-panic");
    let queue = unique("rr-panic-q");
    let _tidy = tidy(cluster, &[&queue]);
    let (outcome, events) = {
        let (name, queue) = (name.clone(), queue.clone());
        support::within(Duration::from_secs(20), "panicking filter", move || {
            let panicking = policy().with_topology_filter(|entity| match entity {
                Entity::Queue { .. } => panic!("a bug in the application's filter"),
                _ => true,
            });
            let connection = Connection::open(params(cluster, &name, panicking)).unwrap();
            let events = events(&connection);
            connection
                .channel()
                .unwrap()
                .queue_declare(&queue, QueueDeclareOptions::default())
                .unwrap();
            force_close(cluster, &connection, &name);
            let waited = connection.wait_for_recovery(Duration::from_secs(5));
            if waited.is_ok() {
                connection.process_data_events(Duration::ZERO).unwrap();
            }
            let closed = connection.close();
            ((waited, closed), events.try_iter().collect::<Vec<_>>())
        })
    };
    let io_settled = eventually(Duration::from_secs(5), || {
        threads_named("cottontail-io") <= io_before
    });
    let io_after = threads_named("cottontail-io");
    let left = cluster.connections_named(NODE, &name);
    assert_eq!(
        outcome,
        (Ok(()), Ok(())),
        "(wait_for_recovery, close); then I/O threads {io_before} -> {io_after}, broker \
         connections of ours {left:?}"
    );
    let reports = reports(&events);
    assert_eq!(reports.len(), 1, "{events:?}");
    match reports[0].skipped.as_slice() {
        [(Entity::Queue { name, .. }, Some(Error::Callback(e)))] if *name == queue => {
            assert!(e.is_panic(), "{e}")
        }
        other => panic!("skipped: {other:?}"),
    }
    assert!(io_settled, "I/O threads {io_before} -> {io_after}");
    assert_eq!(left, Vec::<String>::new(), "broker connections of ours");
}

// ---------------------------------------------------------------------------------------
// Consuming threads
// ---------------------------------------------------------------------------------------

/// The application closes the connection while it recovers (held at a queue's declare),
/// with a thread in start_consuming and one iterating a consume() consumer, both waiting for
/// the recovery: start_consuming ends with Ok(()) and the iterator ends (None), as for any
/// close by the application. Before the fix both got Err(ConnectionClosedByClient) (the
/// iterator yielded it, then ended).
#[test]
fn consuming_threads_end_quietly_when_the_application_closes_during_a_recovery() {
    let _serial = one_at_a_time();
    let cluster = Cluster::start();
    let name = connection_name("rr-consuming");
    let (q1, q2) = (unique("rr-consuming-q1"), unique("rr-consuming-q2"));
    let _tidy = tidy(cluster, &[&q1, &q2]);
    let gate = Gate::default();
    let connection =
        Connection::open(params(cluster, &name, gate.policy(queue_named(&q1)))).unwrap();
    let callbacks = connection.channel().unwrap();
    callbacks
        .queue_declare(&q1, QueueDeclareOptions::default())
        .unwrap();
    callbacks
        .basic_consume(&q1, |_c, _m, _p, _b| {}, tagged("callbacks", false))
        .unwrap();
    let (_, started) = start_consuming_on_a_thread(&callbacks);
    let iterated = connection.channel().unwrap();
    iterated
        .queue_declare(&q2, QueueDeclareOptions::default())
        .unwrap();
    let consumer = iterated
        .consume(
            &q2,
            ConsumeOptions {
                consumer_tag: Some("iterated".into()),
                ..Default::default()
            },
        )
        .unwrap();
    let (_, items) = iterate_on_a_thread(consumer);

    force_close(cluster, &connection, &name);
    gate.wait_reached(1);
    let closing = close_in_background(&connection);
    gate.open();
    closing.join().unwrap().expect("close during the recovery");
    let consumed = started
        .recv_timeout(Duration::from_secs(10))
        .expect("start_consuming returned");
    let mut yielded: Vec<Item> = Vec::new();
    while let Ok(item) = items.recv_timeout(Duration::from_secs(10)) {
        let end = item.is_none();
        yielded.push(item);
        if end {
            break;
        }
    }
    assert!(
        consumed == Ok(()) && matches!(yielded.as_slice(), [None]),
        "start_consuming returned {consumed:?}; the iterator yielded {yielded:?}"
    );
}
