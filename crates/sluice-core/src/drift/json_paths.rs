//! Fields inside JSON columns, judged like columns.
//!
//! A source that keeps a record's properties in one JSON column (CleverTap's
//! `event_props`; Facebook's `actions`, a list keyed by `action_type`) declares
//! it in its schema ([`JsonPaths`]). Each record's keys
//! of that column become a *view* record (`event_props.Amount`, …, plus the
//! record's data day), and the views of each scope (each event name: `Charged`
//! has its own properties) go through their own [`StreamSchema`] — the same
//! engine, policies and registry knowledge as the table's columns. So a
//! property that is added, re-typed, stops arriving or looks renamed is reported,
//! recorded with its day, and frozen or quarantined by the stream's policy; the
//! JSON column itself is loaded unchanged.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{SchemaChange, StreamPolicy, StreamSchema};
use crate::destination::WriteMode;
use crate::schema::{is_system_column, path_label, Field, FieldType, JsonPaths, TableSchema};
use crate::source::StreamSpec;
use crate::typing::Record;

/// One engine per scope, created when the scope is first seen in a run.
#[derive(Debug)]
pub(super) struct PathEngines {
    declared: Vec<JsonPaths>,
    partition_column: Option<String>,
    policy: StreamPolicy,
    /// What the registry knew per scope before this run.
    previous: BTreeMap<String, TableSchema>,
    engines: BTreeMap<String, StreamSchema>,
}

impl PathEngines {
    pub(super) fn new(
        declared: Vec<JsonPaths>,
        partition_column: Option<String>,
        policy: StreamPolicy,
        previous: BTreeMap<String, TableSchema>,
    ) -> Self {
        PathEngines {
            declared,
            partition_column,
            policy,
            previous,
            engines: BTreeMap::new(),
        }
    }

    /// Whether the registry knows `name` (`event_props.Amount`) in any scope.
    pub(super) fn knows(&self, name: &str) -> bool {
        self.previous.values().any(|s| s.field(name).is_some())
    }

