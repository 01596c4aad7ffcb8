//! `rebuy-bitrix24`: the Bitrix24 REST connector of rebuy.
//!
//! It turns Bitrix24's REST API into the CRM-neutral [`rebuy_core::Connector`]: contacts,
//! companies and deals listed in `batch` requests of 50 chained list calls (2,500 records per
//! HTTP request), funnels and stages, users, single entities, the deal-id listing that replaces
//! a deletion log, and writes packed into `batch` (move a deal to another funnel, a to-do for a
//! manager, user-field values, the repeat-deal flag). It knows nothing of the sidecar's cache.
//!
//! # Layout
//! - [`client`]: [`B24Settings`], [`B24Auth`] (OAuth app or inbound webhook) and [`B24Client`]:
//!   the request loop (operating budget -> token -> leaky-bucket slot -> send -> classify ->
//!   [`rebuy_core::retry::decide`]), refresh-once-on-401 through [`rebuy_core::TokenManager`].
//! - [`auth`]: OAuth 2.0 with the `oauth2` crate and a GET adapter for Bitrix24's token
//!   endpoint: [`auth::authorize_url`], [`auth::exchange_code`], [`auth::B24Refresher`].
//! - [`limits`]: the portal's leaky bucket as a governor quota (burst = capacity - 2, rate =
//!   drain), a shared growing pause after 503, and the per-method operating-time budget.
//! - [`batch`]: `batch` commands, PHP query encoding, the `$result[..]`-chained list pages.
//! - `connector` (private): the [`rebuy_core::Connector`] impl and the cursors.
//! - `write` (private): [`rebuy_core::WriteOp`]s -> batch commands.
//! - `prelude` (private): a sync's metadata and the rank probes that cut full listings into
//!   segments, in as few `batch` requests as they fit.
//! - [`wire`]: Bitrix24's records in its own names, read leniently (strings for numbers,
//!   `[]` for empty maps), decoded with `serde_path_to_error`.
//! - [`map`]: wire -> domain.
//! - [`events`]: event deliveries (form or JSON) -> [`events::B24Event`].
//!
//! # Flow of one listing call
//! `Connector::deals(query, cursor)` -> `id:{last}` decoded -> one `batch` of 50
//! `crm.deal.list` commands chained by `>ID` -> [`B24Client`]'s request loop -> decoded into
//! [`wire::Deal`]s (paths named on error) -> product rows of the won ones
//! (`crm.item.productrow.list`, batched) -> [`map`] -> `Page<Deal>` with the next cursor.
#![warn(missing_docs)]

pub mod auth;
pub mod batch;
pub mod client;
mod connector;
pub mod events;
pub mod limits;
pub mod map;
mod prelude;
pub mod wire;
mod write;

pub use client::{B24Auth, B24Client, B24Settings};
pub use connector::PAGE;
