//! `sluice ls [streams|models|tables|checks]`: what the project defines, narrowed by
//! `--select` like `sluice run`, as a table or JSON. Tables say whether the lake
//! holds them yet. Nothing runs and no source is called.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Serialize;
use sluice_transform::checks::Severity;
use sluice_transform::project::Materialization;

use super::print_table;
use super::run::build_plan;
use crate::exit;
use crate::project::Project;

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Streams,
    Models,
    Tables,
    Checks,
}

#[derive(clap::Args, Debug)]
pub struct LsArgs {
    /// What to list (default: all four).
    #[arg(value_enum)]
    pub kind: Option<Kind>,
    /// Only what this selects, with `sluice run --select`'s syntax.
    #[arg(short, long, value_delimiter = ',')]
    pub select: Vec<String>,
    /// JSON on stdout: an array for one kind, `{"streams": […], …}` for all.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize, Default)]
struct Listing {
    streams: Vec<StreamItem>,
    models: Vec<ModelItem>,
    tables: Vec<TableItem>,
    checks: Vec<CheckItem>,
}

#[derive(Serialize)]
struct StreamItem {
    id: String,
    source: String,
    table: String,
    write_mode: sluice_core::destination::WriteMode,
    primary_key: Vec<String>,
}

#[derive(Serialize)]
struct ModelItem {
    id: String,
    materialized: &'static str,
    reads: Vec<String>,
    checks: usize,
    tags: Vec<String>,
    path: String,
}

#[derive(Serialize)]
struct TableItem {
    table: String,
    /// The stream or model that writes it.
    written_by: String,
    /// Whether the lake holds it (it has been published at least once).
    in_lake: bool,
}

#[derive(Serialize)]
struct CheckItem {
    id: String,
    model: String,
    check: String,
    severity: &'static str,
}

pub async fn run(pipeline: &Path, args: LsArgs) -> u8 {
    let project = match Project::load(pipeline) {
        Ok(p) => p,
        Err(e) => return e.report(),
    };
    let (plan, models) = match build_plan(&project, &project.sources) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let selection = match plan.select(&args.select) {
        Ok(s) => s,
        Err(e) => {
            crate::logging::print_error!("{e}");
            return exit::CONFIG;
        }
    };
    let mut in_lake = BTreeSet::new();
    for layer in ["d1", "d2a", "d2b"] {
        match sluice_transform::catalog::lake_tables(&project.lake, layer).await {
            Ok(tables) => in_lake.extend(tables.into_iter().map(|t| format!("{layer}.{t}"))),
            Err(e) => {
                crate::logging::print_error!(
                    "cannot list the lake: {}",
                    sluice_core::secret::redact(&e.to_string())
                );
                return exit::RUN_FAILED;
            }
        }
    }
    let mut listing = Listing::default();
    for source in &project.sources {
        for stream in source.streams() {
            let id = format!("{}.{}", source.name(), stream.name);
            if !selection.contains(&id) {
                continue;
            }
            let table = format!("d1.{}", stream.table);
            listing.tables.push(TableItem {
                in_lake: in_lake.contains(&table),
                table: table.clone(),
                written_by: id.clone(),
            });
            listing.streams.push(StreamItem {
                id,
                source: source.name().to_string(),
                table,
                write_mode: stream.write_mode,
                primary_key: stream.primary_key.clone(),
            });
        }
    }
    for model in &models.models {
        let id = model.qualified_name();
        if !selection.contains(&id) {
            continue;
        }
        let table = format!("{}.{}", model.layer.as_str(), model.name);
        listing.tables.push(TableItem {
            in_lake: in_lake.contains(&table),
            table,
            written_by: id.clone(),
        });
        for check in &model.config.checks {
            let check_id = format!("{id}:{}", check.display_name());
            if selection.contains(&check_id) {
                listing.checks.push(CheckItem {
                    id: check_id,
                    model: id.clone(),
                    check: check.display_name(),
                    severity: match check.severity {
                        Severity::Error => "error",
                        Severity::Warn => "warn",
                    },
                });
            }
        }
        listing.models.push(ModelItem {
            id,
            materialized: match model.config.materialized {
                Materialization::Table => "table",
                Materialization::Incremental => "incremental",
            },
            reads: model.depends_on.iter().map(|t| t.to_string()).collect(),
            checks: model.config.checks.len(),
            tags: model.config.tags.clone(),
            path: model.sql_path.display().to_string(),
        });
    }
    if args.json {
        let value = match args.kind {
            None => serde_json::to_value(&listing),
            Some(Kind::Streams) => serde_json::to_value(&listing.streams),
            Some(Kind::Models) => serde_json::to_value(&listing.models),
            Some(Kind::Tables) => serde_json::to_value(&listing.tables),
            Some(Kind::Checks) => serde_json::to_value(&listing.checks),
        };
        match value.and_then(|v| serde_json::to_string_pretty(&v)) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                crate::logging::print_error!("cannot encode the listing: {e}");
                return exit::INTERNAL;
            }
        }
        return exit::OK;
    }
    let show = |kind: Kind| args.kind.is_none_or(|k| k == kind);
    let heading = |title: &str| {
        if args.kind.is_none() {
            println!("{title}");
        }
    };
    if show(Kind::Streams) {
        heading("streams");
        let mut rows = vec![vec![
            "stream".to_string(),
            "table".into(),
            "write mode".into(),
            "primary key".into(),
        ]];
        for s in &listing.streams {
            rows.push(vec![
                s.id.clone(),
                s.table.clone(),
                serde_json::to_value(s.write_mode)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                s.primary_key.join(", "),
            ]);
        }
        print_or_none(&rows);
    }
    if show(Kind::Models) {
        heading("models");
        let mut rows = vec![vec![
            "model".to_string(),
            "materialized".into(),
            "reads".into(),
            "checks".into(),
            "tags".into(),
        ]];
        for m in &listing.models {
            rows.push(vec![
                m.id.clone(),
                m.materialized.into(),
                m.reads.join(", "),
                m.checks.to_string(),
                m.tags.join(", "),
            ]);
        }
        print_or_none(&rows);
    }
    if show(Kind::Tables) {
        heading("tables");
        let mut rows = vec![vec![
            "table".to_string(),
            "written by".into(),
            "in lake".into(),
        ]];
        for t in &listing.tables {
            rows.push(vec![
                t.table.clone(),
                t.written_by.clone(),
                if t.in_lake { "yes" } else { "not yet" }.into(),
            ]);
        }
        print_or_none(&rows);
    }
    if show(Kind::Checks) {
        heading("checks");
        let mut rows = vec![vec!["check".to_string(), "model".into(), "severity".into()]];
        for c in &listing.checks {
            rows.push(vec![c.check.clone(), c.model.clone(), c.severity.into()]);
        }
        print_or_none(&rows);
    }
    exit::OK
}

fn print_or_none(rows: &[Vec<String>]) {
    if rows.len() > 1 {
        print_table(rows);
    } else {
        println!("  (none)");
    }
}
