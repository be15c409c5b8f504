//! The example project's models on a real lake (Parquet files), real DataFusion and a
//! real PostgreSQL (`SLUICE_TEST_DATABASE_URL`, default postgres://postgres@127.0.0.1:5432/test).

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sluice_core::config::{Lookup, PipelineConfig};
use sluice_core::destination::{Destination, WriteMode};
use sluice_core::lake::{read_parquet, Lake};
use sluice_core::run::{RunRecord, RunStatus, TaskRecord, TaskStatus};
use sluice_core::schema::{Field, FieldType, TableSchema};
use sluice_core::source::{RunWindow, StreamSpec};
use sluice_transform::arrow::array::RecordBatch;
use sluice_transform::arrow::json::ReaderBuilder;
use sluice_transform::pii::{PiiAction, PiiPolicy};
use sluice_transform::{D1View, ModelProject, ModelRunOptions, TransformError};
use tokio_util::sync::CancellationToken;

fn example_models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/marketing/models")
}

fn policy() -> PiiPolicy {
    PiiPolicy::new(
        Some("test-pii-key-for-the-example-models-0123456789"),
        &[
            ("*.email", PiiAction::Hash),
            ("*.phone", PiiAction::MaskLast4),
            ("*.address", PiiAction::Encrypt),
        ],
    )
}

fn text(n: &str) -> Field {
    Field::new(n, FieldType::Text)
}
fn int(n: &str) -> Field {
    Field::new(n, FieldType::Bigint)
}
fn date(n: &str) -> Field {
    Field::new(n, FieldType::Date)
}
fn money(n: &str, scale: i8) -> Field {
    Field::new(n, FieldType::numeric(scale))
}
fn meta() -> Vec<Field> {
    vec![
        text("_sluice_run_id"),
        Field::new("_sluice_loaded_at", FieldType::Timestamp),
    ]
}

/// The D1 tables the connectors produce (the columns the models read).
fn d1_specs() -> Vec<StreamSpec> {
    let spec = |table: &str, fields: Vec<Field>, key: &[&str], partition: Option<&str>, mode| {
        let mut fields = fields;
        fields.extend(meta());
        StreamSpec {
            name: table.into(),
            table: table.into(),
            schema: TableSchema::new(fields),
            infer_columns: false,
            primary_key: key.iter().map(|s| s.to_string()).collect(),
            partition_column: partition.map(String::from),
            write_mode: mode,
            dedupe: Default::default(),
        }
    };
    vec![
        spec(
            "facebook_insights",
            vec![
                text("account_id"),
                text("account_name"),
                text("campaign_id"),
                text("campaign_name"),
                text("adset_id"),
                text("adset_name"),
                text("ad_id"),
                text("ad_name"),
                date("date_start"),
                text("account_currency"),
                text("account_timezone"),
                int("impressions"),
                int("clicks"),
                money("spend", 4),
                int("reach"),
            ],
            &["account_id", "ad_id", "date_start"],
            Some("date_start"),
            WriteMode::OverwritePartitions,
        ),
        spec(
            "facebook_insights_actions",
            vec![
                text("account_id"),
                text("ad_id"),
                date("date_start"),
                text("metric"),
                text("action_type"),
                money("value", 6),
            ],
            &["account_id", "ad_id", "date_start", "metric", "action_type"],
            Some("date_start"),
            WriteMode::OverwritePartitions,
        ),
        spec(
            "google_ad_group_daily",
            vec![
                text("customer_id"),
                text("campaign_id"),
                text("ad_group_id"),
                text("ad_group_name"),
                int("impressions"),
                int("clicks"),
                int("cost_micros"),
                Field::new("conversions", FieldType::Double),
                date("date"),
                money("cost", 6),
                text("customer_currency"),
                text("customer_time_zone"),
            ],
            &["customer_id", "ad_group_id", "date"],
            Some("date"),
            WriteMode::OverwritePartitions,
        ),
        spec(
            "google_campaign_daily",
            vec![
                text("customer_id"),
                text("campaign_id"),
                text("campaign_name"),
                date("date"),
            ],
            &["customer_id", "campaign_id", "date"],
            Some("date"),
            WriteMode::OverwritePartitions,
        ),
        spec(
            "app_profiles",
            vec![
                text("profile_id"),
                text("identity"),
                text("name").pii(),
                text("email").pii(),
                text("phone").pii(),
                text("address").pii(),
                text("gender"),
            ],
            &["profile_id"],
            None,
            WriteMode::Merge,
        ),
        spec(
            "crm_customers",
            vec![
                int("customer_id"),
                text("email").pii(),
                text("phone").pii(),
                text("address").pii(),
                Field::new("_sluice_deleted_at", FieldType::Timestamp),
            ],
            &["customer_id"],
            None,
            WriteMode::Merge,
        ),
    ]
}

