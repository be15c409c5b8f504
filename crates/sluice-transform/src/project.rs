//! Loading a model project: `models/d2a/*.sql`, `models/d2b/*.sql`, optional YAML beside each.
//!
//! Dependencies are read from each model's table references (`d1.facebook_insights`,
//! `d2a.ad_performance_daily`), never wired by hand, and the models are ordered so
//! each runs after what it reads. Syntax errors, unknown or unqualified references
//! and cycles are reported here with file:line, before anything runs; errors that
//! need the data's schemas (an unknown column) are found when [`crate::run`] plans
//! every model before running the first one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::sql::parser::DFParser;
use datafusion::sql::resolve::resolve_table_references;
use serde::Deserialize;
use sluice_core::config::{ConfigDocument, ConfigError, ModelEngine, PipelineConfig, Position};
use sluice_core::destination::WriteMode;
use sluice_core::source::StreamSpec;

use crate::checks::CheckSpec;
use crate::functions::CurrencyRates;
use crate::pii::PiiPolicy;

/// A transform layer a model writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Layer {
    D2a,
    D2b,
}

impl Layer {
    pub fn as_str(&self) -> &'static str {
        match self {
            Layer::D2a => "d2a",
            Layer::D2b => "d2b",
        }
    }
}

/// How a model's output replaces the previous one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Materialization {
    /// Rebuilt whole on every run.
    #[default]
    Table,
    /// Only the `partition_by` dates touched by this run's new upstream data are
    /// recomputed and overwritten (in the lake and the destination).
    Incremental,
}

/// `<model>.yml`: everything optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// What the table is, for people (docs, the dashboard).
    #[serde(default)]
    pub description: Option<String>,
    /// `table` (default) or `incremental`.
    #[serde(default)]
    pub materialized: Materialization,
    /// A date column of the output: the lake's `dt=` folders and the unit of incremental
    /// recompute and of partition overwrite in the destination. Required for `incremental`.
    #[serde(default)]
    pub partition_by: Option<String>,
    /// Columns that identify a row (documentation, and the destination's key).
    #[serde(default)]
    pub primary_key: Vec<String>,
    /// The destination table name (default: the model's file name).
    #[serde(default)]
    pub table: Option<String>,
    /// Column descriptions.
    #[serde(default)]
    pub columns: BTreeMap<String, ColumnDoc>,
    /// Data-quality checks run on the output before it is published.
    #[serde(default)]
    pub checks: Vec<CheckSpec>,
    /// Labels for `--select tag:<tag>` (e.g. `finance`, `nightly`).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Where this model runs, over the pipeline's `models.engine`: `local` (DataFusion
    /// in sluice) or `destination` (inside the warehouse, see [`crate::pushdown`]).
    #[serde(default)]
    pub engine: Option<ModelEngine>,
}

/// A column's documentation.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnDoc {
    #[serde(default)]
    pub description: Option<String>,
}

/// A table a model reads: `d1.x`, `d2a.y` or `d2b.z`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableRef {
    pub layer: String,
    pub name: String,
}

impl std::fmt::Display for TableRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.layer, self.name)
    }
}

/// One SQL model.
#[derive(Debug, Clone)]
pub struct Model {
    pub layer: Layer,
    /// The file name without `.sql`; the lake table is `<layer>/<name>/`.
    pub name: String,
    pub sql_path: PathBuf,
    pub sql: Arc<String>,
    pub config: ModelConfig,
    /// Where `config` came from, to point check errors at their line.
    pub yaml: Option<ConfigDocument>,
    /// Tables it reads, from its SQL.
    pub depends_on: Vec<TableRef>,
}

