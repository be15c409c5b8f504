//! Column-level lineage: for each output column of each model, the columns of the
//! tables it reads (`d1.facebook_insights.spend`, `d2a.ad_performance_daily.spend_usd`)
//! that it derives from, read from DataFusion's optimised logical plan.
//!
//! Models are planned as [`crate::preflight`] plans them: against the lake's tables,
//! or a stream's declared columns before its first run. A model that cannot be
//! planned yet (it reads a stream whose columns are only known from data) has no
//! lineage. Columns a query only filters or joins on are not origins of an output
//! column; every column an output expression names is (`convert_currency(spend,
//! currency, …)` derives from both).

use std::collections::{BTreeMap, BTreeSet};

use datafusion::common::DFSchema;
use datafusion::logical_expr::{Expr, LogicalPlan};
use sluice_core::lake::Lake;
use sluice_core::source::StreamSpec;

use crate::catalog::{self, D1View};
use crate::error::TransformError;
use crate::project::ModelProject;

/// One output column of a model and the upstream columns it derives from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputColumn {
    pub name: String,
    /// The engine's type of the column (`Decimal128(38, 6)`, `Utf8`).
    pub data_type: String,
    /// `layer.table.column` of the tables the model reads directly.
    pub derives_from: BTreeSet<String>,
}

/// Lineage of every plannable model, by `layer.name`.
#[derive(Debug, Clone, Default)]
pub struct Lineage {
    pub models: BTreeMap<String, Vec<OutputColumn>>,
}

impl Lineage {
    /// The D1 columns `layer.model.column` derives from, through every model between.
    pub fn d1_origins(&self, column: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut seen = BTreeSet::new();
        self.collect_d1(column, &mut out, &mut seen);
        out
    }

    fn collect_d1(&self, column: &str, out: &mut BTreeSet<String>, seen: &mut BTreeSet<String>) {
        if !seen.insert(column.to_string()) {
            return;
        }
        if column.starts_with("d1.") {
            out.insert(column.to_string());
            return;
        }
        let Some((model, name)) = column.rsplit_once('.') else {
            return;
        };
        let Some(columns) = self.models.get(model) else {
            return;
        };
        for c in columns.iter().filter(|c| c.name == name) {
            for from in &c.derives_from {
                self.collect_d1(from, out, seen);
            }
        }
    }

    /// Every model column derived, directly or through other models, from `column`
    /// (`layer.table.column`), as `layer.model.column`, sorted.
    pub fn downstream_of(&self, column: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut frontier = vec![column.to_string()];
        while let Some(current) = frontier.pop() {
            for (model, columns) in &self.models {
                for c in columns {
                    if c.derives_from.contains(&current) {
                        let id = format!("{model}.{}", c.name);
                        if out.insert(id.clone()) {
                            frontier.push(id);
                        }
                    }
                }
            }
        }
        out
    }
}

/// Lineage of every model of `project` that can be planned now, and the columns
/// each model's plan reads from its input tables (projected, filtered or joined on).
pub async fn column_lineage(
    project: &ModelProject,
    lake: &Lake,
    streams: &[StreamSpec],
) -> Result<(Lineage, BTreeMap<String, BTreeSet<String>>), TransformError> {
    let mut lineage = Lineage::default();
    let mut reads: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    if project.models.is_empty() {
        return Ok((lineage, reads));
    }
    let ctx = catalog::session(project, lake, D1View::Policy).await?;
    let present = catalog::lake_tables(lake, "d1").await?;
    let declared: BTreeMap<&str, &StreamSpec> =
        streams.iter().map(|s| (s.table.as_str(), s)).collect();
    let mut unknown_shape: BTreeSet<String> = BTreeSet::new();
    for model in &project.models {
        let mut plannable = true;
        for dep in &model.depends_on {
            if dep.layer != "d1" {
                plannable &= !unknown_shape.contains(&dep.to_string());
                continue;
            }
            if present.contains(&dep.name) {
                continue;
            }
            match declared.get(dep.name.as_str()) {
                Some(stream) if !stream.infer_columns => {
                    let schema = crate::preflight::declared_d1_schema(&stream.schema);
                    catalog::register_placeholder(&ctx, "d1", &dep.name, schema)?;
                }
                _ => plannable = false,
            }
        }
        if !plannable {
            unknown_shape.insert(model.qualified_name());
            continue;
        }
        let schema = crate::run::plan(&ctx, model).await?;
        let state = ctx.state();
        let plan = state
            .create_logical_plan(&model.sql)
            .await
            .map_err(|e| TransformError::engine(model.qualified_name(), e))?;
        let plan = state.optimize(&plan).unwrap_or(plan);
        let origins = origins_of(&plan);
        let columns = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| OutputColumn {
                name: f.name().clone(),
                data_type: f.data_type().to_string(),
                derives_from: origins.get(i).cloned().unwrap_or_default(),
            })
            .collect();
        lineage.models.insert(model.qualified_name(), columns);
        reads.insert(model.qualified_name(), scanned_columns(&plan));
        catalog::register_placeholder(&ctx, model.layer.as_str(), &model.name, schema)?;
    }
    Ok((lineage, reads))
}

