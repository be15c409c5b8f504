//! `sluice compare`: how a replacing stream's D1 table differs from the one it
//! replaces, so the switch is decided on evidence.
//!
//! Both tables are read from the lake as models see them (latest version per key,
//! `pii:` policy applied), the replacing table's columns renamed per `replaces:`.
//! Rows are matched by key with one FULL OUTER JOIN in DataFusion; days are
//! compared by their row count and the sum of every numeric column. Only counts and
//! the first `limit` differences of each kind are kept (each listing is a top-k
//! query), so memory does not grow with the number of differences.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::TableReference;
use datafusion::execution::context::SessionContext;
use futures::StreamExt;
use serde::Serialize;
use sluice_core::lake::Lake;
use sluice_core::replace::D1Alias;
use sluice_core::schema::is_system_column;

use crate::catalog::{self, D1View};
use crate::error::TransformError;
use crate::project::ModelProject;

/// What to compare.
#[derive(Debug, Clone)]
pub struct Comparison<'a> {
    /// The replaced stream's D1 table: its column names are the ones reported.
    pub old_table: String,
    /// The replacing stream's D1 table.
    pub new_table: String,
    /// The `replaces:` joining them, for its column mapping (none: same names).
    pub alias: Option<&'a D1Alias>,
    /// Key columns (old names); empty: the old table's primary key, else the new one's.
    pub key: Vec<String>,
    /// The column whose date is the row's day (old name); `None`: the partition date
    /// when both tables are partitioned, otherwise no per-day comparison.
    pub day_column: Option<String>,
    pub since: Option<NaiveDate>,
    pub until: Option<NaiveDate>,
    /// Differences of each kind listed (the rest are counted).
    pub limit: usize,
}

/// A column compared: its old name and the replacing table's name for it.
#[derive(Debug, Clone, Serialize)]
pub struct ColumnPair {
    pub old: String,
    pub new: String,
    #[serde(skip)]
    same_type: bool,
    #[serde(skip)]
    numeric: bool,
    #[serde(skip)]
    float: bool,
}

/// Some differences of one kind and how many there are in all.
#[derive(Debug, Clone, Serialize)]
pub struct Listed<T> {
    pub total: u64,
    pub shown: Vec<T>,
}

impl<T> Default for Listed<T> {
    fn default() -> Self {
        Listed {
            total: 0,
            shown: Vec::new(),
        }
    }
}

/// A key present on both sides whose values differ.
#[derive(Debug, Clone, Serialize)]
pub struct ChangedRow {
    pub key: Vec<Option<String>>,
    pub columns: Vec<ValueDiff>,
}

/// One column's two values (as text; `None` is NULL).
#[derive(Debug, Clone, Serialize)]
pub struct ValueDiff {
    pub column: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// A day whose row count or a numeric column's sum differs.
#[derive(Debug, Clone, Serialize)]
pub struct DayDiff {
    /// `YYYY-MM-DD`, or `None` for rows without a day.
    pub day: Option<String>,
    pub old_rows: u64,
    pub new_rows: u64,
    /// The sums that differ.
    pub sums: Vec<ValueDiff>,
}

/// How the two tables differ.
#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    pub old_table: String,
    pub new_table: String,
    pub key: Vec<String>,
    pub columns: Vec<ColumnPair>,
    /// Columns only one side has (not compared).
    pub only_old_columns: Vec<String>,
    pub only_new_columns: Vec<String>,
    pub old_rows: u64,
    pub new_rows: u64,
    /// Keys that occur more than once in the old / new table: rows with them cannot
    /// be matched one to one (pick a `--key` that is unique).
    pub duplicate_keys_old: u64,
    pub duplicate_keys_new: u64,
    /// Keys only the old table has.
    pub only_in_old: Listed<Vec<Option<String>>>,
    /// Keys only the new table has.
    pub only_in_new: Listed<Vec<Option<String>>>,
    pub changed: Listed<ChangedRow>,
    /// The day column (old name), or `None` when days were not compared.
    pub day_column: Option<String>,
    /// Numeric columns whose daily sums are compared.
    pub summed: Vec<String>,
    pub days: Listed<DayDiff>,
}

