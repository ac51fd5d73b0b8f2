//! The returned messages (`basic.return`) a channel keeps for its return callbacks until one
//! runs: bounded in bytes for the channel ([`RETURNS_KEPT_BYTES`], its oldest go first) and
//! for the connection ([`RETURNS_KEPT_TOTAL`], counted in `Core::returns_kept`: past it a new
//! one is not kept). Every drop is logged. Lives in the channel's state (`ChanState::returns`),
//! under the channel's lock.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use super::chan::{weight, Held, InboundMeter};
use crate::delivery::Returned;

/// Bytes (by [`weight`]: body, properties, per-message allowance) of unhandled returned messages
/// a channel keeps for return callbacks not yet run or registered; beyond it its oldest are
/// dropped (with a warning).
pub(crate) const RETURNS_KEPT_BYTES: usize = 16 * 1024 * 1024;
/// What a connection keeps of them on all its channels together (a peer could return messages
/// on every channel); beyond it a new one is not kept (with a warning). Four channels' worth,
/// so one channel nobody handles returns for does not crowd out the others'.
pub(crate) const RETURNS_KEPT_TOTAL: usize = 4 * RETURNS_KEPT_BYTES;

/// A channel's kept returns, each with the publish sequence number the confirm tracker charged
/// it to (see `protocol::confirms`), if any.
#[derive(Debug, Default)]
pub(crate) struct KeptReturns {
    returns: VecDeque<(Option<u64>, Held<Returned>)>,
    /// Bytes (by [`weight`]) in `returns`.
    bytes: usize,
}

impl KeptReturns {
    /// Keeps `returned` (charged to publish `seq`, numbered `arrival` in the channel's
    /// arrivals) within both bounds (module docs); `kept` is the connection's count.
    pub(crate) fn push(
        &mut self,
        seq: Option<u64>,
        returned: Returned,
        arrival: u64,
        kept: &InboundMeter,
    ) {
        let size = weight(&returned.body, &returned.properties);
        while self.bytes + size > RETURNS_KEPT_BYTES {
            let Some(old) = self.pop() else {
                break;
            };
            warn_dropped(&old, "of this channel's");
        }
        let total = kept.load(Ordering::SeqCst);
        if total > 0 && total + size > RETURNS_KEPT_TOTAL {
            warn_dropped(&returned, "of this connection's");
            return;
        }
        self.bytes += size;
        let held = Held::metered(returned, size, kept).arriving(arrival);
        self.returns.push_back((seq, held));
    }

    /// Whether returned messages wait for the return callbacks.
    pub(crate) fn is_empty(&self) -> bool {
        self.returns.is_empty()
    }

    /// The place in the channel's arrivals of the oldest returned message, if any (one put
    /// back with [`unpop`](Self::unpop) is first: 0).
    pub(crate) fn first_arrival(&self) -> Option<u64> {
        self.returns.front().map(|(_, held)| held.arrival())
    }

    /// Takes the oldest returned message, if any.
    pub(crate) fn pop(&mut self) -> Option<Returned> {
        let (_, held) = self.returns.pop_front()?;
        Some(self.untrack(held))
    }

    /// Puts back a return taken with [`pop`](Self::pop), first in line (no longer charged to
    /// a publish), counted in `kept` again.
    pub(crate) fn unpop(&mut self, returned: Returned, kept: &InboundMeter) {
        let size = weight(&returned.body, &returned.properties);
        self.bytes += size;
        self.returns
            .push_front((None, Held::metered(returned, size, kept)));
    }

    /// The returned message charged to publish `seq`, if it is still kept (it stays, for the
    /// return callbacks).
    pub(crate) fn of(&self, seq: u64) -> Option<Returned> {
        self.returns
            .iter()
            .find(|(s, _)| *s == Some(seq))
            .map(|(_, held)| held.value().clone())
    }

    /// Takes the returned message charged to publish `seq`, if it is still kept.
    pub(crate) fn take_of(&mut self, seq: u64) -> Option<Returned> {
        let i = self.returns.iter().position(|(s, _)| *s == Some(seq))?;
        let (_, held) = self.returns.remove(i)?;
        Some(self.untrack(held))
    }

    /// They leave the connection's count (their channel is closed).
    pub(crate) fn unmeter(&mut self) {
        self.returns.iter_mut().for_each(|(_, held)| held.unmeter());
    }

    /// They count in `kept` instead (a recovery's new connection).
    pub(crate) fn remeter(&mut self, kept: &InboundMeter) {
        self.returns.iter_mut().for_each(|(_, h)| h.remeter(kept));
    }

    /// Drops those no return callback took, logged (the channel goes).
    pub(crate) fn drop_all(&mut self, channel: u16) {
        if !self.returns.is_empty() {
            log::info!(
                "channel {channel} dropped with {} returned message(s) no return callback took",
                self.returns.len()
            );
            self.returns.clear();
            self.bytes = 0;
        }
    }

    fn untrack(&mut self, held: Held<Returned>) -> Returned {
        let returned = held.take();
        self.bytes -= weight(&returned.body, &returned.properties);
        returned
    }
}

/// Logs a returned message dropped unhandled: `whose` bound it is over.
fn warn_dropped(returned: &Returned, whose: &str) {
    log::warn!(
        "dropping an unhandled returned message ({} bytes, routing key {:?}): the bound {whose} \
         returns waiting for a return callback is reached",
        returned.body.len(),
        returned.method.routing_key.as_str()
    );
}
