//! Turning decoded records (JSON objects) into typed Arrow batches.
//!
//! A record is converted whole or not at all: if any field does not fit its
//! column type, the record is *rejected* with the field, the value and the reason,
//! and goes to quarantine with its origin (page and line). Nothing is dropped.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Decimal128Builder, Float64Builder, Int64Builder,
    StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use rust_decimal::Decimal;
use serde_json::{Map, Value};

use crate::schema::{FieldType, TableSchema};

/// Where a record came from, for error messages and quarantine rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The landed page or source file (`raw/facebook/insights/dt=…/p00001.json.zst`, `data/orders-2.csv`).
    pub page: Arc<str>,
    /// 1-based line in a file, or position of the record in a page.
    pub line: u64,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.page, self.line)
    }
}

/// A decoded record: one JSON object and where it came from.
#[derive(Debug, Clone)]
pub struct Record {
    pub fields: Map<String, Value>,
    pub origin: Origin,
}

/// A record that could not be typed (or decoded), kept with its reason for quarantine.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub origin: Origin,
    pub reason: String,
    /// The record as received (a JSON object, or the raw line when it did not parse).
    pub raw: String,
}

/// Decodes one JSON line into a record, or rejects it with the reason and the line as received.
pub fn decode_json_line(line: &[u8], origin: Origin) -> Result<Record, Rejected> {
    match serde_json::from_slice::<Value>(line) {
        Ok(Value::Object(fields)) => Ok(Record { fields, origin }),
        Ok(other) => Err(Rejected {
            origin,
            reason: format!("expected a JSON object, got {}", json_kind(&other)),
            raw: String::from_utf8_lossy(line).into_owned(),
        }),
        Err(e) => Err(Rejected {
            origin,
            reason: format!("malformed JSON: {e}"),
            raw: String::from_utf8_lossy(line).into_owned(),
        }),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Why a record did not fit: the column (index in the schema), the value, the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub column: usize,
    /// The offending value; `None` when a required value is missing.
    pub value: Option<Value>,
    pub message: String,
}

/// One typed cell, before it is appended to its column.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Null,
    Boolean(bool),
    Bigint(i64),
    Double(f64),
    /// Unscaled value at the column's scale.
    Numeric(i128),
    Text(String),
    /// Days since 1970-01-01.
    Date(i32),
    /// Microseconds since the epoch, UTC.
    Timestamp(i64),
}

