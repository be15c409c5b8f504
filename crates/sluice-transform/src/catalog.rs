//! The SQL engine's view of the lake: schemas `d1`, `d2a`, `d2b`, one table per lake table.
//!
//! D1 tables are read from `d1/<table>/dt=*/…parquet` (the `dt` folder becomes a
//! `dt` date column). What a model sees of a D1 table is a view that
//! (1) keeps only the latest version of each primary key for `merge` tables, and
//! (2) applies the `pii:` policy to every personal column. D2 tables are read from
//! `d2a/<model>/…` and `d2b/<model>/…` as the models wrote them.

use std::collections::BTreeSet;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::{MemorySchemaProvider, TableProvider};
use datafusion::common::Result as DfResult;
use datafusion::common::TableReference;
use datafusion::dataframe::DataFrame;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::MemTable;
use datafusion::execution::cache::cache_manager::CacheManagerConfig;
use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use sluice_core::destination::WriteMode;
use sluice_core::lake::{layout, Lake};

use crate::error::TransformError;
use crate::project::ModelProject;

/// The URL the lake's object store is registered under in the engine.
const LAKE_URL: &str = "sluice-lake://lake/";
/// Where the D1 tables are registered as read from the lake, before policy and
/// de-duplication, while their views are built (then the schema is removed).
pub const RAW_SCHEMA: &str = "d1_raw";

/// Whether D1 is seen through the PII policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum D1View {
    /// Personal columns hashed/masked/encrypted/dropped by policy (models, default queries).
    Policy,
    /// The D1 data as landed (`sluice query --unmasked`, for people who may see it).
    Unmasked,
}

/// A session over `lake` with the project's functions registered.
pub async fn session(
    project: &ModelProject,
    lake: &Lake,
    view: D1View,
) -> Result<SessionContext, TransformError> {
    let mut config = SessionConfig::new()
        .with_target_partitions(2)
        .with_information_schema(true);
    let options = config.options_mut();
    options.sql_parser.collect_spans = true;
    options.sql_parser.map_string_types_to_utf8view = false;
    options.execution.parquet.schema_force_view_types = false;
    // Models write lake tables that later models read in the same session: no cached listings.
    let runtime = RuntimeEnvBuilder::new()
        .with_cache_manager(CacheManagerConfig::default().with_list_files_cache_limit(0))
        .build_arc()
        .map_err(|e| TransformError::engine("session", e))?;
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    let url = url::Url::parse(LAKE_URL).expect("valid URL");
    ctx.register_object_store(&url, lake.store());
    let catalog = ctx.catalog("datafusion").expect("default catalog");
    for schema in [RAW_SCHEMA, "d1", "d2a", "d2b"] {
        catalog
            .register_schema(schema, Arc::new(MemorySchemaProvider::new()))
            .map_err(|e| TransformError::engine("session", e))?;
    }
    for udf in project.pii.functions() {
        ctx.register_udf(udf);
    }
    for udf in crate::functions::functions(&project.rates) {
        ctx.register_udf(udf);
    }

    for table in lake_tables(lake, "d1").await? {
        register_d1(&ctx, project, lake, &table, view).await?;
    }
    register_switched_aliases(&ctx, project, view).await?;
    for layer in ["d2a", "d2b"] {
        for table in lake_tables(lake, layer).await? {
            register_lake_table(&ctx, lake, layer, &table).await?;
        }
    }
    // The D1 views hold their raw tables; by name the raw tables are gone, so no
    // query, model or check can read around the PII policy.
    catalog
        .deregister_schema(RAW_SCHEMA, true)
        .map_err(|e| TransformError::engine("session", e))?;
    let policy = (view == D1View::Policy).then_some(project);
    crate::quarantine::register(&ctx, lake, policy).await?;
    Ok(ctx)
}

/// What SQL from users (models, checks, `sluice query`) may do: read. DDL (`CREATE
/// EXTERNAL TABLE` over any file), DML (`COPY … TO` a file, `INSERT`) and statements
/// (`SET`) are refused, so SQL can neither write outside the lake's own paths nor
/// change what the session reads.
pub fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// Plans user SQL on `ctx` under [`read_only`].
pub async fn user_sql(ctx: &SessionContext, sql: &str) -> DfResult<DataFrame> {
    ctx.sql_with_options(sql, read_only()).await
}

/// Table names under `<layer>/` in the lake.
pub async fn lake_tables(lake: &Lake, layer: &str) -> Result<BTreeSet<String>, TransformError> {
    Ok(lake
        .list(&format!("{layer}/"))
        .await?
        .into_iter()
        .filter(|o| o.path.ends_with(".parquet"))
        .filter_map(|o| o.path.split('/').nth(1).map(str::to_string))
        .collect())
}

