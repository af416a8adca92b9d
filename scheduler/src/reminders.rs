//! Unpaid links: the manager gets a "remind the client" task `after` days, then every `every`
//! days, at most `max` times, while the link is still the deal's active one.
//!
//! Each reminder is an internal event (`payment_link.reminder_due`, keyed by link and reminder
//! number) and a `deal.remind` job, appended in one statement: a second scan, or a second
//! scheduler during a brief double leadership, finds the key taken and adds nothing.

use chrono::{DateTime, Utc};
use kommo_pay_core::config::{Accounts, JobPolicies};
use kommo_pay_core::event_log::{self, NewEvent, Source};
use kommo_pay_core::ids::LeadId;
use kommo_pay_core::jobs;
use serde_json::json;
use sqlx::PgPool;

pub struct Reminders {
    pool: PgPool,
    accounts: Accounts,
    policies: JobPolicies,
}

impl Reminders {
    pub fn new(pool: PgPool, accounts: Accounts, policies: JobPolicies) -> Reminders {
        Reminders { pool, accounts, policies }
    }

    /// Enqueues the reminders due at `now`; returns how many were new. At most one per link per
    /// scan: the latest one due (after a long outage, the client is reminded once, not n times).
    pub async fn run_once(&self, now: DateTime<Utc>) -> Result<usize, sqlx::Error> {
        let mut events = Vec::new();
        let mut implied = Vec::new();
        for account in self.accounts.iter() {
            for trigger in &account.triggers {
                let Some(rule) = trigger.reminders else { continue };
                let links: Vec<(String, i64, DateTime<Utc>, String, i64, String)> = sqlx::query_as(
                    "SELECT link_id, lead_id, issued_at, url, amount_minor, currency FROM payment_links
                     WHERE account = $1 AND trigger = $2 AND status = 'active' AND issued_at <= $3",
                )
                .bind(&account.slug)
                .bind(&trigger.name)
                .bind(now - rule.after)
                .fetch_all(&self.pool)
                .await?;
                for (link_id, lead_id, issued_at, url, amount_minor, currency) in links {
                    let periods = (now - issued_at - rule.after).num_seconds() / rule.every.num_seconds().max(1);
                    let number = (periods + 1).min(i64::from(rule.max));
                    if number < 1 {
                        continue;
                    }
                    let payload = json!({ "link_id": link_id, "url": url, "amount_minor": amount_minor, "currency": currency, "reminder": number });
                    let raw = serde_json::value::to_raw_value(&payload).expect("JSON serialises");
                    // One reminder per link and number: the event's key; its job goes with it.
                    let event = NewEvent::new(
                        &account.slug,
                        Source::Internal,
                        jobs::REMINDER_DUE.into(),
                        format!("reminder:{link_id}:{number}"),
                        Some(LeadId(lead_id)),
                        raw,
                    );
                    implied.extend(jobs::implied_by(&event, account, &self.policies));
                    events.push(event);
                }
            }
        }
        if events.is_empty() {
            return Ok(0);
        }
        let appended = event_log::append(&self.pool, &events, &implied).await?;
        if !appended.new_events.is_empty() {
            tracing::info!(reminders = appended.new_events.len(), "unpaid-link reminders enqueued");
        }
        Ok(appended.new_events.len())
    }
}
