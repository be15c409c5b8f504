//! Building OpenLineage run events (spec 2-0-2) from a run: the pipeline's run and
//! one child run per task, with datasets and their schema facets.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sluice_core::lake::Lake;
use sluice_core::run::{RunRecord, RunStatus, TaskRecord, TaskStatus};
use sluice_core::schema::FieldType;
use sluice_transform::ModelProject;

pub const SPEC: &str = "https://openlineage.io/spec/2-0-2/OpenLineage.json";
/// Who produced the events: a URI naming sluice and its version.
pub const PRODUCER: &str = concat!("urn:sluice:", env!("CARGO_PKG_VERSION"));

/// The schema URL of a facet at the version openlineage-python 1.54 writes.
pub fn facet_schema(name: &str, version: &str) -> String {
    format!("https://openlineage.io/spec/facets/{version}/{name}.json#/$defs/{name}")
}

/// What the events of one project's runs are built from.
pub struct RunContext<'a> {
    pub pipeline: &'a str,
    pub namespace: &'a str,
    pub lake: &'a Lake,
    /// Source name → its type (`facebook` → `facebook_ads`).
    pub source_types: BTreeMap<String, String>,
    pub models: &'a ModelProject,
}

/// A UUID (version 8: derived, RFC 9562) for a run or a task of a run, so the same
/// sluice run always maps to the same OpenLineage run ids.
pub fn run_uuid(run_id: &str, task: Option<&str>) -> String {
    let mut hash = Sha256::new();
    hash.update(run_id.as_bytes());
    if let Some(task) = task {
        hash.update(b"\0");
        hash.update(task.as_bytes());
    }
    let mut b: [u8; 16] = hash.finalize()[..16].try_into().expect("16 of 32 bytes");
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The lake's URL: the dataset namespace of every table.
pub fn lake_namespace(lake: &Lake) -> String {
    let location = lake.location();
    if location.contains("://") {
        return location.trim_end_matches('/').to_string();
    }
    let path = std::path::Path::new(location)
        .canonicalize()
        .unwrap_or_else(|_| location.into());
    format!("file://{}", path.display())
}

pub fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl RunContext<'_> {
    fn lake_namespace(&self) -> String {
        lake_namespace(self.lake)
    }

    fn event(
        &self,
        event_type: &str,
        at: DateTime<Utc>,
        run: Value,
        job_name: String,
        job_type: &str,
    ) -> Value {
        json!({
            "eventType": event_type,
            "eventTime": time(at),
            "producer": PRODUCER,
            "schemaURL": format!("{SPEC}#/$defs/RunEvent"),
            "run": run,
            "job": {
                "namespace": self.namespace,
                "name": job_name,
                "facets": {
                    "jobType": {
                        "_producer": PRODUCER,
                        "_schemaURL": facet_schema("JobTypeJobFacet", "2-0-4"),
                        "processingType": "BATCH",
                        "integration": "SLUICE",
                        "jobType": job_type,
                    }
                }
            },
            "inputs": [],
            "outputs": [],
        })
    }

    /// START of the pipeline's run.
    pub fn run_started(&self, run_id: &str, at: DateTime<Utc>) -> Value {
        self.event(
            "START",
            at,
            json!({ "runId": run_uuid(run_id, None), "facets": {} }),
            self.pipeline.to_string(),
            "PIPELINE",
        )
    }

    /// Every task's START and its end event, then the pipeline's end event.
    pub async fn run_finished(&self, record: &RunRecord) -> Vec<Value> {
        let mut events = Vec::new();
        for task in &record.tasks {
            events.extend(self.task_events(record, task).await);
        }
        let (event_type, error) = match record.status {
            RunStatus::Succeeded => ("COMPLETE", None),
            RunStatus::Cancelled => ("ABORT", None),
            RunStatus::Partial => ("FAIL", Some("some tasks failed; the others were published")),
            RunStatus::Failed | RunStatus::Running => ("FAIL", Some("the run failed")),
        };
        let mut facets = serde_json::Map::new();
        if let Some(message) = error {
            let message = record.error.as_deref().unwrap_or(message);
            facets.insert("errorMessage".into(), error_facet(message));
        }
        events.push(self.event(
            event_type,
            record.finished_at.unwrap_or_else(Utc::now),
            json!({ "runId": run_uuid(&record.run_id, None), "facets": facets }),
            self.pipeline.to_string(),
            "PIPELINE",
        ));
        events
    }

    /// A task's START and COMPLETE / FAIL / ABORT; nothing for a task that never ran.
    async fn task_events(&self, record: &RunRecord, task: &TaskRecord) -> Vec<Value> {
        let end_type = match task.status {
            TaskStatus::Succeeded | TaskStatus::UpToDate => "COMPLETE",
            TaskStatus::Failed => "FAIL",
            TaskStatus::Cancelled => "ABORT",
            TaskStatus::Skipped => return Vec::new(),
        };
        let Some((inputs, output)) = self.datasets(task) else {
            return Vec::new();
        };
        let run_id = run_uuid(&record.run_id, Some(&task.task));
        let parent = json!({
            "_producer": PRODUCER,
            "_schemaURL": facet_schema("ParentRunFacet", "1-2-0"),
            "run": { "runId": run_uuid(&record.run_id, None) },
            "job": { "namespace": self.namespace, "name": self.pipeline },
        });
        let job_name = format!("{}.{}", self.pipeline, task.task);
        let kind = if task.table.starts_with("d1.") {
            "STREAM"
        } else {
            "MODEL"
        };
        let mut start = self.event(
            "START",
            task.started_at,
            json!({ "runId": run_id, "facets": { "parent": parent.clone() } }),
            job_name.clone(),
            kind,
        );
        let mut input_values = Vec::new();
        for input in &inputs {
            input_values.push(self.dataset(input).await);
        }
        let mut output_value = self.dataset(&output).await;
        start["inputs"] = Value::Array(input_values.clone());
        start["outputs"] =
            json!([{ "namespace": output_value["namespace"], "name": output_value["name"] }]);

        let mut run_facets = serde_json::Map::new();
        run_facets.insert("parent".into(), parent);
        if let Some(error) = &task.error {
            run_facets.insert("errorMessage".into(), error_facet(&error.message));
        }
        if end_type == "COMPLETE" {
            output_value["outputFacets"] = json!({
                "outputStatistics": {
                    "_producer": PRODUCER,
                    "_schemaURL": facet_schema("OutputStatisticsOutputDatasetFacet", "1-0-2"),
                    "rowCount": task.rows_loaded,
                    "size": task.bytes,
                }
            });
        }
        let ended = task.started_at + chrono::Duration::milliseconds(task.duration_ms as i64);
        let mut end = self.event(
            end_type,
            ended,
            json!({ "runId": run_id, "facets": run_facets }),
            job_name,
            kind,
        );
        end["inputs"] = Value::Array(input_values);
        end["outputs"] = json!([output_value]);
        vec![start, end]
    }

    /// A task's inputs and output, or `None` for tasks that move no table (check groups).
    fn datasets(&self, task: &TaskRecord) -> Option<(Vec<Dataset>, Dataset)> {
        if let Some(table) = task.table.strip_prefix("d1.") {
            let (source, stream) = task.task.split_once('.')?;
            let kind = self.source_types.get(source)?;
            let input = Dataset::Source {
                namespace: format!("{kind}://{source}"),
                name: stream.to_string(),
            };
            return Some((vec![input], Dataset::Lake(format!("d1.{table}"))));
        }
        let (layer, name) = task.task.split_once('.')?;
        let model = self.models.model(layer, name)?;
        let inputs = model
            .depends_on
            .iter()
            .map(|d| Dataset::Lake(d.to_string()))
            .collect();
        Some((inputs, Dataset::Lake(model.qualified_name())))
    }

    /// A dataset as OpenLineage names it, lake tables with their schema facet.
    async fn dataset(&self, dataset: &Dataset) -> Value {
        match dataset {
            Dataset::Source { namespace, name } => {
                json!({ "namespace": namespace, "name": name, "facets": {} })
            }
            Dataset::Lake(table) => {
                let mut facets = serde_json::Map::new();
                if let Some(fields) = lake_table_schema(self.lake, table).await {
                    facets.insert(
                        "schema".into(),
                        json!({
                            "_producer": PRODUCER,
                            "_schemaURL": facet_schema("SchemaDatasetFacet", "1-2-0"),
                            "fields": fields,
                        }),
                    );
                }
                json!({ "namespace": self.lake_namespace(), "name": table, "facets": facets })
            }
        }
    }
}