/// Writes NDJSON rows as one D1 Parquet file of `table` in partition `dt`.
async fn write_d1(lake: &Lake, table: &str, dt: &str, run: &str, rows: &[serde_json::Value]) {
    let spec = d1_specs().into_iter().find(|s| s.table == table).unwrap();
    let schema = spec.schema.arrow_schema();
    let loaded_at = format!("{dt}T0{}:00:00Z", run.len() % 10);
    let mut text = String::new();
    for row in rows {
        let mut row = row.clone();
        row["_sluice_run_id"] = run.into();
        row["_sluice_loaded_at"] = loaded_at.clone().into();
        text.push_str(&row.to_string());
        text.push('\n');
    }
    let batch: RecordBatch = ReaderBuilder::new(schema.clone())
        .build(Cursor::new(text.into_bytes()))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let mut w = lake
        .parquet_writer(&format!("d1/{table}/dt={dt}/{run}-00000.parquet"), schema)
        .unwrap();
    w.write(&batch).await.unwrap();
    w.close().await.unwrap();
}

fn fb(
    day: &str,
    ad: &str,
    currency: &str,
    imp: i64,
    clicks: i64,
    spend: &str,
) -> serde_json::Value {
    serde_json::json!({"account_id": "act_1", "account_name": "Shop", "campaign_id": "c1", "campaign_name": "Summer",
        "adset_id": "as1", "adset_name": "Set", "ad_id": ad, "ad_name": format!("Ad {ad}"), "date_start": day,
        "account_currency": currency, "account_timezone": "Europe/Berlin", "impressions": imp, "clicks": clicks,
        "spend": spend, "reach": imp / 2})
}

fn gads(day: &str, group: &str, imp: i64, clicks: i64, micros: i64) -> serde_json::Value {
    serde_json::json!({"customer_id": "123", "campaign_id": "g1", "ad_group_id": group, "ad_group_name": "Group",
        "impressions": imp, "clicks": clicks, "cost_micros": micros, "conversions": 1.5, "date": day,
        "cost": format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000), "customer_currency": "USD",
        "customer_time_zone": "America/New_York"})
}

/// Lands one day of ads data; returns the D1 tasks a run that wrote it records.
async fn land_ads_day(lake: &Lake, day: &str, run: &str) -> Vec<TaskRecord> {
    write_d1(
        lake,
        "facebook_insights",
        day,
        run,
        &[
            fb(day, "a1", "EUR", 1000, 10, "12.3456"),
            fb(day, "a2", "EUR", 500, 5, "7.0001"),
        ],
    )
    .await;
    write_d1(lake, "facebook_insights_actions", day, run, &[
        serde_json::json!({"account_id": "act_1", "ad_id": "a1", "date_start": day, "metric": "actions", "action_type": "purchase", "value": "2"}),
        serde_json::json!({"account_id": "act_1", "ad_id": "a1", "date_start": day, "metric": "actions", "action_type": "link_click", "value": "10"}),
    ]).await;
    write_d1(
        lake,
        "google_ad_group_daily",
        day,
        run,
        &[
            gads(day, "ag1", 2000, 40, 8_250_000),
            gads(day, "ag2", 100, 1, 333_333),
        ],
    )
    .await;
    write_d1(lake, "google_campaign_daily", day, run, &[
        serde_json::json!({"customer_id": "123", "campaign_id": "g1", "campaign_name": "Brand", "date": day}),
    ]).await;
    [
        "facebook_insights",
        "facebook_insights_actions",
        "google_ad_group_daily",
        "google_campaign_daily",
    ]
    .iter()
    .map(|t| d1_task(t, &[day]))
    .collect()
}

