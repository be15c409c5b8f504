//! Everything the docs and `sluice impact` know about a pipeline, gathered once.

use std::collections::{BTreeMap, BTreeSet};

use sluice_core::config::Section;
use sluice_core::plan::{NodeKind, RunPlan};
use sluice_core::run::RunRecord;
use sluice_core::source::StreamSpec;
use sluice_core::state::SchemaVersion;
use sluice_transform::lineage::Lineage;
use sluice_transform::ModelProject;

use crate::commands::run::build_plan;
use crate::project::Project;

/// A stream with the source it belongs to.
pub struct StreamInfo<'a> {
    pub source: &'a Section,
    pub spec: StreamSpec,
}

impl StreamInfo<'_> {
    /// `facebook.insights`: the stream's node in the plan.
    pub fn id(&self) -> String {
        format!("{}.{}", self.source.name, self.spec.name)
    }

    /// A setting as written for the stream, else for its source (`lookback_days`,
    /// `cursor`, `sync`), as YAML text.
    pub fn option(&self, key: &str) -> Option<String> {
        let body = &self.source.body;
        let from_stream = body
            .get("streams")
            .and_then(|s| s.get(self.spec.name.as_str()))
            .and_then(|s| s.get(key));
        from_stream
            .or_else(|| body.get(key))
            .and_then(|v| serde_yaml::to_string(v).ok())
            .map(|s| s.trim().to_string())
    }
}

pub struct Knowledge<'a> {
    pub plan: RunPlan,
    pub models: ModelProject,
    pub streams: Vec<StreamInfo<'a>>,
    /// `(D1 table, column)` → the record fields the connector computed it from.
    pub derived: BTreeMap<(String, String), Vec<String>>,
    pub lineage: Lineage,
    /// Per model, every `layer.table.column` its plan reads (also to filter or join).
    pub reads: BTreeMap<String, BTreeSet<String>>,
    /// The schema registry's versions per D1 table (empty before a first run).
    pub schema_history: BTreeMap<String, Vec<SchemaVersion>>,
    /// Run history, oldest first (empty before a first run).
    pub runs: Vec<RunRecord>,
    /// Each stream's stored cursor (`facebook.insights` → its JSON), where it has one.
    pub cursors: BTreeMap<String, String>,
}

/// A write mode as pipeline.yaml writes it (`overwrite_partitions`).
pub fn write_mode_name(mode: sluice_core::destination::WriteMode) -> String {
    serde_json::to_value(mode)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

impl<'a> Knowledge<'a> {
    pub async fn gather(project: &'a Project) -> Result<Knowledge<'a>, u8> {
        let (plan, models) = build_plan(project, &project.sources)?;
        let streams: Vec<StreamInfo> = project
            .config
            .sources
            .iter()
            .zip(&project.sources)
            .flat_map(|(section, source)| {
                source.streams().into_iter().map(move |spec| StreamInfo {
                    source: section,
                    spec,
                })
            })
            .collect();
        let derived = project
            .sources
            .iter()
            .flat_map(|s| s.derived_columns())
            .map(|(table, column, from)| ((table, column), from))
            .collect();
        let specs: Vec<StreamSpec> = streams.iter().map(|s| s.spec.clone()).collect();
        let (lineage, reads) =
            match sluice_transform::lineage::column_lineage(&models, &project.lake, &specs).await {
                Ok(l) => l,
                Err(e) => return Err(crate::project::report_transform_error(&e)),
            };
        let mut schema_history = BTreeMap::new();
        for stream in &streams {
            // A lake that cannot be read yet just has no history to show.
            if let Ok(history) = project.state.schema_history(&stream.spec.table).await {
                schema_history.insert(stream.spec.table.clone(), history);
            }
        }
        let runs = project.state.runs().await.unwrap_or_default();
        let mut cursors = BTreeMap::new();
        for stream in &streams {
            if let Ok(Some(cursor)) = project
                .state
                .cursor(&stream.source.name, &stream.spec.name)
                .await
            {
                let text = cursor.value.to_string();
                let text = match text.char_indices().nth(120) {
                    Some((cut, _)) => format!("{}…", &text[..cut]),
                    None => text,
                };
                cursors.insert(stream.id(), text);
            }
        }
        Ok(Knowledge {
            plan,
            models,
            streams,
            derived,
            lineage,
            reads,
            schema_history,
            runs,
            cursors,
        })
    }

    /// The stream that loads D1 `table`.
    pub fn stream_of_table(&self, table: &str) -> Option<&StreamInfo<'a>> {
        self.streams.iter().find(|s| s.spec.table == table)
    }

    /// What the source sent for D1 column `d1.table.column`: `facebook.insights.spend`,
    /// or the fields a connector computed it from (`google.ad_group_daily.cost_micros`).
    pub fn source_fields(&self, d1_column: &str) -> Vec<String> {
        let mut parts = d1_column.splitn(3, '.');
        let (Some("d1"), Some(table), Some(column)) = (parts.next(), parts.next(), parts.next())
        else {
            return Vec::new();
        };
        let Some(stream) = self.stream_of_table(table) else {
            return Vec::new();
        };
        match self.derived.get(&(table.to_string(), column.to_string())) {
            Some(from) => from
                .iter()
                .map(|f| format!("{}.{f}", stream.id()))
                .collect(),
            None => vec![format!("{}.{column}", stream.id())],
        }
    }

    /// The columns of a D1 table (`d1.x`) or model (`d2a.y`), when known: declared,
    /// recorded by the schema registry, or planned.
    pub fn columns_of(&self, table: &str) -> Option<BTreeSet<String>> {
        if let Some(name) = table.strip_prefix("d1.") {
            let stream = self.stream_of_table(name)?;
            let mut columns: BTreeSet<String> = stream
                .spec
                .schema
                .fields
                .iter()
                .map(|f| f.name.clone())
                .collect();
            if let Some(latest) = self.schema_history.get(name).and_then(|h| h.last()) {
                columns.extend(latest.value.fields.iter().map(|f| f.name.clone()));
            } else if stream.spec.infer_columns {
                return None;
            }
            return Some(columns);
        }
        self.lineage
            .models
            .get(table)
            .map(|columns| columns.iter().map(|c| c.name.clone()).collect())
    }

    /// A stream's columns: declared, or the registry's latest when they are inferred
    /// from data.
    pub fn stream_fields(&self, stream: &StreamInfo) -> Vec<sluice_core::schema::Field> {
        let spec = &stream.spec;
        match self.schema_history.get(&spec.table).and_then(|h| h.last()) {
            Some(latest) if spec.schema.fields.is_empty() || spec.infer_columns => {
                latest.value.fields.clone()
            }
            _ => spec.schema.fields.clone(),
        }
    }

    /// The plan's check nodes on `model` (`layer.name`).
    pub fn checks_of(&self, model: &str) -> Vec<String> {
        self.plan
            .nodes()
            .iter()
            .filter(|n| n.kind == NodeKind::Check && n.upstream.iter().any(|u| u == model))
            .map(|n| n.id.clone())
            .collect()
    }
}
