//! The drift engine: one stream's schema as it grows during a run, judged against
//! the version a previous run recorded, by the stream's [`StreamPolicy`].
//!
//! Slices share one [`StreamSchema`] (behind a lock). A new key, a value that does
//! not fit its column, a required field arriving empty or a baseline field never
//! seen are turned into a decision (evolve, quarantine, freeze) and a
//! [`SchemaChange`] for the run record. The engine decides; the slice sink acts on
//! the decision (rebuilds its builders, quarantines the record, fails the slice).

use std::collections::{BTreeMap, BTreeSet};

use arrow::record_batch::RecordBatch;
use serde_json::Value;

use super::{ChangeKind, Policy, SchemaChange, StreamPolicy};
use crate::schema::{infer_type, is_system_column, unify, Field, FieldType, TableSchema};
use crate::schema::{LOADED_AT_COLUMN, RUN_ID_COLUMN};
use crate::source::StreamSpec;
use crate::typing::{FieldError, Record};

/// What to do with a value that did not fit its column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misfit {
    /// The column was widened: type the record again.
    Widened,
    /// Quarantine the record.
    Reject,
}

/// The stream's schema as it grows during a run, and the changes it saw.
#[derive(Debug)]
pub struct StreamSchema {
    /// The columns rows are typed into now: declared, inferred, then sluice's own.
    pub schema: TableSchema,
    /// Bumped whenever a column is added or widened, so slices rebuild their builders.
    pub version: u64,
    /// `infer_columns`: keys the schema lacks become columns (by policy).
    infer: bool,
    pub policy: StreamPolicy,
    /// The schema a previous run recorded; changes are judged against it.
    pub baseline: Option<TableSchema>,
    /// Baseline fields not seen (non-null) in any record of this run yet.
    unseen: BTreeSet<String>,
    /// New fields held back by the `quarantine` policy.
    pub held_back: BTreeSet<String>,
    /// What this run detected, one entry per kind and field.
    pub changes: BTreeMap<(ChangeKind, String), SchemaChange>,
    rows_seen: u64,
    /// Declared columns, and which of them no record of this run filled yet.
    declared: crate::declared::DeclaredColumns,
}

impl StreamSchema {
    /// Declared columns, then columns a previous run added, then sluice's own.
    pub fn new(stream: &StreamSpec, previous: Option<&TableSchema>, policy: StreamPolicy) -> Self {
        let mut fields: Vec<Field> = stream.schema.fields.clone();
        if let Some(previous) = previous {
            for field in &previous.fields {
                match fields.iter_mut().find(|f| f.name == field.name) {
                    // A type a previous run widened stays widened.
                    Some(declared) if declared.ty.widens_to(&field.ty) => declared.ty = field.ty,
                    Some(_) => {}
                    None if !is_system_column(&field.name) => fields.push(field.clone()),
                    None => {}
                }
            }
        }
        fields.push(Field::new(RUN_ID_COLUMN, FieldType::Text));
        fields.push(Field::new(LOADED_AT_COLUMN, FieldType::Timestamp));
        let unseen = previous
            .map(|p| {
                p.fields
                    .iter()
                    .filter(|f| !is_system_column(&f.name))
                    .map(|f| f.name.clone())
                    .collect()
            })
            .unwrap_or_default();
        StreamSchema {
            schema: TableSchema::new(fields),
            version: 0,
            infer: stream.infer_columns,
            policy,
            baseline: previous.cloned(),
            unseen,
            declared: crate::declared::DeclaredColumns::new(&stream.schema),
            held_back: BTreeSet::new(),
            changes: BTreeMap::new(),
            rows_seen: 0,
        }
    }

    /// Adds `records` to the change `(kind, field)`, recording it on first sight.
    pub fn note(
        &mut self,
        kind: ChangeKind,
        field: &str,
        detail: impl FnOnce() -> String,
        action: &str,
        records: u64,
    ) {
        self.changes
            .entry((kind, field.to_string()))
            .and_modify(|c| c.records += records)
            .or_insert_with(|| SchemaChange {
                kind,
                field: field.to_string(),
                detail: detail(),
                action: action.to_string(),
                records,
            });
    }

