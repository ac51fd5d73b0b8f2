//! Per-channel state shared between whoever reads (which fills it) and the channel handles
//! (which take from it): the reply slot of the one outstanding synchronous method, the queue of
//! deliveries, returns, confirm tracking and the close reason.
//!
//! The state is behind the channel's own mutex. Nobody sleeps on it: a thread waiting for a
//! change waits for its turn at reading (see `token`), and every change made by reading bumps
//! the read token's generation, which wakes it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use amq_protocol::protocol::{basic, AMQPClass};

use crate::delivery::{Delivery, GetMessage, Returned};
use crate::error::{Error, COMMAND_INVALID};
use crate::protocol::acks::AckRun;
use crate::protocol::codec::Awaited;
use crate::protocol::confirms::{fingerprint, ConfirmTracker};
use crate::protocol::properties::BasicProperties;

use super::returns::KeptReturns;

/// Consumer tags kept as orphans (see [`ChanState::orphans`]); the oldest are forgotten: an
/// orphan matters only until the broker has seen its cancel, or until a consuming thread has
/// routed what it took before the consumer went.
pub(crate) const ORPHANS_KEPT: usize = 256;
/// What the deliveries of an orphan pushed with [`ChanState::push_orphan`] are, as the
/// router's log line calls them.
pub(crate) const ORPHANED_DELIVERY: &str =
    "a delivery for a consumer whose basic.consume or basic.cancel timed out";
/// Broker cancels kept until the consumer loop sees them; a peer repeating them gains nothing.
pub(crate) const CANCELS_KEPT: usize = 1_000;

/// What a held or returned message counts for the memory bounds: its body, its properties'
/// strings and headers, and what the message costs besides (method, queue slot and their
/// allocations, ~500 bytes, counted twice for allocator slack), so neither a flood of empty
/// messages nor one of empty bodies with large headers gets past the bounds.
pub(crate) fn weight(body: &[u8], properties: &BasicProperties) -> usize {
    body.len() + properties.held_bytes() + 1024
}

/// A count of the bytes of messages a connection holds, shared by the connection and every
/// [`Held`] message in it: `Core::inbound` for deliveries queued on channels or kept for
/// `consume()` iterators (reading pauses while it is over the inbound limits, see `token`),
/// `Core::returns_kept` for returned messages kept for return callbacks (bounded by
/// `returns::RETURNS_KEPT_TOTAL`).
pub(crate) type InboundMeter = Arc<AtomicUsize>;

/// A message held for a caller (a delivery; also a returned message, in the connection's
/// returns meter, see `returns`), counted in its meter for as long as it is
/// held (or until [`unmeter`](Held::unmeter)): whichever way it leaves (handed out, requeued,
/// dropped with its channel), the count goes down by what it added, so the meter cannot
/// drift.
#[derive(Debug)]
pub(crate) struct Held<T = Delivery> {
    /// Always `Some` until taken.
    value: Option<T>,
    meter: InboundMeter,
    weight: usize,
    /// Its place in the channel's arrivals ([`ChanState::next_arrival`]); 0 if not numbered.
    arrival: u64,
}

impl Held {
    pub(crate) fn new(delivery: Delivery, meter: &InboundMeter) -> Held {
        let weight = weight(&delivery.body, &delivery.properties);
        Held::metered(delivery, weight, meter)
    }

    /// The consumer tag the delivery is for.
    pub(crate) fn consumer_tag(&self) -> &str {
        self.value
            .as_ref()
            .map_or("", |d| d.method.consumer_tag.as_str())
    }

    /// The recoveries of the connection before it arrived.
    pub(crate) fn generation(&self) -> u64 {
        self.value.as_ref().map_or(0, |d| d.generation)
    }

    /// The delivery tag.
    pub(crate) fn delivery_tag(&self) -> u64 {
        self.value.as_ref().map_or(0, |d| d.method.delivery_tag)
    }
}

