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