impl CompareReport {
    pub fn identical(&self) -> bool {
        self.duplicate_keys_old == 0
            && self.duplicate_keys_new == 0
            && self.only_in_old.total == 0
            && self.only_in_new.total == 0
            && self.changed.total == 0
            && self.days.total == 0
    }
}

/// A usage error of the comparison (a key or day column neither table has, …).
fn usage(message: impl Into<String>) -> TransformError {
    TransformError::engine("compare", message.into())
}

fn engine(e: impl std::fmt::Display) -> TransformError {
    TransformError::engine("compare", e)
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Compares the two D1 tables of `spec` in `lake`.
pub async fn compare(
    project: &ModelProject,
    lake: &Lake,
    spec: &Comparison<'_>,
) -> Result<CompareReport, TransformError> {
    // The replaced table as it landed, not as a switched alias of the new one.
    let mut plain = project.clone();
    plain.d1_aliases.clear();
    let ctx = catalog::session(&plain, lake, D1View::Policy).await?;
    let old_schema = schema_of(&ctx, &spec.old_table).await?;
    let new_schema = schema_of(&ctx, &spec.new_table).await?;
    let (columns, only_old_columns, only_new_columns) =
        pair_columns(spec, &old_schema, &new_schema)?;
    let key = choose_key(project, spec, &columns)?;
    let day_column = choose_day(project, spec, &columns)?;
    let pair = |old: &str| columns.iter().find(|p| p.old == old).cloned();
    let key_pairs: Vec<ColumnPair> = key.iter().filter_map(|k| pair(k)).collect();
    let compared: Vec<ColumnPair> = columns
        .iter()
        .filter(|p| !key.contains(&p.old) && p.old != "dt")
        .cloned()
        .collect();
    let filter = |side: &dyn Fn(&ColumnPair) -> &str| -> String {
        let Some(day) = &day_column else {
            return String::new();
        };
        let day = pair(day).map_or_else(|| "dt".to_string(), |p| side(&p).to_string());
        let day = format!("CAST({} AS DATE)", quote(&day));
        let mut conditions = Vec::new();
        if let Some(since) = spec.since {
            conditions.push(format!("{day} >= DATE '{since}'"));
        }
        if let Some(until) = spec.until {
            conditions.push(format!("{day} <= DATE '{until}'"));
        }
        if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        }
    };
    let old_filter = filter(&|p| p.old.as_str());
    let new_filter = filter(&|p| p.new.as_str());
    if day_column.is_none() && (spec.since.is_some() || spec.until.is_some()) {
        return Err(usage(
            "--since/--until need a day column: give --day-column (the tables are not both partitioned by date)",
        ));
    }

    let old_rows = count(&ctx, &spec.old_table, &old_filter).await?;
    let new_rows = count(&ctx, &spec.new_table, &new_filter).await?;
    let duplicates = |table: &str, filter: &str, pick: &dyn Fn(&ColumnPair) -> &str| {
        let key: Vec<String> = key_pairs.iter().map(|p| quote(pick(p))).collect();
        format!(
            "(SELECT 1 AS one FROM d1.{}{filter} GROUP BY {} HAVING count(*) > 1) AS dup",
            quote(table),
            key.join(", ")
        )
    };
    let duplicate_keys_old = count_of(
        &ctx,
        &duplicates(&spec.old_table, &old_filter, &|p| p.old.as_str()),
    )
    .await?;
    let duplicate_keys_new = count_of(
        &ctx,
        &duplicates(&spec.new_table, &new_filter, &|p| p.new.as_str()),
    )
    .await?;

    // Rows by key.
    let side_select = |pick: &dyn Fn(&ColumnPair) -> &str| -> String {
        let mut select = vec!["TRUE AS __p".to_string()];
        for (i, p) in key_pairs.iter().enumerate() {
            select.push(format!("{} AS k{i}", cast_unless(p.same_type, pick(p))));
        }
        for (i, p) in compared.iter().enumerate() {
            select.push(format!(
                "{} AS c{i}",
                cast_unless(p.same_type || p.numeric, pick(p))
            ));
        }
        select.join(", ")
    };
    let on: Vec<String> = (0..key_pairs.len())
        .map(|i| format!("o.k{i} = n.k{i}"))
        .collect();
    let differs: Vec<String> = (0..compared.len())
        .map(|i| format!("(o.c{i} IS DISTINCT FROM n.c{i})"))
        .collect();
    let any_differs = if differs.is_empty() {
        "FALSE".to_string()
    } else {
        differs.join(" OR ")
    };
    let mut diff_select = vec![format!(
        "CASE WHEN n.__p IS NULL THEN 'old' WHEN o.__p IS NULL THEN 'new' WHEN {any_differs} THEN 'changed' END AS __kind"
    )];
    for i in 0..key_pairs.len() {
        diff_select.push(format!("COALESCE(o.k{i}, n.k{i}) AS __k{i}"));
    }
    for (i, d) in differs.iter().enumerate() {
        diff_select.push(format!("{d} AS __d{i}"));
        diff_select.push(format!("CAST(o.c{i} AS VARCHAR) AS __o{i}"));
        diff_select.push(format!("CAST(n.c{i} AS VARCHAR) AS __n{i}"));
    }
    let diff_sql = format!(
        "SELECT * FROM (SELECT {select} FROM (SELECT {o} FROM d1.{old}{old_filter}) AS o FULL OUTER JOIN (SELECT {n} FROM d1.{new}{new_filter}) AS n ON {on}) AS d WHERE __kind IS NOT NULL",
        select = diff_select.join(", "),
        o = side_select(&|p| p.old.as_str()),
        n = side_select(&|p| p.new.as_str()),
        old = quote(&spec.old_table),
        new = quote(&spec.new_table),
        on = on.join(" AND "),
    );
    let diff = ctx.sql(&diff_sql).await.map_err(engine)?;
    ctx.register_table("__compare_diff", diff.into_view())
        .map_err(engine)?;

    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    for batch in collect(
        &ctx,
        "SELECT __kind, count(*) FROM __compare_diff GROUP BY __kind",
    )
    .await?
    {
        let kinds = batch.column(0).as_string::<i32>();
        let counts = batch
            .column(1)
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        for row in 0..batch.num_rows() {
            totals.insert(kinds.value(row).to_string(), counts.value(row) as u64);
        }
    }
    let order: Vec<String> = (0..key_pairs.len()).map(|i| format!("__k{i}")).collect();
    let keys_select: Vec<String> = (0..key_pairs.len())
        .map(|i| format!("CAST(__k{i} AS VARCHAR) AS key{i}"))
        .collect();
    let listing = |kind: &str, extra: &str| {
        format!(
            "SELECT {keys}{extra} FROM __compare_diff WHERE __kind = '{kind}' ORDER BY {order} LIMIT {limit}",
            keys = keys_select.join(", "),
            order = order.join(", "),
            limit = spec.limit,
        )
    };
    let mut only_in_old = Listed {
        total: totals.get("old").copied().unwrap_or(0),
        shown: Vec::new(),
    };
    let mut only_in_new = Listed {
        total: totals.get("new").copied().unwrap_or(0),
        shown: Vec::new(),
    };
    for (listed, kind) in [(&mut only_in_old, "old"), (&mut only_in_new, "new")] {
        if listed.total == 0 {
            continue;
        }
        for batch in collect(&ctx, &listing(kind, "")).await? {
            for row in 0..batch.num_rows() {
                listed.shown.push(texts(&batch, 0..key_pairs.len(), row));
            }
        }
    }
    let mut changed = Listed {
        total: totals.get("changed").copied().unwrap_or(0),
        shown: Vec::new(),
    };
    if changed.total > 0 {
        let extra: String = (0..compared.len())
            .map(|i| format!(", __d{i}, __o{i}, __n{i}"))
            .collect();
        for batch in collect(&ctx, &listing("changed", &extra)).await? {
            let k = key_pairs.len();
            for row in 0..batch.num_rows() {
                let mut columns = Vec::new();
                for (i, p) in compared.iter().enumerate() {
                    let flag = batch.column(k + 3 * i).as_boolean();
                    if flag.is_valid(row) && flag.value(row) {
                        let values = texts(&batch, k + 3 * i + 1..k + 3 * i + 3, row);
                        columns.push(ValueDiff {
                            column: p.old.clone(),
                            old: values[0].clone(),
                            new: values[1].clone(),
                        });
                    }
                }
                changed.shown.push(ChangedRow {
                    key: texts(&batch, 0..k, row),
                    columns,
                });
            }
        }
    }

    // Days: row counts and sums of numeric columns.
    let summed: Vec<ColumnPair> = compared
        .iter()
        .filter(|p| p.numeric && Some(&p.old) != day_column.as_ref())
        .cloned()
        .collect();
    let mut days = Listed::default();
    if let Some(day) = &day_column {
        let day_of = |side: &str| {
            format!(
                "COALESCE(CAST(CAST({} AS DATE) AS VARCHAR), '')",
                quote(side)
            )
        };
        let sums = |pick: &dyn Fn(&ColumnPair) -> &str| -> String {
            summed
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let sum = format!("sum({})", quote(pick(p)));
                    let sum = if p.float {
                        format!("round({sum}, 6)")
                    } else {
                        sum
                    };
                    format!(", {sum} AS s{i}")
                })
                .collect()
        };
        let (old_day, new_day) = match pair(day) {
            Some(p) => (day_of(&p.old), day_of(&p.new)),
            None => (day_of("dt"), day_of("dt")),
        };
        let mut select = vec![
            "COALESCE(o.day, n.day) AS day".to_string(),
            "COALESCE(o.rows, 0) AS old_rows".into(),
            "COALESCE(n.rows, 0) AS new_rows".into(),
        ];
        let mut differs = vec!["(o.rows IS DISTINCT FROM n.rows)".to_string()];
        for i in 0..summed.len() {
            select.push(format!("(o.s{i} IS DISTINCT FROM n.s{i}) AS d{i}"));
            select.push(format!("CAST(o.s{i} AS VARCHAR) AS o{i}"));
            select.push(format!("CAST(n.s{i} AS VARCHAR) AS n{i}"));
            differs.push(format!("(o.s{i} IS DISTINCT FROM n.s{i})"));
        }
        let sql = format!(
            "SELECT {select} FROM (SELECT {old_day} AS day, count(*) AS rows{o_sums} FROM d1.{old}{old_filter} GROUP BY 1) AS o FULL OUTER JOIN (SELECT {new_day} AS day, count(*) AS rows{n_sums} FROM d1.{new}{new_filter} GROUP BY 1) AS n ON o.day = n.day WHERE {differs} ORDER BY 1",
            select = select.join(", "),
            o_sums = sums(&|p| p.old.as_str()),
            n_sums = sums(&|p| p.new.as_str()),
            old = quote(&spec.old_table),
            new = quote(&spec.new_table),
            differs = differs.join(" OR "),
        );
        let mut stream = ctx
            .sql(&sql)
            .await
            .map_err(engine)?
            .execute_stream()
            .await
            .map_err(engine)?;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(engine)?;
            let rows = |c: usize, row: usize| {
                batch
                    .column(c)
                    .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                    .value(row) as u64
            };
            for row in 0..batch.num_rows() {
                days.total += 1;
                if days.shown.len() >= spec.limit {
                    continue;
                }
                let day = texts(&batch, 0..1, row).remove(0).filter(|d| !d.is_empty());
                let mut sums = Vec::new();
                for (i, p) in summed.iter().enumerate() {
                    let flag = batch.column(3 + 3 * i).as_boolean();
                    if flag.is_valid(row) && flag.value(row) {
                        let values = texts(&batch, 4 + 3 * i..6 + 3 * i, row);
                        sums.push(ValueDiff {
                            column: p.old.clone(),
                            old: values[0].clone(),
                            new: values[1].clone(),
                        });
                    }
                }
                days.shown.push(DayDiff {
                    day,
                    old_rows: rows(1, row),
                    new_rows: rows(2, row),
                    sums,
                });
            }
        }
    }

    Ok(CompareReport {
        old_table: spec.old_table.clone(),
        new_table: spec.new_table.clone(),
        key,
        columns: columns.into_iter().filter(|p| p.old != "dt").collect(),
        only_old_columns,
        only_new_columns,
        old_rows,
        new_rows,
        duplicate_keys_old,
        duplicate_keys_new,
        only_in_old,
        only_in_new,
        changed,
        day_column,
        summed: summed.into_iter().map(|p| p.old).collect(),
        days,
    })
}

