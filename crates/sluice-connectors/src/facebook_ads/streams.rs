//! The Facebook streams' D1 tables: columns with precise types, keys, partitions
//! and write modes. Ids are text (they exceed 2^53), counts bigint, money
//! numeric, ratios double, nested lists jsonb.

use sluice_core::destination::WriteMode;
use sluice_core::schema::{Field, FieldType, JsonPaths, TableSchema};
use sluice_core::source::StreamSpec;

use super::config::{EntityConfig, InsightsConfig, Level};

/// Money in account currency: Facebook reports at most 2 decimals; 4 leave room.
pub const MONEY: FieldType = FieldType::numeric(4);
/// Action values can be fractional conversions.
pub const ACTION_VALUE: FieldType = FieldType::numeric(6);

/// Each stream's fields as the config asks the API for them, for
/// `sluice upgrade-check`: (stream, configured table, fields).
pub fn configured_fields(
    config: &super::config::FacebookConfig,
) -> Vec<(String, Option<String>, Vec<String>)> {
    use super::config::StreamChoice;
    super::config::effective_streams(&config.streams)
        .into_iter()
        .map(|(stream, choice)| match choice {
            StreamChoice::Insights(i) => {
                let table = i.table.clone();
                (stream.to_string(), table, insights_request_fields(&i))
            }
            StreamChoice::Entity(e) => {
                let mut fields: Vec<String> = entity_fields(stream)
                    .iter()
                    .map(|(name, _)| name.to_string())
                    .collect();
                fields.extend(e.fields.iter().cloned());
                (stream.to_string(), e.table, fields)
            }
        })
        .collect()
}

/// The declared type of an insights field (unknown ones are inferred by the executor).
pub fn insights_field_type(name: &str) -> FieldType {
    match name {
        "impressions"
        | "clicks"
        | "reach"
        | "unique_clicks"
        | "inline_link_clicks"
        | "unique_inline_link_clicks"
        | "outbound_clicks_count" => FieldType::Bigint,
        "spend" | "social_spend" => MONEY,
        "frequency"
        | "ctr"
        | "cpc"
        | "cpm"
        | "cpp"
        | "unique_ctr"
        | "inline_link_click_ctr"
        | "cost_per_inline_link_click" => FieldType::Double,
        "date_start" | "date_stop" => FieldType::Date,
        "created_time" | "updated_time" => FieldType::Timestamp,
        "actions"
        | "action_values"
        | "conversions"
        | "conversion_values"
        | "cost_per_action_type"
        | "outbound_clicks"
        | "video_p25_watched_actions"
        | "video_p50_watched_actions"
        | "video_p75_watched_actions"
        | "video_p100_watched_actions"
        | "purchase_roas"
        | "website_ctr" => FieldType::Json,
        _ => FieldType::Text,
    }
}

/// Insights fields that hold a list of `{action_type, value, <window>…}`.
pub fn is_action_list(name: &str) -> bool {
    matches!(
        name,
        "actions" | "action_values" | "conversions" | "conversion_values"
    )
}

pub fn table_name(source: &str, stream: &str, configured: &Option<String>) -> String {
    configured
        .clone()
        .unwrap_or_else(|| format!("{source}_{stream}"))
}

/// The primary key of an insights row at `level`.
pub fn insights_key(config: &InsightsConfig) -> Vec<String> {
    let mut key = vec!["account_id".to_string()];
    if config.level != Level::Account {
        key.push(config.level.key_field().to_string());
    }
    key.push("date_start".into());
    key.extend(config.breakdowns.iter().cloned());
    key
}

/// The fields requested for insights: ids and names for the level, dates, currency, breakdown-free metrics.
pub fn insights_request_fields(config: &InsightsConfig) -> Vec<String> {
    let mut fields: Vec<String> = config
        .level
        .id_fields()
        .iter()
        .map(|s| s.to_string())
        .collect();
    fields.extend(["date_start", "date_stop", "account_currency"].map(String::from));
    for f in &config.fields {
        if !fields.contains(f) {
            fields.push(f.clone());
        }
    }
    fields
}

pub fn insights_spec(source: &str, config: &InsightsConfig) -> StreamSpec {
    let mut fields = Vec::new();
    for name in insights_request_fields(config) {
        let mut field = Field::new(&name, insights_field_type(&name));
        if name == "account_id" || name == "date_start" || name == config.level.key_field() {
            field = field.required();
        }
        fields.push(field);
        if name == "account_currency" {
            fields.push(Field::new("account_timezone", FieldType::Text));
        }
    }
    for b in &config.breakdowns {
        fields.push(Field::new(b, FieldType::Text));
    }
    let mut schema = TableSchema::new(fields);
    // Each action type of an action list is a field of the registry
    // (`actions.purchase`): one that appears or stops arriving is a schema change.
    schema.json_paths = config
        .fields
        .iter()
        .filter(|f| is_action_list(f))
        .map(|f| JsonPaths::list_keyed_by(f, "action_type"))
        .collect();
    StreamSpec {
        name: "insights".into(),
        table: table_name(source, "insights", &config.table),
        schema,
        infer_columns: true,
        primary_key: insights_key(config),
        partition_column: Some("date_start".into()),
        write_mode: WriteMode::OverwritePartitions,
        dedupe: Default::default(),
    }
}

