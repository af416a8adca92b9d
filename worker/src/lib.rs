//! The worker role: claims jobs from the queue and runs their handlers, with retries stored in
//! the job row, dead letters, heartbeats, crash rescue and graceful shutdown.
//!
//! A plain tokio loop rather than apalis: see docs/adr/0005-worker-loop-without-apalis.md.

mod completer;
pub mod executor;
pub mod flows;
pub mod handler;
pub mod rescuer;
mod wake;

pub use executor::{Outcome, Ran, Worker};
pub use flows::{Context, handlers};
pub use handler::{Handlers, JobError};
pub use rescuer::Rescuer;
