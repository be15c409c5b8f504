//! The drift engine's decisions, one policy at a time.

use super::*;
use crate::destination::WriteMode;
use crate::typing::Origin;

fn stream(infer: bool) -> StreamSpec {
    StreamSpec {
        name: "orders".into(),
        table: "shop_orders".into(),
        schema: TableSchema::new(vec![Field::new("id", FieldType::Bigint)]),
        infer_columns: infer,
        primary_key: vec!["id".into()],
        partition_column: None,
        write_mode: WriteMode::Append,
        dedupe: Default::default(),
    }
}

fn record(json: &str, line: u64) -> Record {
    let origin = Origin {
        page: "data/orders.ndjson".into(),
        line,
    };
    crate::typing::decode_json_line(json.as_bytes(), origin).unwrap()
}

fn policy(new: Policy, ty: Policy, removed: Policy) -> StreamPolicy {
    StreamPolicy {
        on_new_field: new,
        on_type_change: ty,
        json_on_type_change: ty,
        on_removed_field: removed,
        renames: BTreeMap::new(),
    }
}

fn names(schema: &StreamSchema) -> Vec<&str> {
    schema
        .schema
        .fields
        .iter()
        .map(|f| f.name.as_str())
        .collect()
}

#[test]
fn first_run_evolves_new_keys_before_system_columns_without_reporting() {
    let mut schema = StreamSchema::new(&stream(true), None, StreamPolicy::default());
    // Even a `freeze` policy has nothing to judge against on the first run.
    schema.policy.on_new_field = Policy::Freeze;
    schema
        .absorb(&[record(r#"{"id":1,"amount":2.5,"note":"x"}"#, 1)])
        .unwrap();
    assert_eq!(
        names(&schema),
        ["id", "amount", "note", RUN_ID_COLUMN, LOADED_AT_COLUMN]
    );
    assert_eq!(schema.schema.field("amount").unwrap().ty, FieldType::Double);
    assert_eq!(schema.version, 1);
    assert!(schema.changes.is_empty());
}

#[test]
fn declared_columns_only_when_inference_is_off() {
    let mut schema = StreamSchema::new(&stream(false), None, StreamPolicy::default());
    schema
        .absorb(&[record(r#"{"id":1,"extra":true}"#, 1)])
        .unwrap();
    assert_eq!(names(&schema), ["id", RUN_ID_COLUMN, LOADED_AT_COLUMN]);
    assert_eq!(schema.version, 0);
}

#[test]
fn a_previous_runs_columns_and_widenings_are_kept() {
    let previous = TableSchema::new(vec![
        Field::new("id", FieldType::Double),
        Field::new("amount", FieldType::Double),
        Field::new(RUN_ID_COLUMN, FieldType::Text),
        Field::new(LOADED_AT_COLUMN, FieldType::Timestamp),
    ]);
    let schema = StreamSchema::new(&stream(true), Some(&previous), StreamPolicy::default());
    assert_eq!(
        names(&schema),
        ["id", "amount", RUN_ID_COLUMN, LOADED_AT_COLUMN]
    );
    assert_eq!(schema.schema.field("id").unwrap().ty, FieldType::Double);
}

#[test]
fn new_field_against_a_baseline_follows_the_policy() {
    let baseline = StreamSchema::new(&stream(true), None, StreamPolicy::default()).schema;
    let new_key = [record(r#"{"id":1,"coupon":"X1"}"#, 7)];

    let evolve = policy(Policy::Evolve, Policy::Quarantine, Policy::Evolve);
    let mut schema = StreamSchema::new(&stream(true), Some(&baseline), evolve);
    schema.absorb(&new_key).unwrap();
    assert!(schema.schema.field("coupon").is_some());
    let change = &schema.changes[&(ChangeKind::Added, "coupon".to_string())];
    assert_eq!(change.action, "evolved");
    assert!(change.detail.contains("data/orders.ndjson:7"), "{change}");

    let quarantine = policy(Policy::Quarantine, Policy::Quarantine, Policy::Evolve);
    let mut schema = StreamSchema::new(&stream(true), Some(&baseline), quarantine);
    schema.absorb(&new_key).unwrap();
    assert!(schema.schema.field("coupon").is_none());
    assert!(schema.held_back.contains("coupon"));
    assert_eq!(schema.version, 0);

    let freeze = policy(Policy::Freeze, Policy::Quarantine, Policy::Evolve);
    let mut schema = StreamSchema::new(&stream(true), Some(&baseline), freeze);
    let error = schema.absorb(&new_key).unwrap_err();
    assert!(error.contains("new field `coupon`"), "{error}");
    assert!(error.contains("schema.on_new_field"), "{error}");
}

#[test]
fn a_misfit_widens_quarantines_or_freezes_by_policy() {
    let baseline = StreamSchema::new(&stream(true), None, StreamPolicy::default()).schema;
    let misfit = FieldError {
        column: 0,
        value: Some(serde_json::json!(1.5)),
        message: "not a bigint".into(),
    };

    let evolve = policy(Policy::Evolve, Policy::Evolve, Policy::Evolve);
    let mut schema = StreamSchema::new(&stream(true), Some(&baseline), evolve);
    assert_eq!(schema.misfit(&misfit), Ok(Misfit::Widened));
    assert_eq!(schema.schema.fields[0].ty, FieldType::Double);
    assert_eq!(schema.version, 1);
    assert!(schema
        .changes
        .contains_key(&(ChangeKind::Widened, "id".to_string())));

    let quarantine = policy(Policy::Evolve, Policy::Quarantine, Policy::Evolve);
    let mut schema = StreamSchema::new(&stream(true), Some(&baseline), quarantine);
    assert_eq!(schema.misfit(&misfit), Ok(Misfit::Reject));
    assert_eq!(schema.schema.fields[0].ty, FieldType::Bigint);
    let change = &schema.changes[&(ChangeKind::TypeChanged, "id".to_string())];
    assert_eq!((change.action.as_str(), change.records), ("quarantined", 1));

    let freeze = policy(Policy::Evolve, Policy::Freeze, Policy::Evolve);
    let mut schema = StreamSchema::new(&stream(true), Some(&baseline), freeze);
    let error = schema.misfit(&misfit).unwrap_err();
    assert!(error.contains("schema.on_type_change"), "{error}");

    // Without a baseline a misfit is bad data, not a change.
    let mut schema = StreamSchema::new(&stream(true), None, StreamPolicy::default());
    assert_eq!(schema.misfit(&misfit), Ok(Misfit::Reject));
    assert!(schema.changes.is_empty());
}

#[test]
fn a_field_never_sent_is_reported_with_a_likely_rename() {
    let mut previous = StreamSchema::new(&stream(true), None, StreamPolicy::default());
    previous
        .absorb(&[record(r#"{"id":1,"amount":2}"#, 1)])
        .unwrap();
    let baseline = previous.schema;

    let mut schema = StreamSchema::new(&stream(true), Some(&baseline), StreamPolicy::default());
    schema
        .absorb(&[record(r#"{"id":2,"total":3}"#, 1)])
        .unwrap();
    schema.finish().unwrap();
    let kinds: Vec<(ChangeKind, &str)> = schema
        .changes
        .values()
        .map(|c| (c.kind, c.field.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            (ChangeKind::Added, "total"),
            (ChangeKind::Removed, "amount"),
            (ChangeKind::LikelyRename, "amount"),
        ]
    );
    // The column stays: earlier rows and models still read it.
    assert!(schema.schema.field("amount").is_some());

    let freeze = policy(Policy::Evolve, Policy::Quarantine, Policy::Freeze);
    let mut schema = StreamSchema::new(&stream(true), Some(&baseline), freeze);
    schema.absorb(&[record(r#"{"id":2}"#, 1)]).unwrap();
    let error = schema.finish().unwrap_err();
    assert!(
        error.contains("field `amount` is no longer sent"),
        "{error}"
    );
}

#[test]
fn a_number_arriving_as_text_in_an_inferred_column_is_a_type_change() {
    let mut previous = StreamSchema::new(&stream(true), None, StreamPolicy::default());
    previous
        .absorb(&[record(r#"{"id":1,"items":2}"#, 1)])
        .unwrap();
    let baseline = previous.schema;
    // `id` is declared: its text value is typed as before, not a change.
    let now = [record(r#"{"id":"3","items":"2"}"#, 4)];

    let evolve = policy(Policy::Evolve, Policy::Evolve, Policy::Evolve);
    let mut schema = StreamSchema::new(&stream(true), Some(&baseline), evolve);
    assert_eq!(schema.absorb(&now), Ok(Vec::new()));
    assert_eq!(schema.schema.field("items").unwrap().ty, FieldType::Text);
    let change = &schema.changes[&(ChangeKind::Widened, "items".to_string())];
    assert!(change.detail.starts_with("bigint → text"), "{change}");
    assert_eq!(schema.changes.len(), 1);

    let quarantine = policy(Policy::Evolve, Policy::Quarantine, Policy::Evolve);
    let mut schema = StreamSchema::new(&stream(true), Some(&baseline), quarantine);
    let rejects = schema.absorb(&now).unwrap();
    assert_eq!(rejects.len(), 1);
    assert!(rejects[0].1.contains("`items`"), "{:?}", rejects);

    let freeze = policy(Policy::Evolve, Policy::Freeze, Policy::Evolve);
    let mut schema = StreamSchema::new(&stream(true), Some(&baseline), freeze);
    let error = schema.absorb(&now).unwrap_err();
    assert!(
        error.contains("`items`") && error.contains("data/orders.ndjson:4"),
        "{error}"
    );
}

#[test]
fn renames_keep_whichever_name_the_registry_knows() {
    let mut previous = StreamSchema::new(&stream(true), None, StreamPolicy::default());
    previous
        .absorb(&[record(r#"{"id":1,"Amount":2.5}"#, 1)])
        .unwrap();
    let mut renamed = policy(Policy::Evolve, Policy::Evolve, Policy::Evolve);
    renamed
        .renames
        .insert("amount_value".into(), "Amount".into());
    let schema = StreamSchema::new(&stream(true), Some(&previous.schema), renamed.clone());
    assert_eq!(
        schema.resolve_renames(),
        BTreeMap::from([("Amount".to_string(), "amount_value".to_string())])
    );
    // Knowing neither name: values load as sent until the registry knows one.
    let schema = StreamSchema::new(&stream(true), None, renamed);
    assert!(schema.resolve_renames().is_empty());
}

#[test]
fn fields_some_records_omit_and_declared_fields_never_sent_are_not_removals() {
    let mut declared = stream(true);
    declared
        .schema
        .fields
        .push(Field::new("stop_time", FieldType::Timestamp));
    let mut first = StreamSchema::new(&declared, None, StreamPolicy::default());
    first
        .absorb(&[
            record(r#"{"id":1,"note":"x"}"#, 1),
            record(r#"{"id":2}"#, 2),
        ])
        .unwrap();
    first.finish().unwrap();
    assert_eq!(
        first.schema.presence,
        BTreeMap::from([
            (
                "note".to_string(),
                presence::Presence::Optional { percent: 50 }
            ),
            ("stop_time".to_string(), presence::Presence::Unsent),
        ])
    );
    // A second run whose one record carries neither: nothing to report.
    let mut second = StreamSchema::new(&declared, Some(&first.schema), StreamPolicy::default());
    second.absorb(&[record(r#"{"id":3}"#, 1)]).unwrap();
    second.finish().unwrap();
    assert!(second.changes.is_empty(), "{:?}", second.changes);
    assert_eq!(second.schema.presence, first.schema.presence);
}