/// The child stream: one row per action type (and list) per insights row.
pub fn insights_actions_spec(
    source: &str,
    insights: &InsightsConfig,
    config: &EntityConfig,
) -> StreamSpec {
    let mut fields = vec![Field::new("account_id", FieldType::Text).required()];
    if insights.level != Level::Account {
        fields.push(Field::new(insights.level.key_field(), FieldType::Text).required());
    }
    fields.push(Field::new("date_start", FieldType::Date).required());
    for b in &insights.breakdowns {
        fields.push(Field::new(b, FieldType::Text));
    }
    fields.push(Field::new("metric", FieldType::Text).required());
    fields.push(Field::new("action_type", FieldType::Text).required());
    fields.push(Field::new("value", ACTION_VALUE));
    for w in &insights.action_attribution_windows {
        fields.push(Field::new(format!("value_{w}"), ACTION_VALUE));
    }
    fields.push(Field::new("account_currency", FieldType::Text));
    fields.push(Field::new("account_timezone", FieldType::Text));
    let mut primary_key = insights_key(insights);
    primary_key.extend(["metric", "action_type"].map(String::from));
    StreamSpec {
        name: "insights_actions".into(),
        table: table_name(source, "insights_actions", &config.table),
        schema: TableSchema::new(fields),
        infer_columns: true,
        primary_key,
        partition_column: Some("date_start".into()),
        write_mode: WriteMode::OverwritePartitions,
        dedupe: Default::default(),
    }
}

/// Built-in fields of an entity stream, with their types.
pub fn entity_fields(stream: &str) -> &'static [(&'static str, FieldType)] {
    use FieldType::*;
    match stream {
        "campaigns" => &[
            ("id", Text),
            ("account_id", Text),
            ("name", Text),
            ("status", Text),
            ("effective_status", Text),
            ("objective", Text),
            ("buying_type", Text),
            ("daily_budget", Bigint),
            ("lifetime_budget", Bigint),
            ("created_time", Timestamp),
            ("updated_time", Timestamp),
            ("start_time", Timestamp),
            ("stop_time", Timestamp),
        ],
        "adsets" => &[
            ("id", Text),
            ("account_id", Text),
            ("campaign_id", Text),
            ("name", Text),
            ("status", Text),
            ("effective_status", Text),
            ("daily_budget", Bigint),
            ("lifetime_budget", Bigint),
            ("optimization_goal", Text),
            ("billing_event", Text),
            ("created_time", Timestamp),
            ("updated_time", Timestamp),
            ("start_time", Timestamp),
            ("end_time", Timestamp),
        ],
        "ads" => &[
            ("id", Text),
            ("account_id", Text),
            ("campaign_id", Text),
            ("adset_id", Text),
            ("name", Text),
            ("status", Text),
            ("effective_status", Text),
            ("creative", Json),
            ("created_time", Timestamp),
            ("updated_time", Timestamp),
        ],
        _ => &[
            ("id", Text),
            ("account_id", Text),
            ("name", Text),
            ("currency", Text),
            ("timezone_name", Text),
            ("timezone_offset_hours_utc", Double),
            ("account_status", Bigint),
        ],
    }
}

pub fn entity_spec(source: &str, stream: &str, config: &EntityConfig) -> StreamSpec {
    let mut fields: Vec<Field> = entity_fields(stream)
        .iter()
        .map(|(name, ty)| {
            let f = Field::new(*name, *ty);
            if *name == "id" {
                f.required()
            } else {
                f
            }
        })
        .collect();
    if stream != "ad_accounts" {
        // Budgets are in the account currency's minor unit: carry the currency.
        fields.push(Field::new("account_currency", FieldType::Text));
    }
    for extra in &config.fields {
        if !fields.iter().any(|f| &f.name == extra) {
            fields.push(Field::new(extra, insights_field_type(extra)));
        }
    }
    StreamSpec {
        name: stream.into(),
        table: table_name(source, stream, &config.table),
        schema: TableSchema::new(fields),
        infer_columns: true,
        primary_key: vec!["id".into()],
        partition_column: None,
        write_mode: WriteMode::Merge,
        dedupe: Default::default(),
    }
}
