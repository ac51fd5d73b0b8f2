//! The return and cancel callbacks of a channel: registering them, and running them on the
//! consuming thread (`Channel::pump`).

use crate::callback::{self, CallbackReturn};
use crate::channel::Channel;
use crate::delivery::Returned;
use crate::error::Result;
use crate::events::run_callbacks;
use crate::protocol::methods::Return;
use crate::protocol::properties::BasicProperties;

#[cfg(doc)]
use crate::error::Error;

impl Channel {
    /// Registers a callback for mandatory messages the broker returns as unroutable (pika's
    /// `add_on_return_callback`). It runs on the consuming thread, inside
    /// [`start_consuming`](Self::start_consuming), while iterating [`consume`](Self::consume) or
    /// in [`Connection::process_data_events`](crate::Connection::process_data_events).
    ///
    /// It returns `()` or any `Result<(), E>` (see [`CallbackReturn`]); its error or panic ends
    /// the call that ran it, as a consumer callback's does ([`basic_consume`](Self::basic_consume)).
    /// When several are registered and one fails, the others still get the message; the first
    /// error is returned.
    ///
    /// Which returns reach it: every `basic.return` of the channel, in the order the broker
    /// sent them, each between the consumer callbacks of the deliveries it arrived between (as
    /// pika dispatches them; a return that arrived before any callback was registered runs
    /// when one is and the channel is next consumed). In confirm mode
    /// [`basic_publish_with`](Self::basic_publish_with) also reports its own message's return
    /// as [`Error::Unroutable`], and [`wait_for_confirms`](Self::wait_for_confirms) hands the
    /// returns of its window back in [`ConfirmOutcome::returned_messages`](crate::ConfirmOutcome)
    /// too (unless a return callback ran first), as pika both raises `UnroutableError` and runs
    /// the return callbacks; with no return callback registered, those reports take the
    /// return, and nothing is kept for a callback registered later. Returns nobody handles (no
    /// callback registered, or no thread consuming the channel) are kept for later callbacks up
    /// to 16 MiB per channel (beyond that its oldest are dropped) and 64 MiB per connection
    /// (beyond that a new one is not kept), each drop with a warning in the log. They go with
    /// the channel when its last handle is dropped.
    pub fn add_on_return_callback<F, R>(&self, mut callback: F)
    where
        F: FnMut(&Channel, &Return, &BasicProperties, &[u8]) -> R + Send + 'static,
        R: CallbackReturn,
    {
        {
            let mut callbacks = self.lock_callbacks();
            if callbacks.dropped {
                return;
            }
            callbacks.on_return.push(Box::new(
                move |ch: &Channel, method: &Return, properties: &BasicProperties, body: &[u8]| {
                    callback(ch, method, properties, body).into_result()
                },
            ));
        }
        self.inner.owner.core().nudge();
    }

    /// Whether a return callback is registered (a confirm then leaves its returned message for
    /// the callbacks as well).
    pub(crate) fn has_return_callbacks(&self) -> bool {
        !self.lock_callbacks().on_return.is_empty()
    }

    /// Registers a callback for consumers the broker cancels, e.g. because their queue was
    /// deleted (pika's `add_on_cancel_callback`). The consumer is removed, and
    /// `start_consuming` returns once no consumer is left. As in pika, it runs for
    /// [`basic_consume`](Self::basic_consume) consumers: a [`consume`](Self::consume) iterator
    /// hears of it by ending.
    ///
    /// It returns `()` or any `Result<(), E>` (see [`CallbackReturn`]); its error or panic ends
    /// the call that ran it, as a consumer callback's does ([`basic_consume`](Self::basic_consume)).
    /// When several are registered and one fails, the others still hear of the cancel; the
    /// first error is returned.
    pub fn add_on_cancel_callback<F, R>(&self, mut callback: F)
    where
        F: FnMut(&Channel, &str) -> R + Send + 'static,
        R: CallbackReturn,
    {
        let mut callbacks = self.lock_callbacks();
        if !callbacks.dropped {
            callbacks
                .on_cancel
                .push(Box::new(move |ch: &Channel, tag: &str| {
                    callback(ch, tag).into_result()
                }));
        }
    }

    pub(super) fn run_return_callbacks(&self, returned: Returned) -> Result<()> {
        let ran = run_callbacks(
            || self.lock_callbacks(),
            |c| &mut c.on_return,
            |cb| {
                callback::call_for(
                    self.inner.owner.id(),
                    || format!("a return callback of channel {}", self.channel_number()),
                    || cb(self, &returned.method, &returned.properties, &returned.body),
                )
            },
        );
        // Returns are popped only while callbacks are registered (`next_event`): none here
        // means another thread is running them. The return goes back, first in line, and
        // whoever puts a return back or the list back wakes the waiters, so one of them looks
        // again once both are back.
        let ran = match ran {
            Some(result) => result,
            None => {
                let kept = self.inner.owner.core().returns_kept.clone();
                self.core().lock().returns.unpop(returned, &kept);
                Ok(())
            }
        };
        if !self.core().lock().returns.is_empty() {
            self.inner.owner.core().nudge();
        }
        ran
    }

    pub(super) fn run_cancel_callbacks(&self, tag: &str) -> Result<()> {
        let ran = run_callbacks(
            || self.lock_callbacks(),
            |c| &mut c.on_cancel,
            |cb| {
                callback::call_for(
                    self.inner.owner.id(),
                    || {
                        format!(
                            "a cancel callback of channel {} (consumer {tag})",
                            self.channel_number()
                        )
                    },
                    || cb(self, tag),
                )
            },
        );
        ran.unwrap_or(Ok(()))
    }
}
