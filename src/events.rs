//! Connection-level callbacks that run on the user's consuming thread, as pika runs them inside
//! `process_data_events`: timers (`call_later`), `add_callback_threadsafe` callbacks, and the
//! blocked / unblocked callbacks. Also `process_data_events` and `sleep` themselves.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crate::callback::{self, BoxError, CallbackReturn};
use crate::channel::{Channel, ChannelHandle};
use crate::connection::{Connection, Owner};
use crate::error::Result;
use crate::recovery::{RecoveryEvent, Waited};

/// A timer callback as cottontail keeps it (pika's `call_later` callback), its error boxed (see
/// [`Connection::call_later`]).
pub type TimerCallback = Box<dyn FnOnce() -> std::result::Result<(), BoxError> + Send>;
/// A callback queued from any thread as cottontail keeps it (pika's `add_callback_threadsafe`),
/// its error boxed (see [`Connection::add_callback_threadsafe`]).
pub type ThreadsafeCallback = Box<dyn FnOnce() -> std::result::Result<(), BoxError> + Send>;
/// A connection-blocked callback as cottontail keeps it, with the broker's reason (e.g. "low on
/// memory"), its error boxed (see [`Connection::add_on_connection_blocked_callback`]).
pub type BlockedCallback =
    Box<dyn FnMut(&Connection, &str) -> std::result::Result<(), BoxError> + Send>;
/// A connection-unblocked callback as cottontail keeps it, its error boxed (see
/// [`Connection::add_on_connection_unblocked_callback`]).
pub type UnblockedCallback =
    Box<dyn FnMut(&Connection) -> std::result::Result<(), BoxError> + Send>;

/// A recovery callback as cottontail keeps it, its error boxed (see
/// [`Connection::add_on_recovery_callback`]).
pub type RecoveryCallback =
    Box<dyn FnMut(&Connection, &RecoveryEvent) -> std::result::Result<(), BoxError> + Send>;

/// Recovery events kept for the callbacks; older ones are dropped.
const RECOVERY_EVENTS_KEPT: usize = 64;

/// Identifies a timer made by [`Connection::call_later`], for [`Connection::remove_timeout`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimeoutId(Instant, u64);

/// What the consuming threads of one connection share.
#[derive(Default)]
pub(crate) struct Dispatch {
    timers: BTreeMap<(Instant, u64), TimerCallback>,
    next_timer_id: u64,
    threadsafe: VecDeque<ThreadsafeCallback>,
    on_blocked: Vec<BlockedCallback>,
    on_unblocked: Vec<UnblockedCallback>,
    recovery_events: VecDeque<RecoveryEvent>,
    on_recovery: Vec<RecoveryCallback>,
    /// Every channel opened on the connection, for `process_data_events`.
    channels: Vec<Weak<ChannelHandle>>,
    /// The callbacks were dropped ([`Owner::drop_callbacks`]): none is kept any more, neither
    /// one registered later nor one put back after it ran.
    dropped: bool,
}

/// Callback lists that [`run_callbacks`] runs and puts back: not once they were dropped.
pub(crate) trait CallbackLists {
    /// The lists' callbacks were dropped for good (the connection or channel is closed).
    fn dropped(&self) -> bool;
}

impl CallbackLists for Dispatch {
    fn dropped(&self) -> bool {
        self.dropped
    }
}

/// Runs every callback of a list kept behind a lock, without holding the lock while they run
/// (a callback may use the connection, or register more callbacks: those are kept, after the
/// ones that were there, unless the lists were dropped meanwhile). Every callback runs,
/// whatever the others did; the first error is returned and later ones are logged. `None`,
/// with nothing run, when the list is empty: none registered, or another thread is running
/// them.
pub(crate) fn run_callbacks<S, G, C>(
    lock: impl Fn() -> G,
    list: impl Fn(&mut S) -> &mut Vec<C>,
    mut call: impl FnMut(&mut C) -> Result<()>,
) -> Option<Result<()>>
where
    G: std::ops::DerefMut<Target = S>,
    S: CallbackLists,
{
    let mut taken = std::mem::take(list(&mut lock()));
    if taken.is_empty() {
        return None;
    }
    let mut first = Ok(());
    for callback in &mut taken {
        if let Err(e) = call(callback) {
            if first.is_ok() {
                first = Err(e);
            } else {
                let source = std::error::Error::source(&e).map(|s| format!(": {s}"));
                log::warn!(
                    "a callback failed after another one for the same event (its error is only \
                     logged): {e}{}",
                    source.unwrap_or_default()
                );
            }
        }
    }
    let mut guard = lock();
    if guard.dropped() {
        // Closed while they ran (maybe by one of them): dropped, outside the lock.
        drop(guard);
        drop(taken);
        return Some(first);
    }
    let slot = list(&mut guard);
    taken.append(slot);
    *slot = taken;
    Some(first)
}