impl<T> Held<T> {
    /// Holds `value`, adding `weight` to `meter`.
    pub(crate) fn metered(value: T, weight: usize, meter: &InboundMeter) -> Held<T> {
        meter.fetch_add(weight, Ordering::SeqCst);
        Held {
            value: Some(value),
            meter: meter.clone(),
            weight,
            arrival: 0,
        }
    }

    /// Numbers it `arrival` in its channel's arrivals ([`ChanState::next_arrival`]).
    pub(crate) fn arriving(mut self, arrival: u64) -> Held<T> {
        self.arrival = arrival;
        self
    }

    /// Its place in its channel's arrivals: deliveries and returns are handed out in it.
    pub(crate) fn arrival(&self) -> u64 {
        self.arrival
    }

    /// Counts it in `meter` instead (a recovery's new connection); one no longer counted
    /// stays uncounted.
    pub(crate) fn remeter(&mut self, meter: &InboundMeter) {
        self.meter.fetch_sub(self.weight, Ordering::SeqCst);
        meter.fetch_add(self.weight, Ordering::SeqCst);
        self.meter = meter.clone();
    }

    /// Stops counting it in the meter (it stays held): for what a closed channel keeps.
    pub(crate) fn unmeter(&mut self) {
        self.meter.fetch_sub(self.weight, Ordering::SeqCst);
        self.weight = 0;
    }

    /// The message, still held.
    pub(crate) fn value(&self) -> &T {
        self.value
            .as_ref()
            .expect("a held message is there until taken")
    }

    /// Hands the message out; it no longer counts.
    pub(crate) fn take(mut self) -> T {
        self.value.take().expect("a held message is taken once")
    }
}

/// Drops the deliveries a closed (or closing) `channel` held for its consumers, logged at
/// `level` if there were any: the manual-ack ones go back to their queues with the channel,
/// the auto-acked ones are lost (nothing is dropped silently). Called when the application
/// closes the channel and when its last handle goes (what a channel the broker or the
/// connection closed still held).
pub(crate) fn drop_deliveries(channel: u16, deliveries: &mut VecDeque<Held>, level: log::Level) {
    if !deliveries.is_empty() {
        log::log!(
            level,
            "channel {channel} closed with {} deliveries not yet handed out: manual-ack ones go \
             back to their queues, auto-acked ones are lost",
            deliveries.len()
        );
        deliveries.clear();
    }
}

impl<T> Drop for Held<T> {
    fn drop(&mut self) {
        self.meter.fetch_sub(self.weight, Ordering::SeqCst);
    }
}

/// A reply to a synchronous method. Lives only in the reply slot, one at a time per channel, so
/// its size does not matter.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Reply {
    Method(AMQPClass),
    Get(GetMessage),
}

impl Reply {
    /// Its class and method id.
    pub(crate) fn id(&self) -> (u16, u16) {
        match self {
            Reply::Method(m) => (m.get_amqp_class_id(), m.get_amqp_method_id()),
            Reply::Get(_) => (60, 71),
        }
    }

    /// The consumer tag of a basic.consume-ok or basic.cancel-ok.
    pub(crate) fn consumer_tag(&self) -> Option<&str> {
        match self {
            Reply::Method(AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(ok))) => {
                Some(ok.consumer_tag.as_str())
            }
            Reply::Method(AMQPClass::Basic(basic::AMQPMethod::CancelOk(ok))) => {
                Some(ok.consumer_tag.as_str())
            }
            _ => None,
        }
    }
}

/// A request whose caller gave up (timed out) and whose reply is still to come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stale {
    /// Any method: its reply is dropped on arrival.
    Method,
    /// A basic.get: a get-ok that arrives is rejected with requeue (manual ack), or reported
    /// as lost (auto ack: the broker already counts it delivered).
    Get { auto_ack: bool },
    /// A basic.consume: a consume-ok that arrives is answered with a basic.cancel (nowait) of
    /// its tag, so the broker does not keep a consumer nobody has (its deliveries meanwhile
    /// are orphaned, see `orphans`). Cancelling earlier, behind the unanswered consume,
    /// crashes RabbitMQ 3.10's channel process (541 closes the connection). Until then the
    /// tag (in the stale entry's [`Awaited`]) may not be used again on the channel
    /// (`basic_consume` refuses it).
    Consume,
}

