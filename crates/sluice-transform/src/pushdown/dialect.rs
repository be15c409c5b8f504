//! A model's DataFusion plan as PostgreSQL SQL: DataFusion's unparser with
//! PostgreSQL's dialect, sluice's own functions written as PostgreSQL expressions,
//! and the tables a model names (`d1.x`, `d2a.y`, a check's `this`) renamed to the
//! warehouse objects that hold them.
//!
//! Which functions may run in the warehouse is a list, not a hope: a function that is
//! not on it (a `redact`, a DataFusion-only builtin) is refused by name
//! before anything runs, rather than failing halfway or computing something else.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::sql::sqlparser::ast::{self, Ident, TableAlias, TableFactor, VisitMut, VisitorMut};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect as ParserDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::unparser::dialect::{
    CharacterLengthStyle, DateFieldExtractStyle, Dialect, DistinctFromStyle, IntervalStyle,
    PostgreSqlDialect,
};
use datafusion::sql::unparser::Unparser;

/// The temp table holding the `hash` key's padded blocks (see [`crate::pii::PiiKeys`]).
pub(crate) const KEYS_TABLE: &str = "pg_temp._sluice_keys";
/// The temp function behind `convert_currency` (see [`super::setup`]).
pub(crate) const CONVERT_FUNCTION: &str = "pg_temp._sluice_convert_currency";
/// The temp functions behind `encrypt` and `decrypt` (see [`super::objects`]).
pub(crate) const ENCRYPT_FUNCTION: &str = "pg_temp._sluice_encrypt";
pub(crate) const DECRYPT_FUNCTION: &str = "pg_temp._sluice_decrypt";
/// Their key arguments: uncorrelated subqueries, which PostgreSQL evaluates once per
/// query (init plans), so no row looks its key up.
pub(crate) const CIPHER_KEY_ARGS: &str = "\
    (SELECT array_agg(key_id ORDER BY key_id) FROM pg_temp._sluice_cipher_keys), \
    (SELECT array_agg(mac_key ORDER BY key_id) FROM pg_temp._sluice_cipher_keys), \
    (SELECT array_agg(aes_key ORDER BY key_id) FROM pg_temp._sluice_cipher_keys), \
    (SELECT key_id FROM pg_temp._sluice_cipher_keys WHERE active)";

/// sluice's functions that have a PostgreSQL form: `{0}`, `{1}`, … are the arguments.
fn sluice_function(name: &str) -> Option<String> {
    Some(match name {
        // HMAC-SHA-256 from SHA-256 alone (RFC 2104), so no extension is needed.
        "hmac_sha256" => format!(
            "encode(sha256((SELECT opad FROM {KEYS_TABLE}) || \
             sha256((SELECT ipad FROM {KEYS_TABLE}) || convert_to({{0}}, 'UTF8'))), 'hex')"
        ),
        "mask_last4" => "(CASE WHEN char_length({0}) > 4 THEN repeat('*', char_length({0}) - 4) \
                         || right({0}, 4) ELSE {0} END)"
            .into(),
        "micros_to_units" => "CAST(CAST({0} AS NUMERIC) / 1000000 AS NUMERIC(38, 6))".into(),
        // The `enc:v3:` format, through pgcrypto (see `objects::cipher_functions`).
        "encrypt" => format!(
            "{ENCRYPT_FUNCTION}(CAST({{0}} AS TEXT), CAST({{1}} AS TEXT), {CIPHER_KEY_ARGS})"
        ),
        "decrypt" => format!(
            "{DECRYPT_FUNCTION}(CAST({{0}} AS TEXT), CAST({{1}} AS TEXT), {CIPHER_KEY_ARGS})"
        ),
        "convert_currency" => format!(
            "{CONVERT_FUNCTION}(CAST({{0}} AS NUMERIC), CAST({{1}} AS TEXT), CAST({{2}} AS TEXT), \
             CAST({{3}} AS DATE))"
        ),
        _ => return None,
    })
}

/// sluice functions with no PostgreSQL equivalent, and why.
fn unsupported_reason(name: &str) -> Option<&'static str> {
    Some(match name {
        "redact" | "redact_email" | "redact_phone" => {
            "its shape-keeping rules have no PostgreSQL form yet"
        }
        "parse_money" => "its money-text parser has no PostgreSQL form yet",
        n if n.starts_with("safe_cast_") || n == "castable" => {
            "its error-free casts have no PostgreSQL form yet"
        }
        _ => return None,
    })
}

