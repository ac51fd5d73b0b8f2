//! Merging a consumer's acks: consecutive `basic_ack(tag, multiple=false)` calls become one
//! `basic.ack(last, multiple=true)` on the wire, without ever acknowledging a message the user
//! did not ack.
//!
//! A broker spends most of a manual-ack consumer's cost on the ack frames (RabbitMQ handles a
//! multiple ack of 100 deliveries for about the price of one single ack). The tracker below
//! knows, per channel, the `floor`: every delivery tag up to it is settled on the wire. When
//! the user acks `floor + 1`, `floor + 2`, ... in order, those acks are held as a run
//! `(floor, held]`; written as `ack(held, multiple=true)`, the run settles exactly the tags the
//! user acked, because nothing at or below `floor` is unsettled any more. Whatever does not
//! extend the run (an ack out of order, a nack, a reject, a multiple ack of the user's) first
//! writes the held run, then itself, unchanged, so the broker sees the user's settlements in
//! the user's order.
//!
//! A run is held only while more deliveries wait in the channel's queue (the consumer is about
//! to come back and ack the next one), up to [`MAX_RUN`] acks and a quarter of the prefetch
//! window (none below a window of 8, so the broker keeps refilling a small window as before).
//! It is written when the run ends, before any other frame of the channel, when a consumer of
//! the channel waits for deliveries, before the channel or connection closes, and otherwise by
//! the I/O thread within [`ACK_FLUSH_DELAY`].
//!
//! Merging is off for good once the channel enters transaction mode (a rollback makes acked
//! tags unsettled again) or after `basic.recover` (it makes the old tags unknown).

use std::collections::BTreeSet;
use std::time::Duration;

use crate::protocol::ack_frames::Settle;

/// Most acks held in one run before it is written.
pub(crate) const MAX_RUN: u64 = 256;

/// The share of the channel's prefetch window a run may hold: the broker keeps refilling the
/// rest while the consumer works, so a small window is not turned into stop-and-go.
const WINDOW_SHARE: u64 = 4;

/// Longest an ack is held before the I/O thread writes it (documented on `Channel::basic_ack`).
pub(crate) const ACK_FLUSH_DELAY: Duration = Duration::from_millis(5);

/// Out-of-order settled tags remembered above the floor; beyond this the channel stops merging.
const ABOVE_KEPT: usize = 4096;

/// One channel's settlement state; lives in the channel's state, behind its lock.
#[derive(Debug)]
pub(crate) struct AckRun {
    merging: bool,
    /// Highest delivery tag received (basic.deliver or basic.get-ok).
    delivered: u64,
    /// Every tag up to this one is settled on the wire, or queued to be ahead of anything new.
    floor: u64,
    /// `held > floor`: the user acked every tag in `(floor, held]` not in `above`, and those
    /// acks are not yet written. `held == floor`: nothing is held.
    held: u64,
    /// Tags above `floor` already settled on the wire out of order.
    above: BTreeSet<u64>,
    /// Most acks one run holds: [`MAX_RUN`], less for a small prefetch window.
    run_cap: u64,
}

/// The frames one settlement needs: the held run first, then the user's own frame.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) flush: Option<(Settle, u64)>,
    pub(crate) send: Option<(Settle, u64)>,
    /// The settlement was added to the run, which was empty before.
    pub(crate) started: bool,
}

impl Default for AckRun {
    fn default() -> Self {
        AckRun {
            merging: true,
            delivered: 0,
            floor: 0,
            held: 0,
            above: BTreeSet::new(),
            run_cap: MAX_RUN,
        }
    }
}

impl AckRun {
    /// A delivery with this tag arrived.
    pub(crate) fn delivered(&mut self, tag: u64) {
        self.delivered = self.delivered.max(tag);
    }

    /// The highest delivery tag that arrived.
    pub(crate) fn last_delivered(&self) -> u64 {
        self.delivered
    }

    /// The channel's prefetch count (basic.qos; 0 for none) changed.
    pub(crate) fn set_prefetch(&mut self, prefetch_count: u16) {
        self.run_cap = match u64::from(prefetch_count) {
            0 => MAX_RUN,
            n => (n / WINDOW_SHARE).min(MAX_RUN),
        };
    }

    /// Turns merging off for good (tx.select, basic.recover); the caller writes the held run
    /// first ([`take_held`](Self::take_held)).
    pub(crate) fn stop_merging(&mut self) {
        self.merging = false;
    }

    /// Whether acks are held.
    pub(crate) fn holding(&self) -> bool {
        self.held > self.floor
    }

    /// The frame that writes the held run, if any; the run counts as written from now on.
    pub(crate) fn take_held(&mut self) -> Option<(Settle, u64)> {
        if !self.holding() {
            return None;
        }
        let multiple = self.held - self.floor > 1;
        let tag = self.held;
        self.floor = tag;
        self.absorb();
        Some((Settle::Ack { multiple }, tag))
    }

    /// Forgets the held run without writing it (the channel is closed: the broker requeued
    /// everything unacked).
    pub(crate) fn discard(&mut self) {
        self.held = self.floor;
    }

