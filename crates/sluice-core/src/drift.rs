//! Source schema changes: the declared policy, the changes a run detected, and
//! diffs between recorded schema versions. The engine that applies the policy to
//! one stream during a run is [`StreamSchema`] (in `drift/stream_schema.rs`).
//!
//! A change is only judged against a *baseline*: the schema version a previous
//! run recorded. On a stream's first run every field is simply new.

pub mod fold;
mod json_paths;
pub mod presence;

use std::collections::BTreeMap;

use globset::Glob;
use serde::{Deserialize, Serialize};

use crate::schema::TableSchema;

mod stream_schema;
pub use stream_schema::{Misfit, StreamSchema};

/// What to do when the source's shape changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Add the column / widen the type, in D1 and the destination (ALTER TABLE in the load transaction).
    Evolve,
    /// Fail the stream with a precise report; raw pages are kept so the run can be replayed after a decision.
    Freeze,
    /// Load the records that fit; quarantine those that carry the change, with the raw record.
    Quarantine,
}

/// Policy overrides for the streams a glob matches (`app.*`, `facebook.insights`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyOverride {
    #[serde(default)]
    pub on_new_field: Option<Policy>,
    #[serde(default)]
    pub on_type_change: Option<Policy>,
    #[serde(default)]
    pub on_removed_field: Option<Policy>,
}

/// The `schema:` section of pipeline.yaml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaConfig {
    /// A field the baseline schema does not have (default: evolve).
    #[serde(default = "evolve")]
    pub on_new_field: Policy,
    /// A value that does not fit its column's type (default: quarantine; `evolve` widens when possible).
    /// Inside JSON columns (`event_props`) the default is to report: another type is still
    /// valid JSON and loads unchanged, and apps often send one property as a number from
    /// one platform and as a string from another. Set it explicitly (here or per stream)
    /// to freeze or quarantine on property type changes too.
    #[serde(default)]
    pub on_type_change: Option<Policy>,
    /// A baseline field absent from every record of a run (default: evolve = keep the column, report it).
    #[serde(default = "evolve")]
    pub on_removed_field: Policy,
    /// Per source or stream overrides, by glob on `source.stream`.
    #[serde(default)]
    pub streams: BTreeMap<String, PolicyOverride>,
    /// Source-side renames, per `source.stream`: `{old: new}` = the source now sends
    /// `new` where it used to send `old`; values keep loading into column `old`, so
    /// D1 and every model downstream keep working.
    #[serde(default)]
    pub renames: BTreeMap<String, BTreeMap<String, String>>,
}

fn evolve() -> Policy {
    Policy::Evolve
}

impl Default for SchemaConfig {
    fn default() -> Self {
        SchemaConfig {
            on_new_field: Policy::Evolve,
            on_type_change: None,
            on_removed_field: Policy::Evolve,
            streams: BTreeMap::new(),
            renames: BTreeMap::new(),
        }
    }
}

/// The policies that apply to one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPolicy {
    pub on_new_field: Policy,
    pub on_type_change: Policy,
    /// `on_type_change` for fields inside JSON columns: the explicitly configured policy,
    /// else `evolve` (report and record the new type; the JSON loads unchanged).
    pub json_on_type_change: Policy,
    pub on_removed_field: Policy,
    /// old field (the column kept) → the new name the source sends.
    pub renames: BTreeMap<String, String>,
}

impl Default for StreamPolicy {
    fn default() -> Self {
        SchemaConfig::default().for_stream("")
    }
}

