//! [`Connection`]: pika's `BlockingConnection`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use amq_protocol::protocol::{channel, connection, AMQPClass};

use crate::channel::Channel;
use crate::engine::chan::{ChannelCore, ChannelTable, Life, Reply};
use crate::engine::Core;
use crate::error::{Error, Result};
use crate::params::ConnectionParameters;
use crate::protocol::table::{FieldTable, FieldValue};
use crate::recovery::Recovery;

/// A connection to RabbitMQ: pika's `BlockingConnection`.
///
/// It owns the socket and one I/O thread (`cottontail-io`) that reads frames, answers
/// heartbeats and routes messages to channels. It is a cheap handle: clones share the
/// connection and it can move to and be shared between threads (`Send + Sync`). The connection
/// closes cleanly when [`close`](Self::close) is called or when its last handle (connection or
/// channel) is dropped. A callback that holds a handle (a timer that re-arms itself with a
/// captured `Connection`, a consumer that captured its `Channel`) counts as one: such a
/// connection stays open until `close()`, which drops every callback of the connection and its
/// channels. Call `close()` on a connection the broker closed or that was lost too: it
/// releases those callbacks and what they hold.
///
/// ```no_run
/// use cottontail::{Connection, ConnectionParameters};
///
/// let connection = Connection::open(ConnectionParameters::new("localhost"))?;
/// let channel = connection.channel()?;
/// channel.basic_publish("", "hello", b"Hello World!")?;
/// connection.close()?;
/// # Ok::<(), cottontail::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Connection {
    owner: Arc<Owner>,
}

/// pika's name for [`Connection`].
pub type BlockingConnection = Connection;

/// Shared by every handle of a connection; closes the connection when the last one goes.
pub(crate) struct Owner {
    /// The engine in use: the same one for the connection's life, unless recovery replaces a
    /// lost one (see `recovery`, which owns every change of it). Read with `core()`.
    pub(crate) current: std::sync::RwLock<Arc<Core>>,
    pub(crate) dispatch: std::sync::Mutex<crate::events::Dispatch>,
    /// With a recovery policy: the recovery's state and recorded topology.
    pub(crate) recovery: Option<Arc<Recovery>>,
}

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let core = self.core();
        f.debug_struct("Connection")
            .field("host", &core.params.host)
            .field("port", &core.params.port)
            .field("virtual_host", &core.params.virtual_host)
            .finish_non_exhaustive()
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        if let Err(e) = self.close(200, "Normal shutdown") {
            log::warn!("closing the connection on drop: {e}");
        }
    }
}

impl Owner {
    /// Identifies the connection while it lives (its address; every handle, and so every
    /// callback that runs, keeps it alive).
    pub(crate) fn id(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }

    /// Closes the connection for good: stops a recovery, then closes the current engine.
    fn close(&self, reply_code: u16, reply_text: &str) -> Result<()> {
        // Refused before anything changes (a text over 255 bytes).
        crate::protocol::codec::short(reply_text)?;
        if let Some(recovery) = &self.recovery {
            let error = Error::ConnectionClosedByClient {
                reply_code,
                reply_text: reply_text.to_owned(),
            };
            // First: a recovery that has a new engine ready then drops it instead of putting
            // it in place, and the engine read below is the last one.
            recovery.close(error.clone());
            self.close_lost_channels(&error);
            // What a recovery under way had opened is given back and closed first.
            recovery.wait_thread_ended(self.core().params.rpc_timeout);
        }
        let core = self.core();
        let closed = core.close(reply_code, reply_text, core.params.rpc_timeout);
        self.drop_callbacks();
        closed
    }
}

