//! sluice's sources: one module per system, each with its own config struct that
//! builds a [`Source`]. Adding a source type is its own module (which exports a
//! `SOURCE_TYPE`) plus one line in the [`source_types!`] list below.

use std::path::PathBuf;
use std::sync::Arc;

use sluice_core::config::{suggest, ConfigDocument, ConfigError, Section};
use sluice_core::lake::Lake;
use sluice_core::source::Source;

pub mod api_changes;
pub mod api_versions;
pub mod declared_columns;
pub mod file_changes;
pub mod http;
pub mod incremental;

/// Declares the source modules and registers the `SOURCE_TYPES` each exports.
macro_rules! source_types {
    ($($module:ident),* $(,)?) => {
        $(pub mod $module;)*
        const MODULE_SOURCE_TYPES: &[&[SourceType]] = &[$($module::SOURCE_TYPES),*];
    };
}

// One line per source module.
source_types! {
    files,
    facebook_ads,
    google_ads,
    clevertap,
    sql,
    generate,
    rest,
    command,
}

/// Every source type this build knows, in the order `validate` lists them.
pub fn source_types() -> impl Iterator<Item = &'static SourceType> {
    MODULE_SOURCE_TYPES.iter().flat_map(|types| types.iter())
}

/// A source `type:` and how to build it from its config section.
pub struct SourceType {
    pub name: &'static str,
    pub build: BuildFn,
}

/// Builds a source from `sources.<name>`; errors point at the offending key.
pub type BuildFn =
    fn(&ConfigDocument, &Section, &BuildContext) -> Result<Arc<dyn Source>, ConfigError>;

/// The usual `build`: parse the section into the connector's config struct, then
/// construct it; a construction error is placed at the key it names.
#[allow(clippy::result_large_err)] // ConfigError's size is the config module's choice.
pub(crate) fn build_from_config<C, S>(
    doc: &ConfigDocument,
    section: &Section,
    new: impl FnOnce(&str, C, &str) -> Result<S, sluice_core::source::SourceError>,
) -> Result<S, ConfigError>
where
    C: serde::de::DeserializeOwned,
{
    let config: C = doc.parse_section(section)?;
    new(&section.name, config, &section.path.join(".")).map_err(|e| error_at_key(doc, section, e))
}

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

/// Builds the source declared by `section` (`sources.<name>`).
#[allow(clippy::result_large_err)] // ConfigError's size is the config module's choice.
pub fn build_source(
    doc: &ConfigDocument,
    section: &Section,
    ctx: &BuildContext,
) -> Result<Arc<dyn Source>, ConfigError> {
    if let Some(source_type) = source_types().find(|t| t.name == section.kind) {
        return (source_type.build)(doc, section, ctx);
    }
    let names = || source_types().map(|t| t.name);
    let mut path = section.path.clone();
    path.push("type".into());
    let mut error = doc.error_at(&path, format!("unknown source type `{}`", section.kind));
    error.help = suggest(&section.kind, names())
        .map(|s| format!("did you mean `{s}`?"))
        .or_else(|| {
            Some(format!(
                "known types: {}",
                names().collect::<Vec<_>>().join(", ")
            ))
        });
    Err(error)
}
