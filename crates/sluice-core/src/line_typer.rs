//! The fast path for JSON lines: typed straight into cells, without building a
//! `serde_json::Value` per record.
//!
//! Building, typing and freeing a map of values is most of the CPU a big NDJSON
//! load spends. When every key of a line is a known column and every value fits
//! its column as it is, one pass over the text gives the same cells that
//! [`to_scalar`](crate::typing::to_scalar) gives for the decoded record. Anything
//! else — an unknown key (schema evolution), a value that needs widening or is
//! bad, a repeated key, a missing required value, a rare JSON shape — returns
//! `false`, and the caller takes the general path with the record, so results are
//! identical either way: this is an optimisation, never a second set of rules.
//!
//! [`TypedLines`] carries one page's typed lines from a source that opts in (the
//! `files` connector, for big NDJSON files) to the executor's sink, which hands out
//! the [`LineTyper`] of the stream's current schema version. Every other source hands
//! over records and never meets this module.

use std::fmt;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use rust_decimal::Decimal;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::schema::{FieldType, TableSchema};
use crate::source::DecodedPage;
use crate::typing::{
    decimal_to_unscaled, decode_json_line, fits_precision, parse_date, parse_timestamp,
    BatchBuilder, Origin, Scalar,
};

/// JSON lines of one page typed by a [`LineTyper`] into one batch, on the decoding
/// thread, in order.
pub struct TypedLines {
    /// The schema version the batch follows.
    pub schema_version: u64,
    /// Each line's number and byte range in `page`: its origin, and its text for the
    /// general path when the schema moved on after it was typed.
    pub lines: Vec<(u64, std::ops::Range<usize>)>,
    pub origin: Arc<str>,
    pub page: bytes::Bytes,
    builder: Option<BatchBuilder>,
    batch: Option<RecordBatch>,
    /// Scratch for one line, reused.
    cells: Vec<Scalar>,
    seen: Vec<bool>,
}

impl TypedLines {
    pub fn new(typer: &LineTyper, origin: Arc<str>, page: bytes::Bytes) -> Self {
        TypedLines {
            schema_version: typer.schema_version,
            lines: Vec::new(),
            origin,
            page,
            builder: Some(typer.batch_builder()),
            batch: None,
            cells: Vec::with_capacity(typer.width()),
            seen: Vec::with_capacity(typer.width()),
        }
    }

    /// Types one line into the batch; false (and nothing changed) when the line
    /// needs the general path.
    pub fn push(&mut self, typer: &LineTyper, line_no: u64, range: std::ops::Range<usize>) -> bool {
        self.cells.clear();
        let Some(builder) = self.builder.as_mut() else {
            return false;
        };
        if !typer.type_line(&self.page[range.clone()], &mut self.cells, &mut self.seen) {
            return false;
        }
        builder.push_cells(&self.cells);
        self.lines.push((line_no, range));
        true
    }

    /// Finishes the batch: no more lines.
    pub fn seal(mut self) -> Self {
        if let Some(mut builder) = self.builder.take() {
            self.batch = Some(builder.finish());
        }
        self
    }

    /// The typed rows, once sealed.
    pub fn batch(&self) -> Option<RecordBatch> {
        self.batch.clone()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The lines as records, for the general path.
    pub fn decode(&self) -> DecodedPage {
        let mut decoded = DecodedPage::default();
        for (line, range) in &self.lines {
            let origin = Origin {
                page: self.origin.clone(),
                line: *line,
            };
            match decode_json_line(&self.page[range.clone()], origin) {
                Ok(record) => decoded.records.push(record),
                Err(rejected) => decoded.rejected.push(rejected),
            }
        }
        decoded
    }
}

/// Types JSON object lines against one version of a table schema.
#[derive(Debug, Clone)]
pub struct LineTyper {
    columns: Vec<TypedColumn>,
    schema: TableSchema,
    /// Values of the loader's own columns, the same in every row.
    constants: Vec<(String, Scalar)>,
    /// The schema version the cells follow; cells of an older version are re-typed.
    pub schema_version: u64,
}

#[derive(Debug, Clone)]
struct TypedColumn {
    name: String,
    ty: FieldType,
    /// A missing or null value sends the line to the general path (which rejects it).
    required: bool,
    /// Filled by the loader (`_sluice_run_id`…): the line's value is ignored.
    constant: bool,
}

/// The signal to leave the fast path; never shown to anyone.
#[derive(Debug)]
struct Fallback;

impl fmt::Display for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("general path")
    }
}

impl std::error::Error for Fallback {}

impl de::Error for Fallback {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Fallback
    }
}