impl Connection {
    /// Connects and opens the connection (TCP, protocol header, authentication, tuning,
    /// vhost), each attempt within the parameters' `stack_timeout` (pika's
    /// `BlockingConnection(parameters)`).
    ///
    /// Takes one [`ConnectionParameters`] or a list of them (a `Vec`, an array or a slice) for
    /// failover between cluster nodes, as pika does: each pass tries every set once, in order,
    /// with no pause between them; the last set's `connection_attempts` is the number of
    /// passes and its `retry_delay` the pause between two passes (so a healthy second node is
    /// tried at once after the first refuses). A set whose login or vhost was refused is not
    /// tried again. When one attempt was made its error is returned as is; otherwise
    /// [`Error::AllAttemptsFailed`] holds the attempts' errors (the last
    /// [`ATTEMPT_ERRORS_KEPT`](crate::ATTEMPT_ERRORS_KEPT) of them).
    pub fn open(params: impl IntoParameterList) -> Result<Connection> {
        let list = params.into_parameter_list();
        for params in &list {
            params.validate()?;
        }
        let recovery = list
            .first()
            .and_then(|p| p.recovery.clone())
            .map(|policy| Arc::new(Recovery::new(policy, list.clone())));
        let mut errors = Vec::new();
        let mut failed = 0;
        let (passes, pause) = list.last().map_or((1, Duration::ZERO), |p| {
            (p.connection_attempts.max(1), p.retry_delay)
        });
        let mut refused_sets = vec![false; list.len()];
        for attempt in 1..=passes {
            if refused_sets.iter().all(|refused| *refused) {
                break;
            }
            if attempt > 1 {
                std::thread::sleep(pause);
            }
            for (index, params) in list.iter().enumerate() {
                if refused_sets[index] {
                    continue;
                }
                match Core::open(params.clone(), 0) {
                    Ok(core) => {
                        let owner = Arc::new(Owner {
                            current: std::sync::RwLock::new(core.clone()),
                            dispatch: Default::default(),
                            recovery,
                        });
                        if owner.recovery.is_some()
                            && !core.set_on_lost(Owner::on_lost_hook(Arc::downgrade(&owner)))
                        {
                            // Lost already: recover it now.
                            if let Some(e) = core.closed_error() {
                                let recover = crate::recovery::recoverable(&e);
                                owner.connection_lost(&core, &e, recover);
                            }
                        }
                        return Ok(Connection::from_owner(owner));
                    }
                    Err(e) => {
                        log::warn!(
                            "connection attempt {attempt} to {}:{} failed: {e}",
                            params.host,
                            params.port
                        );
                        let refused = matches!(
                            e,
                            Error::AuthenticationFailed { .. } | Error::AccessRefused { .. }
                        );
                        failed += 1;
                        if errors.len() == crate::error::ATTEMPT_ERRORS_KEPT {
                            errors.remove(0);
                        }
                        errors.push(e);
                        refused_sets[index] = refused;
                    }
                }
            }
        }
        if failed == 1 {
            return Err(errors.pop().expect("one error"));
        }
        if errors.is_empty() {
            return Err(Error::InvalidArgument(
                "no connection parameters given".into(),
            ));
        }
        Err(Error::AllAttemptsFailed {
            failed,
            attempts: errors,
        })
    }

    pub(crate) fn from_owner(owner: Arc<Owner>) -> Connection {
        Connection { owner }
    }

    pub(crate) fn owner(&self) -> &Arc<Owner> {
        &self.owner
    }

    /// Opens a connection from an `amqp://` or `amqps://` URL (pika's `URLParameters`).
    pub fn open_url(url: &str) -> Result<Connection> {
        Connection::open(ConnectionParameters::from_url(url)?)
    }

    fn core(&self) -> Arc<Core> {
        self.owner.core()
    }

    /// Opens a channel on the lowest free number (pika's `channel()`). A number whose last
    /// channel was closed by both sides at once is passed by until the broker's late answer
    /// to that close came (at most 2 s); if no other number is free, this waits for it
    /// within `rpc_timeout`, then fails with [`Error::NoFreeChannels`].
    pub fn channel(&self) -> Result<Channel> {
        self.open_channel(None)
    }

