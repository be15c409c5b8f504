//! The slice sink against a real lake in a temporary folder.

use std::collections::BTreeMap;
use std::sync::Mutex;

use arrow::array::{AsArray, Int64Array};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::destination::WriteMode;
use crate::drift::StreamPolicy;
use crate::executor::live_load::LiveLoad;
use crate::executor::Counters;
use crate::lake::{read_parquet, Lake};
use crate::schema::Field;
use crate::source::{RunWindow, StreamSpec};
use crate::state::StateStore;
use crate::typing::{decode_json_line, Origin};

const RUN: &str = "20240702T000000000Z-test";

struct Fixture {
    _dir: tempfile::TempDir,
    lake: Lake,
    state: StateStore,
    stream: StreamSpec,
    window: RunWindow,
    cancel: CancellationToken,
    renames: BTreeMap<String, String>,
    counters: Counters,
    live_load: LiveLoad,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open("lake", dir.path()).unwrap();
        let state = StateStore::new(lake.clone(), "test");
        Fixture {
            _dir: dir,
            lake,
            state,
            stream: StreamSpec {
                name: "orders".into(),
                table: "shop_orders".into(),
                schema: TableSchema::new(vec![
                    Field::new("id", FieldType::Bigint),
                    Field::new("day", FieldType::Date),
                ]),
                infer_columns: true,
                primary_key: vec!["id".into()],
                partition_column: Some("day".into()),
                write_mode: WriteMode::OverwritePartitions,
                dedupe: Default::default(),
            },
            window: RunWindow {
                since: None,
                until: None,
                today: chrono::NaiveDate::from_ymd_opt(2024, 7, 2).unwrap(),
                full_refresh: false,
            },
            cancel: CancellationToken::new(),
            renames: BTreeMap::new(),
            counters: Counters::default(),
            live_load: LiveLoad::new(),
        }
    }

    fn extraction(&self) -> Extraction<'_> {
        Extraction {
            lake: &self.lake,
            state: &self.state,
            run_id: RUN,
            source: "shop",
            stream: &self.stream,
            window: &self.window,
            cancel: &self.cancel,
            schema: Mutex::new(StreamSchema::new(
                &self.stream,
                None,
                StreamPolicy::default(),
            )),
            renames: &self.renames,
            counters: &self.counters,
            staged: Mutex::new(Vec::new()),
            kept: crate::publish::KeptBatches::new(0),
            rejected: Mutex::new(Vec::new()),
            cursors: Mutex::new(BTreeMap::new()),
            live_load: &self.live_load,
        }
    }
}

fn records(lines: &[&str]) -> Vec<Record> {
    lines
        .iter()
        .enumerate()
        .map(|(n, line)| {
            let origin = Origin {
                page: "raw/shop/orders/p1".into(),
                line: n as u64 + 1,
            };
            decode_json_line(line.as_bytes(), origin).unwrap()
        })
        .collect()
}

