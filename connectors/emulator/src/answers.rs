//! Simulated customers answering touches: how a CRM's managers and customers react to the
//! tasks a sidecar writes, so that a measurement of its value can be checked against a known
//! truth (`rebuy results` on the emulators).
//!
//! Over a simulated period `[from, to)`, managers complete each open task due in it with
//! probability `completion`; then every customer (a contact with a won deal) buys once with
//! probability `base_probability`, or `base_probability + uplift` when a task of theirs was
//! completed in the period, as a won deal dated uniformly in the period (`amount` whole
//! roubles). Without touches, both groups buy alike: the true uplift in revenue per touched
//! customer is `completion x uplift x amount`.

/// The simulation's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct AnswerSim {
    /// Share of the open tasks due in the period that managers complete (0..1).
    pub completion: f64,
    /// Probability that a customer buys in the period without a completed task.
    pub base_probability: f64,
    /// Added to it for a customer with a task completed in the period.
    pub uplift: f64,
    /// Amount of each purchase, whole roubles.
    pub amount: i64,
    /// Seed of the draws (the same seed and state give the same answers).
    pub seed: u64,
}

/// What a simulated period did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnswerReport {
    /// Tasks completed.
    pub completed: u64,
    /// Customers with a completed task.
    pub answered: u64,
    /// Purchases (won deals added).
    pub purchases: u64,
    /// Of them, by customers with a completed task.
    pub purchases_answered: u64,
}
