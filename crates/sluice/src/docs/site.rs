//! Rendering the site's pages from [`Knowledge`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use minijinja::{context, Environment, Value};
use serde::Serialize;
use sluice_core::plan::NodeKind;
use sluice_transform::pii::PiiAction;

use super::Knowledge;
use crate::project::Project;

fn templates() -> Environment<'static> {
    let mut env = Environment::new();
    for (name, text) in [
        ("base.html", include_str!("templates/base.html")),
        ("index.html", include_str!("templates/index.html")),
        ("stream.html", include_str!("templates/stream.html")),
        ("model.html", include_str!("templates/model.html")),
        ("table.html", include_str!("templates/table.html")),
    ] {
        env.add_template(name, text)
            .expect("the docs templates parse");
    }
    env
}

/// A page of the site, as listed on the overview and searched.
#[derive(Serialize)]
struct Entry {
    kind: &'static str,
    name: String,
    href: String,
    summary: String,
}

fn stream_href(id: &str) -> String {
    format!("streams/{id}.html")
}

fn model_href(id: &str) -> String {
    format!("models/{id}.html")
}

fn table_href(id: &str) -> String {
    format!("tables/{id}.html")
}

/// The page of a plan node, relative to the site's root.
fn node_href(knowledge: &Knowledge, id: &str) -> Option<String> {
    let node = knowledge.plan.node(id)?;
    Some(match node.kind {
        NodeKind::Stream => stream_href(id),
        NodeKind::D1 => table_href(id),
        NodeKind::Model => model_href(id),
        NodeKind::Check => model_href(node.upstream.first()?),
    })
}

/// A link as the templates draw it.
#[derive(Serialize)]
struct Link {
    name: String,
    href: Option<String>,
}

fn link(knowledge: &Knowledge, id: &str) -> Link {
    Link {
        name: id.to_string(),
        href: node_href(knowledge, id).map(|h| format!("../{h}")),
    }
}

#[derive(Serialize)]
struct ColumnRow {
    name: String,
    data_type: String,
    nullable: bool,
    pii: String,
    description: String,
}

#[derive(Serialize)]
struct LineageRow {
    name: String,
    data_type: String,
    description: String,
    derives_from: Vec<Link>,
    /// Inputs that decide the value without flowing into it (a CASE's WHEN, a lookup key).
    decided_by: Vec<Link>,
    d1: Vec<String>,
    source_fields: Vec<String>,
}

/// A link to the page of the table holding `column` (`layer.table.column`).
fn column_link(knowledge: &Knowledge, column: &str) -> Link {
    let table = column.rsplit_once('.').map_or(column, |(t, _)| t);
    Link {
        name: column.to_string(),
        href: node_href(knowledge, table).map(|h| format!("../{h}")),
    }
}

/// A serialisable value as the templates see it.
fn ser<T: Serialize>(value: T) -> Value {
    Value::from(minijinja::value::Serde(value))
}

/// The site's files by their path relative to its root (`index.html`,
/// `models/d2a.x.html`, `runbook.md`).
pub type Pages = BTreeMap<String, String>;

/// Writes the site into `out`; returns the number of pages written.
pub fn write(pages: &Pages, out: &Path) -> std::io::Result<usize> {
    for (path, text) in pages {
        let file = out.join(path);
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(file, text)?;
    }
    Ok(pages.len())
}