fn table_url(lake: &Lake, relative: &str) -> Result<ListingTableUrl, TransformError> {
    let path = lake.object_path(relative);
    ListingTableUrl::parse(format!("{LAKE_URL}{path}/"))
        .map_err(|e| TransformError::engine(format!("lake table {relative}"), e))
}

async fn listing_table(
    ctx: &SessionContext,
    lake: &Lake,
    relative: &str,
    partition_cols: Vec<(String, DataType)>,
) -> Result<Arc<ListingTable>, TransformError> {
    let err = |e| TransformError::engine(format!("lake table {relative}"), e);
    let format = ParquetFormat::default().with_options(ctx.state().table_options().parquet.clone());
    let options = ListingOptions::new(Arc::new(format))
        .with_file_extension(".parquet")
        .with_table_partition_cols(partition_cols);
    let url = table_url(lake, relative)?;
    let config = ListingTableConfig::new(url.clone()).with_listing_options(options.clone());
    let config = match config.clone().infer_schema(&ctx.state()).await {
        Ok(config) => config,
        // Files written before and after a column was widened (bigint → text by
        // `on_type_change: evolve`) disagree on its type: read them all as the wider one.
        Err(_) => config.with_schema(widened_schema(ctx, &options, &url).await.map_err(err)?),
    };
    Ok(Arc::new(ListingTable::try_new(config).map_err(err)?))
}

