//! `sluice export`: files that let other engines run the pipeline with this same
//! binary — an Apache Airflow DAG ([`airflow`]) and Kubernetes manifests
//! ([`kubernetes`]).
//!
//! Both are rendered from templates (minijinja, under `templates/`) fed with the
//! project's [`shape`]: its sources, models, schedule, the environment variables its
//! pipeline file names, and the files a pod needs. Generated files hold variable
//! *names* only, never values: credentials come from a Kubernetes Secret or the
//! Airflow worker's environment. Every string that reaches a generated file passes
//! through the `py` or `yaml` filter (a quoted, escaped literal), so a name can
//! never inject code or YAML structure.

pub mod airflow;
pub mod kubernetes;
pub mod shape;

use std::path::{Path, PathBuf};

use minijinja::value::{Value, ValueKind};
use minijinja::Environment;
use serde::Serialize;

use crate::exit;
use crate::project::Project;
use shape::{ProjectFile, ProjectShape};

/// `sluice export …`.
#[derive(clap::Subcommand, Debug)]
pub enum ExportCommand {
    /// Write an Airflow DAG file that runs the pipeline task by task (Airflow 2.4+ and 3.x).
    Airflow(airflow::AirflowArgs),
    /// Write Kubernetes manifests: CronJob, `sluice serve` Deployment, Service, PDB, ConfigMap, ….
    Kubernetes(kubernetes::KubernetesArgs),
}

pub async fn run(pipeline: &Path, command: ExportCommand) -> u8 {
    let project = match Project::load(pipeline) {
        Ok(p) => p,
        Err(e) => return e.report(),
    };
    let shape = match ProjectShape::read(&project, pipeline) {
        Ok(s) => s,
        Err(shape::ShapeError::Config(e)) => {
            crate::project::print_config_error(&e);
            return exit::CONFIG;
        }
        Err(e) => {
            crate::logging::print_error!("{e}");
            return exit::CONFIG;
        }
    };
    if shape.lake_is_local() {
        eprintln!(
            "warning: the lake is a local folder ({}): each pod starts with an empty one. \
             Use an object store (s3://…, gs://…) so runs share the lake and its state.",
            shape.lake
        );
    }
    if shape.destination.is_none() {
        eprintln!(
            "warning: no destination: the embedded SQLite default lives inside the pod and is \
             lost with it. Configure `destination: {{ type: postgres, … }}`."
        );
    }
    for file in &shape.secret_files {
        eprintln!(
            "warning: pipeline.yaml reads the secret file {file} (`${{file:…}}`): mount it \
             into the pods yourself; the export passes only environment variables."
        );
    }
    let written = match command {
        ExportCommand::Airflow(args) => airflow::export(&shape, &args),
        ExportCommand::Kubernetes(args) => kubernetes::export(&shape, &args),
    };
    match written {
        Ok(files) => {
            for file in files {
                println!("wrote {}", file.display());
            }
            exit::OK
        }
        Err(e) => {
            crate::logging::print_error!("{e}");
            exit::CONFIG
        }
    }
}

/// Why files could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Shape(#[from] shape::ShapeError),
    #[error("template {0}")]
    Template(#[from] minijinja::Error),
    #[error("cannot write {path}: {message}")]
    Write { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// Writes `text` to `dir/name`, creating `dir`.
fn write_file(dir: &Path, name: &str, text: &str) -> Result<PathBuf, ExportError> {
    let path = dir.join(name);
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&path, text))
        .map_err(|e| ExportError::Write {
            path: path.clone(),
            message: e.to_string(),
        })?;
    Ok(path)
}

