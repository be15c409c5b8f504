//! The SQLite destination against real database files in a temporary folder.

use std::path::Path;
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use futures::StreamExt;
use rusqlite::types::Value as Sql;
use serde_json::{json, Value};
use sluice_core::destination::{
    Destination, DestinationError, Fence, LoadOutcome, LoadRequest, LoadTail, TableSpec, WriteMode,
};
use sluice_core::schema::{Field, FieldType, TableSchema};
use sluice_core::typing::{BatchBuilder, Origin, Rejected};
use sluice_destinations::{SqliteConfig, SqliteDestination};

struct Db {
    dir: tempfile::TempDir,
    dest: SqliteDestination,
}

impl Db {
    fn new() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let config = SqliteConfig {
            path: "nested/warehouse.db".into(),
            ..SqliteConfig::default()
        };
        let dest = SqliteDestination::new(config, dir.path());
        Db { dir, dest }
    }

    fn rows(&self, sql: &str) -> Vec<Vec<Sql>> {
        let conn = rusqlite::Connection::open(self.dir.path().join("nested/warehouse.db")).unwrap();
        let mut stmt = conn.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        let n = stmt.column_count();
        stmt.query_map([], |r| (0..n).map(|i| r.get::<_, Sql>(i)).collect())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }
}

fn spec(name: &str, fields: Vec<Field>, mode: WriteMode) -> TableSpec {
    TableSpec {
        layer: "d1".into(),
        name: name.into(),
        schema: TableSchema::new(fields),
        primary_key: vec![],
        partition_column: None,
        write_mode: mode,
    }
}

fn batch(schema: &TableSchema, rows: &[Value]) -> RecordBatch {
    let mut builder = BatchBuilder::new(schema.clone());
    for row in rows {
        builder.push_fields(row.as_object().unwrap()).unwrap();
    }
    builder.finish()
}

async fn load(
    dest: &dyn Destination,
    spec: &TableSpec,
    batches: Vec<Result<RecordBatch, DestinationError>>,
    quarantine: &[Rejected],
    partitions: &[String],
    load_id: &str,
) -> Result<LoadOutcome, DestinationError> {
    dest.load(LoadRequest {
        table: spec,
        batches: futures::stream::iter(batches).boxed(),
        tail: LoadTail {
            quarantine: quarantine.to_vec(),
            partitions: partitions.to_vec(),
            fence: None,
        }
        .ready(),
        load_id,
        run_id: "run-1",
    })
    .await
}

fn t(s: &str) -> Sql {
    Sql::Text(s.to_string())
}

fn order_fields() -> Vec<Field> {
    vec![
        Field::new("id", FieldType::Bigint),
        Field::new("dt", FieldType::Date),
        Field::new("amount", FieldType::numeric(2)),
    ]
}

