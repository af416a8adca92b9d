//! Kommo's deals (leads) and contacts as API v4 sends and takes them: what a read returns, what
//! a PATCH or a complex create sends, and the custom field values both carry. Decoding is
//! lenient (`crate::wire`): ids as numbers or strings, `null` lists as empty, unknown fields
//! ignored.

use serde::{Deserialize, Serialize};

use crate::ids::{ContactId, LeadId};
use crate::wire;

/// A deal as `GET /api/v4/leads?with=contacts` returns it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Lead {
    #[serde(deserialize_with = "wire::required_id")]
    pub id: LeadId,
    #[serde(default, deserialize_with = "wire::text")]
    name: Option<String>,
    #[serde(default, deserialize_with = "wire::id")]
    pub pipeline_id: Option<i64>,
    #[serde(default, deserialize_with = "wire::id")]
    pub status_id: Option<i64>,
    #[serde(default, deserialize_with = "wire::id")]
    pub responsible_user_id: Option<i64>,
    /// The deal's budget, as Kommo has it (a number; older accounts send text).
    #[serde(default, deserialize_with = "wire::maybe")]
    price: Option<Scalar>,
    #[serde(default, deserialize_with = "wire::list")]
    pub custom_fields_values: Vec<FieldValue>,
    #[serde(default, rename = "_embedded", deserialize_with = "wire::maybe")]
    embedded: Option<LeadEmbedded>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct LeadEmbedded {
    #[serde(default, deserialize_with = "wire::list")]
    contacts: Vec<ContactRef>,
}

/// A contact of a lead, as `with=contacts` names it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
struct ContactRef {
    #[serde(deserialize_with = "wire::required_id")]
    id: ContactId,
    #[serde(default, deserialize_with = "wire::flag")]
    is_main: bool,
}

impl Lead {
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }

    /// The budget as text; `None` when the deal has none.
    pub fn price(&self) -> Option<String> {
        self.price.as_ref().map(Scalar::text)
    }

    /// The (pipeline, stage) the deal stands in.
    pub fn stage(&self) -> (i64, i64) {
        (self.pipeline_id.unwrap_or_default(), self.status_id.unwrap_or_default())
    }

    /// The first value of custom field `field_id`, as text; `None` when unset or blank.
    pub fn field(&self, field_id: i64) -> Option<String> {
        self.custom_fields_values
            .iter()
            .find(|f| f.field_id == Some(field_id))
            .and_then(|f| f.values.first())
            .and_then(|item| item.value.as_ref())
            .map(Scalar::text)
            .filter(|v| !v.trim().is_empty())
    }

    /// The deal's main contact; its first one when none is marked main.
    pub fn main_contact_id(&self) -> Option<ContactId> {
        let contacts = self.embedded.as_ref().map(|e| e.contacts.as_slice()).unwrap_or_default();
        contacts.iter().find(|c| c.is_main).or(contacts.first()).map(|c| c.id)
    }

    /// Whether the card already shows every value `changes` would write (its custom fields, and
    /// its stage when it names one): a retry whose earlier attempt's PATCH went out skips it, as
    /// every PATCH is a change in the deal's history and fires the account's webhooks again.
    pub fn shows(&self, changes: &LeadChanges) -> bool {
        let stage_shown = changes.status_id.is_none_or(|stage| Some(stage) == self.status_id);
        stage_shown
            && changes.custom_fields_values.iter().all(|field| {
                let Some(current) = self.custom_fields_values.iter().find(|f| f.field_id.is_some() && f.field_id == field.field_id) else { return false };
                let (Some(wanted), current) = (field.values.first(), current.values.first()) else { return false };
                match (wanted.enum_id, &wanted.value) {
                    (Some(enum_id), _) => current.and_then(|c| c.enum_id) == Some(enum_id),
                    (None, Some(value)) => current.and_then(|c| c.value.as_ref()).is_some_and(|shown| shown.same(value)),
                    (None, None) => false,
                }
            })
    }
}

/// A contact as `GET /api/v4/contacts` returns it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Contact {
    #[serde(deserialize_with = "wire::required_id")]
    pub id: ContactId,
    #[serde(default, deserialize_with = "wire::text")]
    name: Option<String>,
    #[serde(default, deserialize_with = "wire::list")]
    custom_fields_values: Vec<FieldValue>,
}

