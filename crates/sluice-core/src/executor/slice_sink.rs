//! One attempt at one slice, as the source sees it: the [`PageSink`] the executor
//! hands to `Source::read`.
//!
//! It lands pages in `raw/`, types records into Arrow batches per partition
//! (`dt`), stages the batches as Parquet under `_staging/<run>/`, keeps records
//! that do not fit for quarantine, and feeds the live load. Schema changes go
//! through the stream's shared [`StreamSchema`]; when it moves on, the sink closes
//! its files (they keep the old shape) and types with the new one.
//!
//! A finished attempt hands its files and rejected records to the stream and
//! writes a checkpoint; a failed one deletes what it staged (its raw pages stay).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use serde_json::Value;

use super::extraction::Extraction;
use super::publish::StagedFile;
use super::{loaded_at_micros, schema_frozen, BATCH_ROWS, STAGED_FILE_ROWS};
use crate::drift::{ChangeKind, Misfit, StreamSchema};
use crate::lake::{LakeError, PagePath, TableFileWriter};
use crate::line_typer::LineTyper;
use crate::line_typer::TypedLines;
use crate::schema::{FieldType, TableSchema, LOADED_AT_COLUMN, RUN_ID_COLUMN};
use crate::source::{LandedPage, PageSink, SourceError};
use crate::state::SliceCheckpoint;
use crate::typing::{to_scalar, BatchBuilder, Record, Rejected, Scalar};

/// Staged files of a slice closed (encoded and written to the lake) at once.
const FILES_CLOSED_AT_ONCE: usize = 8;

/// One attempt at one slice: lands pages, types records, stages Parquet per partition.
pub(super) struct SliceSink<'s, 'a> {
    extraction: &'s Extraction<'a>,
    /// The slice's index in the plan, and which attempt at it this is: both name its files.
    slice: usize,
    attempt: u64,
    /// The version of the stream's schema this sink types with, and that schema.
    schema_version: u64,
    schema: TableSchema,
    /// Per partition (`dt`): rows being built and the staged file they go to.
    partitions: BTreeMap<String, Partition>,
    /// Every file this attempt staged (open or closed), in the order opened.
    files: Vec<StagedFile>,
    rejected: Vec<Rejected>,
    rows: u64,
    /// Numbers the next staged file, so rotated and reopened files never collide.
    file_seq: u32,
    /// The cursor the source reported for after this slice.
    cursor: Option<Value>,
}

/// One open partition of a slice.
struct Partition {
    builder: BatchBuilder,
    /// The staged file being written; `None` before the first batch or after a rotation.
    writer: Option<TableFileWriter>,
}

impl<'s, 'a> SliceSink<'s, 'a> {
    pub(super) fn new(extraction: &'s Extraction<'a>, slice: usize, attempt: u64) -> Self {
        let (schema, version) = {
            let s = extraction.schema.lock().expect("schema lock");
            (s.schema.clone(), s.version)
        };
        SliceSink {
            extraction,
            slice,
            attempt,
            schema_version: version,
            schema,
            partitions: BTreeMap::new(),
            files: Vec::new(),
            rejected: Vec::new(),
            rows: 0,
            file_seq: 0,
            cursor: None,
        }
    }

    /// sluice's own columns: one value for every row of the run.
    fn constants(&self) -> Vec<(String, Scalar)> {
        vec![
            (
                RUN_ID_COLUMN.to_string(),
                Scalar::Text(self.extraction.run_id.to_string()),
            ),
            (
                LOADED_AT_COLUMN.to_string(),
                Scalar::Timestamp(loaded_at_micros(self.extraction.run_id)),
            ),
        ]
    }

    /// The partition `dt` of this slice, opened on first use.
    fn partition(&mut self, dt: &str) -> &mut Partition {
        if !self.partitions.contains_key(dt) {
            let builder = self.new_builder();
            let partition = Partition {
                builder,
                writer: None,
            };
            self.partitions.insert(dt.to_string(), partition);
        }
        self.partitions.get_mut(dt).expect("inserted above")
    }

    fn new_builder(&self) -> BatchBuilder {
        self.constants().into_iter().fold(
            BatchBuilder::new(self.schema.clone()),
            |builder, (name, value)| builder.with_constant(&name, value),
        )
    }

