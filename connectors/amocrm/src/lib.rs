//! `rebuy-amocrm`: the amoCRM (and Kommo) API v4 connector of rebuy.
//!
//! It turns amoCRM's REST API into the CRM-neutral [`rebuy_core::Connector`]: paged listings of
//! contacts, companies and leads (deals) mapped to the domain model, the deletion log from
//! `/api/v4/events`, and bulk writes (move a lead, create a task, write fields, tag a repeat
//! sale). It knows nothing of the sidecar's cache or analytics.
//!
//! # Layout
//! - [`client`]: [`AmoSettings`] and [`AmoClient`]: one HTTP client per portal with its rate
//!   limiter, the retry loop ([`rebuy_core::retry::decide`]), the bearer header and the
//!   refresh-once-on-401 rule (refreshes go through [`rebuy_core::TokenManager`]).
//! - [`auth`]: OAuth 2.0 with the `oauth2` crate: the authorize URL, the code exchange and
//!   [`auth::AmoRefresher`], the [`rebuy_core::TokenRefresher`] of amoCRM.
//! - [`limits`]: the per-portal request limiter (7 requests/s, burst 1).
//! - `connector` (private): the [`rebuy_core::Connector`] impl: which request serves which method.
//! - `list` (private): cursors, listing requests and page prefetch.
//! - `write` (private): [`rebuy_core::WriteOp`]s packed into amoCRM bulk requests.
//! - [`wire`]: serde structs in amoCRM's own names (`Lead`, `Contact`, `Pipeline`, ...), read
//!   leniently (missing fields default, unknown fields ignored).
//! - [`map`]: wire structs -> domain records (phones, emails, money, stages).
//! - [`webhooks`]: amoCRM's form-encoded, PHP-nested webhook bodies -> typed events.
//!
//! # Flow of one listing call
//! `Connector::deals(query, cursor)` -> cursor decoded (`list`) -> `GET /api/v4/leads?...` through
//! [`AmoClient`]'s request loop (limiter -> token -> send -> classify -> retry) -> body decoded
//! with `serde_path_to_error` into [`wire`] structs -> [`map`] -> `Page<Deal>` with the next cursor.
#![warn(missing_docs)]

pub mod auth;
pub mod client;
mod connector;
pub mod limits;
mod list;
pub mod map;
pub mod webhooks;
pub mod wire;
mod write;

pub use client::{AmoClient, AmoSettings};