impl SchemaConfig {
    /// Resolves the policies of `task` (`source.stream`); later matching overrides win.
    pub fn for_stream(&self, task: &str) -> StreamPolicy {
        let mut explicit_type_change = self.on_type_change;
        let mut policy = StreamPolicy {
            on_new_field: self.on_new_field,
            on_type_change: self.on_type_change.unwrap_or(Policy::Quarantine),
            json_on_type_change: Policy::Evolve,
            on_removed_field: self.on_removed_field,
            renames: self.renames.get(task).cloned().unwrap_or_default(),
        };
        let source = task.split('.').next().unwrap_or(task);
        for (pattern, o) in &self.streams {
            let matches = Glob::new(pattern)
                .map(|g| {
                    let m = g.compile_matcher();
                    m.is_match(task) || m.is_match(source)
                })
                .unwrap_or(false);
            if matches {
                policy.on_new_field = o.on_new_field.unwrap_or(policy.on_new_field);
                policy.on_type_change = o.on_type_change.unwrap_or(policy.on_type_change);
                explicit_type_change = o.on_type_change.or(explicit_type_change);
                policy.on_removed_field = o.on_removed_field.unwrap_or(policy.on_removed_field);
            }
        }
        policy.json_on_type_change = explicit_type_change.unwrap_or(Policy::Evolve);
        policy
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Added,
    Removed,
    /// A value arrived that the column's type cannot hold.
    TypeChanged,
    /// The column's type was widened to hold new values (bigint → double → text, …).
    Widened,
    NullabilityChanged,
    /// A field disappeared and one with a compatible type appeared in the same run.
    LikelyRename,
}

/// One detected change, aggregated over a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaChange {
    pub kind: ChangeKind,
    pub field: String,
    /// Human detail: types, the new name of a rename, the first record that showed it.
    pub detail: String,
    /// What sluice did: `evolved`, `quarantined`, `frozen`, `reported`.
    pub action: String,
    /// Records that carried the change.
    pub records: u64,
}

impl std::fmt::Display for SchemaChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            ChangeKind::Added => "new field",
            ChangeKind::Removed => "field no longer sent",
            ChangeKind::TypeChanged => "type change",
            ChangeKind::Widened => "type widened",
            ChangeKind::NullabilityChanged => "nullability change",
            ChangeKind::LikelyRename => "likely rename",
        };
        write!(
            f,
            "{kind} `{}`: {} [{}",
            self.field, self.detail, self.action
        )?;
        if self.records > 0 {
            write!(f, ", {} records", self.records)?;
        }
        write!(f, "]")
    }
}

/// Moves the values a source sends under a new name to the name kept (`renames`
/// resolved by [`StreamSchema::resolve_renames`], kept → sent). A name inside a
/// JSON column (`event_props.amount_value`) is moved within that column.
pub fn apply_renames(
    renames: &BTreeMap<String, String>,
    fields: &mut serde_json::Map<String, serde_json::Value>,
) {
    for (kept, sent) in renames {
        if let Some(value) = fields.remove(sent) {
            fields.insert(kept.clone(), value);
            continue;
        }
        let (Some((column, sent_key)), Some((kept_column, kept_key))) =
            (sent.split_once('.'), kept.split_once('.'))
        else {
            continue;
        };
        if column != kept_column {
            continue;
        }
        if let Some(serde_json::Value::Object(object)) = fields.get_mut(column) {
            if let Some(value) = object.remove(sent_key) {
                object.insert(kept_key.to_string(), value);
            }
        }
    }
}

/// Differences between two recorded schema versions (for `sluice schema diff` and
/// history): columns, then fields inside JSON columns per scope.
pub fn diff(old: &TableSchema, new: &TableSchema) -> Vec<SchemaChange> {
    let mut changes = diff_fields(old, new, &|name| name.to_string());
    let empty = TableSchema::default();
    let scopes: std::collections::BTreeSet<&String> =
        old.paths.keys().chain(new.paths.keys()).collect();
    for scope in scopes {
        let before = old.paths.get(scope).unwrap_or(&empty);
        let after = new.paths.get(scope).unwrap_or(&empty);
        changes.extend(diff_fields(before, after, &|name| {
            crate::schema::path_label(scope, name)
        }));
    }
    changes
}