    /// The `dt` partition of a record, from the stream's partition column.
    fn partition_of(&self, record: &Record) -> Result<String, String> {
        let Some(column) = &self.extraction.stream.partition_column else {
            return Ok(self.extraction.window.today.to_string());
        };
        match record
            .fields
            .get(column)
            .map(|v| to_scalar(v, FieldType::Date))
        {
            Some(Ok(Scalar::Date(days))) => Ok(crate::lake::date_folder(days)),
            Some(Err(e)) => Err(format!("partition column `{column}`: {e}")),
            _ => Err(format!("partition column `{column}` is missing or null")),
        }
    }

    async fn flush_partition(&mut self, dt: &str) -> Result<(), SourceError> {
        let partition = self.partitions.get_mut(dt).expect("partition exists");
        if partition.builder.is_empty() {
            return Ok(());
        }
        let batch = partition.builder.finish();
        self.write_batch(dt, batch).await
    }

    /// Writes a batch of the sink's schema to the partition's staged file (and the streaming load).
    async fn write_batch(&mut self, dt: &str, batch: RecordBatch) -> Result<(), SourceError> {
        let table = &self.extraction.stream.table;
        let run_id = self.extraction.run_id;
        let (slice, attempt) = (self.slice, self.attempt);
        let seq = self.file_seq;
        let partition = self.partitions.get_mut(dt).expect("partition exists");
        if partition.writer.is_none() {
            let path = format!(
                "{}/{table}/dt={dt}/s{slice:05}-a{attempt}-{seq:04}.parquet",
                crate::lake::layout::staging(run_id)
            );
            let writer = self
                .extraction
                .lake
                .parquet_writer(&path, batch.schema())
                .map_err(lake_to_source)?;
            partition.writer = Some(writer);
            self.files.push(StagedFile {
                slice,
                dt: dt.to_string(),
                path,
            });
            self.file_seq += 1;
        }
        let writer = partition.writer.as_mut().expect("writer just set");
        writer.write(&batch).await.map_err(lake_to_source)?;
        self.extraction.kept.keep(writer.path(), &batch);
        if self.schema_version == 0 {
            self.extraction.live_load.send(&batch).await;
        }
        // Rotate big files: the load reads one staged file into memory at a time.
        if writer.rows() >= STAGED_FILE_ROWS {
            let writer = partition.writer.take().expect("writer present");
            writer.close().await.map_err(lake_to_source)?;
        }
        Ok(())
    }

    async fn close_all(&mut self) -> Result<(), SourceError> {
        let dts: Vec<String> = self.partitions.keys().cloned().collect();
        for dt in &dts {
            self.flush_partition(dt).await?;
        }
        // A slice of a month has a file per day: written at once, not one after another.
        let writers = std::mem::take(&mut self.partitions)
            .into_values()
            .filter_map(|partition| partition.writer);
        futures::stream::iter(writers)
            .map(|writer| writer.close())
            .buffer_unordered(FILES_CLOSED_AT_ONCE)
            .try_collect::<Vec<_>>()
            .await
            .map_err(lake_to_source)?;
        Ok(())
    }

    /// The slice succeeded: its files and rejected records become part of the stream,
    /// and a checkpoint lets a later run reuse them if this run does not publish.
    pub(super) async fn finish(mut self, slice_key: &str) -> Result<u64, SourceError> {
        self.close_all().await?;
        let checkpoint = SliceCheckpoint {
            slice_key: slice_key.to_string(),
            run_id: self.extraction.run_id.to_string(),
            rows: self.rows,
            files: self
                .files
                .iter()
                .map(|f| (f.dt.clone(), f.path.clone()))
                .collect(),
            rejected: self
                .rejected
                .iter()
                .map(|r| {
                    (
                        r.origin.page.to_string(),
                        r.origin.line,
                        r.reason.clone(),
                        r.raw.clone(),
                    )
                })
                .collect(),
            cursor: self.cursor.clone(),
        };
        if let Err(e) = self
            .extraction
            .state
            .save_checkpoint(&self.extraction.stream.table, &checkpoint)
            .await
        {
            // Only resumability is lost; the run itself can go on.
            tracing::warn!(error = %e, "cannot write a slice checkpoint");
        }
        self.extraction
            .counters
            .rows
            .fetch_add(self.rows, Ordering::Relaxed);
        self.extraction
            .staged
            .lock()
            .expect("staged lock")
            .append(&mut self.files);
        self.extraction
            .rejected
            .lock()
            .expect("rejected lock")
            .append(&mut self.rejected);
        if let Some(cursor) = self.cursor.take() {
            let mut cursors = self.extraction.cursors.lock().expect("cursors lock");
            cursors.insert(self.slice, cursor);
        }
        Ok(self.rows)
    }