const PROFILES: &[(&str, &str, &str, &str)] = &[
    (
        "p1",
        "jane@example.com",
        "+15551234567",
        "12 Main Street, Springfield",
    ),
    ("p2", "bob@example.org", "+15559876543", "123-45-6789"),
    ("p3", "carol@example.net", "+15550001111", "123456789"),
    ("p4", "dan@example.com", "+15552223333", "   "),
    ("p5", "erin@example.com", "+15554445555", "98765"),
    ("p6", "frank@example.com", "+15556667777", "123 45 6789"),
];

async fn land_profiles(lake: &Lake, dt: &str, run: &str) -> TaskRecord {
    let rows: Vec<serde_json::Value> = PROFILES
        .iter()
        .map(|(id, email, phone, address)| {
            serde_json::json!({"profile_id": id, "identity": email, "name": "Some Name",
            "email": email, "phone": phone, "address": address, "gender": "F"})
        })
        .collect();
    write_d1(lake, "app_profiles", dt, run, &rows).await;
    // The CRM's customers (the demo's SQLite source) are tested by `sluice demo`'s
    // truth check; here the table exists and is empty, so the counts are the app's.
    let crm = d1_specs()
        .into_iter()
        .find(|s| s.table == "crm_customers")
        .unwrap();
    let schema = crm.schema.arrow_schema();
    let mut w = lake
        .parquet_writer(
            &format!("d1/crm_customers/dt={dt}/{run}-00000.parquet"),
            schema.clone(),
        )
        .unwrap();
    w.write(&RecordBatch::new_empty(schema)).await.unwrap();
    w.close().await.unwrap();
    d1_task("app_profiles", &[dt])
}

fn d1_task(table: &str, partitions: &[&str]) -> TaskRecord {
    let mut t = TaskRecord::new(table, format!("d1.{table}"));
    t.status = TaskStatus::Succeeded;
    t.partitions = partitions.iter().map(|s| s.to_string()).collect();
    t
}

fn record(run: &str, tasks: Vec<TaskRecord>) -> RunRecord {
    RunRecord {
        run_id: run.into(),
        pipeline: "marketing".into(),
        started_at: chrono::Utc::now(),
        finished_at: None,
        status: RunStatus::Running,
        window: RunWindow {
            since: None,
            until: None,
            today: chrono::NaiveDate::from_ymd_opt(2024, 7, 3).unwrap(),
            full_refresh: false,
        },
        select: Vec::new(),
        tasks,
        notices: Vec::new(),
        api_usage: Default::default(),
        error: None,
    }
}

struct NoEnv;
impl Lookup for NoEnv {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
}