impl LineTyper {
    /// `required` names columns whose absence must go to the general path
    /// (primary keys, the partition column); `constants` fill the loader's own columns.
    pub fn new(
        schema: &TableSchema,
        schema_version: u64,
        required: &[String],
        constants: Vec<(String, Scalar)>,
    ) -> Self {
        let columns = schema
            .fields
            .iter()
            .map(|f| TypedColumn {
                name: f.name.clone(),
                ty: f.ty,
                required: !f.nullable || required.contains(&f.name),
                constant: constants.iter().any(|(name, _)| *name == f.name),
            })
            .collect();
        LineTyper {
            columns,
            schema: schema.clone(),
            constants,
            schema_version,
        }
    }

    /// A builder for rows of this typer's cells, with the constants filled in.
    pub fn batch_builder(&self) -> BatchBuilder {
        self.constants.iter().fold(
            BatchBuilder::new(self.schema.clone()),
            |builder, (name, value)| builder.with_constant(name, value.clone()),
        )
    }

    /// Cells per row: one per schema column (constants are `Null` placeholders).
    pub fn width(&self) -> usize {
        self.columns.len()
    }

    /// Appends the line's cells to `cells` and returns true, or leaves `cells` as it
    /// was and returns false when the line needs the general path.
    /// `seen` is scratch space the caller keeps between lines (no allocation per line).
    pub fn type_line(&self, line: &[u8], cells: &mut Vec<Scalar>, seen: &mut Vec<bool>) -> bool {
        let start = cells.len();
        cells.resize(start + self.columns.len(), Scalar::Null);
        seen.clear();
        seen.resize(self.columns.len(), false);
        let mut de = serde_json::Deserializer::from_slice(line);
        let ok = de
            .deserialize_map(RowVisitor {
                typer: self,
                cells: &mut cells[start..],
                seen,
            })
            .is_ok()
            && de.end().is_ok()
            && self
                .columns
                .iter()
                .zip(&cells[start..])
                .all(|(c, cell)| c.constant || !c.required || *cell != Scalar::Null);
        if !ok {
            cells.truncate(start);
        }
        ok
    }

    fn column_of(&self, key: &str, hint: usize) -> Option<usize> {
        // Keys usually come in the same order on every line: try the next column first.
        if self.columns.get(hint).is_some_and(|c| c.name == key) {
            return Some(hint);
        }
        self.columns.iter().position(|c| c.name == key)
    }
}

struct RowVisitor<'t, 'c> {
    typer: &'t LineTyper,
    cells: &'c mut [Scalar],
    seen: &'c mut [bool],
}

impl<'de> Visitor<'de> for RowVisitor<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut hint = 0;
        while let Some(column) = map.next_key_seed(KeySeed {
            typer: self.typer,
            hint,
        })? {
            // A repeated key: the general path decides which value wins.
            if std::mem::replace(&mut self.seen[column], true) {
                return Err(de::Error::custom(Fallback));
            }
            let spec = &self.typer.columns[column];
            if spec.constant {
                map.next_value::<IgnoredAny>()?;
            } else {
                self.cells[column] = map.next_value_seed(CellSeed(spec.ty))?;
            }
            hint = column + 1;
        }
        Ok(())
    }
}

/// A key → its column index; an unknown key ends the fast path.
struct KeySeed<'t> {
    typer: &'t LineTyper,
    hint: usize,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<usize, E> {
        self.typer
            .column_of(key, self.hint)
            .ok_or_else(|| E::custom(Fallback))
    }
}

/// Re-writes one JSON value compactly, primitive by primitive through
/// serde_json's own serializer: the same text `Value::to_string` gives. An object
/// with a repeated key (where `Value` keeps one of them) goes to the general path.
struct JsonText<'o>(&'o mut Vec<u8>);

impl JsonText<'_> {
    fn write<T: serde::Serialize + ?Sized, E: de::Error>(self, value: &T) -> Result<(), E> {
        serde_json::to_writer(&mut *self.0, value).map_err(|_| E::custom(Fallback))
    }
}