/// What became of a reply that arrived.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Delivered {
    /// Its waiter has it.
    ToWaiter,
    /// Its caller gave up; dropped.
    Stale,
    /// A get-ok whose caller gave up, manual ack: reject this delivery tag with requeue.
    StaleGet { delivery_tag: u64 },
    /// A consume-ok whose caller gave up: cancel this consumer tag (nowait).
    StaleConsume {
        consumer_tag: amq_protocol::types::ShortString,
    },
    /// Nobody asked for it.
    Unwanted,
    /// It does not answer the request awaited (another method, or a consume-ok or cancel-ok
    /// naming another consumer tag): a peer's protocol error.
    Mismatch(Mismatch),
}

/// A reply that does not answer the request owed one ([`Delivered::Mismatch`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Mismatch {
    request: Awaited,
    /// The reply's class and method id, and its consumer tag if it has one.
    reply: (u16, u16),
    reply_tag: Option<String>,
}

impl Mismatch {
    /// The protocol error that closes the connection for it, on `channel`.
    pub(crate) fn error(self, channel: u16) -> Error {
        let (id, asked) = (self.reply, self.request.id);
        let reason = match (&self.request.consumer_tag, self.reply_tag) {
            (Some(asked_tag), Some(tag)) if self.request.method_answered_by(id) => format!(
                "channel {channel}: the reply {}.{} names consumer tag {tag:?}, not {asked_tag:?} \
                 that the request {}.{} asked for",
                id.0, id.1, asked.0, asked.1
            ),
            _ => format!(
                "channel {channel}: method {}.{} does not answer the request {}.{} awaiting a \
                 reply",
                id.0, id.1, asked.0, asked.1
            ),
        };
        Error::protocol(COMMAND_INVALID, reason)
    }
}

/// Where a channel is in its life.
#[derive(Debug)]
pub(crate) enum Life {
    /// channel.open sent, open-ok not yet seen, or open.
    Open,
    /// We sent channel.close and wait for close-ok; the error is what calls get meanwhile and
    /// once it is closed (`ChannelClosedByClient` with the code and text we sent).
    Closing(Error),
    /// Closed, with the reason every later call gets; the router has freed the number (see
    /// `router` for when both sides closed at once).
    Closed(Error),
    /// The connection was lost and is recovering (see `recovery`): calls in flight got the
    /// error; new calls wait for the recovery, which opens the channel again on the new
    /// connection (then `Open`) or closes it for good (then `Closed`).
    Lost(Error),
}