/// `column`, cast to text unless `keep` (both sides then compare as text).
fn cast_unless(keep: bool, column: &str) -> String {
    if keep {
        quote(column)
    } else {
        format!("CAST({} AS VARCHAR)", quote(column))
    }
}

async fn schema_of(ctx: &SessionContext, table: &str) -> Result<SchemaRef, TransformError> {
    let provider = ctx
        .table_provider(TableReference::partial("d1", table))
        .await
        .map_err(|_| {
            usage(format!(
                "the lake holds no d1.{table} (has its stream run?)"
            ))
        })?;
    Ok(provider.schema())
}

async fn count(ctx: &SessionContext, table: &str, filter: &str) -> Result<u64, TransformError> {
    count_of(ctx, &format!("d1.{}{filter}", quote(table))).await
}

/// `SELECT count(*) FROM <from>`.
async fn count_of(ctx: &SessionContext, from: &str) -> Result<u64, TransformError> {
    let batches = collect(ctx, &format!("SELECT count(*) FROM {from}")).await?;
    Ok(batches.first().filter(|b| b.num_rows() > 0).map_or(0, |b| {
        b.column(0)
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
            .value(0) as u64
    }))
}

async fn collect(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>, TransformError> {
    ctx.sql(sql)
        .await
        .map_err(engine)?
        .collect()
        .await
        .map_err(engine)
}

/// The text values of `columns` of `row` (all `VARCHAR` in the queries above).
fn texts(batch: &RecordBatch, columns: std::ops::Range<usize>, row: usize) -> Vec<Option<String>> {
    columns
        .map(|c| {
            let array = batch.column(c).as_string::<i32>();
            array.is_valid(row).then(|| array.value(row).to_string())
        })
        .collect()
}

/// The columns both tables have, then those only the old and only the new one has.
type PairedColumns = (Vec<ColumnPair>, Vec<String>, Vec<String>);

/// The columns both tables have, by old name (mapped ones through `replaces:`), and
/// those only one side has; a mapping naming a column its table lacks is an error
/// at its line in the pipeline file.
fn pair_columns(
    spec: &Comparison<'_>,
    old: &SchemaRef,
    new: &SchemaRef,
) -> Result<PairedColumns, TransformError> {
    let names = |s: &SchemaRef| -> Vec<String> {
        s.fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|n| !is_system_column(n))
            .collect()
    };
    let (old_names, new_names) = (names(old), names(new));
    let mapping: Vec<(String, String)> = spec
        .alias
        .map(|a| a.replacement.columns.clone())
        .unwrap_or_default();
    if let Some(alias) = spec.alias {
        for (n, o) in &mapping {
            let (missing, table, have) = if !new_names.contains(n) {
                (n, &spec.new_table, &new_names)
            } else if !old_names.contains(o) {
                (o, &spec.old_table, &old_names)
            } else {
                continue;
            };
            return Err(alias
                .column_error(
                    n,
                    format!(
                        "d1.{table} has no column `{missing}` (it has: {})",
                        have.join(", ")
                    ),
                )
                .into());
        }
    }
    let new_name_of = |o: &str| -> String {
        mapping
            .iter()
            .find(|(_, old)| old == o)
            .map_or_else(|| o.to_string(), |(n, _)| n.clone())
    };
    let mut pairs = Vec::new();
    let mut only_old = Vec::new();
    for o in &old_names {
        let n = new_name_of(o);
        // A new column under an old name it is mapped away from is not that column.
        let renamed_away = mapping.iter().any(|(new, old)| new == o && old != o) && n == *o;
        match (old.field_with_name(o), new.field_with_name(&n)) {
            (Ok(of), Ok(nf)) if !renamed_away => pairs.push(ColumnPair {
                old: o.clone(),
                new: n,
                same_type: of.data_type() == nf.data_type(),
                numeric: is_numeric(of.data_type()) && is_numeric(nf.data_type()),
                float: is_float(of.data_type()) || is_float(nf.data_type()),
            }),
            _ => only_old.push(o.clone()),
        }
    }
    let only_new = new_names
        .into_iter()
        .filter(|n| !pairs.iter().any(|p| p.new == *n))
        .collect();
    Ok((pairs, only_old, only_new))
}

