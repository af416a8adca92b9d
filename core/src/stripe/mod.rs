//! Stripe: payment links, checkout sessions, subscriptions and refunds.

pub mod client;
pub mod event;
pub mod webhook;
