//! Data-quality checks declared in a model's YAML, run on its output before it is published.
//!
//! ```yaml
//! checks:
//!   - not_null: [date, platform]
//!   - unique: [date, platform, ad_id]
//!   - accepted_values: { column: platform, values: [facebook, google] }
//!   - relationships: { column: campaign_id, to: d1.facebook_campaigns, field: id }
//!   - range: { column: spend, min: 0 }
//!   - regex: { column: email_hash, pattern: '^[0-9a-f]{64}$' }
//!   - not_regex: { column: phone, pattern: '^[0-9]{10}$' }
//!   - row_count: { min: 1 }
//!   - freshness: { column: loaded_at, max_age: 36h }
//!   - sql: "SELECT * FROM this WHERE clicks > impressions"   # rows returned fail
//!     name: clicks_not_above_impressions
//!     severity: warn
//! ```
//!
//! `severity: error` (default): the model publishes nothing and the previous table
//! stays. `severity: warn`: every row is published and the failing ones are flagged.
//! Either way, failing rows are kept in the lake's `quarantine/<layer>/<model>/`
//! (queryable as `quarantine.<layer>__<model>`); with `warn` they are also loaded
//! into `<model>__quarantine` beside the published table.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::common::TableReference;
use datafusion::execution::context::SessionContext;
use serde::Deserialize;
use sluice_core::typing::{Origin, Rejected};

use crate::error::TransformError;

/// The name a check's SQL uses for the model's output.
pub const THIS: &str = "this";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    #[default]
    Error,
    Warn,
}

/// One column or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Columns {
    One(String),
    Many(Vec<String>),
}

