//! Account configurations for the tests, the benchmarks and the sandbox, as the TOML an operator
//! writes: one builder, so that what every account needs (its Kommo, its secrets' variables, the
//! deal fields, a trigger) is spelled in one place and each caller adds only what its story needs.
//!
//! Secrets come from KOMMO_SECRET and KOMMO_TOKEN (Kommo), STRIPE_KEY and STRIPE_WHSEC (Stripe).

use std::fmt;

/// The pipeline and trigger stage of [`AccountToml::standard`]'s trigger.
pub const PIPELINE: i64 = 8572511;
pub const TRIGGER_STAGE: i64 = 67548619;

/// The deal fields 901–905 and the payment status options 1–7.
pub const FIELDS: &str = "fields = { payment_link = 901, payment_status = 902, payment_date = 903, payment_id = 904, paid_amount = 905, \
                          statuses = { not_issued = 1, awaiting = 2, paid = 3, overdue = 4, refunded = 5, partially_refunded = 6, cancelled = 7 } }";

/// One `[[accounts]]` entry: its own keys, then its tables in the order they were added.
#[derive(Debug, Clone)]
pub struct AccountToml {
    keys: Vec<String>,
    tables: Vec<(String, Vec<String>)>,
}

impl AccountToml {
    /// An account whose Kommo is at `kommo_url`, authorised with a long-lived token.
    pub fn new(slug: &str, account_id: i64, kommo_url: &str) -> AccountToml {
        let account = AccountToml { keys: vec![format!("slug = \"{slug}\"")], tables: Vec::new() };
        account
            .kommo(&format!("account_id = {account_id}"))
            .kommo(&format!("base_url = \"{kommo_url}\""))
            .kommo("webhook_secret_env = \"KOMMO_SECRET\"")
            .kommo("auth = { kind = \"long_lived_token\", token_env = \"KOMMO_TOKEN\" }")
    }

    /// [`new`](Self::new) with the deal [`FIELDS`], Stripe at `stripe_url` and one Stripe trigger
    /// "invoice" on [`TRIGGER_STAGE`] of [`PIPELINE`].
    pub fn standard(slug: &str, account_id: i64, kommo_url: &str, stripe_url: &str) -> AccountToml {
        AccountToml::new(slug, account_id, kommo_url).kommo(FIELDS).stripe(stripe_url).trigger("invoice", "stripe", PIPELINE, TRIGGER_STAGE)
    }

    /// A key of the account itself (`default_currency = "USD"`).
    pub fn key(mut self, line: &str) -> AccountToml {
        self.keys.push(line.to_owned());
        self
    }

    /// Keys (one per line) of `[accounts.kommo]`; one given again replaces the first (`auth`, say).
    pub fn kommo(self, line: &str) -> AccountToml {
        self.set("[accounts.kommo]", line)
    }

    /// Stripe at `api_base_url`, its key and webhook secret from the environment.
    pub fn stripe(self, api_base_url: &str) -> AccountToml {
        self.stripe_key(&format!("api_base_url = \"{api_base_url}\""))
            .stripe_key("secret_key_env = \"STRIPE_KEY\"")
            .stripe_key("webhook_secret_envs = [\"STRIPE_WHSEC\"]")
    }

    /// Keys (one per line) of `[accounts.stripe]`.
    pub fn stripe_key(self, line: &str) -> AccountToml {
        self.set("[accounts.stripe]", line)
    }

    /// A new `[[accounts.triggers]]` entry.
    pub fn trigger(mut self, name: &str, provider: &str, pipeline_id: i64, status_id: i64) -> AccountToml {
        let keys = vec![
            format!("name = \"{name}\""),
            format!("pipeline_id = {pipeline_id}"),
            format!("status_id = {status_id}"),
            format!("provider = \"{provider}\""),
        ];
        self.tables.push(("[[accounts.triggers]]".into(), keys));
        self
    }

    /// Keys (one per line) of the trigger added last.
    pub fn trigger_key(mut self, lines: &str) -> AccountToml {
        let (_, keys) = self.tables.iter_mut().rev().find(|(header, _)| header == "[[accounts.triggers]]").expect("a trigger to add the keys to");
        keys.extend(lines.lines().map(str::trim).filter(|line| !line.is_empty()).map(str::to_owned));
        self
    }

    /// Keys (one per line) of the account's table `header` (`[accounts.deals]`,
    /// `[accounts.lemonsqueezy]`, …), made when it is first named.
    pub fn set(mut self, header: &str, lines: &str) -> AccountToml {
        let index = match self.tables.iter().position(|(h, _)| h == header) {
            Some(index) => index,
            None => {
                self.tables.push((header.to_owned(), Vec::new()));
                self.tables.len() - 1
            }
        };
        let keys = &mut self.tables[index].1;
        let name = |line: &str| line.split('=').next().unwrap_or_default().trim().to_owned();
        for line in lines.lines().map(str::trim).filter(|line| !line.is_empty()) {
            match keys.iter_mut().find(|key| name(key) == name(line)) {
                Some(key) => *key = line.to_owned(),
                None => keys.push(line.to_owned()),
            }
        }
        self
    }
}

impl fmt::Display for AccountToml {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "\n[[accounts]]")?;
        for key in &self.keys {
            writeln!(f, "{key}")?;
        }
        for (header, keys) in &self.tables {
            writeln!(f, "{header}")?;
            for key in keys {
                writeln!(f, "{key}")?;
            }
        }
        Ok(())
    }
}
