//! Kommo's events API as kommo-pay reads it: the stage changes of leads (`lead_status_changed`),
//! which the reconciler checks against the status hooks the log received.
//!
//! ```text
//! {"id": "01h…", "type": "lead_status_changed", "entity_id": 15318175, "created_at": 1764160000,
//!  "value_before": [{"lead_status": {"id": 67548619, "pipeline_id": 8123}}], "value_after": [...]}
//! ```

use serde::Deserialize;

use crate::ids::LeadId;
use crate::wire;

/// One lead's move from one stage to another.
#[derive(Debug, Clone, PartialEq)]
pub struct StageChange {
    /// Kommo's id of the event (text: events have ids of their own kind).
    pub id: String,
    pub lead_id: LeadId,
    /// When it happened, in Unix seconds.
    pub at: i64,
    /// (pipeline, stage) before, when Kommo says.
    pub from: Option<(i64, i64)>,
    /// (pipeline, stage) after.
    pub to: (i64, i64),
    /// The event as Kommo sent it, kept with what the log records.
    pub raw: serde_json::Value,
}

#[derive(Deserialize)]
struct Wire {
    #[serde(default)]
    id: serde_json::Value,
    #[serde(default, deserialize_with = "wire::id")]
    entity_id: Option<LeadId>,
    #[serde(default, deserialize_with = "wire::int")]
    created_at: Option<i64>,
    #[serde(default, deserialize_with = "wire::list")]
    value_before: Vec<Side>,
    #[serde(default, deserialize_with = "wire::list")]
    value_after: Vec<Side>,
}

#[derive(Deserialize)]
struct Side {
    #[serde(default, deserialize_with = "wire::maybe")]
    lead_status: Option<Status>,
}

#[derive(Deserialize)]
struct Status {
    #[serde(deserialize_with = "wire::required_id")]
    id: i64,
    #[serde(deserialize_with = "wire::required_id")]
    pipeline_id: i64,
}

impl StageChange {
    /// The change an event of the list describes; `None` for one without a lead, a time or the
    /// stage it moved to.
    pub(super) fn from_event(raw: serde_json::Value) -> Option<StageChange> {
        let wire: Wire = serde_json::from_value(raw.clone()).ok()?;
        let stage = |sides: &[Side]| sides.first().and_then(|side| side.lead_status.as_ref()).map(|s| (s.pipeline_id, s.id));
        Some(StageChange {
            id: crate::plain_text(&wire.id),
            lead_id: wire.entity_id?,
            at: wire.created_at?,
            from: stage(&wire.value_before),
            to: stage(&wire.value_after)?,
            raw,
        })
    }
}

impl StageChange {
    /// The change as the log keeps a status hook's (`leads[status][0]`, every value a string;
    /// the event as Kommo listed it beside), so that everything reading the log reads it alike.
    pub fn as_status_hook(&self, account_id: i64) -> Box<serde_json::value::RawValue> {
        let (old_pipeline_id, old_status_id) = self.from.unwrap_or_default();
        let payload = serde_json::json!({
            "account": { "id": account_id.to_string() },
            "item": {
                "id": self.lead_id.to_string(),
                "pipeline_id": self.to.0.to_string(),
                "status_id": self.to.1.to_string(),
                "old_pipeline_id": old_pipeline_id.to_string(),
                "old_status_id": old_status_id.to_string(),
                "last_modified": self.at.to_string(),
            },
            "kommo_event": self.raw,
        });
        serde_json::value::to_raw_value(&payload).expect("JSON serialises")
    }

    /// The log's key for it: Kommo's event id, which no hook carries.
    pub fn dedup_key(&self) -> String {
        format!("leads.status:{}:event-{}", self.lead_id, self.id)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_stage_change_names_its_lead_time_and_stages() {
        let event = json!({ "id": "01abc", "type": "lead_status_changed", "entity_id": 15318175, "created_at": 1764160000,
            "value_before": [{ "lead_status": { "id": "1", "pipeline_id": 8 } }], "value_after": [{ "lead_status": { "id": 67548619, "pipeline_id": 8123 } }] });
        let change = StageChange::from_event(event.clone()).unwrap();
        assert_eq!(
            (change.id.as_str(), change.lead_id, change.at, change.from, change.to),
            ("01abc", LeadId(15318175), 1764160000, Some((8, 1)), (8123, 67548619))
        );
        assert_eq!(change.raw, event);
        assert!(StageChange::from_event(json!({ "id": 2, "entity_id": 1, "created_at": 1, "value_after": [] })).is_none(), "no stage after");
    }
}