impl Owner {
    pub(crate) fn lock_dispatch(&self) -> MutexGuard<'_, Dispatch> {
        self.dispatch.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection's final error once it has ended for good: closed, lost without
    /// recovery, or lost and given up by the recovery; `None` while it is open or recovering.
    pub(crate) fn ended(&self) -> Option<crate::Error> {
        match &self.recovery {
            Some(recovery) => recovery.closed_error(),
            None => self.core().closed_error(),
        }
    }

    /// Drops every callback registered on the connection (timers, threadsafe, blocked,
    /// unblocked and recovery callbacks) and on its channels (consumers, returns, cancels),
    /// once [`Connection::close`](crate::Connection::close) has ended it: none can run any
    /// more, and one holding a handle of this connection (a timer that re-arms itself, a
    /// consumer that captured its channel) would keep the connection's memory and socket for
    /// as long as the process runs. Dropped outside every lock, since dropping a callback may
    /// drop a channel's last handle, which closes that channel.
    pub(crate) fn drop_callbacks(&self) {
        let (channels, timers, threadsafe, blocked, unblocked, recovery) = {
            let mut dispatch = self.lock_dispatch();
            dispatch.dropped = true;
            let channels: Vec<Arc<ChannelHandle>> =
                dispatch.channels.iter().filter_map(Weak::upgrade).collect();
            (
                channels,
                std::mem::take(&mut dispatch.timers),
                std::mem::take(&mut dispatch.threadsafe),
                std::mem::take(&mut dispatch.on_blocked),
                std::mem::take(&mut dispatch.on_unblocked),
                std::mem::take(&mut dispatch.on_recovery),
            )
        };
        for channel in &channels {
            channel.drop_callbacks();
        }
        drop((timers, threadsafe, blocked, unblocked, recovery));
        drop(channels);
    }

    pub(crate) fn register_channel(&self, channel: &Arc<ChannelHandle>) {
        let mut dispatch = self.lock_dispatch();
        dispatch.channels.retain(|c| c.strong_count() > 0);
        dispatch.channels.push(Arc::downgrade(channel));
    }

    /// Queues a recovery event for the recovery callbacks (at most [`RECOVERY_EVENTS_KEPT`])
    /// and wakes the consuming threads, which run them.
    pub(crate) fn push_recovery_event(&self, event: RecoveryEvent) {
        {
            let mut dispatch = self.lock_dispatch();
            if dispatch.recovery_events.len() >= RECOVERY_EVENTS_KEPT {
                dispatch.recovery_events.pop_front();
            }
            dispatch.recovery_events.push_back(event);
        }
        self.work_added();
    }

    /// Wakes the consuming threads for connection-level work just queued (a timer, a
    /// threadsafe callback, a recovery event, a recovery callback): those waiting on the
    /// engine (`Core::kick`) and, with recovery on, those waiting for a recovery (see
    /// `recovery`).
    pub(crate) fn work_added(&self) {
        self.core().kick();
        if let Some(recovery) = &self.recovery {
            recovery.notify();
        }
    }

    /// What a consuming thread does while it waits for a recovery (`Owner::wait_recovered`'s
    /// `between`): runs the connection callbacks that are due, then says when the next timer
    /// falls due, for the wait to wake up then.
    pub(crate) fn run_callbacks_while_recovering(self: &Arc<Self>) -> Result<Option<Instant>> {
        self.run_connection_callbacks()?;
        Ok(self.next_timer())
    }