    /// The scope of a record for one declaration (`""` when unscoped).
    fn scope(&self, decl: &JsonPaths, record: &Map<String, Value>) -> String {
        match decl.scope_column.as_deref().and_then(|c| record.get(c)) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        }
    }

    /// The record's JSON-column keys as fields (`column.key`), per scope, with
    /// the record's partition value so the engine knows the data day.
    fn views(&self, record: &Record) -> BTreeMap<String, Record> {
        let mut views: BTreeMap<String, Record> = BTreeMap::new();
        for decl in &self.declared {
            let fields: Vec<(String, &Value)> =
                match (record.fields.get(&decl.column), &decl.element_key) {
                    (Some(Value::Object(object)), _) => {
                        object.iter().map(|(k, v)| (k.clone(), v)).collect()
                    }
                    // `[{action_type: purchase, value: "3"}, …]`: `actions.purchase` = "3".
                    (Some(Value::Array(items)), Some(key)) => items
                        .iter()
                        .filter_map(|item| {
                            let name = match item.get(key)? {
                                Value::String(s) => s.clone(),
                                other => other.to_string(),
                            };
                            Some((name, item.get("value").unwrap_or(item)))
                        })
                        .collect(),
                    _ => continue,
                };
            let view = views
                .entry(self.scope(decl, &record.fields))
                .or_insert_with(|| {
                    let mut fields = Map::new();
                    if let Some(column) = &self.partition_column {
                        if let Some(day) = record.fields.get(column) {
                            fields.insert(column.clone(), day.clone());
                        }
                    }
                    Record {
                        fields,
                        origin: record.origin.clone(),
                    }
                });
            for (key, value) in fields {
                view.fields
                    .insert(format!("{}.{key}", decl.column), value.clone());
            }
        }
        views
    }

    fn engine(&mut self, scope: &str) -> &mut StreamSchema {
        if !self.engines.contains_key(scope) {
            let declared = self
                .partition_column
                .iter()
                .map(|c| Field::new(c, FieldType::Date))
                .collect();
            let spec = StreamSpec {
                name: scope.to_string(),
                table: String::new(),
                schema: TableSchema::new(declared),
                infer_columns: true,
                primary_key: Vec::new(),
                partition_column: self.partition_column.clone(),
                write_mode: WriteMode::Append,
                dedupe: Default::default(),
            };
            let engine = StreamSchema::new(&spec, self.previous.get(scope), self.policy.clone());
            self.engines.insert(scope.to_string(), engine);
        }
        self.engines.get_mut(scope).expect("inserted above")
    }

    /// Judges the JSON-column fields of `records`. `Err` = frozen; `Ok` lists the
    /// records to quarantine (index into `records`, reason).
    pub(super) fn absorb(&mut self, records: &[Record]) -> Result<Vec<(usize, String)>, String> {
        if self.declared.is_empty() {
            return Ok(Vec::new());
        }
        let mut by_scope: BTreeMap<String, (Vec<usize>, Vec<Record>)> = BTreeMap::new();
        for (index, record) in records.iter().enumerate() {
            for (scope, view) in self.views(record) {
                let (indices, views) = by_scope.entry(scope).or_default();
                indices.push(index);
                views.push(view);
            }
        }
        let mut rejects = Vec::new();
        for (scope, (indices, views)) in by_scope {
            let engine = self.engine(&scope);
            let scoped = engine.absorb(&views).map_err(|m| in_scope(&scope, m))?;
            rejects.extend(
                scoped
                    .into_iter()
                    .map(|(i, reason)| (indices[i], in_scope(&scope, reason))),
            );
        }
        Ok(rejects)
    }

    pub(super) fn holds_back_nothing(&self) -> bool {
        self.engines.values().all(|e| e.held_back.is_empty())
    }

    /// A field of `record`'s JSON columns that the `quarantine` policy holds back.
    pub(super) fn held_back(&self, record: &Record) -> Option<String> {
        self.views(record).into_iter().find_map(|(scope, view)| {
            let engine = self.engines.get(&scope)?;
            engine
                .held_back
                .iter()
                .find(|f| view.fields.contains_key(f.as_str()))
                .map(|f| path_label(&scope, f))
        })
    }

    /// Removed fields and likely renames per scope, once every slice is read:
    /// the changes, labelled with their scope. `Err` = frozen.
    pub(super) fn finish(&mut self) -> Result<Vec<SchemaChange>, String> {
        let mut changes = Vec::new();
        for (scope, engine) in &mut self.engines {
            engine.finish().map_err(|m| in_scope(scope, m))?;
            changes.extend(engine.changes.values().map(|c| SchemaChange {
                field: path_label(scope, &c.field),
                ..c.clone()
            }));
        }
        Ok(changes)
    }

    /// What the registry records: every scope known before, updated by this run's.
    pub(super) fn registry(&self) -> BTreeMap<String, TableSchema> {
        let mut paths = self.previous.clone();
        for (scope, engine) in &self.engines {
            paths.insert(scope.clone(), self.strip(&engine.schema));
        }
        paths
    }

    /// A scope's schema without the columns the engine needs but the scope does
    /// not have (the partition day, sluice's own).
    fn strip(&self, schema: &TableSchema) -> TableSchema {
        let own =
            |name: &str| is_system_column(name) || Some(name) == self.partition_column.as_deref();
        let mut kept = schema.clone();
        kept.fields.retain(|f| !own(f.name.as_str()));
        kept.presence.retain(|name, _| !own(name.as_str()));
        kept.first_seen.retain(|name, _| !own(name.as_str()));
        kept
    }
}

fn in_scope(scope: &str, message: String) -> String {
    if scope.is_empty() {
        message
    } else {
        format!("`{scope}`: {message}")
    }
}

#[cfg(test)]
mod tests;
