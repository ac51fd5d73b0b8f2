//! Request/reply over RabbitMQ's [direct reply-to](https://www.rabbitmq.com/docs/direct-reply-to):
//! [`RpcClient`], one client shared by the threads of a connection, and [`serve`], a small
//! server loop.
//!
//! [`RpcClient::new`] opens a channel of its own and, before anything is published on it,
//! starts an auto-ack consumer on the pseudo-queue `amq.rabbitmq.reply-to` ([`REPLY_TO`]), as
//! RabbitMQ requires. [`RpcClient::call`] publishes a request on that channel with
//! `reply_to = amq.rabbitmq.reply-to` and a fresh uuid4 correlation id, and returns the reply
//! that carries that id. Servers need nothing special: they publish their answer to the
//! request's `reply_to` through the default exchange, with its `correlation_id`, which is
//! what [`serve`] does.
//!
//! ## How calls wait: who pumps, who wakes whom, by when
//!
//! Each call has an entry in one table, from before it publishes its request until it returns:
//! its correlation id, a slot for its reply, a condition variable of its own, and whether the
//! call is *waiting* yet (it has published and is inside `wait`; set under the table's lock).
//! At most one of the waiting calls is the *pumper*: it takes the replies from the reply
//! consumer (waiting in the channel's pump, where it reads the socket itself as a consumer
//! does) and files them. The table and the pumping flag change only under the table's lock;
//! the pumper does not hold it while it pumps.
//!
//! - **Who pumps.** A call that is waiting and finds nobody pumping becomes the pumper. The
//!   other waiting calls sleep on their own condition variables.
//! - **Who wakes whom.** The pumper files each reply under its correlation id and wakes that
//!   call alone. A reply whose id has no entry (its caller timed out, or it was never this
//!   client's) is dropped with a warning, never handed to another call. When the pumper stops
//!   (its own reply came, its deadline passed, or the channel failed) it clears the pumping
//!   flag and wakes one call that is waiting and has no reply yet, which takes over. A call
//!   that leaves while nobody pumps (its deadline passed, its publish failed) passes that
//!   wake-up on the same way. A call still publishing is never woken for it (it would miss
//!   the wake-up): it finds nobody pumping when it starts to wait, and pumps. So while any
//!   call waits, one is pumping or has been woken to. When the channel or the connection
//!   fails, the pumper records the error and wakes every call: each returns that error (a
//!   call still publishing finds it when it starts to wait), and so does every later call.
//! - **Returns.** A request published with [`CallOptions::mandatory`] that no queue takes
//!   comes back as basic.return. The channel's return callback files [`Error::Unroutable`] as
//!   that call's reply (under the table's lock) and wakes it, like a reply; then it moves the
//!   connection's work counter on (`Core::kick`), which ends a pump in progress. The pumper
//!   reads that counter before it looks at its own entry and pumps only while the counter is
//!   unchanged, so its own return reaches it whether it ran the callback itself or another
//!   thread's [`Connection::process_data_events`] did.
//! - **By when.** Each call waits at most until its own deadline: its publish waits for room
//!   in the outbound buffer, or for a connection the broker blocks, with that deadline (and
//!   queues nothing once it passed), the pumper pumps with it, a sleeper sleeps with it.
//!   Nothing polls: a thread wakes for its reply, its turn to pump, a failure or its deadline.
//!
//! ## Replies nobody waits for
//!
//! A reply that comes after its call left (timed out) must not stay queued for the reply
//! consumer: nobody takes it, and what a connection holds for its consumers counts against
//! its inbound limits, past which it stops reading for every channel. While calls are in the
//! table, the pumper drops such replies as it meets them (above). While the table is empty,
//! the reply consumer's tag is an *orphan* of the client's channel (auto-ack): whoever reads
//! the socket drops its deliveries as they arrive, each with a warning calling it "a late RPC
//! reply nobody waits for", as it does for the deliveries of any orphaned auto-ack consumer.
//! The first call into an empty table forgets the orphan (under the table's lock, before its
//! request goes out, so its own reply cannot be dropped); the last call out pushes it again
//! and drops what was already queued on the channel for the reply consumer, with a warning.
//! (Replies that another thread's [`Connection::process_data_events`] moved into the reply
//! consumer's own queue before the last call left, those that arrived since a pumper last
//! looked, stay there until the next pumper drops them.)
//!
//! ## Locks
//!
//! The table's lock, then the channel's state lock: a call takes the channel's lock under the
//! table's to forget or push the orphan and to take the queued replies. Nothing takes them the
//! other way round: the channel's code never calls into the client, and the client takes the
//! channel's lock only for those steps, taking no other lock while it holds it. The table's
//! lock is not held while pumping, publishing or closing the channel, and a sleeper releases
//! it while it sleeps.
//!
//! The pump handles only this client's channel: it does not run the connection's timers or
//! threadsafe callbacks, which run where they always do ([`Connection::process_data_events`],
//! [`Channel::start_consuming`], a [`Channel::consume`] iteration).
//!
//! Once the client's channel is closed (by [`RpcClient::close`], by the broker, e.g. for a
//! request published to an exchange that does not exist, or with the connection) every call
//! fails with that error (a call whose reply arrived before the close still gets it); make a
//! new client on a new channel.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::channel::Channel;
use crate::connection::Connection;
use crate::consumer::{ConsumeOptions, Consumer, Pumped};
use crate::delivery::Delivery;
use crate::engine::deadline_after;
use crate::error::{Error, Result};
use crate::options::{BasicConsumeOptions, PublishOptions};
use crate::protocol::methods::{Message, Return};
use crate::protocol::properties::BasicProperties;
use crate::publish::Publish;