    /// A settlement the user asked for. `more_queued`: deliveries wait in the channel's queue.
    pub(crate) fn settle(&mut self, settle: Settle, tag: u64, more_queued: bool) -> Plan {
        if settle == (Settle::Ack { multiple: false }) && self.extends_run(tag) {
            // Tags between the run and `tag` are settled already (in `above`): the run covers
            // them harmlessly.
            while self.above.first().is_some_and(|&t| t < tag) {
                self.above.pop_first();
            }
            let was_holding = self.holding();
            self.held = tag;
            if more_queued && self.held - self.floor < self.run_cap {
                return Plan {
                    started: !was_holding,
                    ..Plan::default()
                };
            }
            return Plan {
                flush: self.take_held(),
                ..Plan::default()
            };
        }
        let flush = self.take_held();
        self.settled(settle, tag);
        Plan {
            flush,
            send: Some((settle, tag)),
            started: false,
        }
    }

    /// Whether a single ack of `tag` may join the run: merging is on, the tag was delivered,
    /// and every tag between the run's end and it is settled already.
    fn extends_run(&self, tag: u64) -> bool {
        if !self.merging || tag > self.delivered || tag <= self.held {
            return false;
        }
        // `tag > held`, so none of these additions overflows.
        let mut next = self.held + 1;
        for &t in self.above.range(next..tag) {
            if t != next {
                return false;
            }
            next = t + 1;
        }
        tag == next
    }

    /// Records a settlement written as the user asked (after the held run).
    fn settled(&mut self, settle: Settle, tag: u64) {
        let multiple = match settle {
            Settle::Ack { multiple } | Settle::Nack { multiple, .. } => multiple,
            Settle::Reject { .. } => false,
        };
        if multiple {
            // Tag 0 with multiple means everything delivered so far.
            let upto = if tag == 0 {
                self.delivered
            } else {
                tag.min(self.delivered)
            };
            if upto > self.floor {
                self.floor = upto;
                self.held = upto;
            }
        } else if Some(tag) == self.floor.checked_add(1) {
            self.floor = tag;
            self.held = tag;
        } else if tag > self.floor && tag <= self.delivered && self.above.len() < ABOVE_KEPT {
            self.above.insert(tag);
        }
        self.absorb();
    }

