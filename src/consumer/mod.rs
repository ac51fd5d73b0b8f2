//! Consuming: `basic_consume` with callbacks and `start_consuming` / `stop_consuming`, the
//! `consume()` iterator (`iter`), `basic_cancel` and the other cancels (`cancel`), and the
//! return and cancel callbacks (`callbacks`).
//!
//! Everything user-supplied runs on the thread that consumes (inside `start_consuming` or while
//! iterating `consume()`), never on the I/O thread, so a slow callback cannot stop heartbeats.
//! Both ways share one pump: it takes the channel's next event (a delivery, a returned message,
//! a broker cancel) and runs the callback it belongs to, or hands a delivery to the iterator
//! that asked for it, as pika's `process_data_events` does.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use amq_protocol::protocol::basic;
use amq_protocol::protocol::AMQPClass;

use crate::callback::{self, BoxError, CallbackReturn};
use crate::channel::Channel;
use crate::connection::Owner;
use crate::delivery::{Delivery, Returned};
use crate::engine::chan::{Held, Life, Reply, Stale};
use crate::error::{Error, Result};
use crate::options::BasicConsumeOptions;
use crate::protocol::content::SPARE_MIN;
use crate::protocol::methods::{Deliver, Return};
use crate::protocol::properties::BasicProperties;
use crate::protocol::table::FieldTable;
use crate::recovery::topology::ConsumerRecord;

mod callbacks;
mod cancel;
mod iter;
mod recovering;

pub use iter::{ConsumeOptions, Consumed, Consumer};

/// A consumer callback as cottontail keeps it: pika's `on_message_callback(channel, method,
/// properties, body)`, its error boxed.
///
/// [`Channel::basic_consume`] takes any closure of this shape that returns a
/// [`CallbackReturn`] (`()`, a cottontail [`Result`], `std::io::Result<()>`,
/// `Result<(), BoxError>`...). Its error or panic ends the call that ran it (see
/// [`Channel::basic_consume`]).
pub type ConsumerCallback = Box<
    dyn FnMut(&Channel, &Deliver, &BasicProperties, &[u8]) -> std::result::Result<(), BoxError>
        + Send,
>;

/// A return callback as cottontail keeps it: pika's `add_on_return_callback` callback
/// `(channel, method, properties, body)`, its error boxed (see
/// [`Channel::add_on_return_callback`]).
pub type ReturnCallback = Box<
    dyn FnMut(&Channel, &Return, &BasicProperties, &[u8]) -> std::result::Result<(), BoxError>
        + Send,
>;

/// A cancel callback as cottontail keeps it, called with the consumer tag the broker cancelled
/// (pika's `add_on_cancel_callback`), its error boxed (see [`Channel::add_on_cancel_callback`]).
pub type CancelCallback =
    Box<dyn FnMut(&Channel, &str) -> std::result::Result<(), BoxError> + Send>;

pub(crate) struct ConsumerEntry {
    /// `Some` for a callback consumer; the inner `None` while the callback runs (it is taken
    /// out so it may call channel methods). `None` for a `consume()` iterator.
    callback: Option<Option<ConsumerCallback>>,
    auto_ack: bool,
    /// Deliveries waiting for an iterator, or for a consumer being cancelled (still counted
    /// for inbound back-pressure, except what was routed here after the channel closed).
    pending: VecDeque<Held>,
    /// basic.cancel sent: deliveries are kept in `pending`, no callback runs.
    cancelling: bool,
    /// The broker cancelled this iterator's consumer while it held deliveries: it yields them,
    /// then ends (and the entry goes), as pika's generator does.
    ended_by_broker: bool,
}

impl ConsumerEntry {
    /// The consumer's messages are auto-acked.
    pub(crate) fn auto_ack(&self) -> bool {
        self.auto_ack
    }

    /// Neither the application (its cancel under way, or given up) nor the broker cancelled
    /// it: `consumer_tags` lists it and a recovery registers it again.
    pub(crate) fn active(&self) -> bool {
        !self.cancelling && !self.ended_by_broker
    }

    /// A callback consumer (not a `consume()` iterator), active or not.
    pub(crate) fn has_callback(&self) -> bool {
        self.callback.is_some()
    }