    /// When the earliest timer is due, if any.
    pub(crate) fn next_timer(&self) -> Option<Instant> {
        self.lock_dispatch().timers.keys().next().map(|(at, _)| *at)
    }

    /// Runs the blocked/unblocked callbacks, due timers and threadsafe callbacks, on this
    /// thread. Each callback is taken out of the lock first, so it may call anything.
    /// Returns how many events were handled, or the first callback error: the blocked event
    /// being handled still reaches every blocked/unblocked callback, and what else is due
    /// stays queued for the next run.
    pub(crate) fn run_connection_callbacks(self: &Arc<Self>) -> Result<usize> {
        let connection = Connection::from_owner(self.clone());
        let mut ran = 0;
        loop {
            let event = self.core().lock_link().blocked_events.pop_front();
            let Some(event) = event else { break };
            ran += 1;
            match event {
                Some(reason) => run_callbacks(
                    || self.lock_dispatch(),
                    |d| &mut d.on_blocked,
                    |cb| {
                        callback::call_for(
                            self.id(),
                            || "a connection-blocked callback".into(),
                            || cb(&connection, &reason),
                        )
                    },
                )
                .unwrap_or(Ok(()))?,
                None => run_callbacks(
                    || self.lock_dispatch(),
                    |d| &mut d.on_unblocked,
                    |cb| {
                        callback::call_for(
                            self.id(),
                            || "a connection-unblocked callback".into(),
                            || cb(&connection),
                        )
                    },
                )
                .unwrap_or(Ok(()))?,
            }
        }
        loop {
            let event = self.lock_dispatch().recovery_events.pop_front();
            let Some(event) = event else { break };
            ran += 1;
            run_callbacks(
                || self.lock_dispatch(),
                |d| &mut d.on_recovery,
                |cb| {
                    callback::call_for(
                        self.id(),
                        || "a recovery callback".into(),
                        || cb(&connection, &event),
                    )
                },
            )
            .unwrap_or(Ok(()))?;
        }
        loop {
            let now = Instant::now();
            let due = {
                let mut dispatch = self.lock_dispatch();
                match dispatch.timers.first_key_value() {
                    Some((&(at, _), _)) if at <= now => dispatch
                        .timers
                        .pop_first()
                        .map(|(_, cb)| (cb, "a call_later timer")),
                    _ => dispatch
                        .threadsafe
                        .pop_front()
                        .map(|cb| (cb, "an add_callback_threadsafe callback")),
                }
            };
            match due {
                Some((cb, what)) => {
                    ran += 1;
                    callback::call_for(self.id(), || what.into(), cb)?;
                }
                None => break,
            }
        }
        Ok(ran)
    }

    /// `process_data_events` inside a callback (`callback::call_for`): waits until `deadline`
    /// (for ever with `None`) without running anything; woken early only by the end of the
    /// connection (its error; during a recovery, the recovery's end for good).
    fn wait_without_dispatching(&self, deadline: Option<Instant>) -> Result<()> {
        loop {
            let core = self.core();
            if let Some(e) = core.closed_error() {
                let Some(recovery) = self.recovery.as_ref() else {
                    return Err(e);
                };
                match self.wait_recovered(recovery, || deadline, || Ok(None))? {
                    Waited::Ready(_) => continue,
                    Waited::TimedOut(_) => return Ok(()),
                }
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(());
            }
            core.wait_until(deadline, || core.closed_error().map(|_| ()));
        }
    }

    pub(crate) fn live_channels(&self) -> Vec<Channel> {
        let mut dispatch = self.lock_dispatch();
        dispatch.channels.retain(|c| c.strong_count() > 0);
        dispatch
            .channels
            .iter()
            .filter_map(Weak::upgrade)
            .map(|inner| Channel { inner })
            .collect()
    }
}

