//! `sluice docs lineage --format json|dot|openlineage`: the pipeline's table- and
//! column-level lineage, for other tools.
//!
//! Every D1 column comes from the source field of its name, or from the fields its
//! connector computed it from (`cost` ← `cost_micros`); every model column from the
//! input columns its plan names ([`sluice_transform::lineage`]), as value (identity,
//! transformation, aggregation) or as condition. `openlineage` writes one static
//! `JobEvent` (spec 2-0-2) per stream and per model, one per line, whose output
//! dataset carries a `schema` and a `columnLineage` facet (1-2-0: conditions and the
//! columns a model filters, joins, groups or sorts on are `INDIRECT`); its datasets are
//! named as the run events of `lineage:` name them, so both join up in a catalog.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use sluice_transform::lineage::{Flow, Indirect};

use super::Knowledge;
use crate::lineage::events::{facet_schema, lake_namespace, PRODUCER, SPEC};
use crate::project::Project;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineageFormat {
    /// One JSON document: tables with what writes and reads them, columns with their inputs.
    Json,
    /// Graphviz: a cluster per table, an edge per column flow (dashed: a condition).
    Dot,
    /// OpenLineage JobEvents, one per line, with column-lineage facets.
    Openlineage,
}

/// One column's input: `layer.table.column` (or `source.stream.field`) and how it flows.
struct Input {
    column: String,
    flow: Flow,
}

/// A table of the lineage: what writes it, what it reads, its columns and their inputs.
struct TableLineage {
    /// `d1.facebook_insights`, `d2b.channel_spend_daily`.
    id: String,
    /// The plan node writing it: `facebook.insights`, `d2b.channel_spend_daily`.
    job: String,
    /// `STREAM` or `MODEL`.
    kind: &'static str,
    /// Tables (or `source.stream` for a D1 table) it reads.
    inputs: Vec<String>,
    /// Column → (type, description, inputs), in the table's order.
    columns: Vec<(String, String, Option<String>, Vec<Input>)>,
    /// Input column → how the whole table uses it.
    indirect: BTreeMap<String, Vec<Indirect>>,
    /// A model's SQL and description.
    sql: Option<String>,
    description: Option<String>,
}

fn tables(knowledge: &Knowledge) -> Vec<TableLineage> {
    let mut out = Vec::new();
    for stream in &knowledge.streams {
        let id = stream.id();
        let columns = knowledge
            .stream_fields(stream)
            .into_iter()
            .map(|f| {
                let derived = knowledge
                    .derived
                    .get(&(stream.spec.table.clone(), f.name.clone()));
                let inputs = match derived {
                    Some(from) => from
                        .iter()
                        .map(|field| Input {
                            column: format!("{id}.{field}"),
                            flow: Flow::Transformation,
                        })
                        .collect(),
                    None => vec![Input {
                        column: format!("{id}.{}", f.name),
                        flow: Flow::Identity,
                    }],
                };
                (f.name.clone(), f.ty.name(), None, inputs)
            })
            .collect();
        out.push(TableLineage {
            id: format!("d1.{}", stream.spec.table),
            job: id.clone(),
            kind: "STREAM",
            inputs: vec![id],
            columns,
            indirect: BTreeMap::new(),
            sql: None,
            description: None,
        });
    }
    for model in &knowledge.models.models {
        let id = model.qualified_name();
        let columns = knowledge
            .lineage
            .models
            .get(&id)
            .into_iter()
            .flatten()
            .map(|c| {
                let inputs = c
                    .inputs
                    .iter()
                    .map(|(column, flow)| Input {
                        column: column.clone(),
                        flow: *flow,
                    })
                    .collect();
                (
                    c.name.clone(),
                    c.data_type.clone(),
                    model.column_description(&c.name),
                    inputs,
                )
            })
            .collect();
        let indirect = knowledge
            .lineage
            .indirect
            .get(&id)
            .into_iter()
            .flatten()
            .map(|(column, uses)| (column.clone(), uses.iter().copied().collect()))
            .collect();
        out.push(TableLineage {
            id: format!("{}.{}", model.layer.as_str(), model.name),
            job: id,
            kind: "MODEL",
            inputs: model.depends_on.iter().map(|d| d.to_string()).collect(),
            columns,
            indirect,
            sql: Some(model.sql.to_string()),
            description: model.description(),
        });
    }
    out
}

fn flow_name(flow: Flow) -> &'static str {
    match flow {
        Flow::Identity => "identity",
        Flow::Transformation => "transformation",
        Flow::Aggregation => "aggregation",
        Flow::Condition => "condition",
    }
}

