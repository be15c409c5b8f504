//! sluice's sources: one module per system, each with its own config struct that
//! builds a [`Source`]. Adding a connector touches its own module plus one line in
//! [`build_source`].

use std::path::PathBuf;
use std::sync::Arc;

use sluice_core::config::{suggest, ConfigDocument, ConfigError, Section};
use sluice_core::lake::Lake;
use sluice_core::source::Source;

pub mod api_versions;
pub mod clevertap;
pub mod facebook_ads;
pub mod file_changes;
pub mod files;
pub mod google_ads;
pub mod http;
pub mod sql;

/// A connector's construction error, placed at the key it names under `section`
/// (`sources.google.oauth.refresh_token`), or at the section itself.
#[allow(clippy::result_large_err)] // ConfigError's size is the config module's choice.
pub(crate) fn error_at_key(
    doc: &ConfigDocument,
    section: &Section,
    e: sluice_core::source::SourceError,
) -> ConfigError {
    let prefix = format!("{}.", section.path.join("."));
    let mut path = section.path.clone();
    if let Some(rest) = e
        .config_key
        .as_deref()
        .and_then(|k| k.strip_prefix(prefix.as_str()))
    {
        path.extend(rest.split('.').map(String::from));
    }
    doc.error_at(&path, e.message)
}

/// What a connector may need from the pipeline while it is built.
#[derive(Clone, Debug)]
pub struct BuildContext {
    /// The pipeline's folder: relative paths in config are resolved against it.
    pub root: PathBuf,
    pub lake: Lake,
}

/// Source `type`s this build knows, for validation messages.
pub const SOURCE_TYPES: &[&str] = &[
    "files",
    "facebook_ads",
    "google_ads",
    "clevertap",
    "postgres",
    "mysql",
];

/// Builds the source declared by `section` (`sources.<name>`).
pub fn build_source(
    doc: &ConfigDocument,
    section: &Section,
    ctx: &BuildContext,
) -> Result<Arc<dyn Source>, ConfigError> {
    match section.kind.as_str() {
        "files" => Ok(Arc::new(files::FilesSource::build(doc, section, ctx)?)),
        "facebook_ads" => Ok(Arc::new(facebook_ads::FacebookSource::build(
            doc, section, ctx,
        )?)),
        "google_ads" => Ok(Arc::new(google_ads::GoogleSource::build(
            doc, section, ctx,
        )?)),
        "clevertap" => Ok(Arc::new(clevertap::CleverTapSource::build(
            doc, section, ctx,
        )?)),
        "postgres" | "mysql" => Ok(Arc::new(sql::SqlSource::build(doc, section, ctx)?)),
        other => {
            let mut path = section.path.clone();
            path.push("type".into());
            let mut error = doc.error_at(&path, format!("unknown source type `{other}`"));
            error.help = suggest(other, SOURCE_TYPES.iter().copied())
                .map(|s| format!("did you mean `{s}`?"))
                .or_else(|| Some(format!("known types: {}", SOURCE_TYPES.join(", "))));
            Err(error)
        }
    }
}
