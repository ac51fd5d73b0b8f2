//! Automatic recovery (issue 14), built piece by piece. So far: [`topology`], the sans-IO
//! record of what a connection declared, and the plan to declare it again. Nothing in it is
//! wired to a connection yet, and nothing of it is public.

pub(crate) mod topology;
