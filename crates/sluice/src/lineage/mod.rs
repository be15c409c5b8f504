//! OpenLineage run events for each run: what sluice read, what it wrote, with the
//! written tables' schemas, to an HTTP endpoint (Marquez, DataHub, …) or a file.
//!
//! ```yaml
//! lineage:
//!   url: http://marquez:5000/api/v1/lineage   # POST each event (or:)
//!   file: ./lineage.ndjson                     # append one event per line
//!   api_key: ${OPENLINEAGE_API_KEY}            # optional, sent as a Bearer token
//! ```
//!
//! A run is one OpenLineage job (`<pipeline>`): START when it begins, COMPLETE,
//! FAIL (failed or partial) or ABORT (cancelled) when it ends. Each task that ran is
//! a child job (`<pipeline>.<task>`, with a `parent` facet): a stream reads its
//! source (`<type>://<source>`, `<stream>`) and writes its D1 table; a model reads
//! the tables its SQL names and writes its own. Tables are datasets of the lake
//! (`namespace` = the lake's URL, `name` = `d1.orders`), each written one with a
//! `schema` facet read from its Parquet footer and its row count. Task events are
//! sent when the run ends, stamped with the times the tasks really started and
//! ended.
//!
//! Lineage is observation: an endpoint that is down or slow (`timeout_ms`) is
//! reported as a warning and never fails or slows a run beyond that timeout.
//!
//! - [`events`]: building the events (the OpenLineage 2-0-2 JSON shape).

pub mod events;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use sluice_core::config::{ConfigError, PipelineConfig};
use sluice_core::lake::Lake;
use sluice_core::run::RunRecord;
use sluice_core::secret::Secret;
use sluice_transform::ModelProject;

use crate::project::Project;

/// The `lineage:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineageConfig {
    /// OpenLineage HTTP endpoint each event is POSTed to (e.g. Marquez's `/api/v1/lineage`).
    #[serde(default)]
    pub url: Option<String>,
    /// A file each event is appended to as one JSON line (relative to the pipeline's folder).
    #[serde(default)]
    pub file: Option<String>,
    /// Sent as `Authorization: Bearer <api_key>` to `url`.
    #[serde(default)]
    pub api_key: Option<Secret>,
    /// The jobs' namespace (default `sluice`).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// How long one POST may take before it is given up (a warning, not a failure).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_namespace() -> String {
    "sluice".into()
}

fn default_timeout_ms() -> u64 {
    5_000
}

/// Where events go.
#[derive(Debug, Clone)]
enum Sink {
    Http {
        client: reqwest::Client,
        url: String,
        api_key: Option<Secret>,
    },
    File(PathBuf),
}

/// Sends a run's events; built from `lineage:` (absent: no lineage).
#[derive(Debug, Clone)]
pub struct Lineage {
    sink: Sink,
    namespace: String,
}

impl Lineage {
    /// The emitter `lineage:` asks for, `None` without the section; config errors at their line.
    pub fn from_config(config: &PipelineConfig) -> Result<Option<Lineage>, ConfigError> {
        let Some(section) = &config.lineage else {
            return Ok(None);
        };
        let parsed: LineageConfig = config
            .doc
            .deserialize_at(section.body.clone(), &section.path)?;
        let sink = match (&parsed.url, &parsed.file) {
            (Some(url), None) => {
                if reqwest::Url::parse(url).is_err() {
                    return Err(config.doc.error_at(
                        &["lineage".into(), "url".into()],
                        format!("`{url}` is not a URL"),
                    ));
                }
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_millis(parsed.timeout_ms))
                    .build()
                    .map_err(|e| {
                        config.doc.error_at(
                            &["lineage".into()],
                            format!("cannot build the HTTP client: {e}"),
                        )
                    })?;
                Sink::Http {
                    client,
                    url: url.clone(),
                    api_key: parsed.api_key.clone(),
                }
            }
            (None, Some(file)) => Sink::File(config.root.join(file)),
            _ => {
                return Err(config.doc.error_at(
                    &["lineage".into()],
                    "give exactly one of `url` (an OpenLineage HTTP endpoint) or `file`",
                ))
            }
        };
        Ok(Some(Lineage {
            sink,
            namespace: parsed.namespace,
        }))
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Sends events in order; a failure is a warning on stderr and in the log.
    pub async fn send(&self, events: &[serde_json::Value]) {
        if let Err(message) = self.try_send(events).await {
            let message = sluice_core::secret::redact(&message);
            tracing::warn!(%message, "lineage events not delivered");
            eprintln!("warning: lineage events not delivered: {message}");
        }
    }

    async fn try_send(&self, events: &[serde_json::Value]) -> Result<(), String> {
        match &self.sink {
            Sink::File(path) => {
                use std::io::Write;
                let mut text = String::new();
                for event in events {
                    text.push_str(&event.to_string());
                    text.push('\n');
                }
                // One write per batch of events, appended: concurrent runs keep whole lines.
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .and_then(|mut f| f.write_all(text.as_bytes()))
                    .map_err(|e| format!("{}: {e}", path.display()))
            }
            Sink::Http {
                client,
                url,
                api_key,
            } => {
                for event in events {
                    let mut request = client.post(url).json(event);
                    if let Some(key) = api_key {
                        request = request.bearer_auth(key.expose());
                    }
                    let response = request.send().await.map_err(|e| format!("{url}: {e}"))?;
                    if !response.status().is_success() {
                        return Err(format!("{url} answered {}", response.status()));
                    }
                }
                Ok(())
            }
        }
    }
}

/// The lineage of one run: what [`crate::commands::run`] calls when a run starts and ends.
pub struct RunLineage {
    lineage: Lineage,
    pipeline: String,
    lake: Lake,
    source_types: BTreeMap<String, String>,
    models: ModelProject,
}

impl RunLineage {
    /// `None` when the pipeline has no `lineage:` section.
    pub fn for_project(
        project: &Project,
        models: &ModelProject,
    ) -> Result<Option<RunLineage>, ConfigError> {
        let Some(lineage) = Lineage::from_config(&project.config)? else {
            return Ok(None);
        };
        Ok(Some(RunLineage {
            lineage,
            pipeline: project.config.name.clone(),
            lake: project.lake.clone(),
            source_types: project
                .config
                .sources
                .iter()
                .map(|s| (s.name.clone(), s.kind.clone()))
                .collect(),
            models: models.clone(),
        }))
    }

    fn context(&self) -> events::RunContext<'_> {
        events::RunContext {
            pipeline: &self.pipeline,
            namespace: self.lineage.namespace(),
            lake: &self.lake,
            source_types: self.source_types.clone(),
            models: &self.models,
        }
    }

    pub async fn started(&self, run_id: &str) {
        let event = self.context().run_started(run_id, chrono::Utc::now());
        self.lineage.send(&[event]).await;
    }

    pub async fn finished(&self, record: &RunRecord) {
        let events = self.context().run_finished(record).await;
        self.lineage.send(&events).await;
    }
}