    /// An [`active`](Self::active) consumer with a callback.
    pub(crate) fn runs_callbacks(&self) -> bool {
        self.callback.is_some() && self.active()
    }

    /// Drops what it holds for an iterator (a recovery: see `recovery::driver`).
    pub(crate) fn drop_pending(&mut self) {
        self.pending.clear();
    }

    /// Takes what it holds for an iterator.
    pub(crate) fn take_pending(&mut self) -> VecDeque<Held> {
        std::mem::take(&mut self.pending)
    }
}

/// When a consuming thread runs the connection's callbacks (timers, threadsafe, blocked): only
/// when connection work was announced since the last run, a wait ended at a timer's deadline,
/// or a timer fell due while deliveries kept the thread busy (the clock is read only while a
/// timer is pending); not once per delivery, which would cost several locks on the consume
/// path.
#[derive(Debug, Default)]
struct ConnTurn {
    /// The engine (its generation) and its `conn_work` when the callbacks last ran: a
    /// recovery replaces the engine, whose counter starts again.
    seen: Option<(u64, u64)>,
    /// The earliest timer then.
    next_timer: Option<Instant>,
}

impl ConnTurn {
    /// Runs the connection callbacks if something may be due; returns the `conn_work` to pass
    /// to the pump and the next timer's deadline, or the first callback's error (the callbacks
    /// after it run at the next turn).
    // Inlined: out of line it cost 40 instructions more per delivery (callgrind, S3).
    #[inline]
    fn take(&mut self, owner: &Arc<Owner>, timer_fired: bool) -> Result<(u64, Option<Instant>)> {
        let seen = {
            let core = owner.current.read().unwrap_or_else(|p| p.into_inner());
            (core.generation, core.conn_work.load(Ordering::SeqCst))
        };
        let work = seen.1;
        let timer_due = timer_fired || self.next_timer.is_some_and(|t| t <= Instant::now());
        if self.seen != Some(seen) || timer_due {
            owner.run_connection_callbacks()?;
            self.next_timer = owner.next_timer();
            self.seen = Some(seen);
        }
        Ok((work, self.next_timer))
    }
}

pub(crate) enum Pumped {
    /// A delivery for the iterator that asked.
    Mine(Box<Delivery>),
    /// Something was handled; look again.
    Progress,
    /// A callback failed (returned an error or panicked): the error to end the consuming call
    /// with. The channel may well be open still.
    CallbackFailed(Error),
    /// The deadline passed with nothing to do.
    TimedOut,
    /// No consumer left (start_consuming) or the iterator's consumer is gone.
    Finished,
}