#[tokio::test]
async fn stages_rows_per_partition_and_quarantines_what_does_not_fit() {
    let fixture = Fixture::new();
    let extraction = fixture.extraction();
    let mut sink = SliceSink::new(&extraction, 3, 0);
    let landed = sink
        .land("p00001", "json", "2024-07-01", &Bytes::from_static(b"[]"))
        .await
        .unwrap();
    assert_eq!(
        &*landed.path,
        format!("raw/shop/orders/dt=2024-07-01/{RUN}/s00003-a0-p00001.json.zst")
    );
    sink.records(records(&[
        r#"{"id":1,"day":"2024-07-01"}"#,
        r#"{"id":2,"day":"2024-07-02"}"#,
        r#"{"id":3,"day":"2024-07-01"}"#,
        r#"{"day":"2024-07-01"}"#,
        r#"{"id":5}"#,
        r#"{"id":"six","day":"2024-07-01"}"#,
    ]))
    .await
    .unwrap();
    assert_eq!(sink.finish("slice-3").await.unwrap(), 3);

    let mut staged = extraction.staged.lock().unwrap().clone();
    staged.sort_by(|a, b| a.dt.cmp(&b.dt));
    let dts: Vec<&str> = staged.iter().map(|f| f.dt.as_str()).collect();
    assert_eq!(dts, ["2024-07-01", "2024-07-02"]);
    assert!(staged[0].path.starts_with(&format!(
        "_staging/{RUN}/shop_orders/dt=2024-07-01/s00003-a0-"
    )));
    let batches = read_parquet(&fixture.lake, &staged[0].path).await.unwrap();
    let ids: Vec<i64> = batches
        .iter()
        .flat_map(|b| {
            b.column_by_name("id")
                .unwrap()
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .collect();
    assert_eq!(ids, [1, 3]);
    let run_ids = batches[0].column_by_name(RUN_ID_COLUMN).unwrap();
    assert_eq!(run_ids.as_string::<i32>().value(0), RUN);

    // Copied out so the lock is not held across the checkpoint read below.
    let reasons: Vec<(u64, String)> = extraction
        .rejected
        .lock()
        .unwrap()
        .iter()
        .map(|r| (r.origin.line, r.reason.clone()))
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(
        reasons[0].1.contains("primary key field `id`"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].1.contains("partition column `day`"),
        "{reasons:?}"
    );
    assert_eq!(reasons[2].0, 6);

    // A later run may reuse the slice: the checkpoint lists its files and rejects.
    let checkpoint = fixture
        .state
        .checkpoint("shop_orders", "slice-3")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(checkpoint.rows, 3);
    assert_eq!(checkpoint.files.len(), 2);
    assert_eq!(checkpoint.rejected.len(), 3);
    assert_eq!(
        fixture.counters.pages.load(Ordering::Relaxed),
        1,
        "one page landed"
    );
}

#[tokio::test]
async fn a_discarded_attempt_leaves_no_staged_files() {
    let fixture = Fixture::new();
    let extraction = fixture.extraction();
    let mut sink = SliceSink::new(&extraction, 0, 1);
    sink.records(records(&[r#"{"id":1,"day":"2024-07-01"}"#]))
        .await
        .unwrap();
    // A new column closes the file of the old shape: it is in the lake by now.
    sink.records(records(&[r#"{"id":2,"day":"2024-07-01","coupon":"X"}"#]))
        .await
        .unwrap();
    assert_eq!(fixture.lake.list("_staging").await.unwrap().len(), 1);
    sink.discard().await;
    assert!(fixture.lake.list("_staging").await.unwrap().is_empty());
    assert!(extraction.staged.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_discarded_attempt_calls_the_live_load_off() {
    let fixture = Fixture::new();
    let extraction = fixture.extraction();
    let _inputs = fixture.live_load.open();
    let mut sink = SliceSink::new(&extraction, 0, 0);
    sink.records(records(&[r#"{"id":1,"day":"2024-07-01"}"#]))
        .await
        .unwrap();
    assert!(fixture.live_load.is_live());
    // Its rows may already be in the live load, which therefore cannot publish.
    sink.discard().await;
    assert!(!fixture.live_load.is_live());
}

#[tokio::test]
async fn a_new_column_mid_slice_closes_the_old_files_and_types_with_the_new_shape() {
    let fixture = Fixture::new();
    let extraction = fixture.extraction();
    let mut sink = SliceSink::new(&extraction, 0, 0);
    sink.records(records(&[r#"{"id":1,"day":"2024-07-01"}"#]))
        .await
        .unwrap();
    sink.records(records(&[r#"{"id":2,"day":"2024-07-01","coupon":"X"}"#]))
        .await
        .unwrap();
    assert_eq!(sink.finish("s").await.unwrap(), 2);
    let staged = extraction.staged.lock().unwrap().clone();
    // One file per shape: the first has no `coupon`, the second has it.
    assert_eq!(staged.len(), 2);
    let first = read_parquet(&fixture.lake, &staged[0].path).await.unwrap();
    let second = read_parquet(&fixture.lake, &staged[1].path).await.unwrap();
    assert!(first[0].column_by_name("coupon").is_none());
    assert_eq!(
        second[0]
            .column_by_name("coupon")
            .unwrap()
            .as_string::<i32>()
            .value(0),
        "X"
    );
}

#[tokio::test]
async fn a_reported_cursor_reaches_the_stream_and_the_checkpoint_only_when_the_slice_finishes() {
    let fixture = Fixture::new();
    let extraction = fixture.extraction();
    let cursor = serde_json::json!({"field": "updated_at", "value": "2024-07-02T10:00:00Z"});

    // A failed attempt's cursor is forgotten with its rows.
    let mut failed = SliceSink::new(&extraction, 0, 0);
    failed.cursor_reached(serde_json::json!({"value": "too far"}));
    failed.discard().await;
    assert!(extraction.cursors.lock().unwrap().is_empty());

    let mut sink = SliceSink::new(&extraction, 0, 1);
    sink.records(records(&[r#"{"id":1,"day":"2024-07-01"}"#]))
        .await
        .unwrap();
    sink.cursor_reached(cursor.clone());
    sink.finish("all").await.unwrap();
    assert_eq!(extraction.cursors.lock().unwrap().get(&0), Some(&cursor));
    // A later run resuming the slice from its checkpoint gets the cursor back too.
    let checkpoint = fixture
        .state
        .checkpoint("shop_orders", "all")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(checkpoint.cursor, Some(cursor));
}
