//! From the file as written to the configuration the service runs with: every key checked,
//! every named environment variable read, every problem reported with its key.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::*;
use crate::money::Currency;
use crate::provider::Provider;
use crate::retry_policy::RetryPolicy;
use crate::stripe::client::{Interval, Recurring};

/// The shortest accepted Kommo webhook secret: the URL secret is the only thing that
/// authenticates Kommo's unsigned webhooks, so it must not be guessable.
pub const MIN_KOMMO_WEBHOOK_SECRET_LEN: usize = 24;

impl Config {
    /// Validates the file and reads the secrets it names from `env`.
    pub fn resolve(file: ConfigFile, env: Env<'_>) -> Result<Config, Vec<String>> {
        let mut v = Validator { env, problems: Vec::new(), notices: Vec::new() };

        let listen = v.check(
            "server.listen",
            file.server.listen.parse::<SocketAddr>().map_err(|e| format!("{:?} is not an address and port like 127.0.0.1:8080 ({e})", file.server.listen)),
        );
        if file.server.body_limit_bytes < 1024 {
            v.problem("server.body_limit_bytes", "must be at least 1024");
        }

        let url = match env(DATABASE_URL_ENV).filter(|u| !u.is_empty()) {
            Some(url) => Some(url),
            None => match &file.database.url {
                Some(url) => {
                    match url::Url::parse(url) {
                        Ok(parsed) if parsed.password().is_some() => {
                            v.problem("database.url", "contains a password; put the whole URL in the DATABASE_URL environment variable instead")
                        }
                        Ok(parsed) if !matches!(parsed.scheme(), "postgres" | "postgresql") => v.problem("database.url", "must be a postgres:// URL"),
                        Ok(_) => {}
                        Err(e) => v.problem("database.url", &format!("is not a URL ({e})")),
                    }
                    Some(url.clone())
                }
                None => {
                    v.problem("database.url", "is not set, and neither is the DATABASE_URL environment variable");
                    None
                }
            },
        };
        if file.database.max_connections < 2 {
            v.problem("database.max_connections", "must be at least 2");
        }
        if !(1..=file.database.max_connections as usize).contains(&file.database.ingest_concurrent_appends) {
            v.problem("database.ingest_concurrent_appends", "must be between 1 and database.max_connections");
        }

        let w = &file.worker;
        for (key, value) in [
            ("worker.concurrency", w.concurrency as u64),
            ("worker.claim_batch", w.claim_batch as u64),
            ("worker.max_per_account", w.max_per_account as u64),
            ("worker.poll_interval_ms", w.poll_interval_ms),
            ("worker.heartbeat_interval_ms", w.heartbeat_interval_ms),
            ("worker.job_timeout_secs", w.job_timeout_secs),
        ] {
            if value == 0 {
                v.problem(key, "must be positive");
            }
        }
        let s = &file.scheduler;
        for (key, value) in [
            ("scheduler.scan_interval_secs", s.scan_interval_secs),
            ("scheduler.leader_check_secs", s.leader_check_secs),
            ("scheduler.reconcile_interval_secs", s.reconcile_interval_secs),
            ("scheduler.reconcile_lookback_hours", s.reconcile_lookback_hours),
            ("scheduler.housekeeping_interval_secs", s.housekeeping_interval_secs),
            ("scheduler.finished_job_retention_days", s.finished_job_retention_days),
        ] {
            if value == 0 {
                v.problem(key, "must be positive");
            }
        }
        if s.reconcile_lookback_hours > 720 {
            v.problem("scheduler.reconcile_lookback_hours", "is more than 720: Stripe keeps events for 30 days");
        }
        let worker = WorkerConfig {
            concurrency: w.concurrency,
            claim_batch: w.claim_batch,
            max_per_account: w.max_per_account,
            poll_interval: Duration::from_millis(w.poll_interval_ms),
            heartbeat_interval: Duration::from_millis(w.heartbeat_interval_ms),
            job_timeout: Duration::from_secs(w.job_timeout_secs),
            shutdown_grace: Duration::from_secs(w.shutdown_grace_secs),
        };
        let jobs = v.job_policies(&file.jobs);

        let mut accounts = BTreeMap::new();
        if !file.metrics.path.starts_with('/')
            || file.metrics.path.len() < 2
            || file.metrics.path.starts_with("/webhooks/")
            || file.metrics.path.starts_with("/ops/")
            || file.metrics.path.starts_with("/console")
        {
            v.problem(
                "metrics.path",
                &format!("{:?} is not a path of its own: start it with '/', away from /webhooks/, /ops/ and /console", file.metrics.path),
            );
        }
        let metrics_listen = file
            .metrics
            .listen
            .as_deref()
            .and_then(|listen| v.check("metrics.listen", listen.parse::<SocketAddr>().map_err(|e| format!("{listen:?} is not an address and port: {e}"))));
        if file.ops.console_idle_minutes == 0 {
            v.problem("ops.console_idle_minutes", "must be at least 1");
        }
        let mut ops_tokens: Vec<OpsToken> = Vec::new();
        for (i, t) in file.ops.tokens.iter().enumerate() {
            let key = format!("ops.tokens[{i}]");
            if t.name.trim().is_empty() || ops_tokens.iter().any(|other| other.name == t.name) {
                v.problem(&format!("{key}.name"), "must be a name of its own: the log records it with what its holder did");
            }
            if let Some(token) = v.secret(&format!("{key}.token_env"), &t.token_env) {
                if token.expose_secret().len() < 32 {
                    v.problem(&format!("{key}.token_env"), &format!("the token in {} is shorter than 32 characters", t.token_env));
                }
                ops_tokens.push(OpsToken { name: t.name.clone(), token });
            }
        }

        let mut kommo_ids = BTreeSet::new();
        for (i, section) in file.accounts.into_iter().enumerate() {
            let key = format!("accounts[{i}]");
            if !is_slug(&section.slug) {
                v.problem(&format!("{key}.slug"), &format!("{:?} is not a slug: use 1-64 lowercase letters, digits and '-'", section.slug));
            }
            if accounts.contains_key(section.slug.as_str()) {
                v.problem(&format!("{key}.slug"), &format!("{:?} is used by an earlier account", section.slug));
            }
            if !kommo_ids.insert(section.kommo.account_id) {
                v.problem(&format!("{key}.kommo.account_id"), &format!("{} is used by an earlier account", section.kommo.account_id));
            }
            if let Some(account) = v.account(&key, section) {
                accounts.insert(account.slug.clone(), Arc::new(account));
            }
        }

        if !v.problems.is_empty() {
            return Err(v.problems);
        }
        Ok(Config {
            server: ServerConfig { listen: listen.expect("checked"), body_limit_bytes: file.server.body_limit_bytes },
            database: DatabaseConfig {
                url: SecretString::from(url.expect("checked")),
                max_connections: file.database.max_connections,
                acquire_timeout: Duration::from_millis(file.database.acquire_timeout_ms),
                migrate_on_start: file.database.migrate_on_start,
                ingest_concurrent_appends: file.database.ingest_concurrent_appends,
            },
            log: file.log,
            worker,
            scheduler: file.scheduler,
            jobs,
            ops_tokens,
            console_idle: Duration::from_secs(file.ops.console_idle_minutes * 60),
            metrics: MetricsConfig { path: file.metrics.path, listen: metrics_listen },
            accounts: Accounts(accounts),
            notices: v.notices,
        })
    }
}