/// Mutable channel state, behind [`ChannelCore::state`].
#[derive(Debug)]
pub(crate) struct ChanState {
    pub(crate) life: Life,
    /// A synchronous method was sent and its reply is awaited (what the reply must be).
    pub(crate) awaiting: Option<Awaited>,
    pub(crate) reply: Option<Reply>,
    /// Replies still to come for requests whose caller gave up, oldest first, each with what
    /// its reply must be.
    pub(crate) stale: VecDeque<(Stale, Option<Awaited>)>,
    pub(crate) deliveries: VecDeque<Held>,
    /// Returned messages for the return callbacks.
    pub(crate) returns: KeptReturns,
    pub(crate) confirms: Option<ConfirmTracker>,
    /// Consumer tags the broker cancelled (queue deleted...), not yet seen by the consumer loop.
    pub(crate) cancelled: Vec<String>,
    /// Consumers that are gone for us while the broker may still deliver to them (their
    /// basic.consume or basic.cancel timed out) or while a consuming thread still routes what
    /// it took for them (cancelled meanwhile), and `RpcClient` reply consumers while no call
    /// waits. Their deliveries are rejected with requeue (manual ack) or dropped and reported
    /// lost (auto ack). One entry per tag, at most [`ORPHANS_KEPT`]. The router looks each
    /// delivery up here: consumers cancelled cleanly are kept apart, in `gone`.
    orphans: VecDeque<Orphan>,
    /// Consumers cancelled cleanly (basic.cancel-ok routed, or cancelled by the broker), with
    /// their ack mode: the broker delivers nothing more for them, so the router never looks
    /// here; only a consuming thread that took one of their deliveries before they went does
    /// ([`orphan`](Self::orphan)). At most [`ORPHANS_KEPT`], the oldest forgotten.
    gone: VecDeque<(String, bool)>,
    /// Which deliveries are settled, and acks held for merging.
    pub(crate) acks: AckRun,
    /// A synchronous method is outstanding (AMQP allows one per channel); the next caller
    /// waits for its turn, within its own deadline.
    pub(crate) rpc_busy: bool,
    /// Callers waiting for `rpc_busy` to clear: the one that clears it nudges them.
    pub(crate) rpc_queued: usize,
    /// What the application's delivery tags are ahead of the broker's on this channel: the
    /// sum of the highest tags of the channel's earlier connections (0 until a recovery).
    /// Delivery tags restart at 1 on a new channel, so the tags handed out keep growing and a
    /// tag at or below it is one from before a recovery: [`Error::StaleDeliveryTag`].
    pub(crate) tag_offset: u64,
    /// Deliveries and returned messages that arrived on the channel (see
    /// [`next_arrival`](Self::next_arrival)).
    arrivals: u64,
    /// Recoveries of the connection when the channel was last opened (see `tag_offset`).
    pub(crate) generation: u64,
    /// Connection losses the channel went through, with the last one's error: a caller that
    /// sent a method before a loss stops waiting for its reply (it will not come) even once
    /// the channel is open again on a new connection.
    pub(crate) losses: (u64, Option<Error>),
    /// `losses` when `reply` was routed: the reply is for a waiter that sent before as many.
    pub(crate) reply_losses: u64,
    /// Deliveries and get-oks that arrived after our channel.close, dropped (nobody takes
    /// them any more); reported once when the channel is closed ([`report_discarded`]).
    ///
    /// [`report_discarded`]: ChanState::report_discarded
    pub(crate) discarded: usize,
}

/// A consumer tag whose deliveries belong to nobody (see [`ChanState::orphans`]).
#[derive(Debug)]
struct Orphan {
    tag: String,
    auto_ack: bool,
    /// What its deliveries are, for the router's log line (e.g. [`ORPHANED_DELIVERY`]).
    what: &'static str,
    /// The broker may still hold the consumer (its basic.cancel timed out, or was never sent
    /// because its turn or a recovery took too long): at its first delivery the router
    /// cancels it (nowait; harmless when the broker no longer has it), so that its messages
    /// do not come back to it for ever, requeued each time.
    cancel: bool,
}

/// One channel as the connection knows it.
#[derive(Debug)]
pub(crate) struct ChannelCore {
    pub(crate) id: u16,
    pub(crate) state: Mutex<ChanState>,
}

impl ChannelCore {
    pub(crate) fn new(id: u16) -> Self {
        ChannelCore {
            id,
            state: Mutex::new(ChanState {
                life: Life::Open,
                awaiting: None,
                reply: None,
                stale: VecDeque::new(),
                deliveries: VecDeque::new(),
                returns: KeptReturns::default(),
                confirms: None,
                cancelled: Vec::new(),
                orphans: VecDeque::new(),
                gone: VecDeque::new(),
                acks: AckRun::default(),
                rpc_busy: false,
                rpc_queued: 0,
                tag_offset: 0,
                arrivals: 0,
                generation: 0,
                losses: (0, None),
                reply_losses: 0,
                discarded: 0,
            }),
        }
    }

    /// Locks the state. A panic while holding it cannot leave it inconsistent in a way that
    /// matters more than a lost connection, so poisoning is ignored.
    pub(crate) fn lock(&self) -> MutexGuard<'_, ChanState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the channel closed with `error` (unless it already is). The caller wakes the
    /// waiters (`Core::nudge`).
    pub(crate) fn fail(&self, error: &Error) {
        let mut st = self.lock();
        if !matches!(st.life, Life::Closed(_)) {
            st.life = Life::Closed(error.clone());
        }
        st.awaiting = None;
        st.report_discarded(self.id);
    }