/// The templates and the quoting filters every generated file uses.
fn templates() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .keep_trailing_newline(true)
            .build()
            .expect("the default delimiters are valid"),
    );
    env.add_filter("py", python_literal);
    env.add_filter("yaml", yaml_scalar);
    let sources: [(&str, &str); 8] = [
        (
            "airflow_dag.py",
            include_str!("templates/airflow_dag.py.j2"),
        ),
        (
            "configmap.yaml",
            include_str!("templates/configmap.yaml.j2"),
        ),
        (
            "serviceaccount.yaml",
            include_str!("templates/serviceaccount.yaml.j2"),
        ),
        ("cronjob.yaml", include_str!("templates/cronjob.yaml.j2")),
        (
            "deployment.yaml",
            include_str!("templates/deployment.yaml.j2"),
        ),
        ("service.yaml", include_str!("templates/service.yaml.j2")),
        ("pdb.yaml", include_str!("templates/pdb.yaml.j2")),
        (
            "sharded-job.yaml",
            include_str!("templates/sharded-job.yaml.j2"),
        ),
    ];
    for (name, source) in sources {
        env.add_template(name, source)
            .expect("the built-in templates parse (a unit test renders each)");
    }
    env.add_template("pod.yaml", include_str!("templates/pod.yaml.j2"))
        .expect("the built-in templates parse (a unit test renders each)");
    env
}

/// A Python literal: strings JSON-escaped (valid Python), booleans `True`/`False`,
/// `None`, numbers, and lists of those.
fn python_literal(value: Value) -> Result<String, minijinja::Error> {
    Ok(match value.kind() {
        ValueKind::Bool => if value.is_true() { "True" } else { "False" }.to_string(),
        ValueKind::None | ValueKind::Undefined => "None".to_string(),
        ValueKind::Number => value.to_string(),
        ValueKind::Seq => {
            let items = value
                .try_iter()?
                .map(python_literal)
                .collect::<Result<Vec<_>, _>>()?;
            format!("[{}]", items.join(", "))
        }
        _ => json_string(&value.to_string()),
    })
}

/// A YAML scalar: strings as double-quoted JSON strings (valid YAML), numbers and
/// booleans as they are.
fn yaml_scalar(value: Value) -> String {
    match value.kind() {
        ValueKind::Bool | ValueKind::Number => value.to_string(),
        ValueKind::None | ValueKind::Undefined => "null".to_string(),
        _ => json_string(&value.to_string()),
    }
}

fn json_string(text: &str) -> String {
    serde_json::Value::String(text.to_string()).to_string()
}

/// A DNS-1123 label from a pipeline name (`shop_eu` → `shop-eu`), for Kubernetes names.
pub fn dns_label(name: &str, max: usize) -> String {
    let mut out = String::new();
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let trimmed: String = out.trim_matches('-').chars().take(max).collect();
    let trimmed = trimmed.trim_end_matches('-').to_string();
    if trimmed.is_empty() {
        "pipeline".into()
    } else {
        trimmed
    }
}

/// Names shared by the Airflow DAG and the Kubernetes manifests, so the DAG's pods
/// find the ConfigMap and Secret that `sluice export kubernetes` describes.
#[derive(Debug, Clone, Serialize)]
pub struct KubeNames {
    /// `sluice-<pipeline>`: the CronJob, Deployment, Service, ServiceAccount.
    pub base: String,
    pub configmap: String,
    pub secret: String,
    pub service_account: String,
}

impl KubeNames {
    pub fn new(pipeline: &str) -> KubeNames {
        // CronJob names are at most 52 characters (their Jobs add a suffix); the
        // longest derived name adds 12 (`-credentials`), so 40 keeps all valid.
        let base = format!("sluice-{}", dns_label(pipeline, 33));
        KubeNames {
            configmap: format!("{base}-project"),
            secret: format!("{base}-credentials"),
            service_account: base.clone(),
            base,
        }
    }
}

/// Whether this binary's `sluice run` accepts `--shard K/N` and `--finalize` (issue
/// #20; `crates/sluice-core/src/shard.rs`). Sharded exports call exactly those flags.
pub const SHARD_SUPPORTED: bool = true;

/// Where a pod finds the project (the ConfigMap's mount).
pub const PROJECT_DIR: &str = "/etc/sluice";

