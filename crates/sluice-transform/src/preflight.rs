//! Planning every model before anything runs (`sluice validate`, and `sluice run`
//! before its first extraction): a misspelt table, column or check column is a
//! file:line error then, not a model "skipped: no data yet" after a green run.
//!
//! Each model is planned against what its inputs will be: D1 tables as the lake
//! holds them, or — for a stream that has not run yet — as its declared columns
//! say, when it declares all of them (`infer_columns: false`). A model that reads a
//! stream whose columns are not known yet is checked for its tables only.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field as ArrowField, Schema, SchemaRef};
use sluice_core::config::{suggest, ConfigError};
use sluice_core::executor::{LOADED_AT_COLUMN, RUN_ID_COLUMN};
use sluice_core::lake::Lake;
use sluice_core::schema::{Field, FieldType, TableSchema};
use sluice_core::source::StreamSpec;

use crate::catalog::{self, D1View};
use crate::checks::CheckSpec;
use crate::error::TransformError;
use crate::project::{find_ignore_case, Model, ModelProject};

/// Plans every model of `project` against the lake and the declared `streams`.
pub async fn check_models(
    project: &ModelProject,
    lake: &Lake,
    streams: &[StreamSpec],
) -> Result<(), TransformError> {
    check_switched_names(project, lake).await?;
    if project.models.is_empty() {
        return Ok(());
    }
    let ctx = catalog::session(project, lake, D1View::Policy).await?;
    let present = catalog::lake_tables(lake, "d1").await?;
    let declared: BTreeMap<&str, &StreamSpec> =
        streams.iter().map(|s| (s.table.as_str(), s)).collect();
    let mut known: BTreeSet<&str> = present.iter().map(String::as_str).collect();
    known.extend(declared.keys());
    // Models whose output columns cannot be known before the first run.
    let mut unknown_shape: BTreeSet<String> = BTreeSet::new();
    for model in &project.models {
        let mut plannable = true;
        for dep in &model.depends_on {
            if dep.layer != "d1" {
                plannable &= !unknown_shape.contains(&dep.to_string());
                continue;
            }
            if let Some(alias) = project.switched_alias(&dep.name) {
                // The session made it a view of the replacing table once that landed;
                // before, the model's columns cannot be known yet.
                plannable &= present.contains(&alias.table);
                continue;
            }
            if present.contains(&dep.name) {
                continue;
            }
            let Some(stream) = declared.get(dep.name.as_str()) else {
                let offset = find_ignore_case(&model.sql, &dep.to_string());
                let hint = match suggest(&dep.name, known.iter().copied()) {
                    Some(near) => format!("did you mean `d1.{near}`?"),
                    None => format!(
                        "the streams load: {}",
                        known
                            .iter()
                            .map(|t| format!("d1.{t}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                return Err(model
                    .sql_error(
                        offset,
                        format!("`{dep}` is not a table any stream loads; {hint}"),
                    )
                    .into());
            };
            if stream.infer_columns {
                plannable = false;
            } else {
                let schema = declared_d1_schema(&stream.schema);
                catalog::register_placeholder(&ctx, "d1", &dep.name, schema)?;
            }
        }
        if !plannable {
            unknown_shape.insert(model.qualified_name());
            continue;
        }
        let schema = crate::run::plan(&ctx, model).await?;
        check_columns(model, &schema)?;
        let read = crate::run::columns_read(&ctx, model).await;
        crate::pushdown::validate(&ctx, project, model, None, &read).await?;
        catalog::register_placeholder(&ctx, model.layer.as_str(), &model.name, schema)?;
    }
    Ok(())
}

/// A switched replacement of a stream gone from the pipeline names its D1 table only
/// by `source.stream`: a misspelt name would alias a table nothing reads while the
/// models kept reading the retired stream's data. It must name a table the lake
/// holds or a model reads.
async fn check_switched_names(project: &ModelProject, lake: &Lake) -> Result<(), TransformError> {
    let present = catalog::lake_tables(lake, "d1").await?;
    for alias in project.d1_aliases.iter().filter(|a| a.replacement.switch) {
        let read = project.models.iter().any(|m| {
            m.depends_on
                .iter()
                .any(|d| d.layer == "d1" && d.name == alias.replaced_table)
        });
        if !read && !present.contains(&alias.replaced_table) {
            let mut error = alias.stream_error(format!(
                "{} is not a stream of this pipeline, the lake holds no d1.{} and no model reads it",
                alias.replacement.replaced, alias.replaced_table
            ));
            error.help = suggest(&alias.replaced_table, present.iter().map(String::as_str))
                .map(|s| format!("the lake holds d1.{s}"));
            return Err(error.into());
        }
    }
    Ok(())
}

/// What `d1.<table>` will look like after a stream's first run: its declared
/// columns, sluice's own, and the `dt` partition.
pub(crate) fn declared_d1_schema(declared: &TableSchema) -> SchemaRef {
    let mut fields: Vec<ArrowField> = declared
        .fields
        .iter()
        .chain([
            &Field::new(RUN_ID_COLUMN, FieldType::Text),
            &Field::new(LOADED_AT_COLUMN, FieldType::Timestamp),
        ])
        .map(Field::arrow_field)
        .collect();
    fields.push(ArrowField::new("dt", DataType::Date32, true));
    Arc::new(Schema::new(fields))
}

/// Every column a check names must be a column of the model's output.
fn check_columns(model: &Model, schema: &SchemaRef) -> Result<(), ConfigError> {
    let have: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    for (i, check) in model.config.checks.iter().enumerate() {
        for column in check_columns_of(check) {
            if have.contains(&column.as_str()) {
                continue;
            }
            let hint = match suggest(&column, have.iter().copied()) {
                Some(near) => format!("did you mean `{near}`?"),
                None => format!("it has: {}", have.join(", ")),
            };
            let message = format!(
                "check `{}`: {} has no column `{column}`; {hint}",
                check.display_name(),
                model.qualified_name()
            );
            return Err(match &model.yaml {
                Some(doc) => doc.error_at(&["checks".into(), format!("[{i}]")], message),
                None => model.sql_error(None, message),
            });
        }
    }
    Ok(())
}

/// The output columns a check reads (`sql` checks are planned when they run).
fn check_columns_of(check: &CheckSpec) -> Vec<String> {
    let mut columns = Vec::new();
    for list in [&check.not_null, &check.unique].into_iter().flatten() {
        columns.extend(list.list());
    }
    columns.extend(
        [
            check.accepted_values.as_ref().map(|c| &c.column),
            check.relationships.as_ref().map(|c| &c.column),
            check.range.as_ref().map(|c| &c.column),
            check.regex.as_ref().map(|c| &c.column),
            check.not_regex.as_ref().map(|c| &c.column),
            check.freshness.as_ref().map(|c| &c.column),
        ]
        .into_iter()
        .flatten()
        .cloned(),
    );
    columns
}