    /// The connection was lost and is to recover (see `recovery`): an open channel becomes
    /// [`Life::Lost`] (calls in flight fail with `error`, later ones wait for the recovery),
    /// and stays so when a recovery attempt that had opened it again fails; one we were
    /// closing is closed. What belonged to the lost channel goes: held acks, replies still
    /// due (one already routed stays for its waiter), orphans; publishes awaiting confirms
    /// become unknown (see `protocol::confirms`). Held deliveries stay: the recovery drops the
    /// manual-ack ones (it knows the consumers' ack modes) and keeps the auto-acked ones,
    /// which the broker counts delivered. The caller wakes the waiters.
    pub(crate) fn lose(&self, error: &Error) {
        let mut st = self.lock();
        st.life = match &st.life {
            Life::Open | Life::Lost(_) => Life::Lost(error.clone()),
            Life::Closing(ours) => Life::Closed(ours.clone()),
            Life::Closed(e) => Life::Closed(e.clone()),
        };
        st.report_discarded(self.id);
        st.losses = (st.losses.0 + 1, Some(error.clone()));
        // A reply already routed stays for its waiter; none is coming any more.
        st.awaiting = None;
        st.stale.clear();
        st.orphans.clear();
        st.gone.clear();
        st.tag_offset = st.tag_offset.saturating_add(st.acks.last_delivered());
        st.acks = AckRun::default();
        if let Some(tracker) = st.confirms.as_mut() {
            tracker.lose();
        }
    }
}

impl ChanState {
    /// The error a call on this channel gets now, if it is closed.
    pub(crate) fn closed_error(&self) -> Option<Error> {
        match &self.life {
            Life::Closed(e) | Life::Lost(e) => Some(e.clone()),
            _ => None,
        }
    }

    /// [`closed_error`](Self::closed_error), or our close's error once the application's
    /// channel.close is on its way: nothing but the close-ok is for us after it (AMQP), so a
    /// caller waiting for a reply, a confirm or its turn stops at once.
    pub(crate) fn ended_error(&self) -> Option<Error> {
        match &self.life {
            Life::Closed(e) | Life::Lost(e) | Life::Closing(e) => Some(e.clone()),
            Life::Open => None,
        }
    }

    /// Logs the messages dropped because they arrived after our channel.close (see
    /// `discarded`), once, as [`drop_deliveries`] logs those queued when it was sent.
    pub(crate) fn report_discarded(&mut self, channel: u16) {
        if self.discarded > 0 {
            log::info!(
                "channel {channel}: {} message(s) arrived after the application closed the \
                 channel and were dropped: manual-ack ones go back to their queues, \
                 auto-acked ones are lost",
                self.discarded
            );
            self.discarded = 0;
        }
    }

    /// The broker's tag for the application's `delivery_tag` (see `tag_offset`), or
    /// [`Error::StaleDeliveryTag`] for one from before a recovery. 0 (with `multiple`: every
    /// delivery so far) stays 0.
    pub(crate) fn broker_tag(&self, delivery_tag: u64) -> Result<u64, Error> {
        if delivery_tag == 0 || self.tag_offset == 0 {
            return Ok(delivery_tag);
        }
        if delivery_tag <= self.tag_offset {
            return Err(Error::StaleDeliveryTag {
                delivery_tag,
                generation: self.generation,
            });
        }
        Ok(delivery_tag - self.tag_offset)
    }

