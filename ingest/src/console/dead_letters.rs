//! `/console/dead-letters`: grouped counts, filters, a page of dead jobs to pick from, and
//! replay or discard of a selection — first counted (a dry run) and confirmed with a reason,
//! then run in the background with a progress page (`runs.rs`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Redirect};
use kommo_pay_core::ops::OpsError;
use kommo_pay_core::ops::dead_letters::{self, Action, DeadFilter, Selection};
use maud::{Markup, html};

use super::runs::Shown as _;
use super::session::{Posted, SignedIn};
use super::{Answer, Fields, NOTHING, csrf, deal_link, options, render, when};
use crate::AppState;

/// The filter fields, in the order of the form.
const FILTER: [&str; 4] = ["account", "kind", "lead", "error"];

fn filter(fields: &Fields, paged: bool) -> Result<DeadFilter, OpsError> {
    Ok(DeadFilter {
        account: fields.text("account"),
        kind: fields.text("kind"),
        lead: fields.number("lead", "deal id")?,
        error: fields.text("error"),
        cursor: if paged { fields.text("cursor") } else { None },
        limit: paged.then_some(100),
    })
}

/// The filter's fields again, hidden, so a form acts on what the page showed.
fn hidden_filter(fields: &Fields) -> Markup {
    html! { @for name in FILTER { @if let Some(value) = fields.get(name) { input type="hidden" name=(name) value=(value); } } }
}

fn described(fields: &Fields) -> String {
    let parts: Vec<String> = FILTER.iter().filter_map(|name| fields.get(name).map(|v| format!("{name} {v:?}"))).collect();
    if parts.is_empty() { "every dead letter".to_owned() } else { format!("dead letters with {}", parts.join(", ")) }
}

pub(super) async fn list(State(state): State<Arc<AppState>>, signed: SignedIn, uri: Uri) -> Answer {
    let fields = Fields::query(&uri);
    let counts = dead_letters::counts(&state.pool, &filter(&fields, false)?).await?;
    let found = dead_letters::list(&state.pool, &filter(&fields, true)?).await?;
    let matching: i64 = counts.iter().map(|c| c.count).sum();
    let kinds: std::collections::BTreeSet<&str> = counts.iter().map(|c| c.kind.as_str()).collect();
    let next = found.next_cursor.as_ref().map(|cursor| fields.next_page("/console/dead-letters", cursor));
    let body = html! {
        form.filters method="get" action="/console/dead-letters" {
            label { "Account" select name="account" { (options(state.accounts.iter().map(|a| a.slug.as_str()), fields.get("account"))) } }
            label { "Kind" input type="text" name="kind" list="kinds" value=[fields.get("kind")]; }
            datalist #kinds { @for k in &kinds { option value=(k) {} } }
            label { "Deal id" input type="number" name="lead" min="1" value=[fields.get("lead")]; }
            label { "Error contains" input type="text" name="error" value=[fields.get("error")]; }
            button type="submit" { "Filter" }
        }
        @if counts.is_empty() { p { "No dead letters match." } } @else {
            table {
                thead { tr { th { "Kind" } th { "Last error" } th.n { "Jobs" } } }
                tbody { @for c in &counts { tr { td { (c.kind) } td.error-text { (c.error) } td.n { (c.count) } } } }
            }
            form.act method="post" action="/console/dead-letters/replay" {
                (csrf(&signed.csrf))
                (hidden_filter(&fields))
                div.actions {
                    button type="submit" name="scope" value="matching" formaction="/console/dead-letters/replay" { "Replay all " (matching) " matching…" }
                    button type="submit" name="scope" value="matching" formaction="/console/dead-letters/discard" { "Discard all " (matching) " matching…" }
                    button type="submit" name="scope" value="selected" formaction="/console/dead-letters/replay" { "Replay selected…" }
                    button type="submit" name="scope" value="selected" formaction="/console/dead-letters/discard" { "Discard selected…" }
                }
                table {
                    thead { tr { th { "" } th { "Job" } th { "Kind" } th { "Account" } th { "Deal" } th.n { "Attempts" } th { "Died" } th { "Last error" } } }
                    tbody {
                        @for job in &found.items {
                            tr {
                                td { input type="checkbox" name="ids" value=(job.id) aria-label={ "select job " (job.id) }; }
                                td { a href={ "/console/jobs/" (job.id) } { (job.id) } }
                                td { (job.kind) } td { (job.account) }
                                td { @match job.lead_id { Some(lead) => (deal_link(&job.account, lead)), None => (NOTHING) } }
                                td.n { (job.attempt) " / " (job.max_attempts) }
                                td { @match &job.finished_at { Some(at) => (when(at)), None => (NOTHING) } }
                                td.error-text { @if let Some(error) = &job.last_error { (error) } }
                            }
                        }
                    }
                }
            }
            @if let Some(next) = next { p { a.next href=(next) { "More →" } } }
        }
    };
    Ok(render(StatusCode::OK, "Dead letters", signed.shown(), body))
}