impl<'de> DeserializeSeed<'de> for JsonText<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for JsonText<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.extend_from_slice(b"null");
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.write(&v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.write(&v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.write(&v)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        // As `Value` does: a float that is not finite is null.
        self.write(&v)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.write(v)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.0.push(b'[');
        let mut first = true;
        loop {
            let before = self.0.len();
            if !first {
                self.0.push(b',');
            }
            if seq.next_element_seed(JsonText(self.0))?.is_none() {
                self.0.truncate(before);
                break;
            }
            first = false;
        }
        self.0.push(b']');
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.0.push(b'{');
        // Where each key's text starts and ends in the output, to find a repeat.
        let mut keys: Vec<(usize, usize)> = Vec::new();
        loop {
            let before = self.0.len();
            if !keys.is_empty() {
                self.0.push(b',');
            }
            let start = self.0.len();
            // Keys are strings: written as one, straight from the parser's borrow.
            if map.next_key_seed(JsonText(self.0))?.is_none() {
                self.0.truncate(before);
                break;
            }
            let end = self.0.len();
            if keys
                .iter()
                .any(|&(s, e)| self.0[s..e] == self.0[start..end])
            {
                return Err(de::Error::custom(Fallback));
            }
            keys.push((start, end));
            self.0.push(b':');
            map.next_value_seed(JsonText(self.0))?;
        }
        self.0.push(b'}');
        Ok(())
    }
}

/// One value typed as the column's type, exactly as `to_scalar` would.
struct CellSeed(FieldType);

impl<'de> DeserializeSeed<'de> for CellSeed {
    type Value = Scalar;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Scalar, D::Error> {
        match self.0 {
            // A JSON cell keeps the value's compact text, as `Value::to_string` writes it;
            // written while parsing, without building the `Value`.
            FieldType::Json => {
                let mut text = Vec::new();
                JsonText(&mut text).deserialize(d)?;
                Ok(if text == b"null" {
                    Scalar::Null
                } else {
                    Scalar::Text(String::from_utf8(text).map_err(|_| de::Error::custom(Fallback))?)
                })
            }
            _ => d.deserialize_any(self),
        }
    }
}