/// The pseudo-queue of direct reply-to: a client consumes it and sends it as `reply_to`.
pub const REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// What the router's warning calls a reply it drops on arrival while no call is in the table
/// (the reply consumer is then an orphan of its channel, see the module docs).
const LATE_REPLY: &str = "a late RPC reply nobody waits for";

/// Options of [`RpcClient::call`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CallOptions {
    /// The request's properties (headers, content type, expiration...). The client sets
    /// `reply_to` and `correlation_id` itself, replacing any given here. Defaults to none.
    pub properties: BasicProperties,
    /// How long to wait for the reply, from the call. Defaults to `None`: the connection's
    /// `rpc_timeout`. A duration too large for a deadline waits for ever.
    pub timeout: Option<Duration>,
    /// Publish the request as mandatory: if no queue takes it (no server's queue bound, a
    /// mistyped routing key), the broker returns it and the call fails at once with
    /// [`Error::Unroutable`], carrying the request, instead of waiting for its timeout.
    /// Defaults to `false`, as for every publish.
    pub mandatory: bool,
}

/// A client for request/reply over direct reply-to, shared by many threads (module docs:
/// [`rpc`](crate::rpc)).
///
/// A cheap handle: clones share the client's channel and reply consumer, and it can move to
/// and be shared between threads (`Send + Sync`). Any number of threads may be inside
/// [`call`](Self::call) at once; each gets the reply to its own request. The channel is closed
/// when the last handle is dropped (waiting for the broker's close-ok, at most the RPC
/// timeout).
///
/// ```no_run
/// use cottontail::{CallOptions, Connection, ConnectionParameters, RpcClient};
///
/// let connection = Connection::open(ConnectionParameters::new("localhost"))?;
/// let client = RpcClient::new(&connection)?;
/// let threads: Vec<_> = (0..4)
///     .map(|i| {
///         let client = client.clone();
///         std::thread::spawn(move || {
///             let n = (20 + i).to_string();
///             let reply = client.call("", "rpc_queue", n.as_bytes(), CallOptions::default())?;
///             println!("fib({n}) = {}", String::from_utf8_lossy(&reply.body));
///             Ok::<(), cottontail::Error>(())
///         })
///     })
///     .collect();
/// for thread in threads {
///     thread.join().expect("a calling thread panicked")?;
/// }
/// # Ok::<(), cottontail::Error>(())
/// ```
#[derive(Clone)]
pub struct RpcClient {
    inner: Arc<Inner>,
}

