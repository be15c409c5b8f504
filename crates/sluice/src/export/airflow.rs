//! `sluice export airflow`: one DAG file for Apache Airflow 2.4+ and 3.x.
//!
//! One task per source (`sluice run --select <source>`, all its streams) and one per
//! model group, wired as the run plan's edges run between them (a model group waits
//! for the sources and groups whose tables its models read). Schedule, time zone and
//! catch-up come from `schedule:`, retries and back-off from `execution:`.
//!
//! The default operator is KubernetesPodOperator: each task is a pod of the sluice
//! image with pipeline.yaml and the models mounted from the ConfigMap of
//! `sluice export kubernetes` and each credential read from a Secret by name.
//! `--operator bash` runs the binary on the Airflow worker instead.

use std::path::PathBuf;

use chrono::{Datelike, NaiveDate};
use minijinja::context;
use minijinja::value::Serde;
use serde::Serialize;

use super::shape::{ModelTasks, ProjectShape, Task, TaskKind};
use super::{
    config_entries, templates, write_file, ExportError, KubeNames, Resources, PROJECT_DIR,
};

/// Which Airflow operator runs each task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Operator {
    /// A pod per task (apache-airflow-providers-cncf-kubernetes).
    #[default]
    Kubernetes,
    /// The sluice binary on the Airflow worker (BashOperator).
    Bash,
}

#[derive(clap::Args, Debug, Clone)]
pub struct AirflowArgs {
    /// Folder to write `sluice_<pipeline>.py` into (an Airflow dags folder).
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    /// The operator each task runs in.
    #[arg(long, value_enum, default_value_t = Operator::Kubernetes)]
    pub operator: Operator,
    /// The sluice container image (KubernetesPodOperator).
    #[arg(long, default_value = concat!("sluice:", env!("CARGO_PKG_VERSION")))]
    pub image: String,
    /// Kubernetes namespace of the pods (KubernetesPodOperator).
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// The sluice binary on the worker (BashOperator).
    #[arg(long, default_value = "sluice")]
    pub binary: String,
    /// The pipeline file as the worker sees it (BashOperator; default: this file's absolute path).
    #[arg(long)]
    pub pipeline_path: Option<String>,
    /// How models become tasks: one per layer, or one per model.
    #[arg(long, value_enum, default_value_t = ModelTasks::Layer)]
    pub model_tasks: ModelTasks,
    /// The DAG's start date (default: today, UTC); with `catchup: all` the first interval.
    #[arg(long)]
    pub start_date: Option<NaiveDate>,
    /// Run each source as N mapped tasks (`sluice run --shard K/N`, K = 0…N-1); models after all.
    #[arg(long)]
    pub shards: Option<u32>,
}

/// A task as the template needs it.
#[derive(Debug, Serialize)]
struct TaskView<'a> {
    id: &'a str,
    /// The Python variable holding the task (task ids are `[a-z0-9_]`, valid identifiers).
    var: String,
    select: &'a str,
    upstream: Vec<&'a str>,
    upstream_vars: Vec<String>,
    /// Mapped shard count for source tasks (0: not sharded).
    shards: u32,
    /// A model task after sharded sources: `--finalize` (waits for them, moves cursors).
    finalize: bool,
}

fn task_var(id: &str) -> String {
    format!("t_{id}")
}

/// Renders the DAG file's text.
pub fn render(
    shape: &ProjectShape,
    args: &AirflowArgs,
    pipeline_path: &str,
) -> Result<String, ExportError> {
    let shards = args.shards.unwrap_or(0);
    if args.shards == Some(0) {
        return Err(ExportError::Invalid("--shards must be at least 1".into()));
    }
    let tasks: Vec<Task> = shape.task_graph(args.model_tasks)?;
    let views: Vec<TaskView> = tasks
        .iter()
        .map(|t| TaskView {
            id: &t.id,
            var: task_var(&t.id),
            select: &t.select,
            upstream: t.upstream.iter().map(String::as_str).collect(),
            upstream_vars: t.upstream.iter().map(|u| task_var(u)).collect(),
            shards: match t.kind {
                TaskKind::Source => shards,
                TaskKind::Models => 0,
            },
            finalize: shards > 0 && matches!(t.kind, TaskKind::Models),
        })
        .collect();
    let names = KubeNames::new(&shape.pipeline);
    let entries = config_entries(&shape.files)?;
    let start = args
        .start_date
        .unwrap_or_else(|| chrono::Utc::now().date_naive());
    let operator = match args.operator {
        Operator::Kubernetes => "kubernetes",
        Operator::Bash => "bash",
    };
    let text = templates().get_template("airflow_dag.py")?.render(context! {
        pipeline => &shape.pipeline,
        dag_id => format!("sluice_{}", shape.pipeline.replace(|c: char| !c.is_ascii_alphanumeric() && c != '_', "_")),
        operator,
        operator_name => match args.operator {
            Operator::Kubernetes => "KubernetesPodOperator",
            Operator::Bash => "BashOperator",
        },
        tasks => Serde(views),
        schedule => Serde(&shape.schedule),
        start_date => context! { year => start.year(), month => start.month(), day => start.day() },
        retries => shape.retries,
        initial_backoff_ms => shape.initial_backoff_ms,
        max_backoff_ms => shape.max_backoff_ms,
        env => Serde(&shape.env),
        target => &shape.target,
        image => &args.image,
        namespace => &args.namespace,
        binary => &args.binary,
        pipeline_path,
        secret_name => &names.secret,
        configmap_name => &names.configmap,
        service_account => &names.service_account,
        files => Serde(entries),
        project_dir => PROJECT_DIR,
        resources => Serde(Resources::default()),
        shards,
        shard_supported => super::SHARD_SUPPORTED,
    })?;
    Ok(text)
}

/// Writes the DAG file; returns its path.
pub fn export(shape: &ProjectShape, args: &AirflowArgs) -> Result<Vec<PathBuf>, ExportError> {
    let pipeline_path = match &args.pipeline_path {
        Some(p) => p.clone(),
        None => shape
            .pipeline_file
            .canonicalize()
            .unwrap_or_else(|_| shape.pipeline_file.clone())
            .display()
            .to_string(),
    };
    let text = render(shape, args, &pipeline_path)?;
    let name = format!("sluice_{}.py", shape.pipeline.replace('-', "_"));
    Ok(vec![write_file(&args.out, &name, &text)?])
}