    /// The attempt failed: remove what it staged (its raw pages stay in the lake).
    pub(super) async fn discard(mut self) {
        // Its rows may already be in the streaming load: that load cannot be used.
        self.extraction.live_load.abort();
        for (_, partition) in std::mem::take(&mut self.partitions) {
            drop(partition.writer);
        }
        for file in &self.files {
            self.extraction.kept.forget(&file.path);
            let _ = self.extraction.lake.delete(&file.path).await;
        }
    }
}

impl SliceSink<'_, '_> {
    fn reject(&mut self, record: &Record, reason: String) {
        self.rejected.push(Rejected {
            origin: record.origin.clone(),
            reason,
            raw: Value::Object(record.fields.clone()).to_string(),
        });
    }

    /// Runs `change` on the shared schema; if the schema moved on, closes this
    /// slice's open files (they keep the old shape) and adopts the new one.
    async fn sync_schema(
        &mut self,
        change: impl FnOnce(&mut StreamSchema) -> Result<(), String>,
    ) -> Result<(), SourceError> {
        let (version, result) = {
            let mut schema = self.extraction.schema.lock().expect("schema lock");
            let result = change(&mut schema);
            if schema.version != self.schema_version {
                self.schema = schema.schema.clone();
            }
            (schema.version, result)
        };
        if let Err(message) = result {
            return Err(schema_frozen(message));
        }
        if version != self.schema_version {
            self.close_all().await?;
            self.schema_version = version;
            // Rows of the new shape do not fit the table the load started with.
            self.extraction.live_load.abort();
        }
        Ok(())
    }
}

fn lake_to_source(e: LakeError) -> SourceError {
    SourceError::transient(format!("lake: {e}"))
}

#[async_trait]
impl PageSink for SliceSink<'_, '_> {
    async fn land(
        &mut self,
        name: &str,
        extension: &str,
        dt: &str,
        body: &bytes::Bytes,
    ) -> Result<LandedPage, SourceError> {
        let page = format!("s{:05}-a{}-{name}", self.slice, self.attempt);
        let path = PagePath {
            source: self.extraction.source,
            stream: &self.extraction.stream.name,
            dt,
            run_id: self.extraction.run_id,
            page: &page,
            extension,
        };
        let path = self
            .extraction
            .lake
            .land_page(&path, body.clone())
            .await
            .map_err(lake_to_source)?;
        self.extraction
            .counters
            .pages
            .fetch_add(1, Ordering::Relaxed);
        self.extraction
            .counters
            .bytes
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        Ok(LandedPage { path: path.into() })
    }

