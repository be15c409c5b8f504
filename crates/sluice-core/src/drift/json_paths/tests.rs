//! Fields inside a JSON column through the drift engine: per event name, like columns.

use std::collections::BTreeMap;

use super::super::{ChangeKind, Policy, StreamPolicy, StreamSchema};
use crate::destination::WriteMode;
use crate::schema::{Field, FieldType, JsonPaths, TableSchema};
use crate::source::StreamSpec;
use crate::typing::{Origin, Record};

fn events() -> StreamSpec {
    let mut schema = TableSchema::new(vec![
        Field::new("event_name", FieldType::Text),
        Field::new("event_date", FieldType::Date),
        Field::new("event_props", FieldType::Json),
    ]);
    schema.json_paths = vec![JsonPaths::object("event_props").scoped_by("event_name")];
    StreamSpec {
        name: "events".into(),
        table: "app_events".into(),
        schema,
        infer_columns: true,
        primary_key: Vec::new(),
        partition_column: Some("event_date".into()),
        write_mode: WriteMode::OverwritePartitions,
        dedupe: Default::default(),
    }
}

fn event(name: &str, day: &str, props: serde_json::Value, line: u64) -> Record {
    let fields = serde_json::json!({"event_name": name, "event_date": day, "event_props": props});
    Record {
        fields: fields.as_object().unwrap().clone(),
        origin: Origin {
            page: "raw/app/events/p00001.json".into(),
            line,
        },
    }
}

fn policy(new: Policy, ty: Policy) -> StreamPolicy {
    StreamPolicy {
        on_new_field: new,
        on_type_change: ty,
        json_on_type_change: ty,
        on_removed_field: Policy::Evolve,
        renames: BTreeMap::new(),
    }
}

/// Run one: `Charged` with Amount and Items (a number); `App Launched` with Source.
fn first_run() -> TableSchema {
    let mut schema = StreamSchema::new(&events(), None, policy(Policy::Evolve, Policy::Evolve));
    schema
        .absorb(&[
            event(
                "Charged",
                "2026-12-01",
                serde_json::json!({"Amount": 10.5, "Items": 2}),
                1,
            ),
            event(
                "Charged",
                "2026-12-01",
                serde_json::json!({"Amount": 3.0, "Items": 1}),
                2,
            ),
            event(
                "App Launched",
                "2026-12-01",
                serde_json::json!({"Source": "push"}),
                3,
            ),
        ])
        .unwrap();
    schema.finish().unwrap();
    assert!(schema.changes.is_empty(), "a first run reports nothing");
    schema.schema
}

/// Run two reads the day before the change and the change day: Amount renamed to
/// amount_value, Items sent as text, Coupon new.
fn second_run_records() -> Vec<Record> {
    vec![
        event(
            "Charged",
            "2026-12-01",
            serde_json::json!({"Amount": 10.5, "Items": 2}),
            1,
        ),
        event(
            "Charged",
            "2026-12-02",
            serde_json::json!({"amount_value": 7.5, "Items": "3", "Coupon": "X1"}),
            2,
        ),
        event(
            "App Launched",
            "2026-12-02",
            serde_json::json!({"Source": "push"}),
            3,
        ),
        event(
            "Charged",
            "2026-12-02",
            serde_json::json!({"amount_value": 1.5, "Items": "1"}),
            4,
        ),
    ]
}

