//! Integration tests: the real ingest application against a real PostgreSQL.
//! One binary (files by feature) so the suite links once.

mod binary;
mod event_log;
mod health;
mod helpers;
mod kommo;
mod lemonsqueezy;
mod stripe;
mod unavailable;
mod worker;
