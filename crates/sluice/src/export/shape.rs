//! What an export needs to know about a project, read once from the loaded project:
//! its sources and their streams (and the D1 table each writes), its models and the
//! tables they read, the environment variables its pipeline file refers to, the
//! files a pod needs (the pipeline file and the models folder), and the schedule.
//!
//! From that, [`ProjectShape::task_graph`] groups the run plan into the tasks an
//! orchestrator runs: one per source (all its streams) and one per model group.
//! Nothing here is specific to Airflow or Kubernetes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sluice_transform::ModelProject;

use crate::project::Project;

/// Why a project cannot be exported.
#[derive(Debug, thiserror::Error)]
pub enum ShapeError {
    #[error("{0}")]
    Config(#[from] sluice_core::config::ConfigError),
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error(
        "the models folder {models} is outside the pipeline's folder {root}: pods get the \
         pipeline's folder only (move the models under it)"
    )]
    ModelsOutsideProject { models: PathBuf, root: PathBuf },
    #[error(
        "model groups {0} read each other's tables, so they cannot run as one task each: \
         export with `--model-tasks model`"
    )]
    GroupCycle(String),
}

/// How models become orchestrator tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ModelTasks {
    /// One task per layer (`models_d2a`, `models_d2b`): few pods, one retry unit per layer.
    #[default]
    Layer,
    /// One task per model (`model_d2a_<name>`): a failed model is retried alone.
    Model,
}

/// A source and its streams.
#[derive(Debug, Clone, Serialize)]
pub struct SourceShape {
    pub name: String,
    /// The connector type (`facebook_ads`).
    pub kind: String,
    /// Stream name → the D1 table it writes.
    pub streams: BTreeMap<String, String>,
}

/// A model and the tables it reads (`d1.facebook_insights`, `d2a.x`).
#[derive(Debug, Clone, Serialize)]
pub struct ModelShape {
    /// `d2a.ad_performance_daily`.
    pub id: String,
    pub layer: String,
    pub name: String,
    pub reads: Vec<String>,
}

/// An environment variable the pipeline file refers to as `${NAME}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct EnvRef {
    pub name: String,
    /// Written `${NAME:-default}`: the run works without it.
    pub optional: bool,
}

/// A file a pod needs, relative to the pipeline's folder.
#[derive(Debug, Clone, Serialize)]
pub struct ProjectFile {
    /// `pipeline.yaml`, `models/d2a/ad_performance_daily.sql`.
    pub path: String,
    pub text: String,
}

/// The pipeline's `schedule:` as an orchestrator needs it.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduleShape {
    pub cron: String,
    /// IANA zone of the cron expression.
    pub timezone: String,
    /// What to do about missed times: `skip`, `latest` or `all`.
    pub catchup: String,
}

/// Everything an export reads from a project.
#[derive(Debug, Clone)]
pub struct ProjectShape {
    pub pipeline: String,
    /// The pipeline file as given on the command line.
    pub pipeline_file: PathBuf,
    pub sources: Vec<SourceShape>,
    /// In dependency order.
    pub models: Vec<ModelShape>,
    pub env: Vec<EnvRef>,
    /// `${file:PATH}` references: secrets read from files the pod must mount.
    pub secret_files: Vec<String>,
    pub files: Vec<ProjectFile>,
    pub schedule: Option<ScheduleShape>,
    /// Task retries and the first back-off, from `execution:`.
    pub retries: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// The lake location as written (a local path does not outlive a pod).
    pub lake: String,
    /// The destination type, `None` for the embedded SQLite default.
    pub destination: Option<String>,
    /// The `targets:` entry chosen with `--target`: generated commands run with it.
    pub target: Option<String>,
}

