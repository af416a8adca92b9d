//! Lemon Squeezy: checkouts, orders and subscriptions, as merchant of record.

pub mod client;
pub mod event;
pub mod webhook;