impl Connection {
    /// Runs, on this thread, everything that is due: consumer callbacks of every channel
    /// nobody else is consuming, return and cancel callbacks, timers, threadsafe callbacks and
    /// blocked/unblocked callbacks (pika's `process_data_events(time_limit=0)`).
    ///
    /// As in pika, it waits up to `time_limit` for something to happen and returns as soon as
    /// it has handled at least one event; with a zero `time_limit` it handles what is there
    /// and returns; `Duration::MAX` waits until there is something (pika's `time_limit=None`).
    /// Heartbeats never depend on it: the I/O thread answers them whatever this thread does.
    /// Returns the connection's error once it is closed. When the connection was open at the
    /// call's start and this application closes it during the call (a callback calling
    /// [`close`](Self::close), say), the call ends with `Ok`, as in pika, so
    /// `while connection.is_open()` loops end cleanly; the next call returns
    /// [`Error::ConnectionClosedByClient`](crate::Error::ConnectionClosedByClient).
    ///
    /// Called from inside a callback of this connection, it runs nothing (as in pika, callbacks
    /// never nest): it waits out `time_limit`, returning early only with the connection's
    /// error. So [`sleep`](Self::sleep) inside a callback is a plain sleep that keeps the
    /// connection's I/O going; what became due runs when the thread next dispatches (see the
    /// crate docs, "Consuming and the event loop").
    ///
    /// A callback that fails ends it with its error: a cottontail [`Error`](crate::Error) as
    /// the callback returned it, any other error (or a panic) as
    /// [`Error::Callback`](crate::Error::Callback), whose `source()` is the callback's error.
    /// What else was due stays queued for the next call.
    pub fn process_data_events(&self, time_limit: Duration) -> Result<()> {
        let owner = self.owner();
        let deadline = Instant::now().checked_add(time_limit);
        if callback::inside_callback_of(owner.id()) {
            return owner.wait_without_dispatching(deadline);
        }
        let was_open = self.is_open();
        match self.dispatch_until(deadline) {
            // The connection's own close by the application, not a callback's error that
            // merely says so of a channel.
            Err(crate::Error::ConnectionClosedByClient { .. })
                if was_open && self.close_reason().is_some_and(|e| e.is_closed_by_client()) =>
            {
                Ok(())
            }
            handled => handled,
        }
    }

    /// [`process_data_events`](Self::process_data_events)'s loop, outside a callback.
    fn dispatch_until(&self, deadline: Option<Instant>) -> Result<()> {
        let owner = self.owner();
        loop {
            let core = owner.core();
            let generation = core.generation();
            let mut handled = owner.run_connection_callbacks()?;
            for channel in owner.live_channels() {
                handled += channel.drain_events()?;
            }
            if let Some(e) = core.closed_error() {
                let Some(recovery) = owner.recovery.as_ref() else {
                    return Err(e);
                };
                // Recovering: wait for it (running the connection's callbacks as they fall
                // due), within the limit. A callback's error ends it as it is.
                match owner.wait_recovered(
                    recovery,
                    || deadline,
                    || owner.run_callbacks_while_recovering(),
                )? {
                    Waited::Ready(_) => continue,
                    Waited::TimedOut(_) => return Ok(()),
                }
            }
            let now = Instant::now();
            if handled > 0 || deadline.is_some_and(|d| now >= d) {
                return Ok(());
            }
            let far = now + Duration::from_secs(3600);
            let wake = owner
                .next_timer()
                .map_or(deadline.unwrap_or(far), |t| t.min(deadline.unwrap_or(far)));
            core.wait_until(Some(wake), || {
                (core.generation() != generation).then_some(())
            });
        }
    }

