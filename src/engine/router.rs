//! Routing what the broker sends: each frame to its channel's state (replies, deliveries,
//! confirms, returns, cancels, closes), connection-level methods to the connection.
//!
//! The router lives in the reading half and runs on whichever thread holds the read token
//! (see `token`); it never blocks and never runs user code. It takes a channel's lock for
//! each change and queues its own replies (close-ok, cancel-ok, flow-ok, rejects of orphaned
//! deliveries) behind what callers queued. It notes whether anything changed that a waiter
//! may look at; the read loop then bumps the token's generation once per batch.
//!
//! A channel number is free once the channel is closed on both sides: when the broker answered
//! our channel.close, or when we answered the broker's. The router frees it under the channel's
//! lock (lock order: a channel's state, then the channel table), so whoever sees the channel
//! closed finds the number free.
//!
//! When both sides closed at once (the broker's close crossed ours), the broker may answer our
//! close as well, late or never: RabbitMQ sends that close-ok from the old channel's writer,
//! which races the end of that channel; under load it has come after a new channel on the
//! number had been opened and had sent a close of its own (taken for the answer to that one,
//! it freed the number while the broker still held that channel, whose 404 then closed the
//! next). So a crossed close frees the number at once (the broker's reader forgets the old
//! channel when it reads our close-ok, so a channel.open behind it reaches a new channel), and
//! the channel table (`chan::ChannelTable`) records the close-ok as owed and *shadows* the
//! number until it arrives or [`LATE_CLOSE_OK`] has passed: `channel()` takes another number
//! meanwhile (or, if none is free, waits for the shadow), `channel_with_number` waits, both
//! within their `rpc_timeout` (the recovery's own channel takes another number, or fails).
//! An owed close-ok is recognised whenever it comes (on a free number, or on a channel that
//! did not send channel.close) and closes nothing; one nobody owes is ignored with a warning
//! on an open channel, and is a channel error on a number not open, like any frame there.
//! What remains: a close-ok later than [`LATE_CLOSE_OK`] that lands on a new channel of the
//! number while it is closing completes that close early; the worst a caller then sees is the
//! next channel.open on that number timing out with `rpc_timeout`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{basic, channel, connection, AMQPClass};

use super::chan::{ChannelCore, Delivered, Held, Life, Reply};
use super::outbound::REPLY_BACKLOG;
use super::Core;
use crate::delivery::{Delivery, GetMessage, Returned};
use crate::error::{Error, Result, CHANNEL_ERROR, COMMAND_INVALID, FRAME_ERROR, UNEXPECTED_FRAME};
use crate::protocol::codec::{self, Header};
use crate::protocol::content::{Assembly, Content, ContentMethod};
use crate::protocol::methods::{Deliver, GetOk, Return};
use crate::protocol::properties::BasicProperties;

/// How long a number stays shadowed after a crossed close unless the broker's late close-ok
/// arrives first (see the module docs); it usually does within a millisecond, rarely never.
pub(crate) const LATE_CLOSE_OK: std::time::Duration = std::time::Duration::from_secs(2);

/// connection.blocked / unblocked events kept for the callbacks; older ones are dropped.
pub(crate) const BLOCKED_EVENTS_KEPT: usize = 16;

/// How reading ended without an error of its own.
#[derive(Debug)]
pub(crate) enum Exit {
    /// Our connection.close was answered.
    CloseOk,
    /// The broker closed the connection (close-ok is queued).
    ClosedByBroker(Error),
}

struct Entry {
    core: Arc<ChannelCore>,
    assembly: Assembly,
}

/// Routes frames to channels (the reader's own cache of the connection's channel table).
#[derive(Default)]
pub(crate) struct Router {
    /// Indexed by channel number (a lookup per frame, so no hashing); grows to the highest
    /// number in use, at most `channel_max`.
    channels: Vec<Option<Entry>>,
    /// Something a waiter may look at changed since the last [`take_changed`](Self::take_changed).
    changed: bool,
    /// The reader's own replies piled up unwritten when it last looked
    /// ([`backlogged`](Self::backlogged)).
    backlog: bool,
    /// The body sizes announced by the content headers of messages still being received, all
    /// channels together (`Assembly::header` bounds it). A channel is forgotten only between
    /// messages (any method in the middle of one is refused), so nothing else lowers it.
    receiving: u64,
}