impl Channel {
    /// Starts a consumer on `queue` whose messages go to `callback` while a thread is inside
    /// [`start_consuming`](Self::start_consuming) (or iterates a [`consume`](Self::consume)
    /// iterator, or calls [`Connection::process_data_events`](crate::Connection::process_data_events))
    /// on this channel (pika's `basic_consume(queue, on_message_callback, auto_ack=False,
    /// exclusive=False, consumer_tag=None, arguments=None)`). Returns the consumer tag.
    ///
    /// The callback returns `()` or a `Result<(), E>` with any error type `E` that converts into
    /// [`BoxError`] (see [`CallbackReturn`]): a cottontail [`Result`] such as
    /// `ch.basic_ack(..)`'s, `std::io::Result<()>`, an application's error, or
    /// `Result<(), BoxError>` to use `?` on anything. Its error ends the call that ran it
    /// (`start_consuming` returns it, a `consume()` iteration yields it,
    /// `process_data_events` / `sleep` return it): a cottontail [`Error`] as it is, any other
    /// error as [`Error::Callback`] with the callback's error as its
    /// [`source()`](std::error::Error::source). A panic is caught and becomes an
    /// [`Error::Callback`] too ([`CallbackError::is_panic`](crate::CallbackError::is_panic)).
    /// Nothing else happens to the delivery: unless the callback acked it, it stays unacked
    /// (the broker delivers it again once the channel closes), and the consumer stays
    /// registered, so calling `start_consuming` again goes on with the next message, as in
    /// pika.
    ///
    /// ```no_run
    /// # let connection = cottontail::Connection::open(cottontail::ConnectionParameters::default())?;
    /// # let channel = connection.channel()?;
    /// channel.basic_consume("hello", |ch, method, _properties, body| {
    ///     println!(" [x] Received {}", String::from_utf8_lossy(body));
    ///     ch.basic_ack(method.delivery_tag, false)
    /// }, Default::default())?;
    /// channel.start_consuming()?;
    /// # Ok::<(), cottontail::Error>(())
    /// ```
    ///
    /// Any error, with `?`:
    ///
    /// ```no_run
    /// # let connection = cottontail::Connection::open(cottontail::ConnectionParameters::default())?;
    /// # let channel = connection.channel()?;
    /// use cottontail::BoxError;
    ///
    /// channel.basic_consume("tasks", |ch, method, _properties, body| -> Result<(), BoxError> {
    ///     let path = std::str::from_utf8(body)?;
    ///     std::fs::write(path, b"done")?;
    ///     ch.basic_ack(method.delivery_tag, false)?;
    ///     Ok(())
    /// }, Default::default())?;
    /// if let Err(e) = channel.start_consuming() {
    ///     if let Some(io) = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<std::io::Error>()) {
    ///         eprintln!("writing failed: {io}");
    ///     }
    /// }
    /// # Ok::<(), cottontail::Error>(())
    /// ```
    pub fn basic_consume<F, R>(
        &self,
        queue: &str,
        mut callback: F,
        options: BasicConsumeOptions,
    ) -> Result<String>
    where
        F: FnMut(&Channel, &Deliver, &BasicProperties, &[u8]) -> R + Send + 'static,
        R: CallbackReturn,
    {
        self.start_consumer(
            queue,
            Some(Box::new(
                move |ch: &Channel, method: &Deliver, properties: &BasicProperties, body: &[u8]| {
                    callback(ch, method, properties, body).into_result()
                },
            )),
            options.auto_ack,
            options.exclusive,
            options.consumer_tag,
            options.arguments,
        )
    }