impl Model {
    /// `d2a.ad_performance_daily`.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.layer.as_str(), self.name)
    }

    /// Where the model runs: its own `engine:`, else the project's (`project_engine`).
    pub fn engine(&self, project_engine: ModelEngine) -> ModelEngine {
        self.config.engine.unwrap_or(project_engine)
    }

    /// The destination table name.
    pub fn table_name(&self) -> &str {
        self.config.table.as_deref().unwrap_or(&self.name)
    }

    /// What the table is: its YAML's `description:`, else the `--` comment lines its
    /// SQL starts with.
    pub fn description(&self) -> Option<String> {
        if let Some(text) = self
            .config
            .description
            .as_ref()
            .filter(|t| !t.trim().is_empty())
        {
            return Some(text.trim().to_string());
        }
        let comment: Vec<&str> = self
            .sql
            .lines()
            .map(str::trim)
            .take_while(|l| l.starts_with("--"))
            .map(|l| l.trim_start_matches('-').trim())
            .filter(|l| !l.is_empty())
            .collect();
        (!comment.is_empty()).then(|| comment.join(" "))
    }

    /// What output `column` holds: its YAML's `columns.<name>.description`, else the
    /// `--` comment ending the SQL line that names it last (`sum(x) AS total, -- why`).
    pub fn column_description(&self, column: &str) -> Option<String> {
        if let Some(text) = self
            .config
            .columns
            .get(column)
            .and_then(|c| c.description.as_ref())
            .filter(|t| !t.trim().is_empty())
        {
            return Some(text.trim().to_string());
        }
        sql_column_line(&self.sql, column)
            .and_then(|(_, comment)| comment)
            .map(str::to_string)
    }

    /// Where the SQL names output `column` (the line ending with it), else its first mention.
    pub fn column_offset(&self, column: &str) -> Option<usize> {
        sql_column_line(&self.sql, column)
            .map(|(offset, _)| offset)
            .or_else(|| find_ignore_case(&self.sql, column))
    }

    /// With `docs.require_descriptions`: an error (file:line) for the model, if it has no
    /// description, and for each of `columns` (its output columns) without one.
    pub fn missing_descriptions<'c>(
        &self,
        columns: impl IntoIterator<Item = &'c str>,
    ) -> Vec<ConfigError> {
        let mut out = Vec::new();
        let yml = self
            .yaml
            .as_ref()
            .map(|d| d.file.clone())
            .unwrap_or_else(|| self.sql_path.with_extension("yml"));
        let yml_name = yml
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        if self.description().is_none() {
            let message = format!(
                "model {} has no description: add `description:` to {yml_name}, or start the SQL with a `--` comment",
                self.qualified_name()
            );
            out.push(match &self.yaml {
                Some(doc) => {
                    let mut error = doc.error_at(&[], message);
                    error.position = Some(Position {
                        line: 1,
                        column: 1,
                        offset: 0,
                    });
                    error
                }
                None => self.sql_error(Some(0), message),
            });
        }
        for column in columns {
            if self.column_description(column).is_none() {
                out.push(self.sql_error(
                    self.column_offset(column),
                    format!(
                        "column `{column}` of model {} has no description: add `columns: {{ {column}: {{ description: … }} }}` to {yml_name}, or end the line that names it with a `--` comment",
                        self.qualified_name()
                    ),
                ));
            }
        }
        out
    }

    /// An error in this model's SQL at a byte offset (or at the top of the file).
    pub fn sql_error(&self, offset: Option<usize>, message: impl Into<String>) -> ConfigError {
        sql_error(&self.sql_path, &self.sql, offset, message)
    }
}

/// What sluice knows about a D1 table from its stream: key, write mode, PII marks.
#[derive(Debug, Clone)]
pub struct D1Table {
    pub primary_key: Vec<String>,
    pub write_mode: WriteMode,
    /// Whether the table has a partition column (its `dt` is data, not the load date).
    pub partitioned: bool,
    /// That column, whose date is the table's `dt`.
    pub partition_column: Option<String>,
    /// Columns the connector marked as personal data.
    pub pii_columns: Vec<String>,
}

/// The models of a pipeline, in run order, with the policy and functions they use.
#[derive(Debug, Clone)]
pub struct ModelProject {
    pub dir: PathBuf,
    /// In dependency order: every model comes after the models it reads.
    pub models: Vec<Model>,
    pub pii: PiiPolicy,
    pub rates: CurrencyRates,
    /// D1 tables by name; see [`ModelProject::with_streams`].
    pub d1_tables: BTreeMap<String, D1Table>,
    /// Streams replacing others (`replaces:`); switched ones make the replaced D1
    /// name read the replacing table (see [`ModelProject::with_aliases`]).
    pub d1_aliases: Vec<sluice_core::replace::D1Alias>,
    /// Retries and back-off of model publishes (the pipeline's `execution:`).
    pub execution: sluice_core::config::ExecutionConfig,
    /// `models.engine`: where models without their own `engine:` run.
    pub engine: ModelEngine,
}

impl ModelProject {
    /// Loads the pipeline's `models:` folder (no folder or no `models:` key: no models)
    /// and its `pii:` section.
    pub fn load(config: &PipelineConfig) -> Result<ModelProject, ConfigError> {
        let pii = match &config.pii {
            Some(section) => PiiPolicy::parse(config, section)?,
            None => PiiPolicy::default(),
        };
        let dir = config
            .models
            .clone()
            .unwrap_or_else(|| config.root.join("models"));
        let mut project = Self::load_dir(&dir, pii)?;
        project.execution = config.execution.clone();
        project.engine = config.models_engine;
        Ok(project)
    }