impl Columns {
    pub fn list(&self) -> Vec<String> {
        match self {
            Columns::One(c) => vec![c.clone()],
            Columns::Many(c) => c.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptedValues {
    pub column: String,
    pub values: Vec<serde_yaml::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Relationship {
    pub column: String,
    /// `d1.table`, `d2a.model`, `d2b.model`.
    pub to: String,
    pub field: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    pub column: String,
    #[serde(default)]
    pub min: Option<serde_yaml::Value>,
    #[serde(default)]
    pub max: Option<serde_yaml::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pattern {
    pub column: String,
    pub pattern: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowCount {
    #[serde(default)]
    pub min: Option<u64>,
    #[serde(default)]
    pub max: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Freshness {
    /// A date or timestamp column.
    pub column: String,
    /// `36h`, `2d`, `90m`.
    pub max_age: String,
}

/// One entry of `checks:`: exactly one kind, plus `name` and `severity`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    /// Shown in reports and quarantine rows (default: the kind and its columns).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub severity: Severity,
    #[serde(default)]
    pub not_null: Option<Columns>,
    #[serde(default)]
    pub unique: Option<Columns>,
    #[serde(default)]
    pub accepted_values: Option<AcceptedValues>,
    #[serde(default)]
    pub relationships: Option<Relationship>,
    #[serde(default)]
    pub range: Option<Range>,
    #[serde(default)]
    pub regex: Option<Pattern>,
    #[serde(default)]
    pub not_regex: Option<Pattern>,
    #[serde(default)]
    pub row_count: Option<RowCount>,
    #[serde(default)]
    pub freshness: Option<Freshness>,
    /// A query over `this` (the output); every row it returns is a failure.
    #[serde(default)]
    pub sql: Option<String>,
}

/// What a check found.
#[derive(Debug, Clone)]
pub struct CheckFailure {
    pub check: String,
    pub severity: Severity,
    pub message: String,
    /// Failing rows, as quarantine records.
    pub rows: Vec<Rejected>,
}

impl CheckSpec {
    fn kinds(&self) -> usize {
        [
            self.not_null.is_some(),
            self.unique.is_some(),
            self.accepted_values.is_some(),
            self.relationships.is_some(),
            self.range.is_some(),
            self.regex.is_some(),
            self.not_regex.is_some(),
            self.row_count.is_some(),
            self.freshness.is_some(),
            self.sql.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count()
    }

    /// Exactly one kind per entry, and well-formed arguments.
    pub fn validate(&self) -> Result<(), String> {
        match self.kinds() {
            1 => {}
            0 => return Err("a check needs one of: not_null, unique, accepted_values, relationships, range, regex, not_regex, row_count, freshness, sql".into()),
            _ => return Err("one kind of check per entry (split it into several entries)".into()),
        }
        if let Some(f) = &self.freshness {
            parse_age(&f.max_age)?;
        }
        if let Some(r) = &self.relationships {
            if !matches!(r.to.split_once('.'), Some(("d1" | "d2a" | "d2b", _))) {
                return Err(format!(
                    "`to: {}`: use d1.<table>, d2a.<model> or d2b.<model>",
                    r.to
                ));
            }
        }
        Ok(())
    }

    /// The check's name in reports.
    pub fn display_name(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        let cols = |c: &Columns| c.list().join(",");
        if let Some(c) = &self.not_null {
            format!("not_null({})", cols(c))
        } else if let Some(c) = &self.unique {
            format!("unique({})", cols(c))
        } else if let Some(a) = &self.accepted_values {
            format!("accepted_values({})", a.column)
        } else if let Some(r) = &self.relationships {
            format!("relationships({} → {}.{})", r.column, r.to, r.field)
        } else if let Some(r) = &self.range {
            format!("range({})", r.column)
        } else if let Some(p) = &self.regex {
            format!("regex({})", p.column)
        } else if let Some(p) = &self.not_regex {
            format!("not_regex({})", p.column)
        } else if self.row_count.is_some() {
            "row_count".into()
        } else if let Some(f) = &self.freshness {
            format!("freshness({})", f.column)
        } else {
            "sql".into()
        }
    }

    /// The query returning failing rows, for row-level checks.
    pub(crate) fn failing_rows_sql(&self, columns: &[String]) -> Option<String> {
        let all = columns.iter().map(|c| q(c)).collect::<Vec<_>>().join(", ");
        if let Some(c) = &self.not_null {
            let cond = c
                .list()
                .iter()
                .map(|c| format!("{} IS NULL", q(c)))
                .collect::<Vec<_>>();
            return Some(format!("SELECT * FROM {THIS} WHERE {}", cond.join(" OR ")));
        }
        if let Some(c) = &self.unique {
            let key = c.list().iter().map(|c| q(c)).collect::<Vec<_>>().join(", ");
            return Some(format!(
                "SELECT {all} FROM (SELECT *, count(*) OVER (PARTITION BY {key}) AS __sluice_n FROM {THIS}) AS d WHERE __sluice_n > 1"
            ));
        }
        if let Some(a) = &self.accepted_values {
            let values = a.values.iter().map(literal).collect::<Vec<_>>().join(", ");
            return Some(format!(
                "SELECT * FROM {THIS} WHERE {c} IS NOT NULL AND {c} NOT IN ({values})",
                c = q(&a.column)
            ));
        }
        if let Some(r) = &self.relationships {
            let (layer, table) = r.to.split_once('.').unwrap_or(("d2a", &r.to));
            return Some(format!(
                "SELECT * FROM {THIS} WHERE {c} IS NOT NULL AND {c} NOT IN (SELECT {f} FROM {layer}.{t} WHERE {f} IS NOT NULL)",
                c = q(&r.column),
                f = q(&r.field),
                t = q(table),
            ));
        }
        if let Some(r) = &self.range {
            let c = q(&r.column);
            let mut cond = Vec::new();
            if let Some(min) = &r.min {
                cond.push(format!("{c} < {}", literal(min)));
            }
            if let Some(max) = &r.max {
                cond.push(format!("{c} > {}", literal(max)));
            }
            if cond.is_empty() {
                cond.push("false".into());
            }
            return Some(format!("SELECT * FROM {THIS} WHERE {}", cond.join(" OR ")));
        }
        if let Some(p) = &self.regex {
            return Some(format!(
                "SELECT * FROM {THIS} WHERE {c} IS NOT NULL AND NOT regexp_like(CAST({c} AS VARCHAR), {pat})",
                c = q(&p.column),
                pat = string_literal(&p.pattern)
            ));
        }
        if let Some(p) = &self.not_regex {
            return Some(format!(
                "SELECT * FROM {THIS} WHERE regexp_like(CAST({c} AS VARCHAR), {pat})",
                c = q(&p.column),
                pat = string_literal(&p.pattern)
            ));
        }
        self.sql.clone()
    }
}

fn q(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn string_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn literal(v: &serde_yaml::Value) -> String {
    match v {
        serde_yaml::Value::Number(n) => n.to_string(),
        serde_yaml::Value::Bool(b) => b.to_string(),
        serde_yaml::Value::String(s) => string_literal(s),
        other => string_literal(&serde_yaml::to_string(other).unwrap_or_default()),
    }
}

/// `36h`, `2d`, `90m`, `45s` → seconds.
pub(crate) fn parse_age(text: &str) -> Result<i64, String> {
    let t = text.trim();
    let (n, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: i64 = n
        .parse()
        .map_err(|_| format!("`{text}`: write an age like 36h, 2d or 90m"))?;
    Ok(n * match unit {
        "s" => 1,
        "m" => 60,
        "h" | "" => 3600,
        "d" => 86400,
        _ => return Err(format!("`{text}`: units are s, m, h, d")),
    })
}

/// Runs `checks` over `output` (the model's staged output, `rows` rows) in `ctx`,
/// which sees the other tables.
pub async fn run_checks(
    ctx: &SessionContext,
    checks: &[CheckSpec],
    schema: SchemaRef,
    output: Arc<dyn TableProvider>,
    rows: u64,
) -> Result<Vec<CheckFailure>, TransformError> {
    if checks.is_empty() {
        return Ok(Vec::new());
    }
    let this = TableReference::bare(THIS);
    let _ = ctx.deregister_table(this.clone());
    ctx.register_table(this.clone(), output)
        .map_err(|e| TransformError::engine("checks", e))?;
    let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let mut failures = Vec::new();
    for check in checks {
        let name = check.display_name();
        let run = |sql: String| async move {
            crate::catalog::user_sql(ctx, &sql)
                .await
                .map_err(|e| TransformError::engine(format!("check {name}"), e))?
                .collect()
                .await
                .map_err(|e| TransformError::engine(format!("check {name}"), e))
        };
        let name = check.display_name();
        if let Some(sql) = check.failing_rows_sql(&columns) {
            let rows = run(sql).await?;
            let rejected = to_rejected(&name, &rows)?;
            if !rejected.is_empty() {
                failures.push(CheckFailure {
                    check: name.clone(),
                    severity: check.severity,
                    message: format!("{name}: {} failing rows", rejected.len()),
                    rows: rejected,
                });
            }
        } else if let Some(rc) = &check.row_count {
            let n = rows;
            if rc.min.is_some_and(|m| n < m) || rc.max.is_some_and(|m| n > m) {
                failures.push(CheckFailure {
                    check: name.clone(),
                    severity: check.severity,
                    message: format!(
                        "{name}: {n} rows, expected {}",
                        match (rc.min, rc.max) {
                            (Some(a), Some(b)) => format!("{a}..={b}"),
                            (Some(a), None) => format!("at least {a}"),
                            (None, Some(b)) => format!("at most {b}"),
                            (None, None) => "any".into(),
                        }
                    ),
                    rows: Vec::new(),
                });
            }
        } else if let Some(f) = &check.freshness {
            let max_age = parse_age(&f.max_age).map_err(|e| TransformError::engine("check", e))?;
            let sql = format!(
                "SELECT CAST(max(CAST({c} AS TIMESTAMP)) AS VARCHAR) AS latest, \
                 CAST(date_part('epoch', now() - max(CAST({c} AS TIMESTAMP))) AS BIGINT) AS age FROM {THIS}",
                c = q(&f.column)
            );
            let result = run(sql).await?;
            let (latest, age) = freshness_values(&result);
            let stale = age.is_none_or(|a| a > max_age);
            if stale {
                failures.push(CheckFailure {
                    check: name.clone(),
                    severity: check.severity,
                    message: format!(
                        "{name}: latest {} is older than {}",
                        latest.unwrap_or_else(|| "(no rows)".into()),
                        f.max_age
                    ),
                    rows: Vec::new(),
                });
            }
        }
    }
    let _ = ctx.deregister_table(this);
    Ok(failures)
}

fn freshness_values(batches: &[RecordBatch]) -> (Option<String>, Option<i64>) {
    use datafusion::arrow::array::{Array, Int64Array, StringArray};
    let Some(batch) = batches.iter().find(|b| b.num_rows() > 0) else {
        return (None, None);
    };
    let latest = batch
        .column(0)
        .as_any()
        .downcast_ref::<StringArray>()
        .filter(|a| a.is_valid(0))
        .map(|a| a.value(0).to_string());
    let age = batch
        .column(1)
        .as_any()
        .downcast_ref::<Int64Array>()
        .filter(|a| a.is_valid(0))
        .map(|a| a.value(0));
    (latest, age)
}

/// Rows as quarantine records: the check, the reason, the row as JSON.
fn to_rejected(check: &str, batches: &[RecordBatch]) -> Result<Vec<Rejected>, TransformError> {
    rows_as_rejected(
        &format!("check:{check}"),
        &format!("check {check} failed"),
        batches,
    )
}

/// Rows as quarantine records from `origin` (their line is their position), each with
/// `reason` and the row as JSON.
pub(crate) fn rows_as_rejected(
    origin: &str,
    reason: &str,
    batches: &[RecordBatch],
) -> Result<Vec<Rejected>, TransformError> {
    let mut out = Vec::new();
    let page: Arc<str> = Arc::from(origin);
    for batch in batches.iter().filter(|b| b.num_rows() > 0) {
        let mut buffer = Vec::new();
        {
            let mut writer = datafusion::arrow::json::LineDelimitedWriter::new(&mut buffer);
            writer
                .write(batch)
                .map_err(|e| TransformError::engine("quarantine", e))?;
            writer
                .finish()
                .map_err(|e| TransformError::engine("quarantine", e))?;
        }
        for line in String::from_utf8_lossy(&buffer).lines() {
            out.push(Rejected {
                origin: Origin {
                    page: page.clone(),
                    line: out.len() as u64 + 1,
                },
                reason: reason.to_string(),
                raw: line.to_string(),
            });
        }
    }
    Ok(out)
}

/// Failures by severity, for reports.
pub fn summarize(failures: &[CheckFailure]) -> BTreeMap<&'static str, usize> {
    let mut out = BTreeMap::new();
    for f in failures {
        *out.entry(match f.severity {
            Severity::Error => "error",
            Severity::Warn => "warn",
        })
        .or_default() += 1;
    }
    out
}
