//! Synchronous methods on a channel: sending a method and waiting for its reply
//! ([`Channel::rpc`]), the channel's turn (AMQP allows one outstanding method per channel),
//! and what a call does when the connection is lost with recovery on (it waits for the
//! recovery and sends again if nothing was sent; a call in flight fails with the loss).

use std::time::{Duration, Instant};

use amq_protocol::protocol::AMQPClass;

use super::Channel;
use crate::engine::chan::{ChanState, ChannelCore, Life, Reply, Stale};
use crate::engine::{deadline_after, with_scratch, Core};
use crate::error::{Error, Result};
use crate::protocol::codec;

/// Queues the encoded synchronous method `frame` on `conn` for channel `core`, within
/// `deadline`, and marks its reply awaited; `on_send` (taken, if still there) runs under the
/// channel's lock as it is queued. Refused (nothing queued) when the channel is not open.
/// Returns the channel's loss count at sending, for [`await_reply`].
pub(crate) fn send_request(
    conn: &Core,
    core: &ChannelCore,
    frame: &[u8],
    deadline: Option<Instant>,
    on_send: &mut Option<impl FnOnce(&mut ChanState)>,
) -> Result<u64> {
    conn.send_on(core, frame, None, deadline, |st| {
        ensure_open(st)?;
        st.awaiting = codec::Awaited::of(frame);
        st.reply = None;
        if let Some(on_send) = on_send.take() {
            on_send(st);
        }
        Ok(st.losses.0)
    })
}

/// Waits for the reply of the method [`send_request`] queued (when the channel had been
/// through `losses` connection losses), at most until `deadline` (`timeout` from the start,
/// for the error). `stale` says what to do with the reply if it comes after the deadline. A
/// loss of the connection meanwhile ends the wait with its error: the reply will not come,
/// and the channel (open again on a new connection, maybe) is left as it is.
pub(crate) fn await_reply(
    conn: &Core,
    core: &ChannelCore,
    losses: u64,
    deadline: Option<Instant>,
    timeout: Duration,
    what: &str,
    stale: Stale,
) -> Result<Reply> {
    let lost = |st: &ChanState| {
        (st.losses.0 != losses).then(|| {
            st.losses.1.clone().unwrap_or(Error::StreamLost {
                message: "the connection was lost".into(),
            })
        })
    };
    conn.wait_on(
        core,
        deadline,
        // A reply routed before the loss is still this waiter's.
        |st| match st.reply.is_some() && st.reply_losses == losses {
            true => st.reply.take().map(Ok),
            false => lost(st).map(Err),
        },
        |st| {
            if let Some(e) = lost(st) {
                return e;
            }
            // The reply may still come: it is checked against this request and dealt with
            // then (dropped, or a get-ok requeued), not taken for the next request's.
            let awaited = st.awaiting.take();
            st.stale.push_back((stale, awaited));
            Error::timeout(format!("waiting for the reply to {what}"), timeout)
        },
    )?
}

/// Sends a synchronous method on `core` through `conn` and waits for its reply, at most the
/// RPC timeout; no turn is taken and nothing is retried (for opening a channel, and for the
/// recovery's own calls while every other caller waits).
pub(crate) fn call(
    conn: &Core,
    core: &ChannelCore,
    method: AMQPClass,
    what: &str,
) -> Result<Reply> {
    call_until(
        conn,
        core,
        method,
        what,
        deadline_after(conn.params.rpc_timeout),
    )
}

/// [`call`] with a deadline of the caller's (one that started before this call).
pub(crate) fn call_until(
    conn: &Core,
    core: &ChannelCore,
    method: AMQPClass,
    what: &str,
    deadline: Option<Instant>,
) -> Result<Reply> {
    let timeout = conn.params.rpc_timeout;
    let losses = with_scratch(|buf| {
        codec::encode_method(buf, core.id, method)?;
        send_request(conn, core, buf, deadline, &mut None::<fn(&mut ChanState)>)
    })?;
    await_reply(conn, core, losses, deadline, timeout, what, Stale::Method)
}

/// Refuses a channel that is closed or closing.
#[inline]
pub(crate) fn ensure_open(st: &ChanState) -> Result<()> {
    match &st.life {
        Life::Open => Ok(()),
        Life::Closing(e) | Life::Closed(e) | Life::Lost(e) => Err(e.clone()),
    }
}

impl Channel {
    /// Sends a synchronous method and waits for its reply, at most the RPC timeout.
    pub(crate) fn rpc(&self, method: AMQPClass, what: &str) -> Result<Reply> {
        self.rpc_with(method, what, Stale::Method, |_| {})
    }