    fn start_consumer(
        &self,
        queue: &str,
        callback: Option<ConsumerCallback>,
        auto_ack: bool,
        exclusive: bool,
        consumer_tag: Option<String>,
        arguments: FieldTable,
    ) -> Result<String> {
        // pika's form: ctag<channel>.<uuid hex>, for no tag or an empty one (pika makes one
        // whenever the tag is falsy; the broker would make its own, under a name we don't know).
        let tag = consumer_tag.filter(|t| !t.is_empty()).unwrap_or_else(|| {
            format!(
                "ctag{}.{}",
                self.channel_number(),
                uuid::Uuid::new_v4().simple()
            )
        });
        let method =
            crate::channel::methods::consume(queue, &tag, auto_ack, exclusive, &arguments)?;
        {
            // The channel's state first (lock order), for a timed-out consume of this tag
            // whose reply is still due: the broker may hold that consumer, and would refuse
            // (530) a second one.
            let pending = self.core().lock().consume_pending(&tag);
            let mut consumers = self.lock_consumers();
            if pending || consumers.contains_key(&tag) {
                return Err(Error::DuplicateConsumerTag(tag));
            }
            consumers.insert(
                tag.clone(),
                ConsumerEntry {
                    callback: callback.map(Some),
                    auto_ack,
                    pending: VecDeque::new(),
                    cancelling: false,
                    ended_by_broker: false,
                },
            );
        }
        // A tag used before (and orphaned) is this consumer's now.
        self.core().lock().forget_orphan(&tag);
        match self.rpc_with(method, "basic.consume", Stale::Consume, |_| {}) {
            Ok(Reply::Method(AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)))) => {
                self.inner.owner.record(|t| {
                    t.consumer_started(
                        &tag,
                        ConsumerRecord {
                            channel: self.channel_number(),
                            instance: self.inner.instance,
                            queue: queue.to_owned(),
                            options: BasicConsumeOptions {
                                auto_ack,
                                exclusive,
                                consumer_tag: Some(tag.clone()),
                                arguments,
                            },
                        },
                    )
                });
                Ok(tag)
            }
            other => {
                if matches!(other, Err(Error::Timeout { .. })) {
                    // The broker may have the consumer: what it delivers is requeued (an
                    // orphan before its entry goes, see `route`), and a late consume-ok is
                    // answered with a cancel (`Stale::Consume`).
                    self.abandon(&tag, auto_ack);
                }
                self.lock_consumers().remove(&tag);
                match other {
                    Err(e) => Err(e),
                    Ok(_) => Err(Error::protocol(
                        crate::error::COMMAND_INVALID,
                        "unexpected reply to basic.consume",
                    )),
                }
            }
        }
    }

    /// Messages received for this channel's [`consume`](Self::consume) iterators and not yet
    /// yielded (pika's `BlockingChannel.get_waiting_message_count()`).
    pub fn waiting_message_count(&self) -> usize {
        let iterators: Vec<String> = self
            .lock_consumers()
            .iter()
            .filter(|(_, e)| e.callback.is_none())
            .map(|(tag, _)| tag.clone())
            .collect();
        self.waiting_for(&iterators)
    }

    /// Deliveries of the consumers `tags` received and not yet handed out: queued on the
    /// channel or held for an iterator.
    fn waiting_for(&self, tags: &[String]) -> usize {
        let mine = |tag: &str| tags.iter().any(|t| t == tag);
        // One lock at a time: the pump takes the channel's, then the consumers'.
        let queued = self
            .core()
            .lock()
            .deliveries
            .iter()
            .filter(|d| mine(d.consumer_tag()))
            .count();
        let held: usize = self
            .lock_consumers()
            .iter()
            .filter(|(tag, _)| mine(tag))
            .map(|(_, e)| e.pending.len())
            .sum();
        queued + held
    }

    /// Runs consumer callbacks on this thread until every consumer of the channel is cancelled
    /// (by [`stop_consuming`](Self::stop_consuming), [`basic_cancel`](Self::basic_cancel) or the
    /// broker), a callback fails, or the channel closes (pika's `start_consuming`). It also
    /// runs the channel's return and cancel callbacks and the connection's timers, threadsafe
    /// and blocked/unblocked callbacks.
    ///
    /// As in pika, a close by the application (of the channel or the connection, from a
    /// callback or another thread) ends it with `Ok(())`; a close by the broker or a lost
    /// connection is its error. Before that error, `auto_ack` consumers get the messages that
    /// arrived ahead of the close (the broker counts them delivered); messages for manual-ack
    /// consumers that were not handed out yet are not handed out any more: they could not be
    /// acked, and the broker delivers them again.
    ///
    /// The first callback that fails ends it with its error: a cottontail [`Error`] as the
    /// callback returned it, any other error (or a panic) as [`Error::Callback`], whose
    /// [`source()`](std::error::Error::source) is the callback's error. The consumers stay
    /// registered and the failed delivery unacked (unless the callback acked it): calling
    /// `start_consuming` again goes on where it stopped.
    ///
    /// Calling it from inside a callback of the connection (any channel's, a timer...: as in
    /// pika, callbacks never nest), or while another thread consumes the channel, is
    /// [`Error::Reentrancy`].
    pub fn start_consuming(&self) -> Result<()> {
        let _guard = self.enter_consuming()?;
        let was_open = self.is_open();
        let mut turn = ConnTurn::default();
        let mut timer_fired = false;
        loop {
            let (work, next_timer) = match turn.take(&self.inner.owner, timer_fired) {
                Err(e) if was_open && self.ended_by_application(&e) => return Ok(()),
                taken => taken?,
            };
            let pumped = match self.pump(None, next_timer, Some(work)) {
                Err(_) if self.lost() => {
                    match self.wait_for_recovery(None) {
                        // The application closed the connection meanwhile: the end, as in pika.
                        Err(e) if was_open && self.ended_by_application(&e) => return Ok(()),
                        waited => waited?,
                    };
                    timer_fired = false;
                    continue;
                }
                Err(e) if was_open && self.ended_by_application(&e) => return Ok(()),
                pumped => pumped?,
            };
            match pumped {
                Pumped::Finished => return Ok(()),
                Pumped::CallbackFailed(e) if self.forgiven(&e) => timer_fired = false,
                Pumped::CallbackFailed(e) => return Err(e),
                Pumped::TimedOut => timer_fired = true,
                Pumped::Mine(_) | Pumped::Progress => timer_fired = false,
            }
        }
    }

    /// Whether `e` is the application's close of this channel or of its connection, which
    /// ends `start_consuming` normally (as in pika), rather than a callback's own error that
    /// only says so of another channel.
    fn ended_by_application(&self, e: &Error) -> bool {
        if !e.is_closed_by_client() {
            return false;
        }
        let channel = self.core().lock().ended_error();
        let closed_by_app = |e: Option<Error>| e.is_some_and(|e| e.is_closed_by_client());
        closed_by_app(channel) || closed_by_app(self.inner.owner.ended())
    }

    /// Marks the channel consumed by this thread; [`Error::Reentrancy`] if a thread already
    /// consumes it, or this one is inside a callback of the connection (`callback::call_for`).
    pub(crate) fn enter_consuming(&self) -> Result<ConsumingGuard<'_>> {
        // Short-circuit: inside a callback the flag is not touched.
        if callback::inside_callback_of(self.inner.owner.id())
            || self.inner.consuming.swap(true, Ordering::SeqCst)
        {
            return Err(Error::Reentrancy);
        }
        Ok(ConsumingGuard(self))
    }

    /// Waits (until `deadline`, for ever if `None`) for the channel's next event and handles
    /// it. `want` is the tag of the iterator asking, if any. With `seen_work`, it also returns
    /// as soon as connection-level work (timers, threadsafe callbacks) appears. While it waits
    /// this thread reads the socket itself when it can (see `engine::token`); callbacks run
    /// after the wait, never while reading. A failed callback is `Ok(Pumped::CallbackFailed)`;
    /// `Err` is the channel's or connection's failure.
    pub(crate) fn pump(
        &self,
        want: Option<&str>,
        deadline: Option<Instant>,
        seen_work: Option<u64>,
    ) -> Result<Pumped> {
        let conn = self.inner.owner.core();
        let next = conn.wait_until(deadline, || self.next_event(&conn, want, seen_work));
        match next {
            None => Ok(Pumped::TimedOut),
            Some(Next::Work) => Ok(Pumped::Progress),
            Some(Next::Mine(held)) => Ok(Pumped::Mine(Box::new(held.take()))),
            Some(Next::Delivery(held, stale)) => self.route(held, want, stale),
            Some(Next::Return(returned)) => Ok(progress(self.run_return_callbacks(returned))),
            Some(Next::Cancelled(tags)) => {
                let mut ran = Ok(());
                for tag in &tags {
                    // The broker ended it. An iterator yields what it holds first, then ends;
                    // anything else held goes back to the queue (auto-acked: reported lost),
                    // like a delivery in flight.
                    let entry = self
                        .lock_consumers()
                        .get(tag)
                        .map(|e| (e.auto_ack, e.callback.is_none()));
                    if let Some((auto_ack, _)) = entry {
                        // The broker delivers nothing more for it.
                        self.core().lock().push_gone(tag, auto_ack);
                    }
                    // As in pika, an iterator hears of it by ending, not through the callbacks.
                    let iterator = entry.is_some_and(|(_, iterator)| iterator);
                    let gone = {
                        let mut consumers = self.lock_consumers();
                        match consumers.get_mut(tag) {
                            // An iterator's messages in hand are still its to yield.
                            Some(e) if e.callback.is_none() && !e.pending.is_empty() => {
                                e.ended_by_broker = true;
                                None
                            }
                            _ => consumers.remove(tag),
                        }
                    };
                    self.inner
                        .owner
                        .record(|t| t.consumer_cancelled(self.inner.instance, tag));
                    if let Some(entry) = gone {
                        self.requeue(entry.pending.into(), entry.auto_ack);
                    }
                    let called = if iterator {
                        Ok(())
                    } else {
                        self.run_cancel_callbacks(tag)
                    };
                    match (called, &ran) {
                        (Err(e), Ok(())) => ran = Err(e),
                        // Only the first error ends the call; the others are not lost silently.
                        (Err(e), Err(_)) => log::warn!(
                            "channel {}: a cancel callback for consumer {tag} failed after an \
                             earlier callback error: {e}",
                            self.channel_number()
                        ),
                        (Ok(()), _) => {}
                    }
                }
                Ok(progress(ran))
            }
            Some(Next::Finished) => Ok(Pumped::Finished),
            // The engine waited on was replaced by a recovery: look again on the new one.
            Some(Next::Failed(_))
                if !std::ptr::eq(Arc::as_ptr(&conn), Arc::as_ptr(&self.inner.owner.core())) =>
            {
                Ok(Pumped::Progress)
            }
            Some(Next::Failed(e)) => Err(e),
        }
    }

    /// The channel's next event, if any (runs with no engine lock held; takes the channel's
    /// state, then the consumer table).
    fn next_event(
        &self,
        conn: &crate::engine::Core,
        want: Option<&str>,
        seen_work: Option<u64>,
    ) -> Option<Next> {
        if seen_work.is_some_and(|seen| conn.conn_work.load(Ordering::SeqCst) != seen) {
            return Some(Next::Work);
        }
        if let Some(tag) = want {
            // Read before the consumer table is locked (lock order: the channel's state first).
            let stale = self.stale_rule();
            let mut consumers = self.lock_consumers();
            match consumers.get_mut(tag) {
                Some(entry) if !entry.cancelling => {
                    while let Some(held) = entry.pending.pop_front() {
                        if entry.auto_ack || !stale(&held) {
                            return Some(Next::Mine(held));
                        }
                        log::debug!(
                            "dropping delivery {} of consumer {tag}: its channel closed or the \
                             connection recovered since, so it cannot be acked, and the broker \
                             delivers it again",
                            held.delivery_tag()
                        );
                    }
                    if entry.ended_by_broker {
                        consumers.remove(tag);
                        return Some(Next::Finished);
                    }
                }
                _ => return Some(Next::Finished),
            }
        }
        let core = self.core();
        let mut st = core.lock();
        // Deliveries and returns in the order they arrived (`ChanState::next_arrival`); returns
        // wait, behind later deliveries, while no return callback is registered.
        let return_first = st.returns.first_arrival().is_some_and(|returned| {
            st.deliveries
                .front()
                .is_none_or(|delivery| returned < delivery.arrival())
        });
        if return_first && self.has_return_callbacks() {
            return st.returns.pop().map(Next::Return);
        }
        if let Some(held) = st.deliveries.pop_front() {
            // `stale_rule`'s rule.
            let stale = !matches!(st.life, Life::Open) || held.generation() < st.generation;
            return Some(Next::Delivery(held, stale));
        }
        if !st.cancelled.is_empty() {
            return Some(Next::Cancelled(st.cancelled.drain(..).collect()));
        }
        if let Some(e) = st.closed_error() {
            return Some(Next::Failed(e));
        }
        if self.inner.owner.recovery.is_some() {
            // The channel may be open again on a new engine while this thread still waits on
            // the lost one: nothing would wake it there.
            if let Some(e) = conn.closed_error() {
                return Some(Next::Failed(e));
            }
        }
        // Only iterators the broker cancelled (ending once they yield what they hold): no
        // consumer is left for `start_consuming`.
        if want.is_none() && self.lock_consumers().values().all(|e| e.ended_by_broker) {
            return Some(Next::Finished);
        }
        if st.acks.holding() {
            // Nothing to hand out: held acks go now, not after the wait.
            if let Err(e) = conn.flush_acks(core.id, &mut st) {
                return Some(Next::Failed(e));
            }
        }
        None
    }

    /// Hands a delivery to whoever it belongs to. `stale`: it can no longer be acked (see
    /// [`stale_rule`](Self::stale_rule)); a manual-ack one is dropped.
    fn route(&self, held: Held, want: Option<&str>, stale: bool) -> Result<Pumped> {
        let mut consumers = self.lock_consumers();
        if stale
            && consumers
                .get(held.consumer_tag())
                .is_some_and(|e| !e.auto_ack)
        {
            log::debug!(
                "dropping delivery {} of consumer {}: its channel closed or the connection \
                 recovered since, so it cannot be acked, and the broker delivers it again",
                held.delivery_tag(),
                held.consumer_tag()
            );
            return Ok(Pumped::Progress);
        }
        if want == Some(held.consumer_tag()) {
            return Ok(Pumped::Mine(Box::new(held.take())));
        }
        let Some(entry) = consumers.get_mut(held.consumer_tag()) else {
            // Its consumer went (cancelled by another thread) after this thread took it.
            drop(consumers);
            let orphan = self.core().lock().orphan(held.consumer_tag());
            match orphan {
                Some(auto_ack) => self.requeue(vec![held], auto_ack),
                None => log::warn!(
                    "a delivery (tag {}) for unknown consumer {} is left unacked",
                    held.delivery_tag(),
                    held.consumer_tag()
                ),
            }
            return Ok(Pumped::Progress);
        };
        let callback = match &mut entry.callback {
            Some(slot) if !entry.cancelling => slot.take(),
            _ => None,
        };
        let Some(mut callback) = callback else {
            // An iterator's message (or a cancelling consumer's): keep it for its owner; from
            // a closed channel it no longer counts (see the router's channel.close).
            let mut held = held;
            if stale {
                held.unmeter();
            }
            entry.pending.push_back(held);
            drop(consumers);
            self.inner.owner.core().nudge();
            return Ok(Pumped::Progress);
        };
        drop(consumers);
        let delivery = held.take();
        let tag = delivery.method.consumer_tag.as_str();
        let ran = callback::call_for(
            self.inner.owner.id(),
            || {
                format!(
                    "the callback of consumer {tag} on delivery {}",
                    delivery.method.delivery_tag
                )
            },
            || callback(self, &delivery.method, &delivery.properties, &delivery.body),
        )
        .map_err(|e| match e {
            Error::Callback(e) => Error::Callback(e.on_delivery(tag, delivery.method.delivery_tag)),
            other => other,
        });
        // Back in its slot whatever happened, so the consumer's next messages reach it; only
        // into the slot it left empty: a consumer the callback started under the same tag
        // (after cancelling this one) keeps its own callback.
        if let Some(Some(slot @ None)) = self
            .lock_consumers()
            .get_mut(tag)
            .map(|e| e.callback.as_mut())
        {
            *slot = Some(callback);
        }
        // The callback only borrowed the body: a large one's buffer may take the next one.
        if delivery.body.capacity() >= SPARE_MIN {
            self.give_body(delivery);
        }
        Ok(progress(ran))
    }

    /// Hands a large delivery's body buffer to the connection, for the next large body.
    #[cold]
    fn give_body(&self, delivery: Delivery) {
        self.inner.owner.core().spare_body.give(delivery.body);
    }
}

