//! `sluice serve` as a real process on a loopback port: scheduled runs against the
//! sandbox that never overlap, catch-up of missed times, probes (readiness follows
//! the destination), /metrics parsed by prometheus_client's parser and equal to the
//! run records, token roles, the dashboard, alerts to a webhook and an SMTP sink,
//! and SIGTERM mid-run leaving the destination as before or after the run.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sluice_sandbox::{credentials, Faults, SandboxOptions};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const VIEWER_TOKEN: &str = "viewer-token-0123";
const OPERATOR_TOKEN: &str = "operator-token-4567";

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn serve_section() -> String {
    format!(
        "serve:\n  tokens:\n    - {{ name: dash, role: viewer, sha256: {} }}\n    - {{ name: ops, role: operator, sha256: {} }}\n",
        sha256_hex(VIEWER_TOKEN),
        sha256_hex(OPERATOR_TOKEN)
    )
}

/// A facebook pipeline against the sandbox at `url`, plus `extra` top-level YAML.
fn facebook_pipeline(name: &str, url: &str, extra: &str) -> String {
    format!(
        r#"name: {name}
lake: ./lake
sources:
  facebook:
    type: facebook_ads
    base_url: {url}
    access_token: {token}
    api_version: v26.0
    accounts: all
    streams:
      campaigns: {{}}
      adsets: {{}}
{extra}"#,
        token = credentials::FACEBOOK_ACCESS_TOKEN,
    )
}