    /// Loads models from `dir` with an explicit policy (tests, tools).
    pub fn load_dir(dir: &Path, pii: PiiPolicy) -> Result<ModelProject, ConfigError> {
        let mut models = Vec::new();
        for layer in [Layer::D2a, Layer::D2b] {
            let folder = dir.join(layer.as_str());
            let Ok(entries) = std::fs::read_dir(&folder) else {
                continue;
            };
            let mut files: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "sql"))
                .collect();
            files.sort();
            for path in files {
                models.push(load_model(layer, &path)?);
            }
        }
        let rates = CurrencyRates::load(&dir.join("currency_rates.csv"))?;
        let models = order(models)?;
        Ok(ModelProject {
            dir: dir.to_path_buf(),
            models,
            pii,
            rates,
            d1_tables: BTreeMap::new(),
            d1_aliases: Vec::new(),
            execution: Default::default(),
            engine: ModelEngine::Local,
        })
    }

    /// Tells the project about the D1 tables the sources produce: merge tables are
    /// de-duplicated on their primary key (latest `_sluice_loaded_at` wins) and
    /// columns marked `pii` get the policy's default action when no rule matches.
    pub fn with_streams(mut self, streams: impl IntoIterator<Item = StreamSpec>) -> Self {
        for spec in streams {
            self.d1_tables.insert(
                spec.table.clone(),
                D1Table {
                    primary_key: spec.primary_key.clone(),
                    write_mode: spec.write_mode,
                    partitioned: spec.partition_column.is_some(),
                    partition_column: spec.partition_column.clone(),
                    pii_columns: spec
                        .schema
                        .fields
                        .iter()
                        .filter(|f| f.pii)
                        .map(|f| f.name.clone())
                        .collect(),
                },
            );
        }
        self
    }

    /// Tells the project which streams replace others: once a replacement is
    /// switched, `d1.<replaced>` is a view of the replacing stream's table with its
    /// columns renamed, so models reading the old name keep working unedited.
    pub fn with_aliases(
        mut self,
        aliases: impl IntoIterator<Item = sluice_core::replace::D1Alias>,
    ) -> Self {
        self.d1_aliases = aliases.into_iter().collect();
        self
    }

    /// The switched replacement whose old D1 name is `table`, if any.
    pub fn switched_alias(&self, table: &str) -> Option<&sluice_core::replace::D1Alias> {
        self.d1_aliases
            .iter()
            .find(|a| a.replacement.switch && a.replaced_table == table)
    }

    /// Marks `columns` of D1 `table` personal, beside what the streams said (e.g. from
    /// the schema registry: a column landed as personal stays personal when the source
    /// can no longer be built to say so).
    pub fn mark_pii(&mut self, table: &str, columns: impl IntoIterator<Item = String>) {
        let entry = self
            .d1_tables
            .entry(table.to_string())
            .or_insert_with(|| D1Table {
                primary_key: Vec::new(),
                write_mode: WriteMode::default(),
                partitioned: false,
                partition_column: None,
                pii_columns: Vec::new(),
            });
        for column in columns {
            if !entry.pii_columns.contains(&column) {
                entry.pii_columns.push(column);
            }
        }
    }

    pub fn model(&self, layer: &str, name: &str) -> Option<&Model> {
        self.models
            .iter()
            .find(|m| m.layer.as_str() == layer && m.name == name)
    }
}

fn load_model(layer: Layer, path: &Path) -> Result<Model, ConfigError> {
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string();
    let sql = std::fs::read_to_string(path)
        .map_err(|e| sql_error(path, "", None, format!("cannot read model: {e}")))?;
    if !sluice_core::config::is_identifier(&name) {
        return Err(sql_error(
            path,
            &sql,
            None,
            "model file names may use lowercase letters, digits and `_` (they become table names)",
        ));
    }
    let (config, yaml) = load_yaml(&path.with_extension("yml"))?;
    if config.materialized == Materialization::Incremental && config.partition_by.is_none() {
        let doc = yaml.as_ref().expect("incremental is only set from YAML");
        return Err(doc.error_at(
            &["materialized".into()],
            "an incremental model needs `partition_by: <date column>`",
        ));
    }
    let depends_on = parse_references(path, &sql)?;
    Ok(Model {
        layer,
        name,
        sql_path: path.to_path_buf(),
        sql: Arc::new(sql),
        config,
        yaml,
        depends_on,
    })
}

