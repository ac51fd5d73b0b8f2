//! What the application sets and sees of automatic recovery: [`RecoveryPolicy`] (when and how
//! often to reconnect, what to declare again), [`Entity`] (what the topology filter is asked
//! about) and [`RecoveryEvent`] (what the recovery callbacks hear).

use std::sync::Arc;
use std::time::Duration;

use super::backoff::Backoff;
use crate::error::Error;

/// How a connection recovers after it is lost (see the crate docs' "Recovery" section). Off
/// unless set with
/// [`ConnectionParameters::with_recovery`](crate::ConnectionParameters::with_recovery):
///
/// ```no_run
/// use cottontail::{Connection, ConnectionParameters, RecoveryPolicy};
///
/// let connection = Connection::open(
///     ConnectionParameters::new("localhost").with_recovery(RecoveryPolicy::default()),
/// )?;
/// # Ok::<(), cottontail::Error>(())
/// ```
///
/// The defaults: the first attempt at once, then delays from 100 ms doubling up to 10 s, a
/// quarter of each delay random, no limit on attempts or time, every recorded entity declared
/// again. Each attempt tries the parameter sets given to
/// [`Connection::open`](crate::Connection::open) in order, once each.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct RecoveryPolicy {
    pub(crate) backoff: Backoff,
    pub(crate) filter: Option<TopologyFilter>,
}

/// The user's topology filter: compared by identity.
#[derive(Clone)]
pub(crate) struct TopologyFilter(pub(crate) Arc<dyn Fn(&Entity) -> bool + Send + Sync>);

impl PartialEq for TopologyFilter {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl std::fmt::Debug for TopologyFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TopologyFilter(..)")
    }
}

impl RecoveryPolicy {
    /// The delay before the second attempt (the first is made at once); each later delay is
    /// twice the one before, up to [`with_max_delay`](Self::with_max_delay). Default 100 ms.
    pub fn with_initial_delay(mut self, delay: Duration) -> Self {
        self.backoff.initial = delay;
        self
    }

    /// The longest delay between two attempts. Default 10 s.
    pub fn with_max_delay(mut self, delay: Duration) -> Self {
        self.backoff.max = delay;
        self
    }

    /// The fraction of each delay that is random, from 0 (none) to 1 (anywhere from 0 to the
    /// delay), so that clients cut off together do not come back together. Default 0.25;
    /// values outside 0..=1 are clamped.
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.backoff.jitter = jitter;
        self
    }

    /// Gives up after this many attempts (`None`, the default: never). Giving up closes the
    /// connection with [`Error::AllAttemptsFailed`](crate::Error::AllAttemptsFailed), which
    /// holds the attempts' errors (one per host tried; the last
    /// [`ATTEMPT_ERRORS_KEPT`](crate::ATTEMPT_ERRORS_KEPT)) and is a connection error
    /// whatever they were.
    pub fn with_max_attempts(mut self, attempts: Option<u32>) -> Self {
        self.backoff.max_attempts = attempts;
        self
    }

    /// Gives up once this long has passed since the connection was lost (`None`, the default:
    /// never).
    pub fn with_max_elapsed(mut self, elapsed: Option<Duration>) -> Self {
        self.backoff.max_elapsed = elapsed;
        self
    }

    /// Declares again only the entities for which `filter` returns true (default: all). An
    /// entity filtered out stays recorded but is neither declared nor, for a consumer,
    /// registered again: that consumer is reported cancelled, as if the broker had cancelled
    /// it.
    pub fn with_topology_filter(
        mut self,
        filter: impl Fn(&Entity) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.filter = Some(TopologyFilter(Arc::new(filter)));
        self
    }

    /// The delay before the first retry after a loss.
    pub fn initial_delay(&self) -> Duration {
        self.backoff.initial
    }

    /// The longest delay between two attempts.
    pub fn max_delay(&self) -> Duration {
        self.backoff.max
    }

    /// The random fraction of each delay.
    pub fn jitter(&self) -> f64 {
        self.backoff.jitter
    }

    /// The limit on attempts, if any.
    pub fn max_attempts(&self) -> Option<u32> {
        self.backoff.max_attempts
    }

    /// The limit on time spent recovering, if any.
    pub fn max_elapsed(&self) -> Option<Duration> {
        self.backoff.max_elapsed
    }

    /// Whether `entity` is declared again (the topology filter's answer); a filter that
    /// panicked is an [`crate::Error::Callback`], and the entity is skipped.
    pub(crate) fn keeps(&self, entity: &Entity) -> crate::Result<bool> {
        let Some(filter) = &self.filter else {
            return Ok(true);
        };
        let mut kept = false;
        crate::callback::call(
            || format!("the topology filter, on {entity},"),
            || {
                kept = (filter.0)(entity);
                Ok(())
            },
        )?;
        Ok(kept)
    }
}

