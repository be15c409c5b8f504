//! `sluice quarantine retry`: a D1 table's quarantined records typed again with the
//! stream's *current* config (a widened column, a `renames:` entry, a relaxed
//! rule), through the normal executor path.
//!
//! [`QuarantineSource`] wraps the stream's configured source the way
//! [`ReplaySource`](crate::replay::ReplaySource) does: its slices are quarantine
//! files (one per past run), and reading a slice hands the quarantined records back
//! to the executor with their original origin (file:line). Typing, quarantine, the
//! destination load and the lake's D1 files are the executor's, so a retry publishes
//! exactly as a run does. What still fails lands in the retry run's quarantine file
//! with its new reason; the caller then removes the files it consumed.
//!
//! Loading nothing twice:
//! - the retry loads as `append` (also for `overwrite_partitions` streams: recovered
//!   rows are *added* to their partition; replacing it would drop the rows already
//!   there). The load id is a digest of the consumed files' contents, so the
//!   destination's ledger skips a retry repeated after a kill between the publish
//!   and the removal of the consumed files, and the lake's D1 files of an append
//!   are named by load id, so promoting them again replaces them;
//! - a `merge` record whose key its own run or a later one loaded is
//!   [`Superseded`]: it would overwrite a newer row (or the duplicate `dedupe`
//!   kept), so it stays quarantined (when the later run was a retry, it was
//!   already recovered and is dropped);
//! - an `overwrite_partitions` record whose partition a later run reloaded from the
//!   source is superseded the same way: that reload already holds what the source
//!   had.
//!
//! `replace` streams are refused by the caller: their next run reloads the whole
//! source with the fixed config.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::destination::WriteMode;
use crate::drift::{Misfit, StreamPolicy, StreamSchema};
use crate::lake::{Lake, LakeError};
use crate::schema::{FieldType, TableSchema};
use crate::source::{PageSink, RunWindow, Slice, Source, SourceError, StreamPlan, StreamSpec};
use crate::typing::{to_scalar, BatchBuilder, Origin, Record, Rejected, Scalar};

/// Run ids of retries end with this, so a later retry can tell a row a retry
/// recovered from a row a source run loaded.
pub const RETRY_RUN_SUFFIX: &str = "-retry";

/// A run id for a retry.
pub fn retry_run_id() -> String {
    format!("{}{RETRY_RUN_SUFFIX}", crate::run::new_run_id())
}

/// Whether `run_id` is a retry's.
pub fn is_retry_run(run_id: &str) -> bool {
    run_id.ends_with(RETRY_RUN_SUFFIX)
}

/// One line of a quarantine file.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct QuarantinedRecord {
    pub run_id: String,
    pub origin: String,
    pub reason: String,
    pub raw: String,
}

impl QuarantinedRecord {
    fn origin(&self) -> Origin {
        let (page, line) = match self.origin.rsplit_once(':') {
            Some((page, line)) if line.parse::<u64>().is_ok() => {
                (page, line.parse().unwrap_or_default())
            }
            _ => (self.origin.as_str(), 0),
        };
        Origin {
            page: page.into(),
            line,
        }
    }

    /// The record as the source sent it, or `None` when the line never parsed.
    pub fn fields(&self) -> Option<Map<String, Value>> {
        match serde_json::from_str(&self.raw) {
            Ok(Value::Object(fields)) => Some(fields),
            _ => None,
        }
    }

    /// A rejection keeping the record's origin and raw text.
    pub fn rejected(&self, reason: String) -> Rejected {
        Rejected {
            origin: self.origin(),
            reason,
            raw: self.raw.clone(),
        }
    }
}

/// One run's quarantine file of a table, as read before the retry.
#[derive(Debug, Clone)]
pub struct QuarantineFile {
    pub path: String,
    /// The run that quarantined these records.
    pub run_id: String,
    pub records: Vec<QuarantinedRecord>,
    /// Of the file's bytes: a changed file is a different input.
    digest: String,
}

