//! Publishing: `basic_publish` (waiting for the confirm in confirm mode, as pika does),
//! `basic_publish_deferred` and `wait_for_confirms` for windows, and `confirm_delivery`.

use std::time::{Duration, Instant};

use amq_protocol::protocol::{confirm, AMQPClass};

use crate::channel::{ensure_open, unexpected, Channel};
use crate::delivery::Returned;
use crate::engine::chan::{ChanState, Reply, Stale};
use crate::engine::{deadline_after, with_scratch};
use crate::error::{Error, Result};
use crate::options::PublishOptions;
use crate::protocol::confirms::{fingerprint, ConfirmTracker, Settled};
use crate::protocol::methods::Message;
use crate::protocol::properties::BasicProperties;
use crate::protocol::publish_cache::PublishCache;

/// How [`Channel::publish`] sends one message.
pub(crate) struct Publish {
    /// basic.publish's `mandatory` flag.
    pub(crate) mandatory: bool,
    /// The call's own deadline for room and for a blocked connection (see `publish`).
    pub(crate) deadline: Option<Instant>,
    /// In confirm mode, the caller waits for this message's outcome itself: a
    /// `wait_for_confirms` on another thread must not take it (`ConfirmTracker::claim`).
    pub(crate) claim: bool,
}

/// What happened to the messages published since the last
/// [`wait_for_confirms`](Channel::wait_for_confirms): which were nacked and which came back
/// unroutable. Not in pika, whose blocking channel confirms one message at a time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfirmOutcome {
    /// Publish sequence numbers (as [`basic_publish_deferred`](Channel::basic_publish_deferred)
    /// returned them) that the broker nacked, ascending. cottontail keeps no copy of a body
    /// after it is written, so a nacked message is known by its number: republish it from
    /// your own copy.
    pub nacked: Vec<u64>,
    /// Sequence numbers of mandatory messages returned as unroutable (then acked), ascending.
    pub returned: Vec<u64>,
    /// The returned messages themselves, with their sequence numbers: copies when a return
    /// callback is registered (it gets them too, as in pika), else taken from the channel's
    /// returned messages (nothing is kept for a callback registered later). A return
    /// that a return callback already handled (on a thread consuming this channel meanwhile),
    /// or that was not kept because too many returns waited unhandled (see
    /// [`Channel::add_on_return_callback`]), is in [`returned`](Self::returned) but not here.
    pub returned_messages: Vec<(u64, Returned)>,
    /// Sequence numbers of messages whose confirm had not come when the connection was lost
    /// (with recovery on): they may or may not have reached their queues. Never reported as
    /// confirmed; publish them again if duplicates are acceptable.
    pub unknown: Vec<u64>,
}

impl ConfirmOutcome {
    /// True when every message was acked and none was returned.
    pub fn all_confirmed(&self) -> bool {
        self.nacked.is_empty() && self.returned.is_empty() && self.unknown.is_empty()
    }
}

impl Channel {
    /// Publishes a message with no properties to `exchange` with `routing_key` (pika's
    /// `basic_publish(exchange, routing_key, body)`): the common case. For properties or
    /// `mandatory`, use [`basic_publish_with`](Self::basic_publish_with).
    ///
    /// ```no_run
    /// # let connection = cottontail::Connection::open(cottontail::ConnectionParameters::default())?;
    /// # let channel = connection.channel()?;
    /// channel.basic_publish("", "hello", b"Hello World!")?;
    /// # Ok::<(), cottontail::Error>(())
    /// ```
    ///
    /// The method, header and body frames are queued as one unit (bodies split at
    /// `frame_max - 8`). Without confirm mode this returns as soon as they are queued. In
    /// confirm mode (after [`confirm_delivery`](Self::confirm_delivery)) it waits for the
    /// broker's confirm, as pika does, and reports a nack as [`Error::Nack`] and a mandatory
    /// message returned unroutable as [`Error::Unroutable`], each carrying the message. To
    /// publish many messages and wait once, use
    /// [`basic_publish_deferred`](Self::basic_publish_deferred) and
    /// [`wait_for_confirms`](Self::wait_for_confirms).
    ///
    /// While the broker blocks the connection (`connection.blocked`: a memory or disk alarm)
    /// the publish waits until it is unblocked (the connection goes on reading meanwhile, so
    /// the broker's `connection.unblocked` is seen), and so does the wait for its confirm,
    /// which has `rpc_timeout` counted without the time blocked; set
    /// [`blocked_connection_timeout`](crate::ConnectionParameters::with_blocked_connection_timeout)
    /// to bound that wait (the connection then ends with
    /// [`Error::ConnectionBlockedTimeout`]). When the broker reads nothing, it waits at most
    /// `rpc_timeout` for room in the outbound buffer ([`Error::Timeout`], nothing queued).
    pub fn basic_publish(&self, exchange: &str, routing_key: &str, body: &[u8]) -> Result<()> {
        self.basic_publish_with(exchange, routing_key, body, &PublishOptions::default())
    }

