//! `sluice plan` and `sluice run --select` with graph operators, on the example
//! marketing project (examples/marketing) against the sandbox over real HTTP.

mod common;

use std::collections::BTreeSet;

use chrono::Utc;
use common::*;
use serde_json::Value;
use sluice_sandbox::SandboxOptions;

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// The streams that feed `d2a.ad_performance_daily` (its SQL reads their D1 tables).
const AD_STREAMS: [&str; 4] = [
    "facebook.insights",
    "facebook.insights_actions",
    "google.ad_group_daily",
    "google.campaign_daily",
];

#[test]
fn plan_shows_where_each_model_runs() {
    let project = example_project("http://127.0.0.1:9");
    let json = |project: &Project| -> Value {
        let out = project
            .cmd()
            .args(["plan", "--format", "json"])
            .output()
            .unwrap();
        assert_exit(&out, 0);
        serde_json::from_str(&stdout(&out)).unwrap()
    };
    let engine = |plan: &Value, id: &str| -> Value {
        let nodes = plan["nodes"].as_array().unwrap();
        let node = nodes.iter().find(|n| n["id"] == id).unwrap();
        node.get("engine").cloned().unwrap_or(Value::Null)
    };
    let plan = json(&project);
    assert_eq!(engine(&plan, "d2b.channel_spend_daily"), "local");
    assert_eq!(engine(&plan, "facebook.insights"), Value::Null);

    // The project's engine applies to every model but one that names its own.
    let pipeline = std::fs::read_to_string(project.path().join("pipeline.yaml")).unwrap();
    assert!(pipeline.contains("\nmodels: ./models\n"));
    project.write(
        "pipeline.yaml",
        pipeline.replace(
            "\nmodels: ./models\n",
            "\nmodels: { path: ./models, engine: destination }\n",
        ),
    );
    let profiles = "models/d2a/customer_profiles.yml";
    let yml = std::fs::read_to_string(project.path().join(profiles)).unwrap();
    project.write(profiles, format!("engine: local\n{yml}"));
    let plan = json(&project);
    assert_eq!(engine(&plan, "d2b.channel_spend_daily"), "destination");
    assert_eq!(engine(&plan, "d2a.customer_profiles"), "local");
    let out = project.cmd().arg("plan").output().unwrap();
    assert_exit(&out, 0);
    let text = stdout(&out);
    let line = |id: &str| {
        text.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(id))
            .unwrap_or_else(|| panic!("no line for {id} in\n{text}"))
            .to_string()
    };
    assert!(
        line("d2b.channel_spend_daily").ends_with("[runs in the warehouse]"),
        "{text}"
    );
    assert!(
        !line("d2a.customer_profiles").contains("warehouse"),
        "{text}"
    );
}

