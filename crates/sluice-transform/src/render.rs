//! Query results for people and tools: an aligned table, CSV or JSON rows.

use datafusion::arrow::array::RecordBatch;

use crate::error::TransformError;

/// How `sluice query` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    #[default]
    Table,
    Csv,
    Json,
}

pub fn render(batches: &[RecordBatch], format: OutputFormat) -> Result<String, TransformError> {
    let err = |e: datafusion::arrow::error::ArrowError| TransformError::engine("output", e);
    match format {
        OutputFormat::Table => Ok(
            datafusion::arrow::util::pretty::pretty_format_batches(batches)
                .map_err(err)?
                .to_string(),
        ),
        OutputFormat::Csv => {
            let mut out = Vec::new();
            {
                let mut writer = datafusion::arrow::csv::Writer::new(&mut out);
                for b in batches {
                    writer.write(b).map_err(err)?;
                }
            }
            Ok(String::from_utf8_lossy(&out).into_owned())
        }
        OutputFormat::Json => {
            let mut out = Vec::new();
            {
                let mut writer = datafusion::arrow::json::ArrayWriter::new(&mut out);
                for b in batches {
                    writer.write(b).map_err(err)?;
                }
                writer.finish().map_err(err)?;
            }
            let text = String::from_utf8_lossy(&out).into_owned();
            Ok(if text.is_empty() { "[]".into() } else { text })
        }
    }
}