impl ProjectShape {
    /// Reads the shape of a loaded project (its models are loaded here).
    pub fn read(project: &Project, pipeline_file: &Path) -> Result<ProjectShape, ShapeError> {
        let config = &project.config;
        let sources = config
            .sources
            .iter()
            .zip(&project.sources)
            .map(|(section, source)| SourceShape {
                name: source.name().to_string(),
                kind: section.kind.clone(),
                streams: source
                    .streams()
                    .into_iter()
                    .map(|s| (s.name, s.table))
                    .collect(),
            })
            .collect();
        let model_project = ModelProject::load(config)?;
        let models = model_project
            .models
            .iter()
            .map(|m| ModelShape {
                id: m.qualified_name(),
                layer: m.layer.as_str().to_string(),
                name: m.name.clone(),
                reads: m.depends_on.iter().map(|d| d.to_string()).collect(),
            })
            .collect();
        if let Some(schedule) = &config.schedule {
            // Airflow and Kubernetes read five-field cron; seconds are `sluice serve`'s own.
            if schedule.expression.split_whitespace().count() > 5 {
                return Err(ShapeError::Config(config.doc.error_at(
                    &["schedule".to_string()],
                    format!(
                        "`{}` has a seconds (or year) field, which Airflow and Kubernetes \
                         CronJobs do not support; export needs five fields",
                        schedule.expression
                    ),
                )));
            }
        }
        // Only the chosen target's variables: a dev export must not ask for prod's secrets.
        let target = std::env::var(sluice_core::config::TARGET_VAR)
            .ok()
            .filter(|t| !t.is_empty());
        let (env, secret_files) = env_references(&config.doc.text, target.as_deref());
        let files = project_files(&config.root, pipeline_file, &model_project.dir)?;
        Ok(ProjectShape {
            pipeline: config.name.clone(),
            pipeline_file: pipeline_file.to_path_buf(),
            sources,
            models,
            env,
            secret_files,
            files,
            schedule: config.schedule.as_ref().map(|s| ScheduleShape {
                cron: s.expression.clone(),
                timezone: s.timezone.name().to_string(),
                catchup: s.catch_up.as_str().to_string(),
            }),
            retries: config.execution.retries,
            initial_backoff_ms: config.execution.initial_backoff_ms,
            max_backoff_ms: config.execution.max_backoff_ms,
            lake: config.lake.clone(),
            destination: config.destination.as_ref().map(|d| d.kind.clone()),
            target,
        })
    }

    /// The lake is a folder on the machine that runs sluice, which a pod does not keep.
    pub fn lake_is_local(&self) -> bool {
        !self.lake.contains("://")
    }

    /// The run plan grouped into orchestrator tasks, in dependency order.
    pub fn task_graph(&self, model_tasks: ModelTasks) -> Result<Vec<Task>, ShapeError> {
        let mut tasks: Vec<Task> = self
            .sources
            .iter()
            .map(|s| Task {
                id: format!("extract_{}", s.name),
                select: s.name.clone(),
                kind: TaskKind::Source,
                upstream: BTreeSet::new(),
            })
            .collect();
        // Which task produces each table.
        let mut producer: BTreeMap<String, String> = BTreeMap::new();
        for source in &self.sources {
            for table in source.streams.values() {
                producer.insert(format!("d1.{table}"), format!("extract_{}", source.name));
            }
        }
        let group_of = |model: &ModelShape| match model_tasks {
            ModelTasks::Layer => (
                format!("models_{}", model.layer),
                format!("{}.*", model.layer),
            ),
            ModelTasks::Model => (
                format!("model_{}_{}", model.layer, model.name),
                model.id.clone(),
            ),
        };
        for model in &self.models {
            producer.insert(model.id.clone(), group_of(model).0);
        }
        let mut groups: Vec<Task> = Vec::new();
        for model in &self.models {
            let (id, select) = group_of(model);
            let index = match groups.iter().position(|g| g.id == id) {
                Some(i) => i,
                None => {
                    groups.push(Task {
                        id: id.clone(),
                        select,
                        kind: TaskKind::Models,
                        upstream: BTreeSet::new(),
                    });
                    groups.len() - 1
                }
            };
            // A table no task produces is read as the lake holds it: no edge.
            let upstream = model
                .reads
                .iter()
                .filter_map(|table| producer.get(table))
                .filter(|task| **task != id)
                .cloned();
            groups[index].upstream.extend(upstream);
        }
        order_groups(&mut groups)?;
        tasks.extend(groups);
        Ok(tasks)
    }
}

/// What a task runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Every stream of one source: extract, D1, load.
    Source,
    /// One or more models (with their checks).
    Models,
}

/// One orchestrator task: `sluice run --select <select>`.
#[derive(Debug, Clone, Serialize)]
pub struct Task {
    /// `extract_facebook`, `models_d2a`, `model_d2b_channel_spend_daily`.
    pub id: String,
    /// The `--select` pattern that runs exactly this task's part of the plan.
    pub select: String,
    pub kind: TaskKind,
    /// Task ids this one waits for.
    pub upstream: BTreeSet<String>,
}

