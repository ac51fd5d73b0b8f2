//! Consuming with callbacks: `basic_consume`, `basic_cancel`, `start_consuming`,
//! `stop_consuming`. Callbacks run on the thread that calls `start_consuming`, never on the
//! I/O thread, so a slow callback cannot stop heartbeats.

use std::sync::atomic::Ordering;

use amq_protocol::protocol::basic::{self, Deliver};
use amq_protocol::protocol::{AMQPClass, BasicProperties};

use crate::channel::Channel;
use crate::delivery::Delivery;
use crate::error::{Error, Result};
use crate::io::chan::Reply;
use crate::io::{short, INBOUND_CHANNEL_LIMIT};
use crate::options::BasicConsumeOptions;

/// A consumer callback: pika's `on_message_callback(channel, method, properties, body)`.
///
/// Returning an error ends [`Channel::start_consuming`] with that error.
pub type ConsumerCallback =
    Box<dyn FnMut(&Channel, &Deliver, &BasicProperties, &[u8]) -> Result<()> + Send>;

pub(crate) struct ConsumerEntry {
    /// `None` while the callback is running (taken out so it may call channel methods).
    callback: Option<ConsumerCallback>,
    auto_ack: bool,
}

impl Channel {
    /// Starts a consumer on `queue` whose messages go to `callback` while a thread is inside
    /// [`start_consuming`](Self::start_consuming) (pika's `basic_consume(queue,
    /// on_message_callback, auto_ack=False, exclusive=False, consumer_tag=None,
    /// arguments=None)`). Returns the consumer tag.
    ///
    /// ```no_run
    /// # let connection = cottontail::Connection::open(Default::default())?;
    /// # let channel = connection.channel()?;
    /// channel.basic_consume("hello", |ch, method, _properties, body| {
    ///     println!(" [x] Received {}", String::from_utf8_lossy(body));
    ///     ch.basic_ack(method.delivery_tag, false)
    /// }, Default::default())?;
    /// channel.start_consuming()?;
    /// # Ok::<(), cottontail::Error>(())
    /// ```
    pub fn basic_consume<F>(
        &self,
        queue: &str,
        callback: F,
        options: BasicConsumeOptions,
    ) -> Result<String>
    where
        F: FnMut(&Channel, &Deliver, &BasicProperties, &[u8]) -> Result<()> + Send + 'static,
    {
        let tag = match options.consumer_tag {
            Some(tag) => tag,
            // pika's form: ctag<channel>.<uuid hex>
            None => format!(
                "ctag{}.{}",
                self.channel_number(),
                uuid::Uuid::new_v4().simple()
            ),
        };
        let method = AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: short(queue)?,
            consumer_tag: short(&tag)?,
            no_local: false,
            no_ack: options.auto_ack,
            exclusive: options.exclusive,
            nowait: false,
            arguments: options.arguments,
        }));
        {
            let mut consumers = self.lock_consumers();
            if consumers.contains_key(&tag) {
                return Err(Error::DuplicateConsumerTag(tag));
            }
            consumers.insert(
                tag.clone(),
                ConsumerEntry {
                    callback: Some(Box::new(callback)),
                    auto_ack: options.auto_ack,
                },
            );
        }
        match self.rpc(method, "basic.consume") {
            Ok(Reply::Method(AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)))) => Ok(tag),
            other => {
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

    /// Cancels a consumer (pika's `basic_cancel`). Returns the messages of an `auto_ack`
    /// consumer that arrived but were not yet handed to its callback; those of a manual-ack
    /// consumer are rejected with requeue so the broker delivers them again at once.
    pub fn basic_cancel(&self, consumer_tag: &str) -> Result<Vec<Delivery>> {
        let Some(entry) = self.lock_consumers().remove(consumer_tag) else {
            return Ok(Vec::new());
        };
        self.wake_consumer_loop();
        let method = AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
            consumer_tag: short(consumer_tag)?,
            nowait: false,
        }));
        match self.rpc(method, "basic.cancel")? {
            Reply::Method(AMQPClass::Basic(basic::AMQPMethod::CancelOk(_))) => {}
            _ => {
                return Err(Error::protocol(
                    crate::error::COMMAND_INVALID,
                    "unexpected reply to basic.cancel",
                ))
            }
        }
        let pending = self.take_pending(consumer_tag);
        if entry.auto_ack {
            return Ok(pending);
        }
        for delivery in pending {
            self.basic_reject(delivery.method.delivery_tag, true)?;
        }
        Ok(Vec::new())
    }

    /// Removes the queued, undispatched deliveries of one consumer.
    fn take_pending(&self, consumer_tag: &str) -> Vec<Delivery> {
        let mut st = self.core().lock();
        let mut taken = Vec::new();
        let mut kept = std::collections::VecDeque::with_capacity(st.deliveries.len());
        for d in st.deliveries.drain(..) {
            if d.method.consumer_tag.as_str() == consumer_tag {
                taken.push(d);
            } else {
                kept.push_back(d);
            }
        }
        st.deliveries = kept;
        st.buffered -= taken.iter().map(|d| d.body.len()).sum::<usize>();
        taken
    }

    fn wake_consumer_loop(&self) {
        let _st = self.core().lock();
        self.core().cond.notify_all();
    }

    /// The tags of this channel's consumers (pika's `consumer_tags`).
    pub fn consumer_tags(&self) -> Vec<String> {
        self.lock_consumers().keys().cloned().collect()
    }

    /// Cancels every consumer of the channel (pika's `stop_consuming()`), which makes
    /// [`start_consuming`](Self::start_consuming) return. Callable from a callback or from
    /// another thread.
    pub fn stop_consuming(&self) -> Result<()> {
        let tags = self.consumer_tags();
        for tag in tags {
            self.basic_cancel(&tag)?;
        }
        Ok(())
    }

    /// Runs consumer callbacks on this thread until every consumer of the channel is cancelled
    /// (by [`stop_consuming`](Self::stop_consuming), [`basic_cancel`](Self::basic_cancel) or the
    /// broker), a callback fails, or the channel closes (pika's `start_consuming`).
    ///
    /// Calling it from inside a callback of the same channel, or while another thread is in
    /// it, is [`Error::Reentrancy`].
    pub fn start_consuming(&self) -> Result<()> {
        if self.inner.consuming.swap(true, Ordering::SeqCst) {
            return Err(Error::Reentrancy);
        }
        struct Reset<'a>(&'a Channel);
        impl Drop for Reset<'_> {
            fn drop(&mut self) {
                self.0.inner.consuming.store(false, Ordering::SeqCst);
            }
        }
        let _reset = Reset(self);
        while let Some(delivery) = self.next_delivery()? {
            self.dispatch(delivery)?;
        }
        Ok(())
    }

    /// Waits for the next delivery; `None` once no consumer is left.
    fn next_delivery(&self) -> Result<Option<Delivery>> {
        let core = self.core();
        let mut st = core.lock();
        loop {
            if let Some(delivery) = st.deliveries.pop_front() {
                st.buffered -= delivery.body.len();
                let buffered = st.buffered;
                drop(st);
                let conn = &self.inner.owner.core;
                if buffered <= INBOUND_CHANNEL_LIMIT / 2 && conn.read_paused.load(Ordering::SeqCst)
                {
                    conn.wake();
                }
                return Ok(Some(delivery));
            }
            if !st.cancelled.is_empty() {
                let mut consumers = self.lock_consumers();
                for tag in st.cancelled.drain(..) {
                    consumers.remove(&tag);
                }
            }
            if let Some(e) = st.closed_error() {
                return Err(e);
            }
            if self.lock_consumers().is_empty() {
                return Ok(None);
            }
            st = core.cond.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Runs the callback of the delivery's consumer.
    fn dispatch(&self, delivery: Delivery) -> Result<()> {
        let tag = delivery.method.consumer_tag.as_str();
        let taken = self
            .lock_consumers()
            .get_mut(tag)
            .and_then(|e| e.callback.take());
        let Some(mut callback) = taken else {
            // Its consumer was cancelled while we took the message. Whether it was auto-acked
            // is gone with the consumer, so leave it: unacked, the broker requeues it when the
            // channel closes.
            log::debug!("dropping a delivery for cancelled consumer {tag}");
            return Ok(());
        };
        let result = callback(self, &delivery.method, &delivery.properties, &delivery.body);
        if let Some(entry) = self.lock_consumers().get_mut(tag) {
            entry.callback = Some(callback);
        }
        result
    }
}
