//! Renames: a `renames:` entry resolved against what the registry knows (and a
//! column folded back when a run evolved the new name first), and likely renames
//! reported when one field stops arriving as another starts.

use std::collections::BTreeMap;

use super::StreamSchema;
use crate::drift::ChangeKind;
use crate::schema::{is_system_column, FieldType};

impl StreamSchema {
    /// Source-side renames resolved against what the registry knows: `{a: b}`
    /// keeps whichever of the two names the schema already has and loads the
    /// other into it (`a` when it has both). While it knows neither (a first
    /// run), values load under the name the source sends. Returns kept → sent.
    pub fn resolve_renames(&self) -> BTreeMap<String, String> {
        let known = |n: &str| self.schema.field(n).is_some() || self.paths.knows(n);
        self.policy
            .renames
            .iter()
            .filter_map(|(a, b)| match (known(a), known(b)) {
                // Both known: a run evolved the new name before the rename was
                // declared. Keep the elder; the newer is folded back into it.
                (true, true) if self.is_newer(a, b) => Some((b.clone(), a.clone())),
                (true, _) => Some((a.clone(), b.clone())),
                (false, true) => Some((b.clone(), a.clone())),
                (false, false) => None,
            })
            .collect()
    }

    /// Whether the registry added `a` after `b` (it knows the day it first saw
    /// fields a later run added; fields of the first run have none).
    fn is_newer(&self, a: &str, b: &str) -> bool {
        let day = |n: &str| {
            self.schema.first_seen.get(n).cloned().or_else(|| {
                self.schema
                    .paths
                    .values()
                    .find_map(|s| s.first_seen.get(n).cloned())
            })
        };
        match (day(a), day(b)) {
            (Some(_), None) => true,
            (Some(x), Some(y)) => x > y,
            _ => false,
        }
    }

    /// Columns a declared rename folds back into the name kept: the newer name a
    /// run evolved before the rename was declared (kept → folded).
    pub fn folded_columns(&self) -> Vec<(String, String)> {
        self.resolve_renames()
            .into_iter()
            .filter(|(_, sent)| self.schema.field(sent).is_some())
            .collect()
    }

    /// Drops the folded columns from the schema: their values load into the kept
    /// name from now on (the registry's history keeps them).
    pub fn fold(&mut self, folded: &[(String, String)]) {
        if folded.is_empty() {
            return;
        }
        for (kept, sent) in folded {
            self.schema.fields.retain(|f| &f.name != sent);
            self.schema.presence.remove(sent);
            self.schema.first_seen.remove(sent);
            self.schema.renamed.insert(
                sent.clone(),
                format!("folded back into `{kept}` (schema.renames)"),
            );
            self.schema.folded.insert(sent.clone(), kept.clone());
        }
        // No version bump: this runs before any slice types a row (and the live
        // load only takes rows typed with the first version).
    }

    pub(super) fn note_rename(&mut self, old: &str, new: &str, day: Option<String>) {
        let from = day
            .map(|d| format!(" from data of {d}"))
            .unwrap_or_default();
        let detail = format!(
            "`{old}` → `{new}`{from}? map it with schema.renames to keep downstream models working"
        );
        self.note(ChangeKind::LikelyRename, old, || detail, "reported", 0);
        self.schema
            .renamed
            .insert(old.to_string(), format!("`{new}`{from}"));
    }

    /// A field every record carried before that stopped arriving on the day a new
    /// field of a similar type started (the run also read days before the change,
    /// so the old name is not absent from every record): a likely rename.
    pub(super) fn renames_by_day(&mut self) {
        let Some(baseline) = &self.baseline else {
            return;
        };
        let added: Vec<(String, FieldType, String)> = self
            .changes
            .values()
            .filter(|c| c.kind == ChangeKind::Added)
            .filter_map(|c| {
                let ty = self.schema.field(&c.field)?.ty;
                let day = self.schema.first_seen.get(&c.field)?.clone();
                Some((c.field.clone(), ty, day))
            })
            .collect();
        let mut renames = Vec::new();
        // Only a field every record carried before: one some records omit (an
        // unset `stop_time`) missing from the last days is no evidence.
        for old in baseline
            .fields
            .iter()
            .filter(|f| !is_system_column(&f.name) && !baseline.presence.contains_key(&f.name))
        {
            let Some(last) = self.last_day.get(&old.name) else {
                continue;
            };
            let Some(ty) = self.schema.field(&old.name).map(|f| f.ty) else {
                continue;
            };
            let started = |same: bool| {
                added.iter().find(|(_, new_ty, first)| {
                    last < first
                        && if same {
                            *new_ty == ty
                        } else {
                            similar(ty, *new_ty)
                        }
                })
            };
            if let Some((new, _, first)) = started(true).or_else(|| started(false)) {
                renames.push((old.name.clone(), new.clone(), first.clone()));
            }
        }
        for (old, new, day) in renames {
            self.note_rename(&old, &new, Some(day));
        }
    }
}

/// Types a renamed field could plausibly have on both sides: equal, both numbers,
/// or both times (anything widens to text, so text alone says nothing).
pub(super) fn similar(a: FieldType, b: FieldType) -> bool {
    use FieldType::*;
    let number = |t| matches!(t, Bigint | Double | Numeric { .. });
    let time = |t| matches!(t, Date | Timestamp);
    a == b || (number(a) && number(b)) || (time(a) && time(b))
}
