//! Ad-hoc measurement of the PostgreSQL load path (not a test):
//! N rows shaped like Facebook ad insights, already typed as Arrow batches,
//! loaded through `PostgresDestination`, next to `psql \copy` of the same rows
//! as CSV into an identical table.
//!
//! `cargo run --release -p sluice-destinations --example copy_throughput -- [ROWS] [append|overwrite_partitions]`
//! (`append` COPYs straight into the table; `overwrite_partitions` goes through staging.)
//! (PostgreSQL from `$SLUICE_TEST_DATABASE_URL`, else `postgres://postgres@127.0.0.1:5432/test`).

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Date32Builder, Decimal128Builder, Int64Builder, StringBuilder};
use arrow::record_batch::RecordBatch;
use futures::StreamExt;
use sluice_core::destination::{Destination, LoadRequest, LoadTail, TableSpec, WriteMode};
use sluice_core::schema::{Field, FieldType, TableSchema};
use sluice_core::secret::Secret;
use sluice_destinations::{PostgresConfig, PostgresDestination};

const BATCH: usize = 8192;
const NAMES: [&str; 5] = [
    "Brand \"Summer\", EU",
    "Retargeting\nLookalike 2%",
    "Café – Ünïcödé ✓",
    "O'Brien's sale",
    "plain name",
];

fn schema() -> TableSchema {
    let text = |n: &str| Field::new(n, FieldType::Text);
    TableSchema::new(vec![
        text("account_id"),
        text("campaign_id"),
        text("adset_id"),
        text("ad_id"),
        text("ad_name"),
        Field::new("date_start", FieldType::Date),
        Field::new("date_stop", FieldType::Date),
        Field::new("impressions", FieldType::Bigint),
        Field::new("clicks", FieldType::Bigint),
        Field::new("spend", FieldType::numeric(2)),
        Field::new("reach", FieldType::Bigint),
        text("account_currency"),
        Field::new("actions", FieldType::Json),
    ])
}

/// Rows `from..from+n` as one batch, plus the same rows as CSV lines.
fn generate(schema: &TableSchema, from: usize, n: usize, csv: &mut String) -> RecordBatch {
    let mut text: Vec<StringBuilder> = (0..5).map(|_| StringBuilder::new()).collect();
    let (mut start, mut stop) = (Date32Builder::new(), Date32Builder::new());
    let (mut impressions, mut clicks, mut reach) = (
        Int64Builder::new(),
        Int64Builder::new(),
        Int64Builder::new(),
    );
    let mut spend = Decimal128Builder::new()
        .with_precision_and_scale(38, 2)
        .unwrap();
    let (mut currency, mut actions) = (StringBuilder::new(), StringBuilder::new());
    let mut rng: u64 = 42 + from as u64;
    let mut next = |m: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % m.max(1)
    };
    for i in from..from + n {
        let ad_id = 23851234567890123u64 + (i % 5000) as u64;
        let day = 19_723 + ((i / 150_000) % 12 * 30 + i % 28) as i32; // 2024-01-01 + …
        let imp = next(50_000) as i64;
        let clk = next(imp as u64 / 10 + 1) as i64;
        let cents = next(500_000) as i128;
        let ids = [
            (1234567890 + i % 3).to_string(),
            (ad_id / 1000).to_string(),
            (ad_id / 10).to_string(),
            ad_id.to_string(),
        ];
        for (b, v) in text.iter_mut().zip(ids.iter()) {
            b.append_value(v);
        }
        let name = NAMES[i % NAMES.len()];
        text[4].append_value(name);
        start.append_value(day);
        stop.append_value(day);
        impressions.append_value(imp);
        clicks.append_value(clk);
        spend.append_value(cents);
        let reach_v = (i % 7 != 0).then(|| next(imp as u64 + 1) as i64);
        reach.append_option(reach_v);
        currency.append_value("USD");
        let action = (i % 3 != 0).then(|| {
            format!(
                r#"[{{"action_type": "link_click", "value": "{clk}", "1d_click": "{clk}"}}, {{"action_type": "purchase", "value": "{}"}}]"#,
                clk / 20
            )
        });
        actions.append_option(action.as_deref());

        let date = chrono::NaiveDate::from_num_days_from_ce_opt(day + 719_163).unwrap();
        let quoted = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{date},{date},{imp},{clk},{}.{:02},{},USD,{}",
            ids[0],
            ids[1],
            ids[2],
            ids[3],
            quoted(name),
            cents / 100,
            cents % 100,
            reach_v.map(|r| r.to_string()).unwrap_or_default(),
            action.as_deref().map(quoted).unwrap_or_default(),
        );
    }
    let mut columns: Vec<ArrayRef> = text
        .iter_mut()
        .map(|b| Arc::new(b.finish()) as ArrayRef)
        .collect();
    columns.push(Arc::new(start.finish()));
    columns.push(Arc::new(stop.finish()));
    columns.push(Arc::new(impressions.finish()));
    columns.push(Arc::new(clicks.finish()));
    columns.push(Arc::new(spend.finish()));
    columns.push(Arc::new(reach.finish()));
    columns.push(Arc::new(currency.finish()));
    columns.push(Arc::new(actions.finish()));
    RecordBatch::try_new(schema.arrow_schema(), columns).unwrap()
}

