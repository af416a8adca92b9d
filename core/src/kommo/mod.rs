//! Kommo (amoCRM): the CRM whose deals we keep in step with payments. Everything kommo-pay
//! knows of Kommo's wire format lives here, in both directions: the client and its batching,
//! the typed deals, fields, notes and tasks it sends and reads, the events API, and the
//! webhooks Kommo delivers.

pub mod activity;
mod batch;
pub mod client;
pub mod fields;
pub mod lead;
pub mod oauth;
pub mod setup;
pub mod stage_changes;
pub mod webhook;