/// A project file as a ConfigMap entry: keys cannot hold `/`, so each file gets a
/// flat key and the volume's `items` put it back at its path.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigEntry {
    pub key: String,
    pub path: String,
    pub text: String,
}

/// ConfigMaps hold at most 1 MiB in total.
const CONFIGMAP_LIMIT: usize = 1024 * 1024;

pub fn config_entries(files: &[ProjectFile]) -> Result<Vec<ConfigEntry>, ExportError> {
    let mut entries: Vec<ConfigEntry> = Vec::new();
    for file in files {
        let key = file.path.replace('/', "__");
        if !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(ExportError::Invalid(format!(
                "{}: a ConfigMap key may use letters, digits, `-`, `_` and `.` only; rename the file",
                file.path
            )));
        }
        if let Some(other) = entries.iter().find(|e| e.key == key) {
            return Err(ExportError::Invalid(format!(
                "{} and {} would share the ConfigMap key {key}; rename one",
                other.path, file.path
            )));
        }
        entries.push(ConfigEntry {
            key,
            path: file.path.clone(),
            text: file.text.clone(),
        });
    }
    let total: usize = entries.iter().map(|e| e.key.len() + e.text.len()).sum();
    if total > CONFIGMAP_LIMIT {
        return Err(ExportError::Invalid(format!(
            "pipeline.yaml and the models are {total} bytes; a ConfigMap holds at most 1 MiB \
             (bake the models into the image instead)"
        )));
    }
    Ok(entries)
}

/// Requests and limits for a pod that runs the pipeline.
///
/// Sized from measured peaks (README, "Benchmarks"): a 1M-row load peaks at
/// 146–161 MiB and a 10M-row load at 191 MiB, since memory is bounded by batch size
/// not data size. The request (256 MiB) covers that peak with ~30 % to spare; the
/// limit (512 MiB) doubles it for model runs that hold a model's output while its
/// checks run. CPU: the load is CPU-bound and uses ~2 cores when it has them; half
/// a core is requested and no CPU limit is set (throttling a load only lengthens the
/// transaction that holds its locks).
#[derive(Debug, Clone, Serialize)]
pub struct Resources {
    pub cpu_request: String,
    pub memory_request: String,
    pub memory_limit: String,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            cpu_request: "500m".into(),
            memory_request: "256Mi".into(),
            memory_limit: "512Mi".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_quoted_so_names_cannot_inject_code() {
        let env = templates();
        let out = env
            .render_str(
                "{{ s | py }} {{ b | py }} {{ l | py }} {{ s | yaml }}",
                minijinja::context! { s => "a\"); import os #\n", b => true, l => vec!["x", "y"] },
            )
            .unwrap();
        assert_eq!(
            out,
            r#""a\"); import os #\n" True ["x", "y"] "a\"); import os #\n""#
        );
    }

    #[test]
    fn kubernetes_names_are_dns_labels_within_limits() {
        assert_eq!(dns_label("Shop_EU  2", 40), "shop-eu-2");
        let names = KubeNames::new(&"x".repeat(100));
        assert!(names.secret.len() <= 52, "{}", names.secret);
        assert!(names.base.starts_with("sluice-xxx"));
    }

    #[test]
    fn config_entries_flatten_paths_and_refuse_clashes() {
        let file = |path: &str| ProjectFile {
            path: path.into(),
            text: "x".into(),
        };
        let entries = config_entries(&[file("pipeline.yaml"), file("models/d2a/a.sql")]).unwrap();
        assert_eq!(entries[1].key, "models__d2a__a.sql");
        assert_eq!(entries[1].path, "models/d2a/a.sql");
        let err = config_entries(&[file("models/a__b.sql"), file("models__a/b.sql")]).unwrap_err();
        assert!(err.to_string().contains("share the ConfigMap key"), "{err}");
        let err = config_entries(&[file("models/a b.sql")]).unwrap_err();
        assert!(err.to_string().contains("rename the file"), "{err}");
    }
}