impl Router {
    /// Whether anything a waiter may look at changed since the last call.
    pub(crate) fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    fn entry(&mut self, core: &Core, channel: u16) -> Result<&mut Entry> {
        let index = channel as usize;
        if self.channels.get(index).is_none_or(Option::is_none) {
            let known = core.lock_channels().live.get(&channel).cloned();
            let known = known.ok_or_else(|| match channel {
                // The connection's own: only connection methods and heartbeats go there
                // (`on_deliver` says so for a deliver, as `on_frame` does for other methods).
                0 => Error::protocol(UNEXPECTED_FRAME, "content frame on channel 0"),
                _ => Error::protocol(
                    CHANNEL_ERROR,
                    format!("frame on channel {channel}, which is not open"),
                ),
            })?;
            if self.channels.len() <= index {
                self.channels.resize_with(index + 1, || None);
            }
            self.channels[index] = Some(Entry {
                core: known,
                assembly: Assembly::default(),
            });
        }
        Ok(self.channels[index].as_mut().expect("filled above"))
    }

    /// Frees a channel's number: removes it from the cache and the connection's table, with a
    /// close-ok still owed if `crossed` (see the module docs). Called under the channel's lock,
    /// so a caller that sees the channel closed finds its number free.
    fn forget(&mut self, core: &Core, channel: u16, crossed: bool) {
        if let Some(entry) = self
            .channels
            .get_mut(channel as usize)
            .and_then(Option::take)
        {
            let mut table = core.lock_channels();
            if table
                .live
                .get(&channel)
                .is_some_and(|c| Arc::ptr_eq(c, &entry.core))
            {
                if crossed {
                    table.owe_close_ok(channel, Instant::now() + LATE_CLOSE_OK);
                }
                table.live.remove(&channel);
            }
        }
    }

    /// A close-ok that no channel of ours waits for: true if it is the late one after a
    /// crossed close (see the module docs), which lifts the number's shadow (a
    /// `channel_with_number` may wait for that).
    fn late_close_ok(&mut self, core: &Core, channel: u16) -> bool {
        if !core.lock_channels().late_close_ok(channel) {
            return false;
        }
        log::debug!("channel {channel}: a late close-ok, for a close that crossed the broker's");
        self.changed = true;
        true
    }

    pub(crate) fn on_frame(&mut self, core: &Core, frame: AMQPFrame) -> Result<Option<Exit>> {
        match frame {
            AMQPFrame::Heartbeat => {
                log::trace!("heartbeat received");
                Ok(None)
            }
            AMQPFrame::Method(0, AMQPClass::Connection(method)) => self.on_connection(core, method),
            AMQPFrame::Method(0, other) => Err(Error::protocol(
                COMMAND_INVALID,
                format!("method {other:?} on channel 0"),
            )),
            AMQPFrame::Method(channel, method) => {
                log::trace!("channel {channel}: {method:?}");
                self.on_method(core, channel, method).map(|()| None)
            }
            AMQPFrame::Header(channel, header) => self
                .on_header(core, channel, Header::from_wire(&header))
                .map(|()| None),
            AMQPFrame::Body(channel, data) => self.on_body(core, channel, &data, 0).map(|()| None),
            AMQPFrame::InvalidHeartbeat(channel) => Err(Error::protocol(
                FRAME_ERROR,
                format!("heartbeat frame on channel {channel}"),
            )),
            AMQPFrame::ProtocolHeader(_) => Err(Error::protocol(
                FRAME_ERROR,
                "protocol header in the middle of the connection",
            )),
        }
    }

    /// A content header (decoded by amq-protocol or by `protocol::fast`).
    pub(crate) fn on_header(&mut self, core: &Core, channel: u16, header: Header) -> Result<()> {
        let size = header.body_size;
        let elsewhere = self.receiving;
        let entry = self.entry(core, channel)?;
        match entry
            .assembly
            .header(channel, header, elsewhere, &core.spare_body)?
        {
            Some(content) => self.finish_content(core, channel, content)?,
            None => self.receiving += size,
        }
        Ok(())
    }