/// Renders every page of the site, and the runbook beside them.
pub fn render_site(project: &Project, knowledge: &Knowledge) -> std::io::Result<Pages> {
    let env = templates();
    let render = |name: &str, ctx: Value| -> std::io::Result<String> {
        env.get_template(name)
            .and_then(|t| t.render(ctx))
            .map_err(|e| std::io::Error::other(format!("{name}: {e:#}")))
    };
    let mut site = Pages::new();
    let pipeline = &project.config.name;
    let mut entries: Vec<Entry> = Vec::new();
    let pii = &knowledge.models.pii;

    for stream in &knowledge.streams {
        let id = stream.id();
        let spec = &stream.spec;
        let history = knowledge.schema_history.get(&spec.table);
        let fields = knowledge.stream_fields(stream);
        let columns: Vec<ColumnRow> = fields
            .iter()
            .map(|f| ColumnRow {
                name: f.name.clone(),
                data_type: f.ty.name(),
                nullable: f.nullable,
                pii: pii_text(pii.action(&spec.table, &f.name, f.pii), f.pii),
                description: knowledge
                    .derived
                    .get(&(spec.table.clone(), f.name.clone()))
                    .map(|from| format!("computed from {}", from.join(", ")))
                    .unwrap_or_default(),
            })
            .collect();
        let versions: Vec<_> = history
            .into_iter()
            .flatten()
            .map(|v| {
                context! {
                    version => v.version,
                    run_id => &v.run_id,
                    written_at => v.written_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                    columns => v.value.fields.len(),
                }
            })
            .collect();
        let table = format!("d1.{}", spec.table);
        let html = render(
            "stream.html",
            context! {
                root => "../",
                pipeline => pipeline,
                id => &id,
                source => &stream.source.name,
                source_type => &stream.source.kind,
                table => ser(link(knowledge, &table)),
                write_mode => super::knowledge::write_mode_name(spec.write_mode),
                primary_key => spec.primary_key.join(", "),
                partition_column => &spec.partition_column,
                infer_columns => spec.infer_columns,
                schedule => project.config.schedule.as_ref().map(|s| s.expression.clone()),
                start_date => stream.option("start_date"),
                lookback_days => stream.option("lookback_days"),
                columns => ser(&columns),
                versions => versions,
                downstream => ser(knowledge.plan.downstream(&table).iter().map(|d| link(knowledge, d)).collect::<Vec<_>>()),
            },
        )?;
        site.insert(stream_href(&id), html);
        entries.push(Entry {
            kind: "stream",
            name: id.clone(),
            href: stream_href(&id),
            summary: format!("{} stream → {table}", stream.source.kind),
        });

        let html = render(
            "table.html",
            context! {
                root => "../",
                pipeline => pipeline,
                id => &table,
                layer => "d1",
                produced_by => ser(link(knowledge, &id)),
                write_mode => super::knowledge::write_mode_name(spec.write_mode),
                primary_key => spec.primary_key.join(", "),
                partition_column => &spec.partition_column,
                columns => ser(&columns),
                freshness => freshness(knowledge, &table),
                read_by => ser(knowledge.plan.downstream(&table).iter().map(|d| link(knowledge, d)).collect::<Vec<_>>()),
            },
        )?;
        site.insert(table_href(&table), html);
        entries.push(Entry {
            kind: "table",
            name: table.clone(),
            href: table_href(&table),
            summary: format!("D1 table loaded by {id}"),
        });
    }

    for model in &knowledge.models.models {
        let id = model.qualified_name();
        let config = &model.config;
        let lineage = knowledge.lineage.models.get(&id);
        let columns: Vec<LineageRow> = lineage
            .into_iter()
            .flatten()
            .map(|c| {
                let column = format!("{id}.{}", c.name);
                let d1 = knowledge.lineage.d1_origins(&column);
                let source_fields: BTreeSet<String> =
                    d1.iter().flat_map(|d| knowledge.source_fields(d)).collect();
                LineageRow {
                    name: c.name.clone(),
                    data_type: c.data_type.clone(),
                    description: model.column_description(&c.name).unwrap_or_default(),
                    derives_from: c
                        .derives_from()
                        .map(|from| column_link(knowledge, from))
                        .collect(),
                    decided_by: c
                        .conditions()
                        .map(|from| column_link(knowledge, from))
                        .collect(),
                    d1: d1.into_iter().collect(),
                    source_fields: source_fields.into_iter().collect(),
                }
            })
            .collect();
        let upstream: Vec<Link> = knowledge
            .plan
            .node(&id)
            .map(|n| n.upstream.iter().map(|u| link(knowledge, u)).collect())
            .unwrap_or_default();
        let downstream: Vec<Link> = knowledge
            .plan
            .downstream(&id)
            .iter()
            .filter(|d| {
                knowledge
                    .plan
                    .node(d)
                    .is_some_and(|n| n.kind != NodeKind::Check)
            })
            .map(|d| link(knowledge, d))
            .collect();
        let table_id = format!("{}.{}", model.layer.as_str(), model.table_name());
        let html = render(
            "model.html",
            context! {
                root => "../",
                pipeline => pipeline,
                id => &id,
                description => model.description(),
                materialized => format!("{:?}", config.materialized).to_lowercase(),
                partition_by => &config.partition_by,
                primary_key => config.primary_key.join(", "),
                tags => &config.tags,
                sql => model.sql.as_str(),
                sql_path => model.sql_path.strip_prefix(&project.config.root).unwrap_or(&model.sql_path).display().to_string(),
                planned => lineage.is_some(),
                columns => ser(&columns),
                upstream => ser(&upstream),
                downstream => ser(&downstream),
                checks => knowledge.checks_of(&id),
                check_results => check_results(knowledge, &id),
                table => ser(Link { name: table_id.clone(), href: Some(format!("../{}", table_href(&table_id))) }),
            },
        )?;
        site.insert(model_href(&id), html);
        entries.push(Entry {
            kind: "model",
            name: id.clone(),
            href: model_href(&id),
            summary: model.description().unwrap_or_default(),
        });

        let table_columns: Vec<ColumnRow> = lineage
            .into_iter()
            .flatten()
            .map(|c| ColumnRow {
                name: c.name.clone(),
                data_type: c.data_type.clone(),
                nullable: true,
                pii: String::new(),
                description: model.column_description(&c.name).unwrap_or_default(),
            })
            .collect();
        let html = render(
            "table.html",
            context! {
                root => "../",
                pipeline => pipeline,
                id => &table_id,
                layer => model.layer.as_str(),
                produced_by => ser(link(knowledge, &id)),
                write_mode => match config.materialized {
                    sluice_transform::project::Materialization::Table => "replace",
                    sluice_transform::project::Materialization::Incremental => "overwrite_partitions",
                },
                primary_key => config.primary_key.join(", "),
                partition_column => &config.partition_by,
                columns => ser(&table_columns),
                freshness => freshness(knowledge, &id),
                read_by => ser(downstream.iter().map(|l| &l.name).filter_map(|d| knowledge.plan.node(d)).filter(|n| n.kind == NodeKind::Model).map(|n| link(knowledge, &n.id)).collect::<Vec<_>>()),
            },
        )?;
        site.insert(table_href(&table_id), html);
        entries.push(Entry {
            kind: "table",
            name: table_id.clone(),
            href: table_href(&table_id),
            summary: format!("{} table written by {id}", model.layer.as_str()),
        });
    }

    let svg = crate::plan_svg::plan_svg(&knowledge.plan, knowledge.runs.last(), &|id| {
        node_href(knowledge, id)
    });
    let runs: Vec<_> = knowledge
        .runs
        .iter()
        .rev()
        .take(10)
        .map(|r| {
            context! {
                run_id => &r.run_id,
                status => r.status.as_str(),
                started_at => r.started_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                failed => r.tasks.iter().filter(|t| t.error.is_some()).map(|t| t.task.clone()).collect::<Vec<_>>(),
            }
        })
        .collect();
    let html = render(
        "index.html",
        context! {
            root => "",
            pipeline => pipeline,
            plan_svg => Value::from_safe_string(svg),
            entries => ser(&entries),
            runs => runs,
            schedule => project.config.schedule.as_ref().map(|s| s.expression.clone()),
            sources => project.config.sources.iter().map(|s| format!("{} ({})", s.name, s.kind)).collect::<Vec<_>>(),
        },
    )?;
    site.insert("index.html".into(), html);
    site.insert(
        super::runbook::FILE.into(),
        super::runbook::render(project, knowledge),
    );
    Ok(site)
}