struct Inner {
    channel: Channel,
    /// The consumer of [`REPLY_TO`]; the pumper pumps the channel for its tag. Never iterated:
    /// kept so that the consumer lives as long as the client.
    replies: Consumer,
    /// Shared with the channel's return callback (see [`file_return`]).
    table: Arc<Mutex<Table>>,
}

/// The waiting calls and who pumps (module docs).
#[derive(Default)]
struct Table {
    /// By correlation id.
    waiting: HashMap<String, Waiter>,
    /// A call is the pumper.
    pumping: bool,
    /// The error that ended the client's channel.
    failed: Option<Error>,
}

struct Waiter {
    /// Filed by the pumper, or by the return callback (the request came back unroutable).
    reply: Option<Result<Delivery>>,
    /// The call sleeps on it (with the table's lock).
    wake: Arc<Condvar>,
    /// The call is inside [`Inner::wait`] (set there, under the lock): only such a call can be
    /// handed the pumping. Before, it is still publishing its request, and would miss the
    /// wake-up.
    in_wait: bool,
}

impl RpcClient {
    /// Opens a channel on `connection` and starts the consumer of direct reply-to on it.
    pub fn new(connection: &Connection) -> Result<RpcClient> {
        let channel = connection.channel()?;
        // Not `consume`: a client may start inside a callback, and never iterates it.
        let replies = channel.consumer(
            REPLY_TO,
            ConsumeOptions {
                auto_ack: true,
                ..Default::default()
            },
        )?;
        // No call is in the table yet: replies are dropped on arrival (module docs).
        channel
            .core()
            .lock()
            .push_orphan_as(replies.consumer_tag(), true, LATE_REPLY);
        let table = Arc::new(Mutex::new(Table::default()));
        let filed = table.clone();
        channel.add_on_return_callback(
            move |channel: &Channel, method: &Return, properties: &BasicProperties, body: &[u8]| {
                file_return(&filed, channel, method, properties, body)
            },
        );
        Ok(RpcClient {
            inner: Arc::new(Inner {
                channel,
                replies,
                table,
            }),
        })
    }

    /// Publishes `body` to `exchange` with `routing_key` as a request and waits for its reply:
    /// the message that comes back with the request's correlation id, with its properties and
    /// body. Waits at most `options.timeout` (the connection's `rpc_timeout` by default), then
    /// returns [`Error::Timeout`]; a reply that comes later is dropped. The timeout covers the
    /// publish too: a request held back by a full outbound buffer or by a connection the
    /// broker blocks (memory or disk alarm) is not sent once it passes.
    ///
    /// A request nobody receives (no queue bound, no server) is dropped by the broker, and the
    /// call times out; with [`CallOptions::mandatory`] the broker returns it instead, and the
    /// call fails at once with [`Error::Unroutable`]. If the client's channel or connection
    /// fails meanwhile, the call returns that error.
    pub fn call(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        options: CallOptions,
    ) -> Result<Delivery> {
        let inner = &*self.inner;
        let timeout = options
            .timeout
            .unwrap_or_else(|| inner.channel.rpc_timeout());
        let deadline = deadline_after(timeout);
        let id = uuid::Uuid::new_v4().to_string();
        let wake = Arc::new(Condvar::new());
        {
            // Entered before publishing, so the reply cannot come first.
            let mut table = inner.lock();
            if let Some(e) = &table.failed {
                return Err(e.clone());
            }
            if table.waiting.is_empty() {
                // The first call in: replies are for the reply consumer again, not dropped on
                // arrival. Under the table's lock, before the request goes out.
                inner
                    .channel
                    .core()
                    .lock()
                    .forget_orphan(inner.replies.consumer_tag());
            }
            table.waiting.insert(
                id.clone(),
                Waiter {
                    reply: None,
                    wake: wake.clone(),
                    in_wait: false,
                },
            );
        }
        // With the call's deadline: a full outbound buffer or a blocked connection holds the
        // request back at most until then (nothing is queued if it passes).
        let properties = request_properties(options.properties, &id);
        let publish = Publish {
            mandatory: options.mandatory,
            deadline,
            claim: false,
        };
        let published = inner
            .channel
            .publish(exchange, routing_key, body, &properties, publish);
        if let Err(e) = published {
            inner.leave(&mut inner.lock(), &id);
            return Err(match e {
                Error::Timeout { context, .. } => Error::timeout(
                    format!(
                        "publishing request {id} (exchange {exchange:?}, routing key \
                         {routing_key:?}): {context}"
                    ),
                    timeout,
                ),
                e => e,
            });
        }
        inner.wait(&id, &wake, deadline)?.ok_or_else(|| {
            Error::timeout(
                format!(
                    "waiting for the reply to request {id} (exchange {exchange:?}, routing key \
                     {routing_key:?})"
                ),
                timeout,
            )
        })
    }

