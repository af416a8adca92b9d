//! PHP-style bracket forms (`a[b][0][c]=x`): Kommo's webhook bodies in, Stripe's request
//! parameters out. Both directions go through a JSON tree, so the fakes in the tests read what
//! the clients write with the same code that reads Kommo.

use serde_json::{Map, Value};

use crate::event_log::PayloadError;

/// Bracket nesting deeper than this is nobody's (Kommo's deepest is
/// `leads[status][0][custom_fields][0][values][0][enum]`, 7 levels).
const MAX_DEPTH: usize = 10;

/// Reads `application/x-www-form-urlencoded` with bracket keys into a JSON object: `a[b][0]=x`
/// becomes `{"a": {"b": ["x"]}}`. Nested objects whose keys are all indexes become arrays, in
/// index order; the top level is always an object.
///
/// A generic tree (rather than typed structs through `serde_qs`) because the log keeps every field
/// Kommo sends, known or not, and one body mixes many shapes (docs/adr/0002).
pub fn parse_form(body: &[u8]) -> Result<Value, PayloadError> {
    let mut root = Map::new();
    for (key, value) in form_urlencoded::parse(body) {
        let path = split_key(&key)?;
        insert(&mut root, &path, Value::String(value.into_owned()), &key)?;
    }
    // The top level stays an object whatever its keys (`0=x` is a field named "0"): callers read
    // fields from it, and a body of bare indexes must not turn it into an array.
    Ok(Value::Object(root.into_iter().map(|(k, v)| (k, index_maps_to_arrays(v))).collect()))
}

fn split_key(key: &str) -> Result<Vec<&str>, PayloadError> {
    let malformed = || PayloadError::new(format!("malformed form key {key:?}"));
    let (head, mut rest) = match key.find('[') {
        Some(i) => (&key[..i], &key[i..]),
        None => (key, ""),
    };
    if head.is_empty() {
        return Err(malformed());
    }
    let mut path = vec![head];
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[').ok_or_else(malformed)?;
        let end = inner.find(']').ok_or_else(malformed)?;
        path.push(&inner[..end]);
        rest = &inner[end + 1..];
    }
    if path.len() > MAX_DEPTH {
        return Err(PayloadError::new(format!("form key {key:?} is nested deeper than {MAX_DEPTH} levels")));
    }
    Ok(path)
}

fn insert(map: &mut Map<String, Value>, path: &[&str], value: Value, key: &str) -> Result<(), PayloadError> {
    let conflict = || PayloadError::new(format!("form key {key:?} conflicts with another key"));
    // `a[]=x` appends: give it the next free index.
    let segment = if path[0].is_empty() { map.len().to_string() } else { path[0].to_owned() };
    if path.len() == 1 {
        if map.contains_key(&segment) {
            return Err(conflict());
        }
        map.insert(segment, value);
        return Ok(());
    }
    match map.entry(segment).or_insert_with(|| Value::Object(Map::new())) {
        Value::Object(child) => insert(child, &path[1..], value, key),
        _ => Err(conflict()),
    }
}

fn index_maps_to_arrays(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut indexed: Vec<(usize, Value)> = Vec::with_capacity(map.len());
            let mut all_indexes = !map.is_empty();
            let mut converted = Map::new();
            for (k, v) in map {
                let v = index_maps_to_arrays(v);
                match k.parse::<usize>() {
                    Ok(i) if all_indexes && i.to_string() == k => indexed.push((i, v)),
                    _ => {
                        all_indexes = false;
                        converted.insert(k, v);
                    }
                }
            }
            if all_indexes {
                indexed.sort_by_key(|(i, _)| *i);
                Value::Array(indexed.into_iter().map(|(_, v)| v).collect())
            } else {
                converted.extend(indexed.into_iter().map(|(i, v)| (i.to_string(), v)));
                Value::Object(converted)
            }
        }
        other => other,
    }
}

/// Writes a JSON object as bracket-form pairs: `{"a": {"b": [1]}}` becomes `a[b][0]=1`.
/// Nulls are left out; `true`/`false` and numbers are written as text, as Stripe expects.
pub fn encode(params: &Value) -> Vec<(String, String)> {
    fn walk(prefix: String, value: &Value, out: &mut Vec<(String, String)>) {
        match value {
            Value::Null => {}
            Value::Bool(b) => out.push((prefix, b.to_string())),
            Value::Number(n) => out.push((prefix, n.to_string())),
            Value::String(s) => out.push((prefix, s.clone())),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(format!("{prefix}[{i}]"), item, out);
                }
            }
            Value::Object(map) => {
                for (key, item) in map {
                    let key = if prefix.is_empty() { key.clone() } else { format!("{prefix}[{key}]") };
                    walk(key, item, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(String::new(), params, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_top_level_stays_an_object_even_with_index_keys() {
        // Found by the property tests: this body once made the Kommo parser panic.
        assert_eq!(parse_form(b"0=x&1=y").unwrap(), json!({ "0": "x", "1": "y" }));
        assert!(crate::kommo::webhook::KommoDelivery::parse(b"0=a").is_err());
    }

    #[test]
    fn form_trees() {
        let cases = [
            ("a=1", json!({"a": "1"})),
            ("a%5B0%5D=x&a%5B1%5D=y", json!({"a": ["x", "y"]})),
            ("a%5B1%5D=y&a%5B0%5D=x", json!({"a": ["x", "y"]})),
            ("a%5B10%5D=y&a%5B2%5D=x", json!({"a": ["x", "y"]})),
            ("a%5B0%5D=x&a%5Bk%5D=y", json!({"a": {"0": "x", "k": "y"}})),
            ("a%5B01%5D=x", json!({"a": {"01": "x"}})),
            ("a%5B%5D=x&a%5B%5D=y", json!({"a": ["x", "y"]})),
            ("q=a+b%26c", json!({"q": "a b&c"})),
            ("", json!({})),
        ];
        for (body, want) in cases {
            assert_eq!(parse_form(body.as_bytes()).unwrap(), want, "{body}");
        }
    }

    #[test]
    fn encoding_round_trips_through_parsing() {
        let params = json!({
            "line_items": [{ "price_data": { "currency": "usd", "unit_amount": 200000, "product_data": { "name": "Deal #42 & co" } }, "quantity": 1 }],
            "metadata": { "kommo_lead_id": "42" },
            "restrictions": { "completed_sessions": { "limit": 1 } },
            "active": false,
            "skipped": null
        });
        let pairs = encode(&params);
        assert!(pairs.contains(&("line_items[0][price_data][unit_amount]".into(), "200000".into())), "{pairs:?}");
        assert!(pairs.contains(&("active".into(), "false".into())));
        assert!(!pairs.iter().any(|(k, _)| k == "skipped"));
        let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(&pairs).finish();
        let parsed = parse_form(body.as_bytes()).unwrap();
        assert_eq!(parsed["line_items"][0]["price_data"]["product_data"]["name"], "Deal #42 & co");
        assert_eq!(parsed["line_items"][0]["quantity"], "1");
        assert_eq!(parsed["restrictions"]["completed_sessions"]["limit"], "1");
    }
}