fn database_url() -> String {
    std::env::var("SLUICE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A PostgreSQL destination with its own schema prefix; fails loudly if unreachable.
async fn postgres(root: &Path) -> (Arc<dyn Destination>, String) {
    let prefix = format!("tx{:08x}_", rand::random::<u32>());
    let yaml = format!(
        "name: t\ndestination:\n  type: postgres\n  url: {}\n  schema_prefix: {prefix}\n",
        database_url()
    );
    let config = PipelineConfig::parse("pipeline.yaml".into(), yaml, root, &NoEnv).unwrap();
    let destination =
        sluice_destinations::build(&config.doc, config.destination.as_ref(), root).unwrap();
    destination
        .check()
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {} is required: {e}", database_url()));
    (destination, prefix)
}

/// Every row of a published table as sorted text lines.
async fn pg_rows(prefix: &str, layer: &str, table: &str) -> Vec<String> {
    let (client, conn) = tokio_postgres::connect(&database_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let sql = format!("SELECT t::text FROM \"{prefix}{layer}\".\"{table}\" t");
    let mut rows: Vec<String> = client
        .query(&sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    rows.sort();
    rows
}

async fn pg_all_text(prefix: &str) -> String {
    let (client, conn) = tokio_postgres::connect(&database_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let tables = client
        .query(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema IN ($1, $2)",
            &[&format!("{prefix}d2a"), &format!("{prefix}d2b")],
        )
        .await
        .unwrap();
    let mut out = String::new();
    for t in tables {
        let (s, n): (String, String) = (t.get(0), t.get(1));
        for r in client
            .query(&format!("SELECT t::text FROM \"{s}\".\"{n}\" t"), &[])
            .await
            .unwrap()
        {
            out.push_str(r.get::<_, &str>(0));
            out.push('\n');
        }
    }
    out
}

async fn rows_of(lake: &Lake, project: &ModelProject, sql: &str) -> Vec<String> {
    let (_, batches) = sluice_transform::query(lake, project, sql, D1View::Policy)
        .await
        .unwrap();
    let text =
        sluice_transform::render::render(&batches, sluice_transform::render::OutputFormat::Csv)
            .unwrap();
    text.lines().skip(1).map(String::from).collect()
}

fn task<'a>(record: &'a RunRecord, name: &str) -> &'a TaskRecord {
    record
        .tasks
        .iter()
        .find(|t| t.task == name)
        .unwrap_or_else(|| panic!("no task {name}: {:#?}", record.tasks))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_models_publish_expected_rows_incrementally_and_keep_pii_out_of_d2() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open("lake", dir.path()).unwrap();
    let (destination, prefix) = postgres(dir.path()).await;
    let project = ModelProject::load_dir(&example_models(), policy())
        .unwrap()
        .with_streams(d1_specs());
    let cancel = CancellationToken::new();

    // Day 1.
    let mut tasks = land_ads_day(&lake, "2024-07-01", "r1").await;
    tasks.push(land_profiles(&lake, "2024-07-01", "r1").await);
    let mut run1 = record("r1", tasks);
    sluice_transform::run_models(
        &project,
        &lake,
        destination.as_ref(),
        &mut run1,
        &ModelRunOptions::default(),
        &cancel,
    )
    .await
    .unwrap();
    for t in run1.tasks.iter().filter(|t| !t.table.starts_with("d1.")) {
        assert!(matches!(t.status, TaskStatus::Succeeded), "{t:#?}");
    }
    assert_eq!(run1.status, RunStatus::Succeeded);

    // Spend per platform per day, computed independently from the inputs:
    // facebook 12.3456 + 7.0001 EUR at 1.08 USD; google 8.25 + 0.333333 USD.
    let spend = rows_of(&lake, &project,
        "SELECT platform, impressions, clicks, spend_usd, cpc_usd, ctr, conversions FROM d2b.channel_spend_daily ORDER BY platform").await;
    let fb_usd = (12.3456f64 * 1.08 * 1e6).round() / 1e6 + (7.0001f64 * 1.08 * 1e6).round() / 1e6;
    assert_eq!(
        spend[0],
        format!(
            "facebook,1500,15,{fb_usd:.6},{:.6},0.01,2.0",
            (fb_usd / 15.0 * 1e6).round() / 1e6
        )
    );
    assert_eq!(
        spend[1],
        format!(
            "google,2100,41,8.583333,{:.6},{},3.0",
            (8.583333f64 / 41.0 * 1e6).round() / 1e6,
            41.0 / 2100.0
        )
    );
    // Exact decimals in account currency.
    let fb_spend = rows_of(&lake, &project,
        "SELECT sum(spend), min(currency) FROM d2a.ad_performance_daily WHERE platform = 'facebook'").await;
    assert_eq!(fb_spend, vec!["19.345700,EUR".to_string()]);

    // The exact set of invalid addresses, with the rule that fired.
    let exceptions = rows_of(
        &lake,
        &project,
        "SELECT customer_id, rule FROM d2b.customer_address_exceptions ORDER BY customer_id",
    )
    .await;
    // p6 ("123 45 6789") has spaces, not dashes: neither SSN-shaped nor all digits.
    assert_eq!(
        exceptions,
        [
            "p2,ssn_shaped",
            "p3,ssn_shaped",
            "p4,empty",
            "p5,all_digits"
        ]
    );
    assert_eq!(
        pg_rows(&prefix, "d2b", "customer_address_exceptions")
            .await
            .len(),
        4
    );

    // Day 2: only that partition is recomputed, downstream too.
    let before_day1 = rows_of(&lake, &project, "SELECT * FROM d2a.ad_performance_daily WHERE date = DATE '2024-07-01' ORDER BY platform, ad_group_id, ad_id").await;
    let mut run2 = record("r2", land_ads_day(&lake, "2024-07-02", "r2").await);
    sluice_transform::run_models(
        &project,
        &lake,
        destination.as_ref(),
        &mut run2,
        &ModelRunOptions::default(),
        &cancel,
    )
    .await
    .unwrap();
    assert_eq!(
        task(&run2, "d2a.ad_performance_daily").partitions,
        vec!["2024-07-02"]
    );
    assert_eq!(
        task(&run2, "d2b.channel_spend_daily").partitions,
        vec!["2024-07-02"]
    );
    assert_eq!(
        task(&run2, "d2a.customer_profiles").status,
        TaskStatus::Succeeded,
        "table models rebuild"
    );
    let day1_files = lake
        .list("d2a/ad_performance_daily/dt=2024-07-01/")
        .await
        .unwrap();
    assert!(
        day1_files
            .iter()
            .all(|o| o.path.rsplit('/').next().unwrap().starts_with("r1-")),
        "day 1 untouched: {day1_files:?}"
    );
    assert_eq!(before_day1, rows_of(&lake, &project, "SELECT * FROM d2a.ad_performance_daily WHERE date = DATE '2024-07-01' ORDER BY platform, ad_group_id, ad_id").await);

    // The destination after two incremental runs equals a full rebuild.
    let incremental = pg_rows(&prefix, "d2b", "channel_spend_daily").await;
    assert_eq!(incremental.len(), 4, "{incremental:#?} {:#?}", run2.tasks);
    let (rebuilt_dest, rebuilt_prefix) = postgres(dir.path()).await;
    let mut run3 = record("r3", Vec::new());
    sluice_transform::run_models(
        &project,
        &lake,
        rebuilt_dest.as_ref(),
        &mut run3,
        &ModelRunOptions { full_refresh: true },
        &cancel,
    )
    .await
    .unwrap();
    assert_eq!(
        pg_rows(&rebuilt_prefix, "d2b", "channel_spend_daily").await,
        incremental
    );
    assert_eq!(
        pg_rows(&rebuilt_prefix, "d2a", "ad_performance_daily").await,
        pg_rows(&prefix, "d2a", "ad_performance_daily").await
    );

    // PII: no clear-text email, phone or address in any D2 lake object or D2 table.
    let mut lake_text = String::new();
    for object in lake.list("").await.unwrap() {
        if object.path.starts_with("d1/") {
            continue; // D1 is the raw typed copy: the policy applies when data leaves it.
        }
        if object.path.ends_with(".parquet") {
            let batches = read_parquet(&lake, &object.path).await.unwrap();
            lake_text.push_str(
                &sluice_transform::render::render(
                    &batches,
                    sluice_transform::render::OutputFormat::Csv,
                )
                .unwrap(),
            );
        } else {
            lake_text.push_str(&String::from_utf8_lossy(
                &lake.get(&object.path).await.unwrap().unwrap(),
            ));
        }
    }
    let warehouse = pg_all_text(&prefix).await;
    assert!(
        warehouse.contains("********4567"),
        "masked phones are published"
    );
    for (_, email, phone, address) in PROFILES {
        for haystack in [&lake_text, &warehouse] {
            assert!(!haystack.contains(email), "clear email {email}");
            assert!(!haystack.contains(phone), "clear phone {phone}");
            if address.trim().len() > 4 {
                assert!(!haystack.contains(address), "clear address {address}");
            }
        }
    }
    assert!(!warehouse.contains("Main Street") && !lake_text.contains("Main Street"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_errors_are_reported_with_file_and_line_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(models.join("d2a")).unwrap();
    // A syntax error on line 3.
    std::fs::write(
        models.join("d2a/broken.sql"),
        "-- broken\nSELECT a,\nFROM WHERE d1.x\n",
    )
    .unwrap();
    let err = ModelProject::load_dir(&models, policy()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("{}:3:", models.join("d2a/broken.sql").display())),
        "{err}"
    );

    // An unknown column on line 4, found when all models are planned: nothing runs.
    std::fs::write(
        models.join("d2a/broken.sql"),
        "-- unknown column\nSELECT\n  clicks,\n  clickz\nFROM d1.google_ad_group_daily\n",
    )
    .unwrap();
    std::fs::write(
        models.join("d2a/fine.sql"),
        "SELECT 1 AS one FROM d1.google_ad_group_daily\n",
    )
    .unwrap();
    let lake = Lake::open("lake", dir.path()).unwrap();
    let tasks = land_ads_day(&lake, "2024-07-01", "r1").await;
    let project = ModelProject::load_dir(&models, policy()).unwrap();
    let (destination, _) = postgres(dir.path()).await;
    let mut run = record("r1", tasks);
    let n = run.tasks.len();
    let err = sluice_transform::run_models(
        &project,
        &lake,
        destination.as_ref(),
        &mut run,
        &ModelRunOptions::default(),
        &CancellationToken::new(),
    )
    .await
    .unwrap_err();
    let TransformError::Config(err) = err else {
        panic!("{err}")
    };
    assert_eq!(err.file, models.join("d2a/broken.sql"));
    assert_eq!(err.position.map(|p| p.line), Some(4), "{err}");
    assert_eq!(run.tasks.len(), n, "no model ran");
    assert!(lake.list("d2a/").await.unwrap().is_empty());

    // A reference to a model that does not exist, and a cycle.
    std::fs::write(models.join("d2a/broken.sql"), "SELECT *\nFROM d2a.nope\n").unwrap();
    let err = ModelProject::load_dir(&models, policy()).unwrap_err();
    assert_eq!(err.position.map(|p| p.line), Some(2), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_error_check_publishes_nothing_and_keeps_the_previous_table() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(models.join("d2a")).unwrap();
    std::fs::create_dir_all(models.join("d2b")).unwrap();
    std::fs::write(
        models.join("d2a/groups.sql"),
        "SELECT ad_group_id, clicks, date FROM d1.google_ad_group_daily\n",
    )
    .unwrap();
    std::fs::write(models.join("d2a/groups.yml"), "checks:\n  - range: { column: clicks, max: 100 }\n  - sql: \"SELECT * FROM this WHERE ad_group_id = 'ag2'\"\n    name: no_ag2\n    severity: warn\n").unwrap();
    std::fs::write(
        models.join("d2b/totals.sql"),
        "SELECT sum(clicks) AS clicks FROM d2a.groups\n",
    )
    .unwrap();
    let lake = Lake::open("lake", dir.path()).unwrap();
    let (destination, prefix) = postgres(dir.path()).await;
    let project = ModelProject::load_dir(&models, policy())
        .unwrap()
        .with_streams(d1_specs());
    let cancel = CancellationToken::new();

    let mut run1 = record("r1", land_ads_day(&lake, "2024-07-01", "r1").await);
    sluice_transform::run_models(
        &project,
        &lake,
        destination.as_ref(),
        &mut run1,
        &ModelRunOptions::default(),
        &cancel,
    )
    .await
    .unwrap();
    // `warn`: published and flagged (a copy in the quarantine), not withheld.
    let checks = task(&run1, "d2a.groups:checks");
    assert_eq!(checks.rows_quarantined, 0, "{checks:#?}");
    assert_eq!(
        checks.warnings.len(),
        2,
        "the failure and where its rows are"
    );
    assert!(checks.warnings[1].contains("quarantine.d2a__groups"));
    assert_eq!(pg_rows(&prefix, "d2a", "groups").await.len(), 2);
    assert_eq!(pg_rows(&prefix, "d2a", "groups__quarantine").await.len(), 1);
    let published = lake.list("d2a/groups/").await.unwrap();

    // New data breaks the error check: nothing is published, the reader is skipped.
    write_d1(
        &lake,
        "google_ad_group_daily",
        "2024-07-02",
        "r2",
        &[gads("2024-07-02", "ag9", 10, 500, 1)],
    )
    .await;
    let mut run2 = record(
        "r2",
        vec![d1_task("google_ad_group_daily", &["2024-07-02"])],
    );
    sluice_transform::run_models(
        &project,
        &lake,
        destination.as_ref(),
        &mut run2,
        &ModelRunOptions::default(),
        &cancel,
    )
    .await
    .unwrap();
    let model = task(&run2, "d2a.groups");
    assert_eq!(model.status, TaskStatus::Failed);
    assert!(
        model
            .error
            .as_ref()
            .unwrap()
            .message
            .contains("range(clicks)"),
        "{model:#?}"
    );
    assert_eq!(task(&run2, "d2a.groups:checks").rows_quarantined, 2);
    assert_eq!(task(&run2, "d2b.totals").status, TaskStatus::Skipped);
    assert_eq!(
        run2.status,
        RunStatus::Partial,
        "the D1 task succeeded, the model did not"
    );
    assert_eq!(
        pg_rows(&prefix, "d2a", "groups").await.len(),
        2,
        "previous table kept"
    );
    assert_eq!(
        lake.list("d2a/groups/")
            .await
            .unwrap()
            .iter()
            .map(|o| &o.path)
            .collect::<Vec<_>>(),
        published.iter().map(|o| &o.path).collect::<Vec<_>>()
    );
    // One file per run: the flagged rows of r1, the blocking ones of r2.
    assert_eq!(lake.list("quarantine/d2a/groups/").await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spend_too_large_to_convert_is_quarantined_not_a_panic() {
    // 8e22 EUR fits the D1 decimal, but times the rate it no longer fits a 96-bit
    // decimal: convert_currency once panicked there, killing the run.
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open("lake", dir.path()).unwrap();
    let (destination, _prefix) = postgres(dir.path()).await;
    let project = ModelProject::load_dir(&example_models(), policy())
        .unwrap()
        .with_streams(d1_specs());
    let day = "2024-07-01";
    let mut tasks = land_ads_day(&lake, day, "r1").await;
    write_d1(
        &lake,
        "facebook_insights",
        day,
        "r1",
        &[
            fb(day, "a1", "EUR", 1000, 10, "12.3456"),
            fb(day, "a2", "EUR", 500, 5, "80000000000000000000000"),
        ],
    )
    .await;
    tasks.push(land_profiles(&lake, day, "r1").await);
    let mut run = record("r1", tasks);
    sluice_transform::run_models(
        &project,
        &lake,
        destination.as_ref(),
        &mut run,
        &ModelRunOptions::default(),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    let model = task(&run, "d2a.ad_performance_daily");
    assert_eq!(model.status, TaskStatus::Failed, "{model:#?}");
    let message = &model.error.as_ref().unwrap().message;
    assert!(message.contains("not_null"), "{message}");
    let checks = task(&run, "d2a.ad_performance_daily:checks");
    assert_eq!(checks.rows_quarantined, 1, "{checks:#?}");
    let quarantined = rows_of(
        &lake,
        &project,
        "SELECT count(*) FROM quarantine.d2a__ad_performance_daily",
    )
    .await;
    assert_eq!(quarantined, ["1"]);
    assert!(lake
        .list("d2a/ad_performance_daily/")
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantined_d1_records_are_shown_through_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open("lake", dir.path()).unwrap();
    let project = ModelProject::load_dir(&example_models(), policy())
        .unwrap()
        .with_streams(d1_specs());
    let rejected = |line: u64, raw: &str| sluice_core::typing::Rejected {
        origin: sluice_core::typing::Origin {
            page: "raw/app/profiles/p00001.json".into(),
            line,
        },
        reason: "not a record".into(),
        raw: raw.into(),
    };
    sluice_core::quarantine::write(
        &lake,
        "d1",
        "app_profiles",
        "r1",
        &[
            rejected(
                1,
                r#"{"profile_id":"p9","email":"zed@example.com","name":"Zed Q"}"#,
            ),
            rejected(2, "zed@example.com,+15550001234"),
        ],
    )
    .await
    .unwrap();
    let sql = "SELECT raw FROM quarantine.d1__app_profiles ORDER BY origin";
    let shown = rows_of(&lake, &project, sql).await;
    assert_eq!(shown.len(), 2);
    assert!(
        shown
            .iter()
            .all(|r| !r.contains("zed@") && !r.contains("Zed Q")),
        "{shown:?}"
    );
    assert!(shown[0].contains("p9"), "{shown:?}");
    // `--unmasked` shows them as received.
    let (_, batches) = sluice_transform::query(&lake, &project, sql, D1View::Unmasked)
        .await
        .unwrap();
    let clear =
        sluice_transform::render::render(&batches, sluice_transform::render::OutputFormat::Csv)
            .unwrap();
    assert!(clear.contains("zed@example.com"), "{clear}");
}
