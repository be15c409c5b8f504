//! Folding a column back into the one it renamed, in the lake's D1 files.
//!
//! A run without a `renames` entry evolves a renamed field into a column of its
//! own (`amount_value` beside `Amount`). Once the rename is declared, the next run
//! folds it back: the destination moves the column's values in its load
//! transaction, and here every D1 file holding the column is rewritten with its
//! values in the kept column and without it, so models reading the lake see one
//! column across the change day. Each file is replaced whole (staged, then
//! renamed over the original), and a file without the column is left alone, so
//! an interrupted fold is simply done again by the next run.

use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::compute::kernels::zip::zip;
use arrow::compute::{cast, is_not_null};
use arrow::datatypes::{Field, Schema};
use arrow::record_batch::RecordBatch;

use crate::lake::{layout, read_parquet, Lake, LakeError};

/// Rewrites the files of D1 table `table` holding a folded column (`folded`:
/// kept → sent). Returns how many files were rewritten.
pub async fn fold_lake_table(
    lake: &Lake,
    table: &str,
    folded: &[(String, String)],
) -> Result<usize, LakeError> {
    let folder = format!("{}/", layout::table("d1", table));
    let mut rewritten = 0;
    for object in lake.list(&folder).await? {
        if !object.path.ends_with(".parquet") {
            continue;
        }
        let batches = read_parquet(lake, &object.path).await?;
        let Some(first) = batches.first() else {
            continue;
        };
        let schema = first.schema();
        if !folded.iter().any(|(_, sent)| schema.index_of(sent).is_ok()) {
            continue;
        }
        let data_error = |e: arrow::error::ArrowError| LakeError::Data {
            path: object.path.clone(),
            message: e.to_string(),
        };
        let folded_batches = batches
            .iter()
            .map(|b| fold_batch(b, folded))
            .collect::<Result<Vec<_>, _>>()
            .map_err(data_error)?;
        let staged = format!(
            "{}/fold/{}.parquet",
            layout::staging("fold"),
            object.path.replace('/', "__")
        );
        let mut writer = lake.parquet_writer(&staged, folded_batches[0].schema())?;
        for batch in &folded_batches {
            writer.write(batch).await?;
        }
        writer.close().await?;
        lake.rename(&staged, &object.path).await?;
        rewritten += 1;
    }
    Ok(rewritten)
}

/// One batch with each folded column's values in its kept column (where that is
/// empty) and the folded column gone. A batch without the kept column gets it.
pub fn fold_batch(
    batch: &RecordBatch,
    folded: &[(String, String)],
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let mut fields: Vec<Arc<Field>> = batch.schema().fields().iter().cloned().collect();
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    for (kept, sent) in folded {
        let Some(at) = fields.iter().position(|f| f.name() == sent) else {
            continue;
        };
        let moved = columns.remove(at);
        let moved_field = fields.remove(at);
        match fields.iter().position(|f| f.name() == kept) {
            Some(k) => {
                let values = cast(&moved, fields[k].data_type())?;
                let have = &columns[k];
                let merged = zip(&is_not_null(have.as_ref())?, have, &values)?;
                columns[k] = merged;
            }
            None => {
                fields.push(Arc::new(Field::new(
                    kept,
                    moved_field.data_type().clone(),
                    true,
                )));
                columns.push(moved);
            }
        }
    }
    let schema = Arc::new(Schema::new_with_metadata(
        fields,
        batch.schema().metadata().clone(),
    ));
    RecordBatch::try_new(schema, columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Float64Array, Int64Array};

    #[test]
    fn the_folded_columns_values_fill_the_kept_column_and_it_is_dropped() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("Amount", arrow::datatypes::DataType::Float64, true),
            Field::new("amount_value", arrow::datatypes::DataType::Int64, true),
            Field::new("n", arrow::datatypes::DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Float64Array::from(vec![Some(1.5), None, None])),
                Arc::new(Int64Array::from(vec![None, Some(7), None])),
                Arc::new(Int64Array::from(vec![1, 2, 3])),
            ],
        )
        .unwrap();
        let folded = fold_batch(&batch, &[("Amount".into(), "amount_value".into())]).unwrap();
        let schema = folded.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["Amount", "n"]);
        let amount = folded
            .column(0)
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        assert_eq!(
            amount.iter().collect::<Vec<_>>(),
            [Some(1.5), Some(7.0), None]
        );
        // A batch without the folded column is unchanged.
        let again = fold_batch(&folded, &[("Amount".into(), "amount_value".into())]).unwrap();
        assert_eq!(again, folded);
    }
}