#[test]
fn plan_json_lists_every_stream_model_and_check_with_its_upstreams() {
    // Planning never calls a source: an address nothing listens on is fine.
    let project = example_project("http://127.0.0.1:9");
    let out = project
        .cmd()
        .args(["plan", "--format", "json"])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let plan: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let nodes = plan["nodes"].as_array().unwrap();
    let node = |id: &str| {
        nodes
            .iter()
            .find(|n| n["id"] == id)
            .unwrap_or_else(|| panic!("no node {id} in\n{plan:#}"))
    };
    let ids = |kind: &str| -> BTreeSet<String> {
        nodes
            .iter()
            .filter(|n| n["kind"] == kind)
            .map(|n| n["id"].as_str().unwrap().to_string())
            .collect()
    };

    // Every stream of the example, each with its D1 table after it.
    let streams = ids("stream");
    for stream in AD_STREAMS
        .iter()
        .chain(&[
            "facebook.campaigns",
            "facebook.adsets",
            "facebook.ads",
            "facebook.ad_accounts",
        ])
        .chain(&["app.events", "app.profiles", "crm.customers"])
    {
        assert!(streams.contains(*stream), "{stream} missing: {streams:?}");
    }
    assert_eq!(ids("d1").len(), streams.len());
    assert_eq!(
        strings(&node("d1.facebook_insights")["upstream"]),
        ["facebook.insights"]
    );
    // Every model, and every check of every model's YAML.
    assert_eq!(
        ids("model"),
        BTreeSet::from(
            [
                "d2a.ad_performance_daily",
                "d2a.customer_profiles",
                "d2b.channel_spend_daily",
                "d2b.customer_address_exceptions"
            ]
            .map(String::from)
        )
    );
    assert_eq!(ids("check").len(), 4 + 5 + 2 + 1, "{:?}", ids("check"));

    // The edges of d2b.channel_spend_daily: it reads d2a.ad_performance_daily, which
    // reads the four ad tables; its two checks read it.
    let spend = node("d2b.channel_spend_daily");
    assert_eq!(strings(&spend["upstream"]), ["d2a.ad_performance_daily"]);
    assert_eq!(
        strings(&spend["downstream"]),
        [
            "d2b.channel_spend_daily:range(ctr)",
            "d2b.channel_spend_daily:unique(date,platform)"
        ]
    );
    assert_eq!(
        strings(&node("d2a.ad_performance_daily")["upstream"]),
        AD_STREAMS.map(|s| format!("d1.{}", s.replace('.', "_")))
    );
    assert_eq!(
        strings(&node("d2b.channel_spend_daily:range(ctr)")["upstream"]),
        ["d2b.channel_spend_daily"]
    );
    // Nodes come after what they read.
    let position = |id: &str| nodes.iter().position(|n| n["id"] == id).unwrap();
    for n in nodes {
        for up in strings(&n["upstream"]) {
            assert!(position(&up) < position(n["id"].as_str().unwrap()));
        }
    }

    // Text and dot render the same selection; an unknown name lists what exists.
    let out = project
        .cmd()
        .args(["plan", "--select", "+channel_spend_daily"])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(
        text.contains("4 streams, 4 D1 tables, 2 models, 6 checks"),
        "{text}"
    );
    assert!(!text.contains("app.profiles"), "{text}");
    let out = project
        .cmd()
        .args(["plan", "--format", "dot"])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("\"d2a.ad_performance_daily\" -> \"d2b.channel_spend_daily\";"));
    let out = project
        .cmd()
        .args(["plan", "--select", "+spend_daily"])
        .output()
        .unwrap();
    assert_exit(&out, 3);
    let err = stderr(&out);
    assert!(err.contains("matches no stream, model or check"), "{err}");
    assert!(err.contains("d2b.channel_spend_daily"), "{err}");
}

#[test]
fn select_upstream_of_a_model_runs_exactly_its_subgraph() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let today = Utc::now().date_naive();
    let sandbox = runtime
        .block_on(sluice_sandbox::start(SandboxOptions::new(7, 1, today), 0))
        .unwrap();
    let project = example_project(&sandbox.base_url());
    let out = project.run(&["--select", "+channel_spend_daily", "--json"]);
    runtime.block_on(sandbox.shutdown());
    assert_exit(&out, 0);
    let record: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let ran: BTreeSet<String> = record["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task"].as_str().unwrap().to_string())
        .collect();
    let mut expected: BTreeSet<String> = AD_STREAMS.iter().map(|s| s.to_string()).collect();
    expected.extend(
        [
            "d2a.ad_performance_daily",
            "d2a.ad_performance_daily:checks",
            "d2b.channel_spend_daily",
            "d2b.channel_spend_daily:checks",
        ]
        .map(String::from),
    );
    assert_eq!(ran, expected);
    for task in record["tasks"].as_array().unwrap() {
        assert_eq!(task["status"], "succeeded", "{task}");
    }
    assert_eq!(
        record["select"],
        serde_json::json!(["+channel_spend_daily"])
    );

    // The warehouse has the model's rows and nothing the selection left out.
    let db = project.sqlite();
    let rows: i64 = db
        .query_row("select count(*) from d2b__channel_spend_daily", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(rows > 0);
    let others: i64 = db
        .query_row(
            "select count(*) from sqlite_master where name in \
             ('d1__app_profiles', 'd1__facebook_campaigns', 'd2a__customer_profiles')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(others, 0);
}
