//! The transform layer's errors.

use sluice_core::config::ConfigError;
use sluice_core::destination::DestinationError;
use sluice_core::lake::LakeError;

#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    /// A model file, its YAML or the `pii:` section is wrong: points at file:line.
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error(transparent)]
    Destination(#[from] DestinationError),
    /// The SQL engine failed while running a model or a query.
    #[error("{context}: {message}")]
    Engine { context: String, message: String },
    #[error("cancelled")]
    Cancelled,
}

impl TransformError {
    pub fn engine(context: impl Into<String>, error: impl std::fmt::Display) -> Self {
        TransformError::Engine {
            context: context.into(),
            message: error.to_string(),
        }
    }
}
