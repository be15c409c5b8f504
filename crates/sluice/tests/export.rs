//! `sluice export airflow|kubernetes` on the example marketing project, checked by the
//! real tools: the DAG file is loaded by Apache Airflow's DagBag and its task graph
//! compared with the run plan; the manifests are validated by kubernetes-validate.
//! Both run in the pinned venv scripts/test creates (`$SLUICE_TEST_PYTHON`); without
//! it these tests fail, naming the command that creates it.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command as Process;

use common::{assert_exit, stderr, stdout, Project};
use serde_json::Value;

/// The venv's Python, with Airflow, kubernetes-validate and openlineage-python.
fn python() -> PathBuf {
    let path = std::env::var_os("SLUICE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/py/bin/python")
        });
    assert!(
        path.exists(),
        "{} not found: run ./scripts/test, or `source scripts/lib/python.sh && ensure_test_python`, \
         to create the pinned test venv",
        path.display()
    );
    path
}

/// Runs a checker script of tests/python in the venv and parses its JSON stdout.
fn python_check(script: &str, args: &[&Path]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let out = Process::new(python())
        .arg(&script)
        .args(args)
        .output()
        .expect("start python");
    assert!(
        out.status.success(),
        "{} failed\n--- stdout\n{}\n--- stderr\n{}",
        script.display(),
        stdout(&out),
        stderr(&out)
    );
    // The result is the last line (Airflow logs to stdout before it).
    let text = stdout(&out);
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    serde_json::from_str(last).unwrap_or_else(|e| {
        panic!(
            "{} printed no JSON ({e}):\n{}",
            script.display(),
            stdout(&out)
        )
    })
}