/// Sorts model groups so each comes after the groups it reads; a cycle is an error.
fn order_groups(groups: &mut Vec<Task>) -> Result<(), ShapeError> {
    let ids: BTreeSet<String> = groups.iter().map(|g| g.id.clone()).collect();
    let mut placed: BTreeSet<String> = BTreeSet::new();
    let mut ordered = Vec::with_capacity(groups.len());
    let mut pending = std::mem::take(groups);
    while !pending.is_empty() {
        let (ready, waiting): (Vec<Task>, Vec<Task>) = pending.into_iter().partition(|g| {
            g.upstream
                .iter()
                .all(|u| !ids.contains(u) || placed.contains(u))
        });
        if ready.is_empty() {
            let names: Vec<&str> = waiting.iter().map(|g| g.id.as_str()).collect();
            return Err(ShapeError::GroupCycle(names.join(", ")));
        }
        placed.extend(ready.iter().map(|g| g.id.clone()));
        ordered.extend(ready);
        pending = waiting;
    }
    *groups = ordered;
    Ok(())
}

/// The `${NAME}` / `${NAME:-default}` variables and `${file:PATH}` files the pipeline
/// text refers to, read from its YAML values (comments do not count). Of `targets:`,
/// only `target`'s count, and with a target its `lake`/`destination` replace the top
/// level's, as when the pipeline is loaded.
pub fn env_references(text: &str, target: Option<&str>) -> (Vec<EnvRef>, Vec<String>) {
    let mut vars: BTreeMap<String, bool> = BTreeMap::new();
    let mut files = BTreeSet::new();
    let Ok(value) = serde_yaml::from_str::<serde_yaml::Value>(text) else {
        return (Vec::new(), Vec::new());
    };
    let mut strings = Vec::new();
    match &value {
        serde_yaml::Value::Mapping(top) => {
            for (key, entry) in top {
                match key.as_str() {
                    Some("targets") => {
                        if let Some(chosen) = target.and_then(|t| entry.get(t)) {
                            collect_strings(chosen, &mut strings);
                        }
                    }
                    Some("lake" | "destination") if target.is_some() => {}
                    _ => collect_strings(entry, &mut strings),
                }
            }
        }
        other => collect_strings(other, &mut strings),
    }
    for s in strings {
        let mut rest = s.as_str();
        while let Some(start) = rest.find("${") {
            // `$${` is a literal `${`.
            if start > 0 && rest.as_bytes()[start - 1] == b'$' {
                rest = &rest[start + 2..];
                continue;
            }
            let body = &rest[start + 2..];
            let Some(end) = body.find('}') else { break };
            let expr = &body[..end];
            if let Some(file) = expr.strip_prefix("file:") {
                files.insert(file.trim().to_string());
            } else {
                let (name, optional) = match expr.split_once(":-") {
                    Some((name, _)) => (name.trim(), true),
                    None => (expr.trim(), false),
                };
                // Required anywhere wins over optional elsewhere.
                let entry = vars.entry(name.to_string()).or_insert(optional);
                *entry = *entry && optional;
            }
            rest = &body[end + 1..];
        }
    }
    let env = vars
        .into_iter()
        .map(|(name, optional)| EnvRef { name, optional })
        .collect();
    (env, files.into_iter().collect())
}

fn collect_strings(value: &serde_yaml::Value, out: &mut Vec<String>) {
    use serde_yaml::Value;
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Sequence(items) => items.iter().for_each(|v| collect_strings(v, out)),
        Value::Mapping(map) => map.values().for_each(|v| collect_strings(v, out)),
        Value::Tagged(tagged) => collect_strings(&tagged.value, out),
        _ => {}
    }
}

