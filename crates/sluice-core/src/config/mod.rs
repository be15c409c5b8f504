//! The pipeline file: parsing, `${…}` interpolation, validation with file:line:col errors.
//!
//! The top level (`name`, `lake`, `destination`, `sources`, …) is typed here. Each
//! source and the destination is a [`Section`]: its `type` plus the rest of its
//! YAML, which the connector that owns that type deserialises into its own config
//! struct through [`ConfigDocument::parse_section`]. That keeps each connector's
//! options in its own module while every error still points at the exact line.

mod interpolate;
mod locate;
mod replaces;
mod schedule;
mod targets;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml::Value;

pub use interpolate::{expand, EnvLookup, Lookup};
pub use locate::{join_path, Position, SpanMap};
pub use replaces::{Replacement, StreamRef};
pub use schedule::{CatchUp, Schedule};
pub use targets::{Sample, Target, TARGET_VAR};

/// A config error a user can act on: where it is, what is wrong, what to write instead.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub file: PathBuf,
    pub position: Option<Position>,
    /// The YAML path of the offending key, e.g. `sources.facebook.streams.insights.level`.
    pub path: String,
    pub message: String,
    /// A suggestion such as "did you mean `level`?".
    pub help: Option<String>,
    /// The whole file, so the CLI can show the offending line.
    pub source_text: Arc<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(p) = self.position {
            write!(f, ":{}:{}", p.line, p.column)?;
        }
        write!(f, ": ")?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{}", self.message)?;
        if let Some(help) = &self.help {
            write!(f, " ({help})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// The parsed file and what is needed to point at places in it.
#[derive(Debug, Clone)]
pub struct ConfigDocument {
    pub file: PathBuf,
    pub text: Arc<String>,
    spans: Arc<SpanMap>,
}

impl ConfigDocument {
    pub fn new(file: PathBuf, text: String) -> Self {
        let spans = SpanMap::build(&text);
        ConfigDocument {
            file,
            text: Arc::new(text),
            spans: Arc::new(spans),
        }
    }

    /// An error at a YAML path.
    pub fn error_at(&self, path: &[String], message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            position: self.spans.locate(path),
            path: join_path(path),
            message: message.into(),
            help: None,
            source_text: self.text.clone(),
        }
    }

    /// A YAML syntax error at its line and column; a tab in an indentation is named
    /// as the cause (YAML indents with spaces only).
    pub fn yaml_error(&self, e: &serde_yaml::Error) -> ConfigError {
        let mut error = self.error_at(&[], format!("invalid YAML: {e}"));
        let at = |line: u32, column: u32| Position {
            line,
            column,
            offset: locate::byte_offset(&self.text, line, column) as u32,
        };
        if let Some(loc) = e.location() {
            error.position = Some(at(loc.line() as u32, loc.column() as u32));
        }
        let tabbed = self.text.lines().enumerate().find_map(|(n, line)| {
            let indent = &line[..line.len() - line.trim_start().len()];
            indent
                .find('\t')
                .map(|i| (n as u32 + 1, indent[..i].chars().count() as u32 + 1))
        });
        if let Some((line, column)) = tabbed {
            error.message = format!(
                "invalid YAML: line {line} is indented with a tab; YAML indents with spaces only ({e})"
            );
            error.position = Some(at(line, column));
            error.help = Some("replace the tab with spaces".into());
        }
        error
    }

    /// Deserialises a section (a source, the destination, …) into the owner's typed config.
    pub fn parse_section<T: DeserializeOwned>(&self, section: &Section) -> Result<T, ConfigError> {
        self.deserialize_at(section.body.clone(), &section.path)
    }

    /// Deserialises `value`, found at `base` in the file, reporting errors at their exact place.
    pub fn deserialize_at<T: DeserializeOwned>(
        &self,
        value: Value,
        base: &[String],
    ) -> Result<T, ConfigError> {
        serde_path_to_error::deserialize(value).map_err(|err| {
            let mut path = base.to_vec();
            for segment in err.path().iter() {
                use serde_path_to_error::Segment;
                match segment {
                    Segment::Seq { index } => path.push(format!("[{index}]")),
                    Segment::Map { key } | Segment::Enum { variant: key } => path.push(key.clone()),
                    Segment::Unknown => {}
                }
            }
            let message = err.inner().to_string();
            let mut help = None;
            if let Some((field, expected)) = parse_unknown_field(&message) {
                if path.last() != Some(&field) {
                    path.push(field.clone());
                }
                help = suggest(&field, expected.iter().map(String::as_str))
                    .map(|s| format!("did you mean `{s}`?"))
                    .or_else(|| {
                        (!expected.is_empty())
                            .then(|| format!("valid keys here: {}", expected.join(", ")))
                    });
            }
            let mut error = self.error_at(&path, tidy_serde_message(&message));
            error.help = help;
            error
        })
    }
}

/// Extracts `field` and the expected names from serde's "unknown field `x`, expected one of `a`, `b`".
fn parse_unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("unknown variant `"))?;
    let (field, rest) = rest.split_once('`')?;
    let expected = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    Some((field.to_string(), expected))
}