    /// Handles keys seen in `records` that the schema lacks, by policy. `Err` = frozen.
    pub fn absorb(&mut self, records: &[Record]) -> Result<(), String> {
        self.rows_seen += records.len() as u64;
        self.declared.note_values(records);
        if !self.unseen.is_empty() {
            for record in records {
                self.unseen
                    .retain(|name| record.fields.get(name).is_none_or(Value::is_null));
                if self.unseen.is_empty() {
                    break;
                }
            }
        }
        if !self.infer {
            return Ok(());
        }
        let mut new: BTreeMap<&str, (Option<FieldType>, u64, &Record)> = BTreeMap::new();
        let mut order: Vec<&str> = Vec::new();
        for record in records {
            for (key, value) in &record.fields {
                if self.schema.field(key).is_some() || self.held_back.contains(key) {
                    continue;
                }
                let entry = new.entry(key.as_str()).or_insert_with(|| {
                    order.push(key.as_str());
                    (None, 0, record)
                });
                entry.1 += 1;
                if let Some(ty) = infer_type(value) {
                    entry.0 = Some(match entry.0 {
                        Some(seen) => unify(seen, ty),
                        None => ty,
                    });
                }
            }
        }
        if order.is_empty() {
            return Ok(());
        }
        let policy = if self.baseline.is_some() {
            self.policy.on_new_field
        } else {
            Policy::Evolve
        };
        match policy {
            Policy::Freeze => {
                let key = order[0];
                let (ty, _, first) = &new[key];
                return Err(format!(
                    "new field `{key}` ({}) first seen at {}; schema policy `freeze` holds this stream (set `schema.on_new_field` to evolve or quarantine, then `sluice replay`)",
                    ty.unwrap_or(FieldType::Text).name(),
                    first.origin
                ));
            }
            Policy::Quarantine => {
                for key in order {
                    let (ty, _, first) = &new[key];
                    let detail = format!(
                        "{} first seen at {}",
                        ty.unwrap_or(FieldType::Text).name(),
                        first.origin
                    );
                    self.held_back.insert(key.to_string());
                    self.note(ChangeKind::Added, key, || detail, "quarantined", 0);
                }
            }
            Policy::Evolve => {
                // Keep sluice's columns last.
                let system: Vec<Field> = self.schema.fields.split_off(self.schema.fields.len() - 2);
                for key in &order {
                    let (ty, count, first) = &new[key];
                    let ty = ty.unwrap_or(FieldType::Text);
                    self.schema.fields.push(Field::new(*key, ty));
                    if self.baseline.is_some() {
                        let detail = format!("{} first seen at {}", ty.name(), first.origin);
                        self.note(ChangeKind::Added, key, || detail, "evolved", *count);
                    }
                }
                self.schema.fields.extend(system);
                self.version += 1;
            }
        }
        Ok(())
    }

    /// `absorb` for lines a [`LineTyper`](crate::line_typer::LineTyper) typed: every key was a known column, so
    /// only the run's tallies move (rows seen, baseline fields seen non-null).
    pub fn absorb_batch(&mut self, batch: &RecordBatch) {
        self.rows_seen += batch.num_rows() as u64;
        self.declared.note_batch(batch);
        self.unseen.retain(|name| {
            batch
                .column_by_name(name)
                .is_none_or(|c| c.null_count() == c.len())
        });
    }

    /// Widens `column` to hold `value` if the policy allows and a lossless widening exists.
    pub fn try_widen(&mut self, column: usize, value: &Value) -> bool {
        let Some(field) = self.schema.fields.get(column) else {
            return false;
        };
        let Some(seen) = infer_type(value) else {
            return false;
        };
        let wider = unify(field.ty, seen);
        if wider == field.ty || !field.ty.widens_to(&wider) {
            return false;
        }
        let (name, from) = (field.name.clone(), field.ty);
        self.schema.fields[column].ty = wider;
        self.version += 1;
        self.note(
            ChangeKind::Widened,
            &name,
            || format!("{} → {}", from.name(), wider.name()),
            "evolved",
            1,
        );
        true
    }