    /// Hands a synchronous reply to its waiter, or says why not. Replies come in the order of
    /// their requests: the oldest request still owed one (a stale one before the awaited one)
    /// is the one it must answer.
    pub(crate) fn deliver_reply(&mut self, reply: Reply) -> Delivered {
        let (stale, request) = match self.stale.pop_front() {
            Some((stale, request)) => (Some(stale), request),
            None => match self.awaiting.take() {
                Some(request) => (None, Some(request)),
                None => return Delivered::Unwanted,
            },
        };
        if let Some(request) = request.filter(|r| !r.answered_by(reply.id(), reply.consumer_tag()))
        {
            return Delivered::Mismatch(Mismatch {
                request,
                reply: reply.id(),
                reply_tag: reply.consumer_tag().map(str::to_owned),
            });
        }
        let Some(stale) = stale else {
            self.reply = Some(reply);
            self.reply_losses = self.losses.0;
            return Delivered::ToWaiter;
        };
        match (stale, &reply) {
            (Stale::Get { auto_ack: false }, Reply::Get(m)) => Delivered::StaleGet {
                delivery_tag: m.method.delivery_tag - self.tag_offset,
            },
            (Stale::Get { auto_ack: true }, Reply::Get(m)) => {
                log::warn!(
                    "a basic.get-ok (delivery tag {}, {} bytes) arrived after its caller gave \
                     up; it was fetched with auto_ack, so the broker counts it delivered: it is \
                     lost",
                    m.method.delivery_tag,
                    m.body.len()
                );
                Delivered::Stale
            }
            // Its tag is the one asked for (checked above).
            (Stale::Consume, Reply::Method(AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(ok)))) => {
                Delivered::StaleConsume {
                    consumer_tag: ok.consumer_tag.clone(),
                }
            }
            _ => Delivered::Stale,
        }
    }

    /// Records a broker cancel of `consumer_tag` (once, and at most [`CANCELS_KEPT`]: past
    /// that the oldest goes, so a flood of cancels for tags nobody has cannot crowd out a
    /// real one that follows).
    pub(crate) fn push_cancel(&mut self, consumer_tag: String) {
        if self.cancelled.contains(&consumer_tag) {
            return;
        }
        if self.cancelled.len() >= CANCELS_KEPT {
            let dropped = self.cancelled.remove(0);
            log::debug!("more than {CANCELS_KEPT} broker cancels unseen: forgetting {dropped}");
        }
        self.cancelled.push(consumer_tag);
    }

    /// Keeps a returned message for the return callbacks (within the bounds of
    /// [`KeptReturns::push`]; `kept` is `Core::returns_kept`). In confirm mode, first marks the
    /// publish it belongs to as returned (so the publisher hears of it, kept or not).
    pub(crate) fn push_return(&mut self, returned: Returned, kept: &InboundMeter) {
        let seq = self.confirms.as_mut().and_then(|tracker| {
            let method = &returned.method;
            tracker.on_return(
                fingerprint(
                    method.exchange.as_str(),
                    method.routing_key.as_str(),
                    &returned.body,
                ),
                method.reply_code,
                method.reply_text.as_str(),
            )
        });
        let arrival = self.next_arrival();
        self.returns.push(seq, returned, arrival, kept);
    }

    /// The next number of the channel's arrivals. Deliveries and returned messages are numbered
    /// as they arrive ([`Held::arrival`]) so that the consumer loop runs a return callback
    /// between the deliveries it arrived between, as pika dispatches them.
    pub(crate) fn next_arrival(&mut self) -> u64 {
        self.arrivals += 1;
        self.arrivals
    }

    /// What a closed channel keeps leaves the connection's counts (no more come; a return
    /// callback may still be run for what it kept, or it goes with the channel).
    pub(crate) fn unmeter_all(&mut self) {
        self.deliveries.iter_mut().for_each(Held::unmeter);
        self.returns.unmeter();
    }

    /// What the channel keeps is counted on `core`'s meters (a recovery opened it again on a
    /// new connection).
    pub(crate) fn remeter_all(&mut self, inbound: &InboundMeter, kept: &InboundMeter) {
        self.deliveries.iter_mut().for_each(|h| h.remeter(inbound));
        self.returns.remeter(kept);
    }

    /// Whether a basic.consume with `consumer_tag` timed out and its reply is still to come.
    pub(crate) fn consume_pending(&self, consumer_tag: &str) -> bool {
        self.stale
            .iter()
            .filter(|(s, _)| *s == Stale::Consume)
            .any(|(_, a)| a.as_ref().and_then(|a| a.consumer_tag.as_deref()) == Some(consumer_tag))
    }

    /// Records a consumer that is gone for us (see `orphans`): its deliveries are
    /// [`ORPHANED_DELIVERY`].
    pub(crate) fn push_orphan(&mut self, consumer_tag: &str, auto_ack: bool) {
        self.push_orphan_as(consumer_tag, auto_ack, ORPHANED_DELIVERY);
        if let Some(orphan) = self.orphans.back_mut() {
            orphan.cancel = true;
        }
    }

    /// Records a consumer whose deliveries belong to nobody, saying what they are (`what`, a
    /// noun phrase such as "a late RPC reply nobody waits for") for the router's log line.
    /// Replaces an entry of the same tag.
    pub(crate) fn push_orphan_as(
        &mut self,
        consumer_tag: &str,
        auto_ack: bool,
        what: &'static str,
    ) {
        self.forget_orphan(consumer_tag);
        if self.orphans.len() >= ORPHANS_KEPT {
            self.orphans.pop_front();
        }
        self.orphans.push_back(Orphan {
            tag: consumer_tag.to_string(),
            auto_ack,
            what,
            cancel: false,
        });
    }

    /// True once for an orphan the router is to cancel at the broker (see `Orphan::cancel`).
    pub(crate) fn orphan_cancel_due(&mut self, consumer_tag: &str) -> bool {
        self.orphans
            .iter_mut()
            .find(|o| o.tag == consumer_tag)
            .is_some_and(|o| std::mem::take(&mut o.cancel))
    }

    /// Records a consumer cancelled cleanly (see `gone`).
    pub(crate) fn push_gone(&mut self, consumer_tag: &str, auto_ack: bool) {
        self.forget_orphan(consumer_tag);
        if self.gone.len() >= ORPHANS_KEPT {
            self.gone.pop_front();
        }
        self.gone.push_back((consumer_tag.to_string(), auto_ack));
    }

    /// A consumer starts with `consumer_tag` (or an `RpcClient` call waits again): deliveries
    /// for that tag are its from now on.
    pub(crate) fn forget_orphan(&mut self, consumer_tag: &str) {
        self.orphans.retain(|o| o.tag != consumer_tag);
        self.gone.retain(|(tag, _)| tag != consumer_tag);
    }

    /// Whether deliveries for `consumer_tag` belong to nobody (see `orphans` and `gone`); its
    /// ack mode.
    pub(crate) fn orphan(&self, consumer_tag: &str) -> Option<bool> {
        let orphan = self.orphan_as(consumer_tag).map(|(auto_ack, _)| auto_ack);
        orphan.or_else(|| {
            (self.gone.iter())
                .find(|(tag, _)| tag == consumer_tag)
                .map(|(_, auto_ack)| *auto_ack)
        })
    }

    /// [`orphan`](Self::orphan), with what its deliveries are (see
    /// [`push_orphan_as`](Self::push_orphan_as)).
    pub(crate) fn orphan_as(&self, consumer_tag: &str) -> Option<(bool, &'static str)> {
        self.orphans
            .iter()
            .find(|o| o.tag == consumer_tag)
            .map(|o| (o.auto_ack, o.what))
    }
}