fn tidy_serde_message(message: &str) -> String {
    if let Some((field, _)) = parse_unknown_field(message) {
        let what = if message.starts_with("unknown variant") {
            "value"
        } else {
            "key"
        };
        return format!("unknown {what} `{field}`");
    }
    message.to_string()
}

/// The closest candidate to `word`, if it is close enough to be a likely typo.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(distance, c)| *distance <= 2.max(c.len() / 3))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, c)| c.to_string())
}

/// One source or the destination: its `type` and the rest of its options.
#[derive(Debug, Clone)]
pub struct Section {
    /// The name the user gave it (`facebook` in `sources.facebook`), or `destination`.
    pub name: String,
    pub kind: String,
    /// Where it is in the file: `["sources", "facebook"]`.
    pub path: Vec<String>,
    /// Its options without `type`.
    pub body: Value,
}

/// How runs execute.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecutionConfig {
    /// Tasks (stream extractions and loads) running at once across the pipeline.
    pub concurrency: usize,
    /// Attempts after the first for a task that failed with a transient error.
    pub retries: u32,
    /// First back-off delay in milliseconds; it doubles, with jitter, up to `max_backoff_ms`.
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
}

impl Default for ExecutionConfig {
    fn default() -> Self {
        ExecutionConfig {
            concurrency: 4,
            retries: 3,
            initial_backoff_ms: 500,
            max_backoff_ms: 30_000,
        }
    }
}

/// The top level of `pipeline.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    name: String,
    #[serde(default = "default_lake")]
    lake: String,
    #[serde(default)]
    lake_encryption: Option<Value>,
    #[serde(default)]
    destination: Option<Value>,
    #[serde(default)]
    sources: BTreeMap<String, Value>,
    #[serde(default)]
    execution: ExecutionConfig,
    #[serde(default)]
    models: Option<ModelsSetting>,
    #[serde(default)]
    schedule: Option<Value>,
    #[serde(default)]
    alerts: Option<Value>,
    #[serde(default)]
    serve: Option<Value>,
    #[serde(default)]
    pii: Option<Value>,
    #[serde(default)]
    schema: Option<Value>,
    #[serde(default)]
    lineage: Option<Value>,
    #[serde(default)]
    docs: DocsConfig,
}

/// `models:`: the folder (`models: ./models`), or the folder and the engine
/// (`models: { path: ./models, engine: destination }`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum ModelsSetting {
    Path(String),
    Detailed(ModelsConfig),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelsConfig {
    /// The models folder (default `./models`).
    #[serde(default)]
    path: Option<String>,
    /// Where the models' SQL runs (default `local`).
    #[serde(default)]
    engine: ModelEngine,
}

/// Where models run: `local` (in-process DataFusion over the lake, the default) or
/// `destination` (the same SQL, unparsed to the warehouse's dialect, run inside it
/// over its published tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelEngine {
    #[default]
    Local,
    Destination,
}

impl ModelEngine {
    pub fn name(self) -> &'static str {
        match self {
            ModelEngine::Local => "local",
            ModelEngine::Destination => "destination",
        }
    }
}

/// `docs:`: what the generated documentation demands of the project.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocsConfig {
    /// `sluice validate` fails, naming file:line, on a model or a model's output column
    /// without a description (from its `.yml`, or a `--` comment in its SQL).
    #[serde(default)]
    pub require_descriptions: bool,
}

fn default_lake() -> String {
    "./lake".to_string()
}

