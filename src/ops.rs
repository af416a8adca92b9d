//! The ops commands: `events`, `dead`, `queue`, `history`. They call `kommo_pay_core::ops`, the
//! same functions as the ops API, and print tables (or JSON with `--json`, CSV for history).
//!
//! Exit codes: 0 done; 1 failed (e.g. the database is unreachable); 2 a bad argument or filter
//! (nothing was changed); 3 not found.

use std::io::IsTerminal;

use comfy_table::{Table, presets};
use indicatif::{ProgressBar, ProgressStyle};
use kommo_pay_core::config::Config;
use kommo_pay_core::ops::dead_letters::{self, DeadFilter, Selection};
use kommo_pay_core::ops::events::{self, EventFilter};
use kommo_pay_core::ops::{Operator, OpsError, Page, history, queue_stats};
use serde::Serialize;
use sqlx::PgPool;

use crate::cli::{ActArgs, Command, DeadArgs, DeadCommand, EventsCommand, KommoCommand, ProjectionsCommand};

/// The exit code for a failed ops command.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    match error.downcast_ref::<OpsError>() {
        Some(OpsError::BadRequest(_)) => 2,
        Some(OpsError::NotFound(_)) => 3,
        _ => 1,
    }
}

/// Who the CLI acts as: `--operator`, or `cli:$USER`.
pub fn operator(given: Option<String>) -> Operator {
    Operator(given.unwrap_or_else(|| format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into()))))
}