/// DataFusion functions PostgreSQL has under the same name with the same meaning.
const SAME_IN_POSTGRES: &[&str] = &[
    // scalar
    "abs",
    "ceil",
    "floor",
    "round",
    "trunc",
    "sqrt",
    "exp",
    "ln",
    "log10",
    "power",
    "sign",
    "coalesce",
    "nullif",
    "greatest",
    "least",
    "lower",
    "upper",
    "btrim",
    "ltrim",
    "rtrim",
    "char_length",
    "character_length",
    "length",
    "octet_length",
    "concat",
    "concat_ws",
    "substr",
    "replace",
    "left",
    "right",
    "lpad",
    "rpad",
    "repeat",
    "reverse",
    "split_part",
    "strpos",
    "starts_with",
    "initcap",
    "translate",
    "md5",
    "regexp_like",
    "regexp_replace",
    "now",
    "current_date",
    "date_trunc",
    "date_part",
    "make_date",
    "to_hex",
    "ascii",
    "chr",
    // aggregate
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "bool_and",
    "bool_or",
    "string_agg",
    "stddev",
    "stddev_samp",
    "stddev_pop",
    "var_samp",
    "var_pop",
    "variance",
    // window
    "row_number",
    "rank",
    "dense_rank",
    "percent_rank",
    "cume_dist",
    "ntile",
    "lag",
    "lead",
    "first_value",
    "last_value",
    "nth_value",
];

/// The functions `plan` calls that cannot run in PostgreSQL, each with the reason.
/// Subqueries are searched too; views (D1 tables) are not: the warehouse's own
/// versions replace them.
pub(crate) fn unsupported_functions(plan: &LogicalPlan) -> Vec<(String, String)> {
    let mut found: BTreeMap<String, String> = BTreeMap::new();
    let mut note = |name: &str| {
        if sluice_function(name).is_some() || SAME_IN_POSTGRES.contains(&name) {
            return;
        }
        let reason = unsupported_reason(name)
            .unwrap_or("it is not on sluice's list of functions that mean the same in PostgreSQL");
        found.insert(name.to_string(), reason.to_string());
    };
    let _ = plan.apply_with_subqueries(|node| {
        for expr in node.expressions() {
            let _ = expr.apply(|e| {
                match e {
                    Expr::ScalarFunction(f) => note(f.name()),
                    Expr::AggregateFunction(f) => note(f.func.name()),
                    Expr::WindowFunction(f) => note(f.fun.name()),
                    _ => {}
                }
                Ok(TreeNodeRecursion::Continue)
            });
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found.into_iter().collect()
}

/// PostgreSQL's unparsing dialect plus sluice's functions.
struct WarehouseDialect {
    postgres: PostgreSqlDialect,
}

impl Dialect for WarehouseDialect {
    fn identifier_quote_style(&self, identifier: &str) -> Option<char> {
        self.postgres.identifier_quote_style(identifier)
    }
    fn use_array_keyword_for_array_literals(&self) -> bool {
        self.postgres.use_array_keyword_for_array_literals()
    }
    fn supports_qualify(&self) -> bool {
        self.postgres.supports_qualify()
    }
    fn requires_derived_table_alias(&self) -> bool {
        self.postgres.requires_derived_table_alias()
    }
    fn supports_empty_select_list(&self) -> bool {
        self.postgres.supports_empty_select_list()
    }
    fn interval_style(&self) -> IntervalStyle {
        self.postgres.interval_style()
    }
    fn float64_ast_dtype(&self) -> ast::DataType {
        self.postgres.float64_ast_dtype()
    }
    fn int8_cast_dtype(&self) -> ast::DataType {
        self.postgres.int8_cast_dtype()
    }
    fn distinct_from_style(&self) -> DistinctFromStyle {
        self.postgres.distinct_from_style()
    }
    fn date_field_extract_style(&self) -> DateFieldExtractStyle {
        self.postgres.date_field_extract_style()
    }
    fn character_length_style(&self) -> CharacterLengthStyle {
        self.postgres.character_length_style()
    }
    fn utf8_cast_dtype(&self) -> ast::DataType {
        ast::DataType::Text
    }
    fn scalar_function_to_sql_overrides(
        &self,
        unparser: &Unparser,
        func_name: &str,
        args: &[Expr],
    ) -> DfResult<Option<ast::Expr>> {
        let Some(template) = sluice_function(func_name) else {
            return self
                .postgres
                .scalar_function_to_sql_overrides(unparser, func_name, args);
        };
        let mut sql = template;
        for (i, arg) in args.iter().enumerate() {
            let arg = unparser.expr_to_sql(arg)?.to_string();
            sql = sql.replace(&format!("{{{i}}}"), &format!("({arg})"));
        }
        let expr = Parser::new(&ParserDialect {})
            .try_with_sql(&sql)
            .and_then(|mut p| p.parse_expr())
            .map_err(|e| DataFusionError::Plan(format!("{func_name}: {e}")))?;
        Ok(Some(expr))
    }
}

/// Where a table a model names lives in the warehouse: `(schema, table)` as the
/// model writes it → the quoted object (`pg_temp."_sluice_d1__x"`, `"d2a"."y"`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Relations {
    pub(crate) by_name: BTreeMap<(String, String), String>,
}

impl Relations {
    pub(crate) fn insert(&mut self, schema: &str, table: &str, object: String) {
        self.by_name
            .insert((schema.to_string(), table.to_string()), object);
    }
}

struct Rename<'a>(&'a Relations);

impl VisitorMut for Rename<'_> {
    type Break = String;

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<String> {
        let TableFactor::Table { name, alias, .. } = factor else {
            return ControlFlow::Continue(());
        };
        let parts: Vec<String> = name
            .0
            .iter()
            .map(|p| p.as_ident().map(|i| i.value.clone()).unwrap_or_default())
            .collect();
        let (schema, table) = match parts.as_slice() {
            [table] => (String::new(), table.clone()),
            [schema, table] => (schema.clone(), table.clone()),
            _ => return ControlFlow::Break(name.to_string()),
        };
        if schema == "pg_temp" {
            // sluice's own temporary objects (the key table in `hmac_sha256`).
            return ControlFlow::Continue(());
        }
        let Some(object) = self.0.by_name.get(&(schema, table.clone())) else {
            return ControlFlow::Break(name.to_string());
        };
        let parsed = Parser::new(&ParserDialect {})
            .try_with_sql(object)
            .and_then(|mut p| p.parse_object_name(false));
        let Ok(renamed) = parsed else {
            return ControlFlow::Break(object.clone());
        };
        *name = renamed;
        if alias.is_none() {
            // Columns stay qualified by the table's own name (`"x"."col"`).
            *alias = Some(TableAlias {
                explicit: true,
                name: Ident::with_quote('"', table),
                columns: Vec::new(),
                at: None,
            });
        }
        ControlFlow::Continue(())
    }
}

