//! `/console/deals`: find a deal (account and id, or its Kommo URL), and one deal's page — its
//! payment timeline from the log, what its card should show, its jobs, and downloads.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Redirect};
use kommo_pay_core::ops::{OpsError, deals, history};
use maud::{Markup, html};

use super::session::SignedIn;
use super::{Answer, Fields, NOTHING, render, state_badge, when};
use crate::AppState;

/// A deal's account and id from the URL, checked (the path extractor's own error would be JSON).
fn deal(path: &(String, String)) -> Result<(String, i64), OpsError> {
    let lead = path.1.parse::<i64>().map_err(|_| OpsError::BadRequest(format!("deal id {:?} is not a number", path.1)))?;
    Ok((path.0.clone(), lead))
}

fn finder(state: &AppState, fields: &Fields) -> Markup {
    html! {
        form.filters method="get" action="/console/deals" {
            label { "Account" select name="account" { @for a in state.accounts.iter() { option value=(a.slug) selected[fields.get("account") == Some(a.slug.as_str())] { (a.slug) } } } }
            label { "Deal id" input type="number" name="lead" min="1" value=[fields.get("lead")]; }
            span.or { "or" }
            label.wide { "Kommo deal URL" input type="url" name="url" placeholder="https://acme.kommo.com/leads/detail/123" value=[fields.get("url")]; }
            button type="submit" { "Show" }
        }
    }
}

pub(super) async fn find(State(state): State<Arc<AppState>>, signed: SignedIn, uri: Uri) -> Answer {
    let fields = Fields::query(&uri);
    let chosen = match (fields.get("url"), fields.get("account"), fields.number("lead", "deal id")?) {
        (Some(url), _, _) => Some(deals::from_url(&state.accounts, url)?),
        (None, Some(account), Some(lead)) => Some((account.to_owned(), lead)),
        _ => None,
    };
    if let Some((account, lead)) = chosen {
        return Ok(Redirect::to(&format!("/console/deals/{account}/{lead}")).into_response());
    }
    let body = html! {
        p { "A deal's payment history, what its card should show, and its jobs." }
        (finder(&state, &fields))
    };
    Ok(render(StatusCode::OK, "Deals", signed.shown(), body))
}

pub(super) async fn page(State(state): State<Arc<AppState>>, signed: SignedIn, Path(path): Path<(String, String)>) -> Answer {
    let (account, lead) = deal(&path)?;
    let deal = deals::show(&state.pool, &state.accounts, &account, lead).await?;
    let base = format!("/console/deals/{account}/{lead}");
    let title = format!("Deal {lead} of {account}");
    let body = html! {
        p.downloads {
            "History: " a href={ (base) "/history.csv" } download { "CSV" } " · " a href={ (base) "/history.json" } download { "JSON" }
            " · " a href={ "/console/events?account=" (account) "&lead=" (lead) } { "its events" }
        }
        section {
            h2 { "What the card should show" }
            h3 { "Payment links" }
            @if deal.links.is_empty() { p.muted { "No link issued." } } @else {
                table {
                    thead { tr { th { "Issued" } th { "Provider" } th { "Link" } th.n { "Amount" } th { "Status" } } }
                    tbody { @for l in &deal.links { tr { td { (when(&l.issued_at)) } td { (l.provider) } td { a href=(l.url) rel="noreferrer" { (l.link_id) } } td.n { (l.amount) } td { (state_badge(&l.status)) } } } }
                }
            }
            h3 { "Payments" }
            @if deal.payments.is_empty() { p.muted { "No payment." } } @else {
                table {
                    thead { tr { th { "Paid" } th { "Provider" } th { "Payment" } th.n { "Amount" } th.n { "Refunded" } } }
                    tbody {
                        @for p in &deal.payments {
                            tr { td { (when(&p.paid_at)) } td { (p.provider) } td { code { (p.payment_id) } } td.n.amount { (p.amount) }
                                 td.n { @if p.refunded_minor > 0 { (p.refunded) } @else { (NOTHING) } } }
                        }
                    }
                }
            }
            @if !deal.subscriptions.is_empty() {
                h3 { "Subscriptions" }
                table {
                    thead { tr { th { "Provider" } th { "Subscription" } th { "Status" } th { "As of" } } }
                    tbody { @for s in &deal.subscriptions { tr { td { (s.provider) } td { code { (s.subscription_id) } } td { (state_badge(&s.status)) } td { (when(&s.updated_at)) } } } }
                }
            }
            @if !deal.failures.is_empty() {
                h3 { "Failed payments not made good" }
                table {
                    thead { tr { th { "Since" } th { "What" } th { "Overdue" } } }
                    tbody {
                        @for f in &deal.failures {
                            tr { td { (when(&f.failed_at)) } td { (f.what) } td { @match f.overdue_at { Some(at) => span.bad { (when(&at)) }, None => span.muted { "in grace" } } } }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Timeline" }
            table.timeline {
                thead { tr { th { "When" } th { "Source" } th { "What" } th.n { "Amount" } th { "Status" } th { "Log" } } }
                tbody {
                    @for e in &deal.entries {
                        tr class={ "entry " (e.source) } {
                            td { (when(&e.at)) } td { (e.source) } td { (e.what) }
                            td.n.amount { @if let Some(amount) = &e.amount { (amount) } }
                            td { @if let Some(status) = &e.status { (status) } }
                            td { a href={ "/console/events/" (e.event_id) } { "#" (e.seq) } }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Jobs" }
            (super::jobs::table(&deal.jobs))
        }
    };
    Ok(render(StatusCode::OK, &title, signed.shown(), body))
}

pub(super) async fn csv(State(state): State<Arc<AppState>>, _signed: SignedIn, Path(path): Path<(String, String)>) -> Answer {
    let (account, lead) = deal(&path)?;
    let entries = history::of_deal(&state.pool, &account, lead).await?;
    let name = format!("attachment; filename=\"{account}-{lead}-history.csv\"");
    Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()), (header::CONTENT_DISPOSITION, name)], history::to_csv(&entries)).into_response())
}

pub(super) async fn json(State(state): State<Arc<AppState>>, _signed: SignedIn, Path(path): Path<(String, String)>) -> Answer {
    let (account, lead) = deal(&path)?;
    let entries = history::of_deal(&state.pool, &account, lead).await?;
    let name = format!("attachment; filename=\"{account}-{lead}-history.json\"");
    Ok(([(header::CONTENT_DISPOSITION, name)], axum::Json(history::History { account, lead_id: lead, entries })).into_response())
}
