//! `rebuy-core`: the vocabulary every other rebuy crate shares.
//!
//! # Layout
//! - [`ids`]: newtype ids of CRM entities and portals.
//! - [`money`]: exact money (`rust_decimal`), never `f64`.
//! - [`phone`]: phone normalisation to E.164 (the raw value is always kept).
//! - [`model`]: the CRM-neutral domain model: [`Contact`], [`Company`], [`Deal`], [`Pipeline`],
//!   [`Stage`], [`User`], [`ProductRow`], [`Account`].
//! - [`connector`]: the [`Connector`] trait that each CRM crate implements, with [`Page`] and
//!   [`Cursor`] for streamed, resumable listing, and the write operations ([`WriteOp`]).
//! - [`error`]: [`ConnectorError`], classified for the retry policy, and the pure
//!   [`retry::decide`] function.
//! - [`oauth`]: the OAuth adapter error both connectors share and its classification.
//! - [`auth`]: tokens ([`TokenSet`]), the [`TokenStore`] the sidecar implements on its redb store,
//!   and [`TokenManager`], the single-flight refresh coordinator both connectors use.
//!
//! Connectors depend on this crate and never on the sidecar: they know nothing of the cache or
//! the analytics. This crate performs no network or file I/O.
#![warn(missing_docs)]

pub mod auth;
pub mod body;
pub mod connector;
pub mod error;
pub mod ids;
pub mod model;
pub mod money;
pub mod oauth;
pub mod phone;
pub mod retry;
pub mod timestamp;

pub use auth::{TokenManager, TokenRefresher, TokenSet, TokenStore};
pub use connector::{
    Connector, CrmCustomer, Cursor, CustomersFunnel, EntityRef, FieldDef, FieldEntityKind,
    FieldKind, FieldWrite, LimiterSaver, LimiterState, ListQuery, Page, Prelude, SaverSlot,
    TaskKind, WriteOp, WriteOutcome,
};
pub use error::ConnectorError;
pub use ids::*;
pub use model::*;
pub use money::{Currency, Money};
pub use phone::Phone;
