//! Heartbeat bookkeeping as a plain state machine over `Instant`s.
//!
//! With a negotiated interval of `h` seconds we send a heartbeat when we have written nothing
//! for `h / 2`, and declare the peer dead when it has sent nothing (no frame of any kind) for
//! `2 * h`. While the I/O thread deliberately stops reading (inbound back-pressure) the peer's
//! silence is ours, so the receive deadline is pushed back for that time.

use std::time::{Duration, Instant};

/// What the I/O thread must do now.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Due {
    /// Nothing until the next deadline.
    Nothing,
    /// Write a heartbeat frame.
    Send,
    /// The peer has been silent too long.
    Dead(Duration),
}

/// Heartbeat deadlines for one connection.
#[derive(Debug)]
pub(crate) struct Heartbeat {
    interval: Option<Duration>,
    last_recv: Instant,
    last_send: Instant,
}

impl Heartbeat {
    /// `seconds == 0` turns heartbeats off.
    pub(crate) fn new(seconds: u16, now: Instant) -> Self {
        Heartbeat {
            interval: (seconds > 0).then(|| Duration::from_secs(seconds as u64)),
            last_recv: now,
            last_send: now,
        }
    }

    /// Something arrived from the peer (or we chose not to read: see the module docs).
    pub(crate) fn received(&mut self, now: Instant) {
        self.last_recv = self.last_recv.max(now);
    }

    /// Something was written to the peer.
    pub(crate) fn sent(&mut self, now: Instant) {
        self.last_send = now;
    }

    fn send_at(&self, interval: Duration) -> Instant {
        self.last_send + interval / 2
    }

    fn dead_at(&self, interval: Duration) -> Instant {
        self.last_recv + interval * 2
    }

    /// What is due at `now`.
    pub(crate) fn poll(&self, now: Instant) -> Due {
        let Some(interval) = self.interval else {
            return Due::Nothing;
        };
        if now >= self.dead_at(interval) {
            Due::Dead(now - self.last_recv)
        } else if now >= self.send_at(interval) {
            Due::Send
        } else {
            Due::Nothing
        }
    }

    /// How long the I/O thread may sleep before something is due; `None` when heartbeats are off.
    pub(crate) fn next_wakeup(&self, now: Instant) -> Option<Duration> {
        let interval = self.interval?;
        let next = self.send_at(interval).min(self.dead_at(interval));
        Some(next.saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_means_nothing_is_ever_due() {
        let t0 = Instant::now();
        let hb = Heartbeat::new(0, t0);
        assert_eq!(hb.poll(t0 + Duration::from_secs(3600)), Due::Nothing);
        assert_eq!(hb.next_wakeup(t0), None);
    }

    #[test]
    fn sends_after_half_the_interval_without_writes() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(10, t0);
        assert_eq!(hb.poll(t0 + Duration::from_secs(4)), Due::Nothing);
        assert_eq!(hb.next_wakeup(t0), Some(Duration::from_secs(5)));
        assert_eq!(hb.poll(t0 + Duration::from_secs(5)), Due::Send);
        hb.sent(t0 + Duration::from_secs(5));
        hb.received(t0 + Duration::from_secs(5));
        assert_eq!(hb.poll(t0 + Duration::from_secs(9)), Due::Nothing);
    }

    #[test]
    fn dead_after_two_silent_intervals() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(1, t0);
        for s in 1..4 {
            hb.sent(t0 + Duration::from_millis(500 * s));
        }
        assert_eq!(hb.poll(t0 + Duration::from_millis(1999)), Due::Nothing);
        assert_eq!(
            hb.poll(t0 + Duration::from_secs(2)),
            Due::Dead(Duration::from_secs(2))
        );
        hb.received(t0 + Duration::from_secs(2));
        // Alive again; our own heartbeat (last sent at 1.5 s) is due.
        assert_eq!(hb.poll(t0 + Duration::from_millis(2100)), Due::Send);
    }
}
