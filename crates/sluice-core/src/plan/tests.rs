//! The plan of a pipeline shaped like examples/marketing, and `--select` over it.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use super::*;
use crate::source::{PageSink, RunWindow, Slice, SourceError, StreamPlan};

/// A source that only names its streams: planning never reads one.
struct Declared {
    name: &'static str,
    streams: Vec<&'static str>,
}

#[async_trait]
impl Source for Declared {
    fn name(&self) -> &str {
        self.name
    }

    fn streams(&self) -> Vec<StreamSpec> {
        self.streams
            .iter()
            .map(|s| StreamSpec {
                name: s.to_string(),
                table: format!("{}_{s}", self.name),
                schema: Default::default(),
                infer_columns: true,
                primary_key: Vec::new(),
                partition_column: None,
                write_mode: Default::default(),
                dedupe: Default::default(),
            })
            .collect()
    }

    async fn check(&self) -> Result<(), SourceError> {
        Ok(())
    }

    async fn plan(
        &self,
        _: &StreamSpec,
        _: Option<&Value>,
        _: &RunWindow,
    ) -> Result<StreamPlan, SourceError> {
        unreachable!("planning a run never reads a source")
    }

    async fn read(
        &self,
        _: &StreamSpec,
        _: &Slice,
        _: &mut dyn PageSink,
    ) -> Result<(), SourceError> {
        unreachable!("planning a run never reads a source")
    }
}

fn model(
    layer: &str,
    name: &str,
    reads: &[&str],
    checks: &[&str],
    tags: &[&str],
) -> ModelDescription {
    ModelDescription {
        layer: layer.into(),
        name: name.into(),
        reads: reads.iter().map(|s| s.to_string()).collect(),
        checks: checks.iter().map(|s| s.to_string()).collect(),
        tags: tags.iter().map(|s| s.to_string()).collect(),
        description: None,
        engine: Some("local"),
    }
}

fn marketing() -> RunPlan {
    let sources: Vec<Arc<dyn Source>> = vec![
        Arc::new(Declared {
            name: "facebook",
            streams: vec!["insights", "insights_actions", "campaigns"],
        }),
        Arc::new(Declared {
            name: "google",
            streams: vec!["campaign_daily", "ad_group_daily"],
        }),
        Arc::new(Declared {
            name: "app",
            streams: vec!["events", "profiles"],
        }),
    ];
    // Given out of order on purpose: the plan orders by dependency itself.
    let models = vec![
        model(
            "d2b",
            "channel_spend_daily",
            &["d2a.ad_performance_daily"],
            &["unique(date,platform)"],
            &["finance"],
        ),
        model(
            "d2a",
            "ad_performance_daily",
            &[
                "d1.facebook_insights",
                "d1.facebook_insights_actions",
                "d1.google_campaign_daily",
                "d1.google_ad_group_daily",
            ],
            &["not_null(date)", "range(spend)"],
            &["finance", "ads"],
        ),
        model(
            "d2a",
            "customer_profiles",
            &["d1.app_profiles", "d1.gone_table"],
            &[],
            &[],
        ),
        model(
            "d2b",
            "customer_address_exceptions",
            &["d2a.customer_profiles"],
            &["accepted_values(rule)"],
            &["ops"],
        ),
    ];
    RunPlan::build(&sources, &models).unwrap()
}

fn selected(plan: &RunPlan, patterns: &[&str]) -> Vec<String> {
    let patterns: Vec<String> = patterns.iter().map(|s| s.to_string()).collect();
    plan.select(&patterns)
        .unwrap()
        .ids()
        .map(String::from)
        .collect()
}

fn tasks(plan: &RunPlan, patterns: &[&str]) -> Vec<String> {
    let patterns: Vec<String> = patterns.iter().map(|s| s.to_string()).collect();
    let selection = plan.select(&patterns).unwrap();
    plan.tasks(&selection)
        .into_iter()
        .map(|t| match t {
            PlanTask::Stream(s) => s.name(),
            PlanTask::Model(m) => m,
        })
        .collect()
}

