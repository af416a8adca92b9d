//! Kommo's CRM webhooks: form-encoded, PHP-style bracket keys, unsigned; and the account's list
//! of them ([`Webhook`]).
//!
//! ```text
//! account[id]=32427762&account[subdomain]=acme
//! leads[status][0][id]=15318175&leads[status][0][status_id]=67548619&...
//! leads[add][0][id]=...&leads[status][1][id]=...
//! ```
//!
//! One POST may carry several entities, several actions and several items per action; each
//! item becomes one [`KommoChange`]. The body is read into a generic tree first (fields we do not
//! know are kept for the log), then split. The format is api/v2-style (`custom_fields`, `enum`,
//! `last_modified`), not v4.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::event_log::PayloadError;
use crate::form::parse_form;
use crate::ids::LeadId;

/// One webhook POST from Kommo.
#[derive(Debug, Clone)]
pub struct KommoDelivery {
    /// `account[id]`, to be checked against the account the URL names.
    pub account_id: i64,
    /// The `account[...]` block as sent (subdomain, `_links.self`), kept with each change.
    pub account: Value,
    pub changes: Vec<KommoChange>,
}

/// One entity change: `leads[status][0]`, `contacts[update][1]`, `leads[note][0]`, …
#[derive(Debug, Clone, PartialEq)]
pub struct KommoChange {
    /// `leads`, `contacts`, `companies`, `task`, … as Kommo names it.
    pub entity: String,
    /// `add`, `update`, `status`, `responsible`, `delete`, `restore`, `note`, …
    pub action: String,
    /// The item's fields as sent, strings as strings.
    pub item: Value,
}

impl KommoDelivery {
    pub fn parse(body: &[u8]) -> Result<KommoDelivery, PayloadError> {
        let tree = parse_form(body)?;
        let Value::Object(mut top) = tree else { unreachable!("parse_form returns an object") };
        let account = top.remove("account").unwrap_or(Value::Null);
        let account_id = account.get("id").and_then(crate::wire::lenient_id).ok_or_else(|| PayloadError::new("account[id] is missing or not a number"))?;

        let mut changes = Vec::new();
        for (entity, actions) in top {
            match actions {
                Value::Object(actions) => {
                    for (action, items) in actions {
                        match items {
                            Value::Array(items) => {
                                changes.extend(items.into_iter().map(|item| KommoChange { entity: entity.clone(), action: action.clone(), item }))
                            }
                            item => changes.push(KommoChange { entity: entity.clone(), action, item }),
                        }
                    }
                }
                // Not an entity/action block: keep it whole rather than drop it.
                other => changes.push(KommoChange { entity: entity.clone(), action: String::new(), item: other }),
            }
        }
        Ok(KommoDelivery { account_id, account, changes })
    }
}

impl KommoChange {
    /// `leads.status`, `contacts.update`, …: the event kind in the log.
    pub fn kind(&self) -> String {
        if self.action.is_empty() { self.entity.clone() } else { format!("{}.{}", self.entity, self.action) }
    }

    /// The changed entity's id (`id`; for a note, the note's own `id`).
    pub fn entity_id(&self) -> Option<i64> {
        self.item.get("id").and_then(crate::wire::lenient_id).or_else(|| self.item.pointer("/note/id").and_then(crate::wire::lenient_id))
    }

    /// The deal this change concerns: a lead's own id, or the lead a note is attached to.
    pub fn lead_id(&self) -> Option<LeadId> {
        if self.entity != "leads" {
            return None;
        }
        match self.action.as_str() {
            "note" => self.item.pointer("/note/element_id").and_then(crate::wire::lenient_id),
            _ => self.item.get("id").and_then(crate::wire::lenient_id),
        }
        .map(LeadId)
    }

    /// `(pipeline_id, status_id)` the lead is in after this change, when the change says.
    pub fn stage(&self) -> Option<(i64, i64)> {
        let pipeline = self.item.get("pipeline_id").and_then(crate::wire::lenient_id)?;
        let status = self.item.get("status_id").and_then(crate::wire::lenient_id)?;
        Some((pipeline, status))
    }

