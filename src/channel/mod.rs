//! [`Channel`]: pika's `BlockingChannel` methods.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use amq_protocol::protocol::{basic, channel, exchange, queue, tx, AMQPClass};

use crate::connection::Owner;
use crate::consumer::{CancelCallback, ConsumerEntry, ReturnCallback};
use crate::delivery::GetMessage;
use crate::engine::chan::{ChannelCore, Held, Life, Reply, Stale};
use crate::engine::{deadline_after, with_scratch};
use crate::error::{Error, Result};
use crate::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, NackOptions, QosOptions,
    QueueBindOptions, QueueDeclareOk, QueueDeclareOptions, QueueDeleteOptions, RejectOptions,
};
use crate::protocol::ack_frames::Settle;
use crate::protocol::codec::{self, short};
use crate::protocol::publish_cache::PublishCache;
use crate::protocol::table;
use crate::recovery::topology::{ExchangeBinding, QueueBinding};

pub(crate) mod methods;
mod request;

pub(crate) use request::{call, call_until, ensure_open, unexpected};

/// A channel of a [`Connection`](crate::Connection): pika's `BlockingChannel`.
///
/// A cheap handle: clones share the channel, and it can move to and be shared between threads
/// (`Send + Sync`). Synchronous methods are serialised (AMQP allows one outstanding per channel)
/// and each waits at most the connection's `rpc_timeout`. When the broker closes the channel
/// (404, 406, 403...), the waiting call and every later call get [`Error::ChannelClosed`].
///
/// The channel is closed when its last handle is dropped (without waiting for the broker). A
/// callback that captured a handle of the channel keeps it open: [`close`](Self::close) it
/// (closing drops its consumer, return and cancel callbacks), or use the channel the
/// callbacks are given.
#[derive(Clone, Debug)]
pub struct Channel {
    pub(crate) inner: Arc<ChannelHandle>,
}

/// pika's name for [`Channel`].
pub type BlockingChannel = Channel;

pub(crate) struct ChannelHandle {
    pub(crate) owner: Arc<Owner>,
    pub(crate) core: Arc<ChannelCore>,
    /// By tag; a B-tree because a channel has few consumers and a delivery's lookup then costs
    /// a comparison or two instead of hashing the tag.
    pub(crate) consumers: Mutex<BTreeMap<String, ConsumerEntry>>,
    pub(crate) callbacks: Mutex<ChannelCallbacks>,
    /// The last publish's encoded method and header frames (see `io::publish_cache`).
    pub(crate) publish_cache: Mutex<PublishCache>,
    /// A thread is inside `start_consuming` (or iterating `consume()`) on this channel.
    pub(crate) consuming: AtomicBool,
    /// What a recovery sets again on the new channel (see `recovery`).
    pub(crate) settings: Mutex<ChannelSettings>,
    /// This channel among all of the process's, unlike its number, which a later channel may
    /// take: what the recorded topology files its consumers under (see `recovery::topology`).
    pub(crate) instance: u64,
}

/// The last [`ChannelHandle::instance`] given out.
static INSTANCES: AtomicU64 = AtomicU64::new(0);

/// A channel's settings as the broker confirmed them, for a recovery to set again (confirm
/// mode is the channel state's `confirms`).
#[derive(Debug, Default, Clone)]
pub(crate) struct ChannelSettings {
    /// The last basic.qos with `global_qos` false and with it true.
    pub(crate) qos: [Option<QosOptions>; 2],
    /// tx.select was confirmed.
    pub(crate) tx: bool,
}

/// Return and cancel callbacks of a channel.
#[derive(Default)]
pub(crate) struct ChannelCallbacks {
    pub(crate) on_return: Vec<ReturnCallback>,
    pub(crate) on_cancel: Vec<CancelCallback>,
    /// Dropped for good ([`ChannelHandle::drop_callbacks`]): none is kept any more.
    pub(crate) dropped: bool,
}

impl crate::events::CallbackLists for ChannelCallbacks {
    fn dropped(&self) -> bool {
        self.dropped
    }
}

impl std::fmt::Debug for ChannelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("channel_number", &self.core.id)
            .finish_non_exhaustive()
    }
}

