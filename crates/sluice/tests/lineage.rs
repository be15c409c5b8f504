//! OpenLineage events of real runs (files → SQLite → models), written to a file and
//! POSTed to an HTTP receiver on loopback, checked with the openlineage-python
//! client's models in the pinned test venv (`$SLUICE_TEST_PYTHON`, see scripts/test).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::sync::{Arc, Mutex};

use common::{assert_exit, orders_ndjson, stderr, stdout, Project};
use serde_json::Value;

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

/// The events in `file`, checked by the client's models; their summary.
fn validate(file: &Path) -> Vec<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/lineage_validate.py");
    let out = Process::new(python())
        .arg(script)
        .arg(file)
        .output()
        .expect("start python");
    assert!(
        out.status.success(),
        "lineage_validate.py failed\n--- stdout\n{}\n--- stderr\n{}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    serde_json::from_str::<Vec<Value>>(last).expect("summary JSON")
}

/// A files pipeline with one good model and one that fails while running.
fn project(lineage: &str) -> Project {
    let project = Project::new(&format!(
        r#"name: shop
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
        write_mode: append
{lineage}
"#
    ));
    project.write("data/orders/a.ndjson", orders_ndjson(1, 40));
    project.write(
        "models/d2a/orders_daily.sql",
        "select order_date, customer_id, sum(amount) as amount, count(*) as orders\nfrom d1.shop_orders group by order_date, customer_id\n",
    );
    // `C-…` is not a number: this model plans, then fails when it runs.
    project.write(
        "models/d2b/broken.sql",
        "select cast(customer_id as bigint) as customer from d2a.orders_daily\n",
    );
    project
}

