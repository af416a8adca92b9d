//! Bulk replays and discards of dead letters started from the console: each runs in the
//! background (batches of 500, each its own transaction, in `core::ops::dead_letters`) while its
//! page shows the progress, refreshing itself without script until the run is done.
//!
//! Progress is kept in this process only, for the last [`KEPT`] runs: what a run did is in the
//! log either way (a `job.replayed` / `job.discarded` fact per job).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use kommo_pay_core::ops::dead_letters::{self, Action, Outcome, Selection};
use kommo_pay_core::ops::{Operator, OpsError};
use maud::html;
use sqlx::PgPool;
use uuid::Uuid;

use super::session::SignedIn;
use super::{Answer, render};
use crate::AppState;

/// Runs whose progress stays visible.
const KEPT: usize = 100;

/// How the pages name an action and where its form posts.
pub(super) trait Shown {
    fn verb(self) -> &'static str;
    fn path(self) -> &'static str;
    fn explained(self) -> &'static str;
}

impl Shown for Action {
    fn verb(self) -> &'static str {
        match self {
            Action::Replay => "Replay",
            Action::Discard => "Discard",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Action::Replay => "replay",
            Action::Discard => "discard",
        }
    }

    fn explained(self) -> &'static str {
        match self {
            Action::Replay => "Each gets a new job with the same arguments and fresh attempts; the dead one stays, marked replayed.",
            Action::Discard => "They stay for the record, marked discarded, and are not run again.",
        }
    }
}

struct Run {
    action: Action,
    operator: String,
    matched: i64,
    done: i64,
    /// Set when the run ended: what it did, or why it stopped.
    ended: Option<Result<Outcome, String>>,
}

#[derive(Default)]
pub(crate) struct Runs(Mutex<VecDeque<(Uuid, Arc<Mutex<Run>>)>>);

impl Runs {
    /// Starts `action` on `selection` in the background; returns the run's id for its page.
    pub(super) fn start(&self, pool: PgPool, action: Action, selection: Selection, operator: Operator, reason: String) -> Uuid {
        let id = Uuid::new_v4();
        let run = Arc::new(Mutex::new(Run { action, operator: operator.0.clone(), matched: 0, done: 0, ended: None }));
        {
            let mut runs = self.0.lock().expect("the runs lock is never held across a panic");
            runs.push_back((id, run.clone()));
            if runs.len() > KEPT {
                runs.pop_front();
            }
        }
        tokio::spawn(async move {
            let seen = run.clone();
            let mut progress = move |done: i64, matched: i64| {
                let mut run = seen.lock().expect("the run lock is never held across a panic");
                (run.done, run.matched) = (done, matched);
            };
            let ended = dead_letters::act(&pool, &selection, action, &operator, &reason, false, &mut progress).await;
            if let Err(error) = &ended {
                tracing::error!(error = %error, operator = %operator.0, "console bulk action stopped");
            }
            let mut run = run.lock().expect("the run lock is never held across a panic");
            if let Ok(outcome) = &ended {
                (run.done, run.matched) = (outcome.done, outcome.matched);
            }
            run.ended = Some(ended.map_err(|e| e.to_string()));
        });
        id
    }

    fn get(&self, id: Uuid) -> Option<Arc<Mutex<Run>>> {
        self.0.lock().expect("the runs lock is never held across a panic").iter().find(|(run, _)| *run == id).map(|(_, run)| run.clone())
    }
}

pub(super) async fn page(State(state): State<Arc<AppState>>, signed: SignedIn, Path(id): Path<String>) -> Answer {
    let run = Uuid::parse_str(&id)
        .ok()
        .and_then(|id| state.console.runs.get(id))
        .ok_or_else(|| OpsError::NotFound("no such run here (runs are kept by the process that ran them, the last 100)".into()))?;
    let (action, operator, matched, done, ended) = {
        let run = run.lock().expect("the run lock is never held across a panic");
        (run.action, run.operator.clone(), run.matched, run.done, run.ended.clone())
    };
    let body = html! {
        @if ended.is_none() { meta http-equiv="refresh" content="1"; }
        p { "Started by " strong { (operator) } "." }
        progress max=(matched.max(1)) value=(done) { (done) " of " (matched) }
        @match &ended {
            None => p.running { "Running: " strong.done { (done) } " of " (matched) " so far." },
            Some(Ok(outcome)) => p.finished { "Done: " (action.verb().to_lowercase()) "ed " strong.done { (outcome.done) } " of " (outcome.matched) " selected." },
            Some(Err(error)) => p.error { "Stopped after " (done) " of " (matched) ": " (error) },
        }
        p { a href="/console/dead-letters" { "Back to the dead letters" } }
    };
    Ok(render(StatusCode::OK, &format!("{} dead letters", action.verb()), signed.shown(), body))
}
