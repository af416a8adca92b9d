//! Deal fields from what a checkout carried (`[accounts.deals] fields_from_checkout`): Lemon
//! Squeezy's custom data, Stripe's metadata. Written with the payment that carried them; a value
//! a field cannot take becomes a note on the deal, never a failed job, so that a buyer's odd UTM
//! tag cannot hold up their payment.

use std::collections::BTreeMap;

use kommo_pay_core::ids::LeadId;
use kommo_pay_core::kommo::client::KommoError;
use kommo_pay_core::kommo::lead::LeadChanges;

use super::{AccountClients, kommo_failed};
use crate::JobError;

/// Writes the mapped keys of `carried` into lead `lead_id`'s fields: checked against each field's
/// type first, then in one update; when Kommo refuses that, field by field, so that the values it
/// takes are kept. What no field took is listed in one note. `maybe_done`: an earlier attempt may
/// have written them (the card is read first, the note looked for).
pub(super) async fn write(clients: &AccountClients, lead_id: LeadId, carried: &BTreeMap<String, String>, maybe_done: bool) -> Result<(), JobError> {
    let mapped: Vec<(&str, &str, i64)> =
        clients.account.checkout_fields.iter().filter_map(|(key, field)| Some((key.as_str(), carried.get(key)?.as_str(), *field))).collect();
    if mapped.is_empty() {
        return Ok(());
    }
    let kommo = &clients.kommo;
    let fields = kommo.lead_fields().await.map_err(kommo_failed)?;
    let mut values = Vec::new();
    let mut refused = Vec::new();
    for (key, value, field_id) in mapped {
        let checked = match fields.iter().find(|f| f.id == field_id) {
            Some(field) => field.value_for(value).map_err(|why| format!("field \"{}\" ({field_id}): {why}", field.name())),
            None => Err(format!("Kommo has no deal field {field_id}")),
        };
        match checked {
            Ok(entry) => values.push((key, value, entry)),
            Err(why) => refused.push(format!("{key} = \"{value}\" ({why})")),
        }
    }
    if !values.is_empty() {
        let all = LeadChanges::fields(values.iter().map(|(_, _, entry)| entry.clone()).collect());
        let shown = maybe_done && kommo.lead(lead_id).await.map_err(kommo_failed)?.is_some_and(|deal| deal.shows(&all));
        if shown {
            tracing::info!(lead_id = lead_id.0, "the card already shows the checkout data: an earlier attempt wrote it");
        } else {
            match kommo.update_lead(lead_id, &all).await {
                Ok(()) => {}
                // Kommo names the refused item, not always the field: each field alone, then.
                Err(KommoError::Refused { .. }) => {
                    for (key, value, entry) in &values {
                        match kommo.update_lead(lead_id, &LeadChanges::fields(vec![entry.clone()])).await {
                            Ok(()) => {}
                            Err(KommoError::Refused { detail, .. }) => refused.push(format!("{key} = \"{value}\" (Kommo refused it: {detail})")),
                            Err(error) => return Err(kommo_failed(error)),
                        }
                    }
                }
                Err(error) => return Err(kommo_failed(error)),
            }
        }
    }
    if !refused.is_empty() {
        let text = format!("Checkout data the deal's fields could not take: {}.", refused.join("; "));
        kommo.add_lead_note_once(lead_id, &text, maybe_done).await.map_err(kommo_failed)?;
    }
    Ok(())
}