    /// Moves the floor over settled tags right above it.
    fn absorb(&mut self) {
        let next = |floor: u64| floor.saturating_add(1);
        while self.above.first().is_some_and(|&t| t <= next(self.floor)) {
            let t = self.above.pop_first().expect("not empty");
            if t == next(self.floor) && t > self.floor && !self.holding() {
                self.floor = t;
                self.held = t;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACK: Settle = Settle::Ack { multiple: false };
    const ACK_MULTI: Settle = Settle::Ack { multiple: true };

    fn run(delivered: u64) -> AckRun {
        let mut r = AckRun::default();
        r.delivered(delivered);
        r
    }

    /// What the broker ends up settling: the union of the written frames' effects, given
    /// which tags are unsettled (a multiple ack settles every unsettled tag up to its own).
    fn apply(unsettled: &mut BTreeSet<u64>, frame: (Settle, u64)) {
        let (settle, tag) = frame;
        let multiple = matches!(
            settle,
            Settle::Ack { multiple: true } | Settle::Nack { multiple: true, .. }
        );
        assert!(
            unsettled.contains(&tag),
            "frame {frame:?} names an unsettled tag"
        );
        if multiple {
            unsettled.retain(|&t| t > tag);
        } else {
            unsettled.remove(&tag);
        }
    }

    fn write(unsettled: &mut BTreeSet<u64>, plan: &Plan) {
        for frame in [plan.flush, plan.send].into_iter().flatten() {
            apply(unsettled, frame);
        }
    }

    #[test]
    fn in_order_acks_merge_into_one_multiple_ack() {
        let mut r = run(10);
        for tag in 1..10 {
            let plan = r.settle(ACK, tag, true);
            assert_eq!(plan.flush, None);
            assert_eq!(plan.send, None);
            assert_eq!(plan.started, tag == 1);
        }
        // Nothing more queued: the run goes out.
        let plan = r.settle(ACK, 10, false);
        assert_eq!(plan.flush, Some((ACK_MULTI, 10)));
        assert_eq!(plan.send, None);
        assert!(!r.holding());
    }

    #[test]
    fn a_lone_ack_goes_out_as_it_was_asked() {
        let mut r = run(1);
        let plan = r.settle(ACK, 1, false);
        assert_eq!(plan.flush, Some((ACK, 1)));
    }

    #[test]
    fn runs_are_bounded() {
        let mut r = run(10_000);
        let mut written = 0;
        for tag in 1..=1000 {
            if r.settle(ACK, tag, true).flush.is_some() {
                written += 1;
            }
        }
        assert_eq!(written, 1000 / MAX_RUN as usize);
    }

    #[test]
    fn runs_hold_a_quarter_of_the_prefetch_window_at_most() {
        for (prefetch, cap) in [(0u16, MAX_RUN), (1000, 250), (10, 2), (7, 1), (1, 1)] {
            let mut r = run(2000);
            r.set_prefetch(prefetch);
            let mut flushed_at = None;
            for tag in 1..=MAX_RUN + 1 {
                if r.settle(ACK, tag, true).flush.is_some() {
                    flushed_at = Some(tag);
                    break;
                }
            }
            assert_eq!(flushed_at, Some(cap.max(1)), "prefetch {prefetch}");
        }
    }

    #[test]
    fn a_gap_is_never_covered() {
        // Tag 3 stays unacked: acks of 4.. must not cover it.
        let mut unsettled: BTreeSet<u64> = (1..=8).collect();
        let mut r = run(8);
        for tag in [1, 2, 4, 5, 6, 7, 8] {
            let plan = r.settle(ACK, tag, true);
            write(&mut unsettled, &plan);
        }
        write(
            &mut unsettled,
            &Plan {
                flush: r.take_held(),
                ..Plan::default()
            },
        );
        assert_eq!(unsettled, BTreeSet::from([3]));
        // Once 3 is acked the floor moves over everything settled out of order.
        write(&mut unsettled, &r.settle(ACK, 3, false));
        assert!(unsettled.is_empty());
        assert_eq!(r.floor, 8);
        // And merging resumes.
        r.delivered(10);
        assert_eq!(r.settle(ACK, 9, true).flush, None);
        assert_eq!(r.settle(ACK, 10, false).flush, Some((ACK_MULTI, 10)));
    }

    #[test]
    fn other_settlements_write_the_run_first_and_go_out_unchanged() {
        let mut unsettled: BTreeSet<u64> = (1..=6).collect();
        let mut r = run(6);
        write(&mut unsettled, &r.settle(ACK, 1, true));
        write(&mut unsettled, &r.settle(ACK, 2, true));
        let reject = Settle::Reject { requeue: true };
        let plan = r.settle(reject, 3, true);
        assert_eq!(plan.flush, Some((ACK_MULTI, 2)));
        assert_eq!(plan.send, Some((reject, 3)));
        write(&mut unsettled, &plan);
        // The reject settled 3: the run may go on from 4.
        assert_eq!(r.settle(ACK, 4, true).flush, None);
        let nack = Settle::Nack {
            multiple: true,
            requeue: false,
        };
        write(&mut unsettled, &r.settle(ACK, 5, true));
        let plan = r.settle(nack, 6, false);
        assert_eq!(plan.flush, Some((ACK_MULTI, 5)));
        write(&mut unsettled, &plan);
        assert!(unsettled.is_empty());
        assert!(!r.holding());
    }

    #[test]
    fn double_and_unknown_acks_reach_the_broker_unchanged() {
        let mut r = run(3);
        assert_eq!(r.settle(ACK, 1, true).flush, None);
        // Acking 1 again: the broker must see it (and close the channel), after the run.
        let plan = r.settle(ACK, 1, true);
        assert_eq!(plan.flush, Some((ACK, 1)));
        assert_eq!(plan.send, Some((ACK, 1)));
        // A tag not delivered yet is not merged either.
        let plan = r.settle(ACK, 7, true);
        assert_eq!(plan.flush, None);
        assert_eq!(plan.send, Some((ACK, 7)));
    }

    #[test]
    fn no_merging_once_stopped() {
        let mut r = run(5);
        assert_eq!(r.settle(ACK, 1, true).flush, None);
        assert_eq!(r.take_held(), Some((ACK, 1)));
        r.stop_merging();
        let plan = r.settle(ACK, 2, true);
        assert_eq!(plan.send, Some((ACK, 2)));
    }

    #[test]
    fn multiple_with_tag_zero_settles_everything_delivered() {
        let mut r = run(5);
        let plan = r.settle(ACK_MULTI, 0, false);
        assert_eq!(plan.send, Some((ACK_MULTI, 0)));
        assert_eq!(r.floor, 5);
    }

    #[test]
    fn tags_at_the_top_of_the_range_do_not_overflow() {
        // A peer may send any tag; u64::MAX must not wrap or panic.
        let mut unsettled: BTreeSet<u64> = [u64::MAX - 2, u64::MAX - 1, u64::MAX].into();
        let mut r = run(u64::MAX);
        r.floor = u64::MAX - 3;
        r.held = u64::MAX - 3;
        write(&mut unsettled, &r.settle(ACK, u64::MAX - 1, true));
        write(&mut unsettled, &r.settle(ACK, u64::MAX - 2, true));
        write(&mut unsettled, &r.settle(ACK, u64::MAX, false));
        assert!(unsettled.is_empty());
        assert_eq!(r.floor, u64::MAX);
        // Anything after that goes out unchanged.
        let plan = r.settle(ACK, u64::MAX, true);
        assert_eq!(plan.send, Some((ACK, u64::MAX)));
        let plan = r.settle(Settle::Reject { requeue: true }, 5, true);
        assert_eq!(plan.send, Some((Settle::Reject { requeue: true }, 5)));
    }

    #[test]
    fn discarded_runs_are_not_written() {
        let mut r = run(5);
        r.settle(ACK, 1, true);
        r.discard();
        assert_eq!(r.take_held(), None);
    }
}