fn events_of(summary: &[Value]) -> Vec<(String, String)> {
    summary
        .iter()
        .map(|e| {
            (
                e["eventType"].as_str().unwrap().to_string(),
                e["job"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn expected_sequence() -> Vec<(String, String)> {
    [
        ("START", "shop"),
        ("START", "shop.shop.orders"),
        ("COMPLETE", "shop.shop.orders"),
        ("START", "shop.d2a.orders_daily"),
        ("COMPLETE", "shop.d2a.orders_daily"),
        ("START", "shop.d2b.broken"),
        ("FAIL", "shop.d2b.broken"),
        ("FAIL", "shop"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect()
}

/// What every run of [`project`] must say: datasets, schemas, counts, parents, errors.
fn check_run_events(summary: &[Value], lake: &Path) {
    assert_eq!(events_of(summary), expected_sequence(), "{summary:#?}");
    let pipeline_run = summary[0]["runId"].as_str().unwrap();
    assert_eq!(summary.last().unwrap()["runId"], pipeline_run);
    for event in &summary[1..summary.len() - 1] {
        assert_eq!(event["parentRunId"], pipeline_run, "{event}");
    }
    let lake_namespace = format!("file://{}", lake.canonicalize().unwrap().display());

    let stream_done = &summary[2];
    assert_eq!(stream_done["inputs"], serde_json::json!(["orders"]));
    let d1 = &stream_done["outputs"][0];
    assert_eq!(d1["namespace"], lake_namespace.as_str());
    assert_eq!(d1["name"], "d1.shop_orders");
    assert_eq!(d1["rowCount"], 40);
    let columns: Vec<&str> = d1["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f[0].as_str().unwrap())
        .collect();
    for column in ["order_id", "customer_id", "amount", "order_date"] {
        assert!(
            columns.contains(&column),
            "{column} missing from {columns:?}"
        );
    }
    let amount = d1["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f[0] == "amount")
        .unwrap();
    assert!(
        amount[1].as_str().unwrap().starts_with("numeric"),
        "{amount}"
    );

    let model_done = &summary[4];
    assert_eq!(model_done["inputs"], serde_json::json!(["d1.shop_orders"]));
    let d2a = &model_done["outputs"][0];
    assert_eq!(d2a["name"], "d2a.orders_daily");
    let model_columns: Vec<&str> = d2a["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f[0].as_str().unwrap())
        .collect();
    assert_eq!(
        &model_columns[..4],
        ["order_date", "customer_id", "amount", "orders"]
    );

    let failed = &summary[6];
    assert_eq!(failed["inputs"], serde_json::json!(["d2a.orders_daily"]));
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("cast"),
        "{failed}"
    );
    assert!(summary.last().unwrap()["error"].as_str().is_some());
}

#[test]
fn run_events_go_to_a_file_and_are_accepted_by_the_openlineage_models() {
    let project = project("lineage: { file: lineage.ndjson, namespace: test }");
    let out = project.run(&[]);
    assert_exit(&out, 5);
    let summary = validate(&project.path().join("lineage.ndjson"));
    check_run_events(&summary, &project.path().join("lake"));
}

/// Each POST a [`Receiver`] got: its Authorization header and body.
type Posts = Arc<Mutex<Vec<(Option<String>, String)>>>;

/// A loopback OpenLineage endpoint: keeps each POSTed body and Authorization header.
struct Receiver {
    url: String,
    received: Posts,
    runtime: tokio::runtime::Runtime,
}

impl Receiver {
    fn start(status: u16) -> Receiver {
        use axum::http::{HeaderMap, StatusCode};
        use axum::routing::post;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let received: Posts = Arc::default();
        let store = received.clone();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}/api/v1/lineage", listener.local_addr().unwrap());
        let app = axum::Router::new().route(
            "/api/v1/lineage",
            post(move |headers: HeaderMap, body: String| {
                let store = store.clone();
                async move {
                    let auth = headers
                        .get("authorization")
                        .map(|v| v.to_str().unwrap().to_string());
                    store.lock().unwrap().push((auth, body));
                    StatusCode::from_u16(status).unwrap()
                }
            }),
        );
        runtime.spawn(async move { axum::serve(listener, app).await });
        Receiver {
            url,
            received,
            runtime,
        }
    }
}

#[test]
fn run_events_are_posted_to_an_http_endpoint_with_the_api_key() {
    let receiver = Receiver::start(200);
    let project = project(&format!(
        "lineage: {{ url: \"{}\", api_key: \"${{LINEAGE_KEY}}\" }}",
        receiver.url
    ));
    let out = project
        .cmd()
        .env("LINEAGE_KEY", "k-123")
        .arg("run")
        .output()
        .unwrap();
    assert_exit(&out, 5);
    let received = receiver.received.lock().unwrap().clone();
    assert_eq!(received.len(), expected_sequence().len());
    assert!(received
        .iter()
        .all(|(auth, _)| auth.as_deref() == Some("Bearer k-123")));
    let file = project.path().join("received.ndjson");
    let lines: Vec<String> = received.iter().map(|(_, body)| body.clone()).collect();
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let summary = validate(&file);
    check_run_events(&summary, &project.path().join("lake"));
    drop(receiver.runtime);
}

#[test]
fn an_unreachable_lineage_endpoint_is_a_warning_not_a_failed_run() {
    let receiver = Receiver::start(503);
    let project = project(&format!("lineage: {{ url: \"{}\" }}", receiver.url));
    project.write(
        "models/d2b/broken.sql",
        "select customer_id from d2a.orders_daily\n",
    );
    let out = project.run(&[]);
    assert_exit(&out, 0);
    assert!(
        stderr(&out).contains("lineage events not delivered") && stderr(&out).contains("503"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn lineage_needs_exactly_one_destination() {
    let project = project("lineage: { namespace: x }");
    let out = project.cmd().arg("validate").output().unwrap();
    assert_exit(&out, 3);
    assert!(stderr(&out).contains("pipeline.yaml:"), "{}", stderr(&out));
    let out = project.run(&[]);
    assert_exit(&out, 3);
    assert!(
        stderr(&out).contains("exactly one of `url`"),
        "{}",
        stderr(&out)
    );
    assert!(!project.path().join("lake/d1").exists(), "nothing may run");
}