#[tokio::test]
async fn every_type_is_stored_exactly() {
    let db = Db::new();
    let spec = spec(
        "types",
        vec![
            Field::new("id", FieldType::Bigint),
            Field::new("ratio", FieldType::Double),
            Field::new("spend", FieldType::numeric(2)),
            Field::new("name", FieldType::Text),
            Field::new("actions", FieldType::Json),
            Field::new("day", FieldType::Date),
            Field::new("at", FieldType::Timestamp),
            Field::new("active", FieldType::Boolean),
        ],
        WriteMode::Append,
    );
    let rows = [
        json!({"id": "9007199254740993", "ratio": 0.1, "spend": "12345678901234567890.10", "name": "Brand \"Summer\", EU\nÜnïcödé ✓",
               "actions": [{"value": "3"}], "day": "2024-02-29", "at": "2024-07-01T10:11:12.345678Z", "active": true}),
        json!({"id": "-9223372036854775808", "spend": "-0.01", "active": false, "actions": "123"}),
    ];
    load(
        &db.dest,
        &spec,
        vec![Ok(batch(&spec.schema, &rows))],
        &[],
        &[],
        "l1",
    )
    .await
    .unwrap();
    assert_eq!(
        db.rows("SELECT * FROM d1__types ORDER BY id DESC"),
        vec![
            vec![
                Sql::Integer(9007199254740993),
                Sql::Real(0.1),
                t("12345678901234567890.10"),
                t("Brand \"Summer\", EU\nÜnïcödé ✓"),
                t(r#"[{"value":"3"}]"#),
                t("2024-02-29"),
                t("2024-07-01T10:11:12.345678Z"),
                Sql::Integer(1),
            ],
            // A JSON string stays text: the column has text affinity.
            vec![
                Sql::Integer(i64::MIN),
                Sql::Null,
                t("-0.01"),
                Sql::Null,
                t(r#""123""#),
                Sql::Null,
                Sql::Null,
                Sql::Integer(0)
            ],
        ]
    );
    let journal = db.rows("PRAGMA journal_mode");
    assert_eq!(journal[0][0], t("wal"));
    assert_eq!(db.dest.row_count("d1", "types").await.unwrap(), Some(2));
    assert_eq!(db.dest.row_count("d1", "nope").await.unwrap(), None);
    db.dest.check().await.unwrap();
}

#[tokio::test]
async fn write_modes_ledger_and_quarantine() {
    let db = Db::new();
    let append = spec("orders", order_fields(), WriteMode::Append);
    let one = batch(
        &append.schema,
        &[json!({"id": 1, "dt": "2024-07-01", "amount": "1.5"})],
    );
    let bad = [Rejected {
        origin: Origin {
            page: "data/a.csv".into(),
            line: 4,
        },
        reason: "ragged row".into(),
        raw: "1,2".into(),
    }];
    let out = load(&db.dest, &append, vec![Ok(one.clone())], &bad, &[], "l1")
        .await
        .unwrap();
    assert_eq!((out.rows_loaded, out.rows_quarantined), (1, 1));
    let again = load(&db.dest, &append, vec![Ok(one.clone())], &bad, &[], "l1")
        .await
        .unwrap();
    assert!(again.already_loaded);
    assert_eq!(db.dest.row_count("d1", "orders").await.unwrap(), Some(1));
    assert_eq!(
        db.rows("SELECT run_id, origin, line, reason, raw FROM \"d1__orders__quarantine\""),
        vec![vec![
            t("run-1"),
            t("data/a.csv"),
            Sql::Integer(4),
            t("ragged row"),
            t("1,2")
        ]]
    );

    let mut merge = spec("customers", order_fields(), WriteMode::Merge);
    merge.primary_key = vec!["id".into()];
    load(
        &db.dest,
        &merge,
        vec![Ok(batch(
            &merge.schema,
            &[
                json!({"id": 1, "dt": "2024-07-01", "amount": "1"}),
                json!({"id": 2, "amount": "2"}),
            ],
        ))],
        &[],
        &[],
        "m1",
    )
    .await
    .unwrap();
    let out = load(
        &db.dest,
        &merge,
        vec![
            Ok(batch(&merge.schema, &[json!({"id": 2, "amount": "20"})])),
            Ok(batch(
                &merge.schema,
                &[
                    json!({"id": 3, "amount": "3"}),
                    json!({"id": 2, "amount": "22"}),
                ],
            )),
        ],
        &[],
        &[],
        "m2",
    )
    .await
    .unwrap();
    assert_eq!((out.rows_loaded, out.rows_replaced), (2, 1));
    assert_eq!(
        db.rows("SELECT id, amount FROM d1__customers ORDER BY id"),
        vec![
            vec![Sql::Integer(1), t("1.00")],
            vec![Sql::Integer(2), t("22.00")],
            vec![Sql::Integer(3), t("3.00")]
        ]
    );

    let mut daily = spec("daily", order_fields(), WriteMode::OverwritePartitions);
    daily.partition_column = Some("dt".into());
    let days: Vec<Value> = (1..=3)
        .map(|d| json!({"id": d, "dt": format!("2024-07-0{d}")}))
        .collect();
    load(
        &db.dest,
        &daily,
        vec![Ok(batch(&daily.schema, &days))],
        &[],
        &[],
        "p1",
    )
    .await
    .unwrap();
    let out = load(
        &db.dest,
        &daily,
        vec![Ok(batch(
            &daily.schema,
            &[json!({"id": 20, "dt": "2024-07-02"})],
        ))],
        &[],
        &["2024-07-02".into(), "2024-07-03".into()],
        "p2",
    )
    .await
    .unwrap();
    assert_eq!((out.rows_loaded, out.rows_replaced), (1, 2));
    assert_eq!(
        db.rows("SELECT id FROM d1__daily ORDER BY id"),
        vec![vec![Sql::Integer(1)], vec![Sql::Integer(20)]]
    );

    let replace = TableSpec {
        write_mode: WriteMode::Replace,
        ..daily.clone()
    };
    let out = load(
        &db.dest,
        &replace,
        vec![Ok(batch(&daily.schema, &[json!({"id": 9})]))],
        &[],
        &[],
        "r1",
    )
    .await
    .unwrap();
    assert_eq!((out.rows_loaded, out.rows_replaced), (1, 2));
    assert_eq!(
        db.rows("SELECT count(*) FROM _sluice_loads"),
        vec![vec![Sql::Integer(6)]]
    );
}

/// A shard's load: rows `(id, run)` into `shards` (partition `dt` = 2024-07-01), as
/// shard `shard` with lease generation `token` (no fence when `shard` is empty).
async fn shard_load(
    db: &Db,
    rows: &[(i64, &str)],
    shard: &str,
    token: u64,
    load_id: &str,
) -> Result<LoadOutcome, DestinationError> {
    let mut spec = spec(
        "shards",
        vec![
            Field::new("id", FieldType::Bigint),
            Field::new("dt", FieldType::Date),
            Field::new("_sluice_run_id", FieldType::Text),
        ],
        WriteMode::OverwritePartitions,
    );
    spec.partition_column = Some("dt".into());
    let rows: Vec<Value> = rows
        .iter()
        .map(|(id, run)| json!({"id": id, "dt": "2024-07-01", "_sluice_run_id": run}))
        .collect();
    let run_id = rows[0]["_sluice_run_id"].as_str().unwrap().to_string();
    db.dest
        .load(LoadRequest {
            table: &spec,
            batches: futures::stream::iter(vec![Ok(batch(&spec.schema, &rows))]).boxed(),
            tail: LoadTail {
                quarantine: vec![],
                partitions: vec!["2024-07-01".into()],
                fence: (!shard.is_empty()).then(|| Fence {
                    round: "p/r1/all".into(),
                    shard: shard.into(),
                    token,
                }),
            }
            .ready(),
            load_id,
            run_id: &run_id,
        })
        .await
}

#[tokio::test]
async fn shard_loads_are_fenced_in_the_transaction_and_keep_the_other_shards_rows() {
    let db = Db::new();
    let rows = || db.rows("SELECT id, _sluice_run_id FROM \"d1__shards\" ORDER BY id");
    // An earlier, unsharded run's rows of the day.
    shard_load(&db, &[(1, "old"), (2, "old")], "", 0, "l0")
        .await
        .unwrap();
    // Two shards of a round, each with some slices of the same day: both kept.
    shard_load(&db, &[(1, "run-a")], "0-of-2", 1, "l1")
        .await
        .unwrap();
    shard_load(&db, &[(2, "run-b")], "1-of-2", 1, "l2")
        .await
        .unwrap();
    assert_eq!(
        rows(),
        vec![
            vec![Sql::Integer(1), t("run-a")],
            vec![Sql::Integer(2), t("run-b")]
        ]
    );
    // Shard 0 taken over (generation 2): its publish replaces its own earlier rows.
    shard_load(&db, &[(1, "run-c")], "0-of-2", 2, "l3")
        .await
        .unwrap();
    let after_take_over = vec![
        vec![Sql::Integer(1), t("run-c")],
        vec![Sql::Integer(2), t("run-b")],
    ];
    assert_eq!(rows(), after_take_over);
    // Its old owner, resumed after a pause, is refused inside its transaction.
    let err = shard_load(&db, &[(1, "run-a"), (3, "run-a")], "0-of-2", 1, "l4")
        .await
        .unwrap_err();
    assert!(matches!(err, DestinationError::Fenced { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("fencing token 2 has published, this process holds 1"),
        "{err}"
    );
    assert_eq!(rows(), after_take_over);
    assert_eq!(
        db.rows("SELECT load_id FROM _sluice_loads ORDER BY 1"),
        vec![vec![t("l0")], vec![t("l1")], vec![t("l2")], vec![t("l3")]]
    );
}

#[tokio::test]
async fn failures_and_cancellation_leave_the_table_unchanged() {
    let db = Db::new();
    let spec = spec("orders", order_fields(), WriteMode::Replace);
    load(
        &db.dest,
        &spec,
        vec![Ok(batch(&spec.schema, &[json!({"id": 1})]))],
        &[],
        &[],
        "l1",
    )
    .await
    .unwrap();
    let before = db.rows("SELECT * FROM d1__orders");

    let many: Vec<Value> = (0..2000).map(|i| json!({"id": i})).collect();
    let big = batch(&spec.schema, &many);
    let err = load(
        &db.dest,
        &spec,
        vec![
            Ok(big.clone()),
            Ok(big.clone()),
            Err(DestinationError::Load {
                table: "d1.orders".into(),
                message: "page 3 unreadable".into(),
            }),
        ],
        &[],
        &[],
        "l2",
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("page 3 unreadable"));
    assert_eq!(db.rows("SELECT * FROM d1__orders"), before);

    // A load whose future is dropped mid-stream (a cancelled run) rolls back.
    let schema = spec.schema.clone();
    let endless = futures::stream::unfold(big, |b| async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        Some((Ok(b.clone()), b))
    })
    .boxed();
    let request = LoadRequest {
        table: &spec,
        batches: endless,
        tail: LoadTail::default().ready(),
        load_id: "l3",
        run_id: "r",
    };
    let cancelled = tokio::time::timeout(Duration::from_millis(200), db.dest.load(request)).await;
    assert!(cancelled.is_err(), "the endless load was cut off");
    // The blocking side notices the closed channel and releases the write lock.
    let next = load(
        &db.dest,
        &spec,
        vec![Ok(batch(&schema, &[json!({"id": 2})]))],
        &[],
        &[],
        "l4",
    )
    .await
    .unwrap();
    assert_eq!(next.rows_loaded, 1);
    assert_eq!(
        db.rows("SELECT id FROM d1__orders"),
        vec![vec![Sql::Integer(2)]]
    );
}

#[tokio::test]
async fn evolution_adds_and_widens_columns_and_refuses_incompatible_ones() {
    let db = Db::new();
    let mut v1 = spec(
        "events",
        vec![
            Field::new("id", FieldType::Bigint),
            Field::new("score", FieldType::Bigint),
            Field::new("day", FieldType::Date),
            Field::new("flag", FieldType::Boolean),
        ],
        WriteMode::Merge,
    );
    v1.primary_key = vec!["id".into()];
    load(
        &db.dest,
        &v1,
        vec![Ok(batch(
            &v1.schema,
            &[json!({"id": 1, "score": 5, "day": "2024-07-01", "flag": true})],
        ))],
        &[],
        &[],
        "l1",
    )
    .await
    .unwrap();
    let mut v2 = spec(
        "events",
        vec![
            Field::new("id", FieldType::Bigint),
            Field::new("score", FieldType::numeric(2)),
            Field::new("day", FieldType::Timestamp),
            Field::new("flag", FieldType::Text),
            Field::new("source", FieldType::Text),
        ],
        WriteMode::Merge,
    );
    v2.primary_key = vec!["id".into()];
    load(&db.dest, &v2, vec![Ok(batch(&v2.schema, &[json!({"id": 2, "score": "5.25", "day": "2024-07-02T03:04:05Z", "flag": "maybe", "source": "api"})]))], &[], &[], "l2")
        .await
        .unwrap();
    assert_eq!(
        db.rows("SELECT id, score, day, flag, source FROM d1__events ORDER BY id"),
        vec![
            vec![
                Sql::Integer(1),
                t("5.00"),
                t("2024-07-01T00:00:00.000000Z"),
                t("true"),
                Sql::Null
            ],
            vec![
                Sql::Integer(2),
                t("5.25"),
                t("2024-07-02T03:04:05.000000Z"),
                t("maybe"),
                t("api")
            ],
        ]
    );
    // The rebuilt table kept its primary key, so merge still upserts.
    let narrow = TableSpec {
        schema: TableSchema::new(vec![
            Field::new("id", FieldType::Bigint),
            Field::new("score", FieldType::Bigint),
        ]),
        ..v2.clone()
    };
    load(
        &db.dest,
        &narrow,
        vec![Ok(batch(&narrow.schema, &[json!({"id": 2, "score": 7})]))],
        &[],
        &[],
        "l3",
    )
    .await
    .unwrap();
    assert_eq!(
        db.rows("SELECT score FROM d1__events WHERE id = 2"),
        vec![vec![t("7.00")]]
    );
    assert_eq!(db.dest.row_count("d1", "events").await.unwrap(), Some(2));

    let before = db.rows("SELECT * FROM d1__events ORDER BY id");
    let bad = TableSpec {
        schema: TableSchema::new(vec![
            Field::new("id", FieldType::Bigint),
            Field::new("new_col", FieldType::Text),
            Field::new("score", FieldType::Date),
        ]),
        ..v2.clone()
    };
    let err = load(
        &db.dest,
        &bad,
        vec![Ok(batch(&bad.schema, &[json!({"id": 3})]))],
        &[],
        &[],
        "l4",
    )
    .await
    .unwrap_err();
    assert!(matches!(err, DestinationError::Schema { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("column `score` is numeric(38,2) in the table but date"),
        "{err}"
    );
    assert_eq!(
        db.rows("SELECT * FROM d1__events ORDER BY id"),
        before,
        "no column added, no row changed"
    );
}

#[tokio::test]
async fn hostile_names_round_trip() {
    let db = Db::new();
    let long = "y".repeat(300);
    let names = [
        "\"); DROP TABLE x; --",
        "a.b.c",
        "with space",
        "Ünïcödé ✓ 列",
        long.as_str(),
    ];
    let mut fields = vec![Field::new("id", FieldType::Bigint)];
    fields.extend(names.iter().map(|n| Field::new(*n, FieldType::Text)));
    let mut spec = spec("weird'\"; --", fields, WriteMode::Merge);
    spec.primary_key = vec!["\"); DROP TABLE x; --".into()];
    let mut row = serde_json::Map::new();
    row.insert("id".into(), json!(1));
    for (i, n) in names.iter().enumerate() {
        row.insert(n.to_string(), json!(format!("v{i}")));
    }
    let rows = batch(&spec.schema, &[Value::Object(row)]);
    load(&db.dest, &spec, vec![Ok(rows.clone())], &[], &[], "l1")
        .await
        .unwrap();
    load(&db.dest, &spec, vec![Ok(rows)], &[], &[], "l2")
        .await
        .unwrap();
    assert_eq!(
        db.dest.row_count("d1", "weird'\"; --").await.unwrap(),
        Some(1)
    );
    let got = db.rows("SELECT * FROM \"d1__weird'\"\"; --\"");
    assert_eq!(got[0][1], t("v0"));
    assert_eq!(got[0][5], t("v4"));
}

#[test]
fn default_destination_lives_beside_the_pipeline() {
    let dest = SqliteDestination::new(SqliteConfig::default(), Path::new("/p"));
    assert_eq!(dest.describe(), "sqlite /p/warehouse.db");
}

/// A load stages its rows without the write lock: another load publishes meanwhile
/// (here one that widens a column). The staging load then finds the column types it
/// bound for changed, fails as transient (the executor runs it again), and the
/// retry publishes.
#[tokio::test]
async fn a_load_stages_without_the_write_lock_and_retries_when_the_table_changed_meanwhile() {
    let db = Db::new();
    let mut v1 = spec(
        "scores",
        vec![
            Field::new("id", FieldType::Bigint),
            Field::new("score", FieldType::Bigint),
        ],
        WriteMode::Merge,
    );
    v1.primary_key = vec!["id".into()];
    let row = |id: i64, score: Value| json!({"id": id, "score": score});
    load(
        &db.dest,
        &v1,
        vec![Ok(batch(&v1.schema, &[row(1, json!(5))]))],
        &[],
        &[],
        "l1",
    )
    .await
    .unwrap();

    // Load A: more batches than the destination's channel holds, then it waits. Once
    // the batch after them is asked for, its worker has taken a batch: it is staging.
    let batches_before_waiting = 6;
    let (staging_tx, staging_rx) = tokio::sync::oneshot::channel::<()>();
    let (finish_tx, finish_rx) = tokio::sync::oneshot::channel::<()>();
    let schema = v1.schema.clone();
    let a_batches = futures::stream::unfold(
        (0, Some(staging_tx), Some(finish_rx)),
        move |(n, mut staging, mut finish)| {
            let schema = schema.clone();
            async move {
                if n < batches_before_waiting {
                    let batch = batch(&schema, &[row(10 + n, json!(n))]);
                    return Some((Ok(batch), (n + 1, staging, finish)));
                }
                let _ = staging.take()?.send(());
                let _ = finish.take()?.await;
                None
            }
        },
    )
    .boxed();
    let a = db.dest.load(LoadRequest {
        table: &v1,
        batches: a_batches,
        tail: LoadTail::default().ready(),
        load_id: "a",
        run_id: "run-a",
    });

    // Load B widens `score` to a decimal while A stages. A short busy timeout: if A
    // held the write lock, B would fail with "database is locked" instead of waiting.
    let b_dest = SqliteDestination::new(
        SqliteConfig {
            path: "nested/warehouse.db".into(),
            busy_timeout_ms: 2_000,
        },
        db.dir.path(),
    );
    let mut v2 = spec(
        "scores",
        vec![
            Field::new("id", FieldType::Bigint),
            Field::new("score", FieldType::numeric(2)),
        ],
        WriteMode::Merge,
    );
    v2.primary_key = vec!["id".into()];
    let b = async {
        staging_rx.await.unwrap();
        let outcome = load(
            &b_dest,
            &v2,
            vec![Ok(batch(&v2.schema, &[row(2, json!("7.25"))]))],
            &[],
            &[],
            "b",
        )
        .await;
        finish_tx.send(()).unwrap();
        outcome
    };
    let (a, b) = tokio::join!(a, b);
    assert_eq!(b.expect("B published while A staged").rows_loaded, 1);
    let error = a.expect_err("A staged for the old column type");
    assert!(error.is_transient(), "{error}");
    assert!(
        error
            .to_string()
            .contains("changed the table's column types"),
        "{error}"
    );

    // Run again (as the executor does), A binds for the decimal column.
    let again: Vec<_> = (0..batches_before_waiting)
        .map(|n| Ok(batch(&v1.schema, &[row(10 + n, json!(n))])))
        .collect();
    let outcome = load(&db.dest, &v1, again, &[], &[], "a").await.unwrap();
    assert_eq!(outcome.rows_loaded, batches_before_waiting as u64);
    assert_eq!(
        db.rows("SELECT id, score FROM d1__scores WHERE id IN (1, 2, 10, 15) ORDER BY id"),
        vec![
            vec![Sql::Integer(1), t("5.00")],
            vec![Sql::Integer(2), t("7.25")],
            vec![Sql::Integer(10), t("0.00")],
            vec![Sql::Integer(15), t("5.00")],
        ]
    );
}

/// A live load (batches as the extraction flushes them, the tail only once it is
/// over) whose worker stops early returns its error at once and lets go of the
/// batches: the sender learns it on its next batch instead of waiting for ever on a
/// full channel, which would also keep the tail from ever coming.
#[tokio::test]
async fn a_live_load_that_stops_early_says_so_at_once_and_lets_go_of_its_batches() {
    let db = Db::new();
    // `merge` without a primary key: refused by the worker before it stages anything.
    let refused = spec("orders", order_fields(), WriteMode::Merge);
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<RecordBatch, DestinationError>>(1);
    let batches = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|batch| (batch, receiver))
    })
    .boxed();
    let (_tail_sender, tail) = tokio::sync::oneshot::channel::<LoadTail>();
    let request = LoadRequest {
        table: &refused,
        batches,
        tail: Box::pin(async move {
            tail.await.map_err(|_| DestinationError::Cancelled {
                table: "d1.orders".into(),
            })
        }),
        load_id: "l1",
        run_id: "r",
    };
    let rows = batch(
        &refused.schema,
        &[json!({"id": 1, "dt": "2024-07-01", "amount": "1.50"})],
    );
    let extraction = async {
        let mut sent = 0;
        while sender.send(Ok(rows.clone())).await.is_ok() {
            sent += 1;
        }
        sent
    };
    let (outcome, sent) = tokio::time::timeout(
        Duration::from_secs(10),
        futures::future::join(db.dest.load(request), extraction),
    )
    .await
    .expect("the load and its sender both end once the worker has stopped");
    let err = outcome.unwrap_err().to_string();
    assert!(err.contains("needs a primary_key"), "{err}");
    assert!(sent >= 1, "batches were sent before the load let go");
}