impl Contact {
    /// The contact's name; `None` when blank.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref().filter(|n| !n.trim().is_empty())
    }

    /// The contact's first email address (Kommo's system field `EMAIL`).
    pub fn email(&self) -> Option<String> {
        let field = self.custom_fields_values.iter().find(|f| f.field_code.as_deref() == Some("EMAIL"))?;
        field.values.first()?.value.as_ref().map(Scalar::text).filter(|e| !e.trim().is_empty())
    }
}

/// One custom field's values, as Kommo sends and takes them: `{"field_id" or "field_code",
/// "values": [{"value"} or {"enum_id"} …]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldValue {
    #[serde(default, deserialize_with = "wire::id", skip_serializing_if = "Option::is_none")]
    pub field_id: Option<i64>,
    #[serde(default, deserialize_with = "wire::text", skip_serializing_if = "Option::is_none")]
    pub field_code: Option<String>,
    #[serde(default, deserialize_with = "wire::list")]
    pub values: Vec<FieldItem>,
}

/// One value of a custom field: a value, or a select's option.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FieldItem {
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "wire::maybe")]
    pub value: Option<Scalar>,
    #[serde(default, deserialize_with = "wire::id", skip_serializing_if = "Option::is_none")]
    pub enum_id: Option<i64>,
    #[serde(default, deserialize_with = "wire::text", skip_serializing_if = "Option::is_none")]
    pub enum_code: Option<String>,
}

impl FieldValue {
    /// Writes `value` into field `field_id`.
    pub fn value(field_id: i64, value: impl Into<Scalar>) -> FieldValue {
        FieldValue { field_id: Some(field_id), field_code: None, values: vec![FieldItem { value: Some(value.into()), ..FieldItem::default() }] }
    }

    /// Picks option `enum_id` of select field `field_id`.
    pub fn option(field_id: i64, enum_id: i64) -> FieldValue {
        FieldValue::options(field_id, [enum_id])
    }

    /// Picks the options `enum_ids` of (multi)select field `field_id`.
    pub fn options(field_id: i64, enum_ids: impl IntoIterator<Item = i64>) -> FieldValue {
        let values = enum_ids.into_iter().map(|id| FieldItem { enum_id: Some(id), ..FieldItem::default() }).collect();
        FieldValue { field_id: Some(field_id), field_code: None, values }
    }

    /// A contact's work email, by the system field's code.
    pub fn work_email(address: &str) -> FieldValue {
        let item = FieldItem { value: Some(address.into()), enum_code: Some("WORK".to_owned()), ..FieldItem::default() };
        FieldValue { field_id: None, field_code: Some("EMAIL".to_owned()), values: vec![item] }
    }
}

/// A field's value: Kommo writes and reads text, numbers and checkboxes' booleans.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Flag(bool),
    Number(serde_json::Number),
    Text(String),
}

impl Scalar {
    /// A finite number; `None` for NaN or an infinity, which JSON cannot carry.
    pub fn number(number: f64) -> Option<Scalar> {
        serde_json::Number::from_f64(number).map(Scalar::Number)
    }

    /// The value as a person reads it.
    pub fn text(&self) -> String {
        match self {
            Scalar::Flag(flag) => flag.to_string(),
            Scalar::Number(number) => number.to_string(),
            Scalar::Text(text) => text.clone(),
        }
    }

    /// Whether `self`, read back, is the `written` value: Kommo reads values back in its own
    /// types (a numeric field's `"99.5"` for the `99.5` written).
    fn same(&self, written: &Scalar) -> bool {
        let number = |s: &Scalar| s.text().trim().parse::<f64>().ok();
        self == written || self.text() == written.text() || number(self).is_some_and(|n| Some(n) == number(written))
    }
}

impl From<&str> for Scalar {
    fn from(text: &str) -> Scalar {
        Scalar::Text(text.to_owned())
    }
}

impl From<String> for Scalar {
    fn from(text: String) -> Scalar {
        Scalar::Text(text)
    }
}

impl From<i64> for Scalar {
    fn from(number: i64) -> Scalar {
        Scalar::Number(number.into())
    }
}

impl From<bool> for Scalar {
    fn from(flag: bool) -> Scalar {
        Scalar::Flag(flag)
    }
}

/// What a PATCH of a lead changes: only the fields named (an item of `PATCH /api/v4/leads`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LeadChanges {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_id: Option<i64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub custom_fields_values: Vec<FieldValue>,
}

impl LeadChanges {
    pub fn fields(custom_fields_values: Vec<FieldValue>) -> LeadChanges {
        LeadChanges { custom_fields_values, ..LeadChanges::default() }
    }
}

