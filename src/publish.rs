//! Publishing: `basic_publish` (waiting for the confirm in confirm mode, as pika does),
//! `basic_publish_deferred` and `wait_for_confirms` for windows, and `confirm_delivery`.

use std::time::Duration;

use amq_protocol::protocol::{confirm, AMQPClass};

use crate::channel::{ensure_open, unexpected, Channel};
use crate::engine::chan::Reply;
use crate::engine::{deadline_after, with_scratch};
use crate::error::{Error, Result};
use crate::protocol::confirms::{fingerprint, ConfirmOutcome, ConfirmTracker, Settled};
use crate::protocol::properties::BasicProperties;
use crate::protocol::publish_cache::PublishCache;

impl Channel {
    /// Publishes a message (pika's `basic_publish(exchange, routing_key, body, properties=None,
    /// mandatory=False)`).
    ///
    /// The method, header and body frames are queued as one unit (bodies split at
    /// `frame_max - 8`). Without confirm mode this returns as soon as they are queued. In
    /// confirm mode (after [`confirm_delivery`](Self::confirm_delivery)) it waits for the
    /// broker's confirm, as pika does, and reports a nack as [`Error::Nack`] and a mandatory
    /// message returned unroutable as [`Error::Unroutable`]. To publish many messages and wait
    /// once, use [`basic_publish_deferred`](Self::basic_publish_deferred) and
    /// [`wait_for_confirms`](Self::wait_for_confirms).
    pub fn basic_publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: &BasicProperties,
        mandatory: bool,
    ) -> Result<()> {
        let Some(seq) = self.publish(exchange, routing_key, body, properties, mandatory)? else {
            return Ok(());
        };
        let timeout = self.rpc_timeout();
        let settled = self.inner.owner.core.wait_on(
            self.core(),
            deadline_after(timeout),
            |st| {
                let tracker = st.confirms.as_mut()?;
                if tracker.is_outstanding(seq) {
                    return None;
                }
                let settled = tracker.take_outcome_of(seq);
                if matches!(settled, Settled::Returned { .. }) {
                    // Reported as the error below, so it leaves the queue for the return
                    // callbacks: this message's own return, not another one.
                    st.take_return_of(seq);
                }
                Some(settled)
            },
            |_| Error::timeout(format!("waiting for the confirm of message {seq}"), timeout),
        )?;
        match settled {
            Settled::Acked => Ok(()),
            Settled::Nacked => Err(Error::Nack { delivery_tag: seq }),
            Settled::Returned {
                reply_code,
                reply_text,
            } => Err(Error::Unroutable {
                reply_code,
                reply_text,
            }),
        }
    }

    /// Publishes without waiting for the confirm, returning the message's publish sequence
    /// number in confirm mode (0 otherwise). Wait for a window of them with
    /// [`wait_for_confirms`](Self::wait_for_confirms). Not in pika.
    pub fn basic_publish_deferred(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: &BasicProperties,
        mandatory: bool,
    ) -> Result<u64> {
        Ok(self
            .publish(exchange, routing_key, body, properties, mandatory)?
            .unwrap_or(0))
    }

    /// Queues one publish; returns its sequence number in confirm mode.
    fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: &BasicProperties,
        mandatory: bool,
    ) -> Result<Option<u64>> {
        // Only a mandatory message can come back, so only it needs telling apart from the rest.
        let mandatory_fingerprint = mandatory.then(|| fingerprint(exchange, routing_key, body));
        let core = self.core();
        let send = |frames: &[u8]| {
            self.inner
                .owner
                .core
                .send_on(core, frames, Some(body), None, |st| {
                    ensure_open(st)?;
                    Ok(st
                        .confirms
                        .as_mut()
                        .map(|t| t.publish(mandatory_fingerprint)))
                })
        };
        // Another thread publishing on this channel has the cache (and may be waiting for
        // room): encode afresh rather than wait for it.
        let Ok(mut cache) = self.inner.publish_cache.try_lock() else {
            return with_scratch(|buf| {
                PublishCache::encode(
                    buf,
                    core.id,
                    exchange,
                    routing_key,
                    mandatory,
                    properties,
                    body.len() as u64,
                )?;
                send(buf)
            });
        };
        let frames = cache.frames(
            core.id,
            exchange,
            routing_key,
            mandatory,
            properties,
            body.len() as u64,
        )?;
        send(frames)
    }

    /// Turns on publisher confirms (pika's `confirm_delivery`): from now on
    /// [`basic_publish`](Self::basic_publish) waits for each message's confirm.
    pub fn confirm_delivery(&self) -> Result<()> {
        let method = AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
            nowait: false,
        }));
        {
            let mut st = self.core().lock();
            if st.confirms.is_none() {
                // Before the select goes out, so no ack can arrive ahead of the tracker.
                st.confirms = Some(ConfirmTracker::new());
            }
        }
        match self.rpc(method, "confirm.select")? {
            Reply::Method(AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_))) => Ok(()),
            other => Err(unexpected("confirm.select", other)),
        }
    }

    /// Waits until every message published so far in confirm mode is acked or nacked, at most
    /// `timeout` (the RPC timeout when `None`), and reports which were nacked or returned since
    /// the last call. Not in pika.
    pub fn wait_for_confirms(&self, timeout: Option<Duration>) -> Result<ConfirmOutcome> {
        let core = self.core();
        let timeout = timeout.unwrap_or_else(|| self.rpc_timeout());
        if core.lock().confirms.is_none() {
            return Err(Error::InvalidArgument(
                "wait_for_confirms needs confirm_delivery() first".into(),
            ));
        }
        self.inner.owner.core.wait_on(
            core,
            deadline_after(timeout),
            |st| {
                let tracker = st.confirms.as_mut()?;
                (!tracker.has_outstanding()).then(|| tracker.take_outcomes())
            },
            |st| {
                let last = st
                    .confirms
                    .as_ref()
                    .map_or(0, ConfirmTracker::last_published);
                Error::timeout(
                    format!("waiting for confirms up to message {last}"),
                    timeout,
                )
            },
        )
    }
}
