//! The drift engine: one stream's schema as it grows during a run, judged against
//! the version a previous run recorded, by the stream's [`StreamPolicy`].
//!
//! Slices share one [`StreamSchema`] (behind a lock). A new key, a value that does
//! not fit its column, a required field arriving empty or a baseline field never
//! seen are turned into a decision (evolve, quarantine, freeze) and a
//! [`SchemaChange`] for the run record. The engine decides; the slice sink acts on
//! the decision (rebuilds its builders, quarantines the record, fails the slice).
//! Fields inside JSON columns go through one engine like this per scope
//! (`super::json_paths`), so they are judged by the same rules.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use arrow::record_batch::RecordBatch;
use serde_json::Value;

mod renames;

use super::json_paths::PathEngines;
use super::presence::{self, PresenceTally};
use super::{ChangeKind, Policy, SchemaChange, StreamPolicy};
use crate::schema::{infer_type, is_system_column, unify, Field, FieldType, TableSchema};
use crate::schema::{LOADED_AT_COLUMN, RUN_ID_COLUMN};
use crate::source::StreamSpec;
use crate::typing::{FieldError, Record};
use renames::similar;

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
    /// How many records of this run carried each field (for removed fields).
    tally: PresenceTally,
    /// Columns the source declares; the others were inferred and are typed by
    /// what the source sends, so a value of another kind is a type change.
    declared_names: BTreeSet<String>,
    /// Where a record's data day is (for the day a field first appeared).
    partition_column: Option<String>,
    /// New fields held back by the `quarantine` policy.
    pub held_back: BTreeSet<String>,
    /// What this run detected, one entry per kind and field.
    pub changes: BTreeMap<(ChangeKind, String), SchemaChange>,
    rows_seen: u64,
    /// Declared columns, and which of them no record of this run filled yet.
    declared: crate::declared::DeclaredColumns,
    /// Fields inside JSON columns, one engine like this one per scope.
    paths: PathEngines,
    /// The latest data day on which each field arrived (for renames judged by day).
    last_day: HashMap<String, String>,
    /// Columns this run widened, and their type before (for the day they changed).
    widened_from: HashMap<String, FieldType>,
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
        let mut schema = TableSchema::new(fields);
        if let Some(previous) = previous {
            schema.presence = previous.presence.clone();
            schema.first_seen = previous.first_seen.clone();
            schema.retyped_on = previous.retyped_on.clone();
            schema.renamed = previous.renamed.clone();
            schema.paths = previous.paths.clone();
        }
        schema.json_paths = stream.schema.json_paths.clone();
        let paths = PathEngines::new(
            stream.schema.json_paths.clone(),
            stream.partition_column.clone(),
            StreamPolicy {
                on_type_change: policy.json_on_type_change,
                ..policy.clone()
            },
            schema.paths.clone(),
        );
        StreamSchema {
            schema,
            version: 0,
            infer: stream.infer_columns,
            policy,
            baseline: previous.cloned(),
            tally: PresenceTally::default(),
            declared_names: stream
                .schema
                .fields
                .iter()
                .map(|f| f.name.clone())
                .collect(),
            declared: crate::declared::DeclaredColumns::new(&stream.schema),
            partition_column: stream.partition_column.clone(),
            held_back: BTreeSet::new(),
            changes: BTreeMap::new(),
            rows_seen: 0,
            paths,
            last_day: HashMap::new(),
            widened_from: HashMap::new(),
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

    /// The earliest data day among `records` carrying `key` (pages need not be in
    /// date order).
    fn earliest_day(&self, records: &[Record], key: &str) -> Option<String> {
        records
            .iter()
            .filter(|r| r.fields.get(key).is_some_and(|v| !v.is_null()))
            .filter_map(|r| self.day_of(r))
            .min()
    }

    /// The data day of a record, for the registry's `first_seen`.
    fn day_of(&self, record: &Record) -> Option<String> {
        let value = record.fields.get(self.partition_column.as_deref()?)?;
        Some(match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }

    /// Handles keys seen in `records` that the schema lacks, and values of an
    /// inferred column that now arrive as another kind (a number as text), by
    /// policy. `Err` = frozen; `Ok` lists the records to quarantine (index, reason).
    pub fn absorb(&mut self, records: &[Record]) -> Result<Vec<(usize, String)>, String> {
        self.rows_seen += records.len() as u64;
        self.declared.note_values(records);
        for record in records {
            self.tally.record(&record.fields);
        }
        let mut rejects = self.paths.absorb(records)?;
        if self.infer {
            self.note_days(records);
            rejects.extend(self.absorb_kind_changes(records)?);
            self.absorb_new_fields(records)?;
        }
        // One reason per record, in record order (the sink walks them in step).
        rejects.sort_by_key(|(index, _)| *index);
        rejects.dedup_by_key(|(index, _)| *index);
        Ok(rejects)
    }

    /// The latest data day each field arrived on, once there is a baseline to
    /// judge renames against.
    fn note_days(&mut self, records: &[Record]) {
        if self.baseline.is_none() {
            return;
        }
        for record in records {
            let Some(day) = self.day_of(record) else {
                continue;
            };
            for (key, value) in &record.fields {
                if value.is_null() {
                    continue;
                }
                match self.last_day.get_mut(key) {
                    Some(last) if *last < day => *last = day.clone(),
                    Some(_) => {}
                    None => {
                        self.last_day.insert(key.clone(), day.clone());
                    }
                }
            }
        }
    }

    /// Whether no field (column or JSON field) is held back by the `quarantine` policy.
    pub fn holds_back_nothing(&self) -> bool {
        self.held_back.is_empty() && self.paths.holds_back_nothing()
    }

    /// A field of `record` held back by the `quarantine` policy (a column, or a
    /// field inside a JSON column), as the run reports it.
    pub fn held_back_in(&self, record: &Record) -> Option<String> {
        self.held_back
            .iter()
            .find(|f| record.fields.contains_key(f.as_str()))
            .cloned()
            .or_else(|| self.paths.held_back(record))
    }

    /// Inferred scalar columns were typed by what the source sent; a value of a
    /// kind that does not fit that type (`Items`: 2 before, "2" now) is a type
    /// change even where it could be coerced.
    fn absorb_kind_changes(&mut self, records: &[Record]) -> Result<Vec<(usize, String)>, String> {
        let mut rejects = Vec::new();
        if self.baseline.is_none() {
            return Ok(rejects);
        }
        for (index, record) in records.iter().enumerate() {
            for (key, value) in &record.fields {
                if self.declared_names.contains(key) {
                    continue;
                }
                let Some(column) = self.schema.index_of(key) else {
                    continue;
                };
                let ty = self.schema.fields[column].ty;
                if matches!(ty, FieldType::Text | FieldType::Json) {
                    continue;
                }
                let Some(seen) = infer_type(value) else {
                    continue;
                };
                if let Some(before) = self.widened_from.get(key) {
                    // Widened earlier in this run: the earliest day of the new kind.
                    if !seen.widens_to(before) {
                        if let Some(day) = self.day_of(record) {
                            let on = self
                                .schema
                                .retyped_on
                                .entry(key.clone())
                                .or_insert(day.clone());
                            if day < *on {
                                *on = day;
                            }
                        }
                    }
                }
                if seen.widens_to(&ty) {
                    continue;
                }
                let day = self
                    .day_of(record)
                    .map(|d| format!(" in data of {d}"))
                    .unwrap_or_default();
                match self.policy.on_type_change {
                    Policy::Freeze => {
                        return Err(format!(
                            "field `{key}` ({}) now arrives as {} ({value}) first seen at {}{day}; schema policy `freeze` holds this stream (`schema.on_type_change`)",
                            ty.name(),
                            seen.name(),
                            record.origin
                        ))
                    }
                    Policy::Evolve if ty.widens_to(&unify(ty, seen)) => {
                        let wider = unify(ty, seen);
                        self.schema.fields[column].ty = wider;
                        self.version += 1;
                        self.widened_from.insert(key.clone(), ty);
                        if let Some(day) = self.day_of(record) {
                            self.schema.retyped_on.insert(key.clone(), day);
                        }
                        let origin = record.origin.to_string();
                        self.note(
                            ChangeKind::Widened,
                            key,
                            || format!("{} → {} (values now arrive as {}) first seen at {origin}{day}", ty.name(), wider.name(), seen.name()),
                            "evolved",
                            1,
                        );
                    }
                    _ => {
                        self.note(
                            ChangeKind::TypeChanged,
                            key,
                            || format!("{} column now receives {}{day}", ty.name(), seen.name()),
                            "quarantined",
                            1,
                        );
                        rejects.push((
                            index,
                            format!("field `{key}` ({}) arrived as {} {value} (schema.on_type_change)", ty.name(), seen.name()),
                        ));
                        break;
                    }
                }
            }
        }
        Ok(rejects)
    }

    fn absorb_new_fields(&mut self, records: &[Record]) -> Result<(), String> {
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
                    "new field `{key}` ({}) first seen at {}{}; schema policy `freeze` holds this stream (set `schema.on_new_field` to evolve or quarantine, then `sluice replay`)",
                    ty.unwrap_or(FieldType::Text).name(),
                    first.origin,
                    self.day_of(first).map(|d| format!(" in data of {d}")).unwrap_or_default()
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
                let mut added = Vec::with_capacity(order.len());
                for key in &order {
                    let (ty, count, first) = &new[key];
                    let ty = ty.unwrap_or(FieldType::Text);
                    added.push(Field::new(*key, ty));
                    if self.baseline.is_some() {
                        let day = self.earliest_day(records, key);
                        let detail = format!(
                            "{} first seen at {}{}",
                            ty.name(),
                            first.origin,
                            day.as_deref()
                                .map(|d| format!(" in data of {d}"))
                                .unwrap_or_default()
                        );
                        if let Some(day) = day {
                            self.schema.first_seen.insert(key.to_string(), day);
                        }
                        self.note(ChangeKind::Added, key, || detail, "evolved", *count);
                    }
                }
                self.add_columns(added);
            }
        }
        Ok(())
    }

    /// `absorb` for lines a [`LineTyper`](crate::line_typer::LineTyper) typed: every key was a known column, so
    /// only the run's tallies move (rows seen, fields carried).
    pub fn absorb_batch(&mut self, batch: &RecordBatch) {
        self.rows_seen += batch.num_rows() as u64;
        self.declared.note_batch(batch);
        self.tally.batch(batch);
    }

    /// Takes in the columns of a file an earlier attempt staged for a slice this run
    /// reuses: the columns and wider types that attempt inferred from rows this run
    /// never reads again. Without them the publish would drop the columns and cast
    /// the values back (1.5 to 1). The earlier attempt judged them by the same policy.
    pub fn adopt_staged(&mut self, staged: &TableSchema, origin: &str) {
        let mut added = Vec::new();
        for field in staged.fields.iter().filter(|f| !is_system_column(&f.name)) {
            match self.schema.fields.iter_mut().find(|f| f.name == field.name) {
                Some(known) => {
                    if known.ty != field.ty && known.ty.widens_to(&field.ty) {
                        let from = known.ty;
                        known.ty = field.ty;
                        self.version += 1;
                        self.widened_from.entry(field.name.clone()).or_insert(from);
                        self.note(
                            ChangeKind::Widened,
                            &field.name,
                            || format!("{} → {} (in {origin})", from.name(), field.ty.name()),
                            "evolved",
                            1,
                        );
                    }
                }
                None => added.push(Field::new(&field.name, field.ty)),
            }
        }
        if added.is_empty() {
            return;
        }
        if self.baseline.is_some() {
            for field in &added {
                let detail = format!("{} first seen in {origin}", field.ty.name());
                self.note(ChangeKind::Added, &field.name, || detail, "evolved", 0);
            }
        }
        self.add_columns(added);
    }

    /// Adds new columns before sluice's own two (which stay last) and bumps the version.
    fn add_columns(&mut self, added: Vec<Field>) {
        let system: Vec<Field> = self.schema.fields.split_off(self.schema.fields.len() - 2);
        self.schema.fields.extend(added);
        self.schema.fields.extend(system);
        self.version += 1;
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

    /// Fields that disappeared and likely renames, once every slice is read; the
    /// registry learns which fields only some records carry (see [`super::presence`]).
    pub fn finish(&mut self) -> Result<(), String> {
        if self.rows_seen == 0 {
            return Ok(());
        }
        for change in self.paths.finish()? {
            // The sink counted the records it quarantined under the same label.
            match self.changes.entry((change.kind, change.field.clone())) {
                std::collections::btree_map::Entry::Occupied(mut known) => {
                    let known = known.get_mut();
                    known.records += change.records;
                    if known.detail.is_empty() {
                        known.detail = change.detail;
                    }
                }
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert(change);
                }
            }
        }
        self.schema.paths = self.paths.registry();
        let report = self.baseline.is_some() && self.infer;
        let mut removed = Vec::new();
        let mut learned = BTreeMap::new();
        for field in self
            .schema
            .fields
            .iter()
            .filter(|f| !is_system_column(&f.name))
        {
            let name = &field.name;
            let known = self.schema.presence.get(name).copied();
            let in_baseline = self
                .baseline
                .as_ref()
                .is_some_and(|b| b.field(name).is_some());
            match self.tally.judge(name, known, in_baseline) {
                presence::Verdict::Learned(Some(p)) => {
                    learned.insert(name.clone(), p);
                }
                presence::Verdict::Learned(None) => {}
                presence::Verdict::Removed { detail } => {
                    if let Some(p) = known {
                        learned.insert(name.clone(), p);
                    }
                    if report {
                        removed.push((name.clone(), field.ty, detail));
                    }
                }
            }
        }
        self.schema.presence = learned;
        for (name, ty, detail) in removed {
            if self.policy.on_removed_field == Policy::Freeze {
                return Err(format!(
                    "field `{name}` is no longer sent ({detail}); schema policy `freeze` holds this stream (`schema.on_removed_field`)"
                ));
            }
            self.note(
                ChangeKind::Removed,
                &name,
                || format!("{detail}; column kept (NULL)"),
                "reported",
                0,
            );
            let added: Vec<(String, Option<FieldType>)> = self
                .changes
                .values()
                .filter(|c| c.kind == ChangeKind::Added)
                .map(|c| (c.field.clone(), self.schema.field(&c.field).map(|f| f.ty)))
                .collect();
            // The same type first, then a similar one: one rename per field.
            let same = added.iter().find(|(_, b)| *b == Some(ty));
            let like = || added.iter().find(|(_, b)| b.is_none_or(|b| similar(ty, b)));
            if let Some((new_name, _)) = same.or_else(like) {
                let day = self.schema.first_seen.get(new_name).cloned();
                self.note_rename(&name, new_name, day);
            }
        }
        if report {
            self.renames_by_day();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
