//! The models' part of a run plan: describing each model to the plan builder in
//! sluice-core (which cannot read SQL), and running the models a plan selected.

use std::sync::Arc;

use async_trait::async_trait;
use sluice_core::destination::Destination;
use sluice_core::lake::Lake;
use sluice_core::plan::execute::{ModelRunError, ModelRunner};
use sluice_core::plan::ModelDescription;
use sluice_core::run::RunRecord;
use tokio_util::sync::CancellationToken;

use crate::error::TransformError;
use crate::project::ModelProject;
use crate::run::{run_models, ModelRunOptions};

impl ModelProject {
    /// Each model as the run plan sees it: its id, the tables its SQL reads, its
    /// checks and tags; in dependency order.
    pub fn describe(&self) -> Vec<ModelDescription> {
        self.models
            .iter()
            .map(|model| ModelDescription {
                layer: model.layer.as_str().to_string(),
                name: model.name.clone(),
                // A switched replacement's old name is read from the replacing stream.
                reads: model
                    .depends_on
                    .iter()
                    .map(|t| match self.switched_alias(&t.name) {
                        Some(alias) if t.layer == "d1" => format!("d1.{}", alias.table),
                        _ => t.to_string(),
                    })
                    .collect(),
                checks: model
                    .config
                    .checks
                    .iter()
                    .map(|c| c.display_name())
                    .collect(),
                tags: model.config.tags.clone(),
                description: model.config.description.clone(),
                engine: Some(model.engine(self.engine).name()),
            })
            .collect()
    }

    /// The project with only the models named (by id, `d2a.x`), in the same order.
    pub fn only(&self, ids: &[String]) -> ModelProject {
        let mut project = self.clone();
        project
            .models
            .retain(|m| ids.iter().any(|id| *id == m.qualified_name()));
        project
    }
}

/// Runs a plan's selected models into a lake and a destination.
pub struct ModelStage {
    pub project: ModelProject,
    pub lake: Lake,
    pub destination: Arc<dyn Destination>,
    pub options: ModelRunOptions,
}

#[async_trait]
impl ModelRunner for ModelStage {
    async fn run_models(
        &self,
        models: &[String],
        record: &mut RunRecord,
        cancel: &CancellationToken,
    ) -> Result<(), ModelRunError> {
        let selected = self.project.only(models);
        run_models(
            &selected,
            &self.lake,
            self.destination.as_ref(),
            record,
            &self.options,
            cancel,
        )
        .await
        .map_err(|e| match e {
            TransformError::Config(e) => ModelRunError::Config(Box::new(e)),
            other => ModelRunError::Failed(other.to_string()),
        })
    }
}