fn diff_fields(
    old: &TableSchema,
    new: &TableSchema,
    label: &dyn Fn(&str) -> String,
) -> Vec<SchemaChange> {
    let mut changes = Vec::new();
    let change = |kind, field: &str, detail: String| SchemaChange {
        kind,
        field: label(field),
        detail,
        action: "recorded".into(),
        records: 0,
    };
    for field in &new.fields {
        match old.field(&field.name) {
            None => {
                let day = new
                    .first_seen
                    .get(&field.name)
                    .map(|d| format!(", first in data of {d}"))
                    .unwrap_or_default();
                changes.push(change(
                    ChangeKind::Added,
                    &field.name,
                    format!("{}{day}", field.ty.name()),
                ))
            }
            Some(before) if before.ty != field.ty => {
                let kind = if before.ty.widens_to(&field.ty) {
                    ChangeKind::Widened
                } else {
                    ChangeKind::TypeChanged
                };
                let day = new
                    .retyped_on
                    .get(&field.name)
                    .map(|d| format!(", first in data of {d}"))
                    .unwrap_or_default();
                changes.push(change(
                    kind,
                    &field.name,
                    format!("{} → {}{day}", before.ty.name(), field.ty.name()),
                ));
            }
            Some(before) if before.nullable != field.nullable => changes.push(change(
                ChangeKind::NullabilityChanged,
                &field.name,
                format!("nullable {} → {}", before.nullable, field.nullable),
            )),
            _ => {}
        }
    }
    for field in &old.fields {
        if new.field(&field.name).is_none() {
            changes.push(change(ChangeKind::Removed, &field.name, field.ty.name()));
        }
    }
    // A rename the registry recorded (`renamed` → the field that replaced it, and the day).
    for (from, to) in &new.renamed {
        if old.renamed.get(from) != Some(to) {
            changes.push(change(ChangeKind::LikelyRename, from, to.clone()));
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Field, FieldType};

    #[test]
    fn overrides_by_glob_and_renames_per_stream() {
        let config: SchemaConfig = serde_yaml::from_str(
            "on_new_field: quarantine\nstreams:\n  'app.*': { on_new_field: freeze }\nrenames:\n  app.events: { Amount: amount }\n",
        )
        .unwrap();
        let app = config.for_stream("app.events");
        assert_eq!(app.on_new_field, Policy::Freeze);
        assert_eq!(app.on_type_change, Policy::Quarantine);
        assert_eq!(
            app.renames.get("Amount").map(String::as_str),
            Some("amount")
        );
        assert_eq!(
            config.for_stream("facebook.insights").on_new_field,
            Policy::Quarantine
        );
    }

    #[test]
    fn json_fields_quarantine_type_changes_only_when_asked_to() {
        let default = SchemaConfig::default().for_stream("app.events");
        assert_eq!(default.on_type_change, Policy::Quarantine);
        assert_eq!(default.json_on_type_change, Policy::Evolve);
        let config: SchemaConfig = serde_yaml::from_str(
            "on_type_change: freeze\nstreams:\n  'app.*': { on_type_change: quarantine }\n",
        )
        .unwrap();
        assert_eq!(
            config.for_stream("app.events").json_on_type_change,
            Policy::Quarantine
        );
        assert_eq!(
            config.for_stream("facebook.insights").json_on_type_change,
            Policy::Freeze
        );
    }

    #[test]
    fn diff_classifies_added_removed_widened_and_incompatible() {
        let old = TableSchema::new(vec![
            Field::new("a", FieldType::Bigint),
            Field::new("b", FieldType::Text),
            Field::new("c", FieldType::Date),
        ]);
        let new = TableSchema::new(vec![
            Field::new("a", FieldType::Double),
            Field::new("c", FieldType::Boolean),
            Field::new("d", FieldType::Json),
        ]);
        let kinds: Vec<(ChangeKind, String)> = diff(&old, &new)
            .into_iter()
            .map(|c| (c.kind, c.field))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (ChangeKind::Widened, "a".into()),
                (ChangeKind::TypeChanged, "c".into()),
                (ChangeKind::Added, "d".into()),
                (ChangeKind::Removed, "b".into()),
            ]
        );
    }
}
