//! A stream's `columns:` as written in pipeline.yaml, and the D1 fields they declare:
//! one rule for every source whose streams declare columns (files, rest, command).
//!
//! Those sources' stream configs each list the table keys (`columns`, `primary_key`,
//! `partition_column`, `write_mode`, `table`, `dedupe`) themselves rather than sharing
//! a struct: serde's `flatten` cannot be combined with `deny_unknown_fields`, which
//! gives every misspelt key its file:line error. What they share is this derivation.

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use sluice_core::destination::WriteMode;
use sluice_core::schema::{Field, FieldType};

/// Column declarations, in the order they are written.
#[derive(Debug, Default, Clone)]
pub struct OrderedColumns(pub Vec<(String, String)>);

impl<'de> Deserialize<'de> for OrderedColumns {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedColumns;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a mapping of column name to type")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, String>()? {
                    out.push((k, v));
                }
                Ok(OrderedColumns(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl OrderedColumns {
    /// The declared fields (key columns required, the partition column a required
    /// date when it is not declared), after checking the write mode has what it needs.
    /// An error names the stream-relative key to fix (`["columns", "amount"]`).
    pub fn fields(
        &self,
        primary_key: &[String],
        partition_column: Option<&str>,
        write_mode: WriteMode,
    ) -> Result<Vec<Field>, (Vec<String>, String)> {
        let mut fields = Vec::new();
        for (column, ty) in &self.0 {
            let ty = FieldType::parse(ty)
                .map_err(|e| (vec!["columns".to_string(), column.clone()], e))?;
            let mut field = Field::new(column, ty);
            if primary_key.contains(column) {
                field = field.required();
            }
            fields.push(field);
        }
        let needs = match write_mode {
            WriteMode::Merge if primary_key.is_empty() => Some("merge needs a primary_key"),
            WriteMode::OverwritePartitions if partition_column.is_none() => {
                Some("overwrite_partitions needs a partition_column")
            }
            _ => None,
        };
        if let Some(needs) = needs {
            return Err((vec!["write_mode".into()], format!("write_mode {needs}")));
        }
        if let Some(pc) = partition_column {
            if !fields.iter().any(|f| f.name == pc) {
                fields.push(Field::new(pc, FieldType::Date).required());
            }
        }
        Ok(fields)
    }
}