    /// Closes the client's channel and waits for the broker (at most the RPC timeout). Calls
    /// waiting meanwhile, and every later call, fail with [`Error::ChannelClosedByClient`].
    /// Closing a closed client does nothing.
    pub fn close(&self) -> Result<()> {
        self.inner.channel.close()
    }

    /// True until the client's channel is closed (by [`close`](Self::close), the broker, or
    /// with the connection).
    pub fn is_open(&self) -> bool {
        self.inner.channel.is_open() && self.inner.lock().failed.is_none()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for the reply of call `id` (entered in the table): sleeps, or pumps when nobody
    /// does. `None` when the deadline passed.
    fn wait(
        &self,
        id: &str,
        wake: &Condvar,
        deadline: Option<Instant>,
    ) -> Result<Option<Delivery>> {
        let mut table = self.lock();
        if let Some(waiter) = table.waiting.get_mut(id) {
            waiter.in_wait = true;
        }
        loop {
            if let Some(reply) = table.waiting.get_mut(id).and_then(|w| w.reply.take()) {
                self.leave(&mut table, id);
                return reply.map(Some);
            }
            if let Some(e) = table.failed.clone() {
                self.leave(&mut table, id);
                return Err(e);
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                self.leave(&mut table, id);
                return Ok(None);
            }
            if !table.pumping {
                table.pumping = true;
                drop(table);
                return self.pump(id, deadline);
            }
            table = match deadline {
                Some(d) => match wake.wait_timeout(table, d - now) {
                    Ok((table, _)) => table,
                    Err(p) => p.into_inner().0,
                },
                None => wake.wait(table).unwrap_or_else(|p| p.into_inner()),
            };
        }
    }

    /// Removes call `id`'s entry (with the table's lock held). If nobody pumps, wakes one call
    /// that is inside `wait` and still without its reply, to pump: the hand-over that keeps a
    /// pumper while any call waits. A call still publishing is passed over: it finds nobody
    /// pumping when it starts to wait, and pumps. The last call out makes the reply consumer
    /// an orphan again and drops the replies queued for it (module docs).
    fn leave(&self, table: &mut Table, id: &str) {
        table.waiting.remove(id);
        if table.waiting.is_empty() {
            let tag = self.replies.consumer_tag();
            self.channel
                .core()
                .lock()
                .push_orphan_as(tag, true, LATE_REPLY);
            for held in self.channel.take_queued(tag) {
                drop_reply(&held.take());
            }
            return;
        }
        if !table.pumping {
            if let Some(next) = table
                .waiting
                .values()
                .find(|w| w.in_wait && w.reply.is_none())
            {
                next.wake.notify_one();
            }
        }
    }

    /// The pumper's loop: files the replies of others until call `id`'s own reply comes, its
    /// deadline passes or the channel fails; then hands the pumping over.
    fn pump(&self, id: &str, deadline: Option<Instant>) -> Result<Option<Delivery>> {
        let tag = self.replies.consumer_tag();
        loop {
            // Read before the look at the table: a return filed after that look (by another
            // thread's `process_data_events`) has moved it on, and the pump returns. From the
            // current engine, each round: a recovery replaces it (and its counter).
            let work = self
                .channel
                .inner
                .owner
                .core()
                .conn_work
                .load(Ordering::SeqCst);
            {
                let mut table = self.lock();
                if let Some(returned) = table.waiting.get_mut(id).and_then(|w| w.reply.take()) {
                    table.pumping = false;
                    self.leave(&mut table, id);
                    return returned.map(Some);
                }
            }
            // Without the channel's consuming flag: the channel has no callbacks to keep to one
            // thread, and `process_data_events` on another thread may take a turn at it too
            // (it keeps the replies for this consumer).
            let pumped = self.channel.pump(Some(tag), deadline, Some(work));
            if let Ok(Pumped::Finished) = pumped {
                // The reply consumer is gone (RabbitMQ does not cancel direct reply-to
                // consumers; this is for a broker that would): no reply can come any more.
                if let Err(e) = self.channel.close() {
                    log::debug!("closing the RPC client's channel: {e}");
                }
            }
            let mut table = self.lock();
            let outcome = match pumped {
                Ok(Pumped::Mine(reply)) => table.file(*reply, id).map(|mine| Ok(Some(mine))),
                Ok(Pumped::Progress) => deadline
                    .is_some_and(|d| Instant::now() >= d)
                    .then_some(Ok(None)),
                // The client's channel is private and has no callbacks of anyone's; should one
                // fail all the same, that is not this call's business.
                Ok(Pumped::CallbackFailed(e)) => {
                    log::warn!("RpcClient: a callback on the client's channel failed: {e}");
                    None
                }
                Ok(Pumped::TimedOut) => deadline
                    .is_some_and(|d| Instant::now() >= d)
                    .then_some(Ok(None)),
                // Reply code 0, as `Channel::close()` sends (pika's default).
                Ok(Pumped::Finished) => Some(Err(table.fail(Error::ChannelClosedByClient {
                    reply_code: 0,
                    reply_text: "the RPC client's reply consumer was cancelled".into(),
                }))),
                // The connection is recovering: this call was in flight and fails, the client
                // goes on on the recovered channel (the others waiting pump in turn and fail
                // the same way).
                Err(e) if self.channel.lost() => {
                    for waiter in table.waiting.values() {
                        waiter.wake.notify_one();
                    }
                    Some(Err(e))
                }
                Err(e) => Some(Err(table.fail(e))),
            };
            if let Some(outcome) = outcome {
                table.pumping = false;
                self.leave(&mut table, id);
                return outcome;
            }
        }
    }
}

impl Table {
    /// Files `reply` for the call waiting for its correlation id and wakes that call; returns it
    /// instead when it is the pumper's own (`mine`). A reply nobody waits for is dropped.
    fn file(&mut self, reply: Delivery, mine: &str) -> Option<Delivery> {
        let id = reply.properties.correlation_id();
        if id == Some(mine) {
            return Some(reply);
        }
        match id.and_then(|id| self.waiting.get_mut(id)) {
            Some(waiter) if waiter.reply.is_none() => {
                waiter.reply = Some(Ok(reply));
                waiter.wake.notify_one();
            }
            _ => drop_reply(&reply),
        }
        None
    }