pub async fn run(command: Command, pool: &PgPool, config: &Config, json: bool, operator: &Operator) -> anyhow::Result<()> {
    match command {
        Command::Events { command } => match command {
            EventsCommand::List(a) => {
                let filter =
                    EventFilter { account: a.account, lead: a.lead, source: a.source, kind: a.kind, from: a.from, to: a.to, cursor: a.cursor, limit: a.limit };
                let page = events::list(pool, &filter).await?;
                print_page(json, &page, &["seq", "received", "account", "source", "kind", "lead", "id"], |e| {
                    vec![e.seq.to_string(), e.received_at.to_rfc3339(), e.account.clone(), e.source.clone(), e.kind.clone(), opt(e.lead_id), e.id.to_string()]
                })
            }
            EventsCommand::Show { id } => {
                let detail = events::show(pool, events::parse_id(&id)?).await?;
                if json {
                    return print_json(&detail);
                }
                let e = &detail.event;
                println!(
                    "event {} (#{})\n  {} {} for account {}, lead {}\n  received {}\n  dedup key {}",
                    e.id,
                    e.seq,
                    e.source,
                    e.kind,
                    e.account,
                    opt(e.lead_id),
                    e.received_at.to_rfc3339(),
                    e.dedup_key
                );
                println!("payload:\n{}", serde_json::to_string_pretty(&detail.payload)?);
                println!("jobs:");
                print_table(
                    &["id", "kind", "state", "attempt", "last error"],
                    detail.jobs.iter().map(|j| {
                        vec![
                            j.id.to_string(),
                            j.kind.clone(),
                            j.state.clone(),
                            format!("{}/{}", j.attempt, j.max_attempts),
                            j.last_error.clone().unwrap_or_default(),
                        ]
                    }),
                );
                Ok(())
            }
            EventsCommand::Replay { id, reason } => {
                let replayed = events::replay(pool, &config.accounts, &config.jobs, events::parse_id(&id)?, operator, &reason).await?;
                if json {
                    return print_json(&replayed);
                }
                println!("event {id} replayed as job(s) {:?}; recorded as {}", replayed.jobs, replayed.record);
                Ok(())
            }
        },
        Command::Dead { command } => match command {
            DeadCommand::List { filter, cursor, limit } => {
                let filter = DeadFilter { cursor, limit, ..dead_filter(filter) };
                let page = dead_letters::list(pool, &filter).await?;
                print_page(json, &page, &["id", "kind", "account", "lead", "attempts", "died", "last error"], |j| {
                    vec![
                        j.id.to_string(),
                        j.kind.clone(),
                        j.account.clone(),
                        opt(j.lead_id),
                        format!("{}/{}", j.attempt, j.max_attempts),
                        j.finished_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
                        j.last_error.clone().unwrap_or_default(),
                    ]
                })
            }
            DeadCommand::Counts { filter } => {
                let counts = dead_letters::counts(pool, &dead_filter(filter)).await?;
                if json {
                    return print_json(&serde_json::json!({ "counts": counts }));
                }
                print_table(&["count", "kind", "last error"], counts.iter().map(|c| vec![c.count.to_string(), c.kind.clone(), c.error.clone()]));
                Ok(())
            }
            DeadCommand::Show { id } => {
                let job = dead_letters::show(pool, id).await?;
                if json {
                    return print_json(&job);
                }
                let j = &job.job;
                println!(
                    "job {} {} — {} (attempt {}/{}) for account {}, lead {}",
                    j.id,
                    j.kind,
                    j.state,
                    j.attempt,
                    j.max_attempts,
                    job.account,
                    opt(job.lead_id)
                );
                if let Some(of) = j.replay_of {
                    println!("replays dead job {of}");
                }
                if let Some(by) = job.replayed_as {
                    println!("replayed as job {by}");
                }
                println!("arguments: {}", serde_json::to_string(&job.args)?);
                if let Some(e) = &job.event {
                    println!("caused by event {} ({} {}, {})", e.id, e.source, e.kind, e.received_at.to_rfc3339());
                }
                println!("attempts:");
                let errors = job.errors.as_array().cloned().unwrap_or_default();
                print_table(
                    &["attempt", "at", "error"],
                    errors.iter().map(|e| {
                        let field = |k: &str| e.get(k).map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned)).unwrap_or_default();
                        vec![field("attempt"), field("at"), field("error")]
                    }),
                );
                Ok(())
            }
            DeadCommand::Replay(act) => bulk(pool, act, json, operator, Bulk::Replay).await,
            DeadCommand::Discard(act) => bulk(pool, act, json, operator, Bulk::Discard).await,
        },
        Command::Queue => {
            let stats = queue_stats::stats(pool).await?;
            if json {
                return print_json(&stats);
            }
            println!("jobs by state:");
            print_table(&["state", "count"], stats.by_state.iter().map(|c| vec![c.state.clone(), c.count.to_string()]));
            println!("by kind:");
            print_table(&["kind", "state", "count"], stats.by_kind.iter().map(|c| vec![c.key.clone(), c.state.clone(), c.count.to_string()]));
            println!("by account:");
            print_table(&["account", "state", "count"], stats.by_account.iter().map(|c| vec![c.key.clone(), c.state.clone(), c.count.to_string()]));
            println!("oldest runnable job has waited {:.1} s", stats.oldest_runnable_age_secs);
            println!("scheduler leader: {}", stats.scheduler_leader.as_deref().unwrap_or("none (no scheduler runs)"));
            if !stats.waiting_for_rate_limit.is_empty() {
                println!("waiting for a provider's rate limit (deferred, no attempt used):");
                print_table(
                    &["provider", "account", "jobs", "until"],
                    stats.waiting_for_rate_limit.iter().map(|w| vec![w.provider.clone(), w.account.clone(), w.count.to_string(), w.until.to_rfc3339()]),
                );
            }
            if !stats.blocked.is_empty() {
                println!("blocked (no calls go out):");
                print_table(
                    &["provider", "account", "since", "reason"],
                    stats.blocked.iter().map(|b| vec![b.provider.clone(), b.account.clone(), b.since.to_rfc3339(), b.reason.clone().unwrap_or_default()]),
                );
            }
            println!("running:");
            print_table(
                &["id", "kind", "account", "attempt", "worker", "since", "heartbeat"],
                stats.running.iter().map(|r| {
                    let time = |t: Option<chrono::DateTime<chrono::Utc>>| t.map(|t| t.to_rfc3339()).unwrap_or_default();
                    vec![
                        r.id.to_string(),
                        r.kind.clone(),
                        r.account.clone(),
                        r.attempt.to_string(),
                        r.locked_by.clone().unwrap_or_default(),
                        time(r.locked_at),
                        time(r.heartbeat_at),
                    ]
                }),
            );
            Ok(())
        }
        Command::History { account, lead, format } => {
            let format = if json { "json" } else { format.as_str() };
            if !["table", "json", "csv"].contains(&format) {
                return Err(OpsError::BadRequest(format!("--format {format:?} is not table, json or csv")).into());
            }
            let entries = history::of_deal(pool, &account, lead).await?;
            match format {
                "json" => print_json(&serde_json::json!({ "account": account, "lead_id": lead, "entries": entries })),
                "csv" => {
                    print!("{}", history::to_csv(&entries));
                    Ok(())
                }
                _ => {
                    print_table(
                        &["#", "at", "source", "what", "amount", "status"],
                        entries.iter().map(|e| {
                            vec![
                                e.seq.to_string(),
                                e.at.format("%Y-%m-%d %H:%M:%S").to_string(),
                                e.source.clone(),
                                e.what.clone(),
                                e.amount.clone().unwrap_or_default(),
                                e.status.clone().unwrap_or_default(),
                            ]
                        }),
                    );
                    Ok(())
                }
            }
        }
        Command::Projections { command: ProjectionsCommand::Rebuild } => {
            let rebuilt = kommo_pay_core::projections::rebuild(pool).await?;
            if json {
                return print_json(&rebuilt);
            }
            println!("projections rebuilt from the log: {} recorded change(s) applied", rebuilt.changes);
            Ok(())
        }
        Command::Kommo { command: KommoCommand::Unblock { account, reason } } => {
            let unblocked = kommo_pay_core::ops::unblock(pool, kommo_pay_core::provider::Provider::Kommo.as_str(), &account, operator, &reason).await?;
            if json {
                return print_json(&unblocked);
            }
            println!("Kommo calls for {account} go out again (blocked since {}: {})", unblocked.blocked_at.to_rfc3339(), unblocked.reason);
            Ok(())
        }
        _ => unreachable!("main runs only ops commands here"),
    }
}