fn load_yaml(path: &Path) -> Result<(ModelConfig, Option<ConfigDocument>), ConfigError> {
    let path = if path.exists() {
        path.to_path_buf()
    } else if path.with_extension("yaml").exists() {
        path.with_extension("yaml")
    } else {
        return Ok((ModelConfig::default(), None));
    };
    let text = std::fs::read_to_string(&path).map_err(|e| ConfigError {
        file: path.clone(),
        position: None,
        path: String::new(),
        message: format!("cannot read: {e}"),
        help: None,
        source_text: Arc::new(String::new()),
    })?;
    let doc = ConfigDocument::new(path, text);
    let value: serde_yaml::Value = match serde_yaml::from_str(&doc.text) {
        Ok(serde_yaml::Value::Null) => return Ok((ModelConfig::default(), Some(doc))),
        Ok(v) => v,
        Err(e) => return Err(doc.yaml_error(&e)),
    };
    let config: ModelConfig = doc.deserialize_at(value, &[])?;
    for (i, check) in config.checks.iter().enumerate() {
        check
            .validate()
            .map_err(|message| doc.error_at(&["checks".into(), format!("[{i}]")], message))?;
    }
    Ok((config, Some(doc)))
}

/// The tables a model's SQL reads (CTE names excluded); syntax errors with their line.
fn parse_references(path: &Path, sql: &str) -> Result<Vec<TableRef>, ConfigError> {
    let mut statements = DFParser::parse_sql(sql).map_err(|e| {
        let message = e.to_string();
        let offset = parser_offset(sql, &message);
        sql_error(path, sql, offset, message)
    })?;
    if statements.len() != 1 {
        return Err(sql_error(
            path,
            sql,
            None,
            format!(
                "a model is exactly one SELECT statement; found {}",
                statements.len()
            ),
        ));
    }
    let statement = statements.pop_front().expect("one statement");
    let is_query = matches!(
        &statement,
        datafusion::sql::parser::Statement::Statement(s)
            if matches!(**s, datafusion::sql::sqlparser::ast::Statement::Query(_))
    );
    if !is_query {
        return Err(sql_error(
            path,
            sql,
            None,
            "a model is a SELECT (or WITH … SELECT) statement",
        ));
    }
    let (tables, _ctes) = resolve_table_references(&statement, true)
        .map_err(|e| sql_error(path, sql, None, e.to_string()))?;
    let mut refs = BTreeSet::new();
    for table in tables {
        let text = table.to_string();
        let offset = find_ignore_case(sql, &text);
        match (table.schema(), table.table()) {
            (Some(layer @ ("d1" | "d2a" | "d2b")), name) => {
                refs.insert(TableRef {
                    layer: layer.to_string(),
                    name: name.to_string(),
                });
            }
            (Some(other), _) => {
                return Err(sql_error(
                    path,
                    sql,
                    offset,
                    format!("`{text}`: unknown layer `{other}` (tables are d1.<table>, d2a.<model> or d2b.<model>)"),
                ))
            }
            (None, name) => {
                return Err(sql_error(
                    path,
                    sql,
                    offset,
                    format!("`{name}`: qualify the table with its layer: d1.{name}, d2a.{name} or d2b.{name}"),
                ))
            }
        }
    }
    Ok(refs.into_iter().collect())
}

/// Orders models so each comes after the models it reads; reports unknown models and cycles.
fn order(models: Vec<Model>) -> Result<Vec<Model>, ConfigError> {
    let key = |m: &Model| (m.layer.as_str().to_string(), m.name.clone());
    let known: BTreeSet<(String, String)> = models.iter().map(key).collect();
    for model in &models {
        for dep in &model.depends_on {
            if dep.layer == "d1" {
                continue;
            }
            if !known.contains(&(dep.layer.clone(), dep.name.clone())) {
                let offset = find_ignore_case(&model.sql, &dep.to_string());
                return Err(model.sql_error(
                    offset,
                    format!("`{dep}` is not a model (no {}/{}.sql)", dep.layer, dep.name),
                ));
            }
            if model.layer == Layer::D2a && dep.layer == "d2b" {
                let offset = find_ignore_case(&model.sql, &dep.to_string());
                return Err(model.sql_error(
                    offset,
                    format!("a d2a model cannot read the d2b layer (`{dep}`): data flows d1 → d2a → d2b"),
                ));
            }
        }
    }
    let mut remaining = models;
    let mut ordered: Vec<Model> = Vec::with_capacity(remaining.len());
    let mut done: BTreeSet<(String, String)> = BTreeSet::new();
    while !remaining.is_empty() {
        let ready = remaining.iter().position(|m| {
            m.depends_on
                .iter()
                .all(|d| d.layer == "d1" || done.contains(&(d.layer.clone(), d.name.clone())))
        });
        match ready {
            Some(i) => {
                let model = remaining.remove(i);
                done.insert(key(&model));
                ordered.push(model);
            }
            None => {
                let names: Vec<String> = remaining.iter().map(Model::qualified_name).collect();
                let first = &remaining[0];
                return Err(first.sql_error(
                    None,
                    format!("models read each other in a cycle: {}", names.join(" → ")),
                ));
            }
        }
    }
    Ok(ordered)
}

