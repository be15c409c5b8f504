//! Hostile pages never crash a decoder. The Facebook, Google Ads and CleverTap page
//! decoders (what `sluice replay` runs over landed pages, and what `read` runs over
//! live answers) and the files connector's NDJSON and CSV readers get arbitrary
//! bytes and arbitrary JSON built from the keys those APIs use: every input decodes
//! or is refused with an error, never a panic. The API slices are planned against
//! the sandbox over HTTP, so the decoders see the slice parameters a run gives them.

use std::sync::{Arc, OnceLock};

use proptest::prelude::*;
use serde_json::Value;
use sluice_core::config::{Lookup, PipelineConfig};
use sluice_core::lake::Lake;
use sluice_core::source::{DecodeState, LandedPage, RunWindow, Slice, Source, StreamSpec};
use sluice_sandbox::{credentials, RunningSandbox, SandboxOptions};

const TODAY: &str = "2024-10-01";

/// One stream of one source with a planned slice, and the landed-page path its pages get.
struct Target {
    source: Arc<dyn Source>,
    spec: StreamSpec,
    slice: Slice,
    page: &'static str,
}

struct Fixture {
    targets: Vec<Target>,
    // Kept alive for the sources' plans; dropped with the process.
    _sandbox: RunningSandbox,
    _runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

struct Env(String);

impl Lookup for Env {
    fn var(&self, name: &str) -> Option<String> {
        Some(match name {
            "SANDBOX_URL" => self.0.clone(),
            "GOOGLE_TOKEN_URL" => format!("{}/token", self.0),
            "START_DATE" => "2024-09-25".into(),
            "FB_TOKEN" => credentials::FACEBOOK_ACCESS_TOKEN.into(),
            "GADS_DEV_TOKEN" => credentials::GOOGLE_DEVELOPER_TOKEN.into(),
            "GADS_CLIENT_ID" => credentials::GOOGLE_CLIENT_ID.into(),
            "GADS_CLIENT_SECRET" => credentials::GOOGLE_CLIENT_SECRET.into(),
            "GADS_REFRESH_TOKEN" => credentials::GOOGLE_REFRESH_TOKEN.into(),
            "GADS_MANAGER_ID" => credentials::GOOGLE_MANAGER_CUSTOMER_ID.into(),
            "CT_ACCOUNT" => credentials::CLEVERTAP_ACCOUNT_ID.into(),
            "CT_PASSCODE" => credentials::CLEVERTAP_PASSCODE.into(),
            _ => return None,
        })
    }
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let today = TODAY.parse().unwrap();
        let sandbox = runtime
            .block_on(sluice_sandbox::start(SandboxOptions::new(3, 1, today), 0))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        // The example project's sources: every API stream sluice ships.
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../examples/marketing/pipeline.yaml"),
        )
        .unwrap();
        let config = PipelineConfig::parse(
            "pipeline.yaml".into(),
            text,
            dir.path(),
            &Env(sandbox.base_url()),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let ctx = sluice_connectors::BuildContext {
            root: dir.path().to_path_buf(),
            lake: Lake::open("lake", dir.path()).unwrap(),
        };
        let window = RunWindow {
            since: None,
            until: None,
            today,
            full_refresh: false,
        };
        let mut targets = Vec::new();
        // The example's CRM is a SQLite file the demo writes, not an API: no pages to decode.
        for section in config.sources.iter().filter(|s| s.kind != "sqlite") {
            let source = sluice_connectors::build_source(&config.doc, section, &ctx)
                .unwrap_or_else(|e| panic!("{e}"));
            for spec in source.streams() {
                let plan = runtime
                    .block_on(source.plan(&spec, None, &window))
                    .unwrap_or_else(|e| panic!("{}: {e}", spec.name));
                let slices = runtime
                    .block_on(source.prepare(&spec, plan.slices))
                    .unwrap_or_else(|e| panic!("{}: {e}", spec.name));
                let slice = slices
                    .into_iter()
                    .next()
                    .unwrap_or_else(|| panic!("{}: no slice planned", spec.name));
                targets.push(Target {
                    source: source.clone(),
                    spec,
                    slice,
                    page: "raw/x/dt=2024-09-30/p00001.json",
                });
            }
        }
        assert!(targets.len() >= 8, "expected every API stream");
        // The files connector's readers, decoding landed NDJSON and CSV pages.
        let files_text =
            "name: f\nlake: ./lake\nsources:\n  shop:\n    type: files\n    streams:\n      \
                          events: { path: \"e/*.ndjson\" }\n      rows: { path: \"r/*.csv\" }\n";
        let files = PipelineConfig::parse(
            "pipeline.yaml".into(),
            files_text.into(),
            dir.path(),
            &Env(String::new()),
        )
        .unwrap();
        let source = sluice_connectors::build_source(&files.doc, &files.sources[0], &ctx).unwrap();
        for (stream, page, params) in [
            (
                "events",
                "raw/x/dt=2024-09-30/e-p00001.ndjson.zst",
                serde_json::json!({"lines_before": 0}),
            ),
            (
                "rows",
                "raw/x/dt=2024-09-30/r-p00001.csv.zst",
                serde_json::json!({"lines_before": 1, "header": "id,name,amount\n"}),
            ),
        ] {
            let spec = source
                .streams()
                .into_iter()
                .find(|s| s.name == stream)
                .unwrap();
            targets.push(Target {
                source: source.clone(),
                spec,
                slice: Slice {
                    key: "k".into(),
                    params,
                },
                page,
            });
        }
        Fixture {
            targets,
            _sandbox: sandbox,
            _runtime: runtime,
            _dir: dir,
        }
    })
}

