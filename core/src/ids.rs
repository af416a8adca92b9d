//! Typed identities: a Kommo lead's id and a job's id are both 64-bit integers, and functions
//! take them side by side (`payment_links::set_status(pool, account, lead, job, …)`); as types
//! they cannot be swapped. Each is stored, serialised and shown as its number.

use std::fmt;

macro_rules! numeric_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize, schemars::JsonSchema, sqlx::Type)]
        #[serde(transparent)]
        #[sqlx(transparent)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<i64> for $name {
            fn from(id: i64) -> $name {
                $name(id)
            }
        }
    };
}

numeric_id!(
    /// A Kommo lead (deal).
    LeadId
);
numeric_id!(
    /// A Kommo contact.
    ContactId
);
numeric_id!(
    /// A row of `jobs`.
    JobId
);

/// A kommo-pay account: its configuration's `slug`, and its name in the database, metrics and
/// logs. Read as text wherever text is wanted (`Deref<Target = str>`), so only the functions
/// that take an account need to name the type.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize, schemars::JsonSchema, sqlx::Type)]
#[serde(transparent)]
#[sqlx(transparent)]
pub struct AccountSlug(String);

impl AccountSlug {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for AccountSlug {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountSlug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<&str> for AccountSlug {
    fn from(slug: &str) -> AccountSlug {
        AccountSlug(slug.to_owned())
    }
}

impl From<String> for AccountSlug {
    fn from(slug: String) -> AccountSlug {
        AccountSlug(slug)
    }
}

/// Maps keyed by account are looked up by text (a slug from a URL or a command line).
impl std::borrow::Borrow<str> for AccountSlug {
    fn borrow(&self) -> &str {
        &self.0
    }
}