/// A lead created with its contact in one `POST /api/v4/leads/complex`.
#[derive(Debug, Clone, Serialize)]
pub struct NewLead {
    pub name: String,
    pub price: i64,
    pub pipeline_id: i64,
    pub status_id: i64,
    pub responsible_user_id: i64,
    #[serde(rename = "_embedded")]
    pub embedded: NewLeadEmbedded,
}

#[derive(Debug, Clone, Serialize)]
pub struct NewLeadEmbedded {
    pub tags: Vec<Tag>,
    pub contacts: Vec<NewContact>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Tag {
    pub name: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct NewContact {
    pub first_name: String,
    pub responsible_user_id: i64,
    pub custom_fields_values: Vec<FieldValue>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn lead(value: serde_json::Value) -> Lead {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_lead_reads_from_numbers_or_strings_and_ignores_what_it_does_not_know() {
        let read = lead(json!({
            "id": "15318175", "name": "Website redesign", "price": 1200, "pipeline_id": 7, "status_id": "143",
            "custom_fields_values": [
                { "field_id": 11, "values": [{ "value": "99.50" }] },
                { "field_id": 12, "values": [{ "value": { "legal": "entity" } }] },
                { "field_id": 13, "values": [{ "enum_id": "70", "value": "Pro" }] }
            ],
            "_embedded": { "contacts": [{ "id": 5 }, { "id": "6", "is_main": true }], "tags": [] },
            "score": null, "account_id": 29
        }));
        assert_eq!((read.id, read.stage(), read.name()), (LeadId(15318175), (7, 143), "Website redesign"));
        assert_eq!(read.price().as_deref(), Some("1200"));
        assert_eq!(read.field(11).as_deref(), Some("99.50"));
        assert_eq!(read.field(12), None, "a value of a shape we do not read is absent");
        assert_eq!(read.main_contact_id(), Some(ContactId(6)));
        let bare = lead(json!({ "id": 1, "custom_fields_values": null, "_embedded": null }));
        assert!(bare.custom_fields_values.is_empty());
        assert_eq!((bare.main_contact_id(), bare.price(), bare.stage()), (None, None, (0, 0)));
        assert!(serde_json::from_value::<Lead>(json!({ "name": "no id" })).is_err());
    }

    #[test]
    fn a_card_shows_changes_whose_values_it_reads_back_in_its_own_types() {
        let card = lead(json!({ "id": 1, "status_id": 143, "custom_fields_values": [
            { "field_id": 11, "values": [{ "value": "99.5" }] },
            { "field_id": 13, "values": [{ "enum_id": 70 }] }
        ] }));
        let shown =
            LeadChanges { status_id: Some(143), ..LeadChanges::fields(vec![FieldValue::value(11, Scalar::number(99.5).unwrap()), FieldValue::option(13, 70)]) };
        assert!(card.shows(&shown));
        assert!(!card.shows(&LeadChanges { status_id: Some(142), ..shown.clone() }), "another stage");
        assert!(!card.shows(&LeadChanges::fields(vec![FieldValue::option(13, 71)])), "another option");
        assert!(!card.shows(&LeadChanges::fields(vec![FieldValue::value(14, "x")])), "a field the card lacks");
    }

    #[test]
    fn changes_write_only_what_they_name() {
        let changes =
            LeadChanges { status_id: Some(143), ..LeadChanges::fields(vec![FieldValue::value(11, "https://buy.stripe.com/x"), FieldValue::option(12, 70)]) };
        assert_eq!(
            serde_json::to_value(&changes).unwrap(),
            json!({ "status_id": 143, "custom_fields_values": [
                { "field_id": 11, "values": [{ "value": "https://buy.stripe.com/x" }] },
                { "field_id": 12, "values": [{ "enum_id": 70 }] }
            ] })
        );
        assert_eq!(
            serde_json::to_value(FieldValue::work_email("a@b.c")).unwrap(),
            json!({ "field_code": "EMAIL", "values": [{ "value": "a@b.c", "enum_code": "WORK" }] })
        );
    }

    #[test]
    fn a_contact_names_its_email() {
        let contact: Contact = serde_json::from_value(json!({ "id": 5, "name": " ", "custom_fields_values": [
            { "field_code": "PHONE", "values": [{ "value": "+1 555" }] },
            { "field_code": "EMAIL", "values": [{ "value": "ana@example.com", "enum_code": "WORK" }] }
        ] }))
        .unwrap();
        assert_eq!((contact.email().as_deref(), contact.name()), (Some("ana@example.com"), None));
    }
}
