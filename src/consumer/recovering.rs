//! What consuming does around a connection's recovery (see `recovery`): waiting for it,
//! which callback errors it goes on after, and which held deliveries are stale (also after
//! a close).

use std::time::Instant;

use crate::channel::Channel;
use crate::engine::chan::{Held, Life};
use crate::error::{Error, Result};
use crate::recovery::Waited;

impl Channel {
    /// Waits while the connection recovers (see `recovery`), at most until `deadline`,
    /// running the connection's callbacks (recovery events, timers, threadsafe callbacks) as
    /// they fall due. False if `deadline` passed first; the error of a callback that failed, as
    /// it is, or the error that closed the connection for good.
    pub(crate) fn wait_for_recovery(&self, deadline: Option<Instant>) -> Result<bool> {
        let owner = &self.inner.owner;
        let Some(recovery) = &owner.recovery else {
            return Ok(true);
        };
        let waited = owner.wait_recovered(
            recovery,
            || deadline,
            || owner.run_callbacks_while_recovering(),
        )?;
        Ok(matches!(waited, Waited::Ready(_)))
    }

    /// True once the connection is closed for good (recovery gave up, or the application
    /// closed it): what a consuming call waiting for a recovery then ends with is that error,
    /// not a callback's.
    pub(crate) fn closed_for_good(&self) -> bool {
        self.inner
            .owner
            .recovery
            .as_ref()
            .is_some_and(|r| r.closed_error().is_some())
    }

    /// A callback error a consuming call goes on after, logged: with recovery on (and not
    /// ended for good), a [`Error::StaleDeliveryTag`] (the callback acked a delivery from
    /// before a recovery) or a connection error (the connection was lost while the callback
    /// ran). The broker delivers such a message again, unless it was auto-acked.
    pub(crate) fn forgiven(&self, e: &Error) -> bool {
        let recovering = self
            .inner
            .owner
            .recovery
            .as_ref()
            .is_some_and(|r| r.closed_error().is_none());
        if !recovering || !(matches!(e, Error::StaleDeliveryTag { .. }) || e.is_connection_error())
        {
            return false;
        }
        log::warn!(
            "channel {}: a callback failed with the connection's loss or recovery ({e}); \
             going on (the broker delivers that message again unless it was auto-acked)",
            self.channel_number()
        );
        true
    }

    /// Whether a manual-ack delivery held for a consumer can no longer be acked, so it is
    /// dropped rather than handed out (the broker delivers it again): its channel is not open
    /// (the broker or the application closed it, the connection closed, or it is lost and
    /// recovering) or the delivery is from before a recovery. Auto-acked ones are handed out
    /// all the same: the broker counts them delivered. `next_event` applies the same rule to
    /// the channel's queue under the channel's lock.
    pub(super) fn stale_rule(&self) -> impl Fn(&Held) -> bool {
        let st = self.core().lock();
        let (open, generation) = (matches!(st.life, Life::Open), st.generation);
        move |held: &Held| !open || held.generation() < generation
    }
}
