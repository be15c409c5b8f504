//! GAQL streams: the built-in queries, adding the date condition, turning the
//! nested lowerCamelCase rows into flat snake_case columns, and the column
//! types a query's SELECT list implies.
//!
//! Naming: `campaign.id` → `campaign_id`, `metrics.cost_micros` → `cost_micros`,
//! `segments.date` → `date` (the metrics/segments prefixes are dropped),
//! `ad_group_ad.ad.id` → `ad_id`. Resource names are dropped (the ids carry them).
//! Proto3 omits zero values: a selected metric missing from a row is 0.

use rust_decimal::Decimal;
use serde_json::{json, Map, Value};
use sluice_core::schema::FieldType;

/// Money derived from `cost_micros`, in currency units.
pub const COST: FieldType = FieldType::numeric(6);

/// A built-in stream: its query (without date condition) and key.
pub struct Builtin {
    pub name: &'static str,
    pub gaql: &'static str,
    pub key: &'static [&'static str],
}

pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "campaign_daily",
        gaql: "SELECT customer.id, campaign.id, campaign.name, campaign.status, metrics.impressions, metrics.clicks, \
               metrics.cost_micros, metrics.conversions, segments.date FROM campaign",
        key: &["customer_id", "campaign_id", "date"],
    },
    Builtin {
        name: "ad_group_daily",
        gaql: "SELECT customer.id, campaign.id, ad_group.id, ad_group.name, ad_group.status, metrics.impressions, \
               metrics.clicks, metrics.cost_micros, metrics.conversions, segments.date FROM ad_group",
        key: &["customer_id", "ad_group_id", "date"],
    },
    Builtin {
        name: "ad_daily",
        gaql: "SELECT customer.id, campaign.id, ad_group.id, ad_group_ad.ad.id, ad_group_ad.status, metrics.impressions, \
               metrics.clicks, metrics.cost_micros, metrics.conversions, segments.date FROM ad_group_ad",
        key: &["customer_id", "ad_group_id", "ad_id", "date"],
    },
    Builtin {
        name: "customers",
        gaql: "SELECT customer.id, customer.descriptive_name, customer.currency_code, customer.time_zone, \
               customer.manager, customer.status FROM customer",
        key: &["customer_id"],
    },
];

pub fn builtin(name: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.name == name)
}

/// The selected field paths of a query (`campaign.id`, `metrics.clicks`, …).
pub fn selected_fields(gaql: &str) -> Vec<String> {
    let lower = gaql.to_ascii_lowercase();
    let start = lower
        .find("select")
        .map(|i| i + "select".len())
        .unwrap_or(0);
    let end = find_keyword(&lower, "from").unwrap_or(lower.len());
    gaql[start..end]
        .split(',')
        .map(|f| f.trim().to_string())
        .filter(|f| !f.is_empty())
        .collect()
}

/// Position of ` <keyword> ` as a whole word (case-insensitive input expected lower-cased).
fn find_keyword(lower: &str, keyword: &str) -> Option<usize> {
    let bytes = lower.as_bytes();
    let mut from = 0;
    while let Some(pos) = lower[from..].find(keyword) {
        let i = from + pos;
        let before = i == 0 || bytes[i - 1].is_ascii_whitespace();
        let after = bytes
            .get(i + keyword.len())
            .is_none_or(|c| c.is_ascii_whitespace());
        if before && after {
            return Some(i);
        }
        from = i + keyword.len();
    }
    None
}

/// Adds `segments.date BETWEEN since AND until` (as WHERE or AND, before ORDER BY/LIMIT/PARAMETERS).
pub fn with_date_range(gaql: &str, since: &str, until: &str) -> String {
    let condition = format!("segments.date BETWEEN '{since}' AND '{until}'");
    let gaql = gaql.trim();
    let lower = gaql.to_ascii_lowercase();
    let tail = ["order by", "limit", "parameters"]
        .iter()
        .filter_map(|k| {
            find_keyword(&lower, k.split(' ').next().unwrap_or(k)).filter(|_| lower.contains(k))
        })
        .min()
        .unwrap_or(gaql.len());
    let (head, rest) = gaql.split_at(tail);
    let joiner = if find_keyword(&lower[..tail], "where").is_some() {
        "AND"
    } else {
        "WHERE"
    };
    format!(
        "{} {joiner} {condition} {}",
        head.trim_end(),
        rest.trim_start()
    )
    .trim_end()
    .to_string()
}

/// True when the query selects the day (and is therefore read by date window).
pub fn is_dated(gaql: &str) -> bool {
    selected_fields(gaql).iter().any(|f| f == "segments.date")
}