#[derive(Clone, Copy)]
enum Bulk {
    Replay,
    Discard,
}

async fn bulk(pool: &PgPool, act: ActArgs, json: bool, operator: &Operator, action: Bulk) -> anyhow::Result<()> {
    let verb = match action {
        Bulk::Replay => "replay",
        Bulk::Discard => "discard",
    };
    let filter = dead_filter(act.filter.clone());
    let filtered = filter.account.is_some() || filter.kind.is_some() || filter.lead.is_some() || filter.error.is_some();
    let selection = match (act.ids.is_empty(), filtered, act.all) {
        (false, false, false) => Selection::Ids(act.ids),
        (true, true, false) | (true, false, true) => Selection::Matching(filter),
        _ => return Err(OpsError::BadRequest("name the dead jobs one way: by id, by filter (--account, --kind, --lead, --error), or --all".into()).into()),
    };
    let bar = if json { ProgressBar::hidden() } else { ProgressBar::new(0) };
    bar.set_style(ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, {eta} left)").expect("a valid template"));
    bar.set_message(format!("{verb}ing"));
    // A bar on a terminal; one line per batch otherwise (a script's log shows it moving).
    let lines = !json && !std::io::stderr().is_terminal();
    let mut progress = |done: i64, total: i64| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        if lines {
            eprintln!("{verb}ed {done}/{total}");
        }
    };
    let outcome = match action {
        Bulk::Replay => dead_letters::replay(pool, &selection, operator, &act.reason, act.dry_run, &mut progress).await?,
        Bulk::Discard => dead_letters::discard(pool, &selection, operator, &act.reason, act.dry_run, &mut progress).await?,
    };
    bar.finish_and_clear();
    if json {
        return print_json(&outcome);
    }
    if outcome.dry_run {
        println!("would {verb} {} dead job(s); nothing was changed", outcome.matched);
    } else {
        println!("{verb}ed {} dead job(s) as {}", outcome.done, operator.0);
    }
    Ok(())
}

fn dead_filter(a: DeadArgs) -> DeadFilter {
    DeadFilter { account: a.account, kind: a.kind, lead: a.lead, error: a.error, cursor: None, limit: None }
}

fn opt(value: Option<i64>) -> String {
    value.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn print_table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    let mut table = Table::new();
    table.load_preset(presets::UTF8_HORIZONTAL_ONLY).set_header(header.to_vec());
    let mut empty = true;
    for row in rows {
        table.add_row(row);
        empty = false;
    }
    if empty {
        println!("  (none)");
    } else {
        println!("{table}");
    }
}

fn print_page<T: Serialize>(json: bool, page: &Page<T>, header: &[&str], row: impl Fn(&T) -> Vec<String>) -> anyhow::Result<()> {
    if json {
        return print_json(page);
    }
    print_table(header, page.items.iter().map(row));
    if let Some(next) = &page.next_cursor {
        println!("more: --cursor {next}");
    }
    Ok(())
}