fn is_slug(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') && !s.starts_with('-')
}

/// Collects problems while resolving, so that one run reports all of them.
struct Validator<'a> {
    env: Env<'a>,
    problems: Vec<String>,
    /// What still works but should change (keys that moved).
    notices: Vec<String>,
}

impl Validator<'_> {
    fn notice(&mut self, key: &str, message: &str) {
        self.notices.push(format!("{key}: {message}"));
    }

    fn problem(&mut self, key: &str, message: &str) {
        self.problems.push(format!("{key}: {message}"));
    }

    fn check<T>(&mut self, key: &str, result: Result<T, String>) -> Option<T> {
        result.map_err(|message| self.problem(key, &message)).ok()
    }

    /// The value of the environment variable named at `key`.
    fn secret(&mut self, key: &str, var: &str) -> Option<SecretString> {
        if var.is_empty() {
            self.problem(key, "names no environment variable");
            return None;
        }
        match (self.env)(var) {
            Some(value) if !value.is_empty() => Some(SecretString::from(value)),
            Some(_) => {
                self.problem(key, &format!("environment variable {var} is empty"));
                None
            }
            None => {
                self.problem(key, &format!("environment variable {var} is not set"));
                None
            }
        }
    }

    fn secrets(&mut self, key: &str, vars: &[String]) -> Option<Vec<SecretString>> {
        if vars.is_empty() {
            self.problem(key, "names no environment variable; name at least one");
            return None;
        }
        let found: Vec<_> = vars.iter().enumerate().filter_map(|(i, var)| self.secret(&format!("{key}[{i}]"), var)).collect();
        (found.len() == vars.len()).then_some(found)
    }

    fn job_policies(&mut self, jobs: &JobsSection) -> JobPolicies {
        let mut policy = |key: &str, max_attempts: i32, base_ms: u64, cap_ms: u64| {
            if max_attempts < 1 {
                self.problem(&format!("{key}max_attempts"), "must be at least 1");
            }
            if base_ms == 0 || cap_ms < base_ms {
                self.problem(&format!("{key}retry_cap_ms"), "retry_base_ms must be positive and retry_cap_ms at least retry_base_ms");
            }
            RetryPolicy { max_attempts, base: Duration::from_millis(base_ms), cap: Duration::from_millis(cap_ms) }
        };
        let default = policy("jobs.", jobs.max_attempts, jobs.retry_base_ms, jobs.retry_cap_ms);
        let kinds = jobs
            .kinds
            .iter()
            .map(|(kind, o)| {
                let p = policy(
                    &format!("jobs.kinds.\"{kind}\"."),
                    o.max_attempts.unwrap_or(jobs.max_attempts),
                    o.retry_base_ms.unwrap_or(jobs.retry_base_ms),
                    o.retry_cap_ms.unwrap_or(jobs.retry_cap_ms),
                );
                (kind.clone(), p)
            })
            .collect();
        JobPolicies { default, kinds }
    }

    fn http_url(&mut self, key: &str, value: &str) -> Option<url::Url> {
        self.check(
            key,
            match url::Url::parse(value) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Ok(url),
                Ok(_) => Err(format!("{value:?} is not an http(s) URL")),
                Err(e) => Err(format!("{value:?} is not a URL ({e})")),
            },
        )
    }

    fn account(&mut self, key: &str, section: AccountSection) -> Option<Account> {
        let problems_before = self.problems.len();
        let k = &section.kommo;
        if k.account_id <= 0 {
            self.problem(&format!("{key}.kommo.account_id"), "must be a positive Kommo account id");
        }
        let base_url = self.http_url(&format!("{key}.kommo.base_url"), &k.base_url);
        if !(k.requests_per_second > 0.0 && k.requests_per_second <= 50.0) {
            self.problem(&format!("{key}.kommo.requests_per_second"), "must be above 0 and at most 50 (Kommo's limit per account)");
        }
        let secret_key = format!("{key}.kommo.webhook_secret_env");
        let webhook_secret = self.secret(&secret_key, &k.webhook_secret_env);
        if let Some(secret) = &webhook_secret {
            use secrecy::ExposeSecret;
            if secret.expose_secret().len() < MIN_KOMMO_WEBHOOK_SECRET_LEN {
                self.problem(
                    &secret_key,
                    &format!(
                        "the secret in {} is shorter than {MIN_KOMMO_WEBHOOK_SECRET_LEN} characters; use a random one (e.g. `openssl rand -hex 24`)",
                        k.webhook_secret_env
                    ),
                );
            }
        }
        let auth = match &k.auth {
            KommoAuthSection::LongLivedToken { token_env } => {
                self.secret(&format!("{key}.kommo.auth.token_env"), token_env).map(|token| KommoAuth::LongLivedToken { token })
            }
            KommoAuthSection::Oauth { client_id, client_secret_env, redirect_uri, refresh_token_env } => {
                if client_id.is_empty() {
                    self.problem(&format!("{key}.kommo.auth.client_id"), "is empty");
                }
                let client_secret = self.secret(&format!("{key}.kommo.auth.client_secret_env"), client_secret_env);
                let redirect_uri = self.http_url(&format!("{key}.kommo.auth.redirect_uri"), redirect_uri);
                let refresh_token = refresh_token_env.as_ref().map(|env| self.secret(&format!("{key}.kommo.auth.refresh_token_env"), env));
                match (client_secret, redirect_uri, refresh_token) {
                    (Some(client_secret), Some(redirect_uri), None) => {
                        Some(KommoAuth::Oauth { client_id: client_id.clone(), client_secret, redirect_uri, refresh_token: None })
                    }
                    (Some(client_secret), Some(redirect_uri), Some(Some(refresh_token))) => {
                        Some(KommoAuth::Oauth { client_id: client_id.clone(), client_secret, redirect_uri, refresh_token: Some(refresh_token) })
                    }
                    _ => None,
                }
            }
        };

        let stripe = section.stripe.as_ref().map(|s| {
            let api_base_url = self.http_url(&format!("{key}.stripe.api_base_url"), &s.api_base_url);
            let secret_key = self.secret(&format!("{key}.stripe.secret_key_env"), &s.secret_key_env);
            let webhook_secrets = self.secrets(&format!("{key}.stripe.webhook_secret_envs"), &s.webhook_secret_envs);
            if s.signature_tolerance_secs == 0 {
                self.problem(&format!("{key}.stripe.signature_tolerance_secs"), "must be positive");
            }
            if s.requests_per_second.is_some_and(|rate| !(rate > 0.0 && rate <= 100.0)) {
                self.problem(&format!("{key}.stripe.requests_per_second"), "must be above 0 and at most 100 (Stripe's limit in live mode)");
            }
            let secret_key = secret_key?;
            // Stripe's own limits: 25 a second in test mode, 100 in live mode.
            let test_mode = ["sk_test_", "rk_test_"].iter().any(|prefix| secret_key.expose_secret().starts_with(prefix));
            Some(StripeAccount {
                api_base_url: api_base_url?,
                requests_per_second: s.requests_per_second.unwrap_or(if test_mode { 25.0 } else { 100.0 }),
                secret_key,
                webhook_secrets: webhook_secrets?,
                signature_tolerance: Duration::from_secs(s.signature_tolerance_secs),
            })
        });
        let lemonsqueezy = section.lemonsqueezy.as_ref().map(|s| {
            let api_base_url = self.http_url(&format!("{key}.lemonsqueezy.api_base_url"), &s.api_base_url);
            let api_key = self.secret(&format!("{key}.lemonsqueezy.api_key_env"), &s.api_key_env);
            let webhook_secrets = self.secrets(&format!("{key}.lemonsqueezy.webhook_secret_envs"), &s.webhook_secret_envs);
            if let Some(self_serve) = &s.self_serve
                && self_serve.responsible_user_ids.is_empty()
            {
                self.problem(&format!("{key}.lemonsqueezy.self_serve.responsible_user_ids"), "names no manager; name at least one");
            }
            Some(LemonSqueezyAccount {
                api_base_url: api_base_url?,
                api_key: api_key?,
                webhook_secrets: webhook_secrets?,
                test_mode: s.test_mode,
                store_id: s.store_id.clone(),
                self_serve: s.self_serve.clone(),
            })
        });

        let default_currency = self.check(&format!("{key}.default_currency"), Currency::parse(&section.default_currency).map_err(|e| e.to_string()));
        let mut triggers = Vec::new();
        for (i, t) in section.triggers.iter().enumerate() {
            let tkey = format!("{key}.triggers[{i}]");
            if section.triggers[..i].iter().any(|earlier| earlier.name == t.name) {
                self.problem(&format!("{tkey}.name"), &format!("{:?} is used by an earlier trigger", t.name));
            }
            if section.triggers[..i].iter().any(|e| (e.pipeline_id, e.status_id) == (t.pipeline_id, t.status_id)) {
                self.problem(&format!("{tkey}.status_id"), "an earlier trigger has the same pipeline and status");
            }
            let provider = match Provider::parse(&t.provider) {
                Some(Provider::Stripe) => {
                    if section.stripe.is_none() {
                        self.problem(&format!("{tkey}.provider"), "is stripe, but the account has no [accounts.stripe] section");
                    }
                    Some(TriggerProvider::Stripe)
                }
                Some(Provider::LemonSqueezy) => {
                    if section.lemonsqueezy.is_none() {
                        self.problem(&format!("{tkey}.provider"), "is lemonsqueezy, but the account has no [accounts.lemonsqueezy] section");
                    }
                    if t.interval.is_some() || t.mode != "payment" {
                        self.problem(&format!("{tkey}.mode"), "Lemon Squeezy sells what the variant is: leave mode and interval out");
                    }
                    match (&t.store_id, &t.variant_id) {
                        (Some(store_id), Some(variant_id)) => Some(TriggerProvider::LemonSqueezy {
                            store_id: store_id.clone(),
                            variant_id: variant_id.clone(),
                            expires_hours: t.checkout_expires_hours,
                        }),
                        _ => {
                            self.problem(&format!("{tkey}.variant_id"), "a lemonsqueezy trigger needs store_id and variant_id");
                            None
                        }
                    }
                }
                _ => {
                    let other = &t.provider;
                    self.problem(&format!("{tkey}.provider"), &format!("{other:?} is neither \"stripe\" nor \"lemonsqueezy\""));
                    None
                }
            };
            if k.fields.is_none() {
                self.problem(&tkey, &format!("needs {key}.kommo.fields (run `kommo-pay kommo setup`)"));
            }
            if t.remind_after_days.is_none() && (t.remind_salesbot_id.is_some() || !t.remind_task) {
                self.problem(
                    &format!("{tkey}.remind_after_days"),
                    "is needed by remind_salesbot_id and remind_task: reminders start that many days after the link",
                );
            }
            if !t.remind_task && t.remind_salesbot_id.is_none() {
                self.problem(&format!("{tkey}.remind_task"), "is false, but no remind_salesbot_id reminds the client instead: a reminder would do nothing");
            }
            let recurring = match (t.mode.as_str(), t.interval.as_deref()) {
                _ if Provider::parse(&t.provider) == Some(Provider::LemonSqueezy) => None,
                ("payment", None) => None,
                ("payment", Some(_)) => {
                    self.problem(&format!("{tkey}.interval"), "is only for mode = \"subscription\"");
                    None
                }
                ("subscription", interval) => {
                    let interval = match interval {
                        Some("day") => Some(Interval::Day),
                        Some("week") => Some(Interval::Week),
                        Some("month") => Some(Interval::Month),
                        Some("year") => Some(Interval::Year),
                        _ => {
                            self.problem(&format!("{tkey}.interval"), "must be day, week, month or year for a subscription");
                            None
                        }
                    };
                    if t.interval_count == 0 {
                        self.problem(&format!("{tkey}.interval_count"), "must be at least 1");
                    }
                    interval.map(|interval| Recurring { interval, interval_count: t.interval_count })
                }
                (other, _) => {
                    self.problem(&format!("{tkey}.mode"), &format!("{other:?} is neither \"payment\" nor \"subscription\""));
                    None
                }
            };
            if let Some(url) = &t.redirect_url {
                self.http_url(&format!("{tkey}.redirect_url"), url);
            }
            let Some(provider) = provider else { continue };
            triggers.push(Trigger {
                name: t.name.clone(),
                pipeline_id: t.pipeline_id,
                status_id: t.status_id,
                provider,
                product_name: t.product_name.clone(),
                description: t.description.clone(),
                custom: t.custom.clone(),
                reminders: t.remind_after_days.map(|after| Reminders {
                    after: chrono::Duration::days(i64::from(after)),
                    every: chrono::Duration::days(i64::from(t.remind_every_days.unwrap_or(after).max(1))),
                    max: t.max_reminders,
                    salesbot_id: t.remind_salesbot_id,
                    task: t.remind_task,
                }),
                recurring,
                redirect_url: t.redirect_url.clone(),
                move_to_status_id: t.move_to_status_id,
                paid_status_id: t.paid_status_id,
                refund_status_id: t.refund_status_id,
                success_manager_id: t.success_manager_id,
                add_note: t.add_note,
                salesbot_id: t.salesbot_id,
            });
        }

        // Our own stage moves come back as webhooks: a move into a trigger stage would issue
        // links forever.
        for (i, t) in triggers.iter().enumerate() {
            for (name, target) in [("move_to_status_id", t.move_to_status_id), ("paid_status_id", t.paid_status_id), ("refund_status_id", t.refund_status_id)] {
                if target.is_some_and(|status| triggers.iter().any(|other| (other.pipeline_id, other.status_id) == (t.pipeline_id, status))) {
                    self.problem(&format!("{key}.triggers[{i}].{name}"), "is a trigger stage itself: the move would issue another link");
                }
            }
        }

        // Checkout data fills deal fields, never the ones kommo-pay keeps itself.
        let own_fields = k.fields.as_ref().map(|f| f.ids()).unwrap_or_default();
        for (data_key, field) in &section.deals.fields_from_checkout {
            let at = format!("{key}.deals.fields_from_checkout.{data_key}");
            if data_key.starts_with("kommo_") {
                self.problem(&at, "keys starting with kommo_ are kommo-pay's own metadata, not checkout data");
            } else if *field <= 0 {
                self.problem(&at, "must be a Kommo deal field id (a positive number)");
            } else if own_fields.contains(field) {
                self.problem(&at, &format!("field {field} is one of {key}.kommo.fields, which kommo-pay reads or writes itself"));
            }
        }

        if self.problems.len() > problems_before {
            return None;
        }
        // One set of deal-handling options for both providers; the Lemon Squeezy keys they
        // started as are still read.
        let mut deals = DealHandling {
            won_status_id: section.deals.won_status_id,
            refund_status_id: section.deals.refund_status_id,
            success_manager_id: section.deals.success_manager_id,
        };
        if let Some(ls) = &section.lemonsqueezy {
            for (name, old, new) in [
                ("refund_status_id", ls.refund_status_id, &mut deals.refund_status_id),
                ("success_manager_id", ls.success_manager_id, &mut deals.success_manager_id),
            ] {
                let Some(old) = old else { continue };
                match *new {
                    Some(set) if set != old => self.problem(
                        &format!("{key}.lemonsqueezy.{name}"),
                        &format!("is {old}, but {key}.deals.{name} is {set}: keep the one in [accounts.deals]"),
                    ),
                    _ => self.notice(
                        &format!("{key}.lemonsqueezy.{name}"),
                        &format!("moved to {key}.deals.{name} (it applies to Stripe deals too); still read here"),
                    ),
                }
                *new = Some(old);
            }
        }
        Some(Account {
            deals,
            checkout_fields: section.deals.fields_from_checkout,
            default_currency: default_currency?,
            overdue_grace: chrono::Duration::days(i64::from(section.overdue_grace_days)),
            triggers,
            slug: section.slug.into(),
            kommo: KommoAccount {
                account_id: k.account_id,
                base_url: base_url?,
                webhook_secret: webhook_secret?,
                auth: auth?,
                requests_per_second: k.requests_per_second,
                fields: k.fields.clone(),
            },
            stripe: stripe.flatten(),
            lemonsqueezy: lemonsqueezy.flatten(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const VALID: &str = r#"
        [database]
        url = "postgres://postgres@127.0.0.1:54329/kommo_pay"

        [[accounts]]
        slug = "acme"
        [accounts.kommo]
        account_id = 32427762
        base_url = "https://acme.kommo.com"
        webhook_secret_env = "ACME_KOMMO_WEBHOOK_SECRET"
        auth = { kind = "long_lived_token", token_env = "ACME_KOMMO_TOKEN" }
        [accounts.stripe]
        secret_key_env = "ACME_STRIPE_KEY"
        webhook_secret_envs = ["ACME_WHSEC", "ACME_WHSEC_OLD"]
    "#;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| map.get(name).cloned()
    }

    fn full_env() -> impl Fn(&str) -> Option<String> {
        env(&[
            ("ACME_KOMMO_WEBHOOK_SECRET", "0123456789abcdef0123456789abcdef"),
            ("ACME_KOMMO_TOKEN", "kommo-token"),
            ("ACME_STRIPE_KEY", "sk_test_x"),
            ("ACME_WHSEC", "whsec_new"),
            ("ACME_WHSEC_OLD", "whsec_old"),
        ])
    }

    #[test]
    fn a_valid_file_resolves_with_its_secrets_and_defaults() {
        let config = Config::parse(VALID, "test.toml", &full_env()).unwrap();
        let acme = config.accounts.get("acme").unwrap();
        assert_eq!(acme.kommo.account_id, 32427762);
        let stripe = acme.stripe.as_ref().unwrap();
        assert_eq!(stripe.webhook_secrets.len(), 2);
        assert_eq!(stripe.signature_tolerance, Duration::from_secs(300));
        assert_eq!(stripe.api_base_url.as_str(), "https://api.stripe.com/");
        assert_eq!(config.server.body_limit_bytes, 256 * 1024);
        assert!(acme.lemonsqueezy.is_none());
    }

    #[test]
    fn database_url_from_the_environment_wins_over_the_file() {
        let with_url = |name: &str| {
            if name == DATABASE_URL_ENV { Some("postgres://u:pw@db:5432/x".to_string()) } else { full_env()(name) }
        };
        let config = Config::parse(VALID, "test.toml", &with_url).unwrap();
        use secrecy::ExposeSecret;
        assert_eq!(config.database.url.expose_secret(), "postgres://u:pw@db:5432/x");
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let text = VALID
            .replace(r#"slug = "acme""#, r#"slug = "Acme Corp""#)
            .replace("https://acme.kommo.com", "acme.kommo.com")
            .replace("127.0.0.1:54329", "me:secret@127.0.0.1:54329");
        let err = Config::parse(&text, "bad.toml", &env(&[("ACME_KOMMO_WEBHOOK_SECRET", "short")])).unwrap_err();
        let expected = [
            "database.url: contains a password",
            "accounts[0].slug: \"Acme Corp\" is not a slug",
            "accounts[0].kommo.base_url: \"acme.kommo.com\" is not a URL",
            "accounts[0].kommo.webhook_secret_env: the secret in ACME_KOMMO_WEBHOOK_SECRET is shorter than 24",
            "accounts[0].kommo.auth.token_env: environment variable ACME_KOMMO_TOKEN is not set",
            "accounts[0].stripe.secret_key_env: environment variable ACME_STRIPE_KEY is not set",
            "accounts[0].stripe.webhook_secret_envs[1]: environment variable ACME_WHSEC_OLD is not set",
        ];
        for want in expected {
            assert!(err.problems.iter().any(|p| p.starts_with(want)), "missing {want:?} in {:#?}", err.problems);
        }
        // The secret's value never appears in an error.
        assert!(!err.to_string().contains("short\""), "{err}");
    }

    #[test]
    fn deal_handling_is_one_set_for_both_providers_and_the_old_keys_still_work() {
        let ls = "[accounts.lemonsqueezy]\napi_key_env = \"ACME_KOMMO_TOKEN\"\nwebhook_secret_envs = [\"ACME_WHSEC\"]\n";
        let config = Config::parse(&format!("{VALID}\n[accounts.deals]\nrefund_status_id = 7\nwon_status_id = 9\n"), "x.toml", &full_env()).unwrap();
        let deals = config.accounts.get("acme").unwrap().deals;
        assert_eq!((deals.refund_status_id, deals.won_status_id, deals.success_manager_id), (Some(7), Some(9), None));
        assert!(config.notices.is_empty());

        let old = format!("{VALID}\n{ls}refund_status_id = 7\nsuccess_manager_id = 500\n");
        let config = Config::parse(&old, "x.toml", &full_env()).unwrap();
        let deals = config.accounts.get("acme").unwrap().deals;
        assert_eq!((deals.refund_status_id, deals.success_manager_id), (Some(7), Some(500)), "still read");
        assert!(
            config.notices.iter().any(|n| n.contains("accounts[0].lemonsqueezy.refund_status_id: moved to accounts[0].deals.refund_status_id")),
            "{:?}",
            config.notices
        );

        let both = format!("{VALID}\n[accounts.deals]\nrefund_status_id = 8\n{ls}refund_status_id = 7\n");
        let err = Config::parse(&both, "x.toml", &full_env()).unwrap_err();
        assert!(err.problems.iter().any(|p| p.contains("keep the one in [accounts.deals]")), "{err}");
    }

    /// The valid configuration with a `kommo.fields` line, for the checks that need one.
    fn valid_with_fields() -> String {
        VALID.replace("token_env = \"ACME_KOMMO_TOKEN\" }", &format!("token_env = \"ACME_KOMMO_TOKEN\" }}\n{FIELDS}"))
    }

    const FIELDS: &str = "fields = { payment_link = 1, payment_status = 2, payment_date = 3, payment_id = 4, paid_amount = 5, statuses = { not_issued = 10, awaiting = 11, paid = 12, overdue = 13, refunded = 14, partially_refunded = 15, cancelled = 16 } }";

    #[test]
    fn checkout_data_fills_deal_fields_but_never_kommo_pays_own() {
        let with = |mapping: &str| {
            let with_fields = valid_with_fields();
            format!("{with_fields}\n[accounts.deals]\nfields_from_checkout = {{ {mapping} }}\n")
        };
        let config = Config::parse(&with("utm_source = 1246600, plan = 1246601"), "x.toml", &full_env()).unwrap();
        let mapped = &config.accounts.get("acme").unwrap().checkout_fields;
        assert_eq!(mapped.iter().map(|(k, v)| (k.as_str(), *v)).collect::<Vec<_>>(), [("plan", 1246601), ("utm_source", 1246600)]);
        let err = Config::parse(&with("kommo_lead_id = 1246600, paid = 5, odd = 0"), "x.toml", &full_env()).unwrap_err();
        for expected in [
            "fields_from_checkout.kommo_lead_id: keys starting with kommo_ are kommo-pay's own",
            "fields_from_checkout.paid: field 5 is one of accounts[0].kommo.fields",
            "fields_from_checkout.odd: must be a Kommo deal field id",
        ] {
            assert!(err.problems.iter().any(|p| p.contains(expected)), "{expected} in {err}");
        }
    }

    #[test]
    fn a_reminder_must_remind_someone() {
        let trigger = |extra: &str| {
            let with_fields = valid_with_fields();
            format!("{with_fields}\n[[accounts.triggers]]\nname = \"invoice\"\npipeline_id = 1\nstatus_id = 2\nprovider = \"stripe\"\n{extra}\n")
        };
        let ok = Config::parse(&trigger("remind_after_days = 3\nremind_salesbot_id = 78\nremind_task = false"), "x.toml", &full_env());
        let reminders = ok.unwrap().accounts.get("acme").unwrap().trigger("invoice").unwrap().reminders.unwrap();
        assert_eq!((reminders.salesbot_id, reminders.task), (Some(78), false));
        let err = Config::parse(&trigger("remind_after_days = 3\nremind_task = false"), "x.toml", &full_env()).unwrap_err();
        assert!(err.problems.iter().any(|p| p.contains("remind_task: is false, but no remind_salesbot_id")), "{err}");
        let err = Config::parse(&trigger("remind_salesbot_id = 78"), "x.toml", &full_env()).unwrap_err();
        assert!(err.problems.iter().any(|p| p.contains("remind_after_days: is needed")), "{err}");
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_their_place() {
        let err = Config::parse(&format!("{VALID}\nsurprise = 1\n"), "x.toml", &full_env()).unwrap_err();
        assert!(err.problems[0].contains("unknown field `surprise`"), "{err}");
        let err = Config::parse(&VALID.replace("32427762", "\"32427762\""), "x.toml", &full_env()).unwrap_err();
        assert!(err.problems[0].contains("account_id"), "{err}");
    }

    #[test]
    fn duplicate_slugs_and_kommo_ids_are_rejected() {
        let second = &VALID[VALID.find("[[accounts]]").unwrap()..];
        let err = Config::parse(&format!("{VALID}\n{second}"), "x.toml", &full_env()).unwrap_err();
        assert!(err.problems.iter().any(|p| p.starts_with("accounts[1].slug: \"acme\" is used")), "{err}");
        assert!(err.problems.iter().any(|p| p.starts_with("accounts[1].kommo.account_id: 32427762 is used")), "{err}");
    }

    #[test]
    fn job_kinds_override_the_default_retry_policy() {
        let text = format!("[jobs]\nmax_attempts = 7\n[jobs.kinds.\"stripe.payment\"]\nmax_attempts = 3\nretry_cap_ms = 5000\n{VALID}");
        let config = Config::parse(&text, "x.toml", &full_env()).unwrap();
        let special = config.jobs.policy("stripe.payment");
        assert_eq!((special.max_attempts, special.base, special.cap), (3, Duration::from_secs(1), Duration::from_secs(5)));
        assert_eq!(config.jobs.policy("other").max_attempts, 7);

        let bad = format!("[jobs.kinds.x]\nmax_attempts = 0\nretry_base_ms = 10\nretry_cap_ms = 1\n{VALID}");
        let err = Config::parse(&bad, "x.toml", &full_env()).unwrap_err();
        assert!(err.problems.iter().any(|p| p.starts_with("jobs.kinds.\"x\".max_attempts")), "{err}");
        assert!(err.problems.iter().any(|p| p.starts_with("jobs.kinds.\"x\".retry_cap_ms")), "{err}");
    }

    #[test]
    fn triggers_are_checked_against_loops_and_missing_parts() {
        let trigger = |extra: &str| format!("{VALID}\n[[accounts.triggers]]\nname = \"t\"\npipeline_id = 1\nstatus_id = 10\nprovider = \"stripe\"\n{extra}\n");
        let err = Config::parse(&trigger("move_to_status_id = 10"), "x.toml", &full_env()).unwrap_err();
        assert!(err.problems.iter().any(|p| p.starts_with("accounts[0].triggers[0].move_to_status_id: is a trigger stage")), "{err}");
        assert!(err.problems.iter().any(|p| p.starts_with("accounts[0].triggers[0]: needs accounts[0].kommo.fields")), "{err}");
        let err = Config::parse(&trigger("mode = \"subscription\""), "x.toml", &full_env()).unwrap_err();
        assert!(err.problems.iter().any(|p| p.starts_with("accounts[0].triggers[0].interval: must be day")), "{err}");
        let err = Config::parse(&trigger("provider = \"paypal\""), "x.toml", &full_env()).unwrap_err();
        assert!(err.problems[0].contains("duplicate key"), "{err}");
        let ls = trigger("").replace("provider = \"stripe\"", "provider = \"lemonsqueezy\"");
        let err = Config::parse(&ls, "x.toml", &full_env()).unwrap_err();
        assert!(err.problems.iter().any(|p| p.starts_with("accounts[0].triggers[0].provider: is lemonsqueezy, but the account has no")), "{err}");
        assert!(err.problems.iter().any(|p| p.starts_with("accounts[0].triggers[0].variant_id: a lemonsqueezy trigger needs")), "{err}");
    }

    #[test]
    fn slugs() {
        for ok in ["acme", "a", "acme-2"] {
            assert!(is_slug(ok), "{ok}");
        }
        for bad in ["", "Acme", "a b", "-a", "a/b", &"a".repeat(65)] {
            assert!(!is_slug(bad), "{bad}");
        }
    }
}