/// Keys the pages of the three APIs and their decoders look at.
const KEYS: &[&str] = &[
    "data",
    "paging",
    "cursors",
    "after",
    "next",
    "error",
    "results",
    "records",
    "record",
    "status",
    "next_cursor",
    "cursor",
    "id",
    "account_id",
    "ad_id",
    "campaign_id",
    "adset_id",
    "date_start",
    "date_stop",
    "impressions",
    "clicks",
    "spend",
    "reach",
    "actions",
    "action_type",
    "value",
    "campaign",
    "adGroup",
    "ad",
    "adGroupAd",
    "metrics",
    "segments",
    "date",
    "costMicros",
    "customer",
    "resourceName",
    "fieldMask",
    "requestId",
    "identity",
    "profileData",
    "email",
    "evtName",
    "evtData",
    "ts",
    "merged_from",
    "summary",
    "totalCount",
    "1d_click",
];

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(any::<char>(), 0..12).prop_map(String::from_iter),
        prop::sample::select(vec![
            "",
            "1e400",
            "-0",
            "NaN",
            "18446744073709551616",
            "2024-02-30",
            "act_1",
            "9999-12-31",
            "00:00",
            "\u{0}",
            "1,5",
            "(12.00)",
            "act_",
            "../../x",
        ])
        .prop_map(String::from),
    ]
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 96, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..8).prop_map(|fields| {
                Value::Object(
                    fields
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect(),
                )
            }),
        ]
    })
}

/// Decodes `body` as a page of every target; the result may be an error, never a panic.
fn decode_everywhere(body: &[u8]) {
    for target in &fixture().targets {
        let page = LandedPage {
            path: target.page.into(),
        };
        let _ = target.source.decode(
            &target.spec,
            &target.slice,
            &page,
            body,
            &mut DecodeState::default(),
        );
    }
}

proptest! {
    // Decoding is fast; 64 cases of each shape over every stream take a few seconds.
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..2048)) {
        decode_everywhere(&body);
    }

    #[test]
    fn arbitrary_api_shaped_json_never_panics(page in json()) {
        decode_everywhere(&serde_json::to_vec(&page).unwrap());
        // NDJSON and CSV see it as lines too.
        let lines: Vec<u8> = match &page {
            Value::Array(items) => items
                .iter()
                .flat_map(|v| {
                    let mut line = serde_json::to_vec(v).unwrap();
                    line.push(b'\n');
                    line
                })
                .collect(),
            other => serde_json::to_vec(other).unwrap(),
        };
        decode_everywhere(&lines);
    }

    #[test]
    fn arbitrary_csv_and_ndjson_text_never_panics(
        rows in prop::collection::vec(prop::collection::vec(text(), 0..5), 0..20)
    ) {
        let csv: String = rows.iter().map(|r| r.join(",") + "\n").collect();
        decode_everywhere(csv.as_bytes());
        let quoted: String = rows.iter().map(|r| format!("\"{}\r\n", r.join("\",\""))).collect();
        decode_everywhere(quoted.as_bytes());
    }
}
