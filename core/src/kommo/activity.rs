//! What kommo-pay adds to a deal's feed: notes, tasks for its manager, and Salesbot launches
//! (the client's WhatsApp message), as Kommo takes them and, for the checks before a retried
//! write, reads them back.

use serde::{Deserialize, Serialize};

use crate::ids::LeadId;
use crate::wire;

/// A task for a deal's manager (an item of `POST /api/v4/tasks`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewTask {
    pub text: String,
    /// Due by, in Unix seconds.
    pub complete_till: i64,
    pub entity_id: LeadId,
    entity_type: &'static str,
    /// Kommo's task type: 1 is a call.
    task_type_id: i64,
    /// The deal's responsible manager when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    responsible_user_id: Option<i64>,
}

impl NewTask {
    /// A call task on lead `lead_id`, due by `complete_till`, for manager `responsible_user_id`
    /// (the deal's responsible one when `None`).
    pub fn call(lead_id: LeadId, text: &str, complete_till: i64, responsible_user_id: Option<i64>) -> NewTask {
        NewTask { text: text.to_owned(), complete_till, entity_id: lead_id, entity_type: "leads", task_type_id: 1, responsible_user_id }
    }
}

/// A common note on a lead (an item of `POST /api/v4/leads/notes`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct NewNote<'a> {
    entity_id: LeadId,
    note_type: &'static str,
    params: NoteText<'a>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct NoteText<'a> {
    text: &'a str,
}

impl NewNote<'_> {
    pub(super) fn common(lead_id: LeadId, text: &str) -> NewNote<'_> {
        NewNote { entity_id: lead_id, note_type: "common", params: NoteText { text } }
    }
}

/// A lead's note or task as the list reads return them: only its text is compared.
#[derive(Debug, Deserialize)]
pub(super) struct Written {
    #[serde(default, deserialize_with = "wire::text")]
    text: Option<String>,
    #[serde(default, deserialize_with = "wire::maybe")]
    params: Option<Box<Written>>,
}

impl Written {
    /// A task's text, or a note's (`params.text`).
    pub(super) fn text(&self) -> Option<&str> {
        self.text.as_deref().or_else(|| self.params.as_ref()?.text())
    }
}

/// One launch of Salesbot `bot_id` for a lead (an item of `POST /api/v2/salesbot/run`; entity
/// type 2 is a lead).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct SalesbotLaunch {
    bot_id: i64,
    entity_id: LeadId,
    entity_type: u8,
}

impl SalesbotLaunch {
    pub(super) fn for_lead(bot_id: i64, lead_id: LeadId) -> SalesbotLaunch {
        SalesbotLaunch { bot_id, entity_id: lead_id, entity_type: 2 }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn notes_tasks_and_launches_are_kommos_items() {
        let task = NewTask::call(LeadId(7), "Call", 1764200000, Some(11));
        assert_eq!(
            serde_json::to_value(&task).unwrap(),
            json!({ "text": "Call", "complete_till": 1764200000, "entity_id": 7, "entity_type": "leads", "task_type_id": 1, "responsible_user_id": 11 })
        );
        assert_eq!(
            serde_json::to_value(NewNote::common(LeadId(7), "Paid")).unwrap(),
            json!({ "entity_id": 7, "note_type": "common", "params": { "text": "Paid" } })
        );
        assert_eq!(serde_json::to_value(SalesbotLaunch::for_lead(77, LeadId(7))).unwrap(), json!({ "bot_id": 77, "entity_id": 7, "entity_type": 2 }));
        let note: Written = serde_json::from_value(json!({ "id": 1, "params": { "text": "Paid" } })).unwrap();
        let task: Written = serde_json::from_value(json!({ "id": 2, "text": "Call", "params": null })).unwrap();
        assert_eq!((note.text(), task.text()), (Some("Paid"), Some("Call")));
    }
}