    /// A value did not fit its column: widen, quarantine or freeze, by policy.
    /// `Err` = frozen, with the message for the user.
    pub fn misfit(&mut self, error: &FieldError) -> Result<Misfit, String> {
        let Some(value) = &error.value else {
            // A required field arrived missing or null: the source's nullability changed.
            if self.baseline.is_some() {
                let field = self.schema.fields[error.column].name.clone();
                self.note(
                    ChangeKind::NullabilityChanged,
                    &field,
                    || "a required field arrived empty".into(),
                    "quarantined",
                    1,
                );
            }
            return Ok(Misfit::Reject);
        };
        if self.baseline.is_none() {
            // No earlier shape to compare with: this is bad data, not a schema change.
            return Ok(Misfit::Reject);
        }
        let field = self.schema.fields[error.column].name.clone();
        let ty = self.schema.fields[error.column].ty;
        let seen = infer_type(value)
            .map(|t| t.name())
            .unwrap_or_else(|| "null".into());
        let policy = self.policy.on_type_change;
        match policy {
            Policy::Evolve if self.try_widen(error.column, value) => Ok(Misfit::Widened),
            Policy::Freeze => Err(format!(
                "field `{field}` ({}) received {seen} {value}; schema policy `freeze` holds this stream (`schema.on_type_change`)",
                ty.name()
            )),
            _ => {
                self.note(ChangeKind::TypeChanged, &field, || format!("{} column received {seen}", ty.name()), "quarantined", 1);
                Ok(Misfit::Reject)
            }
        }
    }

    /// A primary key field arrived empty in a record about to be quarantined.
    pub fn note_missing_key(&mut self, key: &str) {
        if self.baseline.is_some() {
            self.note(
                ChangeKind::NullabilityChanged,
                key,
                || "a primary key field arrived empty".into(),
                "quarantined",
                1,
            );
        }
    }

    /// A declared column no record filled beside an input key of nearly its name.
    pub fn declared_typos(&self) -> Result<(), String> {
        self.declared.check_typos(&self.schema, self.rows_seen)
    }

    /// Fields that disappeared and likely renames, once every slice is read.
    pub fn finish(&mut self) -> Result<(), String> {
        if self.baseline.is_none() || self.rows_seen == 0 || !self.infer {
            return Ok(());
        }
        let removed: Vec<String> = self.unseen.iter().cloned().collect();
        for name in &removed {
            let ty = self
                .baseline
                .as_ref()
                .and_then(|b| b.field(name))
                .map(|f| f.ty);
            if self.policy.on_removed_field == Policy::Freeze {
                return Err(format!(
                    "field `{name}` is no longer sent (absent from all {} records); schema policy `freeze` holds this stream (`schema.on_removed_field`)",
                    self.rows_seen
                ));
            }
            let rows = self.rows_seen;
            self.note(
                ChangeKind::Removed,
                name,
                || format!("absent from all {rows} records; column kept (NULL)"),
                "reported",
                0,
            );
            let added: Vec<(String, Option<FieldType>)> = self
                .changes
                .values()
                .filter(|c| c.kind == ChangeKind::Added)
                .map(|c| (c.field.clone(), self.schema.field(&c.field).map(|f| f.ty)))
                .collect();
            for (new_name, new_ty) in added {
                let compatible = match (ty, new_ty) {
                    (Some(a), Some(b)) => a.widens_to(&b) || b.widens_to(&a),
                    _ => true,
                };
                if compatible {
                    let detail = format!("`{name}` → `{new_name}`? map it with schema.renames to keep downstream models working");
                    self.note(ChangeKind::LikelyRename, name, || detail, "reported", 0);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
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
}