    /// Sleeps for `duration` while handling events as
    /// [`process_data_events`](Self::process_data_events) does (pika's `sleep`): it returns
    /// after `duration`, not at the first event, or at once with the error of a callback that
    /// failed. Inside a callback of this connection it runs nothing (callbacks never nest, as
    /// in pika): a back-off that keeps the connection alive.
    pub fn sleep(&self, duration: Duration) -> Result<()> {
        let deadline = crate::engine::saturating_deadline(duration);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            self.process_data_events(left)?;
            if left.is_zero() {
                return Ok(());
            }
        }
    }

    /// Runs `callback` once, `delay` from now, on the thread that is then inside
    /// `process_data_events`, `sleep`, `start_consuming` or a `consume()` iteration (pika's
    /// `call_later`).
    ///
    /// The callback returns `()` or any `Result<(), E>` (see [`CallbackReturn`]). Its error or
    /// panic ends the call that ran it: `process_data_events` or `sleep` returns it,
    /// `start_consuming` returns it, a `consume()` iteration yields it (see
    /// [`process_data_events`](Self::process_data_events) for the form it takes).
    ///
    /// On a connection that has ended (closed, or lost without recovery) the timer can never
    /// run: the callback is dropped at once (as [`close`](Self::close) drops the pending
    /// ones), and the id returned matches no timer.
    pub fn call_later<F, R>(&self, delay: Duration, callback: F) -> TimeoutId
    where
        F: FnOnce() -> R + Send + 'static,
        R: CallbackReturn,
    {
        let owner = self.owner();
        let ended = owner.ended().is_some();
        let key = {
            let mut dispatch = owner.lock_dispatch();
            let ended = ended || dispatch.dropped;
            dispatch.next_timer_id += 1;
            let key = (
                crate::engine::saturating_deadline(delay),
                dispatch.next_timer_id,
            );
            if !ended {
                dispatch
                    .timers
                    .insert(key, Box::new(move || callback().into_result()));
            }
            key
        };
        owner.work_added();
        TimeoutId(key.0, key.1)
    }

    /// Cancels a timer made by [`call_later`](Self::call_later) (pika's `remove_timeout`).
    /// Returns false when it already ran or was removed.
    pub fn remove_timeout(&self, id: TimeoutId) -> bool {
        // The id is the timer's key: no scan, however many timers are pending.
        let mut dispatch = self.owner().lock_dispatch();
        dispatch.timers.remove(&(id.0, id.1)).is_some()
    }

    /// Queues `callback` to run on the thread that is inside `process_data_events`, `sleep`,
    /// `start_consuming` or a `consume()` iteration (pika's `add_callback_threadsafe`): the way
    /// for another thread to have work done on the consuming thread, e.g. an ack:
    ///
    /// ```no_run
    /// # let connection = cottontail::Connection::open(cottontail::ConnectionParameters::default())?;
    /// # let channel = connection.channel()?;
    /// # let delivery_tag = 1;
    /// let ch = channel.clone();
    /// connection.add_callback_threadsafe(move || ch.basic_ack(delivery_tag, false))?;
    /// # Ok::<(), cottontail::Error>(())
    /// ```
    ///
    /// On a closed connection it is the connection's close reason (e.g.
    /// [`Error::ConnectionClosedByClient`](crate::Error::ConnectionClosedByClient)) and the
    /// callback is dropped, as pika raises there; a callback queued just before the connection
    /// closes never runs either.
    ///
    /// The callback returns `()` or any `Result<(), E>` (see [`CallbackReturn`]). Its error or
    /// panic ends the call that ran it: `start_consuming` returns it, a `consume()` iteration
    /// yields it, `process_data_events` or `sleep` returns it (see
    /// [`process_data_events`](Self::process_data_events) for the form it takes).
    pub fn add_callback_threadsafe<F, R>(&self, callback: F) -> Result<()>
    where
        F: FnOnce() -> R + Send + 'static,
        R: CallbackReturn,
    {
        let owner = self.owner();
        if let Some(e) = owner.ended() {
            return Err(e);
        }
        {
            let mut dispatch = owner.lock_dispatch();
            if dispatch.dropped {
                drop(dispatch);
                return Err(owner
                    .ended()
                    .unwrap_or(crate::Error::ConnectionClosedByClient {
                        reply_code: 200,
                        reply_text: "Normal shutdown".into(),
                    }));
            }
            let callback: ThreadsafeCallback = Box::new(move || callback().into_result());
            dispatch.threadsafe.push_back(callback);
        }
        owner.work_added();
        Ok(())
    }

    /// Registers a callback for connection.blocked (the broker hit a memory or disk alarm and
    /// stopped reading publishes); it gets the broker's reason (pika's
    /// `add_on_connection_blocked_callback`).
    ///
    /// It returns `()` or any `Result<(), E>` (see [`CallbackReturn`]); its error or panic ends
    /// the call that ran it, as a timer's does ([`call_later`](Self::call_later)). When several
    /// are registered and one fails, the others still hear of the event; the first error is
    /// returned.
    pub fn add_on_connection_blocked_callback<F, R>(&self, mut callback: F)
    where
        F: FnMut(&Connection, &str) -> R + Send + 'static,
        R: CallbackReturn,
    {
        let mut dispatch = self.owner().lock_dispatch();
        if !dispatch.dropped {
            dispatch
                .on_blocked
                .push(Box::new(move |connection: &Connection, reason: &str| {
                    callback(connection, reason).into_result()
                }));
        }
    }

    /// Registers a callback for connection.unblocked (pika's
    /// `add_on_connection_unblocked_callback`).
    ///
    /// It returns `()` or any `Result<(), E>` (see [`CallbackReturn`]); its error or panic ends
    /// the call that ran it, as a timer's does ([`call_later`](Self::call_later)). When several
    /// are registered and one fails, the others still hear of the event; the first error is
    /// returned.
    pub fn add_on_connection_unblocked_callback<F, R>(&self, mut callback: F)
    where
        F: FnMut(&Connection) -> R + Send + 'static,
        R: CallbackReturn,
    {
        let mut dispatch = self.owner().lock_dispatch();
        if !dispatch.dropped {
            dispatch
                .on_unblocked
                .push(Box::new(move |connection: &Connection| {
                    callback(connection).into_result()
                }));
        }
    }
}