/// What the latest successful load of `task`'s table says: when and how many rows.
fn freshness(knowledge: &Knowledge, task: &str) -> Option<Value> {
    knowledge.runs.iter().rev().find_map(|run| {
        run.tasks
            .iter()
            .find(|t| (t.task == task || t.table == task) && t.error.is_none() && t.rows_loaded > 0)
            .map(|t| {
                context! {
                    run_id => &run.run_id,
                    at => run.started_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                    rows_loaded => t.rows_loaded,
                }
            })
    })
}

/// The model's check group in recent runs, newest first: run, status, message.
fn check_results(knowledge: &Knowledge, model: &str) -> Vec<Value> {
    let task = format!("{model}:checks");
    knowledge
        .runs
        .iter()
        .rev()
        .filter_map(|run| {
            let t = run.tasks.iter().find(|t| t.task == task)?;
            Some(context! {
                run_id => &run.run_id,
                at => run.started_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                status => crate::commands::run::status_text(t.status),
                message => t.error.as_ref().map(|e| e.message.clone()),
            })
        })
        .take(10)
        .collect()
}

pub(super) fn pii_text(action: Option<PiiAction>, marked: bool) -> String {
    match (action, marked) {
        (Some(action), _) => action.name().to_string(),
        (None, true) => "marked".into(),
        (None, false) => String::new(),
    }
}
