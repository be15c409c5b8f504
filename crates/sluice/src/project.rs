//! Loading a pipeline project into the parts a command needs, and rendering config errors.

use std::path::Path;
use std::sync::Arc;

use miette::{LabeledSpan, NamedSource};
use sluice_connectors::BuildContext;
use sluice_core::config::{ConfigError, PipelineConfig};
use sluice_core::destination::Destination;
use sluice_core::drift::SchemaConfig;
use sluice_core::lake::{Lake, OpenError};
use sluice_core::replace::D1Alias;
use sluice_core::source::Source;
use sluice_core::state::StateStore;

/// A loaded pipeline: config, lake, state, destination and sources.
pub struct Project {
    pub config: PipelineConfig,
    pub lake: Lake,
    pub state: StateStore,
    pub destination: Arc<dyn Destination>,
    pub sources: Vec<Arc<dyn Source>>,
    pub schema_policy: SchemaConfig,
    /// Streams replacing others (`replaces:`), checked against the sources.
    pub aliases: Vec<D1Alias>,
}

/// Why a project could not be loaded.
pub enum LoadError {
    Config(ConfigError),
    Other(String),
}

impl LoadError {
    /// Prints the error for a person and returns the exit code.
    pub fn report(self) -> u8 {
        match self {
            LoadError::Config(e) => {
                print_config_error(&e);
                crate::exit::CONFIG
            }
            LoadError::Other(message) => {
                crate::logging::print_error!("{}", sluice_core::secret::redact(&message));
                crate::exit::CONFIG
            }
        }
    }
}

impl Project {
    pub fn load(file: &Path) -> Result<Project, LoadError> {
        let config = PipelineConfig::load(file).map_err(LoadError::Config)?;
        let lake = Lake::open_for(&config).map_err(|e| match e {
            OpenError::Config(e) => LoadError::Config(e),
            OpenError::Lake(e) => LoadError::Other(e.to_string()),
        })?;
        let state = StateStore::new(lake.clone(), &config.name);
        let destination =
            sluice_destinations::build(&config.doc, config.destination.as_ref(), &config.root)
                .map_err(LoadError::Config)?;
        let ctx = BuildContext {
            root: config.root.clone(),
            lake: lake.clone(),
        };
        let sources = config
            .sources
            .iter()
            .map(|section| sluice_connectors::build_source(&config.doc, section, &ctx))
            .collect::<Result<Vec<_>, _>>()
            .map_err(LoadError::Config)?;
        let aliases =
            sluice_core::replace::resolve(&config, &sources).map_err(LoadError::Config)?;
        destination.set_d1_aliases(&aliases);
        let schema_policy = match &config.schema {
            Some(section) => config
                .doc
                .parse_section(section)
                .map_err(LoadError::Config)?,
            None => SchemaConfig::default(),
        };
        Ok(Project {
            schema_policy,
            config,
            lake,
            state,
            destination,
            sources,
            aliases,
        })
    }
}

/// The pipeline file's config; `Err` is the exit code, the error already printed.
pub fn load_config(pipeline: &Path) -> Result<PipelineConfig, u8> {
    PipelineConfig::load(pipeline).map_err(|e| {
        print_config_error(&e);
        crate::exit::CONFIG
    })
}

/// The source section named `name`, or an error listing the sources there are.
pub fn source_section<'a>(
    config: &'a PipelineConfig,
    pipeline: &Path,
    name: &str,
) -> Option<&'a sluice_core::config::Section> {
    let found = config.sources.iter().find(|s| s.name == name);
    if found.is_none() {
        let names: Vec<&str> = config.sources.iter().map(|s| s.name.as_str()).collect();
        crate::logging::print_error!(
            "no source `{name}` in {} (sources: {})",
            pipeline.display(),
            names.join(", ")
        );
    }
    found
}

/// Renders a config error with the offending line underlined (miette), e.g.
///
/// ```text
///   × sources.facebook.streams.insights: unknown key `levle`
///    ╭─[pipeline.yaml:12:9]
///  12 │         levle: ad
///     ·         ──┬──
///     ·           ╰── did you mean `level`?
/// ```
pub fn print_config_error(error: &ConfigError) {
    if crate::logging::format() == crate::logging::LogFormat::Json {
        let line = serde_json::json!({
            "timestamp": chrono::Utc::now().to_rfc3339(),
            "level": "ERROR",
            "message": error.message,
            "file": error.file.display().to_string(),
            "line": error.position.map(|p| p.line),
            "column": error.position.map(|p| p.column),
            "key": (!error.path.is_empty()).then_some(&error.path),
            "help": error.help,
        });
        eprintln!("{line}");
        return;
    }
    // The plain one-line form first: greppable, and what non-terminal logs keep.
    crate::logging::print_error!("{error}");
    if let Some(position) = error.position {
        if !error.source_text.is_empty() {
            let offset = (position.offset as usize).min(error.source_text.len());
            let len = error.source_text[offset..]
                .find([':', '\n'])
                .unwrap_or(1)
                .max(1);
            let label = error.help.clone().unwrap_or_else(|| "here".into());
            let report = miette::miette!(
                labels = vec![LabeledSpan::at(offset..offset + len, label)],
                "{}",
                error.message
            )
            .with_source_code(NamedSource::new(
                error.file.display().to_string(),
                error.source_text.to_string(),
            ));
            eprintln!("{report:?}");
        }
    }
}

/// Prints a failure of model planning (a config error with file:line, or the lake
/// being unreadable) and returns the exit code.
pub fn report_transform_error(error: &sluice_transform::TransformError) -> u8 {
    match error {
        sluice_transform::TransformError::Config(e) => print_config_error(e),
        other => crate::logging::print_error!(
            "cannot plan the models: {}",
            sluice_core::secret::redact(&other.to_string())
        ),
    }
    crate::exit::CONFIG
}

/// The pipeline's config and lake, without building sources or the destination: what
/// commands that read history need (runs, schema, audit). `Err` is the exit code, the
/// error already printed.
pub fn config_and_lake(
    pipeline: &Path,
    load: fn(&Path) -> Result<PipelineConfig, ConfigError>,
) -> Result<(PipelineConfig, Lake), u8> {
    let config = load(pipeline).map_err(|e| {
        print_config_error(&e);
        crate::exit::CONFIG
    })?;
    let lake = open_lake(&config)?;
    Ok((config, lake))
}

/// The pipeline's lake (encrypted if it says so); `Err` is the exit code, the error
/// already printed.
pub fn open_lake(config: &PipelineConfig) -> Result<Lake, u8> {
    Lake::open_for(config).map_err(|e| {
        match e {
            OpenError::Config(e) => print_config_error(&e),
            OpenError::Lake(e) => {
                crate::logging::print_error!("{}", sluice_core::secret::redact(&e.to_string()))
            }
        }
        crate::exit::CONFIG
    })
}