#[tokio::main]
async fn main() {
    let rows: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse().expect("ROWS"))
        .unwrap_or(1_000_000);
    let url = std::env::var("SLUICE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let mode = match std::env::args().nth(2).as_deref() {
        None | Some("append") => WriteMode::Append,
        Some("overwrite_partitions") => WriteMode::OverwritePartitions,
        Some(other) => panic!("unknown mode {other}"),
    };
    let schema = schema();

    let t = Instant::now();
    let mut csv = String::new();
    let batches: Vec<RecordBatch> = (0..rows)
        .step_by(BATCH)
        .map(|from| generate(&schema, from, BATCH.min(rows - from), &mut csv))
        .collect();
    let csv_path = std::env::temp_dir().join("sluice_copy_throughput.csv");
    std::fs::write(&csv_path, &csv).unwrap();
    drop(csv);
    println!("generated {rows} rows in {:.2?}", t.elapsed());

    let prefix = "bench_copy_";
    let psql = |sql: &str| {
        let status = std::process::Command::new("psql")
            .args([url.as_str(), "-qXc", sql])
            .status()
            .expect("psql");
        assert!(status.success(), "psql failed: {sql}");
    };
    psql(&format!("DROP SCHEMA IF EXISTS {prefix}d1 CASCADE; DROP SCHEMA IF EXISTS {prefix}_sluice CASCADE; DROP SCHEMA IF EXISTS {prefix}ref CASCADE"));
    psql(&format!(
        "CREATE SCHEMA {prefix}ref; CREATE TABLE {prefix}ref.insights (account_id text, campaign_id text, adset_id text, \
         ad_id text, ad_name text, date_start date, date_stop date, impressions bigint, clicks bigint, \
         spend numeric(38,2), reach bigint, account_currency text, actions jsonb)"
    ));

    let t = Instant::now();
    psql(&format!(
        "\\copy {prefix}ref.insights FROM '{}' WITH (FORMAT csv)",
        csv_path.display()
    ));
    let reference = t.elapsed();

    let dest = PostgresDestination::new(
        PostgresConfig {
            url: Secret::new(url.clone()),
            schema_prefix: prefix.into(),
            connect_timeout_secs: 10,
            ssl_root_cert: None,
            d1_readers: Vec::new(),
            readers: Vec::new(),
        },
        Path::new("."),
    )
    .unwrap();
    let spec = TableSpec {
        layer: "d1".into(),
        name: "insights".into(),
        schema: schema.clone(),
        primary_key: vec![],
        partition_column: Some("date_start".into()),
        write_mode: mode,
    };
    let t = Instant::now();
    let outcome = dest
        .load(LoadRequest {
            table: &spec,
            batches: futures::stream::iter(batches.into_iter().map(Ok)).boxed(),
            tail: LoadTail::default().ready(),
            load_id: "bench",
            run_id: "bench",
        })
        .await
        .unwrap();
    let ours = t.elapsed();
    assert_eq!(outcome.rows_loaded as usize, rows);
    psql(&format!(
        "SELECT CASE WHEN count(*) = 0 THEN 'same rows' ELSE 'ROWS DIFFER' END FROM \
         (SELECT * FROM {prefix}ref.insights EXCEPT ALL SELECT * FROM {prefix}d1.insights) d"
    ));
    println!(
        "psql \\copy (CSV):        {reference:>8.2?}  {:>9.0} rows/s",
        rows as f64 / reference.as_secs_f64()
    );
    println!(
        "PostgresDestination::load ({mode:?}) {ours:>8.2?}  {:>9.0} rows/s  ({:.2}x \\copy)",
        rows as f64 / ours.as_secs_f64(),
        ours.as_secs_f64() / reference.as_secs_f64()
    );
    psql(&format!("DROP SCHEMA {prefix}d1 CASCADE; DROP SCHEMA {prefix}_sluice CASCADE; DROP SCHEMA {prefix}ref CASCADE"));
    let _ = std::fs::remove_file(csv_path);
}
