//! `sluice impact <table|table.column>`: every model, check and destination table
//! downstream of a change, for a reviewer before changing a D1 column.
//!
//! A table's impact is the run plan's downstream. A column's is narrower where the
//! models' column-level lineage is known: the models whose plan reads the column
//! (to output, filter or join on it), then the models reading a column derived
//! from it, and so on. A model that cannot be planned yet (it reads a stream whose
//! columns are only known from data) counts as reading every column of its tables.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Serialize;
use sluice_core::plan::NodeKind;

use super::Knowledge;
use crate::exit;
use crate::project::Project;

#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ImpactFormat {
    /// One line per item: `model d2a.x`, `check …`, `table …`.
    #[default]
    Text,
    /// `{"target", "models", "columns", "checks", "tables"}`.
    Json,
}

#[derive(clap::Args, Debug)]
pub struct ImpactArgs {
    /// A table (`d1.facebook_insights`, `facebook.insights`, `d2a.ad_performance_daily`)
    /// or a column of one (`d1.facebook_insights.spend`).
    // Not named `target`: that is the global `--target` (an environment).
    #[arg(value_name = "TABLE|COLUMN")]
    pub changed: String,
    #[arg(long, value_enum, default_value_t = ImpactFormat::Text)]
    pub format: ImpactFormat,
}

/// What a change to the target reaches.
#[derive(Debug, Serialize, Default)]
pub struct Impact {
    pub target: String,
    pub models: BTreeSet<String>,
    /// Model columns derived from the target column (empty for a table).
    pub columns: BTreeSet<String>,
    pub checks: BTreeSet<String>,
    /// Destination tables rewritten from the target: `layer.table`.
    pub tables: BTreeSet<String>,
}

pub async fn run(pipeline: &Path, args: ImpactArgs) -> u8 {
    let project = match Project::load(pipeline) {
        Ok(p) => p,
        Err(e) => return e.report(),
    };
    let knowledge = match Knowledge::gather(&project).await {
        Ok(k) => k,
        Err(code) => return code,
    };
    let impact = match impact(&knowledge, &args.changed) {
        Ok(i) => i,
        Err(message) => {
            crate::logging::print_error!("{message}");
            return exit::CONFIG;
        }
    };
    match args.format {
        ImpactFormat::Json => match serde_json::to_string_pretty(&impact) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                crate::logging::print_error!("cannot encode the impact: {e}");
                return exit::INTERNAL;
            }
        },
        ImpactFormat::Text => {
            if impact.models.is_empty() && impact.tables.is_empty() {
                println!("nothing downstream of {}", impact.target);
            }
            for (kind, items) in [
                ("model", &impact.models),
                ("column", &impact.columns),
                ("check", &impact.checks),
                ("table", &impact.tables),
            ] {
                for item in items {
                    println!("{kind:<7}{item}");
                }
            }
        }
    }
    exit::OK
}

/// The impact of changing `target` (a plan node, or `node.column`).
pub fn impact(knowledge: &Knowledge, target: &str) -> Result<Impact, String> {
    let plan = &knowledge.plan;
    let is_table = |id: &str| {
        plan.node(id)
            .is_some_and(|n| matches!(n.kind, NodeKind::Stream | NodeKind::D1 | NodeKind::Model))
    };
    let (table, column) = if is_table(target) {
        (target.to_string(), None)
    } else {
        match target.rsplit_once('.') {
            Some((table, column)) if is_table(table) => (table.to_string(), Some(column)),
            _ => {
                let tables: Vec<&str> = plan
                    .nodes()
                    .iter()
                    .filter(|n| n.kind != NodeKind::Check)
                    .map(|n| n.id.as_str())
                    .collect();
                return Err(format!(
                    "`{target}` is neither a table nor a column of one; the tables are: {}",
                    tables.join(", ")
                ));
            }
        }
    };
    // A stream's columns are its D1 table's.
    let table = match plan.node(&table) {
        Some(n) if n.kind == NodeKind::Stream => plan
            .downstream(&table)
            .into_iter()
            .find(|d| plan.node(d).is_some_and(|n| n.kind == NodeKind::D1))
            .map(str::to_string)
            .unwrap_or(table),
        _ => table,
    };
    let mut out = Impact {
        target: target.to_string(),
        ..Impact::default()
    };
    let mut models: BTreeSet<String> = BTreeSet::new();
    match column {
        None => models.extend(downstream_models(knowledge, &table)),
        Some(column) => {
            if let Some(known) = knowledge.columns_of(&table) {
                if !known.contains(column) {
                    return Err(format!(
                        "{table} has no column `{column}`; it has: {}",
                        known.into_iter().collect::<Vec<_>>().join(", ")
                    ));
                }
            }
            let column = format!("{table}.{column}");
            let derived = knowledge.lineage.downstream_of(&column);
            let reached: BTreeSet<&String> = derived.iter().chain([&column]).collect();
            for model in &knowledge.models.models {
                let id = model.qualified_name();
                let reads_table = model
                    .depends_on
                    .iter()
                    .any(|d| d.to_string() == table || models.contains(&d.to_string()));
                let uses = match knowledge.reads.get(&id) {
                    Some(read) => read.iter().any(|c| reached.contains(c)),
                    // Not plannable yet: every column of what it reads may matter.
                    None => reads_table,
                };
                if uses {
                    models.insert(id);
                }
            }
            // Below a model without lineage, everything downstream of it.
            let unplanned: Vec<String> = models
                .iter()
                .filter(|m| !knowledge.reads.contains_key(*m))
                .cloned()
                .collect();
            for m in unplanned {
                models.extend(downstream_models(knowledge, &m));
            }
            out.columns = derived;
        }
    }
    for model in &models {
        out.checks.extend(knowledge.checks_of(model));
        if let Some((layer, name)) = model.split_once('.') {
            if let Some(m) = knowledge.models.model(layer, name) {
                out.tables.insert(format!("{layer}.{}", m.table_name()));
            }
        }
    }
    // A stream's change reaches its D1 table first.
    if column.is_none() && table != target && table.starts_with("d1.") {
        out.tables.insert(table.clone());
    }
    out.models = models;
    Ok(out)
}

/// Every model downstream of plan node `id`.
fn downstream_models(knowledge: &Knowledge, id: &str) -> BTreeSet<String> {
    let plan = &knowledge.plan;
    let mut out = BTreeSet::new();
    let mut frontier = vec![id.to_string()];
    while let Some(current) = frontier.pop() {
        for d in plan.downstream(&current) {
            if plan.node(d).is_some_and(|n| n.kind == NodeKind::Model) && out.insert(d.to_string())
            {
                frontier.push(d.to_string());
            }
        }
        // A stream's D1 table.
        if plan
            .node(&current)
            .is_some_and(|n| n.kind == NodeKind::Stream)
        {
            frontier.extend(
                plan.downstream(&current)
                    .iter()
                    .map(|s| s.to_string())
                    .filter(|d| plan.node(d).is_some_and(|n| n.kind == NodeKind::D1)),
            );
        }
    }
    out
}
