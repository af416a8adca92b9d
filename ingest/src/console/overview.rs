//! `/console`: the whole deployment at a glance — each account's health, the queue, dead
//! letters, the scheduler's leader, and the last 24 hours.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use kommo_pay_core::ops::accounts::{self, AccountHealth};
use kommo_pay_core::ops::dead_letters::{self, DeadFilter};
use kommo_pay_core::ops::queue_stats::{self, Count};
use kommo_pay_core::ops::{activity, unblock as unblock_provider};
use maud::{Markup, html};

use super::session::{Posted, SignedIn};
use super::{Answer, NOTHING, chart, csrf, render, state_badge, when};
use crate::AppState;

/// The states of the live queue, in the order the tables show them (finished jobs are counted per
/// hour in the charts).
const STATES: [&str; 4] = ["available", "retryable", "running", "dead"];

pub(super) async fn page(State(state): State<Arc<AppState>>, signed: SignedIn) -> Answer {
    let health = accounts::health(&state.pool, &state.accounts).await?;
    let queue = queue_stats::live(&state.pool).await?;
    let dead = dead_letters::counts(&state.pool, &DeadFilter::default()).await?;
    let hours = activity::last_day(&state.pool).await?;
    let body = html! {
        section {
            h2 { "Accounts" }
            table {
                thead { tr { th { "Account" } th { "Kommo calls" } th { "Kommo webhooks" } th { "Reconciliation" } th { "Kommo token" } th { "Kommo requests/s" } } }
                tbody { @for account in &health { (account_row(account, &signed.csrf)) } }
            }
        }
        section.columns {
            div {
                h2 { "Queue" }
                p {
                    "Oldest runnable job waiting: " strong { (format!("{:.0} s", queue.oldest_runnable_age_secs)) }
                    " · running now: " strong { (queue.running.len()) }
                    " · completed in 24 h: " strong { (hours.iter().map(|h| h.completed).sum::<i64>()) }
                }
                (by_state(&queue.by_state))
                @if !queue.waiting_for_rate_limit.is_empty() {
                    h3 { "Waiting for a provider's rate limit" }
                    table {
                        thead { tr { th { "Provider" } th { "Account" } th.n { "Jobs" } th { "Until" } } }
                        tbody { @for w in &queue.waiting_for_rate_limit { tr { td { (w.provider) } td { (w.account) } td.n { (w.count) } td { (when(&w.until)) } } } }
                    }
                }
                p.scheduler {
                    "Scheduler leader: "
                    @match &queue.scheduler_leader { Some(leader) => strong { (leader) }, None => strong.bad { "none — no scheduler is running" } }
                }
            }
            div {
                h2 { "Dead letters" }
                @if dead.is_empty() { p { "None." } } @else {
                    table {
                        thead { tr { th { "Kind" } th { "Last error" } th.n { "Jobs" } } }
                        tbody {
                            @for group in &dead {
                                tr {
                                    td { a href={ "/console/dead-letters?kind=" (urlencoded(&group.kind)) } { (group.kind) } }
                                    td.error-text { (group.error) }
                                    td.n { (group.count) }
                                }
                            }
                        }
                    }
                }
            }
        }
        section.columns {
            div { h2 { "Events received per hour" } (chart::bars(&hours, &[chart::Series::Events])) }
            div { h2 { "Jobs per hour" } (chart::bars(&hours, &[chart::Series::Completed, chart::Series::Dead])) }
        }
        section {
            h2 { "Waiting, running and dead jobs by kind" } (pivot(&queue.by_kind))
            h2 { "… and by account" } (pivot(&queue.by_account))
        }
    };
    Ok(render(StatusCode::OK, "Overview", signed.shown(), body))
}

fn urlencoded(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn account_row(account: &AccountHealth, csrf_token: &str) -> Markup {
    html! {
        tr {
            th { (account.account) }
            td {
                @if account.blocked.is_empty() && account.kommo_paused_until.is_none() { span.ok { "ok" } }
                @if let Some(until) = account.kommo_paused_until { span.warn { "paused (429) until " (when(&until)) } }
                @for block in &account.blocked {
                    div.bad {
                        (block.provider) " blocked since " (when(&block.since)) ": " (block.reason.as_deref().unwrap_or("no reason given"))
                    }
                    form.inline method="post" action={ "/console/accounts/" (account.account) "/unblock" } {
                        (csrf(csrf_token))
                        input type="hidden" name="provider" value=(block.provider);
                        input type="text" name="reason" placeholder="what was fixed" required;
                        button type="submit" { "Unblock" }
                    }
                }
            }
            td {
                @match account.webhooks_checked_at {
                    None => span.muted { "not checked yet" },
                    Some(at) if account.webhooks_disabled.is_empty() => { span.ok { "enabled" } span.muted { " (checked " (when(&at)) ")" } },
                    Some(_) => span.bad { (account.webhooks_disabled.len()) " disabled by Kommo: " (account.webhooks_disabled.join(", ")) },
                }
            }
            td {
                @if account.reconciled.is_empty() { span.muted { "not yet" } }
                @for r in &account.reconciled { div { (r.provider) ": " (lag(r.lag_secs)) " behind" } }
            }
            td {
                @match &account.oauth {
                    None => span.muted { "long-lived token" },
                    Some(oauth) => {
                        @if let Some(revoked) = oauth.revoked_at { span.bad { "uninstalled " (when(&revoked)) } }
                        @else if let Some(expires) = oauth.expires_at { "expires " (when(&expires)) }
                        @else { span.warn { "not installed" } }
                    },
                }
            }
            td.n { (format!("{:.1}", account.kommo_requests_per_second)) " / " (format!("{}", account.kommo_limit)) }
        }
    }
}

/// Seconds as people read a delay.
fn lag(secs: f64) -> String {
    match secs {
        s if s < 120.0 => format!("{s:.0} s"),
        s if s < 7200.0 => format!("{:.0} min", s / 60.0),
        s => format!("{:.1} h", s / 3600.0),
    }
}

fn by_state(counts: &[Count]) -> Markup {
    html! {
        table {
            thead { tr { @for s in STATES { th.n { (state_badge(s)) } } } }
            tbody { tr { @for s in STATES { td.n { (counts.iter().filter(|c| c.state == s).map(|c| c.count).sum::<i64>()) } } } }
        }
    }
}

/// Counts by key (a kind or an account) and state, one row per key.
fn pivot(counts: &[Count]) -> Markup {
    let keys: BTreeSet<&str> = counts.iter().map(|c| c.key.as_str()).collect();
    html! {
        @if keys.is_empty() { p { "No jobs." } } @else {
            table {
                thead { tr { th { "" } @for s in STATES { th.n { (s) } } } }
                tbody {
                    @for key in keys {
                        tr {
                            th { (key) }
                            @for s in STATES {
                                @match counts.iter().find(|c| c.key == key && c.state == s) {
                                    Some(c) => td.n { (c.count) },
                                    None => td.n.muted { (NOTHING) },
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub(super) async fn unblock(State(state): State<Arc<AppState>>, Path(account): Path<String>, posted: Posted) -> Answer {
    let provider = posted.fields.get("provider").unwrap_or(kommo_pay_core::provider::Provider::Kommo.as_str());
    unblock_provider(&state.pool, provider, &account, &posted.signed.operator, posted.fields.get("reason").unwrap_or_default()).await?;
    Ok(Redirect::to("/console").into_response())
}
