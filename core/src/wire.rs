//! Reading the providers' JSON leniently: what every provider module's types share. A field of
//! an unexpected type reads as absent rather than failing the whole object, so that a provider
//! adding or reshaping something we do not rely on never stops a delivery or a read; the code
//! that needs the field then says what is missing.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// Reads an id that may arrive as a number or as a string of digits (Kommo's webhooks send every
/// value as a string; provider metadata round-trips ids as strings). Ids are positive.
pub fn lenient_id(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|id| *id > 0)
}

/// A string field; anything else (null, a number, an expanded object) reads as absent.
pub fn text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(deserializer)? {
        Value::String(s) => Some(s),
        _ => None,
    })
}

/// A string the object cannot be without: an object that lacks it fails to decode.
pub fn required_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    text(deserializer)?.ok_or_else(|| serde::de::Error::custom("expected a string"))
}

/// An integer field; anything else reads as absent.
pub fn int<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    Ok(Value::deserialize(deserializer)?.as_i64())
}

/// An id field, as [`lenient_id`] reads it; anything else reads as absent.
pub fn id<'de, D: Deserializer<'de>, T: From<i64>>(deserializer: D) -> Result<Option<T>, D::Error> {
    Ok(lenient_id(&Value::deserialize(deserializer)?).map(T::from))
}

/// An id the object cannot be without: an object that lacks it fails to decode.
pub fn required_id<'de, D: Deserializer<'de>, T: From<i64>>(deserializer: D) -> Result<T, D::Error> {
    id(deserializer)?.ok_or_else(|| serde::de::Error::custom("an id is neither a positive number nor a string of digits"))
}

/// A boolean field; anything else reads as false.
pub fn flag<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    Ok(Value::deserialize(deserializer)?.as_bool().unwrap_or(false))
}

/// A nested object that reads as absent when it is not the shape we know. Taken as raw text and
/// decoded from it, so that what we do not read (an invoice's lines) is scanned, never built into
/// a tree: this runs in ingest for every delivery.
pub fn lenient<'de, D: Deserializer<'de>, T: serde::de::DeserializeOwned>(deserializer: D) -> Result<Option<T>, D::Error> {
    let raw = <Box<serde_json::value::RawValue>>::deserialize(deserializer)?;
    Ok(serde_json::from_str(raw.get()).ok())
}

/// A nested value that reads as absent when it is not the shape we know, for objects decoded
/// from a `serde_json::Value` ([`lenient`] needs the raw text).
pub fn maybe<'de, D: Deserializer<'de>, T: serde::de::DeserializeOwned>(deserializer: D) -> Result<Option<T>, D::Error> {
    Ok(serde_json::from_value(Value::deserialize(deserializer)?).ok())
}

/// A list whose items we know the shape of: null or a non-list reads as empty, and an item not
/// of the shape is left out (Kommo sends `null` for a lead without custom fields).
pub fn list<'de, D: Deserializer<'de>, T: serde::de::DeserializeOwned>(deserializer: D) -> Result<Vec<T>, D::Error> {
    Ok(match Value::deserialize(deserializer)? {
        Value::Array(items) => items.into_iter().filter_map(|item| serde_json::from_value(item).ok()).collect(),
        _ => Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[derive(Deserialize, Debug)]
    struct Shape {
        #[serde(deserialize_with = "required_id")]
        id: i64,
        #[serde(default, deserialize_with = "id")]
        other: Option<i64>,
        #[serde(default, deserialize_with = "text")]
        name: Option<String>,
        #[serde(default, deserialize_with = "list")]
        items: Vec<Item>,
    }

    #[derive(Deserialize, Debug, PartialEq)]
    struct Item {
        n: i64,
    }

    fn shape(value: Value) -> Result<Shape, serde_json::Error> {
        serde_json::from_value(value)
    }

    #[test]
    fn ids_read_from_numbers_and_digits_and_odd_fields_read_as_absent() {
        let read = shape(json!({ "id": "15318175", "other": 0, "name": 12, "items": [{ "n": 1 }, { "n": "x" }, 3, { "n": 2 }], "new": true })).unwrap();
        assert_eq!(read.id, 15318175);
        assert_eq!(read.other, None, "ids are positive");
        assert_eq!(read.name, None);
        assert_eq!(read.items, vec![Item { n: 1 }, Item { n: 2 }], "items not of the shape are left out");
        assert!(shape(json!({ "id": 7, "items": null })).unwrap().items.is_empty());
        assert!(shape(json!({ "id": "seven" })).is_err(), "an object without its id does not decode");
        assert!(shape(json!({ "name": "x" })).is_err());
    }
}