impl ChannelHandle {
    /// Drops the channel's consumer, return and cancel callbacks once it is closed: none can
    /// run any more, and one that captured a handle of this channel would keep it for ever
    /// (see [`Owner::drop_callbacks`]). Iterators' entries stay (they end by themselves); what
    /// a removed consumer still held is dropped (and logged). While a thread consumes on the
    /// channel nothing is dropped: it still hands out what was read before the close (see the
    /// router), and drops them itself when it stops (`ConsumingGuard`).
    pub(crate) fn drop_callbacks(&self) {
        if self.consuming.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let removed: Vec<ConsumerEntry> = {
            let mut consumers = self.consumers.lock().unwrap_or_else(|p| p.into_inner());
            let tags: Vec<String> = (consumers.iter())
                .filter(|(_, entry)| entry.has_callback())
                .map(|(tag, _)| tag.clone())
                .collect();
            (tags.iter())
                .filter_map(|tag| consumers.remove(tag))
                .collect()
        };
        let mut removed = removed;
        let mut held: std::collections::VecDeque<Held> = (removed.iter_mut())
            .flat_map(ConsumerEntry::take_pending)
            .collect();
        crate::engine::chan::drop_deliveries(self.core.id, &mut held, log::Level::Info);
        let callbacks = {
            let mut callbacks = self.callbacks.lock().unwrap_or_else(|p| p.into_inner());
            let taken = std::mem::take(&mut *callbacks);
            callbacks.dropped = true;
            taken
        };
        drop((removed, callbacks));
    }
}

impl Drop for ChannelHandle {
    fn drop(&mut self) {
        // What it still holds, for its iterators too, is nobody's now: dropped (and logged,
        // once) with the close, or below if it is closed already (the broker or the
        // connection closed it, or an iterator ended early).
        let consumers = self.consumers.get_mut().unwrap_or_else(|p| p.into_inner());
        let with_callbacks: Vec<String> = (consumers.iter())
            .filter(|(_, entry)| entry.runs_callbacks())
            .map(|(tag, _)| tag.clone())
            .collect();
        let iterators: Vec<Held> = (consumers.values_mut())
            .flat_map(|entry| entry.take_pending())
            .collect();
        self.core.lock().deliveries.extend(iterators);
        // No waiting: the reader frees the number when the channel is closed (see `router`).
        let closed_now = begin_close(&self.owner.core(), &self.core, 0, "Normal shutdown");
        if closed_now.unwrap_or(false) && !with_callbacks.is_empty() {
            // pika's connection keeps every channel open; here the last handle does.
            log::warn!(
                "channel {}: its last handle was dropped while consumers {with_callbacks:?} \
                 were registered: closing it, so they stop; keep a Channel for as long as its \
                 consumers should run",
                self.core.id
            );
        }
        let mut st = self.core.lock();
        crate::engine::chan::drop_deliveries(self.core.id, &mut st.deliveries, log::Level::Info);
        st.returns.drop_all(self.core.id);
        drop(st);
        // Whether we closed it now or the broker had: its consumers are gone.
        self.owner.record(|t| t.channel_closed(self.instance));
    }
}

/// Waits until the channel is closed (our channel.close answered, or the broker's routed), at
/// most until `deadline` (`timeout` from the start, for the error).
pub(crate) fn wait_closed(
    conn: &crate::engine::Core,
    core: &ChannelCore,
    deadline: Option<Instant>,
    timeout: Duration,
) -> Result<()> {
    // Not `wait_on`, which ends at our own close.
    let closed = conn.wait_until(deadline, || match &core.lock().life {
        Life::Closed(_) => Some(Ok(())),
        Life::Lost(e) => Some(Err(e.clone())),
        Life::Open | Life::Closing(_) => None,
    });
    closed.unwrap_or_else(|| Err(Error::timeout("waiting for channel.close-ok", timeout)))
}

