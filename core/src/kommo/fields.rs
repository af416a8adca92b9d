//! Kommo's deal fields as kommo-pay writes outside data into them (checkout custom data, Stripe
//! metadata): each field's type decides what it can take, so a value is checked against the
//! field before Kommo is asked, and a value it cannot take is known as such, with the reason.

use serde_json::{Value, json};

/// One custom field of deals, as `GET /api/v4/leads/custom_fields` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct LeadField {
    pub id: i64,
    pub name: String,
    /// Kommo's type name: `text`, `numeric`, `select`, `date_time` …
    pub kind: String,
    /// A select's, radio button's or multiselect's options: (enum id, label).
    pub options: Vec<(i64, String)>,
}

impl LeadField {
    /// The field as Kommo lists it; `None` for an entry without an id.
    pub fn from_api(field: &Value) -> Option<LeadField> {
        let id = field.get("id").and_then(super::lenient_id)?;
        let text = |key: &str| field.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
        let options = field
            .get("enums")
            .and_then(Value::as_array)
            .map(|enums| {
                enums.iter().filter_map(|option| Some((option.get("id").and_then(super::lenient_id)?, option.get("value")?.as_str()?.to_owned()))).collect()
            })
            .unwrap_or_default();
        Some(LeadField { id, name: text("name"), kind: text("type"), options })
    }

    /// The `custom_fields_values` entry that writes `raw` into this field, or why the field
    /// cannot take it. Labels of options match whatever their case; a multiselect takes labels
    /// separated by commas.
    pub fn value_for(&self, raw: &str) -> Result<Value, String> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err("an empty value".to_owned());
        }
        let values = match self.kind.as_str() {
            "text" | "textarea" => vec![json!({ "value": raw })],
            "numeric" | "monetary" => {
                let number: f64 = raw.parse().ok().filter(|n: &f64| n.is_finite()).ok_or_else(|| format!("not a number, and the field is {}", self.kind))?;
                vec![json!({ "value": number })]
            }
            "url" => {
                let url = url::Url::parse(raw).ok().filter(|u| matches!(u.scheme(), "http" | "https"));
                url.ok_or_else(|| "not an http(s) address, and the field is a url".to_owned())?;
                vec![json!({ "value": raw })]
            }
            "checkbox" => match raw.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => vec![json!({ "value": true })],
                "false" | "0" | "no" | "off" => vec![json!({ "value": false })],
                _ => return Err("neither yes nor no, and the field is a checkbox".to_owned()),
            },
            "date" | "date_time" | "birthday" => {
                let at = raw
                    .parse::<i64>()
                    .ok()
                    .or_else(|| chrono::DateTime::parse_from_rfc3339(raw).ok().map(|t| t.timestamp()))
                    .or_else(|| chrono::NaiveDate::parse_from_str(raw, "%Y-%m-%d").ok().and_then(|d| d.and_hms_opt(0, 0, 0)).map(|t| t.and_utc().timestamp()))
                    .ok_or_else(|| format!("not a date (a Unix time, YYYY-MM-DD or RFC 3339), and the field is {}", self.kind))?;
                vec![json!({ "value": at })]
            }
            "select" | "radiobutton" => vec![json!({ "enum_id": self.option(raw)? })],
            "multiselect" => raw.split(',').map(|label| self.option(label.trim()).map(|id| json!({ "enum_id": id }))).collect::<Result<_, _>>()?,
            other => return Err(format!("kommo-pay does not write fields of type {other}")),
        };
        Ok(json!({ "field_id": self.id, "values": values }))
    }

    fn option(&self, label: &str) -> Result<i64, String> {
        self.options.iter().find(|(_, name)| name.trim().eq_ignore_ascii_case(label)).map(|(id, _)| *id).ok_or_else(|| {
            let labels: Vec<&str> = self.options.iter().map(|(_, name)| name.as_str()).collect();
            format!("not one of the field's options ({})", labels.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(kind: &str) -> LeadField {
        LeadField::from_api(&json!({ "id": 7, "name": "Plan", "type": kind, "enums": [{ "id": 70, "value": "Pro" }, { "id": 71, "value": "Basic" }] })).unwrap()
    }

    #[test]
    fn each_type_takes_what_kommo_takes_and_says_why_not_otherwise() {
        assert_eq!(field("text").value_for(" google ").unwrap(), json!({ "field_id": 7, "values": [{ "value": "google" }] }));
        assert_eq!(field("numeric").value_for("12.5").unwrap()["values"][0]["value"], json!(12.5));
        assert!(field("numeric").value_for("twelve").unwrap_err().contains("not a number"));
        assert_eq!(field("select").value_for("pro").unwrap()["values"], json!([{ "enum_id": 70 }]));
        assert_eq!(field("select").value_for("Gold").unwrap_err(), "not one of the field's options (Pro, Basic)");
        assert_eq!(field("multiselect").value_for("Basic, pro").unwrap()["values"], json!([{ "enum_id": 71 }, { "enum_id": 70 }]));
        assert_eq!(field("checkbox").value_for("yes").unwrap()["values"][0]["value"], json!(true));
        assert!(field("checkbox").value_for("maybe").is_err());
        assert_eq!(field("date_time").value_for("2026-12-01T10:00:00Z").unwrap()["values"][0]["value"], json!(1796119200));
        assert_eq!(field("date").value_for("2026-12-01").unwrap()["values"][0]["value"], json!(1796083200));
        assert!(field("url").value_for("javascript:alert(1)").is_err());
        assert!(field("url").value_for("https://example.com/a").is_ok());
        assert!(field("file").value_for("x").unwrap_err().contains("type file"));
        assert_eq!(field("text").value_for("  ").unwrap_err(), "an empty value");
    }
}