/// The SQL line whose code ends with `column` (an output column's name, as `AS name`
/// or a bare reference): the offset of the name and the line's `--` comment, if any.
fn sql_column_line<'s>(sql: &'s str, column: &str) -> Option<(usize, Option<&'s str>)> {
    let mut offset = 0;
    let mut found = None;
    for line in sql.split_inclusive('\n') {
        let (code, comment) = split_comment(line);
        let code_trimmed = code.trim_end().trim_end_matches(',').trim_end();
        let name = code_trimmed
            .rsplit(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '"'))
            .next()
            .unwrap_or_default()
            .trim_matches('"');
        if name.eq_ignore_ascii_case(column) && !code_trimmed.trim().is_empty() {
            let at =
                offset + code_trimmed.len() - name.len() - (code_trimmed.ends_with('"') as usize);
            let comment = comment.map(str::trim).filter(|c| !c.is_empty());
            // The last line naming it wins (the outer SELECT of a WITH … SELECT).
            found = Some((at, comment));
        }
        offset += line.len();
    }
    found
}

/// A line's code and its `--` comment (outside single-quoted strings).
fn split_comment(line: &str) -> (&str, Option<&str>) {
    let mut quoted = false;
    let bytes = line.as_bytes();
    for i in 0..bytes.len() {
        match bytes[i] {
            b'\'' => quoted = !quoted,
            b'-' if !quoted && bytes.get(i + 1) == Some(&b'-') => {
                return (
                    &line[..i],
                    Some(line[i + 2..].trim_end_matches(['\n', '\r'])),
                )
            }
            _ => {}
        }
    }
    (line.trim_end_matches(['\n', '\r']), None)
}

/// A ConfigError pointing into a SQL file.
pub fn sql_error(
    path: &Path,
    sql: &str,
    offset: Option<usize>,
    message: impl Into<String>,
) -> ConfigError {
    let position = offset.map(|offset| {
        let before = &sql[..offset.min(sql.len())];
        let line = before.matches('\n').count() as u32 + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u32 + 1;
        Position {
            line,
            column,
            offset: offset as u32,
        }
    });
    ConfigError {
        file: path.to_path_buf(),
        position,
        path: String::new(),
        message: message.into(),
        help: None,
        source_text: Arc::new(sql.to_string()),
    }
}

/// The byte offset of a (1-based) line and column.
pub fn offset_of(sql: &str, line: u64, column: u64) -> Option<usize> {
    if line == 0 {
        return None;
    }
    let mut offset = 0;
    for (n, text) in sql.split_inclusive('\n').enumerate() {
        if n as u64 + 1 == line {
            let col = text
                .char_indices()
                .nth(column.saturating_sub(1) as usize)
                .map_or(text.len(), |(i, _)| i);
            return Some(offset + col);
        }
        offset += text.len();
    }
    None
}

/// sqlparser reports "… at Line: 3, Column: 7", or "found: EOF" for a statement
/// that ends too early (then: the end of the SQL, past any trailing blank or `;`).
fn parser_offset(sql: &str, message: &str) -> Option<usize> {
    if !message.contains("Line: ") && message.contains("EOF") {
        let end = sql.trim_end().trim_end_matches(';').trim_end().len();
        return Some(end.saturating_sub(1));
    }
    let rest = &message[message.rfind("Line: ")? + 6..];
    let (line, rest) = rest.split_once(", Column: ")?;
    let column: String = rest.chars().take_while(char::is_ascii_digit).collect();
    offset_of(sql, line.trim().parse().ok()?, column.parse().ok()?)
}

/// Offset of `needle` in `sql` ignoring ASCII case, skipping `--` comment lines.
pub fn find_ignore_case(sql: &str, needle: &str) -> Option<usize> {
    let lower = sql.to_ascii_lowercase();
    let needle = needle.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find(&needle) {
        let at = from + i;
        let line_start = lower[..at].rfind('\n').map_or(0, |p| p + 1);
        if !lower[line_start..at].contains("--") {
            return Some(at);
        }
        from = at + needle.len();
    }
    None
}
