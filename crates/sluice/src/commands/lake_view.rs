//! What the commands that read the lake without running anything (`query`, `show`,
//! `compile`, `quarantine`) share: the models as the lake's tables show them, with
//! every personal column the schema registry ever recorded, so the `pii:` policy
//! holds even when the sources cannot be built. (`test` and `ls` need the run plan,
//! so they load the whole project, and add the same marks.)

use std::path::Path;

use sluice_core::lake::Lake;
use sluice_core::state::StateStore;
use sluice_transform::{Model, ModelProject};

use crate::exit;

/// The pipeline's lake and models, ready for queries over the lake.
pub struct LakeView {
    pub lake: Lake,
    pub models: ModelProject,
    /// The pipeline's `name` (its state and audit log in the lake).
    pub pipeline: String,
}

impl LakeView {
    /// Loads the pipeline; `Err` is the exit code of an error already printed.
    pub async fn open(pipeline: &Path) -> Result<LakeView, u8> {
        let config = crate::project::load_config(pipeline)?;
        let models = match ModelProject::load(&config) {
            // Merge tables show one row per key, as models see them: that needs the
            // streams' keys (when the sources cannot be built, tables show as stored).
            Ok(m) => match crate::project::Project::load(pipeline) {
                Ok(project) => m
                    .with_streams(project.sources.iter().flat_map(|s| s.streams()))
                    .with_aliases(project.aliases),
                Err(_) => {
                    // Which D1 table a switched replacement aliases is known from the
                    // built sources only: say so rather than show the old data silently.
                    for r in config.replacements.iter().filter(|r| r.switch) {
                        tracing::warn!(
                            "{} is switched to {}, but the sources cannot be built here to resolve it: its D1 name shows what {} last landed",
                            r.replaced,
                            r.by,
                            r.replaced
                        );
                    }
                    m
                }
            },
            Err(e) => {
                crate::project::print_config_error(&e);
                return Err(exit::CONFIG);
            }
        };
        let lake = crate::project::open_lake(&config)?;
        let models = match with_registered_marks(models, &lake, &config.name).await {
            Ok(m) => m,
            Err(e) => {
                crate::logging::print_error!("{}", sluice_core::secret::redact(&e));
                return Err(exit::RUN_FAILED);
            }
        };
        Ok(LakeView {
            lake,
            models,
            pipeline: config.name.clone(),
        })
    }
}

/// Adds the personal columns the schema registry recorded for every D1 table in the
/// lake, in any version: PII marks then hold even when the sources cannot be built
/// (an unset credential, an edited `pii:` list) to say which columns are personal.
pub async fn with_registered_marks(
    mut models: ModelProject,
    lake: &Lake,
    pipeline: &str,
) -> Result<ModelProject, String> {
    let state = StateStore::new(lake.clone(), pipeline);
    let tables = sluice_transform::catalog::lake_tables(lake, "d1")
        .await
        .map_err(|e| e.to_string())?;
    for table in tables {
        let history = state
            .schema_history(&table)
            .await
            .map_err(|e| format!("cannot read the schema registry of {table}: {e}"))?;
        let marked: Vec<String> = history
            .iter()
            .flat_map(|v| v.value.fields.iter())
            .filter(|f| f.pii)
            .map(|f| f.name.clone())
            .collect();
        if !marked.is_empty() {
            models.mark_pii(&table, marked);
        }
    }
    Ok(models)
}

/// The model `name` names (`orders_clean` or `d2a.orders_clean`); otherwise an
/// error naming the nearest model and the ones that exist.
pub fn find_model<'a>(models: &'a ModelProject, name: &str) -> Result<&'a Model, String> {
    let found = match name.split_once('.') {
        Some((layer, bare)) => models.model(layer, bare),
        None => models.models.iter().find(|m| m.name == name),
    };
    if let Some(model) = found {
        return Ok(model);
    }
    if models.models.is_empty() {
        return Err(format!(
            "no model `{name}`: the project has no models (add SQL files under {}/d2a or d2b)",
            models.dir.display()
        ));
    }
    let ids: Vec<String> = models.models.iter().map(|m| m.qualified_name()).collect();
    let bare: Vec<&str> = models.models.iter().map(|m| m.name.as_str()).collect();
    let nearest =
        sluice_core::config::suggest(name, ids.iter().map(String::as_str)).or_else(|| {
            sluice_core::config::suggest(name, bare.iter().copied()).and_then(|b| {
                ids.iter()
                    .find(|id| id.ends_with(&format!(".{b}")))
                    .cloned()
            })
        });
    let hint = nearest
        .map(|n| format!("; did you mean `{n}`?"))
        .unwrap_or_default();
    Err(format!(
        "no model `{name}`{hint} (models: {})",
        ids.join(", ")
    ))
}