    async fn records(&mut self, mut records: Vec<Record>) -> Result<(), SourceError> {
        if !self.extraction.renames.is_empty() {
            for record in &mut records {
                crate::drift::apply_renames(self.extraction.renames, &mut record.fields);
            }
        }
        // New columns first, so every record of this page is typed with them.
        let mut kind_changed = Vec::new();
        self.sync_schema(|schema| {
            kind_changed = schema.absorb(&records)?;
            Ok(())
        })
        .await?;
        // The field of each record that the `quarantine` policy holds back, if any.
        let held_back: Vec<Option<String>> = {
            let schema = self.extraction.schema.lock().expect("schema lock");
            if schema.holds_back_nothing() {
                Vec::new()
            } else {
                records.iter().map(|r| schema.held_back_in(r)).collect()
            }
        };
        let mut kind_changed = kind_changed.into_iter().peekable();
        for (index, record) in records.iter().enumerate() {
            if let Some((_, reason)) = kind_changed.next_if(|(i, _)| *i == index) {
                self.reject(record, reason);
                continue;
            }
            if let Some(Some(field)) = held_back.get(index) {
                self.extraction.schema.lock().expect("schema lock").note(
                    ChangeKind::Added,
                    field,
                    String::new,
                    "quarantined",
                    1,
                );
                self.reject(record, format!("new field `{field}` held back by schema policy quarantine (schema.on_new_field)"));
                continue;
            }
            // A key that is missing cannot be merged or de-duplicated: quarantine the record.
            if let Some(key) = self
                .extraction
                .stream
                .primary_key
                .iter()
                .find(|k| record.fields.get(k.as_str()).is_none_or(Value::is_null))
            {
                self.extraction
                    .schema
                    .lock()
                    .expect("schema lock")
                    .note_missing_key(key);
                self.reject(
                    record,
                    format!("primary key field `{key}` is missing or null"),
                );
                continue;
            }
            let dt = match self.partition_of(record) {
                Ok(dt) => dt,
                Err(reason) => {
                    self.reject(record, reason);
                    continue;
                }
            };
            // At most one widening per column per record: then it either fits or is quarantined.
            for _ in 0..=self.schema.fields.len() {
                let partition = self.partition(&dt);
                let error = match partition.builder.push_fields(&record.fields) {
                    Ok(()) => {
                        let full = partition.builder.len() >= BATCH_ROWS;
                        self.rows += 1;
                        if full {
                            self.flush_partition(&dt).await?;
                        }
                        break;
                    }
                    Err(error) => error,
                };
                let misfit = self
                    .extraction
                    .schema
                    .lock()
                    .expect("schema lock")
                    .misfit(&error);
                match misfit.map_err(schema_frozen)? {
                    Misfit::Widened => {
                        self.sync_schema(|_| Ok(())).await?;
                        continue;
                    }
                    Misfit::Reject => {
                        self.reject(record, error.message);
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    async fn rejected(&mut self, mut rejected: Vec<Rejected>) -> Result<(), SourceError> {
        self.rejected.append(&mut rejected);
        Ok(())
    }

    fn line_typer(&self) -> Option<LineTyper> {
        // Renames rewrite keys, and a partition column must already be a date: the
        // general path handles those.
        if !self.extraction.renames.is_empty() {
            return None;
        }
        let mut required = self.extraction.stream.primary_key.clone();
        if let Some(column) = &self.extraction.stream.partition_column {
            if self.schema.field(column).map(|f| f.ty) != Some(FieldType::Date) {
                return None;
            }
            required.push(column.clone());
        }
        Some(LineTyper::new(
            &self.schema,
            self.schema_version,
            &required,
            self.constants(),
        ))
    }

    async fn typed_lines(&mut self, lines: TypedLines) -> Result<(), SourceError> {
        self.sync_schema(|_| Ok(())).await?;
        let batch = match lines.batch() {
            Some(batch) if lines.schema_version == self.schema_version => batch,
            _ => {
                // Typed against a schema that has moved on since: take the general path.
                let decoded = lines.decode();
                self.records(decoded.records).await?;
                return self.rejected(decoded.rejected).await;
            }
        };
        self.extraction
            .schema
            .lock()
            .expect("schema lock")
            .absorb_batch(&batch);
        let column = self
            .extraction
            .stream
            .partition_column
            .as_ref()
            .and_then(|c| self.schema.index_of(c));
        let parts = match column {
            None => vec![(self.extraction.window.today.to_string(), batch)],
            Some(i) => {
                let split = crate::lake::split_by_date(&batch, i)
                    .map_err(|e| SourceError::transient(format!("partitioning typed rows: {e}")))?;
                // The typer sends rows without a partition value to the general path.
                if split.nulls.is_some() {
                    return Err(SourceError::transient(
                        "partitioning typed rows: null partition value",
                    ));
                }
                split.parts
            }
        };
        for (dt, part) in parts {
            self.partition(&dt);
            // Rows typed earlier in this partition go first.
            self.flush_partition(&dt).await?;
            self.rows += part.num_rows() as u64;
            self.write_batch(&dt, part).await?;
        }
        Ok(())
    }

    fn cursor_reached(&mut self, cursor: Value) {
        self.cursor = Some(cursor);
    }

    fn warn(&mut self, message: String) {
        tracing::warn!(stream = %self.extraction.stream.name, "{}", crate::secret::redact(&message));
        self.extraction
            .counters
            .warnings
            .lock()
            .expect("warnings lock")
            .push(crate::secret::redact(&message));
    }

    fn is_cancelled(&self) -> bool {
        self.extraction.cancel.is_cancelled()
    }
}

#[cfg(test)]
mod tests;