/// Converts one JSON value to `ty`, or says why it cannot.
pub fn to_scalar(value: &Value, ty: FieldType) -> Result<Scalar, String> {
    if value.is_null() {
        return Ok(Scalar::Null);
    }
    // The reason names the kind of value, never the value: reasons reach run records
    // and logs, and a value may be personal data (the quarantine's `raw` keeps it).
    let mismatch = || {
        let length = match value {
            Value::String(s) => format!(" of {} characters", s.chars().count()),
            _ => String::new(),
        };
        format!("expected {}, got {}{length}", ty.name(), json_kind(value))
    };
    match ty {
        FieldType::Boolean => match value {
            Value::Bool(b) => Ok(Scalar::Boolean(*b)),
            Value::String(s) => match s.to_ascii_lowercase().as_str() {
                "true" | "t" | "yes" | "1" => Ok(Scalar::Boolean(true)),
                "false" | "f" | "no" | "0" => Ok(Scalar::Boolean(false)),
                "" => Ok(Scalar::Null),
                _ => Err(mismatch()),
            },
            Value::Number(n) => match n.as_i64() {
                Some(0) => Ok(Scalar::Boolean(false)),
                Some(1) => Ok(Scalar::Boolean(true)),
                _ => Err(mismatch()),
            },
            _ => Err(mismatch()),
        },
        FieldType::Bigint => match value {
            Value::Number(n) => n
                .as_i64()
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                        .map(|f| f as i64)
                })
                .map(Scalar::Bigint)
                .ok_or_else(mismatch),
            Value::String(s) if s.is_empty() => Ok(Scalar::Null),
            Value::String(s) => s
                .trim()
                .parse::<i64>()
                .map(Scalar::Bigint)
                .map_err(|_| mismatch()),
            Value::Bool(b) => Ok(Scalar::Bigint(*b as i64)),
            _ => Err(mismatch()),
        },
        FieldType::Double => match value {
            Value::Number(n) => n.as_f64().map(Scalar::Double).ok_or_else(mismatch),
            Value::String(s) if s.is_empty() => Ok(Scalar::Null),
            Value::String(s) => s
                .trim()
                .parse::<f64>()
                .map(Scalar::Double)
                .map_err(|_| mismatch()),
            _ => Err(mismatch()),
        },
        FieldType::Numeric { precision, scale } => {
            let text = match value {
                Value::Number(n) => n.to_string(),
                Value::String(s) if s.is_empty() => return Ok(Scalar::Null),
                Value::String(s) => s.trim().to_string(),
                _ => return Err(mismatch()),
            };
            // rust_decimal holds 28 digits; a plain decimal up to Decimal128's 38
            // (a database's numeric(38,10)) is read digit by digit instead.
            let unscaled =
                match Decimal::from_str_exact(&text).or_else(|_| Decimal::from_scientific(&text)) {
                    Ok(parsed) => decimal_to_unscaled(parsed, scale),
                    Err(_) => plain_decimal_unscaled(&text, scale).ok_or_else(mismatch)?,
                }
                .ok_or_else(|| format!("a number with more than {scale} decimal places"))?;
            if !fits_precision(unscaled, precision) {
                return Err(format!(
                    "a number with more than {} digits before the decimal point (numeric({precision},{scale}))",
                    precision as i16 - scale as i16
                ));
            }
            Ok(Scalar::Numeric(unscaled))
        }
        FieldType::Text => Ok(Scalar::Text(match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })),
        FieldType::Json => Ok(Scalar::Text(value.to_string())),
        FieldType::Date => match value {
            Value::String(s) if s.is_empty() => Ok(Scalar::Null),
            Value::String(s) => parse_date(s).map(Scalar::Date).ok_or_else(mismatch),
            Value::Number(n) => n
                .as_i64()
                .and_then(|v| NaiveDate::parse_from_str(&v.to_string(), "%Y%m%d").ok())
                .map(|d| Scalar::Date(days_since_epoch(d)))
                .ok_or_else(mismatch),
            _ => Err(mismatch()),
        },
        FieldType::Timestamp => match value {
            Value::String(s) if s.is_empty() => Ok(Scalar::Null),
            Value::String(s) => parse_timestamp(s)
                .map(|t| Scalar::Timestamp(t.timestamp_micros()))
                .ok_or_else(mismatch),
            Value::Number(n) => n
                .as_i64()
                .and_then(|secs| DateTime::from_timestamp(secs, 0))
                .map(|t| Scalar::Timestamp(t.timestamp_micros()))
                .ok_or_else(mismatch),
            _ => Err(mismatch()),
        },
    }
}

/// A plain decimal (`-123.4500`) as an unscaled integer at `scale`: `None` when it
/// is not one or overflows i128, `Some(None)` when non-zero digits pass the scale.
fn plain_decimal_unscaled(text: &str, scale: i8) -> Option<Option<i128>> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() && fraction.is_empty() || !all_digits(whole) || !all_digits(fraction) {
        return None;
    }
    let scale = scale.max(0) as usize;
    let kept = fraction.get(..scale.min(fraction.len())).unwrap_or("");
    if fraction[kept.len()..].bytes().any(|b| b != b'0') {
        return Some(None);
    }
    let mut unscaled: i128 = 0;
    let padding = scale - kept.len();
    for b in whole.bytes().chain(kept.bytes()) {
        unscaled = unscaled
            .checked_mul(10)?
            .checked_add(i128::from(b - b'0'))?;
    }
    for _ in 0..padding {
        unscaled = unscaled.checked_mul(10)?;
    }
    Some(Some(if negative { -unscaled } else { unscaled }))
}