/// The connection's channel table (behind `Core::channels`): the channels whose numbers are
/// taken, and what crossed closes left owed on free numbers (see `router`).
#[derive(Debug, Default)]
pub(crate) struct ChannelTable {
    pub(crate) live: HashMap<u16, Arc<ChannelCore>>,
    /// Numbers whose channel's close crossed the broker's: the close-oks that may still come
    /// for them (one that never comes stays counted), and until when no new channel takes the
    /// number (the last crossed close's shadow, lifted by any late close-ok). At most one
    /// entry per number, so within `channel_max`; an entry goes when its last close-ok came.
    owed: HashMap<u16, Owed>,
}

#[derive(Debug)]
struct Owed {
    close_oks: u32,
    shadowed_until: Instant,
}

impl ChannelTable {
    /// Until when `number` is shadowed, if it still is at `now`.
    pub(crate) fn shadowed_until(&self, number: u16, now: Instant) -> Option<Instant> {
        let until = self.owed.get(&number)?.shadowed_until;
        (until > now).then_some(until)
    }

    /// A crossed close on `number`: one more close-ok may come for it, and the number is
    /// shadowed until `until`.
    pub(crate) fn owe_close_ok(&mut self, number: u16, until: Instant) {
        let owed = self.owed.entry(number).or_insert(Owed {
            close_oks: 0,
            shadowed_until: until,
        });
        owed.close_oks = owed.close_oks.saturating_add(1);
        owed.shadowed_until = until;
    }