/// `layer.table` of a scan of the lake's tables (the raw D1 tables under a D1 view are D1).
fn scanned_table(plan: &LogicalPlan) -> Option<String> {
    let LogicalPlan::TableScan(scan) = plan else {
        return None;
    };
    let layer = match scan.table_name.schema()? {
        catalog::RAW_SCHEMA => "d1",
        layer @ ("d1" | "d2a" | "d2b") => layer,
        _ => return None,
    };
    Some(format!("{layer}.{}", scan.table_name.table()))
}

/// Every column the plan's table scans read, as `layer.table.column`.
pub(crate) fn scanned_columns(plan: &LogicalPlan) -> BTreeSet<String> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    let mut out = BTreeSet::new();
    let _ = plan.apply(|node| {
        if let (Some(table), LogicalPlan::TableScan(scan)) = (scanned_table(node), node) {
            out.extend(
                scan.projected_schema
                    .fields()
                    .iter()
                    .map(|f| format!("{table}.{}", f.name())),
            );
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out
}

/// For each output field of `plan`, the scanned columns it derives from.
fn origins_of(plan: &LogicalPlan) -> Vec<BTreeSet<String>> {
    let inputs: Vec<Vec<BTreeSet<String>>> = plan.inputs().iter().map(|i| origins_of(i)).collect();
    let width = plan.schema().fields().len();
    let padded = |mut v: Vec<BTreeSet<String>>| {
        v.resize(width, BTreeSet::new());
        v
    };
    match plan {
        LogicalPlan::TableScan(scan) => match scanned_table(plan) {
            Some(table) => scan
                .projected_schema
                .fields()
                .iter()
                .map(|f| BTreeSet::from([format!("{table}.{}", f.name())]))
                .collect(),
            None => vec![BTreeSet::new(); width],
        },
        LogicalPlan::Projection(p) => padded(
            p.expr
                .iter()
                .map(|e| from_expr(e, p.input.schema(), &inputs[0]))
                .collect(),
        ),
        LogicalPlan::Aggregate(a) => padded(
            a.group_expr
                .iter()
                .chain(&a.aggr_expr)
                .map(|e| from_expr(e, a.input.schema(), &inputs[0]))
                .collect(),
        ),
        LogicalPlan::Window(w) => {
            let mut out = inputs[0].clone();
            out.extend(
                w.window_expr
                    .iter()
                    .map(|e| from_expr(e, w.input.schema(), &inputs[0])),
            );
            padded(out)
        }
        LogicalPlan::Union(_) => (0..width)
            .map(|i| {
                inputs
                    .iter()
                    .filter_map(|input| input.get(i))
                    .flatten()
                    .cloned()
                    .collect()
            })
            .collect(),
        _ if inputs.len() == 1 && inputs[0].len() == width => inputs[0].clone(),
        _ if inputs.iter().map(Vec::len).sum::<usize>() == width => {
            inputs.into_iter().flatten().collect()
        }
        _ => {
            // Semi/anti joins and anything else: match output columns by name.
            let schemas: Vec<_> = plan.inputs().iter().map(|i| i.schema().clone()).collect();
            plan.schema()
                .columns()
                .iter()
                .map(|column| {
                    schemas
                        .iter()
                        .zip(&inputs)
                        .filter_map(|(schema, origins)| {
                            schema
                                .index_of_column(column)
                                .ok()
                                .and_then(|i| origins.get(i))
                        })
                        .flatten()
                        .cloned()
                        .collect()
                })
                .collect()
        }
    }
}

/// The origins of every input column `expr` names.
fn from_expr(expr: &Expr, schema: &DFSchema, input: &[BTreeSet<String>]) -> BTreeSet<String> {
    expr.column_refs()
        .into_iter()
        .filter_map(|c| schema.index_of_column(c).ok())
        .filter_map(|i| input.get(i))
        .flatten()
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pii::PiiPolicy;
    use sluice_core::schema::{Field, FieldType, TableSchema};

    fn stream(table: &str, columns: &[(&str, FieldType)]) -> StreamSpec {
        StreamSpec {
            name: table.into(),
            table: table.into(),
            schema: TableSchema::new(columns.iter().map(|(n, t)| Field::new(*n, *t)).collect()),
            infer_columns: false,
            primary_key: vec!["id".into()],
            partition_column: None,
            write_mode: Default::default(),
            dedupe: Default::default(),
        }
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn output_columns_trace_through_joins_unions_aggregates_windows_and_models() {
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().join("models");
        std::fs::create_dir_all(models.join("d2a")).unwrap();
        std::fs::create_dir_all(models.join("d2b")).unwrap();
        // A join, a union whose branches name their columns differently, a CASE and
        // an expression over two columns; a filter-only column is no origin.
        std::fs::write(
            models.join("d2a/spend.sql"),
            "SELECT o.id AS id, o.amount * r.rate AS spend, \
                    CASE WHEN o.kind = 'x' THEN 'a' ELSE 'b' END AS label \
             FROM d1.orders AS o JOIN d1.rates AS r ON r.id = o.id WHERE o.region = 'eu' \
             UNION ALL \
             SELECT g.gid, CAST(g.cost_micros AS DOUBLE) / 1e6, 'google' FROM d1.google AS g",
        )
        .unwrap();
        // An aggregate and a window over the model above.
        std::fs::write(
            models.join("d2b/daily.sql"),
            "SELECT label, sum(spend) AS total, count(*) AS n, \
                    row_number() OVER (ORDER BY label) AS rank \
             FROM d2a.spend GROUP BY label",
        )
        .unwrap();
        let project = ModelProject::load_dir(&models, PiiPolicy::new(None, &[])).unwrap();
        let lake = Lake::open("lake", dir.path()).unwrap();
        let streams = [
            stream(
                "orders",
                &[
                    ("id", FieldType::Bigint),
                    ("amount", FieldType::Double),
                    ("kind", FieldType::Text),
                    ("region", FieldType::Text),
                ],
            ),
            stream(
                "rates",
                &[("id", FieldType::Bigint), ("rate", FieldType::Double)],
            ),
            stream(
                "google",
                &[
                    ("gid", FieldType::Bigint),
                    ("cost_micros", FieldType::Bigint),
                ],
            ),
        ];
        let (lineage, reads) = column_lineage(&project, &lake, &streams).await.unwrap();
        let column = |model: &str, name: &str| -> BTreeSet<String> {
            lineage.models[model]
                .iter()
                .find(|c| c.name == name)
                .unwrap_or_else(|| panic!("no {model}.{name}: {lineage:?}"))
                .derives_from
                .clone()
        };
        assert_eq!(
            column("d2a.spend", "id"),
            set(&["d1.orders.id", "d1.google.gid"])
        );
        assert_eq!(
            column("d2a.spend", "spend"),
            set(&["d1.orders.amount", "d1.rates.rate", "d1.google.cost_micros"])
        );
        assert_eq!(column("d2a.spend", "label"), set(&["d1.orders.kind"]));
        assert_eq!(column("d2b.daily", "total"), set(&["d2a.spend.spend"]));
        assert_eq!(column("d2b.daily", "n"), set(&[]));
        assert_eq!(column("d2b.daily", "rank"), set(&["d2a.spend.label"]));
        assert_eq!(
            lineage.d1_origins("d2b.daily.total"),
            set(&["d1.orders.amount", "d1.rates.rate", "d1.google.cost_micros"])
        );
        assert_eq!(
            lineage.downstream_of("d1.rates.rate"),
            set(&["d2a.spend.spend", "d2b.daily.total"])
        );
        // Filtered and joined-on columns are read, though no output derives from them.
        assert!(reads["d2a.spend"].contains("d1.orders.region"));
        assert!(reads["d2a.spend"].contains("d1.rates.id"));
        assert!(lineage.downstream_of("d1.orders.region").is_empty());
    }
}