/// A dataset a task reads or writes.
enum Dataset {
    /// A source's stream: `facebook_ads://facebook`, `insights`.
    Source { namespace: String, name: String },
    /// A lake table: `d1.orders`, `d2a.ad_performance_daily`.
    Lake(String),
}

fn error_facet(message: &str) -> Value {
    json!({
        "_producer": PRODUCER,
        "_schemaURL": facet_schema("ErrorMessageRunFacet", "1-0-1"),
        "message": sluice_core::secret::redact(message),
        "programmingLanguage": "rust",
    })
}

/// The columns of a lake table (`d1.orders` → `d1/orders/…/*.parquet`), read from the
/// footer of its newest Parquet file (only the file's tail is fetched). `None` when the
/// table has no file yet or the footer cannot be read: the event then has no schema.
async fn lake_table_schema(lake: &Lake, table: &str) -> Option<Vec<Value>> {
    use object_store::ObjectStoreExt as _;
    use parquet::errors::ParquetError;
    use parquet::file::metadata::ParquetMetaDataReader;
    let (layer, name) = table.split_once('.')?;
    let objects = lake.list(&format!("{layer}/{name}/")).await.ok()?;
    let newest = objects
        .iter()
        .filter(|o| o.path.ends_with(".parquet"))
        .max_by_key(|o| o.last_modified)?;
    let (store, path, size) = (lake.store(), lake.object_path(&newest.path), newest.size);
    // Footers are small: 64 KiB usually holds one whole; else fetch what the reader asks for.
    let mut tail = size.min(64 * 1024);
    let metadata = loop {
        let bytes = store.get_range(&path, size - tail..size).await.ok()?;
        let mut reader = ParquetMetaDataReader::new();
        match reader.try_parse_sized(&bytes, size) {
            Ok(()) => break reader.finish().ok()?,
            Err(ParquetError::NeedMoreData(needed)) if needed as u64 > tail => {
                tail = (needed as u64).min(size)
            }
            Err(_) => return None,
        }
    };
    let file = metadata.file_metadata();
    let schema =
        parquet::arrow::parquet_to_arrow_schema(file.schema_descr(), file.key_value_metadata())
            .ok()?;
    Some(
        schema
            .fields()
            .iter()
            .map(|field| {
                let ty = FieldType::from_arrow(field)
                    .map(|t| t.name())
                    .unwrap_or_else(|| field.data_type().to_string());
                json!({ "name": field.name(), "type": ty })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_stable_uuids_per_run_and_task() {
        let a = run_uuid("20240701T050000Z-3f9a1c", None);
        assert_eq!(a, run_uuid("20240701T050000Z-3f9a1c", None));
        assert_ne!(a, run_uuid("20240701T050000Z-3f9a1c", Some("shop.orders")));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "8", "version 8: {a}");
        assert!(
            matches!(&a[19..20], "8" | "9" | "a" | "b"),
            "RFC variant: {a}"
        );
    }
}
