//! Model outputs conformed to sluice's column types before they are written and loaded:
//! text → Utf8, integers → Int64, floats → Float64, decimals → Decimal128(38, s ≤ 18),
//! dates → Date32, timestamps → Timestamp(µs, UTC). Every column is nullable, so files
//! of different runs share one schema.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use sluice_core::schema::TableSchema;

/// The conformed type of `ty`, or why it has none.
fn conform_type(name: &str, ty: &DataType) -> Result<DataType, String> {
    Ok(match ty {
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 | DataType::Null => DataType::Utf8,
        DataType::Dictionary(_, v) => conform_type(name, v)?,
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => DataType::Int64,
        DataType::Float16 | DataType::Float32 | DataType::Float64 => DataType::Float64,
        DataType::Decimal32(_, s)
        | DataType::Decimal64(_, s)
        | DataType::Decimal128(_, s)
        | DataType::Decimal256(_, s) => DataType::Decimal128(38, (*s).clamp(0, 18)),
        DataType::Date32 | DataType::Date64 => DataType::Date32,
        DataType::Timestamp(_, _) => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        DataType::Boolean => DataType::Boolean,
        other => {
            return Err(format!(
                "column `{name}` has type {other}, which a table cannot hold: cast it (e.g. to VARCHAR)"
            ))
        }
    })
}

/// The table schema of a model's output schema.
pub fn table_schema(schema: &Schema) -> Result<(TableSchema, SchemaRef), String> {
    let mut seen = std::collections::BTreeSet::new();
    let fields = schema
        .fields()
        .iter()
        .map(|f| {
            if !seen.insert(f.name().to_string()) {
                return Err(format!(
                    "column `{}` appears twice: give each output column its own name",
                    f.name()
                ));
            }
            Ok(Field::new(
                f.name(),
                conform_type(f.name(), f.data_type())?,
                true,
            ))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let table = TableSchema::from_arrow(&Schema::new(fields))?;
    let arrow = table.arrow_schema();
    Ok((table, arrow))
}

/// Casts `batch` to `target` (same column order).
pub fn conform_batch(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch, String> {
    let columns = batch
        .columns()
        .iter()
        .zip(target.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c.clone())
            } else {
                cast(c, f.data_type()).map_err(|e| format!("column `{}`: {e}", f.name()))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(Arc::clone(target), columns).map_err(|e| e.to_string())
}