/// A validated pipeline: typed top level plus the sections its parts will parse.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub doc: ConfigDocument,
    /// The folder the pipeline file is in; relative paths are resolved against it.
    pub root: PathBuf,
    pub name: String,
    /// Lake location: a local path (relative to `root`) or an object-store URL.
    pub lake: String,
    /// Where the lake's master key comes from, when the lake is encrypted (parsed by
    /// [`crate::lake::configured_master_key`]).
    pub lake_encryption: Option<Section>,
    /// `None` means the embedded default, SQLite at `<root>/warehouse.db`.
    pub destination: Option<Section>,
    pub sources: Vec<Section>,
    /// Streams' `replaces:` (taken out of their sources' YAML; see [`Replacement`]).
    pub replacements: Vec<Replacement>,
    pub execution: ExecutionConfig,
    pub models: Option<PathBuf>,
    /// `models.engine`: where models run unless a model's YAML says otherwise.
    pub models_engine: ModelEngine,
    /// When `sluice serve` runs the pipeline (and the exported DAG / CronJob).
    pub schedule: Option<Schedule>,
    /// Where failures are announced (parsed by the binary's alerts module).
    pub alerts: Option<Section>,
    /// `sluice serve`'s options, e.g. API tokens (parsed by the binary's server module).
    pub serve: Option<Section>,
    pub pii: Option<Section>,
    pub schema: Option<Section>,
    /// Where OpenLineage run events go (parsed by the binary's lineage module).
    pub lineage: Option<Section>,
    /// What the generated documentation demands (`docs:`).
    pub docs: DocsConfig,
    /// The `targets:` entry in effect (`--target`), whose `lake`/`destination` replaced the top level's.
    pub target: Option<String>,
    /// The target's sample window: runs read only its last days (see `targets`).
    pub sample: Option<Sample>,
}

/// Marks where an unset variable was used, for [`PipelineConfig::load_for_inspection`].
const UNSET_MARK: &str = "\u{0}unset:";

/// The variable a value read by [`PipelineConfig::load_for_inspection`] needed and
/// did not get, if any.
pub(crate) fn unset_variable(value: &str) -> Option<String> {
    let start = value.find(UNSET_MARK)?;
    Some(
        value[start + UNSET_MARK.len()..]
            .chars()
            .take_while(|c| *c != '\u{0}')
            .collect(),
    )
}

struct UnsetAsMark(EnvLookup);

impl Lookup for UnsetAsMark {
    fn var(&self, name: &str) -> Option<String> {
        Some(
            self.0
                .var(name)
                .unwrap_or_else(|| format!("{UNSET_MARK}{name}\u{0}")),
        )
    }
}

impl PipelineConfig {
    /// Reads and validates `file`; `.env` beside it is read if present.
    pub fn load(file: &Path) -> Result<PipelineConfig, ConfigError> {
        Self::load_with(file, false)
    }

    /// Reads `file` for commands that only look at what runs left behind (`runs`,
    /// `schema`, `query`): a variable that is not set (a credential absent on an
    /// operator's laptop) is not an error, unless the lake location needs it.
    pub fn load_for_inspection(file: &Path) -> Result<PipelineConfig, ConfigError> {
        let config = Self::load_with(file, true)?;
        if let Some(name) = unset_variable(&config.lake) {
            return Err(config.doc.error_at(
                &["lake".into()],
                format!("environment variable {name} is not set (the lake location needs it)"),
            ));
        }
        Ok(config)
    }

