//! `rebuy-emulator`: faithful local emulators of the CRM APIs rebuy talks to.
//!
//! The emulators are a product feature (integrators test their mappings against them with
//! `rebuy emulate amocrm`) and the ground of every rebuy test, the demo and the benchmarks.
//! They are written from the API facts in this crate's `docs/`
//! (`connectors/emulator/docs/amocrm.md`, `connectors/emulator/docs/bitrix24.md`), not from the
//! client's types: this crate depends on no other rebuy crate, so a misreading of the API cannot
//! pass on both sides.
//!
//! # Layout
//! - [`seed`]: the deterministic, CRM-neutral data generator ([`seed::generate`]): people with
//!   messy phones, duplicates, companies, pipelines, three years of deals with real repeat-buying
//!   patterns. Reused by every CRM emulator.
//! - [`answers`]: simulated customers answering touches ([`answers::AnswerSim`]): managers
//!   complete tasks, customers with a completed task buy more often.
//! - [`faults`]: fault injection ([`faults::FaultConfig`]): 5xx, extra 429, slow answers,
//!   dropped connections, truncated JSON, drawn from a seeded generator.
//! - [`limits`]: the sliding one-second window with escalation to a sticky block.
//! - [`tls`]: HTTPS with a self-signed certificate generated at start (`--tls`).
//! - [`delivery`]: outgoing webhooks ([`delivery::DeliveryConfig`]): a background task per
//!   emulator POSTs every change to the registered URLs, with timeouts, retries (amoCRM) and
//!   seeded duplicates, drops and delays.
//! - [`amocrm`]: the amoCRM emulator ([`amocrm::AmoEmulator`]): OAuth 2.0, API v4 lists and
//!   writes, events, rate limits; `router()` for in-process tests, `serve(listener, shutdown)`
//!   and `spawn()` for real sockets, [`amocrm::run_amocrm`] for the CLI.
//!
//! # Example
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use rebuy_emulator::amocrm::{AmoConfig, AmoEmulator};
//! let running = AmoEmulator::spawn(AmoConfig::default()).await?;
//! let code = running.emulator.issue_authorization_code();
//! // POST {base_url}/oauth2/access_token with the code, then GET {base_url}/api/v4/leads ...
//! # let _ = (code, &running.base_url);
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod amocrm;
pub mod answers;
pub mod bitrix24;
pub mod delivery;
pub mod faults;
pub mod limits;
mod rng;
pub mod seed;
pub mod tls;