    /// Publishes a message with properties and flags (pika's `basic_publish(exchange,
    /// routing_key, body, properties=None, mandatory=False)`); otherwise as
    /// [`basic_publish`](Self::basic_publish). The options are borrowed, so a loop can
    /// publish many messages with one set of properties.
    ///
    /// ```no_run
    /// # let connection = cottontail::Connection::open(cottontail::ConnectionParameters::default())?;
    /// # let channel = connection.channel()?;
    /// use cottontail::{BasicProperties, DeliveryMode, PublishOptions};
    ///
    /// let options = PublishOptions {
    ///     properties: BasicProperties::default().with_delivery_mode(DeliveryMode::Persistent),
    ///     mandatory: true,
    /// };
    /// channel.basic_publish_with("", "task_queue", b"work", &options)?;
    /// # Ok::<(), cottontail::Error>(())
    /// ```
    pub fn basic_publish_with(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        options: &PublishOptions,
    ) -> Result<()> {
        let PublishOptions {
            properties,
            mandatory,
        } = options;
        let publish = Publish {
            mandatory: *mandatory,
            deadline: None,
            claim: true,
        };
        let Some(seq) = self.publish(exchange, routing_key, body, properties, publish)? else {
            return Ok(());
        };
        let timeout = self.rpc_timeout();
        let first_deadline = deadline_after(timeout);
        let mut deadline = first_deadline;
        let settled = loop {
            let conn = self.inner.owner.core();
            let waited = conn.wait_on(
                self.core(),
                deadline,
                |st| {
                    let tracker = st.confirms.as_mut()?;
                    if tracker.is_outstanding(seq) {
                        return None;
                    }
                    let settled = tracker.take_outcome_of(seq);
                    // Asked only for a return (one lock), under the channel's (the order the
                    // consumer loop takes them in).
                    if matches!(settled, Settled::Returned { .. }) && !self.has_return_callbacks() {
                        // Reported as the error below, and no return callback to run as well (as
                        // pika runs both): it leaves the queue, this message's own return.
                        st.returns.take_of(seq);
                    }
                    Some(settled)
                },
                |_| Error::timeout(format!("waiting for the confirm of message {seq}"), timeout),
            );
            // A broker blocking the connection holds the confirm back: that time does not
            // count (see `Core::blocked_extension`), so a message the broker takes once
            // unblocked is not reported as a timeout, and published again by the caller.
            // (When the wait began: no clock read on the way of every publish.)
            let started = first_deadline.and_then(|d| d.checked_sub(timeout));
            match (&waited, started) {
                (Err(Error::Timeout { .. }), Some(started)) => {
                    match conn.blocked_extension(started, timeout) {
                        Some(later) => deadline = later,
                        None => break waited,
                    }
                }
                _ => break waited,
            }
        };
        let settled = settled.inspect_err(|_| {
            // Given up: the outcome goes to the next `wait_for_confirms`.
            if let Some(tracker) = self.core().lock().confirms.as_mut() {
                tracker.release(seq);
            }
        })?;
        // The error path only: the caller's message is copied into the error.
        let message = || {
            Box::new(Message::new(
                exchange,
                routing_key,
                properties.clone(),
                body.to_vec(),
            ))
        };
        match settled {
            Settled::Acked => Ok(()),
            Settled::Nacked => Err(Error::Nack {
                delivery_tag: seq,
                message: message(),
            }),
            Settled::Returned {
                reply_code,
                reply_text,
            } => Err(Error::Unroutable {
                reply_code,
                reply_text,
                message: message(),
            }),
            Settled::Unknown => Err(Error::ConfirmUnknown {
                delivery_tag: seq,
                message: message(),
            }),
        }
    }

    /// Publishes without waiting for the confirm, returning the message's publish sequence
    /// number in confirm mode (0 otherwise). Wait for a window of them with
    /// [`wait_for_confirms`](Self::wait_for_confirms). Not in pika.
    ///
    /// What goes wrong with deferred publishes (nacked, returned unroutable, or outstanding
    /// at a connection loss) is kept, a few dozen bytes per message, until the next
    /// `wait_for_confirms` reports it: a program that publishes deferred calls it now and
    /// then, as it must to learn which messages the broker did not take.
    pub fn basic_publish_deferred(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        options: &PublishOptions,
    ) -> Result<u64> {
        Ok(self
            .publish(
                exchange,
                routing_key,
                body,
                &options.properties,
                Publish {
                    mandatory: options.mandatory,
                    deadline: None,
                    claim: false,
                },
            )?
            .unwrap_or(0))
    }