    /// A basic.deliver decoded by `protocol::fast` (the parsed ones come through
    /// [`on_frame`](Self::on_frame)).
    pub(crate) fn on_deliver(&mut self, core: &Core, channel: u16, deliver: Deliver) -> Result<()> {
        if channel == 0 {
            return Err(Error::protocol(
                COMMAND_INVALID,
                "method basic.deliver on channel 0",
            ));
        }
        log::trace!("channel {channel}: {deliver:?}");
        let entry = self.entry(core, channel)?;
        entry
            .assembly
            .start(channel, ContentMethod::Deliver(deliver))
    }

    /// A body frame or a piece of one, with `rest` more of the frame's bytes to come.
    pub(crate) fn on_body(
        &mut self,
        core: &Core,
        channel: u16,
        data: &[u8],
        rest: usize,
    ) -> Result<()> {
        let entry = self.entry(core, channel)?;
        if let Some(content) = entry.assembly.body(channel, data, rest)? {
            self.receiving -= content.body.len() as u64;
            self.finish_content(core, channel, content)?;
        }
        Ok(())
    }

    fn finish_content(&mut self, core: &Core, channel: u16, content: Content) -> Result<()> {
        let Some(entry) = self
            .channels
            .get_mut(channel as usize)
            .and_then(Option::as_mut)
        else {
            return Ok(());
        };
        let chan = entry.core.clone();
        let Content {
            method,
            properties,
            body,
        } = content;
        let mut st = chan.lock();
        if st.closed_error().is_some() {
            return Ok(());
        }
        // Our channel.close is on its way: nobody takes deliveries any more (counted, and
        // logged once closed). A get-ok still answers its request (its waiter may still take
        // it), and a return still settles its publish's confirm.
        let closing = matches!(st.life, Life::Closing(_));
        if closing && matches!(method, ContentMethod::Deliver(_)) {
            st.discarded += 1;
            return Ok(());
        }
        // The application's tags run on across recoveries (see `ChanState::tag_offset`); a
        // broker's tag that would overflow them is no tag RabbitMQ gives.
        let offset = st.tag_offset;
        let run_on = |tag: u64| {
            tag.checked_add(offset).ok_or_else(|| {
                Error::protocol(
                    COMMAND_INVALID,
                    format!(
                        "delivery tag {tag} on channel {channel} overflows the {offset} tags \
                         of its earlier connections"
                    ),
                )
            })
        };
        match method {
            ContentMethod::Deliver(method) => {
                st.acks.delivered(method.delivery_tag);
                if let Some(orphan) = st.orphan_as(method.consumer_tag.as_str()) {
                    let cancel = st.orphan_cancel_due(method.consumer_tag.as_str());
                    self.orphaned(core, channel, &method, &properties, body.len(), orphan);
                    if cancel && matches!(st.life, Life::Open) {
                        log::warn!(
                            "channel {channel}: cancelling consumer {} at the broker: it \
                             delivers to a consumer that is gone for us",
                            method.consumer_tag
                        );
                        self.queue_cancel(core, channel, method.consumer_tag.as_str());
                    }
                    return Ok(());
                }
                let mut method = method;
                method.delivery_tag = run_on(method.delivery_tag)?;
                let delivery = Delivery::new(method, properties, body, core.generation);
                let arrival = st.next_arrival();
                let held = Held::new(delivery, &core.inbound).arriving(arrival);
                st.deliveries.push_back(held);
            }
            ContentMethod::GetOk(method) => {
                st.acks.delivered(method.delivery_tag);
                let mut method = method;
                method.delivery_tag = run_on(method.delivery_tag)?;
                let reply = Reply::Get(GetMessage::new(method, properties, body, core.generation));
                match st.deliver_reply(reply) {
                    // The connection ends: the broker requeues the message.
                    Delivered::Mismatch(m) => return Err(m.error(channel)),
                    Delivered::ToWaiter | Delivered::Stale | Delivered::StaleConsume { .. } => {}
                    // Nothing may follow our channel.close: the close requeues it.
                    Delivered::StaleGet { .. } if closing => st.discarded += 1,
                    Delivered::StaleGet { delivery_tag } => {
                        drop(st);
                        log::warn!(
                            "channel {channel}: a basic.get-ok arrived after its caller gave \
                             up: rejecting delivery {delivery_tag} with requeue"
                        );
                        self.queue_reject(core, channel, delivery_tag);
                    }
                    Delivered::Unwanted => {
                        log::warn!("channel {channel}: basic.get-ok nobody asked for")
                    }
                }
            }
            ContentMethod::Return(method) => {
                st.push_return(Returned::new(method, properties, body), &core.returns_kept)
            }
        }
        self.changed = true;
        Ok(())
    }