    /// A close-ok came for `number` that no channel of ours waits for: true if one was owed.
    /// It is the late one: the shadow lifts (an older one that never came must not hold the
    /// number), and the entry goes when none is owed any more.
    pub(crate) fn late_close_ok(&mut self, number: u16) -> bool {
        let Some(owed) = self.owed.get_mut(&number) else {
            return false;
        };
        owed.close_oks -= 1;
        owed.shadowed_until = Instant::now();
        if owed.close_oks == 0 {
            self.owed.remove(&number);
        }
        true
    }

    /// The lowest number up to `channel_max` that a new channel may take at `now`; if there
    /// is none, when the first shadow ends (`None`: every number is taken).
    pub(crate) fn free_number(
        &self,
        channel_max: u16,
        now: Instant,
    ) -> Result<u16, Option<Instant>> {
        let mut first_end: Option<Instant> = None;
        for n in 1..=channel_max {
            if self.live.contains_key(&n) {
                continue;
            }
            match self.shadowed_until(n, now) {
                None => return Ok(n),
                Some(until) => first_end = Some(first_end.map_or(until, |f| f.min(until))),
            }
        }
        Err(first_end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_shadowed_number_is_passed_by_until_its_close_oks_come_or_the_shadow_ends() {
        let mut table = ChannelTable::default();
        table.live.insert(1, Arc::new(ChannelCore::new(1)));
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        table.owe_close_ok(2, later);
        table.owe_close_ok(2, later);
        assert_eq!(table.free_number(10, now), Ok(3));
        assert_eq!(table.free_number(2, now), Err(Some(later)));
        assert!(table.late_close_ok(2));
        let after = Instant::now();
        assert_eq!(table.shadowed_until(2, after), None, "the shadow lifts");
        assert_eq!(table.free_number(10, after), Ok(2));
        assert!(table.late_close_ok(2), "one more was owed");
        assert!(!table.late_close_ok(2), "none is owed any more");
        // A shadow that ended frees the number, yet its close-ok is still known for late.
        table.owe_close_ok(4, now);
        assert_eq!(table.shadowed_until(4, now), None);
        assert_eq!(table.free_number(4, now), Ok(2));
        assert!(table.late_close_ok(4));
        assert!(!table.late_close_ok(5), "nothing was owed on 5");
        table.live.insert(2, Arc::new(ChannelCore::new(2)));
        assert_eq!(table.free_number(2, now), Err(None));
    }

    #[test]
    fn consumers_cancelled_cleanly_are_not_looked_up_by_the_router() {
        let core = ChannelCore::new(1);
        let mut st = core.lock();
        for n in 0..ORPHANS_KEPT + 10 {
            st.push_gone(&format!("gone-{n}"), n % 2 == 0);
        }
        st.push_orphan("timed-out", false);
        // The router's lookup sees the orphan only; a consuming thread's sees both.
        assert_eq!(st.orphan_as("gone-264"), None);
        assert_eq!(st.orphan("gone-264"), Some(true));
        assert_eq!(st.orphan("gone-265"), Some(false));
        assert_eq!(st.orphan("gone-9"), None, "the oldest are forgotten");
        assert_eq!(st.orphan_as("timed-out"), Some((false, ORPHANED_DELIVERY)));
        // A consumer that starts with the tag takes its deliveries again.
        st.forget_orphan("gone-264");
        st.forget_orphan("timed-out");
        assert_eq!(st.orphan("gone-264"), None);
        assert_eq!(st.orphan("timed-out"), None);
    }
}