    /// Opens a channel with a given number (pika's `channel(channel_number=n)`).
    /// 0, a number above the negotiated `channel_max`, or one in use is
    /// [`Error::InvalidChannelNumber`]. A number whose last channel was closed by both sides
    /// at once (the broker's channel.close crossed ours) is free when `close()` returns, but
    /// the broker may still send a late answer for it: this waits for that answer, at most
    /// 2 s and within `rpc_timeout` (after which it is [`Error::InvalidChannelNumber`]).
    pub fn channel_with_number(&self, number: u16) -> Result<Channel> {
        self.open_channel(Some(number))
    }

    fn open_channel(&self, number: Option<u16>) -> Result<Channel> {
        let deadline = crate::engine::deadline_after(self.rpc_timeout());
        let core = self.owner.ready_core(|| deadline)?;
        if let Some(e) = core.closed_error() {
            return Err(e);
        }
        let channel_core = take_number(&core, number, deadline)?;
        let id = channel_core.id;
        let channel = Channel::new(self.owner.clone(), channel_core);
        let open = AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {}));
        // Not retried after a loss: a recovery may open the channel meanwhile, and a second
        // channel.open would break the connection. Fails with the loss; the caller retries.
        match crate::channel::call_until(&core, channel.core(), open, "channel.open", deadline) {
            Ok(Reply::Method(AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)))) => {
                log::debug!("channel {id} open");
                Ok(channel)
            }
            Ok(_) => Err(Error::protocol(
                crate::error::COMMAND_INVALID,
                "unexpected reply to channel.open",
            )),
            Err(e) => Err(e),
        }
    }

    /// Writes everything published and acked so far to the socket, at most `timeout` (then
    /// [`Error::Timeout`]). A publish or ack leaves on the caller's thread or, in a burst,
    /// from the connection's I/O thread moments later (acks are held up to 5 ms to merge
    /// them), so when a call returns its frames may still be queued. [`close`](Self::close),
    /// and dropping the last handle, write them all first; call `flush` before a process
    /// ends without either (`std::process::exit`, a connection kept in a `static`), which
    /// would lose what was queued. It does not wait for the broker: publisher confirms
    /// ([`Channel::confirm_delivery`]) say whether a message arrived. It waits until nothing
    /// is queued at all, so while other threads go on publishing it waits for theirs too. An
    /// error if the connection is closed or lost (what was queued is then lost with it).
    ///
    /// ```no_run
    /// # let connection = cottontail::Connection::open(cottontail::ConnectionParameters::default())?;
    /// # let channel = connection.channel()?;
    /// for i in 0..1000 {
    ///     channel.basic_publish("", "tasks", format!("task {i}").as_bytes())?;
    /// }
    /// connection.flush(std::time::Duration::from_secs(5))?;
    /// std::process::exit(0);
    /// # Ok::<(), cottontail::Error>(())
    /// ```
    pub fn flush(&self, timeout: std::time::Duration) -> Result<()> {
        self.owner
            .core()
            .flush(crate::engine::deadline_after(timeout), timeout)
    }

    /// Closes the connection with pika's defaults (200, "Normal shutdown"): everything queued
    /// is written first, then connection.close, then close-ok is awaited (at most the RPC
    /// timeout, even if the broker stopped reading). Closing a closed connection does nothing.
    /// During a recovery it first stops the recovery and waits (at most the RPC timeout too)
    /// until what that had opened again is given back and closed.
    pub fn close(&self) -> Result<()> {
        self.close_with(200, "Normal shutdown")
    }

    /// Closes the connection with a reply code and text (pika's `close(reply_code, reply_text)`).
    pub fn close_with(&self, reply_code: u16, reply_text: &str) -> Result<()> {
        self.owner.close(reply_code, reply_text)
    }

    fn rpc_timeout(&self) -> std::time::Duration {
        self.core().params.rpc_timeout
    }

    /// True until the connection is closed or lost (pika's `is_open`).
    pub fn is_open(&self) -> bool {
        self.close_reason().is_none()
    }

    /// True once the connection is closed or lost (pika's `is_closed`).
    pub fn is_closed(&self) -> bool {
        !self.is_open()
    }

    /// Why the connection closed, `None` while it is open. While it recovers, the error it
    /// was lost with; once recovery gave up, the error that ended it.
    pub fn close_reason(&self) -> Option<Error> {
        if let Some(e) = self.owner.recovery.as_ref().and_then(|r| r.closed_error()) {
            return Some(e);
        }
        self.core().closed_error()
    }

    /// The broker's server properties (product, version, capabilities...), of the broker
    /// the connection is to now.
    pub fn server_properties(&self) -> FieldTable {
        self.core().server_properties().clone()
    }

    /// True when the broker advertises the named capability in its server properties.
    fn capability(&self, name: &str) -> bool {
        match self.core().server_properties().get("capabilities") {
            Some(FieldValue::Table(caps)) => {
                matches!(caps.get(name), Some(FieldValue::Bool(true)))
            }
            _ => false,
        }
    }

    /// The broker supports basic.nack (pika's `basic_nack_supported`).
    pub fn basic_nack_supported(&self) -> bool {
        self.capability("basic.nack")
    }

    /// The broker sends basic.cancel when a consumer's queue goes (pika's
    /// `consumer_cancel_notify_supported`).
    pub fn consumer_cancel_notify_supported(&self) -> bool {
        self.capability("consumer_cancel_notify")
    }

    /// The broker supports exchange-to-exchange bindings (pika's
    /// `exchange_exchange_bindings_supported`).
    pub fn exchange_exchange_bindings_supported(&self) -> bool {
        self.capability("exchange_exchange_bindings")
    }

    /// The broker supports publisher confirms (pika's `publisher_confirms_supported`).
    pub fn publisher_confirms_supported(&self) -> bool {
        self.capability("publisher_confirms")
    }

    /// True while the broker has the (open) connection blocked (memory or disk alarm).
    pub fn is_blocked(&self) -> bool {
        let core = self.core();
        let link = core.lock_link();
        link.blocked_since.is_some() && link.closed.is_none()
    }

    /// Replaces the secret (password or token) the connection authenticated with and waits
    /// for the broker to accept it (pika's `update_secret(new_secret, reason)`), at most the
    /// RPC timeout. The secret is never logged. With recovery on, a secret too large for a
    /// login (over the 4096 bytes a connection's first frames may take, with the client
    /// properties) is refused with [`Error::InvalidArgument`] before anything changes: the
    /// next recovery could not log in with it.
    pub fn update_secret(&self, new_secret: &str, reason: &str) -> Result<()> {
        let method = AMQPClass::Connection(connection::AMQPMethod::UpdateSecret(
            connection::UpdateSecret {
                new_secret: new_secret.into(),
                // Refused before anything changes (a reason over 255 bytes) ...
                reason: crate::protocol::codec::short(reason)?,
            },
        ));
        // ... as is a secret too large for one frame.
        let mut frame = Vec::new();
        crate::protocol::codec::encode_method(&mut frame, 0, method.clone())?;
        crate::protocol::codec::check_frames_fit(&frame, self.frame_max())?;
        if let Some(recovery) = &self.owner.recovery {
            // A recovery logs in with it from now on; while the connection is down, that is
            // all there is to do.
            recovery.update_secret(new_secret)?;
            if recovery.is_recovering() {
                return Ok(());
            }
        }
        let core = self.core();
        let timeout = core.params.rpc_timeout;
        let deadline = crate::engine::deadline_after(timeout);
        // Numbered as it is queued: the broker answers in that order.
        let ticket = core.send_connection_method(method, deadline, |link| {
            link.secret_updates.0 += 1;
            link.secret_updates.0
        })?;
        core.wait_secret_update(ticket, deadline, timeout)
    }

    /// The negotiated highest channel number.
    pub fn channel_max(&self) -> u16 {
        self.core().tuned.channel_max
    }

    /// The negotiated largest frame size.
    pub fn frame_max(&self) -> u32 {
        self.core().tuned.frame_max
    }

    /// The negotiated heartbeat interval in seconds (0: off).
    pub fn heartbeat(&self) -> u16 {
        self.core().tuned.heartbeat
    }
}