#[test]
fn each_events_properties_are_versioned_per_event_with_the_day_they_changed() {
    let registry = first_run();
    assert_eq!(
        registry.fields.len(),
        5,
        "properties are no columns: {:?}",
        registry.fields
    );
    let charged = &registry.paths["Charged"];
    assert_eq!(
        charged.field("event_props.Amount").unwrap().ty,
        FieldType::Double
    );
    assert_eq!(
        charged.field("event_props.Items").unwrap().ty,
        FieldType::Bigint
    );
    assert!(
        charged.field("event_props.Source").is_none(),
        "each event has its own"
    );
    assert!(charged.field("event_date").is_none());

    let mut schema = StreamSchema::new(
        &events(),
        Some(&registry),
        policy(Policy::Evolve, Policy::Evolve),
    );
    let rejects = schema.absorb(&second_run_records()).unwrap();
    assert!(rejects.is_empty(), "{rejects:?}");
    schema.finish().unwrap();
    let change = |kind, field: &str| {
        schema
            .changes
            .get(&(kind, field.to_string()))
            .unwrap_or_else(|| panic!("{kind:?} {field} in {:?}", schema.changes.keys()))
            .clone()
    };
    let coupon = change(ChangeKind::Added, "event_props.Coupon [Charged]");
    assert!(
        coupon.detail.contains("in data of 2026-12-02"),
        "{}",
        coupon.detail
    );
    assert_eq!(coupon.action, "evolved");
    let items = change(ChangeKind::Widened, "event_props.Items [Charged]");
    assert!(items.detail.contains("bigint → text"), "{}", items.detail);
    let rename = change(ChangeKind::LikelyRename, "event_props.Amount [Charged]");
    assert!(
        rename
            .detail
            .contains("`event_props.amount_value` from data of 2026-12-02"),
        "{}",
        rename.detail
    );
    // The table's columns did not move.
    assert_eq!(schema.version, 0);

    // The registry and its diff say the same, with the days.
    let recorded = schema.schema.clone();
    let charged = &recorded.paths["Charged"];
    assert_eq!(charged.first_seen["event_props.Coupon"], "2026-12-02");
    assert_eq!(charged.retyped_on["event_props.Items"], "2026-12-02");
    let lines: Vec<String> = super::super::diff(&registry, &recorded)
        .iter()
        .map(ToString::to_string)
        .collect();
    for expected in [
        "new field `event_props.Coupon [Charged]`: text, first in data of 2026-12-02",
        "type widened `event_props.Items [Charged]`: bigint → text, first in data of 2026-12-02",
        "new field `event_props.amount_value [Charged]`: double, first in data of 2026-12-02",
        "likely rename `event_props.Amount [Charged]`: `event_props.amount_value` from data of 2026-12-02",
    ] {
        assert!(lines.iter().any(|l| l.starts_with(expected)), "{expected}\n{lines:#?}");
    }
    assert!(
        !lines.iter().any(|l| l.contains("App Launched")),
        "{lines:#?}"
    );
}

#[test]
fn freeze_names_the_property_and_its_first_record() {
    let registry = first_run();
    let mut schema = StreamSchema::new(
        &events(),
        Some(&registry),
        policy(Policy::Freeze, Policy::Evolve),
    );
    let message = schema.absorb(&second_run_records()).unwrap_err();
    assert!(
        message.starts_with("`Charged`: new field `event_props.")
            && message.contains("raw/app/events/p00001.json")
            && message.contains("in data of 2026-12-02")
            && message.contains("freeze"),
        "{message}"
    );
}

#[test]
fn quarantine_holds_back_the_records_carrying_the_change() {
    let registry = first_run();
    let mut schema = StreamSchema::new(
        &events(),
        Some(&registry),
        policy(Policy::Quarantine, Policy::Quarantine),
    );
    let records = second_run_records();
    let rejects = schema.absorb(&records).unwrap();
    // Items arrived as text in records 2 and 4 (indices 1 and 3).
    let indices: Vec<usize> = rejects.iter().map(|(i, _)| *i).collect();
    assert_eq!(indices, [1, 3]);
    assert!(
        rejects[0].1.contains("`event_props.Items`"),
        "{}",
        rejects[0].1
    );
    // New properties are held back: a record carrying one is quarantined by the sink.
    assert!(!schema.holds_back_nothing());
    let held = schema
        .held_back_in(&records[1])
        .expect("a new property is held back");
    assert!(
        [
            "event_props.Coupon [Charged]",
            "event_props.amount_value [Charged]"
        ]
        .contains(&held.as_str()),
        "{held}"
    );
    assert_eq!(schema.held_back_in(&records[0]), None);
    assert_eq!(
        schema.held_back_in(&records[2]),
        None,
        "App Launched is unchanged"
    );
}

#[test]
fn a_declared_rename_loads_the_new_property_under_the_old_name_inside_the_json() {
    let registry = first_run();
    let mut policy = policy(Policy::Evolve, Policy::Evolve);
    policy.renames.insert(
        "event_props.amount_value".into(),
        "event_props.Amount".into(),
    );
    let mut schema = StreamSchema::new(&events(), Some(&registry), policy);
    let renames = schema.resolve_renames();
    assert_eq!(
        renames.get("event_props.Amount").map(String::as_str),
        Some("event_props.amount_value"),
        "the registry knows Amount: it is kept"
    );
    let mut records = second_run_records();
    for record in &mut records {
        super::super::apply_renames(&renames, &mut record.fields);
    }
    assert_eq!(records[1].fields["event_props"]["Amount"], 7.5);
    assert!(records[1].fields["event_props"]
        .get("amount_value")
        .is_none());
    schema.absorb(&records).unwrap();
    schema.finish().unwrap();
    assert!(
        !schema.changes.keys().any(|(_, f)| f.contains("amount")),
        "{:?}",
        schema.changes.keys()
    );
}