/// Whether an unscaled decimal has at most `precision` digits.
pub fn fits_precision(unscaled: i128, precision: u8) -> bool {
    precision >= 39 || unscaled.unsigned_abs() < 10u128.pow(precision as u32)
}

/// Rescales a decimal to exactly `scale` digits; `None` if that would drop non-zero digits.
pub fn decimal_to_unscaled(mut d: Decimal, scale: i8) -> Option<i128> {
    let scale = scale as u32;
    if d.scale() > scale {
        let rounded = d.round_dp(scale);
        if rounded != d {
            return None;
        }
        d = rounded;
    }
    d.rescale(scale);
    (d.scale() == scale).then(|| d.mantissa())
}

fn days_since_epoch(d: NaiveDate) -> i32 {
    (d - NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid epoch")).num_days() as i32
}

pub(crate) fn parse_date(s: &str) -> Option<i32> {
    // `FromStr` is ISO 8601 (`2024-07-01`) without re-parsing a format string per value.
    s.trim().parse::<NaiveDate>().ok().map(days_since_epoch)
}

/// Accepts RFC 3339, Facebook's `2024-07-01T10:11:12+0000`, and naive `2024-07-01 10:11:12` (UTC).
pub fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S%z",
        "%Y-%m-%dT%H:%M:%S%.f%z",
        "%Y-%m-%d %H:%M:%S%z",
    ] {
        if let Ok(t) = DateTime::parse_from_str(s, format) {
            return Some(t.with_timezone(&Utc));
        }
    }
    for format in [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, format) {
            return Some(t.and_utc());
        }
    }
    None
}

enum Column {
    Boolean(BooleanBuilder),
    Bigint(Int64Builder),
    Double(Float64Builder),
    Numeric(Decimal128Builder, i8),
    Text(StringBuilder),
    Date(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder),
}

impl Column {
    fn new(ty: FieldType, capacity: usize) -> Column {
        match ty {
            FieldType::Boolean => Column::Boolean(BooleanBuilder::with_capacity(capacity)),
            FieldType::Bigint => Column::Bigint(Int64Builder::with_capacity(capacity)),
            FieldType::Double => Column::Double(Float64Builder::with_capacity(capacity)),
            FieldType::Numeric { scale, .. } => Column::Numeric(
                Decimal128Builder::with_capacity(capacity)
                    .with_precision_and_scale(38, scale)
                    .expect("scale validated by FieldType::parse"),
                scale,
            ),
            FieldType::Text | FieldType::Json => {
                Column::Text(StringBuilder::with_capacity(capacity, capacity * 16))
            }
            FieldType::Date => Column::Date(Date32Builder::with_capacity(capacity)),
            FieldType::Timestamp => Column::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("UTC"),
            ),
        }
    }

    fn append(&mut self, scalar: &Scalar) {
        match (self, scalar) {
            (Column::Boolean(b), Scalar::Boolean(v)) => b.append_value(*v),
            (Column::Bigint(b), Scalar::Bigint(v)) => b.append_value(*v),
            (Column::Double(b), Scalar::Double(v)) => b.append_value(*v),
            (Column::Numeric(b, _), Scalar::Numeric(v)) => b.append_value(*v),
            (Column::Text(b), Scalar::Text(v)) => b.append_value(v),
            (Column::Date(b), Scalar::Date(v)) => b.append_value(*v),
            (Column::Timestamp(b), Scalar::Timestamp(v)) => b.append_value(*v),
            (column, _) => column.append_null(),
        }
    }

    fn append_null(&mut self) {
        match self {
            Column::Boolean(b) => b.append_null(),
            Column::Bigint(b) => b.append_null(),
            Column::Double(b) => b.append_null(),
            Column::Numeric(b, _) => b.append_null(),
            Column::Text(b) => b.append_null(),
            Column::Date(b) => b.append_null(),
            Column::Timestamp(b) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Column::Boolean(b) => Arc::new(b.finish()),
            Column::Bigint(b) => Arc::new(b.finish()),
            Column::Double(b) => Arc::new(b.finish()),
            Column::Numeric(b, scale) => {
                let array = b.finish();
                let scale = *scale;
                *b = Decimal128Builder::new()
                    .with_precision_and_scale(38, scale)
                    .expect("scale validated by FieldType::parse");
                Arc::new(array)
            }
            Column::Text(b) => Arc::new(b.finish()),
            Column::Date(b) => Arc::new(b.finish()),
            Column::Timestamp(b) => {
                let array = b.finish();
                *b = TimestampMicrosecondBuilder::new().with_timezone("UTC");
                Arc::new(array)
            }
        }
    }
}

