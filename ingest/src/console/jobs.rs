//! `/console/jobs/{id}`: one job — its arguments, every attempt's error, the event that caused it
//! and its deal — and the jobs table other pages share.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use kommo_pay_core::ops::OpsError;
use kommo_pay_core::ops::dead_letters;
use kommo_pay_core::ops::events::JobSummary;
use maud::{Markup, html};

use super::session::SignedIn;
use super::{Answer, NOTHING, deal_link, pretty, render, state_badge, when};
use crate::AppState;

pub(super) fn table(jobs: &[JobSummary]) -> Markup {
    html! {
        @if jobs.is_empty() { p.muted { "No jobs." } } @else {
            table {
                thead { tr { th { "Job" } th { "Kind" } th { "State" } th.n { "Attempts" } th { "Created" } th { "Finished" } th { "Last error" } } }
                tbody {
                    @for j in jobs {
                        tr {
                            td { a href={ "/console/jobs/" (j.id) } { (j.id) } @if let Some(of) = j.replay_of { span.muted { " (replays " (of) ")" } } }
                            td { (j.kind) } td { (state_badge(&j.state)) } td.n { (j.attempt) " / " (j.max_attempts) }
                            td { (when(&j.created_at)) }
                            td { @match &j.finished_at { Some(at) => (when(at)), None => (NOTHING) } }
                            td.error-text { @if let Some(error) = &j.last_error { (error) } }
                        }
                    }
                }
            }
        }
    }
}

pub(super) async fn page(State(state): State<Arc<AppState>>, signed: SignedIn, Path(id): Path<String>) -> Answer {
    let id = id.parse::<i64>().map_err(|_| OpsError::BadRequest(format!("job id {id:?} is not a number")))?;
    let detail = dead_letters::show(&state.pool, id).await?;
    let job = &detail.job;
    let errors = detail.errors.as_array().cloned().unwrap_or_default();
    let text = |v: &serde_json::Value, key: &str| v.get(key).map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned)).unwrap_or_default();
    let body = html! {
        dl {
            dt { "State" } dd { (state_badge(&job.state)) " after " (job.attempt) " of " (job.max_attempts) " attempts" }
            dt { "Account" } dd { (detail.account) }
            @if let Some(lead) = detail.lead_id { dt { "Deal" } dd { (deal_link(&detail.account, lead)) } }
            dt { "Created" } dd { (when(&job.created_at)) }
            @if let Some(at) = &job.finished_at { dt { "Finished" } dd { (when(at)) } }
            @if let Some(worker) = &detail.locked_by { dt { "Worker" } dd { code { (worker) } } }
            @if let Some(of) = job.replay_of { dt { "Replays" } dd { a href={ "/console/jobs/" (of) } { "job " (of) } } }
            @if let Some(by) = detail.replayed_as { dt { "Replayed as" } dd { a href={ "/console/jobs/" (by) } { "job " (by) } } }
            @if let Some(event) = &detail.event {
                dt { "Caused by" } dd { a href={ "/console/events/" (event.id) } { (event.source) " " (event.kind) " #" (event.seq) } }
            }
        }
        @if job.state == "dead" {
            form.act method="post" action="/console/dead-letters/replay" {
                (super::csrf(&signed.csrf))
                input type="hidden" name="ids" value=(job.id);
                button type="submit" { "Replay or discard…" }
            }
        }
        h2 { "Arguments" }
        pre.json { (pretty(&detail.args)) }
        h2 { "Attempts that failed" }
        @if errors.is_empty() { p.muted { "None." } } @else {
            table {
                thead { tr { th.n { "Attempt" } th { "At" } th { "Error" } } }
                tbody { @for e in &errors { tr { td.n { (text(e, "attempt")) } td { (text(e, "at")) } td.error-text { (text(e, "error")) } } } }
            }
        }
    };
    Ok(render(StatusCode::OK, &format!("Job {} ({})", job.id, job.kind), signed.shown(), body))
}
