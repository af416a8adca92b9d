//! Kommo's deal fields as kommo-pay writes outside data into them (checkout custom data, Stripe
//! metadata): each field's type decides what it can take, so a value is checked against the
//! field before Kommo is asked, and a value it cannot take is known as such, with the reason.

use serde::{Deserialize, Serialize};

use super::lead::{FieldValue, Scalar};
use crate::wire;

/// One custom field of deals, as `GET /api/v4/leads/custom_fields` lists it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LeadField {
    #[serde(deserialize_with = "wire::required_id")]
    pub id: i64,
    #[serde(default, deserialize_with = "wire::text")]
    name: Option<String>,
    /// Kommo's type name: `text`, `numeric`, `select`, `date_time` …
    #[serde(default, rename = "type", deserialize_with = "wire::text")]
    kind: Option<String>,
    /// The code kommo-pay finds its own fields by (admins rename fields; codes stay).
    #[serde(default, deserialize_with = "wire::text")]
    pub code: Option<String>,
    /// A select's, radio button's or multiselect's options.
    #[serde(default, deserialize_with = "wire::list")]
    enums: Vec<FieldOption>,
}

/// An option of a select field.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct FieldOption {
    #[serde(deserialize_with = "wire::required_id")]
    pub id: i64,
    #[serde(deserialize_with = "wire::required_text")]
    pub value: String,
}

/// A field to create (an item of `POST /api/v4/leads/custom_fields`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewField {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub name: &'static str,
    pub code: &'static str,
    /// Shown to managers, written only through the API.
    pub is_api_only: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub enums: Vec<NewOption>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewOption {
    pub value: &'static str,
    pub sort: usize,
}

impl LeadField {
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }

    pub fn options(&self) -> &[FieldOption] {
        &self.enums
    }

    /// The `custom_fields_values` entry that writes `raw` into this field, or why the field
    /// cannot take it. Labels of options match whatever their case; a multiselect takes labels
    /// separated by commas.
    pub fn value_for(&self, raw: &str) -> Result<FieldValue, String> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err("an empty value".to_owned());
        }
        let kind = self.kind.as_deref().unwrap_or_default();
        let value = |value: Scalar| Ok(FieldValue::value(self.id, value));
        match kind {
            "text" | "textarea" => value(raw.into()),
            "numeric" | "monetary" => {
                let number = raw.parse().ok().and_then(Scalar::number).ok_or_else(|| format!("not a number, and the field is {kind}"))?;
                value(number)
            }
            "url" => {
                let url = url::Url::parse(raw).ok().filter(|u| matches!(u.scheme(), "http" | "https"));
                url.ok_or_else(|| "not an http(s) address, and the field is a url".to_owned())?;
                value(raw.into())
            }
            "checkbox" => match raw.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => value(true.into()),
                "false" | "0" | "no" | "off" => value(false.into()),
                _ => Err("neither yes nor no, and the field is a checkbox".to_owned()),
            },
            "date" | "date_time" | "birthday" => {
                let at = raw
                    .parse::<i64>()
                    .ok()
                    .or_else(|| chrono::DateTime::parse_from_rfc3339(raw).ok().map(|t| t.timestamp()))
                    .or_else(|| chrono::NaiveDate::parse_from_str(raw, "%Y-%m-%d").ok().and_then(|d| d.and_hms_opt(0, 0, 0)).map(|t| t.and_utc().timestamp()))
                    .ok_or_else(|| format!("not a date (a Unix time, YYYY-MM-DD or RFC 3339), and the field is {kind}"))?;
                value(at.into())
            }
            "select" | "radiobutton" => Ok(FieldValue::option(self.id, self.option(raw)?)),
            "multiselect" => Ok(FieldValue::options(self.id, raw.split(',').map(|label| self.option(label.trim())).collect::<Result<Vec<_>, _>>()?)),
            other => Err(format!("kommo-pay does not write fields of type {other}")),
        }
    }

    fn option(&self, label: &str) -> Result<i64, String> {
        self.enums.iter().find(|option| option.value.trim().eq_ignore_ascii_case(label)).map(|option| option.id).ok_or_else(|| {
            let labels: Vec<&str> = self.enums.iter().map(|option| option.value.as_str()).collect();
            format!("not one of the field's options ({})", labels.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn field(kind: &str) -> LeadField {
        serde_json::from_value(
            json!({ "id": 7, "name": "Plan", "type": kind, "enums": [{ "id": 70, "value": "Pro" }, { "id": "71", "value": "Basic" }, { "id": 72 }] }),
        )
        .unwrap()
    }

    fn written(field: &LeadField, raw: &str) -> Result<Value, String> {
        field.value_for(raw).map(|entry| serde_json::to_value(entry).unwrap())
    }

    #[test]
    fn each_type_takes_what_kommo_takes_and_says_why_not_otherwise() {
        assert_eq!(written(&field("text"), " google ").unwrap(), json!({ "field_id": 7, "values": [{ "value": "google" }] }));
        assert_eq!(written(&field("numeric"), "12.5").unwrap()["values"][0]["value"], json!(12.5));
        assert!(written(&field("numeric"), "twelve").unwrap_err().contains("not a number"));
        assert_eq!(written(&field("select"), "pro").unwrap()["values"], json!([{ "enum_id": 70 }]));
        assert_eq!(written(&field("select"), "Gold").unwrap_err(), "not one of the field's options (Pro, Basic)");
        assert_eq!(written(&field("multiselect"), "Basic, pro").unwrap()["values"], json!([{ "enum_id": 71 }, { "enum_id": 70 }]));
        assert_eq!(written(&field("checkbox"), "yes").unwrap()["values"][0]["value"], json!(true));
        assert!(written(&field("checkbox"), "maybe").is_err());
        assert_eq!(written(&field("date_time"), "2026-12-01T10:00:00Z").unwrap()["values"][0]["value"], json!(1796119200));
        assert_eq!(written(&field("date"), "2026-12-01").unwrap()["values"][0]["value"], json!(1796083200));
        assert!(written(&field("url"), "javascript:alert(1)").is_err());
        assert!(written(&field("url"), "https://example.com/a").is_ok());
        assert!(written(&field("file"), "x").unwrap_err().contains("type file"));
        assert_eq!(written(&field("text"), "  ").unwrap_err(), "an empty value");
    }
}