pub(super) async fn replay(State(state): State<Arc<AppState>>, posted: Posted) -> Answer {
    act(&state, posted, Action::Replay).await
}

pub(super) async fn discard(State(state): State<Arc<AppState>>, posted: Posted) -> Answer {
    act(&state, posted, Action::Discard).await
}

/// What a form selected: the ticked ids, or every dead letter its filter matches.
fn selection(fields: &Fields) -> Result<Selection, OpsError> {
    if fields.get("scope") == Some("matching") {
        return Ok(Selection::Matching(filter(fields, false)?));
    }
    let ids = fields
        .all("ids")
        .map(|id| id.parse::<i64>().map_err(|_| OpsError::BadRequest(format!("job id {id:?} is not a number"))))
        .collect::<Result<Vec<_>, _>>()?;
    if ids.is_empty() {
        return Err(OpsError::BadRequest("no dead letter was selected: tick some, or act on all matching".into()));
    }
    Ok(Selection::Ids(ids))
}

/// Without `confirm`: counts the selection and asks for a reason. With it: starts the run.
async fn act(state: &AppState, posted: Posted, action: Action) -> Answer {
    let Posted { signed, fields } = posted;
    let chosen = selection(&fields)?;
    if fields.get("confirm") == Some("yes") {
        let reason = kommo_pay_core::ops::reason(fields.get("reason").unwrap_or_default())?.to_owned();
        let id = state.console.runs.start(state.pool.clone(), action, chosen, signed.operator.clone(), reason);
        return Ok(Redirect::to(&format!("/console/dead-letters/runs/{id}")).into_response());
    }
    let outcome = dead_letters::act(&state.pool, &chosen, action, &signed.operator, "dry run", true, &mut |_, _| {}).await?;
    let what = match &chosen {
        Selection::Ids(ids) => format!("the {} selected dead letter{}", ids.len(), if ids.len() == 1 { "" } else { "s" }),
        Selection::Matching(_) => described(&fields),
    };
    let verb = action.verb();
    let body = html! {
        p.count { (verb) " " strong.matched { (outcome.matched) } " of " (what) "?" }
        p.hint { (action.explained()) }
        form.act method="post" action={ "/console/dead-letters/" (action.path()) } {
            (csrf(&signed.csrf))
            @for (name, value) in fields.0.iter().filter(|(k, _)| k != "csrf" && k != "reason" && k != "confirm") {
                input type="hidden" name=(name) value=(value);
            }
            input type="hidden" name="confirm" value="yes";
            label { "Reason (recorded in the log with your name)" input type="text" name="reason" required autofocus; }
            button type="submit" { (verb) " " (outcome.matched) }
            " " a href="/console/dead-letters" { "Cancel" }
        }
    };
    Ok(render(StatusCode::OK, &format!("{verb} dead letters"), signed.shown(), body))
}
