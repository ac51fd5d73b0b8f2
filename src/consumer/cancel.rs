//! Ending consumers: `basic_cancel`, `stop_consuming` and `cancel` (the application's
//! cancels), and what becomes of the messages a consumer had not handed out yet (requeued, or
//! returned to the caller for an auto-ack one); also a consumer whose `basic.consume` timed
//! out (`abandon`).

use amq_protocol::protocol::{basic, AMQPClass};

use super::report_dropped;
use crate::channel::Channel;
use crate::delivery::Delivery;
use crate::engine::chan::{Held, Life, Reply};
use crate::error::{Error, Result};

impl Channel {
    /// A consumer whose basic.consume timed out: the broker may have it, and nobody will
    /// consume what it delivers. It becomes an orphan (the router requeues its deliveries, or
    /// reports auto-acked ones lost) and those already here are requeued. Nothing is sent: the
    /// router cancels the consumer when its late consume-ok comes (see [`Stale::Consume`](crate::engine::chan::Stale::Consume)).
    pub(super) fn abandon(&self, tag: &str, auto_ack: bool) {
        self.core().lock().push_orphan(tag, auto_ack);
        self.requeue(self.take_queued(tag), auto_ack);
    }

    /// Rejects `held` with requeue (manual ack), or reports it lost (auto ack).
    pub(super) fn requeue(&self, held: Vec<Held>, auto_ack: bool) {
        for h in held {
            if auto_ack {
                log::warn!(
                    "delivery {} of cancelled consumer {} was auto-acked and nobody will consume \
                     it: it is lost",
                    h.delivery_tag(),
                    h.consumer_tag()
                );
            } else if let Err(e) = self.basic_reject(h.delivery_tag(), Default::default()) {
                log::debug!("requeueing delivery {}: {e}", h.delivery_tag());
            }
        }
    }

    /// Cancels a consumer (pika's `basic_cancel`). Returns the messages of an `auto_ack`
    /// consumer that arrived but were not yet handed to it; those of a manual-ack consumer are
    /// rejected with requeue so the broker delivers them again at once. Cancelling an unknown
    /// tag does nothing. On a channel that is closed (or closing) nothing is sent: the
    /// consumer went with the channel, the `auto_ack` messages are still returned, and the
    /// manual-ack ones are dropped (the broker requeued them with the channel).
    pub fn basic_cancel(&self, consumer_tag: &str) -> Result<Vec<Delivery>> {
        self.cancel_consumer(consumer_tag)
            .map(|(returned, _)| returned)
    }

    /// Cancels a consumer; returns the auto-ack messages handed back and how many manual-ack
    /// ones were requeued.
    pub(super) fn cancel_consumer(&self, consumer_tag: &str) -> Result<(Vec<Delivery>, usize)> {
        let (auto_ack, ended_by_broker) = match self.lock_consumers().get_mut(consumer_tag) {
            Some(entry) if !entry.cancelling => {
                entry.cancelling = true;
                (entry.auto_ack, entry.ended_by_broker)
            }
            _ => return Ok((Vec::new(), 0)),
        };
        let method = crate::channel::methods::cancel(consumer_tag)?;
        // One the broker cancelled, or whose channel is closed (or closing), has nothing to
        // send: only what it holds is left (an auto-ack one's messages are still handed back).
        let closed = matches!(self.core().lock().life, Life::Closed(_) | Life::Closing(_));
        let reply = (!ended_by_broker && !closed).then(|| self.rpc(method, "basic.cancel"));
        self.inner
            .owner
            .record(|t| t.consumer_cancelled(self.inner.instance, consumer_tag));
        // Whatever happened, the consumer is gone for us; what it had not handed out is taken.
        // It is an orphan first: a consuming thread that took one of its deliveries before it
        // went finds it one when it routes that delivery (and requeues it). Cancelled cleanly,
        // the broker sends nothing more for it: only such a thread looks (`gone`).
        let clean = matches!(
            reply,
            None | Some(Ok(Reply::Method(AMQPClass::Basic(
                basic::AMQPMethod::CancelOk(_)
            ))))
        );
        if clean {
            self.core().lock().push_gone(consumer_tag, auto_ack);
        } else {
            self.core().lock().push_orphan(consumer_tag, auto_ack);
        }
        let mut pending = self
            .lock_consumers()
            .remove(consumer_tag)
            .map(|e| e.pending)
            .unwrap_or_default();
        pending.extend(self.take_queued(consumer_tag));
        self.inner.owner.core().nudge();
        match reply {
            None | Some(Ok(Reply::Method(AMQPClass::Basic(basic::AMQPMethod::CancelOk(_))))) => {}
            Some(Err(e)) => {
                // After a timeout the cancel may still be on its way: what arrives meanwhile
                // is requeued by the router (the consumer is an orphan).
                self.requeue(pending.into(), auto_ack);
                return Err(e);
            }
            Some(Ok(_)) => {
                self.requeue(pending.into(), auto_ack);
                return Err(Error::protocol(
                    crate::error::COMMAND_INVALID,
                    "unexpected reply to basic.cancel",
                ));
            }
        }
        if auto_ack {
            return Ok((pending.into_iter().map(Held::take).collect(), 0));
        }
        let requeued = pending.len();
        if closed {
            // The broker requeued them with the channel.
            drop(pending);
        } else {
            self.requeue(pending.into(), false);
        }
        Ok((Vec::new(), requeued))
    }