#[test]
fn edges_come_from_streams_tables_and_model_reads() {
    let plan = marketing();
    let node = |id: &str| plan.node(id).unwrap_or_else(|| panic!("no node {id}"));
    assert_eq!(node("facebook.insights").upstream, Vec::<String>::new());
    assert_eq!(node("d1.facebook_insights").upstream, ["facebook.insights"]);
    assert_eq!(
        node("d2a.ad_performance_daily").upstream,
        [
            "d1.facebook_insights",
            "d1.facebook_insights_actions",
            "d1.google_ad_group_daily",
            "d1.google_campaign_daily"
        ]
    );
    assert_eq!(
        node("d2b.channel_spend_daily").upstream,
        ["d2a.ad_performance_daily"]
    );
    assert_eq!(
        plan.downstream("d2b.channel_spend_daily"),
        ["d2b.channel_spend_daily:unique(date,platform)"]
    );
    assert_eq!(
        node("d2b.channel_spend_daily:unique(date,platform)").kind,
        NodeKind::Check
    );
    // A table no stream writes gets no edge: the model reads what the lake holds.
    assert_eq!(node("d2a.customer_profiles").upstream, ["d1.app_profiles"]);
    assert_eq!(plan.nodes().len(), 7 * 2 + 4 + 4);
}

#[test]
fn nodes_come_after_what_they_read() {
    let plan = marketing();
    let position = |id: &str| plan.nodes().iter().position(|n| n.id == id).unwrap();
    for node in plan.nodes() {
        for up in &node.upstream {
            assert!(position(up) < position(&node.id), "{up} after {}", node.id);
        }
    }
    let all = tasks(&plan, &[]);
    let at = |t: &str| all.iter().position(|x| x == t).unwrap();
    assert!(at("d2a.ad_performance_daily") < at("d2b.channel_spend_daily"));
    assert_eq!(
        all.len(),
        7 + 4,
        "one task per stream and per model: {all:?}"
    );
}

#[test]
fn todays_forms_select_streams_only() {
    let plan = marketing();
    assert_eq!(
        tasks(&plan, &["facebook"]),
        [
            "facebook.insights",
            "facebook.insights_actions",
            "facebook.campaigns"
        ]
    );
    assert_eq!(
        tasks(&plan, &["google.ad_group_daily"]),
        ["google.ad_group_daily"]
    );
    assert_eq!(tasks(&plan, &["app_profiles"]), ["app.profiles"]);
    assert_eq!(tasks(&plan, &["d1.app_events"]), ["app.events"]);
    assert_eq!(
        tasks(&plan, &["*.insights*"]),
        ["facebook.insights", "facebook.insights_actions"]
    );
    assert_eq!(
        tasks(&plan, &["app.events", "google"]),
        [
            "google.campaign_daily",
            "google.ad_group_daily",
            "app.events"
        ]
    );
    // The stream and its D1 table run as one task: both are selected.
    assert_eq!(
        selected(&plan, &["app.events"]),
        ["app.events", "d1.app_events"]
    );
}

#[test]
fn upstream_operator_selects_everything_a_model_reads() {
    let plan = marketing();
    assert_eq!(
        tasks(&plan, &["+channel_spend_daily"]),
        [
            "facebook.insights",
            "facebook.insights_actions",
            "google.campaign_daily",
            "google.ad_group_daily",
            "d2a.ad_performance_daily",
            "d2b.channel_spend_daily"
        ]
    );
    // Checks run with their model, upstream models' too.
    let ids = selected(&plan, &["+d2b.channel_spend_daily"]);
    assert!(
        ids.contains(&"d2a.ad_performance_daily:range(spend)".to_string()),
        "{ids:?}"
    );
    assert!(
        !ids.iter()
            .any(|i| i.starts_with("app.") || i.contains("customer")),
        "{ids:?}"
    );
}

#[test]
fn downstream_operator_selects_what_reads_a_stream() {
    let plan = marketing();
    assert_eq!(
        tasks(&plan, &["facebook.insights+"]),
        [
            "facebook.insights",
            "d2a.ad_performance_daily",
            "d2b.channel_spend_daily"
        ]
    );
    assert_eq!(
        tasks(&plan, &["app+"]),
        [
            "app.events",
            "app.profiles",
            "d2a.customer_profiles",
            "d2b.customer_address_exceptions"
        ]
    );
}

#[test]
fn depth_limits_how_far_an_operator_reaches() {
    let plan = marketing();
    // One step up from a model is its D1 tables; their streams come with them.
    assert_eq!(
        tasks(&plan, &["1+ad_performance_daily"]),
        [
            "facebook.insights",
            "facebook.insights_actions",
            "google.campaign_daily",
            "google.ad_group_daily",
            "d2a.ad_performance_daily"
        ]
    );
    // One step up from d2b is d2a only: no streams.
    assert_eq!(
        tasks(&plan, &["1+channel_spend_daily"]),
        ["d2a.ad_performance_daily", "d2b.channel_spend_daily"]
    );
    // Stream → D1 → d2a is two steps.
    assert_eq!(tasks(&plan, &["app.profiles+1"]), ["app.profiles"]);
    assert_eq!(
        tasks(&plan, &["app.profiles+2"]),
        ["app.profiles", "d2a.customer_profiles"]
    );
}