/// Sends channel.close unless the channel is already closing or closed, without waiting for
/// room in the outbound buffer; true if it was sent.
pub(crate) fn begin_close(
    conn: &crate::engine::Core,
    core: &ChannelCore,
    reply_code: u16,
    reply_text: &str,
) -> Result<bool> {
    let method = AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
        reply_code,
        reply_text: short(reply_text)?,
        class_id: 0,
        method_id: 0,
    }));
    let sent = with_scratch(|buf| {
        codec::encode_method(buf, core.id, method)?;
        conn.send_close_if(core, buf, |st| {
            if !matches!(st.life, Life::Open) {
                return Ok(None);
            }
            st.life = Life::Closing(Error::ChannelClosedByClient {
                reply_code,
                reply_text: reply_text.to_owned(),
            });
            // Nobody will consume these any more; unacked ones go back to their queues when
            // the broker closes the channel. Freeing them also lifts inbound back-pressure.
            // The application closes the channel on purpose: noted, not warned about.
            crate::engine::chan::drop_deliveries(core.id, &mut st.deliveries, log::Level::Info);
            Ok(Some(()))
        })
    });
    match sent {
        Ok(Some(())) => {
            // Whoever waits on the channel stops now (see `ChanState::ended_error`).
            conn.nudge();
            Ok(true)
        }
        Ok(None) => Ok(false),
        // The connection is gone, and the channel with it.
        Err(e) if e.is_connection_error() => Ok(false),
        Err(e) => Err(e),
    }
}

impl Channel {
    pub(crate) fn new(owner: Arc<Owner>, core: Arc<ChannelCore>) -> Channel {
        let inner = Arc::new(ChannelHandle {
            owner,
            core,
            consumers: Mutex::new(BTreeMap::new()),
            callbacks: Mutex::new(ChannelCallbacks::default()),
            publish_cache: Mutex::new(PublishCache::default()),
            consuming: AtomicBool::new(false),
            settings: Mutex::default(),
            instance: INSTANCES.fetch_add(1, Ordering::Relaxed) + 1,
        });
        inner.owner.register_channel(&inner);
        Channel { inner }
    }

    pub(crate) fn core(&self) -> &ChannelCore {
        &self.inner.core
    }

    pub(crate) fn rpc_timeout(&self) -> Duration {
        self.inner.owner.core().params.rpc_timeout
    }

