//! The `consume()` iterator (pika's `BlockingChannel.consume` generator): [`Consumer`], its
//! items and options. It pumps the channel through the same pump as `start_consuming` (see the
//! parent module), asking for its own consumer's deliveries.

use std::time::{Duration, Instant};

use super::{ConnTurn, Pumped};
use crate::channel::Channel;
use crate::delivery::Delivery;
use crate::engine::deadline_after;
use crate::error::{Error, Result};
use crate::protocol::table::FieldTable;

/// Keyword arguments of [`Channel::consume`] (pika's `consume(queue, auto_ack=False,
/// exclusive=False, arguments=None, inactivity_timeout=None, consumer_tag=None)`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConsumeOptions {
    /// The broker considers messages acknowledged once sent. Defaults to `false`.
    pub auto_ack: bool,
    /// Be the queue's only consumer. Defaults to `false`.
    pub exclusive: bool,
    /// Consumer arguments. Defaults to empty.
    pub arguments: FieldTable,
    /// Yield [`Consumed::Inactive`] after this long without a message. Defaults to `None`
    /// (wait for ever).
    pub inactivity_timeout: Option<Duration>,
    /// The consumer tag. Defaults to `None`: cottontail makes a unique one.
    pub consumer_tag: Option<String>,
}

/// An item of the [`Consumer`] iterator.
// Items are moved out at once; boxing the delivery would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq)]
pub enum Consumed {
    /// A message.
    Delivery(Delivery),
    /// Nothing arrived within the inactivity timeout (pika yields `(None, None, None)`).
    Inactive,
}

/// The blocking iterator returned by [`Channel::consume`].
///
/// Yields `Ok(Consumed::Delivery(..))` per message and `Ok(Consumed::Inactive)` after each
/// inactivity timeout. It ends (returns `None`) when the consumer is cancelled, by
/// [`cancel`](Self::cancel), or by the broker (queue deleted: it first yields the messages it
/// had received, as pika's generator does), and when the application closes the channel or
/// the connection; when the broker closes either, or the connection is lost, it yields that
/// error once and then ends (an `auto_ack` iterator first yields the messages that arrived
/// before the broker's close; a manual-ack one's could not be acked, and the broker delivers
/// them again). Callbacks of other consumers on the same channel, the channel's return and
/// cancel callbacks and the connection's timers, threadsafe and blocked/unblocked callbacks
/// run while it waits, as in pika. An error (or panic) of one of
/// them is yielded as an `Err` item, as [`Channel::start_consuming`] would return it; the
/// iterator goes on after it unless the channel closed.
#[derive(Debug)]
pub struct Consumer {
    channel: Channel,
    tag: String,
    inactivity_timeout: Option<Duration>,
    done: bool,
    turn: ConnTurn,
}

impl Channel {
    /// Starts a consumer and iterates over its messages (pika's `consume()` generator).
    ///
    /// Dropping the [`Consumer`] cancels the consumer, and leaving a `for` loop over it drops
    /// it: messages it received and had not yielded go back to the queue (an `auto_ack`
    /// consumer's cannot: they are lost, with a warning in the log). pika's generator survives
    /// a `break` and a second `consume()` resumes it; here, keep the `Consumer` and iterate
    /// `&mut consumer` (`for item in &mut consumer { .. break }`) to stop and go on later.
    ///
    /// From inside a callback of the connection it is
    /// [`Error::Reentrancy`](crate::Error::Reentrancy), as `start_consuming` is there in pika
    /// (pika lets its generator run there); a `Consumer` iterated there yields that error once,
    /// then ends. For a request-reply from inside a callback, use [`RpcClient`](crate::RpcClient).
    ///
    /// ```no_run
    /// # let connection = cottontail::Connection::open(cottontail::ConnectionParameters::default())?;
    /// # let channel = connection.channel()?;
    /// use std::time::Duration;
    /// use cottontail::{ConsumeOptions, Consumed};
    ///
    /// let options = ConsumeOptions { inactivity_timeout: Some(Duration::from_secs(1)), ..Default::default() };
    /// for item in channel.consume("hello", options)? {
    ///     match item? {
    ///         Consumed::Delivery(d) => channel.basic_ack(d.delivery_tag(), false)?,
    ///         // Consumed::Inactive (and whatever a later version adds: it is non-exhaustive).
    ///         _ => break,
    ///     }
    /// }
    /// # Ok::<(), cottontail::Error>(())
    /// ```
    pub fn consume(&self, queue: &str, options: ConsumeOptions) -> Result<Consumer> {
        // As in pika: not from inside a callback (nothing is registered).
        if crate::callback::inside_callback_of(self.inner.owner.id()) {
            return Err(crate::Error::Reentrancy);
        }
        self.consumer(queue, options)
    }