/// Logs the auto-acked messages of a cancelled consumer that nobody will get: received, not
/// yet handed out, and no longer held by the broker (never dropped silently).
pub(crate) fn report_dropped(consumer_tag: &str, dropped: &[Delivery]) {
    if let (Some(first), Some(last)) = (dropped.first(), dropped.last()) {
        log::warn!(
            "consumer {consumer_tag} cancelled: dropping {} auto-acked message(s) received but \
             not yet handed out (delivery tags {} to {}); the broker no longer holds them \
             (Channel::basic_cancel returns them instead)",
            dropped.len(),
            first.method.delivery_tag,
            last.method.delivery_tag
        );
    }
}

/// What the pump reports after running callbacks.
fn progress(ran: Result<()>) -> Pumped {
    match ran {
        Ok(()) => Pumped::Progress,
        Err(e) => Pumped::CallbackFailed(e),
    }
}

/// Clears the channel's "a thread is consuming" flag when the consuming call returns.
pub(crate) struct ConsumingGuard<'a>(&'a Channel);

/// What [`Channel::pump`] found to do.
enum Next {
    /// Connection-level work appeared.
    Work,
    /// A delivery for the iterator that asked.
    Mine(Held),
    /// A delivery to route, and whether it can no longer be acked (see `stale_rule`).
    Delivery(Held, bool),
    /// A returned message for the return callbacks.
    Return(Returned),
    /// Consumers the broker cancelled.
    Cancelled(Vec<String>),
    /// No consumer left, or the iterator's consumer is gone.
    Finished,
    /// The channel is closed.
    Failed(Error),
}

impl Drop for ConsumingGuard<'_> {
    fn drop(&mut self) {
        self.0.inner.consuming.store(false, Ordering::SeqCst);
        // A close while it consumed left the callbacks to it (`ChannelHandle::drop_callbacks`).
        let closed = matches!(
            self.0.core().lock().life,
            Life::Closed(_) | Life::Closing(_)
        );
        if closed || self.0.inner.owner.ended().is_some() {
            self.0.inner.drop_callbacks();
        }
    }
}
