//! Column-level lineage: for each output column of each model, the columns of the
//! tables it reads (`d1.facebook_insights.spend`, `d2a.ad_performance_daily.spend_usd`)
//! it comes from and how, read from DataFusion's optimised logical plan.
//!
//! Models are planned as [`crate::preflight`] plans them: against the lake's tables,
//! or a stream's declared columns before its first run. A model that cannot be
//! planned yet (it reads a stream whose columns are only known from data) has no
//! lineage.
//!
//! An input reaches an output column as its *value* ([`Flow::Identity`],
//! [`Flow::Transformation`], [`Flow::Aggregation`]: `sum(spend)`, `spend * rate`) or
//! only as a *condition* that picks or looks up the value without flowing into it
//! ([`Flow::Condition`]: a CASE's WHEN, `convert_currency`'s currency and date, a
//! window's ORDER BY). Columns a query only filters, joins, groups or sorts on belong
//! to no output column; they are the model's [`Indirect`] inputs.

use std::collections::{BTreeMap, BTreeSet};

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema};
use datafusion::logical_expr::{Expr, LogicalPlan};
use serde::Serialize;
use sluice_core::lake::Lake;
use sluice_core::source::StreamSpec;

use crate::catalog::{self, D1View};
use crate::error::TransformError;
use crate::project::ModelProject;

/// How an input column reaches an output column, weakest first for values
/// (`Identity` < `Transformation` < `Aggregation`); `Condition` is no value at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Flow {
    /// The input's value, unchanged but for a rename or a cast.
    Identity,
    /// Computed from the input's value (arithmetic, a function of it).
    Transformation,
    /// An aggregate of the input's values (`sum`, `max`, `count(x)`).
    Aggregation,
    /// Decides or looks up the value without being it: a CASE's WHEN, a lookup key,
    /// a window's PARTITION BY / ORDER BY, an aggregate's FILTER.
    Condition,
}

impl Flow {
    /// Whether the input's value flows into the output.
    pub fn is_value(self) -> bool {
        self != Flow::Condition
    }

    /// The input reached through `self`, then used by an expression as `then`.
    fn then(self, then: Flow) -> Flow {
        if self == Flow::Condition || then == Flow::Condition {
            Flow::Condition
        } else {
            self.max(then)
        }
    }

    /// Two ways the same input reaches one output: a value beats a condition.
    fn merge(self, other: Flow) -> Flow {
        match (self, other) {
            (Flow::Condition, x) | (x, Flow::Condition) => x,
            (a, b) => a.max(b),
        }
    }
}

/// How a model uses an input column for the whole table rather than for one column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Indirect {
    Filter,
    Join,
    GroupBy,
    Sort,
    Window,
}

impl Indirect {
    /// The OpenLineage column-lineage subtype.
    pub fn openlineage_subtype(self) -> &'static str {
        match self {
            Indirect::Filter => "FILTER",
            Indirect::Join => "JOIN",
            Indirect::GroupBy => "GROUP_BY",
            Indirect::Sort => "SORT",
            Indirect::Window => "WINDOW",
        }
    }
}

/// Input column (`layer.table.column`) → how it flows.
type Origins = BTreeMap<String, Flow>;

fn merge_into(out: &mut Origins, origin: &str, flow: Flow) {
    out.entry(origin.to_string())
        .and_modify(|f| *f = f.merge(flow))
        .or_insert(flow);
}

/// One output column of a model and the upstream columns it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputColumn {
    pub name: String,
    /// The engine's type of the column (`Decimal128(38, 6)`, `Utf8`).
    pub data_type: String,
    /// `layer.table.column` of the tables the model reads directly, and how each flows.
    pub inputs: BTreeMap<String, Flow>,
}

impl OutputColumn {
    /// The inputs whose value flows into this column.
    pub fn derives_from(&self) -> impl Iterator<Item = &String> {
        self.inputs
            .iter()
            .filter(|(_, f)| f.is_value())
            .map(|(c, _)| c)
    }

    /// The inputs that decide this column without flowing into it.
    pub fn conditions(&self) -> impl Iterator<Item = &String> {
        self.inputs
            .iter()
            .filter(|(_, f)| !f.is_value())
            .map(|(c, _)| c)
    }
}

/// Lineage of every plannable model, by `layer.name`.
#[derive(Debug, Clone, Default)]
pub struct Lineage {
    pub models: BTreeMap<String, Vec<OutputColumn>>,
    /// Per model, the input columns it filters, joins, groups, sorts or windows on.
    pub indirect: BTreeMap<String, BTreeMap<String, BTreeSet<Indirect>>>,
}