    /// Records the error that ended the channel (the first one stays) and wakes every call.
    fn fail(&mut self, error: Error) -> Error {
        let error = self.failed.get_or_insert(error).clone();
        for waiter in self.waiting.values() {
            waiter.wake.notify_one();
        }
        error
    }
}

/// The client channel's return callback: a request published with
/// [`CallOptions::mandatory`] came back unroutable. Its call fails with [`Error::Unroutable`]:
/// a sleeping call is woken, and the pumper finds its own on its next look (this runs on the
/// pumper's thread, inside its pump, or on a thread in `process_data_events`, which then
/// moves the connection's work counter on so that the pump returns). A return whose call has
/// left is dropped with a warning.
fn file_return(
    table: &Mutex<Table>,
    channel: &Channel,
    method: &Return,
    properties: &BasicProperties,
    body: &[u8],
) {
    let mut table = table.lock().unwrap_or_else(|p| p.into_inner());
    let id = properties.correlation_id();
    match id.and_then(|id| table.waiting.get_mut(id)) {
        Some(waiter) if waiter.reply.is_none() => {
            waiter.reply = Some(Err(Error::Unroutable {
                reply_code: method.reply_code,
                reply_text: method.reply_text.clone(),
                message: Box::new(Message::new(
                    &method.exchange,
                    &method.routing_key,
                    properties.clone(),
                    body.to_vec(),
                )),
            }));
            waiter.wake.notify_one();
        }
        _ => log::warn!(
            "RpcClient: request {id:?} came back unroutable ({} {}) after its call left; \
             dropped",
            method.reply_code,
            method.reply_text
        ),
    }
    drop(table);
    channel.inner.owner.core().kick();
}

impl std::fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let table = self.lock();
        f.debug_struct("RpcClient")
            .field("channel_number", &self.channel.channel_number())
            .field("waiting", &table.waiting.len())
            .field("pumping", &table.pumping)
            .field("failed", &table.failed)
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing first: the consumer's own drop then has nothing to cancel at the broker.
        if let Err(e) = self.channel.close() {
            log::debug!("closing the RPC client's channel: {e}");
        }
    }
}