/// The quarantine files of `table` (a D1 table), oldest run first; only `run` when given.
pub async fn files(
    lake: &Lake,
    table: &str,
    run: Option<&str>,
) -> Result<Vec<QuarantineFile>, LakeError> {
    let prefix = format!("{}/", crate::lake::layout::quarantine("d1", table));
    let mut files = Vec::new();
    for object in lake.list(&prefix).await? {
        let Some(run_id) = object
            .path
            .rsplit('/')
            .next()
            .and_then(|f| f.strip_suffix(".ndjson"))
        else {
            continue;
        };
        if run.is_some_and(|r| r != run_id) {
            continue;
        }
        let Some(body) = lake.get(&object.path).await? else {
            continue;
        };
        files.push(parse_file(&object.path, run_id, &body));
    }
    files.sort_by(|a, b| a.run_id.cmp(&b.run_id));
    Ok(files)
}

fn parse_file(path: &str, run_id: &str, body: &[u8]) -> QuarantineFile {
    let records = body
        .split(|b| *b == b'\n')
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .map(|line| {
            serde_json::from_slice(line).unwrap_or_else(|e| QuarantinedRecord {
                // A damaged line is kept as it is, never dropped.
                run_id: run_id.to_string(),
                origin: path.to_string(),
                reason: format!("unreadable quarantine line: {e}"),
                raw: String::from_utf8_lossy(line).into_owned(),
            })
        })
        .collect();
    QuarantineFile {
        path: path.to_string(),
        run_id: run_id.to_string(),
        records,
        digest: hex16(&Sha256::digest(body)),
    }
}

fn hex16(bytes: &[u8]) -> String {
    hex::encode(&bytes[..bytes.len().min(16)])
}

/// A retry in progress: the files it consumes, written before it starts and removed
/// after they are, so a retry killed half-way is finished with the same files
/// (the same load id) by the next one.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct PendingRetry {
    pub run_id: String,
    pub files: Vec<String>,
}

fn pending_path(table: &str, run_id: &str) -> String {
    format!(
        "{}/{run_id}.retry.json",
        crate::lake::layout::quarantine("d1", table)
    )
}

/// A retry of `table` that did not finish, if any.
pub async fn pending(lake: &Lake, table: &str) -> Result<Option<PendingRetry>, LakeError> {
    let prefix = format!("{}/", crate::lake::layout::quarantine("d1", table));
    for object in lake.list(&prefix).await? {
        if object.path.ends_with(".retry.json") {
            if let Some(body) = lake.get(&object.path).await? {
                if let Ok(pending) = serde_json::from_slice(&body) {
                    return Ok(Some(pending));
                }
            }
        }
    }
    Ok(None)
}

/// Marks the retry started: `pending` will return it until [`finish`].
pub async fn start(lake: &Lake, table: &str, retry: &PendingRetry) -> Result<(), LakeError> {
    let body = serde_json::to_vec(retry).unwrap_or_default();
    lake.put(&pending_path(table, &retry.run_id), Bytes::from(body))
        .await
}

/// Undoes what an interrupted retry left besides its load: its quarantine file
/// (the same records are retried again from the files it had not yet removed).
async fn abandon(lake: &Lake, table: &str, retry: &PendingRetry) -> Result<(), LakeError> {
    lake.delete(&super::path("d1", table, &retry.run_id))
        .await?;
    lake.delete(&pending_path(table, &retry.run_id)).await
}

/// What a retry finds of an earlier one that was killed. `Some(files)`: it had not
/// removed any file it consumed, so it is redone with exactly those files (the same
/// load id: its load, if it got that far, is not repeated). Otherwise it had
/// published and started removing them: that is finished and `None` returned.
pub async fn recover(lake: &Lake, table: &str) -> Result<Option<Vec<String>>, LakeError> {
    let Some(retry) = pending(lake, table).await? else {
        return Ok(None);
    };
    let mut all_there = true;
    for path in &retry.files {
        all_there &= lake.get(path).await?.is_some();
    }
    if all_there {
        abandon(lake, table, &retry).await?;
        Ok(Some(retry.files))
    } else {
        finish(lake, table, &retry).await?;
        Ok(None)
    }
}