    pub(crate) fn lock_consumers(&self) -> MutexGuard<'_, BTreeMap<String, ConsumerEntry>> {
        self.inner
            .consumers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn lock_callbacks(&self) -> MutexGuard<'_, ChannelCallbacks> {
        self.inner
            .callbacks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn lock_settings(&self) -> MutexGuard<'_, ChannelSettings> {
        self.inner
            .settings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The connection this channel belongs to (pika's `BlockingChannel.connection`).
    pub fn connection(&self) -> crate::Connection {
        crate::Connection::from_owner(self.inner.owner.clone())
    }

    /// The channel's number (pika's `channel_number`).
    pub fn channel_number(&self) -> u16 {
        self.core().id
    }

    /// True until the channel is closed by either side or its connection goes.
    pub fn is_open(&self) -> bool {
        matches!(self.core().lock().life, Life::Open)
    }

    /// True once the channel is closed (pika's `is_closed`).
    pub fn is_closed(&self) -> bool {
        !self.is_open()
    }

    /// Closes the channel with pika's defaults (reply code 0, "Normal shutdown") and waits
    /// for the broker.
    pub fn close(&self) -> Result<()> {
        self.close_with(0, "Normal shutdown")
    }

    /// Closes the channel with a reply code and text (pika's `close(reply_code, reply_text)`).
    /// Closing a closed channel does nothing but drop its callbacks, as every close does.
    pub fn close_with(&self, reply_code: u16, reply_text: &str) -> Result<()> {
        let closed = self.close_on_broker(reply_code, reply_text);
        if closed.is_ok() {
            self.inner.drop_callbacks();
        }
        closed
    }

    /// [`close_with`](Self::close_with) but for dropping the callbacks.
    fn close_on_broker(&self, reply_code: u16, reply_text: &str) -> Result<()> {
        let core = self.core();
        let timeout = self.rpc_timeout();
        let deadline = deadline_after(timeout);
        if self.closed_locally(reply_code, reply_text) {
            return Ok(());
        }
        // Open (or closing): on the connection's engine, once it is usable. A channel a
        // recovery has opened again is on the new engine, the current one once it is in place.
        // No turn is taken: a method outstanding on the channel ends with our close (its
        // caller and those waiting for a turn, a confirm or a reply stop at once, see
        // `ChanState::ended_error`), as the broker answers nothing but the close-ok after it.
        let conn = match self.inner.owner.ready_core(|| deadline) {
            Ok(conn) => conn,
            // Lost meanwhile, or closed by the broker or another thread.
            Err(e) if self.closed_locally(reply_code, reply_text) => {
                log::debug!("channel {} closed while waiting to close it: {e}", core.id);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        begin_close(&conn, core, reply_code, reply_text)?;
        self.inner
            .owner
            .record(|t| t.channel_closed(self.inner.instance));
        wait_closed(&conn, core, deadline, timeout)
    }

    /// Closes the channel here only, if it has no broker side any more: true if it was lost
    /// with its connection (the recovery then does not open it again) or is closed already.
    fn closed_locally(&self, reply_code: u16, reply_text: &str) -> bool {
        let mut st = self.core().lock();
        match st.life {
            // Checked and changed under the channel's lock, as the recovery checks it before
            // opening the channel again.
            Life::Lost(_) => {
                st.life = Life::Closed(Error::ChannelClosedByClient {
                    reply_code,
                    reply_text: reply_text.to_owned(),
                });
                self.inner
                    .owner
                    .record(|t| t.channel_closed(self.inner.instance));
                true
            }
            Life::Closed(_) => true,
            Life::Open | Life::Closing(_) => false,
        }
    }

    /// Declares a queue (pika's `queue_declare`). Pass `""` to let the broker name it; the name
    /// is in the returned [`QueueDeclareOk`], with the message and consumer counts.
    ///
    /// ```no_run
    /// # let connection = cottontail::Connection::open(cottontail::ConnectionParameters::default())?;
    /// # let channel = connection.channel()?;
    /// use cottontail::QueueDeclareOptions;
    /// let ok = channel.queue_declare("", QueueDeclareOptions { exclusive: true, ..Default::default() })?;
    /// println!("declared {}", ok.queue);
    /// # Ok::<(), cottontail::Error>(())
    /// ```
    pub fn queue_declare(
        &self,
        queue: &str,
        options: QueueDeclareOptions,
    ) -> Result<QueueDeclareOk> {
        let method = methods::queue_declare(queue, &options)?;
        match self.rpc(method, "queue.declare")? {
            Reply::Method(AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok))) => {
                let name = ok.queue.as_str();
                self.inner
                    .owner
                    .record(|t| t.queue_declared(queue, name, &options));
                Ok(QueueDeclareOk {
                    queue: ok.queue.to_string(),
                    message_count: ok.message_count,
                    consumer_count: ok.consumer_count,
                })
            }
            other => Err(unexpected("queue.declare", other)),
        }
    }

    /// Deletes a queue and returns how many messages it held (pika's `queue_delete`).
    pub fn queue_delete(&self, queue: &str, options: QueueDeleteOptions) -> Result<u32> {
        let method = AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
            queue: short(queue)?,
            if_unused: options.if_unused,
            if_empty: options.if_empty,
            nowait: false,
        }));
        match self.rpc(method, "queue.delete")? {
            Reply::Method(AMQPClass::Queue(queue::AMQPMethod::DeleteOk(ok))) => {
                self.inner.owner.record(|t| t.queue_deleted(queue));
                Ok(ok.message_count)
            }
            other => Err(unexpected("queue.delete", other)),
        }
    }

    /// Removes every ready message from a queue and returns how many (pika's `queue_purge`).
    pub fn queue_purge(&self, queue: &str) -> Result<u32> {
        let method = AMQPClass::Queue(queue::AMQPMethod::Purge(queue::Purge {
            queue: short(queue)?,
            nowait: false,
        }));
        match self.rpc(method, "queue.purge")? {
            Reply::Method(AMQPClass::Queue(queue::AMQPMethod::PurgeOk(ok))) => Ok(ok.message_count),
            other => Err(unexpected("queue.purge", other)),
        }
    }

    /// Binds a queue to an exchange (pika's `queue_bind`). With `routing_key: None` the binding
    /// key is the queue's name, as in pika.
    pub fn queue_bind(&self, queue: &str, exchange: &str, options: QueueBindOptions) -> Result<()> {
        let routing_key = options.routing_key.as_deref().unwrap_or(queue);
        let method = methods::queue_bind(queue, exchange, routing_key, &options.arguments)?;
        match self.rpc(method, "queue.bind")? {
            Reply::Method(AMQPClass::Queue(queue::AMQPMethod::BindOk(_))) => {
                self.inner.owner.record(|t| {
                    t.queue_bound(queue_binding(queue, exchange, routing_key, &options))
                });
                Ok(())
            }
            other => Err(unexpected("queue.bind", other)),
        }
    }

    /// Declares an exchange (pika's `exchange_declare`); `exchange_type` defaults to `direct`.
    pub fn exchange_declare(&self, exchange: &str, options: ExchangeDeclareOptions) -> Result<()> {
        let method = methods::exchange_declare(exchange, &options)?;
        match self.rpc(method, "exchange.declare")? {
            Reply::Method(AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(_))) => {
                self.inner
                    .owner
                    .record(|t| t.exchange_declared(exchange, &options));
                Ok(())
            }
            other => Err(unexpected("exchange.declare", other)),
        }
    }

    /// Deletes an exchange (pika's `exchange_delete(exchange, if_unused=False)`); with
    /// `if_unused`, only when it has no bindings (406 otherwise).
    pub fn exchange_delete(&self, exchange: &str, options: ExchangeDeleteOptions) -> Result<()> {
        let method = AMQPClass::Exchange(exchange::AMQPMethod::Delete(exchange::Delete {
            exchange: short(exchange)?,
            if_unused: options.if_unused,
            nowait: false,
        }));
        match self.rpc(method, "exchange.delete")? {
            Reply::Method(AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(_))) => {
                self.inner.owner.record(|t| t.exchange_deleted(exchange));
                Ok(())
            }
            other => Err(unexpected("exchange.delete", other)),
        }
    }

    /// Binds exchange `destination` to exchange `source` (pika's `exchange_bind(destination,
    /// source, routing_key='', arguments=None)`), a RabbitMQ extension.
    pub fn exchange_bind(
        &self,
        destination: &str,
        source: &str,
        options: ExchangeBindOptions,
    ) -> Result<()> {
        let method = methods::exchange_bind(destination, source, &options)?;
        match self.rpc(method, "exchange.bind")? {
            Reply::Method(AMQPClass::Exchange(exchange::AMQPMethod::BindOk(_))) => {
                self.inner.owner.record(|t| {
                    t.exchange_bound(ExchangeBinding {
                        destination: destination.to_owned(),
                        source: source.to_owned(),
                        options,
                    })
                });
                Ok(())
            }
            other => Err(unexpected("exchange.bind", other)),
        }
    }

    /// Removes an exchange-to-exchange binding (pika's `exchange_unbind(destination=None,
    /// source=None, routing_key='', arguments=None)`).
    pub fn exchange_unbind(
        &self,
        destination: &str,
        source: &str,
        options: ExchangeBindOptions,
    ) -> Result<()> {
        let method = AMQPClass::Exchange(exchange::AMQPMethod::Unbind(exchange::Unbind {
            destination: short(destination)?,
            source: short(source)?,
            routing_key: short(&options.routing_key)?,
            nowait: false,
            arguments: table::to_wire(&options.arguments)?,
        }));
        match self.rpc(method, "exchange.unbind")? {
            Reply::Method(AMQPClass::Exchange(exchange::AMQPMethod::UnbindOk(_))) => {
                self.inner.owner.record(|t| {
                    t.exchange_unbound(&ExchangeBinding {
                        destination: destination.to_owned(),
                        source: source.to_owned(),
                        options,
                    })
                });
                Ok(())
            }
            other => Err(unexpected("exchange.unbind", other)),
        }
    }

    /// Removes a queue binding (pika's `queue_unbind(queue, exchange=None, routing_key=None,
    /// arguments=None)`); with `routing_key: None` the key is the queue's name, as in
    /// [`queue_bind`](Self::queue_bind).
    pub fn queue_unbind(
        &self,
        queue: &str,
        exchange: &str,
        options: QueueBindOptions,
    ) -> Result<()> {
        let routing_key = options.routing_key.as_deref().unwrap_or(queue);
        let method = AMQPClass::Queue(queue::AMQPMethod::Unbind(queue::Unbind {
            queue: short(queue)?,
            exchange: short(exchange)?,
            routing_key: short(routing_key)?,
            arguments: table::to_wire(&options.arguments)?,
        }));
        match self.rpc(method, "queue.unbind")? {
            Reply::Method(AMQPClass::Queue(queue::AMQPMethod::UnbindOk(_))) => {
                self.inner.owner.record(|t| {
                    t.queue_unbound(&queue_binding(queue, exchange, routing_key, &options))
                });
                Ok(())
            }
            other => Err(unexpected("queue.unbind", other)),
        }
    }

    /// Asks the broker to redeliver every unacknowledged message of the channel (pika's
    /// `basic_recover(requeue=False)`). RabbitMQ only implements `requeue=true`; with `false`
    /// it closes the whole connection with 540 NOT_IMPLEMENTED, reported as
    /// [`Error::ConnectionClosed`].
    pub fn basic_recover(&self, requeue: bool) -> Result<()> {
        let method = AMQPClass::Basic(basic::AMQPMethod::Recover(basic::Recover { requeue }));
        // Redelivered messages get new tags and the old ones become unknown: stop merging acks.
        match self.rpc_with(method, "basic.recover", Stale::Method, |st| {
            st.acks.stop_merging()
        })? {
            Reply::Method(AMQPClass::Basic(basic::AMQPMethod::RecoverOk(_))) => Ok(()),
            other => Err(unexpected("basic.recover", other)),
        }
    }

    /// Asks the broker to pause (`false`) or resume (`true`) deliveries on this channel
    /// (pika's `flow(active)`); returns the state the broker confirms. RabbitMQ does not
    /// implement pausing: `flow(false)` closes the whole connection with 540 NOT_IMPLEMENTED,
    /// reported as [`Error::ConnectionClosed`].
    pub fn flow(&self, active: bool) -> Result<bool> {
        let method = AMQPClass::Channel(channel::AMQPMethod::Flow(channel::Flow { active }));
        match self.rpc(method, "channel.flow")? {
            Reply::Method(AMQPClass::Channel(channel::AMQPMethod::FlowOk(ok))) => Ok(ok.active),
            other => Err(unexpected("channel.flow", other)),
        }
    }

    /// Puts the channel in transaction mode (pika's `tx_select`): publishes and acks take
    /// effect at [`tx_commit`](Self::tx_commit) and are dropped by
    /// [`tx_rollback`](Self::tx_rollback).
    pub fn tx_select(&self) -> Result<()> {
        // A rollback makes acked messages unacked again, which merged acks could then cover.
        match self.rpc_with(
            AMQPClass::Tx(tx::AMQPMethod::Select(tx::Select {})),
            "tx.select",
            Stale::Method,
            |st| st.acks.stop_merging(),
        )? {
            Reply::Method(AMQPClass::Tx(tx::AMQPMethod::SelectOk(_))) => {
                self.lock_settings().tx = true;
                Ok(())
            }
            other => Err(unexpected("tx.select", other)),
        }
    }

    /// Commits the current transaction (pika's `tx_commit`).
    pub fn tx_commit(&self) -> Result<()> {
        match self.rpc(
            AMQPClass::Tx(tx::AMQPMethod::Commit(tx::Commit {})),
            "tx.commit",
        )? {
            Reply::Method(AMQPClass::Tx(tx::AMQPMethod::CommitOk(_))) => Ok(()),
            other => Err(unexpected("tx.commit", other)),
        }
    }

    /// Discards the current transaction's publishes and acks (pika's `tx_rollback`).
    pub fn tx_rollback(&self) -> Result<()> {
        match self.rpc(
            AMQPClass::Tx(tx::AMQPMethod::Rollback(tx::Rollback {})),
            "tx.rollback",
        )? {
            Reply::Method(AMQPClass::Tx(tx::AMQPMethod::RollbackOk(_))) => Ok(()),
            other => Err(unexpected("tx.rollback", other)),
        }
    }

    /// Sets the prefetch window (pika's `basic_qos(prefetch_size=0, prefetch_count=0,
    /// global_qos=False)`).
    ///
    /// ```no_run
    /// # let connection = cottontail::Connection::open(cottontail::ConnectionParameters::default())?;
    /// # let channel = connection.channel()?;
    /// use cottontail::QosOptions;
    /// channel.basic_qos(QosOptions { prefetch_count: 1, ..Default::default() })?;
    /// # Ok::<(), cottontail::Error>(())
    /// ```
    ///
    /// RabbitMQ reads `global_qos` its own way: `false` applies `prefetch_count` to each
    /// consumer started afterwards on this channel, `true` shares it among all consumers of the
    /// channel. RabbitMQ does not implement `prefetch_size`; anything but 0 is rejected here
    /// before it would close the channel with 540 NOT_IMPLEMENTED.
    pub fn basic_qos(&self, options: QosOptions) -> Result<()> {
        let QosOptions {
            prefetch_size,
            prefetch_count,
            global_qos,
        } = options;
        if prefetch_size != 0 {
            return Err(Error::InvalidArgument(
                "prefetch_size must be 0: RabbitMQ does not implement it".into(),
            ));
        }
        let method = AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count,
            global: global_qos,
        }));
        match self.rpc_with(method, "basic.qos", Stale::Method, |st| {
            st.acks.set_prefetch(prefetch_count)
        })? {
            Reply::Method(AMQPClass::Basic(basic::AMQPMethod::QosOk(_))) => {
                self.lock_settings().qos[usize::from(global_qos)] = Some(options);
                Ok(())
            }
            other => Err(unexpected("basic.qos", other)),
        }
    }

    /// Fetches one message (pika's `basic_get(queue, auto_ack=False)`); `None` when the queue is
    /// empty.
    pub fn basic_get(&self, queue: &str, auto_ack: bool) -> Result<Option<GetMessage>> {
        let method = AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: short(queue)?,
            no_ack: auto_ack,
        }));
        match self.rpc_with(method, "basic.get", Stale::Get { auto_ack }, |_| {})? {
            Reply::Get(message) => Ok(Some(message)),
            Reply::Method(AMQPClass::Basic(basic::AMQPMethod::GetEmpty(_))) => Ok(None),
            other => Err(unexpected("basic.get", other)),
        }
    }

    /// Acknowledges one delivery, or with `multiple` every delivery up to `delivery_tag`
    /// (pika's `basic_ack(delivery_tag=0, multiple=False)`).
    ///
    /// Usually the ack is written before this returns. While more deliveries wait in the
    /// channel's queue, consecutive single acks (tag after tag) are merged into one
    /// `basic.ack(multiple=true)` that settles exactly the same messages, which saves the
    /// broker most of their cost; such an ack is held at most 5 ms, and is written earlier
    /// when the run of acks ends, before any other frame of the channel, when a consumer of
    /// the channel waits for messages, and before the channel or connection closes. Nothing
    /// is merged once the channel is in transaction mode or after
    /// [`basic_recover`](Self::basic_recover).
    pub fn basic_ack(&self, delivery_tag: u64, multiple: bool) -> Result<()> {
        self.settle(Settle::Ack { multiple }, delivery_tag)
    }

    /// Rejects deliveries (pika's `basic_nack(delivery_tag=0, multiple=False, requeue=True)`):
    /// `NackOptions::default()` requeues one.
    pub fn basic_nack(&self, delivery_tag: u64, options: NackOptions) -> Result<()> {
        let NackOptions { multiple, requeue } = options;
        self.settle(Settle::Nack { multiple, requeue }, delivery_tag)
    }

    /// Rejects one delivery (pika's `basic_reject(delivery_tag=0, requeue=True)`):
    /// `RejectOptions::default()` requeues it; `RejectOptions { requeue: false }` dead-letters
    /// or drops it.
    pub fn basic_reject(&self, delivery_tag: u64, options: RejectOptions) -> Result<()> {
        self.settle(
            Settle::Reject {
                requeue: options.requeue,
            },
            delivery_tag,
        )
    }

    fn settle(&self, settle: Settle, delivery_tag: u64) -> Result<()> {
        let owner = &self.inner.owner;
        if owner.recovery.is_none() {
            return owner
                .core()
                .settle_on(self.core(), settle, delivery_tag, None, ensure_open);
        }
        // A tag from before a recovery is that, even while the connection is down; one of a
        // delivery that came on the new connection while it was being restored waits for
        // the recovery to finish (within the RPC timeout) and goes out on it.
        let deadline = deadline_after(self.rpc_timeout());
        loop {
            self.core().lock().broker_tag(delivery_tag)?;
            let conn = owner.ready_core(|| deadline)?;
            match conn.settle_on(self.core(), settle, delivery_tag, None, ensure_open) {
                Err(_) if self.again_after_loss(deadline) => {}
                settled => return settled,
            }
        }
    }
}

/// A queue binding as the topology records it.
fn queue_binding(
    queue: &str,
    exchange: &str,
    routing_key: &str,
    options: &QueueBindOptions,
) -> QueueBinding {
    QueueBinding {
        queue: queue.to_owned(),
        exchange: exchange.to_owned(),
        routing_key: routing_key.to_owned(),
        arguments: options.arguments.clone(),
    }
}