    /// [`rpc`](Self::rpc), running `on_send` under the channel's lock as the method is queued.
    /// `stale` says what to do with the reply if it comes after the deadline. The deadline
    /// covers the whole call: the turn after other callers on the channel, room to send, and
    /// the reply.
    pub(crate) fn rpc_with(
        &self,
        method: AMQPClass,
        what: &str,
        stale: Stale,
        on_send: impl FnOnce(&mut ChanState),
    ) -> Result<Reply> {
        let core = self.core();
        let timeout = self.rpc_timeout();
        let deadline = deadline_after(timeout);
        let mut on_send = Some(on_send);
        let (conn, _turn, losses) = with_scratch(|buf| {
            codec::encode_method(buf, core.id, method)?;
            loop {
                let conn = self.inner.owner.ready_core(|| deadline)?;
                let sent = self.rpc_turn(&conn, what, deadline).and_then(|turn| {
                    Ok((
                        turn,
                        send_request(&conn, core, buf, deadline, &mut on_send)?,
                    ))
                });
                match sent {
                    Ok((turn, losses)) => return Ok((conn, turn, losses)),
                    // Nothing was sent: wait for the recovery, then send on the new connection.
                    Err(_) if self.again_after_loss(deadline) => continue,
                    Err(e) => return Err(e),
                }
            }
        })?;
        await_reply(&conn, core, losses, deadline, timeout, what, stale)
    }

    /// True when a call that failed on a connection loss is to wait for the recovery and go
    /// on (rather than fail): recovery is on and has not ended for good, and the connection
    /// is recovering, or the channel is lost, or the current engine has just ended with a
    /// loss recovery handles (its recovery is starting).
    pub(crate) fn lost(&self) -> bool {
        let Some(recovery) = &self.inner.owner.recovery else {
            return false;
        };
        recovery.closed_error().is_none()
            && (recovery.is_recovering()
                || matches!(self.core().lock().life, Life::Lost(_))
                || self
                    .inner
                    .owner
                    .core()
                    .closed_error()
                    .is_some_and(|e| crate::recovery::recoverable(&e)))
    }

    /// Whether a call that sent nothing because of a lost connection is to wait for the
    /// recovery and send again: it is [`lost`](Self::lost), and `deadline` has not passed
    /// (should the channel stay lost).
    pub(crate) fn again_after_loss(&self, deadline: Option<Instant>) -> bool {
        self.lost() && deadline.is_none_or(|d| Instant::now() < d)
    }

    /// Waits for the channel's turn at a synchronous method (AMQP allows one outstanding per
    /// channel), at most until `deadline`.
    pub(super) fn rpc_turn(
        &self,
        conn: &Core,
        what: &str,
        deadline: Option<Instant>,
    ) -> Result<RpcTurn<'_>> {
        let core = self.core();
        {
            let mut st = core.lock();
            if !st.rpc_busy {
                st.rpc_busy = true;
                return Ok(RpcTurn(self));
            }
            st.rpc_queued += 1;
        }
        let got = conn.wait_until(deadline, || {
            let mut st = core.lock();
            if let Some(e) = st.ended_error() {
                return Some(Err(e));
            }
            if st.rpc_busy {
                return None;
            }
            st.rpc_busy = true;
            Some(Ok(()))
        });
        core.lock().rpc_queued -= 1;
        match got {
            Some(Ok(())) => Ok(RpcTurn(self)),
            Some(Err(e)) => Err(e),
            None => Err(Error::timeout(
                format!("waiting for the channel's previous method to finish before {what}"),
                self.rpc_timeout(),
            )),
        }
    }
}

/// The error for a reply of the wrong kind (a broker bug or a desynchronised channel).
pub(crate) fn unexpected(what: &str, reply: Reply) -> Error {
    let got = match reply {
        Reply::Method(m) => format!("{m:?}"),
        Reply::Get(_) => "basic.get-ok".into(),
    };
    Error::protocol(
        crate::error::COMMAND_INVALID,
        format!("unexpected reply to {what}: {got}"),
    )
}

/// The channel's turn at a synchronous method; ends when dropped, waking whoever waits for it.
pub(super) struct RpcTurn<'a>(&'a Channel);

impl Drop for RpcTurn<'_> {
    fn drop(&mut self) {
        let mut st = self.0.core().lock();
        st.rpc_busy = false;
        let queued = st.rpc_queued > 0;
        drop(st);
        if queued {
            self.0.inner.owner.core().nudge();
        }
    }
}
