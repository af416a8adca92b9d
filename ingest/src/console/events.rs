//! `/console/events`: the log searched a page at a time, one event with its payload, headers and
//! jobs, and replaying it with a reason.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Redirect};
use kommo_pay_core::ops::OpsError;
use kommo_pay_core::ops::events::{self, EventFilter, SOURCES};
use maud::html;

use super::session::{Posted, SignedIn};
use super::{Answer, Fields, NOTHING, csrf, deal_link, options, pretty, render, when};
use crate::AppState;

/// A time from the form: RFC 3339, or what a `datetime-local` input sends (taken as UTC, as the
/// form says).
fn time(text: Option<&str>) -> Option<String> {
    text.map(|t| if t.len() == 16 && t.as_bytes()[10] == b'T' { format!("{t}:00Z") } else { t.to_owned() })
}

fn filter(fields: &Fields) -> Result<EventFilter, OpsError> {
    Ok(EventFilter {
        account: fields.text("account"),
        lead: fields.number("lead", "deal id")?,
        source: fields.text("source"),
        kind: fields.text("kind"),
        from: time(fields.get("from")),
        to: time(fields.get("to")),
        cursor: fields.text("cursor"),
        limit: Some(50),
    })
}

pub(super) async fn list(State(state): State<Arc<AppState>>, signed: SignedIn, uri: Uri) -> Answer {
    let fields = Fields::query(&uri);
    let found = events::list(&state.pool, &filter(&fields)?).await?;
    let next = found.next_cursor.as_ref().map(|cursor| fields.next_page("/console/events", cursor));
    let body = html! {
        form.filters method="get" action="/console/events" {
            label { "Account" select name="account" { (options(state.accounts.iter().map(|a| a.slug.as_str()), fields.get("account"))) } }
            label { "Deal id" input type="number" name="lead" min="1" value=[fields.get("lead")]; }
            label { "Source" select name="source" { (options(SOURCES, fields.get("source"))) } }
            label { "Kind" input type="text" name="kind" placeholder="e.g. invoice.paid" value=[fields.get("kind")]; }
            label { "From (UTC)" input type="datetime-local" name="from" value=[fields.get("from")]; }
            label { "To (UTC)" input type="datetime-local" name="to" value=[fields.get("to")]; }
            button type="submit" { "Search" }
        }
        @if found.items.is_empty() { p { "No event matches." } } @else {
            table {
                thead { tr { th { "Received" } th { "Account" } th { "Source" } th { "Kind" } th { "Deal" } th { "Log" } } }
                tbody {
                    @for e in &found.items {
                        tr {
                            td { (when(&e.received_at)) } td { (e.account) } td { (e.source) } td { (e.kind) }
                            td { @match e.lead_id { Some(lead) => (deal_link(&e.account, lead)), None => (NOTHING) } }
                            td { a href={ "/console/events/" (e.id) } { "#" (e.seq) } }
                        }
                    }
                }
            }
        }
        @if let Some(next) = next { p { a.next href=(next) { "Older events →" } } }
    };
    Ok(render(StatusCode::OK, "Events", signed.shown(), body))
}

pub(super) async fn page(State(state): State<Arc<AppState>>, signed: SignedIn, Path(id): Path<String>) -> Answer {
    let event = events::show(&state.pool, events::parse_id(&id)?).await?;
    let e = &event.event;
    let body = html! {
        dl {
            dt { "Id" } dd { code { (e.id) } }
            dt { "Account" } dd { (e.account) }
            dt { "Source and kind" } dd { (e.source) " · " (e.kind) }
            dt { "Received" } dd { (when(&e.received_at)) " (log position " (e.seq) ")" }
            dt { "Provider's id" } dd { code { (e.dedup_key) } }
            @if let Some(lead) = e.lead_id { dt { "Deal" } dd { (deal_link(&e.account, lead)) } }
            @if let Some(cause) = event.caused_by_event { dt { "Caused by event" } dd { a href={ "/console/events/" (cause) } { (cause) } } }
            @if let Some(job) = e.caused_by_job { dt { "Recorded by job" } dd { a href={ "/console/jobs/" (job) } { (job) } } }
        }
        h2 { "Jobs it caused" }
        (super::jobs::table(&event.jobs))
        h2 { "Payload" }
        pre.json { (pretty(&event.payload)) }
        h2 { "Headers" }
        p.hint { "Only the headers kommo-pay keeps: never signatures, authorisation or cookies." }
        pre.json { (pretty(&event.headers)) }
        h2 { "Replay" }
        form.act method="post" action={ "/console/events/" (e.id) "/replay" } {
            p { "Derives this event's jobs again (e.g. after a fix); the replay is recorded in the log with your name and reason." }
            (csrf(&signed.csrf))
            label { "Reason" input type="text" name="reason" required; }
            button type="submit" { "Replay this event" }
        }
    };
    Ok(render(StatusCode::OK, &format!("Event {}", e.kind), signed.shown(), body))
}

pub(super) async fn replay(State(state): State<Arc<AppState>>, Path(id): Path<String>, posted: Posted) -> Answer {
    let id = events::parse_id(&id)?;
    let reason = posted.fields.get("reason").unwrap_or_default();
    let replayed = events::replay(&state.pool, &state.accounts, &state.job_policies, id, &posted.signed.operator, reason).await?;
    Ok(Redirect::to(&format!("/console/events/{}", replayed.record)).into_response())
}
