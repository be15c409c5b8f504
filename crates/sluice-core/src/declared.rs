//! Declared columns that the input never fills: a typo in `columns:` (`signed_upp:
//! date`) must not end as an all-NULL column beside the real key inferred as text.

use std::collections::BTreeSet;

use arrow::record_batch::RecordBatch;
use serde_json::Value;

use crate::schema::TableSchema;
use crate::typing::Record;

/// A stream's declared columns, and those no record of this run filled yet.
#[derive(Debug, Default)]
pub struct DeclaredColumns {
    declared: BTreeSet<String>,
    unseen: BTreeSet<String>,
}

impl DeclaredColumns {
    pub fn new(declared: &TableSchema) -> Self {
        let names: BTreeSet<String> = declared.fields.iter().map(|f| f.name.clone()).collect();
        DeclaredColumns {
            unseen: names.clone(),
            declared: names,
        }
    }

    /// Forgets the declared columns some record carries a value for.
    pub fn note_values(&mut self, records: &[Record]) {
        for record in records {
            if self.unseen.is_empty() {
                return;
            }
            self.unseen
                .retain(|name| record.fields.get(name).is_none_or(Value::is_null));
        }
    }

    /// [`Self::note_values`] for rows typed straight into a batch.
    pub fn note_batch(&mut self, batch: &RecordBatch) {
        self.unseen.retain(|name| {
            batch
                .column_by_name(name)
                .is_none_or(|c| c.null_count() == c.len())
        });
    }

    /// A declared column no record filled, while a key of nearly its name became
    /// a column of its own: an error naming both.
    pub fn check_typos(&self, schema: &TableSchema, rows_seen: u64) -> Result<(), String> {
        if rows_seen == 0 {
            return Ok(());
        }
        for name in &self.unseen {
            let undeclared = schema
                .fields
                .iter()
                .map(|f| f.name.as_str())
                .filter(|other| !self.declared.contains(*other) && !other.starts_with("_sluice_"));
            if let Some(near) = crate::config::suggest(name, undeclared) {
                return Err(format!(
                    "declared column `{name}` matches no key of the input (empty in all {rows_seen} records), while the input has `{near}`: rename the declared column to `{near}` (or the key to `{name}`)"
                ));
            }
        }
        Ok(())
    }
}