impl Connection {
    /// Registers a callback for the recovery's events: connection lost, an attempt failed,
    /// recovered (with what was renamed or skipped), failed for good (see
    /// [`RecoveryEvent`]). It runs where pika runs callbacks: on the thread inside
    /// `process_data_events`, `sleep`, `start_consuming` or a `consume()` iteration, also
    /// while that thread waits for the recovery. Events nobody has run yet are kept (the last
    /// 64).
    ///
    /// It returns `()` or any `Result<(), E>` (see [`CallbackReturn`]); its error or panic ends
    /// the call that ran it, as a timer's does ([`call_later`](Self::call_later)).
    pub fn add_on_recovery_callback<F, R>(&self, mut callback: F)
    where
        F: FnMut(&Connection, &RecoveryEvent) -> R + Send + 'static,
        R: CallbackReturn,
    {
        {
            let mut dispatch = self.owner().lock_dispatch();
            if dispatch.dropped {
                return;
            }
            dispatch.on_recovery.push(Box::new(
                move |connection: &Connection, event: &RecoveryEvent| {
                    callback(connection, event).into_result()
                },
            ));
        }
        self.owner().work_added();
    }
}

impl Channel {
    /// Handles everything queued on this channel without waiting, unless another thread is
    /// consuming it; returns how many events it handled, or the error of a callback that
    /// failed. A closed channel is skipped: its own calls report why.
    fn drain_events(&self) -> Result<usize> {
        let Ok(_guard) = self.enter_consuming() else {
            return Ok(0);
        };
        let mut handled = 0;
        loop {
            match self.pump(None, Some(Instant::now()), None) {
                Ok(crate::consumer::Pumped::Progress) => handled += 1,
                Ok(crate::consumer::Pumped::CallbackFailed(e)) => return Err(e),
                Ok(_) => return Ok(handled),
                // A closed channel, or a lost connection: `process_data_events` looks at the
                // connection next (and waits for its recovery).
                Err(_) => return Ok(handled),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Lists {
        list: Vec<Arc<()>>,
        dropped: bool,
    }

    impl CallbackLists for Lists {
        fn dropped(&self) -> bool {
            self.dropped
        }
    }

    #[test]
    fn callbacks_running_when_their_lists_are_dropped_are_not_put_back() {
        let callback = Arc::new(());
        let lists = Mutex::new(Lists {
            list: vec![callback.clone()],
            dropped: false,
        });
        let lock = || lists.lock().unwrap();
        // Kept when nothing happens meanwhile.
        assert_eq!(
            run_callbacks(lock, |l| &mut l.list, |_| Ok(())),
            Some(Ok(()))
        );
        assert_eq!(Arc::strong_count(&callback), 2);
        // A close while it runs (here, from the callback itself) drops it.
        let ran = run_callbacks(
            lock,
            |l| &mut l.list,
            |_| {
                lock().dropped = true;
                Ok(())
            },
        );
        assert_eq!(ran, Some(Ok(())));
        assert!(lock().list.is_empty());
        assert_eq!(Arc::strong_count(&callback), 1, "the callback was kept");
    }
}