/// An entity recovery declares again, as the topology filter sees it
/// ([`RecoveryPolicy::with_topology_filter`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Entity {
    /// An exchange this connection declared.
    Exchange {
        /// Its name.
        name: String,
    },
    /// A queue this connection declared (a server-named one by its last name).
    Queue {
        /// Its name.
        name: String,
        /// Declared as `""`: it gets a new name.
        server_named: bool,
    },
    /// A binding of a queue to an exchange.
    QueueBinding {
        /// The queue.
        queue: String,
        /// The exchange.
        exchange: String,
        /// The binding key.
        routing_key: String,
    },
    /// An exchange-to-exchange binding.
    ExchangeBinding {
        /// The destination exchange.
        destination: String,
        /// The source exchange.
        source: String,
        /// The binding key.
        routing_key: String,
    },
    /// A consumer.
    Consumer {
        /// Its consumer tag (kept across recoveries).
        tag: String,
        /// Its queue.
        queue: String,
        /// Its channel's number.
        channel: u16,
    },
}

impl std::fmt::Display for Entity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Entity::Exchange { name } => write!(f, "exchange {name:?}"),
            Entity::Queue { name, .. } => write!(f, "queue {name:?}"),
            Entity::QueueBinding {
                queue,
                exchange,
                routing_key,
            } => write!(
                f,
                "binding of queue {queue:?} to exchange {exchange:?} ({routing_key:?})"
            ),
            Entity::ExchangeBinding {
                destination,
                source,
                routing_key,
            } => write!(
                f,
                "binding of exchange {destination:?} to exchange {source:?} ({routing_key:?})"
            ),
            Entity::Consumer { tag, queue, .. } => {
                write!(f, "consumer {tag:?} of queue {queue:?}")
            }
        }
    }
}

/// What happened to a recovering connection, as the recovery callbacks hear it
/// ([`Connection::add_on_recovery_callback`](crate::Connection::add_on_recovery_callback)).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum RecoveryEvent {
    /// The connection was lost; recovery starts.
    ConnectionLost {
        /// Why it was lost.
        cause: Error,
    },
    /// An attempt to reconnect failed (the next one follows after the backoff delay).
    AttemptFailed {
        /// The attempt's number, from 1.
        attempt: u32,
        /// Why it failed (each parameter set's error when several were tried).
        error: Error,
    },
    /// The connection is back: channels are open again, the topology declared again and the
    /// consumers registered again.
    Recovered(RecoveryReport),
    /// Recovery gave up (the policy's limit), or the connection ended for a reason recovery
    /// does not handle (say the broker closed it with 530 NOT_ALLOWED); the connection is
    /// closed with this error. A refused login during an attempt is not such a reason: it
    /// fails that attempt, and the next ones try again until the policy's limit.
    Failed {
        /// The error every call on the connection gets from now on.
        cause: Error,
    },
}

/// What a recovery did ([`RecoveryEvent::Recovered`]).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Recoveries of this connection so far, this one included (the generation of the
    /// deliveries received from now on: [`Delivery::generation`](crate::Delivery::generation)).
    pub generation: u64,
    /// Which attempt succeeded, from 1.
    pub attempt: u32,
    /// The host the connection is now to.
    pub host: String,
    /// The port.
    pub port: u16,
    /// From the loss to the end of the recovery.
    pub took: Duration,
    /// Server-named queues declared again, as (old name, new name).
    pub renamed: Vec<(String, String)>,
    /// Entities not declared again: filtered out, or refused by the broker (with its error).
    pub skipped: Vec<(Entity, Option<Error>)>,
    /// Channels that could not be opened again (their number and the error every call on
    /// them now gets).
    pub closed_channels: Vec<(u16, Error)>,
}