/// The example project, its credentials given as (fake) environment values.
fn marketing() -> Project {
    let project = Project::new("");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/marketing");
    copy_dir(&example, project.path());
    project
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

const CREDENTIALS: [&str; 9] = [
    "FB_TOKEN",
    "GADS_DEV_TOKEN",
    "GADS_CLIENT_ID",
    "GADS_CLIENT_SECRET",
    "GADS_REFRESH_TOKEN",
    "GADS_MANAGER_ID",
    "CT_ACCOUNT",
    "CT_PASSCODE",
    "START_DATE",
];

/// `sluice export ARGS…` with every variable the example needs set to a marker value.
fn export(project: &Project, args: &[&str]) -> std::process::Output {
    let mut cmd = project.cmd();
    for name in CREDENTIALS {
        cmd.env(
            name,
            if name == "START_DATE" {
                "2024-07-01"
            } else {
                "value-must-not-leak"
            },
        );
    }
    cmd.arg("export")
        .args(args)
        .output()
        .expect("run sluice export")
}

/// The run plan of the example grouped as the export groups it: task → upstream tasks.
/// Written out by hand from the models' SQL (examples/marketing/models), so the test
/// does not take the exporter's word for it.
fn expected_layer_graph() -> BTreeMap<String, Vec<String>> {
    [
        ("extract_app", vec![]),
        ("extract_crm", vec![]),
        ("extract_facebook", vec![]),
        ("extract_google", vec![]),
        (
            "models_d2a",
            vec![
                "extract_app",
                "extract_crm",
                "extract_facebook",
                "extract_google",
            ],
        ),
        ("models_d2b", vec!["models_d2a"]),
    ]
    .into_iter()
    .map(|(t, up)| (t.to_string(), up.into_iter().map(String::from).collect()))
    .collect()
}

fn task_graph(dag: &Value) -> BTreeMap<String, Vec<String>> {
    dag["tasks"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(id, task)| {
            let upstream = task["upstream"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u.as_str().unwrap().to_string())
                .collect();
            (id.clone(), upstream)
        })
        .collect()
}

fn only_dag(bag: &Value) -> &Value {
    assert_eq!(
        bag["import_errors"],
        serde_json::json!({}),
        "import errors: {bag:#}"
    );
    let dags = bag["dags"].as_object().unwrap();
    assert_eq!(dags.len(), 1, "{bag:#}");
    &dags["sluice_marketing"]
}

#[test]
fn airflow_dag_with_bash_operator_loads_in_dagbag_with_the_plans_graph() {
    let project = marketing();
    let out_dir = project.path().join("dags");
    let out = export(
        &project,
        &[
            "airflow",
            "--operator",
            "bash",
            "--out",
            "dags",
            "--binary",
            "/opt/sluice/bin/sluice",
        ],
    );
    assert_exit(&out, 0);
    let text = std::fs::read_to_string(out_dir.join("sluice_marketing.py")).unwrap();
    assert!(
        !text.contains("value-must-not-leak"),
        "a credential value reached the DAG file"
    );

    let bag = python_check("airflow_dagbag.py", &[&out_dir]);
    assert!(
        bag["airflow_version"].as_str().unwrap().starts_with('3'),
        "{}",
        bag["airflow_version"]
    );
    let dag = only_dag(&bag);
    assert_eq!(task_graph(dag), expected_layer_graph());
    // From pipeline.yaml: schedule "0 5 * * *" (UTC), execution.retries default 3.
    assert_eq!(dag["schedule"], "0 5 * * *");
    assert_eq!(dag["catchup"], false);
    assert_eq!(dag["max_active_runs"], 1);
    let d2b = &dag["tasks"]["models_d2b"];
    assert_eq!(d2b["operator"], "BashOperator");
    assert_eq!(d2b["retries"], 3);
    let command = d2b["bash_command"].as_str().unwrap();
    assert!(
        command.starts_with("/opt/sluice/bin/sluice --pipeline /")
            && command
                .ends_with("run --select 'd2b.*' --today '{{ ds }}' --log-format json --log info"),
        "{command}"
    );
}

#[test]
fn airflow_dag_with_kubernetes_pods_reads_credentials_from_the_secret_by_name() {
    let project = marketing();
    let out_dir = project.path().join("dags");
    let out = export(
        &project,
        &[
            "airflow",
            "--out",
            "dags",
            "--image",
            "registry.example/sluice:1.2",
            "--model-tasks",
            "model",
        ],
    );
    assert_exit(&out, 0);
    let bag = python_check("airflow_dagbag.py", &[&out_dir]);
    let dag = only_dag(&bag);
    let expected: BTreeMap<String, Vec<String>> = [
        ("extract_app", vec![]),
        ("extract_crm", vec![]),
        ("extract_facebook", vec![]),
        ("extract_google", vec![]),
        (
            "model_d2a_ad_performance_daily",
            vec!["extract_facebook", "extract_google"],
        ),
        (
            "model_d2a_customer_profiles",
            vec!["extract_app", "extract_crm"],
        ),
        (
            "model_d2b_channel_spend_daily",
            vec!["model_d2a_ad_performance_daily"],
        ),
        (
            "model_d2b_customer_address_exceptions",
            vec!["model_d2a_customer_profiles"],
        ),
    ]
    .into_iter()
    .map(|(t, up)| (t.to_string(), up.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(task_graph(dag), expected);

    let task = &dag["tasks"]["extract_facebook"];
    assert_eq!(task["operator"], "KubernetesPodOperator");
    assert_eq!(task["image"], "registry.example/sluice:1.2");
    assert_eq!(
        task["arguments"],
        serde_json::json!([
            "run",
            "--select",
            "facebook",
            "--today",
            "{{ ds }}",
            "--log-format",
            "json",
            "--log",
            "info"
        ])
    );
    assert_eq!(
        task["env_vars"]["SLUICE_PIPELINE"],
        "/etc/sluice/pipeline.yaml"
    );
    assert_eq!(
        task["volumes"],
        serde_json::json!(["sluice-marketing-project"])
    );
    // Every variable pipeline.yaml names, from the Secret by name; none by value.
    let secrets: Vec<(String, String, String)> = task["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["env"].as_str().unwrap().into(),
                s["secret"].as_str().unwrap().into(),
                s["key"].as_str().unwrap().into(),
            )
        })
        .collect();
    let mut names: Vec<&str> = CREDENTIALS.to_vec();
    names.extend(["GOOGLE_TOKEN_URL", "PII_HMAC_KEY", "SANDBOX_URL"]);
    names.sort();
    let expected: Vec<(String, String, String)> = names
        .iter()
        .map(|n| {
            (
                n.to_string(),
                "sluice-marketing-credentials".into(),
                n.to_string(),
            )
        })
        .collect();
    assert_eq!(secrets, expected);
    let text = std::fs::read_to_string(out_dir.join("sluice_marketing.py")).unwrap();
    assert!(
        !text.contains("value-must-not-leak"),
        "a credential value reached the DAG file"
    );
}

#[test]
fn kubernetes_manifests_validate_and_carry_no_credential_values() {
    let project = marketing();
    let out = export(
        &project,
        &[
            "kubernetes",
            "--out",
            "k8s",
            "--shards",
            "3",
            "--round",
            "backfill-2026-12",
        ],
    );
    assert_exit(&out, 0);
    let dir = project.path().join("k8s");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "configmap.yaml",
            "cronjob.yaml",
            "deployment.yaml",
            "pdb.yaml",
            "service.yaml",
            "serviceaccount.yaml",
            "sharded-job.yaml"
        ]
    );
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(
            !text.contains("value-must-not-leak"),
            "{} holds a credential value",
            file.display()
        );
    }
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let checked = python_check("k8s_validate.py", &refs);
    let docs: Vec<&Value> = checked["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["doc"])
        .collect();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "ConfigMap",
            "CronJob",
            "Deployment",
            "PodDisruptionBudget",
            "Service",
            "ServiceAccount",
            "Job",
            "Job",
            "ServiceAccount",
            "Role",
            "RoleBinding"
        ]
    );
    let by_kind = |kind: &str| *docs.iter().find(|d| d["kind"] == kind).unwrap();

    // The ConfigMap puts pipeline.yaml and every model back at its path.
    let configmap = by_kind("ConfigMap");
    let pipeline = std::fs::read_to_string(project.path().join("pipeline.yaml")).unwrap();
    assert_eq!(configmap["data"]["pipeline.yaml"], pipeline.as_str());
    let sql =
        std::fs::read_to_string(project.path().join("models/d2b/channel_spend_daily.sql")).unwrap();
    assert_eq!(
        configmap["data"]["models__d2b__channel_spend_daily.sql"],
        sql.as_str()
    );

    let cron = by_kind("CronJob");
    assert_eq!(cron["spec"]["schedule"], "0 5 * * *");
    assert_eq!(cron["spec"]["concurrencyPolicy"], "Forbid");
    let pod = &cron["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    let items = pod["volumes"][0]["configMap"]["items"].as_array().unwrap();
    assert!(items
        .iter()
        .any(|i| i["path"] == "models/d2b/channel_spend_daily.sql"));
    let container = &pod["containers"][0];
    assert_eq!(
        container["args"],
        serde_json::json!(["run", "--log-format", "json"])
    );
    let secret_env = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "FB_TOKEN")
        .unwrap();
    assert_eq!(
        secret_env["valueFrom"]["secretKeyRef"],
        serde_json::json!({"name": "sluice-marketing-credentials", "key": "FB_TOKEN", "optional": false})
    );

    let serve = &by_kind("Deployment")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        serve["args"],
        serde_json::json!(["serve", "--addr", "0.0.0.0:8080"])
    );
    assert_eq!(serve["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(serve["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(serve["resources"]["limits"]["memory"], "512Mi");
    assert_eq!(serve["securityContext"]["readOnlyRootFilesystem"], true);

    let shards = by_kind("Job");
    assert_eq!(shards["spec"]["completionMode"], "Indexed");
    assert_eq!(shards["spec"]["completions"], 3);
    let args = &shards["spec"]["template"]["spec"]["containers"][0]["args"];
    assert_eq!(
        args,
        &serde_json::json!(["run", "--shard", "$(SHARD_INDEX)/3", "--log-format", "json"])
    );
    // Every index, every retry and the finalize run one round, from the pods' label
    // (not from the date: a Job crossing midnight would split its shards over two rounds).
    let jobs: Vec<&Value> = docs
        .iter()
        .copied()
        .filter(|d| d["kind"] == "Job")
        .collect();
    for job in &jobs {
        let template = &job["spec"]["template"];
        assert_eq!(
            template["metadata"]["labels"]["sluice.dev/round"], "backfill-2026-12",
            "{job}"
        );
        let env = template["spec"]["containers"][0]["env"].as_array().unwrap();
        let round = env
            .iter()
            .find(|e| e["name"] == "SLUICE_ROUND")
            .unwrap_or_else(|| panic!("no SLUICE_ROUND in {job}"));
        assert_eq!(
            round["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.labels['sluice.dev/round']"
        );
    }
    assert_eq!(
        jobs[1]["spec"]["template"]["spec"]["containers"][0]["args"][1],
        "--finalize"
    );

    // Without --round, the export time; a round that is no label value is refused.
    let out = export(&project, &["kubernetes", "--out", "k8s2", "--shards", "2"]);
    assert_exit(&out, 0);
    let text = std::fs::read_to_string(project.path().join("k8s2/sharded-job.yaml")).unwrap();
    let today = chrono::Utc::now().format("%Y%m%dT").to_string();
    assert_eq!(
        text.matches(&format!("sluice.dev/round: \"{today}"))
            .count()
            + text.matches(&format!("sluice.dev/round: {today}")).count(),
        2,
        "{text}"
    );
    let out = export(
        &project,
        &[
            "kubernetes",
            "--out",
            "k8s3",
            "--shards",
            "2",
            "--round",
            "2026-12-05T05:00:00+00:00",
        ],
    );
    assert_exit(&out, 3);
    assert!(stderr(&out).contains("label value"), "{}", stderr(&out));
}

#[test]
fn the_dockerfile_lints_clean_with_hadolint() {
    // Docker cannot run here, so the image is not built in tests; hadolint checks the
    // Dockerfile's instructions (pinned base images, non-root user, no cache leftovers).
    let hadolint = python().parent().unwrap().join("hadolint");
    let dockerfile = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Dockerfile");
    let out = Process::new(&hadolint)
        .arg(&dockerfile)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", hadolint.display()));
    assert!(
        out.status.success(),
        "hadolint found problems:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
    let text = std::fs::read_to_string(&dockerfile).unwrap();
    assert!(
        text.contains("USER 65532"),
        "the image must not run as root"
    );
    assert_eq!(
        text.matches("\nFROM ").count(),
        2,
        "multi-stage: build, then run"
    );
}

#[test]
fn sharded_airflow_dag_maps_each_source_over_its_shards_and_runs_models_after() {
    let project = marketing();
    let out_dir = project.path().join("dags");
    let out = export(
        &project,
        &[
            "airflow",
            "--operator",
            "bash",
            "--out",
            "dags",
            "--shards",
            "3",
        ],
    );
    assert_exit(&out, 0);
    let bag = python_check("airflow_dagbag.py", &[&out_dir]);
    let dag = only_dag(&bag);
    assert_eq!(task_graph(dag), expected_layer_graph());
    for source in ["extract_app", "extract_facebook", "extract_google"] {
        let task = &dag["tasks"][source];
        assert_eq!(task["operator"], "BashOperator", "{task}");
        let commands: Vec<&str> = task["mapped"]["bash_command"]
            .as_array()
            .unwrap_or_else(|| panic!("{source} is not mapped: {task}"))
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert_eq!(commands.len(), 3);
        for (k, command) in commands.iter().enumerate() {
            assert!(command.ends_with(&format!("--shard {k}/3")), "{command}");
            // One round per DAG run, whatever the date: Airflow renders its run id.
            assert!(
                command.contains("--round '{{ run_id }}' --shard"),
                "{command}"
            );
        }
    }
    assert!(dag["tasks"]["models_d2a"].get("mapped").is_none());
    // Models after sharded sources wait for the shards and move their cursors.
    let dag_text = std::fs::read_to_string(out_dir.join("sluice_marketing.py"))
        .or_else(|_| {
            let file = std::fs::read_dir(&out_dir)
                .unwrap()
                .next()
                .unwrap()
                .unwrap();
            std::fs::read_to_string(file.path())
        })
        .unwrap();
    assert!(
        dag_text.contains("arguments.append(\"--finalize\")"),
        "{dag_text}"
    );
    assert!(dag_text.contains("finalize=True"), "{dag_text}");
    let d2a = dag["tasks"]["models_d2a"]["bash_command"].as_str().unwrap();
    assert!(d2a.contains("--finalize --round '{{ run_id }}'"), "{d2a}");
}

#[test]
fn exports_run_the_chosen_target_and_ask_only_for_its_variables() {
    let project = marketing();
    let pipeline = project.path().join("pipeline.yaml");
    let mut text = std::fs::read_to_string(&pipeline).unwrap();
    text.push_str(
        "targets:\n  dev: { lake: ./lake-dev, destination: { type: sqlite, path: dev.db } }\n  \
         prod: { lake: \"s3://acme-lake/${PROD_LAKE_PREFIX}\", destination: { type: postgres, url: \"${PROD_WAREHOUSE_URL}\" } }\n",
    );
    std::fs::write(&pipeline, text).unwrap();
    let export_as = |target: &str, args: &[&str]| {
        let mut cmd = project.cmd();
        for name in CREDENTIALS {
            cmd.env(
                name,
                if name == "START_DATE" {
                    "2024-07-01"
                } else {
                    "x"
                },
            );
        }
        cmd.env("PROD_LAKE_PREFIX", "shop")
            .env(
                "PROD_WAREHOUSE_URL",
                "postgres://postgres@127.0.0.1:5432/test",
            )
            .args(["--target", target, "export"])
            .args(args)
            .output()
            .unwrap()
    };

    let out = export_as("dev", &["airflow", "--operator", "bash", "--out", "dags"]);
    assert_exit(&out, 0);
    let bag = python_check("airflow_dagbag.py", &[&project.path().join("dags")]);
    let dag = only_dag(&bag);
    let command = dag["tasks"]["models_d2b"]["bash_command"].as_str().unwrap();
    assert!(command.contains("--target dev run"), "{command}");
    let dag_text: String = std::fs::read_dir(project.path().join("dags"))
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    assert!(
        !dag_text.contains("PROD_WAREHOUSE_URL"),
        "a dev DAG asks for none of prod's secrets"
    );

    let out = export_as("prod", &["kubernetes", "--out", "k8s"]);
    assert_exit(&out, 0);
    let manifests: String = std::fs::read_dir(project.path().join("k8s"))
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    assert!(
        manifests.contains("name: SLUICE_TARGET\n") && manifests.contains("value: \"prod\""),
        "{manifests}"
    );
    assert!(manifests.contains("PROD_WAREHOUSE_URL"), "{manifests}");
    assert!(
        !manifests.contains("postgres://postgres@127.0.0.1"),
        "values never reach the manifests"
    );
}
