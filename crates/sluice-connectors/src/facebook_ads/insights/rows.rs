//! Insights pages to records: slice context added, rows repeated within the slice
//! dropped, action lists flattened for `insights_actions`. Used by the live read
//! and by replay, so a replayed page yields exactly the records the read did.
//! Also the merge of a split request's field groups back into whole rows.

use std::collections::{HashMap, HashSet};

use serde_json::{json, Map, Value};
use sluice_core::source::{DecodeState, DecodedPage, Slice, SourceError};
use sluice_core::typing::{Origin, Record, Rejected};

use super::super::config::{InsightsConfig, Level};
use super::super::streams::{insights_key, is_action_list};
use super::super::Account;
use super::{SliceParams, ACCOUNT_PAGE, FIELD_GROUP_PAGE};

/// The records of one landed insights page.
pub(super) struct PageRows {
    pub(super) records: Vec<Record>,
    pub(super) rejected: Vec<Rejected>,
    pub(super) duplicates: u64,
}

/// Turns a page into records: slice context added, rows already seen in the slice
/// dropped, actions flattened for `insights_actions`. Shared by `read` and replay.
/// Takes the page: its rows become the records without being copied.
pub(super) fn page_rows(
    page: Value,
    path: &std::sync::Arc<str>,
    params: &SliceParams,
    config: &InsightsConfig,
    key_fields: &[String],
    actions_only: bool,
    seen: &mut HashSet<String>,
) -> PageRows {
    let mut out = PageRows {
        records: Vec::new(),
        rejected: Vec::new(),
        duplicates: 0,
    };
    for (i, row) in into_data(page).into_iter().enumerate() {
        let origin = Origin {
            page: path.clone(),
            line: i as u64 + 1,
        };
        let Value::Object(mut fields) = row else {
            out.rejected.push(Rejected {
                origin,
                reason: "insights row is not a JSON object".into(),
                raw: row.to_string(),
            });
            continue;
        };
        fields
            .entry("account_currency")
            .or_insert(params.currency.clone());
        fields.insert("account_timezone".into(), params.timezone.clone());
        let key = key_fields
            .iter()
            .map(|k| fields.get(k).map(value_text).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\u{1f}");
        if !seen.insert(key) {
            out.duplicates += 1;
            continue;
        }
        if actions_only {
            out.records
                .extend(flatten_actions(&fields, config, &origin));
        } else {
            out.records.push(Record { fields, origin });
        }
    }
    out
}

/// The page's `data` array, taken out of it (empty when absent).
fn into_data(page: Value) -> Vec<Value> {
    match page {
        Value::Object(mut page) => match page.remove("data") {
            Some(Value::Array(rows)) => rows,
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// Decodes a landed insights page for a replay of `slice`.
pub fn decode(
    config: &InsightsConfig,
    actions_only: bool,
    slice: &Slice,
    path: &std::sync::Arc<str>,
    body: &[u8],
    state: &mut DecodeState,
) -> Result<DecodedPage, SourceError> {
    let mut params = SliceParams::parse(slice)?;
    if is_account_page(path) {
        // Not rows: the details the rows after it take (see `read`).
        let page: Value = serde_json::from_slice(body)
            .map_err(|e| SourceError::data(format!("{path}: malformed JSON: {e}")))?;
        Account::from_json(&page).ok_or_else(|| {
            SourceError::data(format!("{path}: the account's page has no valid `id`"))
        })?;
        state.context = Some(page);
        return Ok(DecodedPage {
            records: Vec::new(),
            rejected: Vec::new(),
        });
    }
    if let Some(account) = state.context.as_ref().and_then(Account::from_json) {
        params.learn(&account);
    }
    if is_field_group_page(path) {
        // Its rows are decoded from the merged page landed after the groups.
        return Ok(DecodedPage {
            records: Vec::new(),
            rejected: Vec::new(),
        });
    }
    let page: Value = serde_json::from_slice(body)
        .map_err(|e| SourceError::data(format!("{path}: malformed JSON: {e}")))?;
    let rows = page_rows(
        page,
        path,
        &params,
        config,
        &insights_key(config),
        actions_only,
        &mut state.seen,
    );
    Ok(DecodedPage {
        records: rows.records,
        rejected: rows.rejected,
    })
}

/// The page of the slice's account details (see [`ACCOUNT_PAGE`]).
pub(super) fn is_account_page(path: &str) -> bool {
    path.rsplit('/')
        .next()
        .and_then(|file| file.split('.').next())
        .is_some_and(|stem| stem.rsplit('-').next() == Some(ACCOUNT_PAGE))
}

/// A page holding one field group of a split request (see [`FIELD_GROUP_PAGE`]).
pub(super) fn is_field_group_page(path: &str) -> bool {
    path.rsplit('/')
        .next()
        .is_some_and(|file| file.contains(FIELD_GROUP_PAGE))
}

/// One row per entry of each action list, attribution windows as `value_<window>` columns.
pub(super) fn flatten_actions(
    row: &Map<String, Value>,
    config: &InsightsConfig,
    origin: &Origin,
) -> Vec<Record> {
    let mut keys: Vec<&str> = vec!["account_id"];
    if config.level != Level::Account {
        keys.push(config.level.key_field());
    }
    keys.push("date_start");
    keys.extend(config.breakdowns.iter().map(String::as_str));
    let mut out = Vec::new();
    for (metric, list) in row.iter().filter(|(k, _)| is_action_list(k)) {
        for entry in list.as_array().into_iter().flatten() {
            let Some(entry) = entry.as_object() else {
                continue;
            };
            let mut fields = Map::new();
            for k in &keys {
                fields.insert(k.to_string(), row.get(*k).cloned().unwrap_or(Value::Null));
            }
            fields.insert("metric".into(), json!(metric));
            for (k, v) in entry {
                let column = match k.as_str() {
                    "action_type" | "value" => k.clone(),
                    // Attribution windows (1d_click, 7d_view, …) become value_<window>.
                    w if w.starts_with(|c: char| c.is_ascii_digit()) || w == "default" => {
                        format!("value_{w}")
                    }
                    other => other.to_string(),
                };
                fields.insert(column, v.clone());
            }
            fields.insert(
                "account_currency".into(),
                row.get("account_currency").cloned().unwrap_or(Value::Null),
            );
            fields.insert(
                "account_timezone".into(),
                row.get("account_timezone").cloned().unwrap_or(Value::Null),
            );
            out.push(Record {
                fields,
                origin: origin.clone(),
            });
        }
    }
    out
}

pub(super) fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Rows of several field groups merged by identity, in first-seen order.
pub(super) struct RowMerge {
    key_fields: Vec<String>,
    index: HashMap<String, usize>,
    rows: Vec<Value>,
}

impl RowMerge {
    pub(super) fn new(key_fields: Vec<String>) -> Self {
        RowMerge {
            key_fields,
            index: HashMap::new(),
            rows: Vec::new(),
        }
    }

    pub(super) fn add(&mut self, rows: &[Value]) {
        for row in rows {
            let Some(obj) = row.as_object() else {
                // Not a row: kept as is, so decoding rejects it as it would unmerged.
                self.rows.push(row.clone());
                continue;
            };
            let key = row_key(obj, &self.key_fields);
            match self.index.get(&key) {
                Some(&i) => {
                    if let Some(merged) = self.rows[i].as_object_mut() {
                        merged.extend(obj.clone());
                    }
                }
                None => {
                    self.index.insert(key, self.rows.len());
                    self.rows.push(row.clone());
                }
            }
        }
    }

    pub(super) fn rows(self) -> Vec<Value> {
        self.rows
    }
}

fn row_key(row: &Map<String, Value>, key_fields: &[String]) -> String {
    key_fields
        .iter()
        .map(|k| row.get(k).map(value_text).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\u{1f}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_groups_merge_by_identity_in_first_seen_order() {
        let keys = ["account_id", "ad_id", "date_start", "date_stop"].map(String::from);
        let row = |ad: &str, extra: Value| {
            let mut r = json!({"account_id": "1", "ad_id": ad, "date_start": "2024-07-01", "date_stop": "2024-07-01"});
            r.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            r
        };
        let mut merge = RowMerge::new(keys.to_vec());
        merge.add(&[
            row("7", json!({"impressions": "10", "ad_name": "a"})),
            row("8", json!({"impressions": "20", "ad_name": "b"})),
        ]);
        // The second group repeats a row (the API does) and lists rows in another order.
        merge.add(&[
            row("8", json!({"spend": "2.50"})),
            row("7", json!({"spend": "1.25"})),
            row("7", json!({"spend": "1.25"})),
            json!("not a row"),
        ]);
        assert_eq!(
            merge.rows(),
            vec![
                row(
                    "7",
                    json!({"impressions": "10", "ad_name": "a", "spend": "1.25"})
                ),
                row(
                    "8",
                    json!({"impressions": "20", "ad_name": "b", "spend": "2.50"})
                ),
                json!("not a row"),
            ]
        );
    }

    #[test]
    fn only_the_account_page_is_taken_for_the_account_details() {
        assert!(is_account_page(
            "raw/fb/insights/dt=2024-07-01/r1/s00001-a1-account.json.zst"
        ));
        assert!(is_account_page("raw/fb/insights/dt=2024-07-01/account.json"));
        assert!(!is_account_page(
            "raw/fb/insights/dt=2024-07-01/r1/s00001-a1-p00001.json.zst"
        ));
    }

    /// A slice read by this version takes its rows' currency and time zone from the
    /// account page landed before them; one landed by an earlier version (no such
    /// page) from the details its parameters were prepared with.
    #[test]
    fn replayed_rows_take_the_account_details_from_its_page_or_an_older_slices_parameters() {
        let config = InsightsConfig::default();
        let window = json!({"since": "2024-07-01", "until": "2024-07-01"});
        let rows = json!({"data": [{"account_id": "1", "ad_id": "7", "date_start": "2024-07-01",
            "date_stop": "2024-07-01", "impressions": "10"}]});
        let body = serde_json::to_vec(&rows).unwrap();
        let page: std::sync::Arc<str> = "raw/fb/insights/dt=2024-07-01/r1/s00001-a1-p00001.json".into();
        let decode_rows = |slice: &Slice, pages: &[(&str, Vec<u8>)]| {
            let mut state = DecodeState::default();
            let mut records = Vec::new();
            for (path, body) in pages {
                let path: std::sync::Arc<str> = (*path).into();
                records.extend(decode(&config, false, slice, &path, body, &mut state).unwrap().records);
            }
            records
        };
        let detail = |records: &[sluice_core::typing::Record], field: &str| {
            records.iter().map(|r| r.fields[field].clone()).collect::<Vec<_>>()
        };

        let new = Slice {
            key: "act_1/2024-07-01".into(),
            params: json!({"account": "act_1", "window": window}),
        };
        let account = json!({"id": "act_1", "currency": "EUR", "timezone_name": "Europe/Berlin"});
        let records = decode_rows(
            &new,
            &[
                ("raw/fb/insights/dt=2024-07-01/r1/s00001-a1-account.json", serde_json::to_vec(&account).unwrap()),
                (&page, body.clone()),
            ],
        );
        assert_eq!(detail(&records, "account_timezone"), [json!("Europe/Berlin")]);
        assert_eq!(detail(&records, "account_currency"), [json!("EUR")]);

        let old = Slice {
            key: "act_1/2024-07-01".into(),
            params: json!({"account": "act_1", "currency": "USD",
                "timezone": "America/New_York", "window": window}),
        };
        let records = decode_rows(&old, &[(&page, body)]);
        assert_eq!(detail(&records, "account_timezone"), [json!("America/New_York")]);
        assert_eq!(detail(&records, "account_currency"), [json!("USD")]);
    }

    #[test]
    fn only_field_group_pages_are_skipped_on_replay() {
        assert!(is_field_group_page(
            "raw/fb/insights/dt=2024-07-01/r1/s00001-a1-p00003-fieldgroup.json.zst"
        ));
        assert!(!is_field_group_page(
            "raw/fb/insights/dt=2024-07-01/r1/s00001-a1-p00005.json.zst"
        ));
    }
}