    /// A delivery for an orphaned consumer (nobody will consume it: its basic.consume or
    /// basic.cancel timed out, or it is an `RpcClient`'s while no call waits): back to its
    /// queue, or, auto-acked, dropped and reported lost, as what the orphan says it is
    /// (`(auto_ack, what)`, see `ChanState::push_orphan_as`).
    fn orphaned(
        &mut self,
        core: &Core,
        channel: u16,
        method: &Deliver,
        properties: &BasicProperties,
        bytes: usize,
        (auto_ack, what): (bool, &'static str),
    ) {
        let delivery_tag = method.delivery_tag;
        if auto_ack {
            log::warn!(
                "channel {channel}: dropping {what} (delivery {delivery_tag}, consumer {}, \
                 correlation id {:?}, {bytes} bytes): the broker auto-acked it, so it is lost",
                method.consumer_tag,
                properties.correlation_id()
            );
        } else {
            log::debug!(
                "channel {channel}: requeueing {what} (delivery {delivery_tag}, consumer {})",
                method.consumer_tag
            );
            self.queue_reject(core, channel, delivery_tag);
        }
    }

    fn queue_reject(&mut self, core: &Core, channel: u16, delivery_tag: u64) {
        let reject = AMQPClass::Basic(basic::AMQPMethod::Reject(basic::Reject {
            delivery_tag,
            requeue: true,
        }));
        self.queue_reply(core, channel, reject);
    }

    fn on_connection(
        &mut self,
        core: &Core,
        method: connection::AMQPMethod,
    ) -> Result<Option<Exit>> {
        match method {
            connection::AMQPMethod::Close(close) => {
                let close_ok =
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {}));
                self.queue_reply(core, 0, close_ok);
                Ok(Some(Exit::ClosedByBroker(Error::ConnectionClosed {
                    reply_code: close.reply_code,
                    reply_text: close.reply_text.to_string(),
                    class_id: close.class_id,
                    method_id: close.method_id,
                })))
            }
            connection::AMQPMethod::CloseOk(_) if core.lock_link().closing.is_some() => {
                Ok(Some(Exit::CloseOk))
            }
            // Not the application's close: a peer's error, not a normal shutdown.
            connection::AMQPMethod::CloseOk(_) => Err(Error::protocol(
                COMMAND_INVALID,
                "connection.close-ok for a connection.close we did not send",
            )),
            connection::AMQPMethod::Blocked(blocked) => {
                log::warn!("the broker blocked the connection: {}", blocked.reason);
                let mut link = core.lock_link();
                link.blocked_since.get_or_insert_with(Instant::now);
                link.push_blocked_event(Some(blocked.reason.to_string()));
                drop(link);
                self.connection_work(core);
                Ok(None)
            }
            connection::AMQPMethod::Unblocked(_) => {
                log::info!("the broker unblocked the connection");
                let mut link = core.lock_link();
                link.blocked_since = None;
                link.unblocked_at = Some(Instant::now());
                link.push_blocked_event(None);
                drop(link);
                // Publishers waiting for the unblock.
                core.link_cond.notify_all();
                self.connection_work(core);
                Ok(None)
            }
            connection::AMQPMethod::UpdateSecretOk(_) => {
                // In order: the oldest call still owed one has it (see `Link::secret_updates`).
                let mut link = core.lock_link();
                let (sent, answered) = link.secret_updates;
                if answered < sent {
                    link.secret_updates.1 += 1;
                } else {
                    log::warn!("ignoring a connection.update-secret-ok nobody asked for");
                }
                drop(link);
                self.changed = true;
                Ok(None)
            }
            other => Err(Error::protocol(
                COMMAND_INVALID,
                format!("unexpected connection method {other:?}"),
            )),
        }
    }

    /// Connection-level work for the consuming threads (blocked/unblocked callbacks).
    fn connection_work(&mut self, core: &Core) {
        core.conn_work.fetch_add(1, Ordering::SeqCst);
        self.changed = true;
    }

    fn on_method(&mut self, core: &Core, channel: u16, method: AMQPClass) -> Result<()> {
        let entry = match self.entry(core, channel) {
            Ok(entry) => entry,
            Err(e) => {
                let close_ok =
                    matches!(method, AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)));
                return match close_ok && self.late_close_ok(core, channel) {
                    true => Ok(()),
                    false => Err(e),
                };
            }
        };
        let content = match method {
            AMQPClass::Basic(basic::AMQPMethod::Deliver(m)) => {
                Some(ContentMethod::Deliver(Deliver::from_wire(m)))
            }
            AMQPClass::Basic(basic::AMQPMethod::GetOk(m)) => {
                Some(ContentMethod::GetOk(GetOk::from_wire(m)))
            }
            AMQPClass::Basic(basic::AMQPMethod::Return(m)) => {
                Some(ContentMethod::Return(Return::from_wire(m)))
            }
            other => {
                entry.assembly.expect_method(channel)?;
                return self.on_plain_method(core, channel, other);
            }
        };
        if let Some(content) = content {
            entry.assembly.start(channel, content)?;
        }
        Ok(())
    }

    fn on_plain_method(&mut self, core: &Core, channel: u16, method: AMQPClass) -> Result<()> {
        let chan = self.entry(core, channel)?.core.clone();
        match method {
            AMQPClass::Basic(basic::AMQPMethod::Ack(ack)) => {
                if let Some(t) = chan.lock().confirms.as_mut() {
                    t.on_confirm(ack.delivery_tag, ack.multiple, false);
                }
            }
            AMQPClass::Basic(basic::AMQPMethod::Nack(nack)) => {
                if let Some(t) = chan.lock().confirms.as_mut() {
                    t.on_confirm(nack.delivery_tag, nack.multiple, true);
                }
            }
            AMQPClass::Basic(basic::AMQPMethod::Cancel(cancel)) => {
                log::warn!(
                    "channel {channel}: the broker cancelled consumer {}",
                    cancel.consumer_tag
                );
                if !cancel.nowait {
                    let ok = AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                        consumer_tag: cancel.consumer_tag.clone(),
                    }));
                    self.queue_reply_while_open(core, &chan, ok);
                }
                chan.lock().push_cancel(cancel.consumer_tag.to_string());
            }
            AMQPClass::Channel(channel::AMQPMethod::Close(close)) => {
                let mut st = chan.lock();
                let error = Error::ChannelClosed {
                    reply_code: close.reply_code,
                    reply_text: close.reply_text.to_string(),
                    class_id: close.class_id,
                    method_id: close.method_id,
                };
                log::debug!("channel {channel} closed by the broker: {error}");
                // Both sides closed at once: the broker may still answer ours, late or never
                // (see the module docs).
                let crossed = matches!(st.life, Life::Closing(_));
                st.life = Life::Closed(match &st.life {
                    Life::Closing(ours) => ours.clone(),
                    _ => error,
                });
                st.report_discarded(channel);
                st.awaiting = None;
                // The broker requeued everything unacked; nothing may follow the close-ok.
                st.acks.discard();
                // Deliveries read before the close stay, to be handed out ahead of the
                // channel's error: the broker counts the auto-acked ones delivered. The
                // consumer loop drops the manual-ack ones, which it requeued (see
                // `Channel::route`), and so does dropping the channel. They (and kept returns)
                // no longer count against the connection's limits: no more come, and a closed
                // channel nobody pumps must not hold back the others.
                st.unmeter_all();
                // Marked closed before close-ok is queued, under the lock callers take to queue
                // frames for the channel, so nothing of theirs follows the close-ok.
                let ok = AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {}));
                self.queue_reply(core, channel, ok);
                // Callers waiting for room on the channel look at it again (outbound rule 3).
                core.lock_link().channel_ends += 1;
                core.link_cond.notify_all();
                self.forget(core, channel, crossed);
            }
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => {
                let mut st = chan.lock();
                let Life::Closing(ours) = &st.life else {
                    drop(st);
                    if !self.late_close_ok(core, channel) {
                        log::warn!("channel {channel}: ignoring a close-ok for no close of ours");
                    }
                    return Ok(());
                };
                st.life = Life::Closed(ours.clone());
                st.awaiting = None;
                st.deliveries.clear();
                st.unmeter_all();
                st.report_discarded(channel);
                self.forget(core, channel, false);
                drop(st);
                log::debug!("channel {channel} closed");
            }
            AMQPClass::Channel(channel::AMQPMethod::Flow(flow)) => {
                log::info!(
                    "channel {channel}: the broker asks flow active={}",
                    flow.active
                );
                let ok = AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                    active: flow.active,
                }));
                self.queue_reply_while_open(core, &chan, ok);
            }
            reply => {
                let mut st = chan.lock();
                let reply = Reply::Method(reply);
                match st.deliver_reply(reply) {
                    Delivered::Mismatch(m) => return Err(m.error(channel)),
                    Delivered::Unwanted => {
                        log::warn!("channel {channel}: ignoring a reply nobody waits for")
                    }
                    // Not behind our channel.close: the close ends the consumer anyway. The
                    // channel's lock is held while it is queued, so no close slips ahead.
                    Delivered::StaleConsume { consumer_tag } if matches!(st.life, Life::Open) => {
                        log::warn!(
                            "channel {channel}: basic.consume-ok for {consumer_tag} arrived \
                             after its caller gave up: cancelling that consumer"
                        );
                        self.queue_cancel(core, channel, consumer_tag.as_str());
                    }
                    Delivered::ToWaiter
                    | Delivered::Stale
                    | Delivered::StaleGet { .. }
                    | Delivered::StaleConsume { .. } => {}
                }
            }
        }
        self.changed = true;
        Ok(())
    }
}