impl<'de> Visitor<'de> for CellSeed {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a scalar")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
        match self.0 {
            FieldType::Boolean => Ok(Scalar::Boolean(v)),
            FieldType::Bigint => Ok(Scalar::Bigint(v as i64)),
            FieldType::Text => Ok(Scalar::Text(v.to_string())),
            _ => Err(E::custom(Fallback)),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        match self.0 {
            FieldType::Bigint => Ok(Scalar::Bigint(v)),
            FieldType::Double => Ok(Scalar::Double(v as f64)),
            FieldType::Text => Ok(Scalar::Text(v.to_string())),
            FieldType::Numeric { precision, scale } => decimal_to_unscaled(Decimal::from(v), scale)
                .filter(|u| fits_precision(*u, precision))
                .map(Scalar::Numeric)
                .ok_or_else(|| E::custom(Fallback)),
            _ => Err(E::custom(Fallback)),
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        match i64::try_from(v) {
            Ok(v) => self.visit_i64(v),
            Err(_) => Err(E::custom(Fallback)),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
        match self.0 {
            FieldType::Double => Ok(Scalar::Double(v)),
            _ => Err(E::custom(Fallback)),
        }
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Scalar, E> {
        let fallback = || E::custom(Fallback);
        if s.is_empty() && !matches!(self.0, FieldType::Text) {
            // Booleans, numbers, dates: an empty string is a missing value.
            return Ok(Scalar::Null);
        }
        match self.0 {
            FieldType::Text => Ok(Scalar::Text(s.to_owned())),
            FieldType::Bigint => s.trim().parse().map(Scalar::Bigint).map_err(|_| fallback()),
            FieldType::Double => s.trim().parse().map(Scalar::Double).map_err(|_| fallback()),
            FieldType::Numeric { precision, scale } => {
                let text = s.trim();
                Decimal::from_str_exact(text)
                    .or_else(|_| Decimal::from_scientific(text))
                    .ok()
                    .and_then(|d| decimal_to_unscaled(d, scale))
                    .filter(|u| fits_precision(*u, precision))
                    .map(Scalar::Numeric)
                    .ok_or_else(fallback)
            }
            FieldType::Date => parse_date(s).map(Scalar::Date).ok_or_else(fallback),
            FieldType::Timestamp => parse_timestamp(s)
                .map(|t| Scalar::Timestamp(t.timestamp_micros()))
                .ok_or_else(fallback),
            FieldType::Boolean => match s.to_ascii_lowercase().as_str() {
                "true" | "t" | "yes" | "1" => Ok(Scalar::Boolean(true)),
                "false" | "f" | "no" | "0" => Ok(Scalar::Boolean(false)),
                _ => Err(fallback()),
            },
            FieldType::Json => Err(fallback()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Field;
    use crate::typing::to_scalar;
    use serde_json::Value;

    fn schema() -> TableSchema {
        TableSchema::new(vec![
            Field::new("id", FieldType::Bigint),
            Field::new("name", FieldType::Text),
            Field::new("spend", FieldType::numeric(2)),
            Field::new("ratio", FieldType::Double),
            Field::new("day", FieldType::Date),
            Field::new("at", FieldType::Timestamp),
            Field::new("ok", FieldType::Boolean),
            Field::new("actions", FieldType::Json),
            Field::new("_sluice_run_id", FieldType::Text),
        ])
    }

    /// The cells the general path gives for a line (`None` if it rejects the record).
    fn general(schema: &TableSchema, line: &str) -> Option<Vec<Scalar>> {
        let record: serde_json::Map<String, Value> = serde_json::from_str(line).ok()?;
        schema
            .fields
            .iter()
            .map(|f| {
                if f.name == "_sluice_run_id" {
                    return Some(Scalar::Null);
                }
                match record.get(&f.name) {
                    None => Some(Scalar::Null),
                    Some(v) => to_scalar(v, f.ty).ok(),
                }
            })
            .collect()
    }

    #[test]
    fn typed_lines_equal_the_general_path_or_fall_back_to_it() {
        let schema = schema();
        let run_id = ("_sluice_run_id".to_string(), Scalar::Text("run-1".into()));
        let typer = LineTyper::new(&schema, 3, &[], vec![run_id]);
        let fast = [
            r#"{"id":"23851234567890123","name":"Brand \"Summer\", EU","spend":"12.50","day":"2024-07-01"}"#,
            r#"{"id":7,"name":"Café ✓\nx","spend":3,"ratio":0.25,"at":"2024-07-01T10:11:12+0000","ok":"yes"}"#,
            r#"{"id":"","spend":"","day":"","ok":false,"actions":[{"action_type":"link_click","value":"3"}]}"#,
            r#"{"name":null,"actions":{"b":1,"a":[true,null]},"ratio":"1e3","_sluice_run_id":"forged"}"#,
            r#" { "id" : 1 , "name" : "spaced" } "#,
            // JSON cells: spacing, escapes, number spellings and key order as `Value` writes them.
            r#"{"actions": [ {"k" : "\u00e9\/\"q\"\n", "n": 1.50, "e": 1e5, "z": -0, "big": 18446744073709551616} ] }"#,
            r#"{"actions":{"b":{"y":[],"x":{}},"a":[true,false,null,-7,0.1]}}"#,
            r#"{"actions":[[],{},"",0]}"#,
            r#"{"actions":null}"#,
            r#"{"actions":"text"}"#,
        ];
        for line in fast {
            let mut cells = Vec::new();
            assert!(
                typer.type_line(line.as_bytes(), &mut cells, &mut Vec::new()),
                "{line}"
            );
            assert_eq!(Some(cells), general(&schema, line), "{line}");
        }
        let general_only = [
            r#"{"id":1,"unknown":2}"#,              // a new field: schema evolution
            r#"{"id":"12x"}"#,                      // a bad value: quarantine
            r#"{"spend":"1.234"}"#,                 // too many decimals
            r#"{"id":1.5}"#,                        // needs a widening
            r#"{"id":1,"id":2}"#,                   // repeated key
            r#"{"name":{"nested":true}}"#,          // text from an object
            r#"[1,2]"#,                             // not an object
            r#"{"id":1} trailing"#,                 // not one JSON value
            r#"{"id":18446744073709551615}"#,       // beyond bigint
            r#"{"actions":[{"a":1,"b":2,"a":3}]}"#, // repeated key inside a JSON cell
        ];
        for line in general_only {
            let mut cells = vec![Scalar::Bigint(9)];
            assert!(
                !typer.type_line(line.as_bytes(), &mut cells, &mut Vec::new()),
                "{line}"
            );
            assert_eq!(cells, vec![Scalar::Bigint(9)], "cells untouched: {line}");
        }
    }

    #[test]
    fn a_missing_key_or_partition_value_goes_to_the_general_path() {
        let schema = schema();
        let typer = LineTyper::new(&schema, 0, &["id".into(), "day".into()], Vec::new());
        let (mut cells, mut seen) = (Vec::new(), Vec::new());
        assert!(typer.type_line(br#"{"id":1,"day":"2024-07-01"}"#, &mut cells, &mut seen));
        assert_eq!(cells.len(), typer.width());
        assert!(!typer.type_line(br#"{"id":1}"#, &mut cells, &mut seen));
        assert!(!typer.type_line(br#"{"id":null,"day":"2024-07-01"}"#, &mut cells, &mut seen));
        assert_eq!(cells.len(), typer.width());
    }
}