    /// [`consume`](Self::consume) from anywhere: for `RpcClient`, which never iterates its
    /// `Consumer` (it pumps the channel itself), so it may start inside a callback.
    pub(crate) fn consumer(&self, queue: &str, options: ConsumeOptions) -> Result<Consumer> {
        let tag = self.start_consumer(
            queue,
            None,
            options.auto_ack,
            options.exclusive,
            options.consumer_tag,
            options.arguments,
        )?;
        Ok(Consumer {
            channel: self.clone(),
            tag,
            inactivity_timeout: options.inactivity_timeout,
            done: false,
            turn: ConnTurn::default(),
        })
    }
}

impl Consumer {
    /// The consumer tag.
    pub fn consumer_tag(&self) -> &str {
        &self.tag
    }

    /// Messages received for this consumer and not yet yielded (pika's
    /// `get_waiting_message_count`).
    pub fn waiting_message_count(&self) -> usize {
        self.channel.waiting_for(std::slice::from_ref(&self.tag))
    }

    /// Cancels the consumer (pika's `cancel()`): messages received but not yet yielded are
    /// rejected with requeue (for a manual-ack consumer; on a closed channel the broker
    /// requeued them already) and their number returned. Messages
    /// already yielded are the caller's to ack. An `auto_ack` consumer's messages received but
    /// not yet yielded cannot go back (the broker forgot them): they are dropped with a
    /// warning in the log, as when the iterator is dropped; to keep them, cancel with
    /// [`Channel::basic_cancel`] instead, which returns them.
    pub fn cancel(mut self) -> Result<usize> {
        self.done = true;
        let (dropped, requeued) = self.channel.cancel_consumer(&self.tag)?;
        super::report_dropped(&self.tag, &dropped);
        Ok(requeued)
    }
}

impl Iterator for Consumer {
    type Item = Result<Consumed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let guard = match self.channel.enter_consuming() {
            Ok(guard) => guard,
            Err(e) => {
                // Inside a callback it would never work: it ends, as pika's generator does once
                // it raises (another thread's consuming the channel may end).
                self.done = crate::callback::inside_callback_of(self.channel.inner.owner.id());
                return Some(Err(e));
            }
        };
        // No deadline for an inactivity timeout too large to be one.
        let deadline = self.inactivity_timeout.and_then(deadline_after);
        let mut timer_fired = false;
        loop {
            let turn = self.turn.take(&self.channel.inner.owner, timer_fired);
            let (work, next_timer) = match turn {
                Ok(turn) => turn,
                Err(e) => return Some(Err(callback_failed(&mut self.done, guard.0, e))),
            };
            let wake = [deadline, next_timer].into_iter().flatten().min();
            let pumped = guard.0.pump(Some(&self.tag), wake, Some(work));
            timer_fired = false;
            match pumped {
                Ok(Pumped::TimedOut) if deadline.is_none_or(|d| Instant::now() < d) => {
                    timer_fired = true;
                }
                Ok(Pumped::Mine(delivery)) => return Some(Ok(Consumed::Delivery(*delivery))),
                Ok(Pumped::Progress) => {}
                Ok(Pumped::CallbackFailed(e)) if guard.0.forgiven(&e) => {}
                Ok(Pumped::CallbackFailed(e)) => {
                    return Some(Err(callback_failed(&mut self.done, guard.0, e)))
                }
                Ok(Pumped::TimedOut) => return Some(Ok(Consumed::Inactive)),
                Ok(Pumped::Finished) => {
                    self.done = true;
                    return None;
                }
                // The connection recovers: the iterator goes on on the recovered channel.
                Err(_) if guard.0.lost() => match guard.0.wait_for_recovery(deadline) {
                    Ok(true) => {}
                    Ok(false) => return Some(Ok(Consumed::Inactive)),
                    // A callback's error: the iterator goes on after it, as after any
                    // callback's; the error that closed the connection for good ends it.
                    Err(e) => {
                        self.done = guard.0.closed_for_good();
                        // The application closed the connection meanwhile: the end, as in pika.
                        return (!(self.done && e.is_closed_by_client())).then_some(Err(e));
                    }
                },
                Err(e) => {
                    self.done = true;
                    // The application closed the channel or the connection: the end, as in pika.
                    return (!e.is_closed_by_client()).then_some(Err(e));
                }
            }
        }
    }
}

/// A callback's error, for a [`Consumer`] to yield: the iterator goes on after it unless the
/// channel closed (then that was its error, and it is not yielded twice).
fn callback_failed(done: &mut bool, channel: &Channel, e: Error) -> Error {
    *done = channel.is_closed();
    e
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if !self.done {
            match self.channel.basic_cancel(&self.tag) {
                Ok(dropped) => super::report_dropped(&self.tag, &dropped),
                Err(e) => log::debug!("cancelling consumer {} on drop: {e}", self.tag),
            }
        }
    }
}