    /// Queues one publish; returns its sequence number in confirm mode. Waits for room in the
    /// outbound buffer until `deadline` (`None`: at most the RPC timeout), and while the broker
    /// blocks the connection until `deadline` (`None`: until it unblocks it, or
    /// `blocked_connection_timeout` ends the connection); past `deadline` it returns
    /// [`Error::Timeout`] with nothing queued. Only `RpcClient::call` gives a deadline.
    pub(crate) fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: &BasicProperties,
        Publish {
            mandatory,
            deadline,
            claim,
        }: Publish,
    ) -> Result<Option<u64>> {
        // Only a mandatory message can come back, so only it needs telling apart from the rest.
        let mandatory_fingerprint = mandatory.then(|| fingerprint(exchange, routing_key, body));
        let core = self.core();
        let owner = &self.inner.owner;
        // While the connection recovers: wait for it (within the publish's deadline, or the
        // RPC timeout), then publish on the new connection.
        let until = || deadline.or_else(|| deadline_after(self.rpc_timeout()));
        let mut give_up_at = None;
        let mut send = |frames: &[u8]| loop {
            let conn = owner.ready_core(until)?;
            let sent = conn.send_on(core, frames, Some(body), deadline, |st| {
                ensure_open(st)?;
                Ok(st.confirms.as_mut().map(|t| {
                    let seq = t.publish(mandatory_fingerprint);
                    if claim {
                        t.claim(seq);
                    }
                    seq
                }))
            });
            match sent {
                Err(e) if self.lost() => {
                    let at: Option<Instant> = *give_up_at.get_or_insert_with(until);
                    if at.is_some_and(|at| Instant::now() >= at) {
                        return Err(e);
                    }
                }
                sent => return sent,
            }
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
        // Made as the select is queued, under the channel's lock publishes take their sequence
        // numbers under: the broker numbers exactly the publishes queued after the select, and
        // no ack can arrive ahead of the tracker.
        let tracker = |st: &mut ChanState| {
            if st.confirms.is_none() {
                st.confirms = Some(ConfirmTracker::new());
            }
        };
        match self.rpc_with(method, "confirm.select", Stale::Method, tracker)? {
            Reply::Method(AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_))) => Ok(()),
            other => Err(unexpected("confirm.select", other)),
        }
    }

    /// Waits until every message published so far in confirm mode is acked or nacked, at most
    /// `timeout` (the RPC timeout when `None`), and reports which were nacked or returned since
    /// the last call, with the returned messages. A message published with
    /// [`basic_publish_with`](Self::basic_publish_with) is waited for here too, but its outcome
    /// is its own call's to report, not this one's (unless that call gave up on a timeout).
    /// Not in pika.
    ///
    /// If the channel or the connection closes first (the broker refused a publish with 404,
    /// say), this returns that error and no outcome: treat every message published since the
    /// last call that returned `Ok` as of unknown fate. (With recovery on, a connection loss
    /// instead reports the messages it left unconfirmed in [`ConfirmOutcome::unknown`].)
    pub fn wait_for_confirms(&self, timeout: Option<Duration>) -> Result<ConfirmOutcome> {
        let core = self.core();
        let timeout = timeout.unwrap_or_else(|| self.rpc_timeout());
        if core.lock().confirms.is_none() {
            return Err(Error::InvalidArgument(
                "wait_for_confirms needs confirm_delivery() first".into(),
            ));
        }
        let to_callbacks = self.has_return_callbacks();
        self.inner.owner.core().wait_on(
            core,
            deadline_after(timeout),
            |st| {
                let tracker = st.confirms.as_mut()?;
                if tracker.has_outstanding() {
                    return None;
                }
                let outcomes = tracker.take_outcomes();
                // Copies when the return callbacks get them too (as in pika).
                let returned_messages = outcomes
                    .returned
                    .iter()
                    .filter_map(|&seq| match to_callbacks {
                        true => st.returns.of(seq).map(|m| (seq, m)),
                        false => st.returns.take_of(seq).map(|m| (seq, m)),
                    })
                    .collect();
                Some(ConfirmOutcome {
                    nacked: outcomes.nacked,
                    returned: outcomes.returned,
                    returned_messages,
                    unknown: outcomes.unknown,
                })
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