    /// Removes the channel-queued, undispatched deliveries of one consumer.
    pub(crate) fn take_queued(&self, consumer_tag: &str) -> Vec<Held> {
        let mut st = self.core().lock();
        if !st
            .deliveries
            .iter()
            .any(|d| d.consumer_tag() == consumer_tag)
        {
            return Vec::new();
        }
        let (taken, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut st.deliveries)
            .into_iter()
            .partition(|d| d.consumer_tag() == consumer_tag);
        st.deliveries = kept.into();
        taken
    }

    /// The tags of this channel's consumers (pika's `consumer_tags`); none once the channel
    /// is closed or closing (its consumers went with it), as in pika. While the connection
    /// recovers they are listed: the recovery registers them again.
    pub fn consumer_tags(&self) -> Vec<String> {
        if matches!(self.core().lock().life, Life::Closed(_) | Life::Closing(_)) {
            return Vec::new();
        }
        self.lock_consumers()
            .iter()
            .filter(|(_, e)| e.active())
            .map(|(tag, _)| tag.clone())
            .collect()
    }

    /// Cancels the consumer `consumer_tag`, or with `None` every consumer of the channel
    /// (pika's `stop_consuming(consumer_tag=None)`); [`start_consuming`](Self::start_consuming)
    /// returns once no consumer is left, so `None` makes it return. Callable from a callback or
    /// from another thread. An unknown tag does nothing.
    ///
    /// As in pika, messages a manual-ack consumer received but had not handed to its callback
    /// are rejected with requeue, and those of an auto-ack consumer are dropped, with a
    /// warning in the log ([`basic_cancel`](Self::basic_cancel) returns them instead).
    pub fn stop_consuming(&self, consumer_tag: Option<&str>) -> Result<()> {
        let tags = match consumer_tag {
            Some(tag) => vec![tag.to_owned()],
            None => self.consumer_tags(),
        };
        for tag in tags {
            report_dropped(&tag, &self.basic_cancel(&tag)?);
        }
        Ok(())
    }

    /// Cancels the consumers made by [`consume`](Self::consume) on this channel (pika's
    /// `BlockingChannel.cancel()`): their messages received but not yet yielded are rejected
    /// with requeue (or, on a closed channel, left to the broker, which requeued them with the
    /// channel); returns how many (pika 1.4 requeues them too, but returns 0). Their
    /// iterators end. An `auto_ack` iterator's messages cannot go back: they are dropped with
    /// a warning in the log (see [`Consumer::cancel`](crate::Consumer::cancel)).
    pub fn cancel(&self) -> Result<usize> {
        let tags: Vec<String> = self
            .lock_consumers()
            .iter()
            .filter(|(_, e)| e.callback.is_none() && !e.cancelling)
            .map(|(tag, _)| tag.clone())
            .collect();
        let mut requeued = 0;
        for tag in tags {
            let (dropped, n) = self.cancel_consumer(&tag)?;
            report_dropped(&tag, &dropped);
            requeued += n;
        }
        Ok(requeued)
    }
}