/// After the retry's publish: the consumed files go (what still fails is in the
/// retry's own quarantine file), then the mark.
pub async fn finish(lake: &Lake, table: &str, retry: &PendingRetry) -> Result<(), LakeError> {
    for path in &retry.files {
        lake.delete(path).await?;
    }
    lake.delete(&pending_path(table, &retry.run_id)).await
}

/// The keys (merge) or partitions (overwrite_partitions) a run loaded after a
/// quarantined record's run: retrying the record would overwrite newer data.
#[derive(Debug, Default, Clone)]
pub struct Superseded {
    /// Key columns (merge) or the partition column (overwrite_partitions).
    pub columns: Vec<String>,
    /// The columns' values as text (joined by U+001F) → latest run that loaded
    /// them, and the latest source (not retry) run.
    pub latest: HashMap<String, Latest>,
    /// A load by the record's own run supersedes it too (merge: that run loaded
    /// another record of the key — the one its `dedupe` kept, or a duplicate that
    /// typed — so the quarantined one is not the newer). For partitions it does not:
    /// the record's own run loaded the partition it was left out of.
    pub same_run_supersedes: bool,
}

/// Who last loaded a key or partition.
#[derive(Debug, Clone, Default)]
pub struct Latest {
    /// Any run, retries included.
    pub any: String,
    /// The latest run that read the source.
    pub source: Option<String>,
}

/// What a retry does with a quarantined record before typing it.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Retry,
    /// A later source run loaded newer data for it: stays quarantined, with this reason.
    Superseded(String),
    /// An earlier, interrupted retry already loaded it.
    AlreadyRecovered,
}

impl Superseded {
    /// The text of `fields`' values in `columns`, as `CAST(… AS VARCHAR)` shows them.
    fn key_of(&self, fields: &Map<String, Value>) -> Option<String> {
        let parts: Option<Vec<String>> = self
            .columns
            .iter()
            .map(|c| match fields.get(c)? {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                other => Some(other.to_string()),
            })
            .collect();
        parts.map(|p| p.join("\u{1f}"))
    }

    pub fn verdict(&self, fields: &Map<String, Value>, quarantined_by: &str) -> Verdict {
        let Some(latest) = self.key_of(fields).and_then(|k| self.latest.get(&k)) else {
            return Verdict::Retry;
        };
        match &latest.source {
            Some(run)
                if run.as_str() > quarantined_by
                    || (self.same_run_supersedes && run.as_str() == quarantined_by) =>
            {
                Verdict::Superseded(format!(
                "superseded: run {run} loaded a row for this {} (the same run or a later one); not retried",
                self.columns.join(", ")
            ))
            }
            _ if is_retry_run(&latest.any) && latest.any.as_str() > quarantined_by => {
                Verdict::AlreadyRecovered
            }
            _ => Verdict::Retry,
        }
    }
}

/// A source whose only slices are `stream`'s quarantine files.
pub struct QuarantineSource {
    inner: Arc<dyn Source>,
    stream: String,
    files: Arc<Vec<QuarantineFile>>,
    superseded: Arc<Superseded>,
}

impl QuarantineSource {
    pub fn new(
        inner: Arc<dyn Source>,
        stream: impl Into<String>,
        files: Vec<QuarantineFile>,
        superseded: Superseded,
    ) -> Self {
        QuarantineSource {
            inner,
            stream: stream.into(),
            files: Arc::new(files),
            superseded: Arc::new(superseded),
        }
    }
}

#[async_trait]
impl Source for QuarantineSource {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn streams(&self) -> Vec<StreamSpec> {
        self.inner
            .streams()
            .into_iter()
            .map(|mut spec| {
                // Recovered rows join what is there (see the module doc).
                if spec.name == self.stream && spec.write_mode == WriteMode::OverwritePartitions {
                    spec.write_mode = WriteMode::Append;
                }
                spec
            })
            .collect()
    }

    async fn check(&self) -> Result<(), SourceError> {
        Ok(())
    }

    async fn plan(
        &self,
        stream: &StreamSpec,
        _cursor: Option<&Value>,
        _window: &RunWindow,
    ) -> Result<StreamPlan, SourceError> {
        let slices = if stream.name == self.stream {
            self.files
                .iter()
                .enumerate()
                .map(|(n, file)| Slice {
                    // The key carries the content: the append load id is a digest of keys.
                    key: format!("quarantine/{}#{}", file.run_id, file.digest),
                    params: serde_json::json!({ "file": n }),
                })
                .collect()
        } else {
            Vec::new()
        };
        // A retry never moves the cursor.
        Ok(StreamPlan {
            slices,
            cursor_after: None,
        })
    }