impl Router {
    /// Queues a reply of the reader's own behind everything callers queued before it; the I/O
    /// thread writes it (woken if the buffer was empty). Channel replies are dropped once we
    /// sent connection.close. Notes when such replies pile up
    /// unwritten ([`backlogged`](Self::backlogged)).
    fn queue_reply(&mut self, core: &Core, channel: u16, method: AMQPClass) {
        let mut frame = Vec::new();
        if let Err(e) = codec::encode_method(&mut frame, channel, method) {
            log::error!("cannot encode a reply on channel {channel}: {e}");
            return;
        }
        let mut link = core.lock_link();
        // After our connection.close, the broker's methods are discarded (AMQP): nothing but
        // the close-ok to a close of its own that crossed ours may follow on the wire.
        if link.closing.is_some() && channel != 0 {
            return;
        }
        link.replies_queued += frame.len();
        self.backlog |= link.replies_queued > REPLY_BACKLOG;
        core.enqueue(link, |buf| buf.extend_from_slice(&frame));
    }

    /// Cancels consumer `consumer_tag` at the broker (nowait: harmless if the broker no
    /// longer has it), for a consumer the broker keeps and nobody has. Called with the
    /// channel's lock held, the channel open, so no channel.close of ours slips ahead.
    fn queue_cancel(&mut self, core: &Core, channel: u16, consumer_tag: &str) {
        let cancel = AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
            consumer_tag: consumer_tag.into(),
            nowait: true,
        }));
        self.queue_reply(core, channel, cancel);
    }

    /// [`queue_reply`](Self::queue_reply) for an answer to the broker's method on an open
    /// channel: nothing may follow our channel.close on its channel (AMQP: the broker's
    /// methods crossing it are discarded). The channel's lock is held while it is queued, so
    /// no close slips ahead.
    fn queue_reply_while_open(&mut self, core: &Core, chan: &ChannelCore, method: AMQPClass) {
        let st = chan.lock();
        if matches!(st.life, Life::Open) {
            self.queue_reply(core, chan.id, method);
        }
    }

    /// Whether more than [`REPLY_BACKLOG`] bytes of the reader's own replies wait unwritten
    /// (the peer reads nothing): reading then pauses until the I/O thread takes them to write
    /// (token rule 9). Looks at the outbound buffer only once replies piled up.
    pub(crate) fn backlogged(&mut self, core: &Core) -> bool {
        if self.backlog {
            self.backlog = core.lock_link().replies_queued > REPLY_BACKLOG;
        }
        self.backlog
    }
}