/// One [`ConnectionParameters`] or a list of them, for [`Connection::open`].
pub trait IntoParameterList {
    /// The parameter sets, in the order to try them.
    fn into_parameter_list(self) -> Vec<ConnectionParameters>;
}

impl IntoParameterList for ConnectionParameters {
    fn into_parameter_list(self) -> Vec<ConnectionParameters> {
        vec![self]
    }
}

impl IntoParameterList for Vec<ConnectionParameters> {
    fn into_parameter_list(self) -> Vec<ConnectionParameters> {
        self
    }
}

impl IntoParameterList for &[ConnectionParameters] {
    fn into_parameter_list(self) -> Vec<ConnectionParameters> {
        self.to_vec()
    }
}

impl<const N: usize> IntoParameterList for [ConnectionParameters; N] {
    fn into_parameter_list(self) -> Vec<ConnectionParameters> {
        self.into()
    }
}

/// Takes a number for a new channel in the connection's table: `number`, or the lowest free
/// one. A number a crossed close left shadowed (see `engine::router`) is not taken until its
/// late close-ok came or the shadow ended: `channel()` passes it by (and waits only if no
/// other number is free), `channel_with_number` waits for it. With every number taken,
/// `channel()` also waits while one of them is closing (our channel.close not yet answered,
/// as after dropping a `Channel`), and fails at once with `NoFreeChannels` otherwise. The wait
/// is [`Core::wait_until`], woken by the reader routing that close-ok or by the connection's
/// end, and lasts at most until the shadow ends or `deadline`.
fn take_number(
    core: &Core,
    number: Option<u16>,
    deadline: Option<Instant>,
) -> Result<Arc<ChannelCore>> {
    let channel_max = core.tuned.channel_max;
    // `Err(None)`: every number is taken (by open or closing channels).
    let pick =
        |table: &ChannelTable, now: Instant| -> Result<std::result::Result<u16, Option<Instant>>> {
            Ok(match number {
                Some(0) => return Err(invalid_number(0, "channel 0 is the connection's own")),
                Some(n) if n > channel_max => {
                    return Err(invalid_number(
                        n,
                        &format!("above channel_max {channel_max}"),
                    ))
                }
                Some(n) if table.live.contains_key(&n) => {
                    return Err(invalid_number(n, "already in use"))
                }
                Some(n) => table.shadowed_until(n, now).map_or(Ok(n), |u| Err(Some(u))),
                None => table.free_number(channel_max, now),
            })
        };
    loop {
        let mut table = core.lock_channels();
        let until = match pick(&table, Instant::now())? {
            Ok(id) => {
                let channel_core = Arc::new(ChannelCore::new(id));
                table.live.insert(id, channel_core.clone());
                return Ok(channel_core);
            }
            Err(until) => until,
        };
        // Lock order: a channel's state before the table, so look at them after it.
        let taken: Vec<Arc<ChannelCore>> = match until {
            None => table.live.values().cloned().collect(),
            Some(_) => Vec::new(),
        };
        drop(table);
        let closing = |c: &Arc<ChannelCore>| matches!(c.lock().life, Life::Closing(_));
        if until.is_none() && !taken.iter().any(closing) {
            return Err(Error::NoFreeChannels { channel_max });
        }
        drop(taken);
        if let Some(e) = core.closed_error() {
            return Err(e);
        }
        if deadline.is_some_and(|d| d <= Instant::now()) {
            let shadowed = "shadowed: the broker may still answer the close of its last channel";
            return Err(match number {
                Some(n) => invalid_number(n, shadowed),
                None => Error::NoFreeChannels { channel_max },
            });
        }
        let wake = match (deadline, until) {
            (Some(d), Some(u)) => Some(d.min(u)),
            (d, u) => d.or(u),
        };
        core.wait_until(wake, || {
            let ready = pick(&core.lock_channels(), Instant::now()).map_or(true, |p| p.is_ok());
            (ready || core.closed_error().is_some()).then_some(())
        });
    }
}

fn invalid_number(number: u16, reason: &str) -> Error {
    Error::InvalidChannelNumber {
        number,
        reason: reason.to_string(),
    }
}
