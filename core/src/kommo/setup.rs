//! `kommo-pay kommo setup`: the deal fields kommo-pay writes, created where missing.
//!
//! Fields are found by their `code` (admins rename fields; codes stay), so a second run creates
//! nothing. Fields only kommo-pay writes are API-only: managers see them but cannot edit them.

use super::client::{KommoClient, KommoError};
use super::fields::{LeadField, NewField, NewOption};

/// The payment status options, in the order managers see them, with the key each has in
/// `[accounts.kommo.fields.statuses]`.
pub const STATUSES: [(&str, &str); 7] = [
    ("not_issued", "Not issued"),
    ("awaiting", "Awaiting payment"),
    ("paid", "Paid"),
    ("overdue", "Overdue"),
    ("refunded", "Refunded"),
    ("partially_refunded", "Partially refunded"),
    ("cancelled", "Cancelled"),
];

/// (config key, code, Kommo type, name, API-only)
const FIELDS: [(&str, &str, &str, &str, bool); 7] = [
    ("payment_link", "KOMMO_PAY_LINK", "url", "Payment link", true),
    ("payment_status", "KOMMO_PAY_STATUS", "select", "Payment status", true),
    ("payment_date", "KOMMO_PAY_DATE", "date_time", "Payment date", true),
    ("payment_id", "KOMMO_PAY_PAYMENT_ID", "text", "Payment ID", true),
    ("paid_amount", "KOMMO_PAY_PAID", "numeric", "Paid amount", true),
    ("refunded_amount", "KOMMO_PAY_REFUNDED", "numeric", "Refunded amount", true),
    ("amount_due", "KOMMO_PAY_AMOUNT_DUE", "numeric", "Amount due", false),
];

/// What setup found and did.
pub struct SetUp {
    /// Config keys of the fields it created.
    pub created: Vec<&'static str>,
    /// The `[accounts.kommo.fields]` section for the account, ready to paste.
    pub config: String,
}

pub async fn run(kommo: &KommoClient) -> Result<SetUp, SetupError> {
    let existing = kommo.lead_custom_fields().await?;
    let by_code = |fields: &[LeadField], code: &str| fields.iter().find(|f| f.code.as_deref() == Some(code)).cloned();
    let missing: Vec<_> = FIELDS.iter().filter(|(_, code, ..)| by_code(&existing, code).is_none()).collect();
    let mut all = existing;
    if !missing.is_empty() {
        let request: Vec<NewField> = missing
            .iter()
            .map(|&&(_, code, kind, name, is_api_only)| {
                let enums = match kind {
                    "select" => STATUSES.iter().enumerate().map(|(i, (_, label))| NewOption { value: label, sort: (i + 1) * 10 }).collect(),
                    _ => Vec::new(),
                };
                NewField { kind, name, code, is_api_only, enums }
            })
            .collect();
        all.extend(kommo.add_lead_custom_fields(&request).await?);
    }

    let mut lines = vec!["[accounts.kommo.fields]".to_owned()];
    for (key, code, ..) in FIELDS {
        let field = by_code(&all, code).ok_or(SetupError::NotCreated(code))?;
        lines.push(format!("{key} = {}", field.id));
    }
    let status = by_code(&all, "KOMMO_PAY_STATUS").expect("checked above");
    let mut statuses = Vec::new();
    for (key, label) in STATUSES {
        let option = status.options().iter().find(|option| option.value == label).ok_or(SetupError::MissingOption(label))?;
        statuses.push(format!("{key} = {}", option.id));
    }
    lines.push(format!("statuses = {{ {} }}", statuses.join(", ")));
    Ok(SetUp { created: missing.iter().map(|(key, ..)| *key).collect(), config: lines.join("\n") + "\n" })
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Kommo(#[from] KommoError),
    #[error("Kommo did not return the field with code {0} after creating it")]
    NotCreated(&'static str),
    #[error("the payment status field has no option {0:?}: add it in Kommo (Settings > deal fields), then run setup again")]
    MissingOption(&'static str),
}
