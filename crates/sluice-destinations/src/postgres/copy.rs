//! Arrow cells in PostgreSQL's binary wire format, for `COPY … (FORMAT binary)`.
//!
//! The COPY framing is `tokio_postgres::binary_copy::BinaryCopyInWriter`'s job;
//! this module only encodes one value of each type, straight from the Arrow
//! buffers (no `String`, `Decimal` or JSON value is built per cell). Numeric is
//! encoded here rather than through `rust_decimal`, whose 96-bit mantissa
//! cannot hold every `Decimal128(38, s)` value.

use std::error::Error;

use bytes::{BufMut, BytesMut};
use sluice_core::schema::FieldType;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

use crate::columns::{Cell, Column};

/// Days from 1970-01-01 (Arrow's epoch) to 2000-01-01 (PostgreSQL's).
const PG_EPOCH_DAYS: i32 = 10_957;
/// The same distance in microseconds.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// The COPY type of a staging column for `ty`.
pub fn wire_type(ty: FieldType) -> Type {
    match ty {
        FieldType::Boolean => Type::BOOL,
        FieldType::Bigint => Type::INT8,
        FieldType::Double => Type::FLOAT8,
        FieldType::Numeric { .. } => Type::NUMERIC,
        FieldType::Text => Type::TEXT,
        FieldType::Json => Type::JSONB,
        FieldType::Date => Type::DATE,
        FieldType::Timestamp => Type::TIMESTAMPTZ,
    }
}

impl ToSql for Cell<'_> {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match *self {
            Cell::Null => return Ok(IsNull::Yes),
            Cell::Boolean(v) => out.put_u8(v as u8),
            Cell::Bigint(v) => out.put_i64(v),
            Cell::Double(v) => out.put_f64(v),
            Cell::Numeric(unscaled, scale) => encode_numeric(unscaled, scale, out),
            Cell::Text(s) => put_text(s, out),
            Cell::Json(s) => {
                // jsonb's binary format: a version byte, then the JSON text.
                out.put_u8(1);
                out.put_slice(s.as_bytes());
            }
            Cell::Date(days) => out.put_i32(
                days.checked_sub(PG_EPOCH_DAYS)
                    .ok_or("date out of PostgreSQL's range")?,
            ),
            Cell::Timestamp(micros) => out.put_i64(
                micros
                    .checked_sub(PG_EPOCH_MICROS)
                    .ok_or("timestamp out of PostgreSQL's range")?,
            ),
        }
        Ok(IsNull::No)
    }

    /// Staging columns are created from the same [`FieldType`]s the cells come from.
    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// PostgreSQL text cannot hold NUL; it becomes U+FFFD rather than failing the whole load.
#[inline]
fn put_text(s: &str, out: &mut BytesMut) {
    if !s.as_bytes().contains(&0) {
        out.put_slice(s.as_bytes());
    } else {
        out.put_slice(s.replace('\0', "\u{FFFD}").as_bytes());
    }
}

/// One row of staging cells: the table's columns, then (for merges) the row's
/// position in the load, so the last row for a key can win.
pub struct RowCells<'r, 'a> {
    pub columns: &'r [Column<'a>],
    pub row: usize,
    pub ordinal: Option<i64>,
    pub next: usize,
}

impl<'a> Iterator for RowCells<'_, 'a> {
    type Item = Cell<'a>;

    #[inline]
    fn next(&mut self) -> Option<Cell<'a>> {
        let i = self.next;
        self.next += 1;
        if let Some(column) = self.columns.get(i) {
            Some(column.cell(self.row))
        } else if i == self.columns.len() {
            self.ordinal.map(Cell::Bigint)
        } else {
            None
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let total = self.columns.len() + usize::from(self.ordinal.is_some());
        let left = total.saturating_sub(self.next);
        (left, Some(left))
    }
}

impl ExactSizeIterator for RowCells<'_, '_> {}

/// PostgreSQL's binary numeric: base-10000 digits around the decimal point,
/// `weight` = exponent of the first digit group, then sign and display scale.
pub fn encode_numeric(unscaled: i128, scale: i8, out: &mut BytesMut) {
    // Groups indexed by their base-10000 exponent, offset so negative exponents fit.
    const OFFSET: i32 = 16;
    let mut groups = [0i16; 2 * OFFSET as usize];
    let mut magnitude = unscaled.unsigned_abs();
    let mut exponent = -(scale as i32);
    while magnitude > 0 {
        let digit = (magnitude % 10) as i16;
        magnitude /= 10;
        let group = exponent.div_euclid(4) + OFFSET;
        groups[group as usize] += digit * 10i16.pow(exponent.rem_euclid(4) as u32);
        exponent += 1;
    }
    let nonzero = groups.iter().position(|&g| g != 0);
    let dscale = scale.max(0) as u16;
    let Some(lowest) = nonzero else {
        out.put_i16(0);
        out.put_i16(0);
        out.put_u16(0);
        out.put_u16(dscale);
        return;
    };
    let highest = groups.iter().rposition(|&g| g != 0).unwrap_or(lowest);
    out.put_i16((highest - lowest + 1) as i16);
    out.put_i16(highest as i16 - OFFSET as i16);
    out.put_u16(if unscaled < 0 { 0x4000 } else { 0 });
    out.put_u16(dscale);
    for group in groups[lowest..=highest].iter().rev() {
        out.put_i16(*group);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(unscaled: i128, scale: i8) -> Vec<i16> {
        let mut out = BytesMut::new();
        encode_numeric(unscaled, scale, &mut out);
        out.chunks(2)
            .map(|c| i16::from_be_bytes([c[0], c[1]]))
            .collect()
    }

    #[test]
    fn numeric_matches_postgres_layout() {
        // 154.27 → digits [154, 2700], weight 0, scale 2
        assert_eq!(numeric(15427, 2), vec![2, 0, 0, 2, 154, 2700]);
        // -0.005 → digits [50], weight -1, negative
        assert_eq!(numeric(-5, 3), vec![1, -1, 0x4000, 3, 50]);
        // 10000 → digits [1], weight 1
        assert_eq!(numeric(1_000_000, 2), vec![1, 1, 0, 2, 1]);
        assert_eq!(numeric(0, 6), vec![0, 0, 0, 6]);
        // 38 digits do not overflow
        let big = numeric(99_999_999_999_999_999_999_999_999_999_999_999_999, 0);
        assert_eq!(big[0], 10);
        assert_eq!(big[1], 9);
    }
}