fn is_numeric(t: &DataType) -> bool {
    t.is_numeric()
}

fn is_float(t: &DataType) -> bool {
    matches!(t, DataType::Float16 | DataType::Float32 | DataType::Float64)
}

/// `--key`, else the old table's primary key, else the new table's (in old names).
fn choose_key(
    project: &ModelProject,
    spec: &Comparison<'_>,
    pairs: &[ColumnPair],
) -> Result<Vec<String>, TransformError> {
    let key = if !spec.key.is_empty() {
        spec.key.clone()
    } else if let Some(old) = project
        .d1_tables
        .get(&spec.old_table)
        .filter(|t| !t.primary_key.is_empty())
    {
        old.primary_key.clone()
    } else if let Some(new) = project
        .d1_tables
        .get(&spec.new_table)
        .filter(|t| !t.primary_key.is_empty())
    {
        new.primary_key
            .iter()
            .map(|n| spec.alias.map_or(n.as_str(), |a| a.old_name(n)).to_string())
            .collect()
    } else {
        return Err(usage(
            "neither stream declares a primary key: give the key columns with --key",
        ));
    };
    for k in &key {
        if !pairs.iter().any(|p| p.old == *k) {
            return Err(usage(format!(
                "key column `{k}` is not a column both d1.{} and d1.{} have (as mapped by replaces:); columns: {}",
                spec.old_table,
                spec.new_table,
                pairs.iter().map(|p| p.old.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
    }
    Ok(key)
}

/// `--day-column`, else `dt` when both tables are partitioned by date.
fn choose_day(
    project: &ModelProject,
    spec: &Comparison<'_>,
    pairs: &[ColumnPair],
) -> Result<Option<String>, TransformError> {
    if let Some(day) = &spec.day_column {
        if day != "dt" && !pairs.iter().any(|p| p.old == *day) {
            return Err(usage(format!(
                "day column `{day}` is not a column both d1.{} and d1.{} have",
                spec.old_table, spec.new_table
            )));
        }
        return Ok(Some(day.clone()));
    }
    let partitioned = |t: &str| project.d1_tables.get(t).is_some_and(|d| d.partitioned);
    Ok((partitioned(&spec.old_table) && partitioned(&spec.new_table)).then(|| "dt".to_string()))
}