    fn load_with(file: &Path, lenient: bool) -> Result<PipelineConfig, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.to_path_buf(),
            position: None,
            path: String::new(),
            message: format!("cannot read pipeline file: {e}"),
            help: Some("run `sluice init` to create one".into()),
            source_text: Arc::new(String::new()),
        })?;
        let root = file
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        let dotenv = read_dotenv(&root.join(".env"));
        let env = EnvLookup { dotenv };
        if lenient {
            Self::parse(file.to_path_buf(), text, &root, &UnsetAsMark(env))
        } else {
            Self::parse(file.to_path_buf(), text, &root, &env)
        }
    }

    /// Parses pipeline text (the file name is only used in messages).
    pub fn parse(
        file: PathBuf,
        text: String,
        root: &Path,
        lookup: &dyn Lookup,
    ) -> Result<PipelineConfig, ConfigError> {
        let doc = ConfigDocument::new(file, text);
        let mut value: Value = serde_yaml::from_str(&doc.text).map_err(|e| doc.yaml_error(&e))?;
        // Targets are read apart: only the chosen one's variables are interpolated.
        let targets = match &mut value {
            Value::Mapping(map) => map.remove("targets"),
            _ => None,
        };
        interpolate::interpolate(&mut value, lookup, root, &mut Vec::new())
            .map_err(|e| doc.error_at(&e.path, e.message))?;
        let mut raw: RawPipeline = doc.deserialize_at(value, &[])?;
        let target_name = lookup
            .var(TARGET_VAR)
            .filter(|v| !v.is_empty() && !v.starts_with(UNSET_MARK));
        let target = targets::select(&doc, targets, target_name.as_deref(), lookup, root)?;
        let mut destination_path = vec!["destination".to_string()];
        let mut lake_encryption_path = vec!["lake_encryption".to_string()];
        if let Some((name, target)) = &target {
            if let Some(lake) = &target.lake {
                raw.lake = lake.clone();
            }
            if let Some(encryption) = &target.lake_encryption {
                raw.lake_encryption = Some(encryption.clone());
                lake_encryption_path =
                    vec!["targets".into(), name.clone(), "lake_encryption".into()];
            }
            if let Some(destination) = &target.destination {
                raw.destination = Some(destination.clone());
                destination_path = vec!["targets".into(), name.clone(), "destination".into()];
            }
        }

        if raw.name.trim().is_empty() {
            return Err(doc.error_at(&["name".into()], "the pipeline needs a name"));
        }
        let section =
            |name: &str, path: Vec<String>, body: Value| -> Result<Section, ConfigError> {
                let Value::Mapping(mut map) = body else {
                    return Err(doc.error_at(&path, "expected a mapping with a `type` key"));
                };
                let kind = match map.remove("type") {
                    Some(Value::String(kind)) => kind,
                    Some(_) => return Err(doc.error_at(&path, "`type` must be a string")),
                    None => return Err(doc.error_at(&path, "missing `type`")),
                };
                Ok(Section {
                    name: name.to_string(),
                    kind,
                    path,
                    body: Value::Mapping(map),
                })
            };
        let destination = raw
            .destination
            .map(|v| section("destination", destination_path, v))
            .transpose()?;
        let mut sources = raw
            .sources
            .into_iter()
            .map(|(name, v)| {
                if !is_identifier(&name) {
                    return Err(doc.error_at(
                        &["sources".into(), name.clone()],
                        "source names may use lowercase letters, digits and `_` (they become table names)",
                    ));
                }
                section(&name, vec!["sources".into(), name.clone()], v)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let replacements = replaces::extract(&doc, &mut sources)?;
        let schedule = raw.schedule.map(|v| Schedule::parse(&doc, v)).transpose()?;
        let untyped = |key: &str, v: Value| Section {
            name: key.to_string(),
            kind: key.to_string(),
            path: vec![key.to_string()],
            body: v,
        };
        Ok(PipelineConfig {
            root: root.to_path_buf(),
            name: raw.name,
            lake: raw.lake,
            lake_encryption: raw.lake_encryption.map(|body| Section {
                name: "lake_encryption".into(),
                kind: "lake_encryption".into(),
                path: lake_encryption_path,
                body,
            }),
            destination,
            sources,
            replacements,
            execution: raw.execution,
            models_engine: match &raw.models {
                Some(ModelsSetting::Detailed(m)) => m.engine,
                _ => ModelEngine::Local,
            },
            models: raw.models.and_then(|m| match m {
                ModelsSetting::Path(p) => Some(root.join(p)),
                ModelsSetting::Detailed(m) => m.path.map(|p| root.join(p)),
            }),
            schedule,
            alerts: raw.alerts.map(|v| untyped("alerts", v)),
            serve: raw.serve.map(|v| untyped("serve", v)),
            pii: raw.pii.map(|v| untyped("pii", v)),
            schema: raw.schema.map(|v| untyped("schema", v)),
            lineage: raw.lineage.map(|v| untyped("lineage", v)),
            docs: raw.docs,
            sample: target.as_ref().and_then(|(_, t)| t.sample),
            target: target.map(|(name, _)| name),
            doc,
        })
    }

    pub fn source(&self, name: &str) -> Option<&Section> {
        self.sources.iter().find(|s| s.name == name)
    }
}

/// Names that become table names: `[a-z][a-z0-9_]*`.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn read_dotenv(path: &Path) -> Vec<(String, String)> {
    match dotenvy::from_path_iter(path) {
        Ok(iter) => iter.filter_map(Result::ok).collect(),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoEnv;
    impl Lookup for NoEnv {
        fn var(&self, name: &str) -> Option<String> {
            (name == "DB_PASSWORD").then(|| "s3cr3t-pw".to_string())
        }
    }

    fn parse(text: &str) -> Result<PipelineConfig, ConfigError> {
        PipelineConfig::parse("pipeline.yaml".into(), text.into(), Path::new("."), &NoEnv)
    }

    #[test]
    fn inspection_needs_no_credentials_but_does_need_the_lake() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pipeline.yaml");
        let source = "sources:\n  fb: { type: facebook_ads, access_token: \"${SLUICE_TEST_UNSET_TOKEN}\" }\n";
        std::fs::write(&file, format!("name: m\nlake: ./lake\n{source}")).unwrap();
        assert!(PipelineConfig::load(&file).is_err());
        let config = PipelineConfig::load_for_inspection(&file).unwrap();
        assert_eq!(config.lake, "./lake");

        std::fs::write(
            &file,
            format!("name: m\nlake: \"${{SLUICE_TEST_UNSET_LAKE}}\"\n{source}"),
        )
        .unwrap();
        let err = PipelineConfig::load_for_inspection(&file).unwrap_err();
        assert!(
            err.to_string()
                .contains("SLUICE_TEST_UNSET_LAKE is not set"),
            "{err}"
        );
        assert_eq!(err.path, "lake");
    }

    #[test]
    fn misspelt_top_level_key_names_line_column_and_suggestion() {
        let err = parse("name: m\nsourcse: {}\n").unwrap_err();
        assert_eq!(err.position.map(|p| (p.line, p.column)), Some((2, 1)));
        assert!(err.to_string().contains("unknown key `sourcse`"), "{err}");
        assert_eq!(err.help.as_deref(), Some("did you mean `sources`?"));
        assert!(err.to_string().starts_with("pipeline.yaml:2:1:"), "{err}");
    }

    #[test]
    fn sections_are_parsed_by_their_owner_with_exact_locations() {
        #[derive(Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Files {
            path: String,
            #[serde(default)]
            format: Option<String>,
        }
        let cfg =
            parse("name: m\nsources:\n  shop:\n    type: files\n    path: x\n    fromat: csv\n")
                .unwrap();
        let section = cfg.source("shop").unwrap();
        assert_eq!(section.kind, "files");
        let err = cfg.doc.parse_section::<Files>(section).unwrap_err();
        assert_eq!(err.position.map(|p| (p.line, p.column)), Some((6, 5)));
        assert_eq!(err.path, "sources.shop.fromat");
        assert_eq!(err.help.as_deref(), Some("did you mean `format`?"));
    }

    #[test]
    fn interpolation_errors_point_at_the_value() {
        let err = parse("name: m\ndestination:\n  type: postgres\n  url: ${NOPE}\n").unwrap_err();
        assert_eq!(err.position.map(|p| p.line), Some(4));
        assert!(err.message.contains("NOPE is not set"));
        let ok = parse(
            "name: m\ndestination:\n  type: postgres\n  url: postgres://u:${DB_PASSWORD}@h/db\n",
        )
        .unwrap();
        let url = ok.destination.unwrap().body["url"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(url, "postgres://u:s3cr3t-pw@h/db");
    }

    #[test]
    fn a_targets_lake_encryption_replaces_the_top_levels_and_is_located_there() {
        struct Prod;
        impl Lookup for Prod {
            fn var(&self, name: &str) -> Option<String> {
                (name == TARGET_VAR).then(|| "prod".to_string())
            }
        }
        let text = "name: m\nlake_encryption: { master_key: dev-key }\ntargets:\n  prod:\n    lake: s3://b/p\n    lake_encryption: { key_command: [vault, read] }\n";
        let config =
            PipelineConfig::parse("pipeline.yaml".into(), text.into(), Path::new("."), &Prod)
                .unwrap();
        let section = config.lake_encryption.unwrap();
        assert_eq!(section.path, ["targets", "prod", "lake_encryption"]);
        assert!(section.body.get("key_command").is_some());
        let default = parse(text).unwrap().lake_encryption.unwrap();
        assert_eq!(default.path, ["lake_encryption"]);
    }

    #[test]
    fn wrong_types_are_reported_at_their_key() {
        let err = parse("name: m\nexecution:\n  concurrency: lots\n").unwrap_err();
        assert_eq!(err.path, "execution.concurrency");
        assert_eq!(err.position.map(|p| p.line), Some(3));
    }
}