/// The lineage in `format`, as text to print.
pub fn render(project: &Project, knowledge: &Knowledge, format: LineageFormat) -> String {
    let tables = tables(knowledge);
    match format {
        LineageFormat::Json => json(project, &tables),
        LineageFormat::Dot => dot(&tables),
        LineageFormat::Openlineage => openlineage(project, knowledge, &tables),
    }
}

fn json(project: &Project, tables: &[TableLineage]) -> String {
    let tables: Vec<Value> = tables
        .iter()
        .map(|t| {
            json!({
                "table": t.id,
                "written_by": t.job,
                "kind": t.kind.to_lowercase(),
                "reads": t.inputs,
                "columns": t.columns.iter().map(|(name, ty, description, inputs)| json!({
                    "name": name,
                    "type": ty,
                    "description": description,
                    "inputs": inputs.iter().map(|i| json!({"column": i.column, "flow": flow_name(i.flow)})).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "indirect": t.indirect.iter().map(|(column, uses)| json!({
                    "column": column,
                    "uses": uses.iter().map(|u| u.openlineage_subtype().to_lowercase()).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let doc = json!({ "pipeline": project.config.name, "tables": tables });
    serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"
}

fn dot(tables: &[TableLineage]) -> String {
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\\\""));
    let mut out =
        String::from("digraph lineage {\n  rankdir=LR;\n  node [shape=box, fontsize=10];\n");
    // Source streams first: a cluster of the fields D1 reads.
    let mut sources: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for t in tables.iter().filter(|t| t.kind == "STREAM") {
        for (_, _, _, inputs) in &t.columns {
            for i in inputs {
                sources.entry(&t.job).or_default().push(i.column.clone());
            }
        }
    }
    for (i, (stream, mut fields)) in sources.into_iter().enumerate() {
        fields.sort();
        fields.dedup();
        out += &format!(
            "  subgraph cluster_source_{i} {{\n    label={};\n    style=dashed;\n",
            quote(&format!("source {stream}"))
        );
        for field in fields {
            let label = field.rsplit('.').next().unwrap_or(&field);
            out += &format!("    {} [label={}];\n", quote(&field), quote(label));
        }
        out += "  }\n";
    }
    for (i, t) in tables.iter().enumerate() {
        out += &format!("  subgraph cluster_{i} {{\n    label={};\n", quote(&t.id));
        for (name, _, _, _) in &t.columns {
            out += &format!(
                "    {} [label={}];\n",
                quote(&format!("{}.{name}", t.id)),
                quote(name)
            );
        }
        out += "  }\n";
    }
    for t in tables {
        for (name, _, _, inputs) in &t.columns {
            for i in inputs {
                let style = if i.flow == Flow::Condition {
                    ", style=dashed"
                } else {
                    ""
                };
                out += &format!(
                    "  {} -> {} [label={}{style}];\n",
                    quote(&i.column),
                    quote(&format!("{}.{name}", t.id)),
                    quote(flow_name(i.flow))
                );
            }
        }
    }
    out += "}\n";
    out
}

/// OpenLineage's transformation of a column flow.
fn transformation(flow: Flow, masking: bool) -> Value {
    let (kind, subtype) = match flow {
        Flow::Identity => ("DIRECT", "IDENTITY"),
        Flow::Transformation => ("DIRECT", "TRANSFORMATION"),
        Flow::Aggregation => ("DIRECT", "AGGREGATION"),
        Flow::Condition => ("INDIRECT", "CONDITIONAL"),
    };
    json!({ "type": kind, "subtype": subtype, "masking": masking })
}

fn openlineage(project: &Project, knowledge: &Knowledge, tables: &[TableLineage]) -> String {
    let lake = lake_namespace(&project.lake);
    let namespace = crate::lineage::Lineage::from_config(&project.config)
        .ok()
        .flatten()
        .map(|l| l.namespace().to_string())
        .unwrap_or_else(|| "sluice".into());
    let source_kind: BTreeMap<&str, &str> = project
        .config
        .sources
        .iter()
        .map(|s| (s.name.as_str(), s.kind.as_str()))
        .collect();
    // `layer.table.column` or `source.stream.field` → (namespace, dataset, field).
    let dataset_of = |column: &str| -> Option<(String, String, String)> {
        let (table, field) = column.rsplit_once('.')?;
        let (first, rest) = table.split_once('.')?;
        Some(match first {
            "d1" | "d2a" | "d2b" => (lake.clone(), table.to_string(), field.to_string()),
            source => (
                format!("{}://{source}", source_kind.get(source)?),
                rest.to_string(),
                field.to_string(),
            ),
        })
    };
    // Whether the policy transforms a D1 column before models read it.
    let masked = |column: &str| -> bool {
        let mut parts = column.splitn(3, '.');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("d1"), Some(table), Some(name)) => {
                let marked = knowledge
                    .models
                    .d1_tables
                    .get(table)
                    .is_some_and(|t| t.pii_columns.iter().any(|c| c == name));
                knowledge.models.pii.action(table, name, marked).is_some()
            }
            _ => false,
        }
    };
    let input_field = |column: &str, transformations: Vec<Value>| -> Option<Value> {
        let (namespace, name, field) = dataset_of(column)?;
        Some(json!({
            "namespace": namespace,
            "name": name,
            "field": field,
            "transformations": transformations,
        }))
    };
    let now = crate::lineage::events::time(chrono::Utc::now());
    let mut lines = Vec::new();
    for t in tables {
        let inputs: Vec<Value> = t
            .inputs
            .iter()
            .filter_map(|input| {
                let (namespace, name) = if t.kind == "STREAM" {
                    let (source, stream) = input.split_once('.')?;
                    (
                        format!("{}://{source}", source_kind.get(source)?),
                        stream.to_string(),
                    )
                } else {
                    (lake.clone(), input.clone())
                };
                Some(json!({ "namespace": namespace, "name": name, "facets": {} }))
            })
            .collect();
        let fields: serde_json::Map<String, Value> = t
            .columns
            .iter()
            .map(|(name, _, _, inputs)| {
                let input_fields: Vec<Value> = inputs
                    .iter()
                    .filter_map(|i| {
                        input_field(&i.column, vec![transformation(i.flow, masked(&i.column))])
                    })
                    .collect();
                (name.clone(), json!({ "inputFields": input_fields }))
            })
            .collect();
        let dataset: Vec<Value> = t
            .indirect
            .iter()
            .filter_map(|(column, uses)| {
                let transformations = uses
                    .iter()
                    .map(|u| {
                        json!({ "type": "INDIRECT", "subtype": u.openlineage_subtype(), "masking": masked(column) })
                    })
                    .collect();
                input_field(column, transformations)
            })
            .collect();
        let schema_fields: Vec<Value> = t
            .columns
            .iter()
            .map(|(name, ty, description, _)| match description {
                Some(d) => json!({ "name": name, "type": ty, "description": d }),
                None => json!({ "name": name, "type": ty }),
            })
            .collect();
        let mut output_facets = serde_json::Map::new();
        if !t.columns.is_empty() {
            output_facets.insert(
                "schema".into(),
                json!({
                    "_producer": PRODUCER,
                    "_schemaURL": facet_schema("SchemaDatasetFacet", "1-2-0"),
                    "fields": schema_fields,
                }),
            );
            output_facets.insert(
                "columnLineage".into(),
                json!({
                    "_producer": PRODUCER,
                    "_schemaURL": facet_schema("ColumnLineageDatasetFacet", "1-2-0"),
                    "fields": fields,
                    "dataset": dataset,
                }),
            );
        }
        let mut job_facets = serde_json::Map::new();
        job_facets.insert(
            "jobType".into(),
            json!({
                "_producer": PRODUCER,
                "_schemaURL": facet_schema("JobTypeJobFacet", "2-0-4"),
                "processingType": "BATCH",
                "integration": "SLUICE",
                "jobType": t.kind,
            }),
        );
        if let Some(sql) = &t.sql {
            job_facets.insert(
                "sql".into(),
                json!({
                    "_producer": PRODUCER,
                    "_schemaURL": facet_schema("SQLJobFacet", "1-1-0"),
                    "query": sql,
                }),
            );
        }
        if let Some(description) = &t.description {
            job_facets.insert(
                "documentation".into(),
                json!({
                    "_producer": PRODUCER,
                    "_schemaURL": facet_schema("DocumentationJobFacet", "1-1-0"),
                    "description": description,
                }),
            );
        }
        let event = json!({
            "eventTime": now,
            "producer": PRODUCER,
            "schemaURL": format!("{SPEC}#/$defs/JobEvent"),
            "job": {
                "namespace": namespace,
                "name": format!("{}.{}", project.config.name, t.job),
                "facets": job_facets,
            },
            "inputs": inputs,
            "outputs": [{ "namespace": lake, "name": t.id, "facets": output_facets }],
        });
        lines.push(event.to_string());
    }
    lines.join("\n") + "\n"
}