/// The pipeline file and every file of the models folder, paths relative to `root`.
/// `.env` and anything else beside the pipeline are left out: credentials come from
/// the orchestrator's secrets, never from files shipped with the config.
fn project_files(
    root: &Path,
    pipeline_file: &Path,
    models_dir: &Path,
) -> Result<Vec<ProjectFile>, ShapeError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|e| ShapeError::Read {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    };
    let mut files = vec![ProjectFile {
        path: "pipeline.yaml".into(),
        text: read(pipeline_file)?,
    }];
    if !models_dir.exists() {
        return Ok(files);
    }
    let root_abs = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    let models_abs = models_dir
        .canonicalize()
        .unwrap_or_else(|_| models_dir.to_path_buf());
    let Ok(relative) = models_abs.strip_prefix(&root_abs) else {
        return Err(ShapeError::ModelsOutsideProject {
            models: models_dir.to_path_buf(),
            root: root.to_path_buf(),
        });
    };
    let mut stack = vec![models_abs.clone()];
    let mut found = Vec::new();
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| ShapeError::Read {
            path: dir.clone(),
            message: e.to_string(),
        })?;
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "sql" | "yml" | "yaml" | "csv"))
            {
                found.push(path);
            }
        }
    }
    found.sort();
    for path in found {
        let inner = path.strip_prefix(&models_abs).unwrap_or(&path);
        let text = read(&path)?;
        files.push(ProjectFile {
            path: relative.join(inner).to_string_lossy().replace('\\', "/"),
            text,
        });
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_required_optional_escaped_and_files() {
        let text = "name: m\n# ${IN_A_COMMENT}\nsources:\n  a: { token: \"${TOKEN}\", url: \"${URL:-http://x}\", both: \"${URL}\", lit: \"$${NOT_A_VAR}\", key: \"${file:/run/secrets/key}\", opt: \"${OPT:-}\" }\n";
        let (env, files) = env_references(text, None);
        assert_eq!(
            env,
            vec![
                EnvRef {
                    name: "OPT".into(),
                    optional: true
                },
                EnvRef {
                    name: "TOKEN".into(),
                    optional: false
                },
                EnvRef {
                    name: "URL".into(),
                    optional: false
                },
            ]
        );
        assert_eq!(files, vec!["/run/secrets/key".to_string()]);
    }

    fn shape(models: Vec<(&str, &str, Vec<&str>)>) -> ProjectShape {
        ProjectShape {
            pipeline: "p".into(),
            pipeline_file: "pipeline.yaml".into(),
            sources: vec![
                SourceShape {
                    name: "fb".into(),
                    kind: "facebook_ads".into(),
                    streams: [("insights".to_string(), "fb_insights".to_string())].into(),
                },
                SourceShape {
                    name: "shop".into(),
                    kind: "files".into(),
                    streams: [("orders".to_string(), "shop_orders".to_string())].into(),
                },
            ],
            models: models
                .into_iter()
                .map(|(layer, name, reads)| ModelShape {
                    id: format!("{layer}.{name}"),
                    layer: layer.into(),
                    name: name.into(),
                    reads: reads.into_iter().map(String::from).collect(),
                })
                .collect(),
            env: Vec::new(),
            secret_files: Vec::new(),
            files: Vec::new(),
            schedule: None,
            retries: 3,
            initial_backoff_ms: 500,
            max_backoff_ms: 30_000,
            lake: "./lake".into(),
            destination: None,
            target: None,
        }
    }

    fn edges(tasks: &[Task]) -> Vec<(String, Vec<String>)> {
        tasks
            .iter()
            .map(|t| (t.id.clone(), t.upstream.iter().cloned().collect()))
            .collect()
    }

    #[test]
    fn models_group_by_layer_or_one_task_each() {
        let s = shape(vec![
            ("d2a", "perf", vec!["d1.fb_insights", "d1.not_configured"]),
            ("d2b", "spend", vec!["d2a.perf", "d1.shop_orders"]),
            ("d2b", "alone", vec![]),
        ]);
        let by_layer = s.task_graph(ModelTasks::Layer).unwrap();
        assert_eq!(
            edges(&by_layer),
            vec![
                ("extract_fb".to_string(), vec![]),
                ("extract_shop".to_string(), vec![]),
                ("models_d2a".to_string(), vec!["extract_fb".to_string()]),
                (
                    "models_d2b".to_string(),
                    vec!["extract_shop".to_string(), "models_d2a".to_string()]
                ),
            ]
        );
        assert_eq!(by_layer[3].select, "d2b.*");
        let per_model = s.task_graph(ModelTasks::Model).unwrap();
        let names: Vec<&str> = per_model.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(
            names,
            // Waves: every group after the groups it reads, in model order within a wave.
            [
                "extract_fb",
                "extract_shop",
                "model_d2a_perf",
                "model_d2b_alone",
                "model_d2b_spend"
            ]
        );
        assert_eq!(per_model[4].select, "d2b.spend");
        assert!(per_model[3].upstream.is_empty());
    }

    #[test]
    fn layers_reading_each_other_need_one_task_per_model() {
        let s = shape(vec![
            ("d2a", "x", vec!["d2b.y"]),
            ("d2b", "y", vec!["d1.fb_insights"]),
            ("d2a", "z", vec!["d2b.y"]),
            ("d2b", "w", vec!["d2a.z"]),
        ]);
        let err = s.task_graph(ModelTasks::Layer).unwrap_err();
        assert!(err.to_string().contains("--model-tasks model"), "{err}");
        let per_model = s.task_graph(ModelTasks::Model).unwrap();
        let names: Vec<&str> = per_model.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(
            names,
            [
                "extract_fb",
                "extract_shop",
                "model_d2b_y",
                "model_d2a_x",
                "model_d2a_z",
                "model_d2b_w"
            ]
        );
    }
}
