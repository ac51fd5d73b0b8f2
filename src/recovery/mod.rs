//! Automatic recovery (issue 14), built piece by piece. So far, two sans-IO parts:
//! [`topology`], the record of what a connection declared and the plan to declare it again,
//! and [`backoff`], the delays between reconnection attempts and when to give up. Nothing in
//! it is wired to a connection yet, and nothing of it is public.

pub(crate) mod backoff;
pub(crate) mod topology;
