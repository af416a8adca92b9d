//! Integration tests: the real ingest application against a real PostgreSQL.
//! One binary (files by feature) so the suite links once.

mod any_order;
mod bad_input;
mod binary;
mod browser;
mod checkout_fields;
mod console;
mod console_browser;
mod crash;
mod crash_points;
mod deploy;
mod event_log;
mod fairness;
mod fakes;
mod groups;
mod health;
mod helpers;
mod kommo;
mod kommo_client;
mod lemonsqueezy;
mod lemonsqueezy_client;
mod metrics;
mod oauth;
mod ops;
mod reconcile;
mod resilience;
mod resumed_steps;
mod scheduler;
mod secrets;
mod stripe;
mod stripe_client;
mod stripe_flow;
mod tracing;
mod unavailable;
mod worker;
mod workspace;
