//! Reading Arrow batches column by column, typed once per batch.
//!
//! Destinations write rows, Arrow stores columns. [`BatchColumns`] checks a
//! batch against the table schema once (casting a column whose Arrow type is a
//! compatible variant, e.g. `Int32` for `bigint`), then hands out typed
//! [`Column`] views so the per-row loop does no downcasting and no allocation.
//! It also owns the text forms of values (decimals, dates, timestamps) that
//! text-based destinations store.

use std::fmt::Write as _;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Date32Array, Decimal128Array, Float64Array, Int64Array,
    StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Date32Type, Decimal128Type, Float64Type, Int64Type, TimeUnit};
use arrow::record_batch::RecordBatch;
use sluice_core::schema::{FieldType, TableSchema};

/// The columns of one batch, each in the Arrow type its field's [`FieldType`] maps to.
pub struct BatchColumns {
    arrays: Vec<(ArrayRef, FieldType)>,
    rows: usize,
}

impl BatchColumns {
    /// Checks `batch` has `schema`'s columns in order and normalises their Arrow types.
    pub fn new(batch: &RecordBatch, schema: &TableSchema) -> Result<BatchColumns, String> {
        if batch.num_columns() != schema.fields.len() {
            return Err(format!(
                "batch has {} columns, the table schema {}",
                batch.num_columns(),
                schema.fields.len()
            ));
        }
        let arrays = schema
            .fields
            .iter()
            .zip(batch.columns())
            .map(|(field, array)| {
                let wanted = field.ty.arrow_type();
                let array = if same_physical_type(array.data_type(), &wanted) {
                    array.clone()
                } else {
                    arrow::compute::cast(array, &wanted).map_err(|e| {
                        format!(
                            "column `{}` is {} and cannot be read as {}: {e}",
                            field.name,
                            array.data_type(),
                            field.ty.name()
                        )
                    })?
                };
                Ok((array, field.ty))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(BatchColumns {
            arrays,
            rows: batch.num_rows(),
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Typed views, one per column, borrowed from this batch.
    pub fn views(&self) -> Vec<Column<'_>> {
        self.arrays
            .iter()
            .map(|(array, ty)| Column::new(array.as_ref(), *ty))
            .collect()
    }
}

/// Timestamps in any zone are UTC microseconds underneath; only the unit matters.
fn same_physical_type(actual: &DataType, wanted: &DataType) -> bool {
    match (actual, wanted) {
        (
            DataType::Timestamp(TimeUnit::Microsecond, _),
            DataType::Timestamp(TimeUnit::Microsecond, _),
        ) => true,
        _ => actual == wanted,
    }
}

/// One column of a batch, typed.
#[derive(Clone, Copy)]
pub enum Column<'a> {
    Boolean(&'a BooleanArray),
    Bigint(&'a Int64Array),
    Double(&'a Float64Array),
    Numeric(&'a Decimal128Array, i8),
    Text(&'a StringArray),
    Json(&'a StringArray),
    Date(&'a Date32Array),
    Timestamp(&'a TimestampMicrosecondArray),
}

/// One cell, borrowed: what the per-row loops of the destinations consume.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cell<'a> {
    Null,
    Boolean(bool),
    Bigint(i64),
    Double(f64),
    /// Unscaled value and scale.
    Numeric(i128, i8),
    Text(&'a str),
    Json(&'a str),
    /// Days since 1970-01-01.
    Date(i32),
    /// Microseconds since 1970-01-01T00:00:00Z.
    Timestamp(i64),
}

impl<'a> Column<'a> {
    /// `array` must have `ty`'s Arrow type ([`BatchColumns::new`] ensures it).
    fn new(array: &'a dyn Array, ty: FieldType) -> Column<'a> {
        match ty {
            FieldType::Boolean => Column::Boolean(array.as_boolean()),
            FieldType::Bigint => Column::Bigint(array.as_primitive::<Int64Type>()),
            FieldType::Double => Column::Double(array.as_primitive::<Float64Type>()),
            FieldType::Numeric { scale, .. } => {
                Column::Numeric(array.as_primitive::<Decimal128Type>(), scale)
            }
            FieldType::Text => Column::Text(array.as_string::<i32>()),
            FieldType::Json => Column::Json(array.as_string::<i32>()),
            FieldType::Date => Column::Date(array.as_primitive::<Date32Type>()),
            FieldType::Timestamp => Column::Timestamp(
                array.as_primitive::<arrow::datatypes::TimestampMicrosecondType>(),
            ),
        }
    }

    #[inline]
    pub fn cell(&self, row: usize) -> Cell<'a> {
        macro_rules! cell {
            ($a:expr, $v:expr) => {
                if $a.is_null(row) {
                    Cell::Null
                } else {
                    $v
                }
            };
        }
        match *self {
            Column::Boolean(a) => cell!(a, Cell::Boolean(a.value(row))),
            Column::Bigint(a) => cell!(a, Cell::Bigint(a.value(row))),
            Column::Double(a) => cell!(a, Cell::Double(a.value(row))),
            Column::Numeric(a, scale) => cell!(a, Cell::Numeric(a.value(row), scale)),
            Column::Text(a) => cell!(a, Cell::Text(a.value(row))),
            Column::Json(a) => cell!(a, Cell::Json(a.value(row))),
            Column::Date(a) => cell!(a, Cell::Date(a.value(row))),
            Column::Timestamp(a) => cell!(a, Cell::Timestamp(a.value(row))),
        }
    }
}

/// Writes an unscaled decimal as its exact text: `15427` at scale 2 is `154.27`,
/// `-5` at scale 3 is `-0.005`. Every fractional digit is kept, so the text has
/// exactly `scale` decimals.
pub fn write_decimal(out: &mut String, unscaled: i128, scale: i8) {
    if scale <= 0 {
        let _ = write!(out, "{unscaled}");
        for _ in 0..(-scale) {
            out.push('0');
        }
        return;
    }
    let scale = scale as u32;
    let divisor = 10u128.pow(scale);
    let magnitude = unscaled.unsigned_abs();
    if unscaled < 0 {
        out.push('-');
    }
    let _ = write!(
        out,
        "{}.{:0width$}",
        magnitude / divisor,
        magnitude % divisor,
        width = scale as usize
    );
}

/// `YYYY-MM-DD` for days since the epoch; `None` outside chrono's range.
pub fn write_date(out: &mut String, days: i32) -> Option<()> {
    let date = chrono::NaiveDate::from_num_days_from_ce_opt(days.checked_add(719_163)?)?;
    let _ = write!(out, "{}", date.format("%Y-%m-%d"));
    Some(())
}

/// RFC 3339 in UTC with exactly six fractional digits, so text order is time order.
pub fn write_timestamp(out: &mut String, micros: i64) -> Option<()> {
    let t = chrono::DateTime::from_timestamp_micros(micros)?;
    let _ = write!(out, "{}", t.format("%Y-%m-%dT%H:%M:%S%.6fZ"));
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decimal(unscaled: i128, scale: i8) -> String {
        let mut s = String::new();
        write_decimal(&mut s, unscaled, scale);
        s
    }

    #[test]
    fn decimals_print_exactly() {
        assert_eq!(decimal(15427, 2), "154.27");
        assert_eq!(decimal(-5, 3), "-0.005");
        assert_eq!(decimal(0, 2), "0.00");
        assert_eq!(decimal(7, 0), "7");
        assert_eq!(decimal(i128::MAX / 10, 6).len(), 38 + 1);
    }

    #[test]
    fn dates_and_timestamps_as_text() {
        let mut s = String::new();
        write_date(&mut s, 19_905).unwrap();
        assert_eq!(s, "2024-07-01");
        s.clear();
        write_timestamp(&mut s, 1_719_828_672_000_001).unwrap();
        assert_eq!(s, "2024-07-01T10:11:12.000001Z");
    }
}
