//! One CleverTap record into sluice's fields: events (profile flattened to
//! `profile_*`, properties kept as JSON or lifted to columns for a typed
//! per-event stream) and profiles (`profileData` lifted, an id chosen).

use std::hash::{Hash, Hasher};

use serde_json::{json, Map, Value};

pub(super) fn snake(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else if c.is_ascii_alphanumeric() {
            out.push(c);
        } else {
            out.push('_');
        }
    }
    out
}

/// An event record: profile flattened to `profile_*`, props kept as JSON.
pub(super) fn event_record(
    event: &str,
    raw: &Map<String, Value>,
) -> Result<Map<String, Value>, String> {
    let ts = raw
        .get("ts")
        .and_then(|v| v.as_i64().or_else(|| v.as_str()?.parse().ok()))
        .ok_or("event has no `ts`")?;
    let text = ts.to_string();
    if text.len() != 14 {
        return Err(format!("`ts` {ts} is not yyyyMMddHHmmss"));
    }
    let mut out = Map::new();
    out.insert("event_name".into(), json!(event));
    out.insert(
        "event_date".into(),
        json!(format!("{}-{}-{}", &text[0..4], &text[4..6], &text[6..8])),
    );
    out.insert("ts".into(), json!(ts));
    out.insert(
        "event_time_local".into(),
        json!(format!(
            "{}-{}-{} {}:{}:{}",
            &text[0..4],
            &text[4..6],
            &text[6..8],
            &text[8..10],
            &text[10..12],
            &text[12..14]
        )),
    );
    for (k, v) in raw {
        match k.as_str() {
            "ts" => {}
            "profile" => {
                if let Some(p) = v.as_object() {
                    for (pk, pv) in p {
                        out.insert(format!("profile_{}", snake(pk)), pv.clone());
                    }
                }
            }
            other => {
                out.insert(snake(other), v.clone());
            }
        }
    }
    Ok(out)
}

/// A profile record: `profileData` keys lifted to columns, `profile_id` = identity or objectId.
pub(super) fn profile_record(raw: &Map<String, Value>) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    for (k, v) in raw {
        match k.as_str() {
            "profileData" => {
                if let Some(data) = v.as_object() {
                    for (dk, dv) in data {
                        out.entry(snake(dk)).or_insert(dv.clone());
                    }
                }
                out.insert("profile_data".into(), v.clone());
            }
            "platformInfo" => {
                if let Some(id) = v
                    .as_array()
                    .and_then(|a| a.first())
                    .and_then(|p| p.get("objectId"))
                {
                    out.entry("object_id").or_insert(id.clone());
                }
                out.insert("platform_info".into(), v.clone());
            }
            "objectId" => {
                out.insert("object_id".into(), v.clone());
            }
            other => {
                out.insert(snake(other), v.clone());
            }
        }
    }
    let id = out
        .get("identity")
        .filter(|v| v.as_str().is_some_and(|s| !s.is_empty()) || v.is_number())
        .or_else(|| out.get("object_id"))
        .map(|v| {
            v.as_str()
                .map(String::from)
                .unwrap_or_else(|| v.to_string())
        })
        .ok_or("profile has neither identity nor objectId")?;
    out.insert("profile_id".into(), json!(id));
    Ok(out)
}

/// `Charged` → `charged`, `App Launched` → `app_launched`: the stream and table suffix.
pub fn event_slug(event: &str) -> String {
    let mut slug = String::new();
    for c in event.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('_') {
            slug.push('_');
        }
    }
    slug.trim_matches('_').to_string()
}

/// Lifts `event_props` into top-level fields named as sent; a property named like
/// an event column (`ts`) becomes `prop_<name>`.
pub(super) fn lift_properties(mut record: Map<String, Value>) -> Map<String, Value> {
    let Some(Value::Object(props)) = record.remove("event_props") else {
        return record;
    };
    for (key, value) in props {
        let name = if record.contains_key(&key) {
            format!("prop_{key}")
        } else {
            key
        };
        record.insert(name, value);
    }
    record
}

pub(super) fn fingerprint(v: &Value) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.to_string().hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_records_are_flattened_and_dated() {
        let raw = json!({"profile": {"objectId": "__g4c", "identity": "C-10042", "email": "a@b.c"},
            "ts": 20240701134502i64, "event_props": {"Amount": 49.9}, "session_props": {"utm_source": "facebook"}});
        let r = event_record("Charged", raw.as_object().unwrap()).unwrap();
        assert_eq!(r["event_date"], "2024-07-01");
        assert_eq!(r["event_time_local"], "2024-07-01 13:45:02");
        assert_eq!(r["profile_object_id"], "__g4c");
        assert_eq!(r["profile_email"], "a@b.c");
        assert_eq!(r["event_props"]["Amount"], 49.9);
    }

    #[test]
    fn typed_event_records_carry_each_property_as_a_column() {
        let raw = json!({"ts": 20240701134502i64,
            "event_props": {"Amount": 49.9, "Items": 2, "ts": "clash", "Products": [{"Quantity": 2}]}});
        let r = lift_properties(event_record("Charged", raw.as_object().unwrap()).unwrap());
        assert_eq!(r["Amount"], 49.9);
        assert_eq!(r["Items"], 2);
        assert_eq!(r["Products"][0]["Quantity"], 2);
        assert_eq!(
            r["prop_ts"], "clash",
            "a property never overwrites an event column"
        );
        assert_eq!(r["ts"], 20240701134502i64);
        assert!(!r.contains_key("event_props"));
        assert_eq!(event_slug("App Launched"), "app_launched");
    }
}
