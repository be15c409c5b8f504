//! `sluice export kubernetes`: manifests that run the pipeline on a cluster.
//!
//! One file per object, all from templates sharing one pod shape (`pod.yaml.j2`):
//!
//! | file | object |
//! |---|---|
//! | `configmap.yaml` | pipeline.yaml and the models, mounted at `/etc/sluice` |
//! | `serviceaccount.yaml` | the pods' identity (no API token mounted) |
//! | `cronjob.yaml` | `sluice run` on `schedule:` (not written without a schedule) |
//! | `deployment.yaml` | `sluice serve`, probes on `/healthz` and `/readyz` |
//! | `service.yaml`, `pdb.yaml` | its Service and PodDisruptionBudget |
//! | `sharded-job.yaml` | with `--shards N`: an Indexed Job (`--shard K/N`) and a finalize Job, sharing one round (`--round`) |
//!
//! Credentials are never written: each variable pipeline.yaml names is read from the
//! Secret `sluice-<pipeline>-credentials` by key (e.g.
//! `kubectl create secret generic sluice-shop-credentials --from-env-file=.env`).

use std::path::PathBuf;

use minijinja::context;
use minijinja::value::Serde;
use serde::Serialize;

use super::shape::{EnvRef, ProjectShape};
use super::{
    config_entries, templates, write_file, ConfigEntry, ExportError, KubeNames, Resources,
    PROJECT_DIR, SHARD_SUPPORTED,
};

#[derive(clap::Args, Debug, Clone)]
pub struct KubernetesArgs {
    /// Folder to write the manifests into.
    #[arg(long, default_value = "kubernetes")]
    pub out: PathBuf,
    /// The sluice container image (built from the repository's Dockerfile).
    #[arg(long, default_value = concat!("sluice:", env!("CARGO_PKG_VERSION")))]
    pub image: String,
    /// Port `sluice serve` listens on inside the pod.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Also write `sharded-job.yaml`: an Indexed Job of N shards and a finalize Job.
    #[arg(long)]
    pub shards: Option<u32>,
    /// The image of the finalize Job's wait step (needs `kubectl`).
    #[arg(long, default_value = "registry.k8s.io/kubectl:v1.33.0")]
    pub kubectl_image: String,
    /// The round of the sharded run (`sharded-job.yaml`): the shard Job and the finalize
    /// Job carry it as the label `sluice.dev/round` and run with it, so a run crossing
    /// midnight stays one round. Default: the export time (`20261205T0215`). A round
    /// already published does nothing: export again (or pass a new one) per run.
    #[arg(long, value_name = "ID", requires = "shards")]
    pub round: Option<String>,
}

/// What every template reads.
#[derive(Debug, Serialize)]
struct Context<'a> {
    pipeline: &'a str,
    names: KubeNames,
    image: &'a str,
    port: u16,
    project_dir: &'static str,
    env: &'a [EnvRef],
    /// `--target`: set as `SLUICE_TARGET` in every pod.
    target: Option<&'a str>,
    files: Vec<ConfigEntry>,
    resources: Resources,
    retries: u32,
    schedule: Option<ScheduleView>,
    catchup: &'static str,
    catchup_note: &'static str,
    starting_deadline: u32,
    shards: u32,
    shard_supported: bool,
    kubectl_image: &'a str,
    /// The sharded run's round: a Kubernetes label value.
    round: String,
}

#[derive(Debug, Serialize)]
struct ScheduleView {
    cron: String,
    timezone: String,
}

/// Renders every manifest: (file name, text).
pub fn render(
    shape: &ProjectShape,
    args: &KubernetesArgs,
) -> Result<Vec<(String, String)>, ExportError> {
    if args.shards == Some(0) {
        return Err(ExportError::Invalid("--shards must be at least 1".into()));
    }
    let round = match &args.round {
        Some(round) => round.clone(),
        None => chrono::Utc::now().format("%Y%m%dT%H%M").to_string(),
    };
    // A label value: up to 63 of [A-Za-z0-9._-], alphanumeric at both ends.
    let label_value = round.len() <= 63
        && round
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        && round.starts_with(|c: char| c.is_ascii_alphanumeric())
        && round.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !label_value {
        return Err(ExportError::Invalid(format!(
            "--round {round:?}: a round is a Kubernetes label value: up to 63 letters, digits, \
             `.`, `_` or `-`, starting and ending with a letter or digit"
        )));
    }
    // A CronJob starts at most the latest missed time (never all of them), and only
    // within startingDeadlineSeconds of it.
    let (catchup, catchup_note, starting_deadline) =
        match shape.schedule.as_ref().map(|s| s.catchup.as_str()) {
            Some("all") => (
                "all",
                "A CronJob cannot run every missed time: it starts the latest one (use Airflow or `sluice serve` for `all`).",
                86_400,
            ),
            Some("latest") => (
                "latest",
                "After downtime the latest missed time still runs (up to a day late).",
                86_400,
            ),
            _ => (
                "skip",
                "A run that could not start within 5 minutes of its time is skipped.",
                300,
            ),
        };
    let context = Context {
        pipeline: &shape.pipeline,
        names: KubeNames::new(&shape.pipeline),
        image: &args.image,
        port: args.port,
        project_dir: PROJECT_DIR,
        env: &shape.env,
        target: shape.target.as_deref(),
        files: config_entries(&shape.files)?,
        resources: Resources::default(),
        retries: shape.retries,
        schedule: shape.schedule.as_ref().map(|s| ScheduleView {
            cron: s.cron.clone(),
            timezone: s.timezone.clone(),
        }),
        catchup,
        catchup_note,
        starting_deadline,
        shards: args.shards.unwrap_or(0),
        shard_supported: SHARD_SUPPORTED,
        kubectl_image: &args.kubectl_image,
        round,
    };
    let env = templates();
    let mut names = vec!["configmap.yaml", "serviceaccount.yaml"];
    if shape.schedule.is_some() {
        names.push("cronjob.yaml");
    }
    names.extend(["deployment.yaml", "service.yaml", "pdb.yaml"]);
    if args.shards.is_some() {
        names.push("sharded-job.yaml");
    }
    names
        .into_iter()
        .map(|name| {
            let text = env
                .get_template(name)?
                .render(context! { c => Serde(&context) })?;
            Ok((name.to_string(), text))
        })
        .collect()
}

/// Writes the manifests; returns their paths.
pub fn export(shape: &ProjectShape, args: &KubernetesArgs) -> Result<Vec<PathBuf>, ExportError> {
    if shape.schedule.is_none() {
        eprintln!("note: pipeline.yaml has no `schedule:`, so no CronJob is written");
    }
    if args.shards.is_some() && !SHARD_SUPPORTED {
        eprintln!(
            "note: sharded-job.yaml uses `sluice run --shard K/N` and `--finalize`, which this \
             version does not implement yet"
        );
    }
    let names = KubeNames::new(&shape.pipeline);
    let written = render(shape, args)?
        .into_iter()
        .map(|(name, text)| write_file(&args.out, &name, &text))
        .collect::<Result<Vec<_>, _>>()?;
    let keys: Vec<&str> = shape.env.iter().map(|e| e.name.as_str()).collect();
    if !keys.is_empty() {
        println!(
            "credentials: create the Secret {} with the keys {} (e.g. kubectl create secret generic {} --from-env-file=.env)",
            names.secret,
            keys.join(", "),
            names.secret
        );
    }
    Ok(written)
}
