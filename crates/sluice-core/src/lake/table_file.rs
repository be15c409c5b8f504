//! A Parquet file being written to the lake: batches stream to storage, and a file
//! that ends small is written uncompressed.

use arrow::record_batch::RecordBatch;
use object_store::buffered::BufWriter;
use parquet::arrow::async_writer::AsyncArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};

use super::LakeError;

/// Rows per Parquet row group (the unit the writer buffers in memory).
const ROW_GROUP_ROWS: usize = 64 * 1024;

/// Files of fewer rows are written uncompressed, without dictionaries and with
/// statistics per column chunk only. zstd sets up a context for every page: ~0.75 ms
/// of CPU for a file of 40 columns, more than the rest of the file costs, to save
/// ~15 % of a few KB (11 rows × 40 columns, 0.91 against 0.16 ms, 13.9 against
/// 16.2 KB). A dictionary and page-level statistics (a page index) help only files of
/// many rows and pages: without them such a file costs half the CPU and is smaller
/// (0.134 against 0.274 ms, 13.6 against 16.7 KB; its one row group keeps min/max for
/// pruning). One-day files of an account are that small, dozens per slice, and a
/// sharded run writes most of them at its end, when its last report runs complete.
const SMALL_FILE_ROWS: u64 = 128;

/// A Parquet file being written to the lake.
pub struct TableFileWriter {
    state: WriterState,
    path: String,
    rows: u64,
}

enum WriterState {
    /// Until the file holds [`SMALL_FILE_ROWS`] rows or is closed, its batches wait here:
    /// then it is known whether the file is small.
    Pending(Box<PendingFile>),
    Open(Box<AsyncArrowWriter<BufWriter>>),
    /// While switching from `Pending` to `Open`, and after that failed.
    Switching,
}

struct PendingFile {
    object: BufWriter,
    schema: arrow::datatypes::SchemaRef,
    batches: Vec<RecordBatch>,
}

const FAILED_EARLIER: &str = "the Parquet writer could not be created (an earlier error)";

impl TableFileWriter {
    pub(super) fn new(
        object: BufWriter,
        schema: arrow::datatypes::SchemaRef,
        path: &str,
    ) -> TableFileWriter {
        TableFileWriter {
            state: WriterState::Pending(Box::new(PendingFile {
                object,
                schema,
                batches: Vec::new(),
            })),
            path: path.to_string(),
            rows: 0,
        }
    }

    pub async fn write(&mut self, batch: &RecordBatch) -> Result<(), LakeError> {
        self.rows += batch.num_rows() as u64;
        match &mut self.state {
            WriterState::Pending(pending) => {
                pending.batches.push(batch.clone());
                if self.rows >= SMALL_FILE_ROWS {
                    self.open().await?;
                }
                Ok(())
            }
            WriterState::Open(writer) => writer.write(batch).await.map_err(|e| self.error(e)),
            WriterState::Switching => Err(self.error(FAILED_EARLIER)),
        }
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The file's path in the lake, as given to `Lake::parquet_writer`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Bytes of the row group being built, held in memory until it is flushed.
    pub fn buffered_bytes(&self) -> usize {
        match &self.state {
            WriterState::Pending(pending) => pending
                .batches
                .iter()
                .map(RecordBatch::get_array_memory_size)
                .sum(),
            WriterState::Open(writer) => writer.in_progress_size(),
            WriterState::Switching => 0,
        }
    }

    /// Ends the current row group (a smaller one), releasing its buffers.
    pub async fn flush(&mut self) -> Result<(), LakeError> {
        match &mut self.state {
            // At most SMALL_FILE_ROWS rows: nothing worth releasing.
            WriterState::Pending(_) | WriterState::Switching => Ok(()),
            WriterState::Open(writer) => writer.flush().await.map_err(|e| self.error(e)),
        }
    }

    /// Finishes the file; it becomes visible in the lake only now.
    pub async fn close(mut self) -> Result<(String, u64), LakeError> {
        self.open().await?;
        let WriterState::Open(writer) = std::mem::replace(&mut self.state, WriterState::Switching)
        else {
            return Err(self.error(FAILED_EARLIER));
        };
        writer.close().await.map_err(|e| self.error(e))?;
        Ok((self.path, self.rows))
    }

    /// Creates the Parquet writer, compressed unless the file is small, and writes the
    /// batches that waited for it.
    async fn open(&mut self) -> Result<(), LakeError> {
        let pending = match std::mem::replace(&mut self.state, WriterState::Switching) {
            WriterState::Pending(pending) => pending,
            other => {
                self.state = other;
                return Ok(());
            }
        };
        let PendingFile {
            object,
            schema,
            batches,
        } = *pending;
        let props = WriterProperties::builder()
            // Row groups are buffered in memory until full: keep them small enough to bound RSS.
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS));
        let props = if self.rows < SMALL_FILE_ROWS {
            props
                .set_compression(Compression::UNCOMPRESSED)
                .set_dictionary_enabled(false)
                .set_statistics_enabled(EnabledStatistics::Chunk)
        } else {
            props.set_compression(Compression::ZSTD(
                ZstdLevel::try_new(1).expect("valid level"),
            ))
        }
        .build();
        let mut writer =
            AsyncArrowWriter::try_new(object, schema, Some(props)).map_err(|e| self.error(e))?;
        for batch in &batches {
            writer.write(batch).await.map_err(|e| self.error(e))?;
        }
        self.state = WriterState::Open(Box::new(writer));
        Ok(())
    }

    fn error(&self, e: impl std::fmt::Display) -> LakeError {
        LakeError::Data {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::lake::{read_parquet, Lake};

    /// A file known to be small when it closes is written uncompressed and without
    /// dictionaries, a bigger one with zstd and dictionaries; both keep min/max
    /// statistics and read back as written.
    #[tokio::test]
    async fn small_files_are_written_uncompressed_and_read_back_alike() {
        use arrow::array::{Int64Array, StringArray};
        use arrow::datatypes::{DataType, Field, Schema};
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open("lake", dir.path()).unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
        ]));
        let batch = |from: i64, rows: i64| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from_iter_values(from..from + rows)),
                    Arc::new(StringArray::from_iter_values(
                        (from..from + rows).map(|i| format!("row {i}")),
                    )),
                ],
            )
            .unwrap()
        };
        for (path, batches) in [
            ("small.parquet", vec![batch(0, 11)]),
            ("big.parquet", vec![batch(0, 100), batch(100, 100)]),
        ] {
            let mut writer = lake.parquet_writer(path, schema.clone()).unwrap();
            for b in &batches {
                writer.write(b).await.unwrap();
            }
            writer.close().await.unwrap();
            let all = |b: &[RecordBatch]| arrow::compute::concat_batches(&schema, b).unwrap();
            let read = read_parquet(&lake, path).await.unwrap();
            assert_eq!(all(&read), all(&batches), "{path}");
            let file = std::fs::File::open(dir.path().join("lake").join(path)).unwrap();
            let reader = SerializedFileReader::new(file).unwrap();
            let column = reader.metadata().row_group(0).column(1);
            let small = path == "small.parquet";
            let expected = if small {
                Compression::UNCOMPRESSED
            } else {
                Compression::ZSTD(ZstdLevel::try_new(1).unwrap())
            };
            assert_eq!(column.compression(), expected, "{path}");
            assert_eq!(
                column.dictionary_page_offset().is_some(),
                !small,
                "{path}: a dictionary"
            );
            let stats = column.statistics().expect("statistics");
            assert!(
                stats.min_bytes_opt().is_some() && stats.max_bytes_opt().is_some(),
                "{path}"
            );
        }
    }
}