    /// Collapses Kommo's retries of the same change into one event.
    ///
    /// Kommo sends no delivery id (whether `X-Amocrm-RequestId` survives a retry is unknown), so
    /// the key is the change itself: kind, entity id and a hash of the item's fields. A retry
    /// repeats the fields exactly; a new change differs at least in `last_modified`/`updated_at`.
    pub fn dedup_key(&self) -> String {
        // serde_json's map is sorted by key, so the serialisation is canonical.
        let digest = Sha256::digest(serde_json::to_vec(&self.item).expect("a Value serialises"));
        let id = self.entity_id().map_or_else(|| "-".to_owned(), |id| id.to_string());
        format!("{}:{id}:{}", self.kind(), hex::encode(&digest[..8]))
    }
}

/// One of the account's webhooks, as `GET /api/v4/webhooks` lists it. Its destination is not
/// read: it holds our URL secret.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct Webhook {
    #[serde(deserialize_with = "crate::wire::required_id")]
    pub id: i64,
    /// Kommo disables a hook that keeps failing, and after an API block.
    #[serde(default, deserialize_with = "crate::wire::flag")]
    pub disabled: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A real-shaped batched body: two leads changing stage, one added lead, a note; custom
    /// fields with a select `enum`, a scalar date and tags (reference/kommo.md §1).
    pub const BATCH: &str = concat!(
        "account%5Bsubdomain%5D=acme&account%5Bid%5D=32427762&account%5B_links%5D%5Bself%5D=https%3A%2F%2Facme.kommo.com",
        "&leads%5Bstatus%5D%5B0%5D%5Bid%5D=15318175&leads%5Bstatus%5D%5B0%5D%5Bname%5D=Website+redesign",
        "&leads%5Bstatus%5D%5B0%5D%5Bstatus_id%5D=67548619&leads%5Bstatus%5D%5B0%5D%5Bold_status_id%5D=67548607",
        "&leads%5Bstatus%5D%5B0%5D%5Bpipeline_id%5D=8572511&leads%5Bstatus%5D%5B0%5D%5Bprice%5D=2000",
        "&leads%5Bstatus%5D%5B0%5D%5Blast_modified%5D=1726572758",
        "&leads%5Bstatus%5D%5B0%5D%5Btags%5D%5B0%5D%5Bid%5D=80147&leads%5Bstatus%5D%5B0%5D%5Btags%5D%5B0%5D%5Bname%5D=vip",
        "&leads%5Bstatus%5D%5B0%5D%5Bcustom_fields%5D%5B0%5D%5Bid%5D=1246483&leads%5Bstatus%5D%5B0%5D%5Bcustom_fields%5D%5B0%5D%5Bname%5D=Plan",
        "&leads%5Bstatus%5D%5B0%5D%5Bcustom_fields%5D%5B0%5D%5Bvalues%5D%5B0%5D%5Bvalue%5D=Pro",
        "&leads%5Bstatus%5D%5B0%5D%5Bcustom_fields%5D%5B0%5D%5Bvalues%5D%5B0%5D%5Benum%5D=908107",
        "&leads%5Bstatus%5D%5B0%5D%5Bcustom_fields%5D%5B1%5D%5Bid%5D=1246485&leads%5Bstatus%5D%5B0%5D%5Bcustom_fields%5D%5B1%5D%5Bname%5D=Due",
        "&leads%5Bstatus%5D%5B0%5D%5Bcustom_fields%5D%5B1%5D%5Bvalues%5D%5B0%5D=1725915600",
        "&leads%5Bstatus%5D%5B1%5D%5Bid%5D=15318176&leads%5Bstatus%5D%5B1%5D%5Bstatus_id%5D=142",
        "&leads%5Bstatus%5D%5B1%5D%5Bpipeline_id%5D=8572511&leads%5Bstatus%5D%5B1%5D%5Blast_modified%5D=1726572759",
        "&leads%5Badd%5D%5B0%5D%5Bid%5D=15318177&leads%5Badd%5D%5B0%5D%5Bstatus_id%5D=67548607",
        "&leads%5Badd%5D%5B0%5D%5Bpipeline_id%5D=8572511",
        "&leads%5Bnote%5D%5B0%5D%5Bnote%5D%5Bid%5D=555&leads%5Bnote%5D%5B0%5D%5Bnote%5D%5Belement_id%5D=15318175",
        "&leads%5Bnote%5D%5B0%5D%5Bnote%5D%5Btext%5D=Called+the+client",
    );

    #[test]
    fn every_action_and_index_becomes_a_change() {
        let delivery = KommoDelivery::parse(BATCH.as_bytes()).unwrap();
        assert_eq!(delivery.account_id, 32427762);
        assert_eq!(delivery.account["_links"]["self"], "https://acme.kommo.com");
        type Summary = (String, Option<LeadId>, Option<(i64, i64)>);
        let summary: Vec<Summary> = delivery.changes.iter().map(|c| (c.kind(), c.lead_id(), c.stage())).collect();
        assert_eq!(
            summary,
            vec![
                ("leads.add".into(), Some(LeadId(15318177)), Some((8572511, 67548607))),
                ("leads.note".into(), Some(LeadId(15318175)), None),
                ("leads.status".into(), Some(LeadId(15318175)), Some((8572511, 67548619))),
                ("leads.status".into(), Some(LeadId(15318176)), Some((8572511, 142))),
            ]
        );
    }

    #[test]
    fn custom_fields_keep_enum_scalar_dates_and_tags() {
        let delivery = KommoDelivery::parse(BATCH.as_bytes()).unwrap();
        let lead = &delivery.changes.iter().find(|c| c.lead_id() == Some(LeadId(15318175)) && c.action == "status").unwrap().item;
        assert_eq!(lead["name"], "Website redesign");
        assert_eq!(lead["tags"], json!([{"id": "80147", "name": "vip"}]));
        assert_eq!(lead["custom_fields"][0]["values"], json!([{"value": "Pro", "enum": "908107"}]));
        assert_eq!(lead["custom_fields"][1]["values"], json!(["1725915600"]));
    }

    #[test]
    fn dedup_keys_collapse_retries_and_separate_changes() {
        let a = KommoDelivery::parse(BATCH.as_bytes()).unwrap();
        let b = KommoDelivery::parse(BATCH.as_bytes()).unwrap();
        let keys = |d: &KommoDelivery| d.changes.iter().map(KommoChange::dedup_key).collect::<Vec<_>>();
        assert_eq!(keys(&a), keys(&b));
        let mut unique = keys(&a);
        unique.dedup();
        assert_eq!(unique.len(), a.changes.len());
        assert!(keys(&a)[2].starts_with("leads.status:15318175:"), "{:?}", keys(&a));

        let later = BATCH.replace("1726572758", "1726572999");
        assert_ne!(keys(&KommoDelivery::parse(later.as_bytes()).unwrap())[2], keys(&a)[2]);
    }

    #[test]
    fn missing_account_id_and_broken_keys_are_malformed() {
        for body in [
            "leads%5Bstatus%5D%5B0%5D%5Bid%5D=1",
            "account%5Bid%5D=abc",
            "account%5Bid%5D=1&leads%5Bstatus=1",
            "account%5Bid%5D=1&%5Bx%5D=1",
            "account%5Bid%5D=1&a%5Bb%5D=1&a%5Bb%5D%5Bc%5D=2",
            "account%5Bid%5D=1&a=1&a=2",
            &format!("account%5Bid%5D=1&a{}=1", "%5Bx%5D".repeat(10)),
        ] {
            assert!(KommoDelivery::parse(body.as_bytes()).is_err(), "{body}");
        }
    }
}