/// A files pipeline with one model (`d2a.orders_daily`), plus `extra` top-level YAML.
fn files_project(name: &str, extra: &str) -> Project {
    let project = Project::new(&format!(
        r#"name: {name}
lake: ./lake
sources:
  shop:
    type: files
    streams:
      orders:
        path: data/orders/*.ndjson
        columns: {{ order_id: bigint, customer_id: text, amount: "numeric(12,2)", order_date: date }}
        primary_key: [order_id]
        partition_column: order_date
{extra}"#
    ));
    project.write("data/orders/a.ndjson", orders_ndjson(1, 40));
    project.write(
        "models/d2a/orders_daily.sql",
        "select order_date, sum(amount) as amount, count(*) as orders\nfrom d1.shop_orders group by order_date\n",
    );
    project
}

/// A sandbox with every response delayed, so a run takes a few seconds.
async fn slow_sandbox(slow_ms: u64) -> sluice_sandbox::RunningSandbox {
    let mut options = SandboxOptions::new(7, 1, Utc::now().date_naive());
    options.faults = Faults {
        slow_ms: Some(slow_ms),
        ..Faults::default()
    };
    sluice_sandbox::start(options, 0).await.expect("sandbox")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `sluice serve`, killed when dropped (if it has not stopped by then).
struct Server {
    child: tokio::process::Child,
    base: String,
    log: std::path::PathBuf,
    http: reqwest::Client,
}

impl Server {
    async fn start(project: &Project, args: &[&str]) -> Server {
        let port = free_port();
        let log = project.path().join("serve.log");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .current_dir(project.path())
            .env_remove("RUST_LOG")
            .env("SLUICE_LOG", "info")
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("start sluice serve");
        let server = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = server.http.get(server.url("/healthz")).send().await {
                if r.status().is_success() {
                    return server;
                }
            }
            assert!(
                Instant::now() < deadline,
                "sluice serve did not answer /healthz within 30 s:\n{}",
                server.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn get_json(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    async fn trigger(&self, token: Option<&str>, body: Value) -> (u16, Value) {
        let mut request = self.http.post(self.url("/api/runs")).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let r = request.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Waits until run `id` has finished; its record.
    async fn finished(&self, id: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (status, body) = self.get(&format!("/api/runs/{id}")).await;
            if status == 200 {
                let record: Value = serde_json::from_str(&body).unwrap();
                if record["status"] != "running" && !record["finished_at"].is_null() {
                    // The stream stage also writes a finished-looking record before the
                    // models run. The run was already current when its record appeared,
                    // so once nothing is current it has ended: read its final record.
                    let runs = self.get_json("/api/runs").await;
                    if runs["current_run"].is_null() {
                        return self.get_json(&format!("/api/runs/{id}")).await;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "run {id} did not finish in {within:?}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends SIGTERM and waits for the exit code.
    async fn terminate(&mut self, within: Duration) -> i32 {
        let pid = self.child.id().expect("still running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "sluice serve did not stop within {within:?} of SIGTERM:\n{}",
                    self.log_text()
                )
            })
            .unwrap();
        exit.code().expect("exit code")
    }
}

/// The run records in the lake, oldest first, read from the files themselves.
fn lake_runs(project: &Project, pipeline: &str) -> Vec<Value> {
    let dir = project.path().join(format!("lake/_state/{pipeline}/runs"));
    // Only `*.json`: the lake writes a staging file beside a record and renames it.
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect()
        })
        .unwrap_or_default();
    paths.sort();
    paths
        .iter()
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect()
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .unwrap_or_else(|| panic!("not a time: {v}"))
        .parse()
        .unwrap()
}

#[test]
fn a_schedule_that_is_not_cron_fails_validate_at_its_line() {
    let project = files_project("shop", "schedule: banana\n");
    let out = project.cmd().arg("validate").output().unwrap();
    assert_exit(&out, 3);
    let text = stderr(&out);
    assert!(
        text.contains("pipeline.yaml:12:")
            && text.contains("`banana` is not a valid cron expression"),
        "{text}"
    );

    let project = files_project(
        "shop",
        "schedule: { cron: \"0 6 * * *\", timezone: Europe/Berln }\n",
    );
    let out = project.cmd().arg("validate").output().unwrap();
    assert_exit(&out, 3);
    assert!(
        stderr(&out).contains("schedule.timezone: unknown time zone `Europe/Berln`"),
        "{}",
        stderr(&out)
    );

    let project = files_project(
        "shop",
        "schedule: { cron: \"*/5 * * * * *\", timezone: Europe/Berlin, catch_up: latest }\n",
    );
    let out = project.cmd().arg("validate").output().unwrap();
    assert_exit(&out, 0);
}

#[test]
fn a_schedule_with_seconds_is_for_serve_only_and_export_says_so() {
    let project = files_project("shop", "schedule: \"*/10 * * * * *\"\n");
    assert_exit(&project.cmd().arg("validate").output().unwrap(), 0);
    let out = project
        .cmd()
        .args(["export", "kubernetes", "--out", "k8s"])
        .output()
        .unwrap();
    assert_exit(&out, 3);
    assert!(
        stderr(&out).contains("has a seconds (or year) field"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_cancels_the_run_in_progress_and_a_viewer_cannot() {
    let sandbox = slow_sandbox(1000).await;
    let project = Project::new(&facebook_pipeline(
        "cancelled",
        &sandbox.base_url(),
        &serve_section(),
    ));
    let server = Server::start(&project, &[]).await;
    let (status, body) = server.trigger(Some(OPERATOR_TOKEN), json!({})).await;
    assert_eq!(status, 202, "{body}");
    let id = body["run_id"].as_str().unwrap().to_string();
    // A second trigger while it runs is refused: one run of a pipeline at a time.
    let (status, body) = server.trigger(Some(OPERATOR_TOKEN), json!({})).await;
    assert_eq!(status, 409, "{body}");
    let cancel = |token: &'static str| {
        let request = server
            .http
            .post(server.url(&format!("/api/runs/{id}/cancel")))
            .bearer_auth(token);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(cancel(VIEWER_TOKEN).await, 403);
    assert_eq!(cancel(OPERATOR_TOKEN).await, 202);
    let record = server.finished(&id, Duration::from_secs(60)).await;
    assert_eq!(record["status"], "cancelled", "{record:#}");
    assert_eq!(
        cancel(OPERATOR_TOKEN).await,
        409,
        "nothing is running any more"
    );
    // The audit log says which token triggered and cancelled it (and nothing for refusals).
    let out = project.cmd().args(["audit", "show"]).output().unwrap();
    assert_exit(&out, 0);
    let entries: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seen: Vec<(String, Value)> = entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["token"].clone(),
            )
        })
        .collect();
    // The trigger comes first; the run's own entry and the cancel may come in either order.
    assert_eq!(
        seen[0],
        ("trigger".to_string(), json!("ops")),
        "{entries:#?}"
    );
    let mut rest = seen[1..].to_vec();
    rest.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        rest,
        [
            ("cancel".to_string(), json!("ops")),
            ("run".to_string(), Value::Null),
        ],
        "{entries:#?}"
    );
    assert!(entries
        .iter()
        .all(|e| e["details"]["run_id"] == id.as_str()));
    drop(server);
    sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_runs_happen_every_second_and_never_overlap() {
    // Each run takes well over the one-second interval (every sandbox answer waits).
    let sandbox = slow_sandbox(1500).await;
    let project = Project::new(&facebook_pipeline(
        "every_second",
        &sandbox.base_url(),
        "schedule: \"* * * * * *\"\n",
    ));
    let mut server = Server::start(&project, &[]).await;
    let (status, body) = server.get("/readyz").await;
    assert_eq!(status, 200, "{body}");

    let deadline = Instant::now() + Duration::from_secs(90);
    let finished = loop {
        let finished: Vec<Value> = lake_runs(&project, "every_second")
            .into_iter()
            .filter(|r| r["status"] != "running")
            .collect();
        if finished.len() >= 3 {
            break finished;
        }
        assert!(
            Instant::now() < deadline,
            "fewer than 3 scheduled runs in 90 s:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (status, _) = server.get("/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(server.terminate(Duration::from_secs(60)).await, 0);
    sandbox.shutdown().await;

    let mut spans: Vec<(DateTime<Utc>, DateTime<Utc>)> = lake_runs(&project, "every_second")
        .iter()
        .filter(|r| !r["finished_at"].is_null())
        .map(|r| (time(&r["started_at"]), time(&r["finished_at"])))
        .collect();
    spans.sort();
    assert!(spans.len() >= 3, "{spans:?}");
    for pair in spans.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "runs overlap: {:?} and {:?}",
            pair[0],
            pair[1]
        );
    }
    // The runs are slow enough that each one overran its second.
    let (first_start, first_end) = spans[0];
    assert!(
        first_end - first_start > chrono::Duration::seconds(1),
        "{spans:?}"
    );
    // The run in flight at SIGTERM had the default grace period and finished too.
    for run in lake_runs(&project, "every_second") {
        assert_eq!(run["status"], "succeeded", "{run:#}");
    }
    assert!(finished.len() >= 3);
    let state: Value = serde_json::from_slice(
        &std::fs::read(
            project
                .path()
                .join("lake/_state/every_second/scheduler.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(state["cron"], "* * * * * *");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_run_leaves_each_table_as_before_or_after() {
    let sandbox = slow_sandbox(400).await;
    let project = Project::new(&facebook_pipeline(
        "stopped",
        &sandbox.base_url(),
        "schedule: \"* * * * * *\"\n",
    ));
    let mut server = Server::start(&project, &["--shutdown-grace", "0s"]).await;
    // Wait for the first run to be in flight, then stop the server.
    let deadline = Instant::now() + Duration::from_secs(30);
    let run_id = loop {
        let runs = server.get_json("/api/runs").await;
        if let Some(id) = runs["current_run"].as_str() {
            break id.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no run started:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.terminate(Duration::from_secs(60)).await, 0);
    let log = server.log_text();
    assert!(log.contains("cancelling the run"), "{log}");
    let records = lake_runs(&project, "stopped");
    let record = records
        .iter()
        .find(|r| r["run_id"] == run_id.as_str())
        .unwrap_or_else(|| panic!("no record of {run_id}: {records:#?}"));
    assert_eq!(record["status"], "cancelled", "{record:#}");
    assert_eq!(records.len(), 1, "no run starts after SIGTERM");

    let count = |table: &str| -> Option<i64> {
        let db = project.sqlite();
        db.query_row(&format!("select count(*) from d1__{table}"), [], |r| {
            r.get(0)
        })
        .ok()
    };
    let after_stop: BTreeMap<&str, Option<i64>> = ["facebook_campaigns", "facebook_adsets"]
        .into_iter()
        .map(|t| (t, count(t)))
        .collect();
    // A complete run of the same pipeline: what "after" looks like.
    let out = project.run(&[]);
    assert_exit(&out, 0);
    sandbox.shutdown().await;
    for (table, stopped) in after_stop {
        let complete = count(table).expect("a complete run creates the table");
        assert!(complete > 0);
        assert!(
            stopped.is_none() || stopped == Some(0) || stopped == Some(complete),
            "{table}: {stopped:?} rows after SIGTERM, neither before (none) nor after ({complete})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_runs_the_latest_missed_time_every_one_or_none_as_declared() {
    // Once a year, at midnight on 1 January: the last time passed long ago.
    let schedule = "schedule: { cron: \"0 0 0 1 1 *\", catch_up: POLICY }\n";
    let three_years_ago = (Utc::now() - chrono::Duration::days(3 * 365)).to_rfc3339();
    let last_new_year = format!("{}-01-01T00:00:00Z", Utc::now().format("%Y"));
    // From early December three years ago: 1 January of each of the last three years.
    for (policy, expected_runs) in [("latest", 1), ("skip", 0), ("all", 3)] {
        let name = format!("catch_{policy}");
        let project = files_project(&name, &schedule.replace("POLICY", policy));
        project.write(
            &format!("lake/_state/{name}/scheduler.json"),
            json!({ "last_handled": three_years_ago, "cron": "0 0 0 1 1 *" }).to_string(),
        );
        let mut server = Server::start(&project, &[]).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        let state_path = project
            .path()
            .join(format!("lake/_state/{name}/scheduler.json"));
        loop {
            let state: Value =
                serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
            if time(&state["last_handled"]) == last_new_year.parse::<DateTime<Utc>>().unwrap() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{policy}: the missed time was not handled: {state}\n{}",
                server.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Nothing else is due for months: the runs seen now are all there will be.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let next_new_year = format!(
            "next {}-01-01 00:00:00 UTC",
            Utc::now().format("%Y").to_string().parse::<i32>().unwrap() + 1
        );
        let (_, page) = server.get("/").await;
        assert!(
            page.contains(&next_new_year),
            "{next_new_year} not on:\n{page}"
        );
        assert_eq!(server.terminate(Duration::from_secs(30)).await, 0);
        let runs = lake_runs(&project, &name);
        assert_eq!(runs.len(), expected_runs, "{policy}: {runs:#?}");
        for run in runs {
            assert_eq!(run["status"], "succeeded", "{run:#}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_equal_the_run_records_and_only_operators_trigger_runs() {
    let project = files_project("metered", &serve_section());
    let server = Server::start(&project, &[]).await;

    let (status, body) = server.trigger(None, json!({})).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = server.trigger(Some("not-a-token"), json!({})).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = server.trigger(Some(VIEWER_TOKEN), json!({})).await;
    assert_eq!(status, 403, "{body}");
    assert!(lake_runs(&project, "metered").is_empty());

    let (status, body) = server.trigger(Some(OPERATOR_TOKEN), json!({})).await;
    assert_eq!(status, 202, "{body}");
    let first = body["run_id"].as_str().unwrap().to_string();
    let record = server.finished(&first, Duration::from_secs(60)).await;
    assert_eq!(record["status"], "succeeded", "{record:#}");
    // A second run of just the stream, with more data.
    project.write("data/orders/b.ndjson", orders_ndjson(41, 25));
    let (status, body) = server
        .trigger(Some(OPERATOR_TOKEN), json!({ "select": ["shop.orders"] }))
        .await;
    assert_eq!(status, 202, "{body}");
    let second = body["run_id"].as_str().unwrap().to_string();
    let record = server.finished(&second, Duration::from_secs(60)).await;
    assert_eq!(record["select"], json!(["shop.orders"]));
    let (status, body) = server
        .trigger(Some(OPERATOR_TOKEN), json!({ "select": ["nope"] }))
        .await;
    assert_eq!(status, 400, "{body}");

    // /metrics through the real OpenMetrics parser.
    let (status, text) = server.get("/metrics").await;
    assert_eq!(status, 200);
    let file = project.path().join("metrics.txt");
    std::fs::write(&file, &text).unwrap();
    let out = std::process::Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/metrics_parse.py"))
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser rejected /metrics:\n{}\n{text}",
        stderr(&out)
    );
    let samples: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let sample = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        samples
            .iter()
            .find(|s| {
                s["name"] == name
                    && labels
                        .iter()
                        .all(|(k, v)| s["labels"][*k].as_str() == Some(*v))
            })
            .map(|s| s["value"].as_f64().unwrap())
    };

    let records = lake_runs(&project, "metered");
    assert_eq!(records.len(), 2);
    assert_eq!(
        sample("sluice_runs_total", &[("status", "succeeded")]),
        Some(2.0),
        "{text}"
    );
    assert_eq!(sample("sluice_runs_in_progress", &[]), Some(0.0), "{text}");
    let mut rows_by_task: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut tasks_by_name: BTreeMap<String, u64> = BTreeMap::new();
    for record in &records {
        for task in record["tasks"].as_array().unwrap() {
            let name = task["task"].as_str().unwrap().to_string();
            *rows_by_task
                .entry((name.clone(), task["table"].as_str().unwrap().to_string()))
                .or_default() += task["rows_loaded"].as_u64().unwrap();
            *tasks_by_name.entry(name).or_default() += 1;
        }
    }
    assert_eq!(
        rows_by_task.get(&("shop.orders".into(), "d1.shop_orders".into())),
        Some(&65),
        "{rows_by_task:?}"
    );
    for ((task, table), rows) in &rows_by_task {
        assert_eq!(
            sample(
                "sluice_rows_loaded_total",
                &[("task", task), ("table", table)]
            ),
            Some(*rows as f64),
            "{task} {table}\n{text}"
        );
    }
    for (task, count) in &tasks_by_name {
        assert_eq!(
            sample("sluice_task_duration_seconds_count", &[("task", task)]),
            Some(*count as f64),
            "{task}\n{text}"
        );
    }
    for table in ["d1.shop_orders", "d2a.orders_daily"] {
        let last = sample(
            "sluice_table_last_success_timestamp_seconds",
            &[("table", table)],
        )
        .unwrap_or_else(|| panic!("no last success for {table}\n{text}"));
        assert!(
            (Utc::now().timestamp() as f64 - last).abs() < 120.0,
            "{last}"
        );
        assert!(sample("sluice_table_freshness_seconds", &[("table", table)]).is_some());
    }

    // The JSON API and the dashboard tell the same story.
    let runs = server.get_json("/api/runs").await;
    assert_eq!(runs["runs"][0]["run_id"], second.as_str());
    assert_eq!(runs["runs"][1]["run_id"], first.as_str());
    let tables = server.get_json("/api/tables").await;
    let orders = tables["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "d1.shop_orders")
        .unwrap();
    assert_eq!(orders["rows_loaded_total"], 65);
    assert_eq!(orders["last_rows_loaded"], 25);
    assert_eq!(orders["recent_rows_loaded"], json!([40, 25]));
    let plan = server.get_json("/api/plan").await;
    let ids: Vec<&str> = plan["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["shop.orders", "d1.shop_orders", "d2a.orders_daily"]);
    let (status, page) = server.get("/").await;
    assert_eq!(status, 200);
    for expected in [
        first.as_str(),
        second.as_str(),
        "<svg",
        ">d2a.orders_daily</text>",
        "<title>rows per load: 40, 25</title>",
        "d1.shop_orders",
    ] {
        assert!(
            page.contains(expected),
            "{expected} missing from the dashboard:\n{page}"
        );
    }
    let (status, page) = server.get(&format!("/runs/{first}")).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("d2a.orders_daily") && page.contains("succeeded"),
        "{page}"
    );
    let (status, _) = server.get("/api/runs/no-such-run").await;
    assert_eq!(status, 404);
}

/// Runs `metrics_parse.py` (prometheus_client's OpenMetrics parser) over `text`.
fn parse_metrics(project: &Project, text: &str) -> Vec<Value> {
    let file = project.path().join("metrics.txt");
    std::fs::write(&file, text).unwrap();
    let out = std::process::Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/metrics_parse.py"))
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser rejected /metrics:\n{}\n{text}",
        stderr(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_calls_and_rate_limit_waits_per_source_equal_what_the_api_served_and_the_log_is_kept() {
    // Every 4th request throttled (Facebook code 17 with a regain time), every 9th a 5xx.
    let mut options = SandboxOptions::new(7, 1, Utc::now().date_naive());
    options.faults = Faults {
        rate_limit_every: Some(4),
        server_error_every: Some(9),
        ..Faults::default()
    };
    let sandbox = sluice_sandbox::start(options, 0).await.expect("sandbox");
    let project = Project::new(&facebook_pipeline(
        "calls",
        &sandbox.base_url(),
        &serve_section(),
    ));
    let server = Server::start(&project, &[]).await;
    let (status, body) = server.trigger(Some(OPERATOR_TOKEN), json!({})).await;
    assert_eq!(status, 202, "{body}");
    let run_id = body["run_id"].as_str().unwrap().to_string();
    let record = server.finished(&run_id, Duration::from_secs(120)).await;
    assert_eq!(record["status"], "succeeded", "{record:#}");

    // The run's count is the API's count: every request the sandbox answered.
    let usage = &record["api_usage"]["facebook"];
    let requests = usage["requests"].as_u64().unwrap();
    assert_eq!(requests, sandbox.request_count(), "{record:#}");
    let throttled = usage["throttled"].as_u64().unwrap();
    let retries = usage["retries"].as_u64().unwrap();
    assert!(throttled > 0, "every 4th request was throttled: {usage}");
    assert!(retries > throttled, "5xx were retried too: {usage}");
    assert!(usage["retry_wait_ms"].as_u64().unwrap() > 0, "{usage}");

    let (status, text) = server.get("/metrics").await;
    assert_eq!(status, 200);
    let samples = parse_metrics(&project, &text);
    let sample = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        samples
            .iter()
            .find(|s| {
                s["name"] == name
                    && labels
                        .iter()
                        .all(|(k, v)| s["labels"][*k].as_str() == Some(*v))
            })
            .map(|s| s["value"].as_f64().unwrap())
    };
    let facebook = [("source", "facebook")];
    assert_eq!(
        sample("sluice_api_requests_total", &facebook),
        Some(requests as f64),
        "{text}"
    );
    assert_eq!(
        sample("sluice_api_retries_total", &facebook),
        Some(retries as f64)
    );
    assert_eq!(
        sample("sluice_api_throttled_total", &facebook),
        Some(throttled as f64)
    );
    let waited = sample(
        "sluice_api_wait_seconds_total",
        &[("source", "facebook"), ("reason", "retry")],
    )
    .expect("retry wait sample");
    assert!(
        (waited - usage["retry_wait_ms"].as_f64().unwrap() / 1000.0).abs() < 0.001,
        "{waited} vs {usage}"
    );

    // The run's log: kept in the lake, served as text and on the run's page,
    // with the retries that stderr (filter `info` here, `warn` by default) may not show.
    let (status, log) = server.get(&format!("/api/runs/{run_id}/log")).await;
    assert_eq!(status, 200, "{log}");
    assert!(
        log.contains("task finished") && log.contains("facebook.campaigns"),
        "{log}"
    );
    assert!(
        log.contains("retrying"),
        "the retries are in the log:\n{log}"
    );
    assert!(!log.contains(credentials::FACEBOOK_ACCESS_TOKEN), "{log}");
    let (status, page) = server.get(&format!("/runs/{run_id}")).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("id=\"log\"") && page.contains("task finished"),
        "{page}"
    );
    assert!(page.contains("id=\"api-usage\""), "{page}");
    let (status, _) = server.get("/api/runs/no-such-run/log").await;
    assert_eq!(status, 404);
    let out = project
        .cmd()
        .args(["runs", &run_id, "--show-log"])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert_eq!(stdout(&out), log);
    sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_cannot_start_is_recorded_as_failed() {
    let project = files_project("unstartable", &serve_section());
    let server = Server::start(&project, &[]).await;
    // Broken after the server started: the next run cannot even be planned.
    project.write(
        "models/d2a/orders_daily.sql",
        "select order_date, sum(amount) as amount from d1.no_such_table group by order_date\n",
    );
    let (id, record) = run_now(&server).await;
    assert_eq!(record["status"], "failed", "{record:#}");
    assert!(
        record["error"]
            .as_str()
            .unwrap()
            .contains("could not start (exit code 3)"),
        "{record:#}"
    );
    assert_eq!(lake_runs(&project, "unstartable")[0]["run_id"], id.as_str());
    assert!(
        server.log_text().contains("no_such_table"),
        "the log says why:\n{}",
        server.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_reads_need_a_token_and_probes_do_not() {
    let project = files_project(
        "private",
        &format!("{}  protect_reads: true\n", serve_section()),
    );
    let server = Server::start(&project, &[]).await;
    let get = |path: &'static str, token: Option<&'static str>| {
        let mut request = server.http.get(server.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    for path in [
        "/",
        "/api/runs",
        "/api/tables",
        "/api/plan",
        "/metrics",
        "/docs/",
    ] {
        assert_eq!(get(path, None).await, 401, "{path} without a token");
        assert_eq!(
            get(path, Some("wrong")).await,
            401,
            "{path} with a wrong token"
        );
        assert_eq!(get(path, Some(VIEWER_TOKEN)).await, 200, "{path} as viewer");
        assert_eq!(
            get(path, Some(OPERATOR_TOKEN)).await,
            200,
            "{path} as operator"
        );
    }
    assert_eq!(get("/healthz", None).await, 200);
    assert_eq!(get("/readyz", None).await, 200);
    let (status, _) = server.trigger(Some(VIEWER_TOKEN), json!({})).await;
    assert_eq!(status, 403);

    // The docs site of `sluice docs build`, served from the same code, viewer token and all.
    let docs = |path: &'static str| {
        let request = server.http.get(server.url(path)).bearer_auth(VIEWER_TOKEN);
        async move {
            let r = request.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, index) = docs("/docs/").await;
    assert_eq!(status, 200);
    assert!(
        index.contains("href=\"models/d2a.orders_daily.html\"") && index.contains("<svg"),
        "{index}"
    );
    let (status, model) = docs("/docs/models/d2a.orders_daily.html").await;
    assert_eq!(status, 200);
    assert!(
        model.contains("from d1.shop_orders group by order_date"),
        "{model}"
    );
    let (status, runbook) = docs("/docs/runbook.md").await;
    assert_eq!(status, 200);
    assert!(runbook.starts_with("# private runbook"), "{runbook}");
    assert_eq!(docs("/docs/models/nope.html").await.0, 404);

    // Protecting reads without any token is a config error at its line.
    let project = files_project("private", "serve: { protect_reads: true }\n");
    let out = project.cmd().arg("validate").output().unwrap();
    assert_exit(&out, 3);
    assert!(
        stderr(&out).contains("serve.protect_reads: protect_reads needs at least one token"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_destination() {
    // Fails loudly when PostgreSQL is missing (Pg blocks, so off the async threads).
    tokio::task::spawn_blocking(|| drop(Pg::connect()))
        .await
        .unwrap();
    let prefix = unique_prefix("serve_ready");
    let proxy = TcpProxy::start(&pg_url()).await;
    let project = files_project(
        "ready",
        &format!(
            "destination:\n  type: postgres\n  url: {}\n  schema_prefix: {prefix}\n",
            proxy.url
        ),
    );
    let server = Server::start(&project, &[]).await;
    let ready = |expected: u16| {
        let server = &server;
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let (status, body) = server.get("/readyz").await;
                if status == expected {
                    return serde_json::from_str::<Value>(&body).unwrap();
                }
                assert!(
                    Instant::now() < deadline,
                    "/readyz stayed {status}, expected {expected}: {body}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let body = ready(200).await;
    assert_eq!(body["destination"], "ok");
    proxy.up.store(false, Ordering::SeqCst);
    let body = ready(503).await;
    assert_ne!(body["destination"], "ok");
    assert_eq!(body["lake"], "ok");
    // Liveness does not depend on the destination.
    assert_eq!(server.get("/healthz").await.0, 200);
    proxy.up.store(true, Ordering::SeqCst);
    ready(200).await;
    drop(server);
    tokio::task::spawn_blocking(move || Pg::connect().drop_schemas(&prefix))
        .await
        .unwrap();
}

/// A loopback TCP forwarder to PostgreSQL that can refuse service, standing in for
/// a destination that goes away and comes back.
struct TcpProxy {
    url: String,
    up: Arc<AtomicBool>,
}

impl TcpProxy {
    async fn start(target_url: &str) -> TcpProxy {
        let mut url = reqwest::Url::parse(target_url).unwrap();
        let target = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        url.set_host(Some("127.0.0.1")).unwrap();
        url.set_port(Some(port)).unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let serving = up.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !serving.load(Ordering::SeqCst) {
                    drop(client); // the destination is gone: connection closed at once
                    continue;
                }
                let target = target.clone();
                tokio::spawn(async move {
                    if let Ok(mut upstream) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
            }
        });
        TcpProxy {
            url: url.to_string(),
            up,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_is_alerted_once_by_webhook_and_email_then_its_recovery() {
    let webhook = Webhook::start().await;
    let smtp = SmtpSink::start().await;
    let project = files_project(
        "alerted",
        &format!(
            "{}alerts:\n  webhook: {{ url: \"{}\" }}\n  email: {{ smtp: \"{}\", security: plain, from: sluice@example.com, to: [data@example.com] }}\n  repeat_after: 1h\n",
            serve_section(),
            webhook.url,
            smtp.address
        ),
    );
    // Amounts go up to 499.99: the error-severity range check fails and blocks the model.
    project.write(
        "models/d2b/big_orders.sql",
        "select order_id, amount from d1.shop_orders\n",
    );
    project.write(
        "models/d2b/big_orders.yml",
        "checks:\n  - range: { column: amount, min: 0, max: 10 }\n",
    );
    let public = "http://dashboard.example:8080";
    let mut server = Server::start(&project, &["--public-url", public]).await;
    let (failed_id, record) = run_now(&server).await;
    let failed_since = time(&record["started_at"]);
    assert_eq!(record["status"], "partial", "{record:#}");
    let message = webhook.wait_for(1).await.remove(0);
    let text = message["text"].as_str().unwrap();
    for expected in [
        "alerted",
        "PARTIAL",
        "error checks failed on: d2b.big_orders",
        "Failing since",
        &format!("{public}/runs/{failed_id}"),
    ] {
        assert!(
            text.contains(expected),
            "{expected} missing from the webhook text:\n{text}"
        );
    }
    let mail = smtp.wait_for(1).await.remove(0);
    assert!(
        mail.contains("Subject: [sluice] alerted: run PARTIAL"),
        "{mail}"
    );
    assert!(
        mail.contains("data@example.com")
            && mail.contains("- error checks failed on: d2b.big_orders"),
        "{mail}"
    );
    assert!(
        mail.contains(&format!("{public}/runs/{failed_id}")),
        "{mail}"
    );

    // The dashboard lists the failed check, linking to the run.
    let (_, page) = server.get("/").await;
    let checks = page
        .split("<table id=\"checks\">")
        .nth(1)
        .unwrap_or_else(|| panic!("no failed checks on the dashboard:\n{page}"));
    assert!(
        checks.contains(&format!("href=\"/runs/{failed_id}\""))
            && checks.contains("d2b.big_orders"),
        "{checks}"
    );

    // The same problem again within `repeat_after`, after a restart (the open
    // problem is kept in the lake): nothing new is sent.
    assert_eq!(server.terminate(Duration::from_secs(30)).await, 0);
    let server = Server::start(&project, &["--public-url", public]).await;
    project.write("data/orders/b.ndjson", orders_ndjson(41, 5));
    let (_, record) = run_now(&server).await;
    assert_eq!(record["status"], "partial");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(webhook.received().len(), 1, "a repeat is throttled");

    // Fixed: the next run succeeds and the recovery is announced.
    project.write(
        "models/d2b/big_orders.yml",
        "checks:\n  - range: { column: amount, min: 0, max: 1000 }\n",
    );
    project.write("data/orders/c.ndjson", orders_ndjson(46, 5));
    let (good_id, record) = run_now(&server).await;
    assert_eq!(record["status"], "succeeded", "{record:#}");
    let messages = webhook.wait_for(2).await;
    let recovery = messages[1]["text"].as_str().unwrap();
    assert!(
        recovery.contains("recovered")
            && recovery.contains(&good_id)
            && recovery.contains(&failed_since.format("%Y-%m-%d %H:%M:%S UTC").to_string()),
        "the recovery names the first failure's time, across the restart:\n{recovery}"
    );
    let mails = smtp.wait_for(2).await;
    assert!(mails[1].contains("recovered"), "{}", mails[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_schema_change_is_announced_and_shown_on_the_dashboard() {
    let webhook = Webhook::start().await;
    let project = Project::new(&format!(
        "name: drifting\nlake: ./lake\nsources:\n  shop:\n    type: files\n    streams:\n      orders:\n        path: data/*.ndjson\n        primary_key: [id]\n{}alerts:\n  webhook: {{ url: \"{}\" }}\n",
        serve_section(),
        webhook.url
    ));
    project.write("data/day1.ndjson", "{\"id\": 1, \"amount\": 10}\n");
    let server = Server::start(&project, &[]).await;
    let (_, record) = run_now(&server).await;
    assert_eq!(record["status"], "succeeded", "{record:#}");
    // A field the stream never had: a schema change, loaded under the default policy.
    project.write(
        "data/day2.ndjson",
        "{\"id\": 2, \"amount\": 12, \"coupon\": \"X1\"}\n",
    );
    let (changed_id, record) = run_now(&server).await;
    assert_eq!(record["status"], "succeeded", "{record:#}");
    let messages = webhook.wait_for(1).await;
    let text = messages[0]["text"].as_str().unwrap();
    assert!(
        text.contains("drifting: source schema changed")
            && text.contains("shop.orders")
            && text.contains("coupon")
            && text.contains(&format!("/runs/{changed_id}")),
        "{text}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        webhook.received().len(),
        1,
        "only the run with the change alerts"
    );
    let (_, page) = server.get("/").await;
    let changes = page
        .split("<table id=\"schema-changes\">")
        .nth(1)
        .unwrap_or_else(|| panic!("no schema changes on the dashboard:\n{page}"));
    assert!(
        changes.contains("coupon") && changes.contains(&changed_id),
        "{changes}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_not_loaded_within_its_limit_is_announced_stale_then_fresh() {
    let webhook = Webhook::start().await;
    let project = files_project(
        "freshness",
        &format!(
            "{}alerts:\n  webhook: {{ url: \"{}\" }}\n  freshness: {{ warn_after: 3s, tables: {{ d2a.orders_daily: 1h }} }}\n",
            serve_section(),
            webhook.url
        ),
    );
    let server = Server::start(&project, &[]).await;
    let (_, record) = run_now(&server).await;
    assert_eq!(record["status"], "succeeded", "{record:#}");
    let loaded = Instant::now();
    let stale = webhook.wait_for(1).await;
    assert!(
        loaded.elapsed() >= Duration::from_secs(2),
        "announced before the limit: {stale:?}"
    );
    let text = stale[0]["text"].as_str().unwrap();
    assert!(
        text.contains("freshness: d1.shop_orders is stale") && text.contains("limit 3 s"),
        "{text}"
    );
    // The model's own limit is an hour: only the D1 table breached.
    assert!(!text.contains("orders_daily"), "{text}");

    let (_, record) = run_now(&server).await;
    assert_eq!(record["status"], "succeeded", "{record:#}");
    let messages = webhook.wait_for(2).await;
    let text = messages[1]["text"].as_str().unwrap();
    assert!(text.contains("d1.shop_orders is fresh again"), "{text}");
}

/// Triggers a whole run with the operator token; its id and final record.
async fn run_now(server: &Server) -> (String, Value) {
    let (status, body) = server.trigger(Some(OPERATOR_TOKEN), json!({})).await;
    assert_eq!(status, 202, "{body}");
    let id = body["run_id"].as_str().unwrap().to_string();
    let record = server.finished(&id, Duration::from_secs(60)).await;
    (id, record)
}

/// A Slack-style webhook on loopback: keeps every JSON body POSTed to it.
struct Webhook {
    url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Webhook {
    async fn start() -> Webhook {
        let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
        let store = bodies.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/alerts", listener.local_addr().unwrap());
        let app = axum::Router::new().route(
            "/hooks/alerts",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                let store = store.clone();
                async move {
                    store.lock().unwrap().push(body);
                    "ok"
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Webhook { url, bodies }
    }

    fn received(&self) -> Vec<Value> {
        self.bodies.lock().unwrap().clone()
    }

    async fn wait_for(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{n} webhook posts expected, got {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Just enough of an SMTP server (RFC 5321) on loopback to accept messages.
struct SmtpSink {
    address: String,
    messages: Arc<Mutex<Vec<String>>>,
}

impl SmtpSink {
    async fn start() -> SmtpSink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let messages: Arc<Mutex<Vec<String>>> = Arc::default();
        let store = messages.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(Self::session(stream, store.clone()));
            }
        });
        SmtpSink { address, messages }
    }

    async fn session(stream: TcpStream, store: Arc<Mutex<Vec<String>>>) {
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let _ = write.write_all(b"220 sink ESMTP\r\n").await;
        let mut envelope = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            let command = line.to_ascii_uppercase();
            let reply: &[u8] = if command.starts_with("EHLO") || command.starts_with("HELO") {
                b"250 sink\r\n"
            } else if command.starts_with("MAIL FROM") || command.starts_with("RCPT TO") {
                envelope.push_str(&line);
                envelope.push('\n');
                b"250 OK\r\n"
            } else if command == "DATA" {
                let _ = write.write_all(b"354 end with .\r\n").await;
                let mut message = envelope.clone();
                while let Ok(Some(line)) = lines.next_line().await {
                    if line == "." {
                        break;
                    }
                    message.push_str(&line);
                    message.push('\n');
                }
                // Undo quoted-printable soft line breaks and `=` escapes (RFC 2045), which
                // the sender uses for long lines; enough for the assertions' text.
                let message = message.replace("=\n", "").replace("=3D", "=");
                store.lock().unwrap().push(message);
                envelope.clear();
                b"250 queued\r\n"
            } else if command == "QUIT" {
                let _ = write.write_all(b"221 bye\r\n").await;
                return;
            } else {
                b"250 OK\r\n"
            };
            if write.write_all(reply).await.is_err() {
                return;
            }
        }
    }

    async fn wait_for(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.messages.lock().unwrap().clone();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{n} e-mails expected, got {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_headless_chromium_shows_runs_the_dag_a_failed_check_and_a_schema_change()
{
    let project = files_project("dash", &serve_section());
    project.write(
        "models/d2a/orders_daily.yml",
        "checks:\n  - range: { column: amount, max: 0 }\n",
    );
    let server = Server::start(&project, &[]).await;
    let (_, first) = run_now(&server).await;
    assert_eq!(first["status"], "partial", "{first:#}");
    project.write(
        "data/orders/b.ndjson",
        "{\"order_id\": 900, \"customer_id\": \"C-9\", \"amount\": \"1.00\", \"order_date\": \"2024-07-02\", \"coupon\": \"X1\"}\n",
    );
    let (changed, _) = run_now(&server).await;

    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let png = shots.join("dashboard.png");
    let _ = std::fs::remove_file(&png);
    let dom = tokio::task::spawn_blocking({
        let (url, png) = (server.url("/"), png.clone());
        move || render(&url, &png)
    })
    .await
    .unwrap();
    let section = |id: &str| -> String {
        dom.split(&format!("<table id=\"{id}\">"))
            .nth(1)
            .and_then(|rest| rest.split("</table>").next())
            .unwrap_or_else(|| panic!("no #{id} on the dashboard:\n{dom}"))
            .to_string()
    };
    let runs = section("runs");
    assert_eq!(
        runs.matches("<tr>").count(),
        3,
        "a header and two runs:\n{runs}"
    );
    let tasks = first["tasks"].as_array().unwrap();
    let counted: u64 = tasks
        .iter()
        .map(|t| t["rows_quarantined"].as_u64().unwrap())
        .sum();
    let check = tasks
        .iter()
        .find(|t| t["task"] == "d2a.orders_daily:checks")
        .unwrap();
    let failing: u64 = check["error"]["message"]
        .as_str()
        .unwrap()
        .split(" failing rows")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no failing-row count in {check:#}"));
    assert!(failing > 0);
    assert_eq!(
        counted, failing,
        "each failing row is counted once: {first:#}"
    );
    assert!(
        runs.contains("partial") && runs.contains(&changed),
        "{runs}"
    );
    assert!(
        dom.contains("<svg") && dom.contains("shop.orders") && dom.contains("d2a.orders_daily"),
        "the plan is drawn with its nodes:\n{dom}"
    );
    let checks = section("checks");
    assert!(
        checks.contains("range") && checks.contains("orders_daily"),
        "{checks}"
    );
    let changes = section("schema-changes");
    assert!(
        changes.contains("coupon") && changes.contains(&changed),
        "{changes}"
    );
    let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 20_000,
        "a screenshot of the page was taken ({size} bytes)"
    );

    // The failed run's page: its tasks, the failed check, and its log.
    let first_id = first["run_id"].as_str().unwrap().to_string();
    let run_png = shots.join("dashboard-run.png");
    let run_dom = tokio::task::spawn_blocking({
        let (url, png) = (server.url(&format!("/runs/{first_id}")), run_png.clone());
        move || render(&url, &png)
    })
    .await
    .unwrap();
    let log = run_dom
        .split("<pre id=\"log\">")
        .nth(1)
        .and_then(|rest| rest.split("</pre>").next())
        .unwrap_or_else(|| panic!("no log on the run's page:\n{run_dom}"));
    assert!(
        log.contains("task finished") && log.contains("shop.orders"),
        "{log}"
    );
    assert!(
        run_dom.contains("d2a.orders_daily:checks") && run_dom.contains("failing rows"),
        "{run_dom}"
    );

    // A viewer's token cannot trigger a run; an operator's can (through the same API the
    // dashboard links to).
    let (status, _) = server.trigger(Some(VIEWER_TOKEN), json!({})).await;
    assert_eq!(status, 403);
}