#[test]
fn tags_select_models_and_combine_with_operators() {
    let plan = marketing();
    assert_eq!(
        tasks(&plan, &["tag:finance"]),
        ["d2a.ad_performance_daily", "d2b.channel_spend_daily"]
    );
    assert_eq!(
        tasks(&plan, &["tag:ops"]),
        ["d2b.customer_address_exceptions"]
    );
    assert_eq!(
        tasks(&plan, &["+tag:ops"]),
        [
            "app.profiles",
            "d2a.customer_profiles",
            "d2b.customer_address_exceptions"
        ]
    );
    assert_eq!(tasks(&plan, &["tag:a*"]), ["d2a.ad_performance_daily"]);
}

#[test]
fn a_pattern_that_matches_nothing_lists_what_exists() {
    let plan = marketing();
    let err = plan
        .select(&["nope.*".to_string()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("matches no stream"), "{err}");
    assert!(err.contains("facebook.insights"), "{err}");
    assert!(err.contains("d2b.channel_spend_daily"), "{err}");
    assert!(err.contains("tags: ads, finance, ops"), "{err}");
    let err = plan
        .select(&["tag:nightly".to_string()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"tag:nightly\" matches no stream"), "{err}");
}

#[test]
fn malformed_selectors_say_how_to_write_them() {
    let plan = marketing();
    for bad in ["+", "a+b", "tag:", "x[", "++x"] {
        let err = plan.select(&[bad.to_string()]).unwrap_err();
        assert!(matches!(err, PlanError::BadPattern { .. }), "{bad}: {err}");
    }
}

#[test]
fn a_model_and_a_stream_with_one_name_are_refused() {
    let sources: Vec<Arc<dyn Source>> = vec![Arc::new(Declared {
        name: "d2a",
        streams: vec!["x"],
    })];
    let err = RunPlan::build(&sources, &[model("d2a", "x", &[], &[], &[])]).unwrap_err();
    assert!(err.to_string().contains("`d2a.x`"), "{err}");
}

#[test]
fn renders_name_every_selected_node() {
    let plan = marketing();
    let selection = plan.select(&["+channel_spend_daily".to_string()]).unwrap();
    let text = render::text(&plan, &selection);
    assert!(text.contains("model   d2b.channel_spend_daily"), "{text}");
    assert!(text.contains("← d2a.ad_performance_daily"), "{text}");
    assert!(!text.contains("app.events"), "{text}");
    assert!(
        text.contains("4 streams, 4 D1 tables, 2 models, 3 checks"),
        "{text}"
    );
    let dot = render::dot(&plan, &selection);
    assert!(
        dot.contains("\"d2a.ad_performance_daily\" -> \"d2b.channel_spend_daily\";"),
        "{dot}"
    );
    let json = serde_json::to_value(render::view(&plan, &selection)).unwrap();
    let spend = json["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "d2b.channel_spend_daily")
        .unwrap();
    assert_eq!(spend["kind"], "model");
    assert_eq!(
        spend["upstream"],
        serde_json::json!(["d2a.ad_performance_daily"])
    );
    assert_eq!(
        spend["downstream"],
        serde_json::json!(["d2b.channel_spend_daily:unique(date,platform)"])
    );
    assert_eq!(spend["tags"], serde_json::json!(["finance"]));
}

#[test]
fn plan_streams_keeps_its_answer_for_stream_selectors() {
    let plan_sources: Vec<Arc<dyn Source>> = vec![Arc::new(Declared {
        name: "shop",
        streams: vec!["orders", "customers"],
    })];
    let names = |select: &[&str]| {
        let select: Vec<String> = select.iter().map(|s| s.to_string()).collect();
        plan_streams(&plan_sources, &select)
            .unwrap()
            .iter()
            .map(StreamTask::name)
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&[]), ["shop.orders", "shop.customers"]);
    assert_eq!(names(&["shop.orders"]), ["shop.orders"]);
    assert_eq!(names(&["shop_customers"]), ["shop.customers"]);
    let err = plan_streams(&plan_sources, &["nope.*".to_string()])
        .err()
        .unwrap();
    assert!(err.to_string().contains("matches no stream"), "{err}");
}
