//! The durable write-back outbox: every CRM write is committed here before it is sent, sent
//! under the connector's rate limit packed into bulk requests, retried with backoff, and marked
//! done together with the CRM's id, in one transaction.
//!
//! Flow position: pull -> cache -> analyse -> plan -> **outbox** -> CRM.
//!
//! Exactly-once, as far as a CRM allows:
//! - an action's idempotency key (portal, rule, customer, due window) is its primary key, so
//!   planning the same thing twice enqueues it once, across restarts too;
//! - before sending, entries are marked in flight (committed); a process killed between the
//!   send and the "done" commit finds them in flight at restart. Moves and field writes set a
//!   state and are simply sent again. A task would be created twice, so its text carries a
//!   marker derived from the key (`#rebuy:1a2b3c4d5e6f`) and the CRM is asked for a task with
//!   that marker first ([`rebuy_core::Connector::find_task`]);
//! - permanent errors (validation, permission, deleted entity) are recorded with the CRM's
//!   message and never block the other actions; retryable ones back off and give up after
//!   `max_attempts`.
mod queue;
mod worker;

pub use queue::{
    Action, ActionState, EnqueueReport, Entry, OutboxCounts, RetryOutcome, marker_for,
};
pub use worker::{DrainOptions, DrainReport, drain};