    async fn read(
        &self,
        _stream: &StreamSpec,
        slice: &Slice,
        sink: &mut dyn PageSink,
    ) -> Result<(), SourceError> {
        let Some(file) = slice.params["file"]
            .as_u64()
            .and_then(|n| self.files.get(n as usize))
        else {
            return Ok(());
        };
        let mut records = Vec::new();
        let mut still = Vec::new();
        for quarantined in &file.records {
            let Some(fields) = quarantined.fields() else {
                still.push(quarantined.rejected(quarantined.reason.clone()));
                continue;
            };
            match self.superseded.verdict(&fields, &file.run_id) {
                Verdict::Retry => records.push(Record {
                    fields,
                    origin: quarantined.origin(),
                }),
                Verdict::Superseded(reason) => still.push(quarantined.rejected(reason)),
                Verdict::AlreadyRecovered => {}
            }
        }
        sink.records(records).await?;
        if !still.is_empty() {
            sink.rejected(still).await?;
        }
        Ok(())
    }

    fn max_concurrency(&self) -> usize {
        1
    }
}

/// What a retry would do with one record (for `--dry-run`).
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Loads,
    StillFails(String),
    AlreadyRecovered,
}

/// Types `files`' records as the executor would with the stream's current schema
/// (the registered one, `previous`), without writing anything. Widening by the
/// `evolve` policy is followed; partitions and keys are checked as a run checks them.
pub fn classify(
    stream: &StreamSpec,
    previous: Option<&TableSchema>,
    policy: StreamPolicy,
    files: &[QuarantineFile],
    superseded: &Superseded,
) -> Vec<(QuarantinedRecord, Outcome)> {
    let mut schema = StreamSchema::new(stream, previous, policy);
    let renames = schema.resolve_renames();
    let mut out = Vec::new();
    for file in files {
        for quarantined in &file.records {
            let Some(mut fields) = quarantined.fields() else {
                out.push((
                    quarantined.clone(),
                    Outcome::StillFails(quarantined.reason.clone()),
                ));
                continue;
            };
            crate::drift::apply_renames(&renames, &mut fields);
            let outcome = match superseded.verdict(&fields, &file.run_id) {
                Verdict::AlreadyRecovered => Outcome::AlreadyRecovered,
                Verdict::Superseded(reason) => Outcome::StillFails(reason),
                Verdict::Retry => match type_one(stream, &mut schema, fields, quarantined) {
                    Ok(()) => Outcome::Loads,
                    Err(reason) => Outcome::StillFails(reason),
                },
            };
            out.push((quarantined.clone(), outcome));
        }
    }
    out
}

fn type_one(
    stream: &StreamSpec,
    schema: &mut StreamSchema,
    fields: Map<String, Value>,
    quarantined: &QuarantinedRecord,
) -> Result<(), String> {
    let record = Record {
        fields,
        origin: quarantined.origin(),
    };
    if let Some((_, reason)) = schema.absorb(std::slice::from_ref(&record))?.pop() {
        return Err(reason);
    }
    if let Some(field) = schema.held_back_in(&record) {
        return Err(format!(
            "new field `{field}` held back by schema policy quarantine (schema.on_new_field)"
        ));
    }
    if let Some(key) = stream
        .primary_key
        .iter()
        .find(|k| record.fields.get(k.as_str()).is_none_or(Value::is_null))
    {
        return Err(format!("primary key field `{key}` is missing or null"));
    }
    if let Some(column) = &stream.partition_column {
        match record
            .fields
            .get(column)
            .map(|v| to_scalar(v, FieldType::Date))
        {
            Some(Ok(Scalar::Date(_))) => {}
            Some(Err(e)) => return Err(format!("partition column `{column}`: {e}")),
            _ => return Err(format!("partition column `{column}` is missing or null")),
        }
    }
    for _ in 0..=schema.schema.fields.len() {
        let mut builder = BatchBuilder::new(schema.schema.clone());
        for own in [
            crate::schema::RUN_ID_COLUMN,
            crate::schema::LOADED_AT_COLUMN,
        ] {
            builder = builder.with_constant(own, Scalar::Null);
        }
        match builder.push_fields(&record.fields) {
            Ok(()) => return Ok(()),
            Err(error) => match schema.misfit(&error)? {
                Misfit::Widened => continue,
                Misfit::Reject => return Err(error.message),
            },
        }
    }
    Ok(())
}