/// Facebook's `actions`: each action type is a field; one that stops arriving on
/// the day another starts is a likely rename, a new one is reported with its day.
#[test]
fn a_list_keyed_by_action_type_versions_each_action_type() {
    let mut schema = TableSchema::new(vec![
        Field::new("date_start", FieldType::Date),
        Field::new("actions", FieldType::Json),
    ]);
    schema.json_paths = vec![JsonPaths::list_keyed_by("actions", "action_type")];
    let spec = StreamSpec {
        name: "insights".into(),
        table: "facebook_insights".into(),
        schema,
        infer_columns: true,
        primary_key: Vec::new(),
        partition_column: Some("date_start".into()),
        write_mode: WriteMode::OverwritePartitions,
        dedupe: Default::default(),
    };
    let row = |day: &str, actions: serde_json::Value, line| {
        let fields = serde_json::json!({"date_start": day, "actions": actions});
        Record {
            fields: fields.as_object().unwrap().clone(),
            origin: Origin {
                page: "raw/facebook/insights/p1.json".into(),
                line,
            },
        }
    };
    let mut first = StreamSchema::new(&spec, None, policy(Policy::Evolve, Policy::Evolve));
    first
        .absorb(&[row(
            "2026-12-01",
            serde_json::json!([{"action_type": "purchase", "value": "3"}, {"action_type": "link_click", "value": "40"}]),
            1,
        )])
        .unwrap();
    first.finish().unwrap();
    let registry = first.schema;
    let mut names: Vec<&str> = registry.paths[""]
        .fields
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    names.sort();
    assert_eq!(names, ["actions.link_click", "actions.purchase"]);

    let mut second = StreamSchema::new(
        &spec,
        Some(&registry),
        policy(Policy::Evolve, Policy::Evolve),
    );
    second
        .absorb(&[
            row(
                "2026-12-01",
                serde_json::json!([{"action_type": "purchase", "value": "2"}, {"action_type": "link_click", "value": "9"}]),
                1,
            ),
            row(
                "2026-12-02",
                serde_json::json!([{"action_type": "omni_purchase", "value": "2"}, {"action_type": "link_click", "value": "7"}]),
                2,
            ),
        ])
        .unwrap();
    second.finish().unwrap();
    let added = &second.changes[&(ChangeKind::Added, "actions.omni_purchase".to_string())];
    assert!(
        added.detail.contains("in data of 2026-12-02"),
        "{}",
        added.detail
    );
    let rename = &second.changes[&(ChangeKind::LikelyRename, "actions.purchase".to_string())];
    assert!(
        rename.detail.contains("`actions.omni_purchase`"),
        "{}",
        rename.detail
    );
}

/// A property only some events carry, missing from the last days while a new one
/// starts, is no rename: it was never in every record.
#[test]
fn an_optional_property_missing_from_the_last_days_is_no_rename() {
    let mut first = StreamSchema::new(&events(), None, policy(Policy::Evolve, Policy::Evolve));
    first
        .absorb(&[
            event(
                "Charged",
                "2026-12-01",
                serde_json::json!({"Amount": 1.5, "Note": "gift"}),
                1,
            ),
            event(
                "Charged",
                "2026-12-01",
                serde_json::json!({"Amount": 2.5}),
                2,
            ),
        ])
        .unwrap();
    first.finish().unwrap();
    let mut second = StreamSchema::new(
        &events(),
        Some(&first.schema),
        policy(Policy::Evolve, Policy::Evolve),
    );
    second
        .absorb(&[
            event(
                "Charged",
                "2026-12-01",
                serde_json::json!({"Amount": 1.5, "Note": "gift"}),
                1,
            ),
            event(
                "Charged",
                "2026-12-02",
                serde_json::json!({"Amount": 3.5, "Memo": "x"}),
                2,
            ),
        ])
        .unwrap();
    second.finish().unwrap();
    assert!(second
        .changes
        .contains_key(&(ChangeKind::Added, "event_props.Memo [Charged]".to_string())));
    assert!(
        !second
            .changes
            .keys()
            .any(|(k, _)| *k == ChangeKind::LikelyRename),
        "{:?}",
        second.changes.keys()
    );
}