/// Rows the column builders have room for at first; they grow as rows come. A slice
/// keeps a builder per day it holds (dozens at once, a few rows each for an ad
/// account's day): with room for 1,024 rows, allocating them was ~7% of a sharded
/// Facebook run's CPU.
const FIRST_ROWS: usize = 64;

/// Builds typed batches for one table from records, rejecting what does not fit.
pub struct BatchBuilder {
    schema: TableSchema,
    columns: Vec<Column>,
    /// Columns filled with one value for every row (`_sluice_run_id`, …).
    constants: Vec<Option<Scalar>>,
    rows: usize,
    row: Vec<Scalar>,
}

impl BatchBuilder {
    pub fn new(schema: TableSchema) -> Self {
        let columns = schema
            .fields
            .iter()
            .map(|f| Column::new(f.ty, FIRST_ROWS))
            .collect();
        let constants = vec![None; schema.fields.len()];
        let row = Vec::with_capacity(schema.fields.len());
        BatchBuilder {
            schema,
            columns,
            constants,
            rows: 0,
            row,
        }
    }

    /// Fills column `name` with `value` in every row instead of reading it from records.
    pub fn with_constant(mut self, name: &str, value: Scalar) -> Self {
        if let Some(i) = self.schema.index_of(name) {
            self.constants[i] = Some(value);
        }
        self
    }