/// The schema of every file under `url`, merged column by column; where files disagree
/// on a column's type, the type that holds both (the order sluice widens in: bigint →
/// numeric → text; anything else → text). Older files are cast when read.
async fn widened_schema(
    ctx: &SessionContext,
    options: &ListingOptions,
    url: &ListingTableUrl,
) -> datafusion::error::Result<SchemaRef> {
    use datafusion::arrow::datatypes::{Field, Schema};
    use futures::TryStreamExt;
    let state = ctx.state();
    let store = state.runtime_env().object_store(url)?;
    let mut files: Vec<_> = url
        .list_all_files(&state, store.as_ref(), &options.file_extension)
        .await?
        .try_collect()
        .await?;
    files.retain(|f| f.size > 0);
    files.sort_by(|a, b| a.location.cmp(&b.location));
    let mut fields: Vec<Field> = Vec::new();
    for file in &files {
        let schema = options
            .format
            .infer_schema(&state, &store, std::slice::from_ref(file))
            .await?;
        for field in schema.fields() {
            match fields.iter_mut().find(|f| f.name() == field.name()) {
                None => fields.push(field.as_ref().clone().with_nullable(true)),
                Some(known) if known.data_type() == field.data_type() => {}
                Some(known) => {
                    let wider = wider_type(known.data_type(), field.data_type());
                    *known = Field::new(known.name(), wider, true);
                }
            }
        }
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// The type that holds values of both `a` and `b`.
fn wider_type(a: &DataType, b: &DataType) -> DataType {
    use DataType::*;
    match (a, b) {
        (Int64, Decimal128(p, s)) | (Decimal128(p, s), Int64) => Decimal128((*p).max(38), *s),
        (Decimal128(_, s1), Decimal128(_, s2)) => Decimal128(38, (*s1).max(*s2)),
        (Int64, Float64) | (Float64, Int64) => Float64,
        _ => Utf8,
    }
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Registers `d1_raw.<table>` from the lake and the `d1.<table>` view models read.
async fn register_d1(
    ctx: &SessionContext,
    project: &ModelProject,
    lake: &Lake,
    table: &str,
    view: D1View,
) -> Result<(), TransformError> {
    let raw = listing_table(
        ctx,
        lake,
        &layout::table("d1", table),
        vec![("dt".to_string(), DataType::Utf8)],
    )
    .await?;
    let schema = raw.schema();
    ctx.register_table(TableReference::partial(RAW_SCHEMA, table), raw)
        .map_err(|e| TransformError::engine("register", e))?;

    let sql = d1_view_sql(project, table, &schema, view);
    let df = ctx
        .sql(&sql)
        .await
        .map_err(|e| TransformError::engine(format!("d1.{table}"), e))?;
    ctx.register_table(TableReference::partial("d1", table), df.into_view())
        .map_err(|e| TransformError::engine("register", e))?;
    Ok(())
}

/// Makes each switched replacement's old name, `d1.<replaced>`, a view of the
/// replacing stream's `d1.<table>` with the mapped columns renamed to their old names
/// (it shadows what the replaced stream landed). Before the replacing stream has
/// landed, the old name is not registered at all: a model reading it fails loudly
/// rather than read the retired stream's last data.
async fn register_switched_aliases(
    ctx: &SessionContext,
    project: &ModelProject,
    view: D1View,
) -> Result<(), TransformError> {
    let policy = (view == D1View::Policy).then_some(project);
    for alias in project.d1_aliases.iter().filter(|a| a.replacement.switch) {
        let old = TableReference::partial("d1", alias.replaced_table.as_str());
        let _ = ctx.deregister_table(old.clone());
        let new = TableReference::partial("d1", alias.table.as_str());
        let Ok(provider) = ctx.table_provider(new).await else {
            tracing::warn!(
                "d1.{} is switched to d1.{}, which has not landed yet",
                alias.replaced_table,
                alias.table
            );
            continue;
        };
        let sql = alias_view_sql(alias, &provider.schema(), policy)?;
        let df = ctx
            .sql(&sql)
            .await
            .map_err(|e| TransformError::engine(format!("d1.{}", alias.replaced_table), e))?;
        ctx.register_table(old, df.into_view())
            .map_err(|e| TransformError::engine("register", e))?;
    }
    Ok(())
}

/// `SELECT "customer_id" AS "id", … FROM d1."crm_customers"`: every column of the
/// replacing table (`schema`), mapped ones under their old names. An unmapped column
/// whose name a mapped one takes is left out (the mapping says which one it is).
/// Under `policy`, a column the replacing table's rules leave in clear gets the
/// action the `pii:` rules (or marks) of the old name give it, so a rule written for
/// `vendor_customers.email` still holds for what models read under that name.
fn alias_view_sql(
    alias: &sluice_core::replace::D1Alias,
    schema: &SchemaRef,
    policy: Option<&ModelProject>,
) -> Result<String, TransformError> {
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    for (new, _) in &alias.replacement.columns {
        if !names.contains(&new.as_str()) {
            let mut error = alias.column_error(
                new,
                format!(
                    "{} has no column `{new}` (its D1 table {} has: {})",
                    alias.replacement.by,
                    alias.table,
                    names.join(", ")
                ),
            );
            error.help = sluice_core::config::suggest(new, names.iter().copied())
                .map(|s| format!("did you mean `{s}`?"));
            return Err(error.into());
        }
    }
    let taken: BTreeSet<&str> = alias
        .replacement
        .columns
        .iter()
        .filter(|(new, old)| new != old)
        .map(|(_, old)| old.as_str())
        .collect();
    let kept: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !taken.contains(n) || alias.replacement.columns.iter().any(|(new, _)| new == n))
        .collect();
    let select: Vec<String> = kept
        .iter()
        .map(|n| match alias.old_name(n) {
            old if old == *n => quote(n),
            old => format!("{} AS {}", quote(n), quote(old)),
        })
        .collect();
    let renamed = format!(
        "SELECT {} FROM d1.{}",
        select.join(", "),
        quote(&alias.table)
    );
    let Some(project) = policy else {
        return Ok(renamed);
    };
    let marked = |table: &str, column: &str| {
        project
            .d1_tables
            .get(table)
            .is_some_and(|d| d.pii_columns.iter().any(|c| c == column))
    };
    let mut outer = Vec::new();
    for new in kept {
        let old = alias.old_name(new);
        if old == "dt" {
            outer.push(quote(old));
            continue;
        }
        let applied_as_new = project
            .pii
            .action(&alias.table, new, marked(&alias.table, new))
            .is_some();
        let as_old = project.pii.action(
            &alias.replaced_table,
            old,
            marked(&alias.replaced_table, old),
        );
        match as_old.filter(|_| !applied_as_new) {
            None => outer.push(quote(old)),
            Some(action) => {
                if let Some(expr) = action.apply(&alias.replaced_table, old) {
                    outer.push(format!("{expr} AS {}", quote(old)));
                }
            }
        }
    }
    Ok(format!("SELECT {} FROM ({renamed}) AS t", outer.join(", ")))
}

/// The SQL of the `d1.<table>` view over `d1_raw.<table>` (the table as landed, with
/// `schema`): the latest version of each key of a `merge` table, and personal columns
/// through the `pii:` policy unless `view` is `Unmasked`.
fn d1_view_sql(project: &ModelProject, table: &str, schema: &SchemaRef, view: D1View) -> String {
    let known = project.d1_tables.get(table);
    let columns: Vec<&str> = schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .filter(|c| *c != "dt")
        .collect();
    let mut source = format!("{RAW_SCHEMA}.{}", quote(table));
    // Merge tables may hold several versions of a key: the latest load wins.
    if let Some(d1) = known.filter(|d| d.write_mode == WriteMode::Merge) {
        let key_present = !d1.primary_key.is_empty()
            && d1.primary_key.iter().all(|k| columns.contains(&k.as_str()));
        if key_present && columns.contains(&"_sluice_loaded_at") {
            let key: Vec<String> = d1.primary_key.iter().map(|k| quote(k)).collect();
            let all: Vec<String> = schema.fields().iter().map(|f| quote(f.name())).collect();
            source = format!(
                "(SELECT {cols} FROM (SELECT *, row_number() OVER (PARTITION BY {key} ORDER BY \"_sluice_loaded_at\" DESC, \"dt\" DESC) AS __sluice_version FROM {source}) AS v WHERE __sluice_version = 1)",
                cols = all.join(", "),
                key = key.join(", "),
            );
        }
    }
    let mut select = Vec::new();
    for column in &columns {
        let marked = known.is_some_and(|d| d.pii_columns.iter().any(|c| c == column));
        let action = match view {
            D1View::Policy => project.pii.action(table, column, marked),
            D1View::Unmasked => None,
        };
        match action {
            None => select.push(quote(column)),
            Some(action) => {
                if let Some(expr) = action.apply(table, column) {
                    select.push(format!("{expr} AS {}", quote(column)));
                }
            }
        }
    }
    select.push("CAST(\"dt\" AS DATE) AS \"dt\"".into());
    format!("SELECT {} FROM {source} AS t", select.join(", "))
}

/// The definition of the `d1.<table>` view models and queries read (see
/// [`session`]), for `sluice compile`; `None` when the lake has no such table.
pub async fn d1_view_definition(
    project: &ModelProject,
    lake: &Lake,
    table: &str,
    view: D1View,
) -> Result<Option<String>, TransformError> {
    if !lake_tables(lake, "d1").await?.contains(table) {
        return Ok(None);
    }
    let ctx = SessionContext::new();
    let url = url::Url::parse(LAKE_URL).expect("valid URL");
    ctx.register_object_store(&url, lake.store());
    let raw = listing_table(
        &ctx,
        lake,
        &layout::table("d1", table),
        vec![("dt".to_string(), DataType::Utf8)],
    )
    .await?;
    Ok(Some(d1_view_sql(project, table, &raw.schema(), view)))
}

/// (Re-)registers `<layer>.<table>` from what is in the lake now.
pub async fn register_lake_table(
    ctx: &SessionContext,
    lake: &Lake,
    layer: &str,
    table: &str,
) -> Result<bool, TransformError> {
    let reference = TableReference::partial(layer, table);
    let _ = ctx.deregister_table(reference.clone());
    if !lake_tables(lake, layer).await?.contains(table) {
        return Ok(false);
    }
    let provider = listing_table(ctx, lake, &layout::table(layer, table), Vec::new()).await?;
    ctx.register_table(reference, provider)
        .map_err(|e| TransformError::engine("register", e))?;
    Ok(true)
}

/// A model's staged output (the Parquet files under `prefix`), as a table its checks read.
pub async fn staged_table(
    ctx: &SessionContext,
    lake: &Lake,
    prefix: &str,
    schema: SchemaRef,
) -> Result<Arc<dyn TableProvider>, TransformError> {
    let err = |e| TransformError::engine(format!("staged output {prefix}"), e);
    let format = ParquetFormat::default().with_options(ctx.state().table_options().parquet.clone());
    let options = ListingOptions::new(Arc::new(format)).with_file_extension(".parquet");
    let config = ListingTableConfig::new(table_url(lake, prefix)?)
        .with_listing_options(options)
        .with_schema(schema);
    Ok(Arc::new(ListingTable::try_new(config).map_err(err)?))
}

/// Registers an empty table with `schema` (a model's planned output, so later models plan).
pub fn register_placeholder(
    ctx: &SessionContext,
    layer: &str,
    table: &str,
    schema: SchemaRef,
) -> Result<(), TransformError> {
    let reference = TableReference::partial(layer, table);
    let _ = ctx.deregister_table(reference.clone());
    let provider: Arc<dyn TableProvider> = Arc::new(
        MemTable::try_new(schema, vec![vec![]]).map_err(|e| TransformError::engine("plan", e))?,
    );
    ctx.register_table(reference, provider)
        .map_err(|e| TransformError::engine("register", e))?;
    Ok(())
}