/// Serves requests from `queue` on this thread until the channel's consumers are cancelled
/// ([`Channel::stop_consuming`] from another thread) or the channel or connection fails, as
/// [`Channel::start_consuming`] does.
///
/// For each request, `handler` gets its properties and body and returns the reply's body,
/// which is published through the default exchange to the request's `reply_to` with its
/// `correlation_id`; then the request is acked. A request without `reply_to` is acked and its
/// answer dropped, with a warning. An error from `handler` (or the failure of a reply's
/// publish or ack) ends `serve` with that error: its consumer is cancelled first (requests
/// received but not yet handled are requeued), and the failed request stays unacked (the
/// broker delivers it again once the channel closes). So `serve` can be called again on the
/// channel, and its consumer is then the only one. Set a prefetch with [`Channel::basic_qos`]
/// first to share requests between servers.
///
/// ```no_run
/// # let connection = cottontail::Connection::open(cottontail::ConnectionParameters::default())?;
/// let channel = connection.channel()?;
/// channel.queue_declare("echo", Default::default())?;
/// cottontail::rpc::serve(&channel, "echo", |_properties, body| Ok(body.to_vec()))?;
/// # Ok::<(), cottontail::Error>(())
/// ```
pub fn serve<F>(channel: &Channel, queue: &str, mut handler: F) -> Result<()>
where
    F: FnMut(&BasicProperties, &[u8]) -> Result<Vec<u8>> + Send + 'static,
{
    let served = queue.to_string();
    let tag = channel.basic_consume(
        queue,
        move |ch, method, properties, body| {
            let answer = handler(properties, body)?;
            match properties.reply_to() {
                Some(reply_to) => {
                    let reply = PublishOptions {
                        properties: reply_properties(properties),
                        ..Default::default()
                    };
                    ch.basic_publish_with("", reply_to, &answer, &reply)?
                }
                None => log::warn!(
                    "rpc::serve: request {} from {served:?} has no reply_to: its answer is dropped",
                    method.delivery_tag
                ),
            }
            ch.basic_ack(method.delivery_tag, false)
        },
        BasicConsumeOptions::default(),
    )?;
    let consumed = channel.start_consuming();
    if consumed.is_err() && channel.is_open() {
        // Not left behind: a second `serve` on this channel would run next to it.
        if let Err(e) = channel.basic_cancel(&tag) {
            log::debug!("rpc::serve: cancelling consumer {tag} after a failure: {e}");
        }
    }
    consumed
}

/// Drops a reply no call waits for, with a warning.
fn drop_reply(reply: &Delivery) {
    log::warn!(
        "RpcClient: dropping a reply with correlation id {:?} (routing key {:?}, {} bytes): no \
         call waits for it (it timed out, was answered already, or never was)",
        reply.properties.correlation_id(),
        reply.method.routing_key.as_str(),
        reply.body.len()
    );
}

/// The caller's properties with direct reply-to and the call's correlation id.
fn request_properties(properties: BasicProperties, id: &str) -> BasicProperties {
    properties.with_reply_to(REPLY_TO).with_correlation_id(id)
}

/// A reply's properties: the request's correlation id, if it has one.
fn reply_properties(request: &BasicProperties) -> BasicProperties {
    match request.correlation_id() {
        Some(id) => BasicProperties::default().with_correlation_id(id),
        None => BasicProperties::default(),
    }
}