fn snake(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The column name of a field path (camelCase or snake_case).
pub fn column_name(path: &str) -> String {
    let parts: Vec<String> = path.split('.').map(snake).collect();
    let joined = match parts.first().map(String::as_str) {
        Some("metrics") | Some("segments") if parts.len() > 1 => parts[1..].join("_"),
        _ => parts.join("_"),
    };
    match joined.as_str() {
        "ad_group_ad_ad_id" => "ad_id".into(),
        "ad_group_ad_ad_name" => "ad_name".into(),
        "ad_group_ad_status" => "ad_status".into(),
        _ => joined,
    }
}

fn flatten_into(prefix: &str, value: &Value, out: &mut Map<String, Value>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "resourceName" {
                    continue;
                }
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten_into(&path, v, out);
            }
        }
        other => {
            out.insert(column_name(prefix), other.clone());
        }
    }
}

/// Flattens one result row; selected metrics that proto3 omitted become 0.
pub fn flatten_row(row: &Value, selected: &[String]) -> Map<String, Value> {
    let mut out = Map::new();
    flatten_into("", row, &mut out);
    for path in selected {
        if path.starts_with("metrics.") {
            out.entry(column_name(path)).or_insert(json!(0));
        }
    }
    if let Some(micros) = out.get("cost_micros") {
        let micros = match micros {
            Value::String(s) => s.parse::<i64>().ok(),
            Value::Number(n) => n.as_i64(),
            _ => None,
        };
        if let Some(m) = micros {
            out.insert("cost".into(), json!(Decimal::new(m, 6).to_string()));
        }
    }
    out
}

/// Metrics Google sends as int64 (strings); other metrics are doubles.
const INT64_METRICS: &[&str] = &[
    "impressions",
    "clicks",
    "interactions",
    "engagements",
    "video_views",
    "video_trueview_views",
    "invalid_clicks",
    "phone_calls",
    "phone_impressions",
];

/// The type of a column from its field path.
pub fn column_type(path: &str) -> FieldType {
    let column = column_name(path);
    if path.starts_with("metrics.") {
        if column.ends_with("_micros") || INT64_METRICS.contains(&column.as_str()) {
            FieldType::Bigint
        } else {
            FieldType::Double
        }
    } else if column == "date" {
        FieldType::Date
    } else if column == "customer_manager" || column.ends_with("_manager") {
        FieldType::Boolean
    } else if column.ends_with("_level") || column == "week" || column == "hour" {
        FieldType::Bigint
    } else {
        // Ids (int64 strings above 2^53 in places), names, enums.
        FieldType::Text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_the_date_condition_in_the_right_place() {
        assert_eq!(
            with_date_range("SELECT campaign.id, segments.date FROM campaign", "2024-07-01", "2024-07-31"),
            "SELECT campaign.id, segments.date FROM campaign WHERE segments.date BETWEEN '2024-07-01' AND '2024-07-31'"
        );
        assert_eq!(
            with_date_range("SELECT a FROM campaign WHERE campaign.status = 'ENABLED' ORDER BY segments.date LIMIT 10", "2024-07-01", "2024-07-02"),
            "SELECT a FROM campaign WHERE campaign.status = 'ENABLED' AND segments.date BETWEEN '2024-07-01' AND '2024-07-02' ORDER BY segments.date LIMIT 10"
        );
    }

    #[test]
    fn flattens_rows_and_fills_omitted_metrics() {
        let row = serde_json::json!({
            "customer": {"resourceName": "customers/1", "id": "1234567890"},
            "campaign": {"resourceName": "customers/1/campaigns/987", "id": "987", "name": "Brand | DE"},
            "adGroupAd": {"ad": {"id": "55"}},
            "metrics": {"impressions": "1200", "costMicros": "25170000"},
            "segments": {"date": "2024-07-01"}
        });
        let selected = selected_fields("SELECT customer.id, campaign.id, metrics.impressions, metrics.clicks, metrics.cost_micros, segments.date FROM campaign");
        let flat = flatten_row(&row, &selected);
        assert_eq!(flat["customer_id"], "1234567890");
        assert_eq!(flat["campaign_name"], "Brand | DE");
        assert_eq!(flat["ad_id"], "55");
        assert_eq!(flat["impressions"], "1200");
        assert_eq!(flat["clicks"], 0);
        assert_eq!(flat["cost"], "25.170000");
        assert_eq!(flat["date"], "2024-07-01");
        assert!(!flat.contains_key("customer_resource_name"));
        assert_eq!(column_type("metrics.cost_micros"), FieldType::Bigint);
        assert_eq!(column_type("metrics.ctr"), FieldType::Double);
        assert_eq!(column_type("campaign.id"), FieldType::Text);
    }
}