    pub fn schema(&self) -> &TableSchema {
        &self.schema
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Appends `record`, or returns why it was rejected (nothing is appended then).
    pub fn push(&mut self, record: &Record) -> Result<(), Rejected> {
        self.push_fields(&record.fields).map_err(|e| Rejected {
            origin: record.origin.clone(),
            reason: e.message,
            raw: Value::Object(record.fields.clone()).to_string(),
        })
    }

    /// Appends one object's fields; on error the row is not appended and the
    /// error says which column refused which value.
    pub fn push_fields(&mut self, fields: &Map<String, Value>) -> Result<(), FieldError> {
        self.row.clear();
        for (i, field) in self.schema.fields.iter().enumerate() {
            if self.constants[i].is_some() {
                self.row.push(Scalar::Null);
                continue;
            }
            let scalar = match fields.get(&field.name) {
                None => Scalar::Null,
                Some(value) => to_scalar(value, field.ty).map_err(|e| FieldError {
                    column: i,
                    value: Some(value.clone()),
                    message: format!("field `{}`: {e}", field.name),
                })?,
            };
            if scalar == Scalar::Null && !field.nullable {
                return Err(FieldError {
                    column: i,
                    value: None,
                    message: format!("field `{}` is required but missing or null", field.name),
                });
            }
            self.row.push(scalar);
        }
        let row = std::mem::take(&mut self.row);
        self.push_cells(&row);
        self.row = row;
        Ok(())
    }

    /// Appends one row of cells in schema order, already typed (by `push_fields` or a
    /// [`LineTyper`](crate::line_typer::LineTyper) of this schema); constants fill their columns.
    pub fn push_cells(&mut self, cells: &[Scalar]) {
        for ((column, cell), constant) in self.columns.iter_mut().zip(cells).zip(&self.constants) {
            column.append(constant.as_ref().unwrap_or(cell));
        }
        self.rows += 1;
    }

    /// Takes the rows appended so far as one batch; the builder is empty again afterwards.
    pub fn finish(&mut self) -> RecordBatch {
        let arrays: Vec<ArrayRef> = self.columns.iter_mut().map(Column::finish).collect();
        self.rows = 0;
        RecordBatch::try_new(self.schema.arrow_schema(), arrays)
            .expect("builders follow the schema")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Field;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Decimal128Type, Int64Type};
    use serde_json::json;

    #[test]
    fn numerics_wider_than_28_digits_stay_exact() {
        let ty = FieldType::Numeric {
            precision: 38,
            scale: 10,
        };
        assert_eq!(
            to_scalar(&json!("-1234567890123456789012345678.0123456789"), ty),
            Ok(Scalar::Numeric(-12345678901234567890123456780123456789))
        );
        assert_eq!(
            to_scalar(&json!("1234567890123456789012345678.01234567890"), ty),
            Ok(Scalar::Numeric(12345678901234567890123456780123456789))
        );
        assert!(
            to_scalar(&json!("1234567890123456789012345678.01234567891"), ty)
                .unwrap_err()
                .contains("decimal places")
        );
        assert!(
            to_scalar(&json!("12345678901234567890123456789.0123456789"), ty)
                .unwrap_err()
                .contains("digits before")
        );
        assert!(to_scalar(&json!("1.2.3"), ty).is_err());
    }

    fn record(v: Value, line: u64) -> Record {
        Record {
            fields: v.as_object().unwrap().clone(),
            origin: Origin {
                page: "p.json".into(),
                line,
            },
        }
    }

    #[test]
    fn types_strings_from_apis_and_rejects_bad_records_whole() {
        let schema = TableSchema::new(vec![
            Field::new("id", FieldType::Text).required(),
            Field::new("impressions", FieldType::Bigint),
            Field::new("spend", FieldType::numeric(2)),
            Field::new("day", FieldType::Date),
        ]);
        let mut b = BatchBuilder::new(schema);
        b.push(&record(json!({"id": "23851234567890123", "impressions": "10234", "spend": "154.27", "day": "2024-07-01"}), 1)).unwrap();
        b.push(&record(json!({"id": "2", "impressions": 7}), 2))
            .unwrap();
        let bad = b
            .push(&record(json!({"id": "3", "impressions": "many"}), 3))
            .unwrap_err();
        assert_eq!(bad.origin.to_string(), "p.json:3");
        assert!(
            bad.reason
                .contains("field `impressions`: expected bigint, got a string of 4 characters"),
            "{}",
            bad.reason
        );
        let missing = b.push(&record(json!({"impressions": 1}), 4)).unwrap_err();
        assert!(missing.reason.contains("`id` is required"));
        let batch = b.finish();
        assert_eq!(batch.num_rows(), 2);
        let impressions = batch.column(1).as_primitive::<Int64Type>();
        assert_eq!(impressions.value(0), 10234);
        let spend = batch.column(2).as_primitive::<Decimal128Type>();
        assert_eq!(spend.value(0), 15427);
        assert!(spend.is_null(1));
    }

    #[test]
    fn numeric_never_rounds_silently() {
        assert_eq!(
            to_scalar(&json!("1.50"), FieldType::numeric(2)),
            Ok(Scalar::Numeric(150))
        );
        assert_eq!(
            to_scalar(&json!(49.9), FieldType::numeric(2)),
            Ok(Scalar::Numeric(4990))
        );
        assert!(to_scalar(&json!("1.505"), FieldType::numeric(2)).is_err());
    }

    #[test]
    fn timestamps_in_the_shapes_apis_send() {
        let expected = Scalar::Timestamp(1_719_828_672_000_000);
        for text in [
            "2024-07-01T10:11:12+0000",
            "2024-07-01T10:11:12Z",
            "2024-07-01 10:11:12",
        ] {
            assert_eq!(
                to_scalar(&json!(text), FieldType::Timestamp),
                Ok(expected.clone()),
                "{text}"
            );
        }
    }
}