impl Lineage {
    /// The D1 columns whose value flows into `layer.model.column`, through every model
    /// between.
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
            for from in c.derives_from() {
                self.collect_d1(from, out, seen);
            }
        }
    }

    /// Every model column that `column` (`layer.table.column`) reaches, as value or as
    /// condition, directly or through other models, as `layer.model.column`, sorted:
    /// what a change to it can change.
    pub fn downstream_of(&self, column: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut frontier = vec![column.to_string()];
        while let Some(current) = frontier.pop() {
            for (model, columns) in &self.models {
                for c in columns {
                    if c.inputs.contains_key(&current) {
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
        let mut indirect = BTreeMap::new();
        let origins = origins_of(&plan, &mut indirect);
        let columns = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| OutputColumn {
                name: f.name().clone(),
                data_type: f.data_type().to_string(),
                inputs: origins.get(i).cloned().unwrap_or_default(),
            })
            .collect();
        lineage.models.insert(model.qualified_name(), columns);
        lineage.indirect.insert(model.qualified_name(), indirect);
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

/// The columns `plan` reads (see [`scanned_columns`]), once optimized: its scans then
/// list only those. `None` when it does not optimize.
pub(crate) fn columns_read_by(
    ctx: &datafusion::execution::context::SessionContext,
    plan: &LogicalPlan,
) -> Option<BTreeSet<String>> {
    Some(scanned_columns(&ctx.state().optimize(plan).ok()?))
}

/// Every column the plan's table scans read, as `layer.table.column`: those they
/// output and those of the filters pushed into them (which need not be output).
pub(crate) fn scanned_columns(plan: &LogicalPlan) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let _ = plan.apply(|node| {
        if let (Some(table), LogicalPlan::TableScan(scan)) = (scanned_table(node), node) {
            out.extend(
                scan.projected_schema
                    .fields()
                    .iter()
                    .map(|f| format!("{table}.{}", f.name())),
            );
            for filter in &scan.filters {
                out.extend(
                    filter
                        .column_refs()
                        .into_iter()
                        .map(|c| format!("{table}.{}", c.name)),
                );
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out
}

/// Per model: input column → how the whole table uses it.
type IndirectUses = BTreeMap<String, BTreeSet<Indirect>>;

/// The origins of a column of a node's input, by the input's schema.
struct Scope<'a> {
    schema: &'a DFSchema,
    origins: &'a [Origins],
}

impl Scope<'_> {
    fn origins_of(&self, column: &Column) -> Option<&Origins> {
        let i = self.schema.index_of_column(column).ok()?;
        self.origins.get(i)
    }
}

/// For each output field of `plan`, the scanned columns it comes from; the columns the
/// plan filters, joins, groups, sorts or windows on go to `indirect`.
fn origins_of(plan: &LogicalPlan, indirect: &mut IndirectUses) -> Vec<Origins> {
    let inputs: Vec<Vec<Origins>> = plan
        .inputs()
        .iter()
        .map(|i| origins_of(i, indirect))
        .collect();
    let input_schemas: Vec<&DFSchema> = plan
        .inputs()
        .into_iter()
        .map(|i| i.schema().as_ref())
        .collect();
    let scopes: Vec<Scope> = input_schemas
        .iter()
        .zip(&inputs)
        .map(|(schema, origins)| Scope {
            schema,
            origins: origins.as_slice(),
        })
        .collect();
    match plan {
        LogicalPlan::Filter(f) => mark(indirect, &scopes, [&f.predicate], Indirect::Filter),
        LogicalPlan::Join(j) => {
            let on = j.on.iter().flat_map(|(l, r)| [l, r]).chain(&j.filter);
            mark(indirect, &scopes, on, Indirect::Join)
        }
        LogicalPlan::Aggregate(a) => mark(indirect, &scopes, &a.group_expr, Indirect::GroupBy),
        LogicalPlan::Sort(s) => mark(
            indirect,
            &scopes,
            s.expr.iter().map(|e| &e.expr),
            Indirect::Sort,
        ),
        _ => {}
    }
    if let LogicalPlan::TableScan(scan) = plan {
        // A predicate pushed into the scan names the table's columns directly.
        if let Some(table) = scanned_table(plan) {
            for column in scan.filters.iter().flat_map(|f| f.column_refs()) {
                indirect
                    .entry(format!("{table}.{}", column.name))
                    .or_default()
                    .insert(Indirect::Filter);
            }
        }
    }

    let width = plan.schema().fields().len();
    let padded = |mut v: Vec<Origins>| {
        v.resize(width, Origins::new());
        v
    };
    let first = || Scope {
        schema: input_schemas[0],
        origins: &inputs[0],
    };
    match plan {
        LogicalPlan::TableScan(scan) => match scanned_table(plan) {
            Some(table) => scan
                .projected_schema
                .fields()
                .iter()
                .map(|f| Origins::from([(format!("{table}.{}", f.name()), Flow::Identity)]))
                .collect(),
            None => vec![Origins::new(); width],
        },
        LogicalPlan::Projection(p) => {
            padded(p.expr.iter().map(|e| from_expr(e, &first())).collect())
        }
        LogicalPlan::Aggregate(a) => padded(
            a.group_expr
                .iter()
                .chain(&a.aggr_expr)
                .map(|e| from_expr(e, &first()))
                .collect(),
        ),
        LogicalPlan::Window(w) => {
            let mut window_keys = BTreeSet::new();
            let mut out = inputs[0].clone();
            for e in &w.window_expr {
                out.push(from_expr(e, &first()));
                if let Expr::WindowFunction(f) = strip_alias(e) {
                    let keys = f
                        .params
                        .partition_by
                        .iter()
                        .chain(f.params.order_by.iter().map(|s| &s.expr));
                    window_keys.extend(keys.flat_map(|k| from_expr(k, &first()).into_keys()));
                }
            }
            for name in window_keys {
                indirect.entry(name).or_default().insert(Indirect::Window);
            }
            padded(out)
        }
        LogicalPlan::Union(_) => (0..width)
            .map(|i| {
                let mut out = Origins::new();
                for (name, flow) in inputs.iter().filter_map(|input| input.get(i)).flatten() {
                    merge_into(&mut out, name, *flow);
                }
                out
            })
            .collect(),
        _ if inputs.len() == 1 && inputs[0].len() == width => inputs[0].clone(),
        _ if inputs.iter().map(Vec::len).sum::<usize>() == width => {
            inputs.into_iter().flatten().collect()
        }
        _ => {
            // Semi/anti joins and anything else: match output columns by name.
            plan.schema()
                .columns()
                .iter()
                .map(|column| {
                    let mut out = Origins::new();
                    for origins in scopes.iter().filter_map(|s| s.origins_of(column)) {
                        for (name, flow) in origins {
                            merge_into(&mut out, name, *flow);
                        }
                    }
                    out
                })
                .collect()
        }
    }
}

/// Records that the table uses every input column `exprs` name as `how`.
fn mark<'e>(
    indirect: &mut IndirectUses,
    scopes: &[Scope],
    exprs: impl IntoIterator<Item = &'e Expr>,
    how: Indirect,
) {
    for expr in exprs {
        for column in expr.column_refs() {
            for origins in scopes.iter().filter_map(|s| s.origins_of(column)) {
                for name in origins.keys() {
                    indirect.entry(name.clone()).or_default().insert(how);
                }
            }
        }
    }
}

fn strip_alias(expr: &Expr) -> &Expr {
    match expr {
        Expr::Alias(a) => strip_alias(&a.expr),
        other => other,
    }
}

/// The inputs of `expr` (an output expression of a projection, aggregate or window)
/// and how each flows into its value.
fn from_expr(expr: &Expr, scope: &Scope) -> Origins {
    let mut out = Origins::new();
    flows(expr, Flow::Identity, scope, &mut out);
    out
}

/// Functions of ours whose arguments past the first only select how the first is
/// turned into the value: `convert_currency(amount, from, to, date)`, `decrypt(value,
/// 'table.column')`.
const VALUE_IS_FIRST_ARGUMENT: &[&str] = &["convert_currency", "decrypt"];

/// Adds to `out` every input column `expr` names, reached as `how` (the way the
/// expression around it uses its result).
fn flows(expr: &Expr, how: Flow, scope: &Scope, out: &mut Origins) {
    let computed = how.then(Flow::Transformation);
    match expr {
        Expr::Column(column) => {
            if let Some(origins) = scope.origins_of(column) {
                for (name, flow) in origins {
                    merge_into(out, name, flow.then(how));
                }
            }
        }
        Expr::Alias(a) => flows(&a.expr, how, scope, out),
        Expr::Cast(c) => flows(&c.expr, how, scope, out),
        Expr::TryCast(c) => flows(&c.expr, how, scope, out),
        Expr::Case(case) => {
            if let Some(operand) = &case.expr {
                flows(operand, Flow::Condition, scope, out);
            }
            for (when, then) in &case.when_then_expr {
                flows(when, Flow::Condition, scope, out);
                flows(then, how, scope, out);
            }
            if let Some(otherwise) = &case.else_expr {
                flows(otherwise, how, scope, out);
            }
        }
        Expr::AggregateFunction(f) => {
            let aggregated = how.then(Flow::Aggregation);
            for arg in &f.params.args {
                flows(arg, aggregated, scope, out);
            }
            for condition in f
                .params
                .filter
                .iter()
                .map(AsRef::as_ref)
                .chain(f.params.order_by.iter().map(|s| &s.expr))
            {
                flows(condition, Flow::Condition, scope, out);
            }
        }
        Expr::WindowFunction(f) => {
            for arg in &f.params.args {
                flows(arg, computed, scope, out);
            }
            let keys = f
                .params
                .partition_by
                .iter()
                .chain(f.params.order_by.iter().map(|s| &s.expr));
            for key in keys {
                flows(key, Flow::Condition, scope, out);
            }
        }
        Expr::ScalarFunction(f) if VALUE_IS_FIRST_ARGUMENT.contains(&f.name()) => {
            for (i, arg) in f.args.iter().enumerate() {
                flows(
                    arg,
                    if i == 0 { computed } else { Flow::Condition },
                    scope,
                    out,
                );
            }
        }
        other => {
            let _ = other.apply_children(|child| {
                flows(child, computed, scope, out);
                Ok(TreeNodeRecursion::Continue)
            });
        }
    }
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
        let column = |model: &str, name: &str| -> &OutputColumn {
            lineage.models[model]
                .iter()
                .find(|c| c.name == name)
                .unwrap_or_else(|| panic!("no {model}.{name}: {lineage:?}"))
        };
        let values = |model: &str, name: &str| -> BTreeSet<String> {
            column(model, name).derives_from().cloned().collect()
        };
        let conditions = |model: &str, name: &str| -> BTreeSet<String> {
            column(model, name).conditions().cloned().collect()
        };
        assert_eq!(
            values("d2a.spend", "id"),
            set(&["d1.orders.id", "d1.google.gid"])
        );
        assert_eq!(
            column("d2a.spend", "id").inputs["d1.orders.id"],
            Flow::Identity
        );
        assert_eq!(
            values("d2a.spend", "spend"),
            set(&["d1.orders.amount", "d1.rates.rate", "d1.google.cost_micros"])
        );
        assert_eq!(
            column("d2a.spend", "spend").inputs["d1.orders.amount"],
            Flow::Transformation
        );
        // A CASE's condition decides the label; no value of `kind` is in it.
        assert_eq!(values("d2a.spend", "label"), set(&[]));
        assert_eq!(conditions("d2a.spend", "label"), set(&["d1.orders.kind"]));
        assert_eq!(values("d2b.daily", "total"), set(&["d2a.spend.spend"]));
        assert_eq!(
            column("d2b.daily", "total").inputs["d2a.spend.spend"],
            Flow::Aggregation
        );
        assert_eq!(values("d2b.daily", "n"), set(&[]));
        assert_eq!(values("d2b.daily", "rank"), set(&[]));
        assert_eq!(conditions("d2b.daily", "rank"), set(&["d2a.spend.label"]));
        assert_eq!(
            lineage.d1_origins("d2b.daily.total"),
            set(&["d1.orders.amount", "d1.rates.rate", "d1.google.cost_micros"])
        );
        assert_eq!(
            lineage.downstream_of("d1.rates.rate"),
            set(&["d2a.spend.spend", "d2b.daily.total"])
        );
        // A condition is still something a change reaches.
        assert_eq!(
            lineage.downstream_of("d1.orders.kind"),
            set(&["d2a.spend.label", "d2b.daily.label", "d2b.daily.rank"])
        );
        // Filtered and joined-on columns are read, though no output derives from them.
        assert!(reads["d2a.spend"].contains("d1.orders.region"));
        assert!(reads["d2a.spend"].contains("d1.rates.id"));
        let indirect = &lineage.indirect["d2a.spend"];
        assert!(
            indirect["d1.orders.region"].contains(&Indirect::Filter),
            "{indirect:?}"
        );
        assert!(
            indirect["d1.rates.id"].contains(&Indirect::Join),
            "{indirect:?}"
        );
        assert!(
            lineage.indirect["d2b.daily"]["d2a.spend.label"].contains(&Indirect::GroupBy),
            "{:?}",
            lineage.indirect["d2b.daily"]
        );
        assert!(lineage.downstream_of("d1.orders.region").is_empty());
    }
}