/// `plan` as one PostgreSQL statement over the warehouse's objects. `Err` names what
/// could not be written (an unknown table, a construct the unparser refuses).
pub(crate) fn unparse(plan: &LogicalPlan, relations: &Relations) -> Result<String, String> {
    let dialect = WarehouseDialect {
        postgres: PostgreSqlDialect {},
    };
    let mut statement = Unparser::new(&dialect)
        .plan_to_sql(plan)
        .map_err(|e| e.to_string())?;
    if let ControlFlow::Break(name) = statement.visit(&mut Rename(relations)) {
        return Err(format!("the table {name} is not one the warehouse holds"));
    }
    Ok(statement.to_string())
}

/// A quoted identifier.
pub(crate) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A string literal.
pub(crate) fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The PostgreSQL form of a `pii:` action over the text `value` of `context`
/// (`table.column`, what an encrypted value is bound to), or `Err(why)`.
pub(crate) fn policy_expr(
    action: crate::pii::PiiAction,
    value: &str,
    context: &str,
) -> Result<Option<String>, &'static str> {
    use crate::pii::PiiAction;
    let with = |name: &str| {
        sluice_function(name)
            .expect("a sluice function")
            .replace("{0}", &format!("({value})"))
            .replace("{1}", &literal(context))
    };
    Ok(Some(match action {
        PiiAction::Hash => with("hmac_sha256"),
        PiiAction::MaskLast4 => with("mask_last4"),
        PiiAction::Keep => value.to_string(),
        PiiAction::Drop => return Ok(None),
        PiiAction::Redact => return Err(unsupported_reason("redact").expect("listed")),
        PiiAction::Encrypt => with("encrypt"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    async fn plan(sql: &str) -> LogicalPlan {
        let ctx = SessionContext::new();
        let policy =
            crate::pii::PiiPolicy::new(Some("test-key-one-0123456789abcdef-0123456789"), &[]);
        for udf in policy.functions() {
            ctx.register_udf(udf);
        }
        for udf in crate::functions::functions(&Default::default()) {
            ctx.register_udf(udf);
        }
        ctx.sql("CREATE TABLE t (email VARCHAR, spend DECIMAL(12, 2), cur VARCHAR, day DATE)")
            .await
            .unwrap();
        ctx.state().create_logical_plan(sql).await.unwrap()
    }

    #[tokio::test]
    async fn sluice_functions_become_postgresql_and_tables_are_renamed() {
        let plan = plan(
            "SELECT hmac_sha256(email) AS h, mask_last4(email) AS m, \
             convert_currency(spend, cur, 'USD', day) AS usd, upper(cur) AS c FROM t",
        )
        .await;
        assert!(unsupported_functions(&plan).is_empty());
        let mut relations = Relations::default();
        relations.insert("", "t", "pg_temp.\"_sluice_d1__t\"".into());
        let sql = unparse(&plan, &relations).unwrap();
        assert!(sql.contains("sha256("), "{sql}");
        assert!(sql.contains(KEYS_TABLE), "{sql}");
        assert!(sql.contains(CONVERT_FUNCTION), "{sql}");
        assert!(sql.contains("pg_temp.\"_sluice_d1__t\" AS \"t\""), "{sql}");
        assert!(!sql.contains("hmac_sha256"), "{sql}");
        // An unmapped table is refused, not sent to the warehouse.
        assert!(unparse(&plan, &Relations::default()).is_err());
    }

    #[tokio::test]
    async fn functions_without_a_postgresql_form_are_named() {
        let plan =
            plan("SELECT redact(email) AS a, to_char(day, '%Y') AS b, decrypt(email, 't.email') AS c FROM t").await;
        let names: Vec<String> = unsupported_functions(&plan)
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(names, vec!["redact".to_string(), "to_char".to_string()]);
    }
}
