//! rebuy: a sidecar that turns an amoCRM or Bitrix24 account into a repeat-sales machine.
//!
//! # Layout
//! Data flows one way: **pull -> cache -> analyse -> plan -> outbox -> CRM**. This library never
//! prints: the `rebuy` binary (`src/cli/`) owns the terminal and reaches it only through its
//! public items.
//! - [`config`]: the TOML config (`[[portal]]` entries), layered with `REBUY_` env overrides,
//!   validated with every problem reported at once; the dashboard's password forms.
//! - [`portal`]: builds a portal's connector (auth, limiter) from its config and store.
//! - [`store`]: the redb cache, one file per portal; every table in `store::tables`.
//! - [`sync`]: full and incremental pulls, streamed page by page into the store, resumable.
//! - [`analyse`]: streams the cache into the analytics; the backtest of a portal's history.
//! - [`analytics`]: pure functions over the cache: identity, repeat detection, RFM, ABC/XYZ,
//!   cycles, the purchase models and their backtests, business figures.
//! - [`playbooks`]: the mapping and playbooks (typed TOML, templates, business hours), resolved
//!   against the CRM's pipelines, users and fields.
//! - [`plan`]: the pure planner: analysis + CRM facts + rules + instant -> actions with
//!   idempotency keys (repeat routing, the cyclic funnel, touches, segment fields).
//! - [`writeback`]: cache + analysis + playbooks -> plan -> outbox; the mapping check.
//! - [`outbox`]: the durable write-back queue: actions committed before they are sent, sent
//!   once, marked done with the CRM's id.
//! - [`inbox`]: the durable webhook inbox: events committed before the CRM gets its answer.
//! - [`server`]: `rebuy serve`: webhooks into the inbox, real-time repeat routing, OAuth
//!   endpoints, the per-portal scheduler, health and metrics.
//! - [`ui`]: the `/ui` dashboard (portals, figures, RFM, segments, touches), composed with the
//!   server's router by the binary.
//! - [`emulated`]: portals on the built-in emulators (the demo, the benchmarks, the tests).
//! - [`holdout`]: the control groups (global and per rule, stratified by RFM cell, re-drawn
//!   by period) and the virtual touches of held-out customers.
//! - [`results`]: outcomes of the touches (task completed, purchase within the window) and
//!   treated vs holdout per rule with 95% intervals (`rebuy results`).
//! - [`failpoint`]: named crash points for the crash-safety tests.
//!
//! The CRM connectors live in `connectors/` and know nothing of this crate.
#![warn(missing_docs)]
#![warn(unreachable_pub)]

pub mod analyse;
pub mod analytics;
pub mod config;
pub mod emulated;
pub mod failpoint;
pub mod holdout;
pub mod inbox;
pub mod outbox;
pub mod plan;
pub mod playbooks;
pub mod portal;
pub mod results;
pub mod server;
pub mod store;
pub mod sync;
pub mod ui;
pub mod writeback;