/// Counts of a dry run, in the order `would load`, `still fails`, `already recovered`
/// (outcomes no record had are left out).
pub fn summarize(outcomes: &[(QuarantinedRecord, Outcome)]) -> Vec<(&'static str, usize)> {
    let count = |wanted: fn(&Outcome) -> bool| outcomes.iter().filter(|(_, o)| wanted(o)).count();
    [
        ("would load", count(|o| *o == Outcome::Loads)),
        (
            "still fails",
            count(|o| matches!(o, Outcome::StillFails(_))),
        ),
        (
            "already recovered",
            count(|o| *o == Outcome::AlreadyRecovered),
        ),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(json: &str) -> Map<String, Value> {
        match serde_json::from_str(json) {
            Ok(Value::Object(m)) => m,
            _ => panic!("object"),
        }
    }

    #[test]
    fn a_key_a_later_source_run_loaded_is_superseded() {
        let mut superseded = Superseded {
            columns: vec!["id".into()],
            ..Default::default()
        };
        superseded.latest.insert(
            "7".into(),
            Latest {
                any: "20240702T000000000Z-bbbbbb".into(),
                source: Some("20240702T000000000Z-bbbbbb".into()),
            },
        );
        let old = "20240701T000000000Z-aaaaaa";
        assert!(matches!(
            superseded.verdict(&fields(r#"{"id": 7}"#), old),
            Verdict::Superseded(_)
        ));
        assert_eq!(
            superseded.verdict(&fields(r#"{"id": "8"}"#), old),
            Verdict::Retry
        );
        // An earlier run loaded the key: nothing newer.
        assert_eq!(
            superseded.verdict(&fields(r#"{"id": 7}"#), "20240703T000000000Z-cccccc"),
            Verdict::Retry
        );
        // The record's own run loaded the key: for a partition that is the normal
        // case; for a merge key it loaded another record of the key.
        let own = "20240702T000000000Z-bbbbbb";
        assert_eq!(
            superseded.verdict(&fields(r#"{"id": 7}"#), own),
            Verdict::Retry
        );
        superseded.same_run_supersedes = true;
        assert!(matches!(
            superseded.verdict(&fields(r#"{"id": 7}"#), own),
            Verdict::Superseded(_)
        ));
    }

    #[test]
    fn a_key_a_later_retry_loaded_was_already_recovered() {
        let mut superseded = Superseded {
            columns: vec!["id".into()],
            ..Default::default()
        };
        superseded.latest.insert(
            "7".into(),
            Latest {
                any: format!("20240702T000000000Z-bbbbbb{RETRY_RUN_SUFFIX}"),
                source: Some("20240630T000000000Z-000000".into()),
            },
        );
        assert_eq!(
            superseded.verdict(&fields(r#"{"id": 7}"#), "20240701T000000000Z-aaaaaa"),
            Verdict::AlreadyRecovered
        );
    }

    #[test]
    fn quarantine_lines_keep_origin_and_damaged_lines() {
        let body = b"{\"run_id\":\"r1\",\"origin\":\"data/a.csv:3\",\"reason\":\"x\",\"raw\":\"{\\\"id\\\":1}\"}\nnot json\n";
        let file = parse_file("quarantine/d1/t/r1.ndjson", "r1", body);
        assert_eq!(file.records.len(), 2);
        let origin = file.records[0].origin();
        assert_eq!((&*origin.page, origin.line), ("data/a.csv", 3));
        assert!(file.records[1]
            .reason
            .starts_with("unreadable quarantine line"));
        assert!(file.records[1].fields().is_none());
    }
}
