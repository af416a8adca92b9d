//! The outside services kommo-pay talks to: the one spelling of their names, as the database
//! (`events.source`, `payments.provider`, `api_limits.provider`, …), the metrics, the logs and the
//! configuration write them.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Kommo,
    Stripe,
    LemonSqueezy,
}

impl Provider {
    pub const ALL: [Provider; 3] = [Provider::Kommo, Provider::Stripe, Provider::LemonSqueezy];

    pub const fn as_str(self) -> &'static str {
        match self {
            Provider::Kommo => "kommo",
            Provider::Stripe => "stripe",
            Provider::LemonSqueezy => "lemonsqueezy",
        }
    }

    /// The provider spelled `name`, if any.
    pub fn parse(name: &str) -> Option<Provider> {
        Provider::ALL.into_iter().find(|provider| provider.as_str() == name)
    }

    /// How people write it (in notes, tasks and messages).
    pub const fn title(self) -> &'static str {
        match self {
            Provider::Kommo => "Kommo",
            Provider::Stripe => "Stripe",
            Provider::LemonSqueezy => "Lemon Squeezy",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl sqlx::Type<sqlx::Postgres> for Provider {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <&str as sqlx::Type<sqlx::Postgres>>::type_info()
    }
}

impl<'q> sqlx::Encode<'q, sqlx::Postgres> for Provider {
    fn encode_by_ref(&self, buf: &mut sqlx::postgres::PgArgumentBuffer) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <&str as sqlx::Encode<sqlx::Postgres>>::encode(self.as_str(), buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_text_and_serde() {
        for provider in Provider::ALL {
            assert_eq!(Provider::parse(provider.as_str()), Some(provider));
            assert_eq!(serde_json::to_value(provider).unwrap(), provider.as_str());
        }
        assert_eq!(Provider::parse("paypal"), None);
    }
}
