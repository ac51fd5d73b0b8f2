//! Per-channel state shared between the I/O thread (which fills it) and the channel handles
//! (which wait on it): the reply slot of the one outstanding synchronous method, the bounded
//! queue of deliveries, returns, confirm tracking and the close reason.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

use amq_protocol::protocol::AMQPClass;

use crate::delivery::{Delivery, GetMessage, Returned};
use crate::engine::wait_until;
use crate::error::Error;
use crate::protocol::acks::AckRun;
use crate::protocol::confirms::ConfirmTracker;

/// Returns kept for a channel that has no return callback yet; older ones are dropped beyond it.
pub(crate) const RETURNS_KEPT: usize = 10_000;
/// Broker cancels kept until the consumer loop sees them; a peer repeating them gains nothing.
pub(crate) const CANCELS_KEPT: usize = 1_000;

/// What a queued delivery counts for inbound back-pressure: its body plus what the message
/// costs besides (method, properties, queue slot), so a flood of empty messages is bounded too.
pub(crate) fn weight(delivery: &Delivery) -> usize {
    delivery.body.len() + 512
}

/// A reply to a synchronous method. Lives only in the reply slot, one at a time per channel, so
/// its size does not matter.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Reply {
    Method(AMQPClass),
    Get(GetMessage),
}

/// Where a channel is in its life.
#[derive(Debug)]
pub(crate) enum Life {
    /// channel.open sent, open-ok not yet seen, or open.
    Open,
    /// We sent channel.close and wait for close-ok.
    Closing,
    /// Closed, with the reason every later call gets.
    Closed(Error),
}

/// Mutable channel state, behind [`ChannelCore::state`].
#[derive(Debug)]
pub(crate) struct ChanState {
    pub(crate) life: Life,
    /// A synchronous method was sent and its reply is awaited.
    pub(crate) awaiting: bool,
    pub(crate) reply: Option<Reply>,
    /// Replies still to come for requests whose caller gave up (timed out): dropped on arrival.
    pub(crate) stale: u32,
    pub(crate) deliveries: VecDeque<Delivery>,
    /// What `deliveries` weighs ([`weight`]); inbound back-pressure counts this.
    pub(crate) buffered: usize,
    pub(crate) returns: VecDeque<Returned>,
    pub(crate) confirms: Option<ConfirmTracker>,
    /// Consumer tags the broker cancelled (queue deleted...), not yet seen by the consumer loop.
    pub(crate) cancelled: Vec<String>,
    /// Which deliveries are settled, and acks held for merging.
    pub(crate) acks: AckRun,
}

/// One channel as the connection knows it.
#[derive(Debug)]
pub(crate) struct ChannelCore {
    pub(crate) id: u16,
    pub(crate) state: Mutex<ChanState>,
    /// Signalled on every change of `state` (through [`notify`](Self::notify)).
    cond: Condvar,
    /// Threads waiting on `cond`: a notification costs a system call, so none is made
    /// without them.
    waiters: AtomicUsize,
    /// Held across a synchronous method: AMQP allows one outstanding per channel.
    pub(crate) rpc_lock: Mutex<()>,
}

impl ChannelCore {
    pub(crate) fn new(id: u16) -> Self {
        ChannelCore {
            id,
            state: Mutex::new(ChanState {
                life: Life::Open,
                awaiting: false,
                reply: None,
                stale: 0,
                deliveries: VecDeque::new(),
                buffered: 0,
                returns: VecDeque::new(),
                confirms: None,
                cancelled: Vec::new(),
                acks: AckRun::default(),
            }),
            cond: Condvar::new(),
            waiters: AtomicUsize::new(0),
            rpc_lock: Mutex::new(()),
        }
    }

    /// Locks the state. A panic while holding it cannot leave it inconsistent in a way that
    /// matters more than a lost connection, so poisoning is ignored.
    pub(crate) fn lock(&self) -> MutexGuard<'_, ChanState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the channel closed with `error` (unless it already is) and wakes every waiter.
    pub(crate) fn fail(&self, error: &Error) {
        let mut st = self.lock();
        if !matches!(st.life, Life::Closed(_)) {
            st.life = Life::Closed(error.clone());
        }
        st.awaiting = false;
        drop(st);
        self.notify();
    }

    /// Wakes the threads waiting for a change of the state (made before this call, under
    /// the lock).
    pub(crate) fn notify(&self) {
        // A waiter counts itself under the lock before it waits, and the change was made
        // under the lock: a waiter that missed the change is counted here.
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.cond.notify_all();
        }
    }

    /// Waits for a notification (or a spurious wake-up), at most until `deadline`; `Err`
    /// with the guard back once the deadline has passed.
    pub(crate) fn wait<'a>(
        &self,
        st: MutexGuard<'a, ChanState>,
        deadline: Option<Instant>,
    ) -> Result<MutexGuard<'a, ChanState>, MutexGuard<'a, ChanState>> {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let woken = match deadline {
            None => Ok(self.cond.wait(st).unwrap_or_else(|p| p.into_inner())),
            Some(deadline) => wait_until(&self.cond, st, deadline),
        };
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        woken
    }
}

impl ChanState {
    /// The error a call on this channel gets now, if it is closed.
    pub(crate) fn closed_error(&self) -> Option<Error> {
        match &self.life {
            Life::Closed(e) => Some(e.clone()),
            _ => None,
        }
    }

    /// Hands a synchronous reply to its waiter. Returns false when nobody asked for it.
    pub(crate) fn deliver_reply(&mut self, reply: Reply) -> bool {
        if self.stale > 0 {
            self.stale -= 1;
            return true;
        }
        if !self.awaiting {
            return false;
        }
        self.awaiting = false;
        self.reply = Some(reply);
        true
    }

    /// Records a broker cancel of `consumer_tag` (once, and at most [`CANCELS_KEPT`]).
    pub(crate) fn push_cancel(&mut self, consumer_tag: String) {
        if self.cancelled.len() < CANCELS_KEPT && !self.cancelled.contains(&consumer_tag) {
            self.cancelled.push(consumer_tag);
        }
    }

    pub(crate) fn push_return(&mut self, returned: Returned) {
        if let Some(tracker) = self.confirms.as_mut() {
            tracker.on_return();
        }
        if self.returns.len() >= RETURNS_KEPT {
            log::warn!("dropping the oldest of {RETURNS_KEPT} unhandled returned messages");
            self.returns.pop_front();
        }
        self.returns.push_back(returned);
    }
}
