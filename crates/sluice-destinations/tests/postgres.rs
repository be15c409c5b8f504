//! The PostgreSQL destination against a real server.
//!
//! The server is `$SLUICE_TEST_DATABASE_URL`, else `postgres://postgres@127.0.0.1:5432/test`.
//! A server that cannot be reached fails the test: these tests never skip.
//! Each test works in its own random schema prefix, dropped at the end, so
//! tests run in parallel without seeing each other.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use futures::StreamExt;
use serde_json::{json, Value};
use sluice_core::destination::{
    Destination, DestinationError, Fence, LoadOutcome, LoadRequest, LoadTail, TableSpec, WriteMode,
};
use sluice_core::schema::{Field, FieldType, TableSchema};
use sluice_core::secret::Secret;
use sluice_core::typing::{BatchBuilder, Origin, Rejected};
use sluice_destinations::{PostgresConfig, PostgresDestination};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

fn database_url() -> String {
    std::env::var("SLUICE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

async fn admin() -> Client {
    let url = database_url();
    let (client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap_or_else(|e| {
        panic!(
            "cannot connect to the test PostgreSQL at {} ({e}). Start one (scripts/test does) or set \
             SLUICE_TEST_DATABASE_URL; these tests never skip.",
            url.split('@').next_back().unwrap_or(&url)
        )
    });
    tokio::spawn(connection);
    client
}

/// A test's private corner of the database: its schema prefix, a destination
/// using it, and an admin connection. Dropping it drops the schemas.
struct Db {
    prefix: String,
    dest: Arc<PostgresDestination>,
    admin: Client,
}

impl Db {
    async fn new() -> Db {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let prefix = format!(
            "t{}_{nanos:x}_{}_",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let admin = admin().await;
        Db {
            dest: Arc::new(destination(&prefix)),
            prefix,
            admin,
        }
    }

    async fn rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let messages = self
            .admin
            .simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        messages
            .into_iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_string))
                        .collect(),
                ),
                _ => None,
            })
            .collect()
    }

    /// The table's rows as text, sorted by the whole row: comparable across loads.
    async fn table(&self, table: &str) -> Vec<Vec<Option<String>>> {
        let t = self.qualified(table);
        self.rows(&format!("SELECT * FROM {t} ORDER BY 1, 2")).await
    }

    fn qualified(&self, table: &str) -> String {
        format!("\"{}d1\".\"{}\"", self.prefix, table.replace('"', "\"\""))
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let prefix = self.prefix.clone();
        // Runs on panics too; a fresh runtime because Drop cannot await.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let client = admin().await;
                let schemas = client
                    .query(
                        "SELECT nspname::text FROM pg_namespace WHERE starts_with(nspname, $1)",
                        &[&prefix],
                    )
                    .await
                    .unwrap();
                for row in schemas {
                    let name: String = row.get(0);
                    let _ = client
                        .batch_execute(&format!("DROP SCHEMA \"{name}\" CASCADE"))
                        .await;
                }
            })
        })
        .join();
    }
}

fn destination(prefix: &str) -> PostgresDestination {
    let config = PostgresConfig {
        url: Secret::new(database_url()),
        schema_prefix: prefix.to_string(),
        connect_timeout_secs: 5,
        ssl_root_cert: None,
        d1_readers: Vec::new(),
        readers: Vec::new(),
    };
    PostgresDestination::new(config, Path::new(".")).expect("valid test URL")
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
        builder
            .push_fields(row.as_object().expect("object"))
            .unwrap_or_else(|e| panic!("{row}: {}", e.message));
    }
    builder.finish()
}

fn rejected(line: u64, reason: &str) -> Rejected {
    Rejected {
        origin: Origin {
            page: "data/orders.ndjson".into(),
            line,
        },
        reason: reason.into(),
        raw: "{\"id\": \"oops\"".into(),
    }
}

struct Load<'a> {
    quarantine: &'a [Rejected],
    partitions: &'a [String],
    load_id: &'a str,
}

impl Default for Load<'_> {
    fn default() -> Self {
        Load {
            quarantine: &[],
            partitions: &[],
            load_id: "load-1",
        }
    }
}

async fn load(
    dest: &dyn Destination,
    spec: &TableSpec,
    batches: Vec<Result<RecordBatch, DestinationError>>,
    how: Load<'_>,
) -> Result<LoadOutcome, DestinationError> {
    dest.load(LoadRequest {
        table: spec,
        batches: futures::stream::iter(batches).boxed(),
        tail: LoadTail {
            quarantine: how.quarantine.to_vec(),
            partitions: how.partitions.to_vec(),
            fence: None,
        }
        .ready(),
        load_id: how.load_id,
        run_id: "run-1",
    })
    .await
}

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

#[tokio::test]
async fn every_type_round_trips_exactly() {
    let db = Db::new().await;
    let spec = spec(
        "types",
        vec![
            Field::new("id", FieldType::Bigint),
            Field::new("ratio", FieldType::Double),
            Field::new("spend", FieldType::numeric(2)),
            Field::new("micro", FieldType::numeric(6)),
            Field::new("name", FieldType::Text),
            Field::new("actions", FieldType::Json),
            Field::new("day", FieldType::Date),
            Field::new("at", FieldType::Timestamp),
            Field::new("active", FieldType::Boolean),
        ],
        WriteMode::Append,
    );
    let rows = [
        json!({"id": "9007199254740993", "ratio": 0.1, "spend": "12345678901234567890.12", "micro": "-0.000001",
               "name": "Brand \"Summer\", EU\nline two\ttab – Ünïcödé ✓ 😀 O'Brien\\", "actions": [{"action_type": "link_click", "value": "3"}],
               "day": "2024-02-29", "at": "2024-07-01T10:11:12.345678Z", "active": true}),
        json!({"id": "9223372036854775807", "ratio": -1.5e300, "spend": "-0.01", "micro": "0", "name": "",
               "actions": {"nested": {"k": null}}, "day": "1969-12-31", "at": "1970-01-01T00:00:00Z", "active": false}),
        json!({"id": "-9223372036854775808"}),
    ];
    let outcome = load(
        &*db.dest,
        &spec,
        vec![Ok(batch(&spec.schema, &rows))],
        Load::default(),
    )
    .await
    .unwrap();
    assert_eq!(outcome.rows_loaded, 3);

    let got = db
        .rows(&format!(
            "SELECT id::text, ratio::text, spend::text, micro::text, name, actions::text, day::text, \
             to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US'), active::text FROM {} ORDER BY id",
            db.qualified("types")
        ))
        .await;
    assert_eq!(
        got,
        vec![
            vec![
                s("-9223372036854775808"),
                None,
                None,
                None,
                None,
                None,
                None,
                None,
                None
            ],
            vec![
                s("9007199254740993"),
                s("0.1"),
                s("12345678901234567890.12"),
                s("-0.000001"),
                s("Brand \"Summer\", EU\nline two\ttab – Ünïcödé ✓ 😀 O'Brien\\"),
                s(r#"[{"value": "3", "action_type": "link_click"}]"#),
                s("2024-02-29"),
                s("2024-07-01T10:11:12.345678"),
                s("true"),
            ],
            vec![
                s("9223372036854775807"),
                s("-1.5e+300"),
                s("-0.01"),
                s("0.000000"),
                s(""),
                s(r#"{"nested": {"k": null}}"#),
                s("1969-12-31"),
                s("1970-01-01T00:00:00.000000"),
                s("false"),
            ],
        ]
    );
    let types = db
        .rows(&format!(
            "SELECT string_agg(format_type(atttypid, atttypmod), ', ' ORDER BY attnum) FROM pg_attribute \
             WHERE attrelid = '{}'::regclass AND attnum > 0",
            db.qualified("types")
        ))
        .await;
    assert_eq!(
        types[0][0].as_deref(),
        Some("bigint, double precision, numeric(38,2), numeric(38,6), text, jsonb, date, timestamp with time zone, boolean")
    );
    assert_eq!(db.dest.row_count("d1", "types").await.unwrap(), Some(3));
    assert_eq!(db.dest.row_count("d1", "missing").await.unwrap(), None);
}

fn order_fields() -> Vec<Field> {
    vec![
        Field::new("id", FieldType::Bigint),
        Field::new("dt", FieldType::Date),
        Field::new("amount", FieldType::numeric(2)),
    ]
}

#[tokio::test]
async fn append_replace_and_idempotent_reload() {
    let db = Db::new().await;
    let spec = spec("orders", order_fields(), WriteMode::Append);
    let first = batch(
        &spec.schema,
        &[json!({"id": 1, "dt": "2024-07-01", "amount": "1.50"})],
    );
    let out = load(&*db.dest, &spec, vec![Ok(first.clone())], Load::default())
        .await
        .unwrap();
    assert!(!out.already_loaded);

    // The same load id again: nothing changes, even if the rows differ.
    let out = load(&*db.dest, &spec, vec![Ok(first.clone())], Load::default())
        .await
        .unwrap();
    assert_eq!(
        out,
        LoadOutcome {
            already_loaded: true,
            ..Default::default()
        }
    );
    assert_eq!(db.table("orders").await.len(), 1);

    let out = load(
        &*db.dest,
        &spec,
        vec![Ok(first.clone())],
        Load {
            load_id: "load-2",
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(out.rows_loaded, 1);
    assert_eq!(db.table("orders").await.len(), 2, "append adds");

    let mut replace = spec.clone();
    replace.write_mode = WriteMode::Replace;
    let rows = batch(
        &spec.schema,
        &[
            json!({"id": 7, "dt": "2024-07-02", "amount": "2"}),
            json!({"id": 8, "dt": "2024-07-02"}),
        ],
    );
    let out = load(
        &*db.dest,
        &replace,
        vec![Ok(rows)],
        Load {
            load_id: "load-3",
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!((out.rows_loaded, out.rows_replaced), (2, 2));
    assert_eq!(
        db.table("orders").await,
        vec![
            vec![s("7"), s("2024-07-02"), s("2.00")],
            vec![s("8"), s("2024-07-02"), None]
        ]
    );
    let ledger = db
        .rows(&format!(
            "SELECT table_name, load_id, run_id, rows FROM \"{}_sluice\".loads ORDER BY load_id",
            db.prefix
        ))
        .await;
    assert_eq!(ledger.len(), 3);
    assert_eq!(
        ledger[2],
        vec![s("d1.orders"), s("load-3"), s("run-1"), s("2")]
    );
}

#[tokio::test]
async fn merge_upserts_with_the_last_row_for_a_key_winning() {
    let db = Db::new().await;
    let mut spec = spec("customers", order_fields(), WriteMode::Merge);
    spec.primary_key = vec!["id".into()];
    let first = batch(
        &spec.schema,
        &[
            json!({"id": 1, "dt": "2024-07-01", "amount": "1"}),
            json!({"id": 2, "dt": "2024-07-01", "amount": "2"}),
        ],
    );
    load(&*db.dest, &spec, vec![Ok(first)], Load::default())
        .await
        .unwrap();
    let second = vec![
        Ok(batch(
            &spec.schema,
            &[json!({"id": 2, "dt": "2024-07-02", "amount": "20"})],
        )),
        Ok(batch(
            &spec.schema,
            &[
                json!({"id": 3, "dt": "2024-07-02", "amount": "3"}),
                json!({"id": 2, "dt": "2024-07-03", "amount": "22"}),
            ],
        )),
    ];
    let out = load(
        &*db.dest,
        &spec,
        second,
        Load {
            load_id: "load-2",
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!((out.rows_loaded, out.rows_replaced), (2, 1));
    assert_eq!(
        db.table("customers").await,
        vec![
            vec![s("1"), s("2024-07-01"), s("1.00")],
            vec![s("2"), s("2024-07-03"), s("22.00")],
            vec![s("3"), s("2024-07-02"), s("3.00")],
        ]
    );
    let pk = db
        .rows(&format!(
            "SELECT count(*) FROM pg_index WHERE indrelid = '{}'::regclass AND indisprimary",
            db.qualified("customers")
        ))
        .await;
    assert_eq!(pk[0][0].as_deref(), Some("1"));
}

#[tokio::test]
async fn overwrite_partitions_replaces_only_the_touched_days() {
    let db = Db::new().await;
    let mut spec = spec("daily", order_fields(), WriteMode::OverwritePartitions);
    spec.partition_column = Some("dt".into());
    let first = batch(
        &spec.schema,
        &[
            json!({"id": 1, "dt": "2024-07-01", "amount": "1"}),
            json!({"id": 2, "dt": "2024-07-02", "amount": "2"}),
            json!({"id": 3, "dt": "2024-07-03", "amount": "3"}),
        ],
    );
    let days = [
        "2024-07-01".to_string(),
        "2024-07-02".into(),
        "2024-07-03".into(),
    ];
    load(
        &*db.dest,
        &spec,
        vec![Ok(first)],
        Load {
            partitions: &days,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // Day 2 is re-loaded with new rows; day 3 is named but now empty (it disappears).
    let second = batch(
        &spec.schema,
        &[
            json!({"id": 20, "dt": "2024-07-02", "amount": "20"}),
            json!({"id": 21, "dt": "2024-07-02", "amount": "21"}),
        ],
    );
    let touched = ["2024-07-02".to_string(), "2024-07-03".into()];
    let out = load(
        &*db.dest,
        &spec,
        vec![Ok(second)],
        Load {
            partitions: &touched,
            load_id: "load-2",
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!((out.rows_loaded, out.rows_replaced), (2, 2));
    assert_eq!(
        db.table("daily").await,
        vec![
            vec![s("1"), s("2024-07-01"), s("1.00")],
            vec![s("20"), s("2024-07-02"), s("20.00")],
            vec![s("21"), s("2024-07-02"), s("21.00")],
        ]
    );
}

/// A shard's load: rows `(id, run)` into `shards` (partition `dt` = 2024-07-01), as
/// run `run` of shard `shard` with lease generation `token`.
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
    let run_id = rows
        .first()
        .map(|r| r["_sluice_run_id"].as_str().unwrap().to_string())
        .unwrap_or_default();
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

async fn rows(db: &Db) -> Vec<Vec<Option<String>>> {
    let sql = format!(
        "SELECT id::text, _sluice_run_id FROM {} ORDER BY id",
        db.qualified("shards")
    );
    db.rows(&sql).await
}

#[tokio::test]
async fn shard_loads_are_fenced_in_the_transaction_and_keep_the_other_shards_rows() {
    let db = Db::new().await;
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
        rows(&db).await,
        vec![vec![s("1"), s("run-a")], vec![s("2"), s("run-b")]]
    );
    // Shard 0 taken over (generation 2): its publish replaces its own earlier rows.
    shard_load(&db, &[(1, "run-c")], "0-of-2", 2, "l3")
        .await
        .unwrap();
    assert_eq!(
        rows(&db).await,
        vec![vec![s("1"), s("run-c")], vec![s("2"), s("run-b")]]
    );
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
    assert_eq!(
        rows(&db).await,
        vec![vec![s("1"), s("run-c")], vec![s("2"), s("run-b")]]
    );
    let ledger = db
        .rows(&format!(
            "SELECT load_id FROM \"{}_sluice\".loads ORDER BY 1",
            db.prefix
        ))
        .await;
    assert_eq!(
        ledger,
        vec![vec![s("l0")], vec![s("l1")], vec![s("l2")], vec![s("l3")]]
    );
}

#[tokio::test]
async fn quarantine_is_published_with_the_rows_or_not_at_all() {
    let db = Db::new().await;
    let spec = spec("orders", order_fields(), WriteMode::Append);
    let bad = [
        rejected(3, "field `id`: expected bigint, got \"oops\""),
        rejected(9, "invalid JSON\0"),
    ];
    let rows = batch(&spec.schema, &[json!({"id": 1, "dt": "2024-07-01"})]);

    // A failing load publishes neither rows nor quarantine.
    let err = load(
        &*db.dest,
        &spec,
        vec![
            Ok(rows.clone()),
            Err(DestinationError::Load {
                table: "x".into(),
                message: "source broke".into(),
            }),
        ],
        Load {
            quarantine: &bad,
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("source broke"), "{err}");
    assert_eq!(db.dest.row_count("d1", "orders").await.unwrap(), None);
    assert_eq!(
        db.dest.row_count("d1", "orders__quarantine").await.unwrap(),
        None
    );

    let out = load(
        &*db.dest,
        &spec,
        vec![Ok(rows)],
        Load {
            quarantine: &bad,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!((out.rows_loaded, out.rows_quarantined), (1, 2));
    let q = db
        .rows(&format!(
            "SELECT run_id, origin, line::text, reason, raw, (quarantined_at IS NOT NULL)::text FROM {} ORDER BY line",
            db.qualified("orders__quarantine")
        ))
        .await;
    assert_eq!(
        q,
        vec![
            vec![
                s("run-1"),
                s("data/orders.ndjson"),
                s("3"),
                s("field `id`: expected bigint, got \"oops\""),
                s("{\"id\": \"oops\""),
                s("true")
            ],
            vec![
                s("run-1"),
                s("data/orders.ndjson"),
                s("9"),
                s("invalid JSON\u{FFFD}"),
                s("{\"id\": \"oops\""),
                s("true")
            ],
        ]
    );
}

#[tokio::test]
async fn an_error_mid_stream_leaves_the_table_as_it_was() {
    let db = Db::new().await;
    let spec = spec("orders", order_fields(), WriteMode::Replace);
    let before = batch(
        &spec.schema,
        &[json!({"id": 1, "dt": "2024-07-01", "amount": "1"})],
    );
    load(&*db.dest, &spec, vec![Ok(before)], Load::default())
        .await
        .unwrap();
    let snapshot = db.table("orders").await;

    let many: Vec<Value> = (0..5000)
        .map(|i| json!({"id": i, "dt": "2024-07-02", "amount": "9.99"}))
        .collect();
    let big = batch(&spec.schema, &many);
    let err = load(
        &*db.dest,
        &spec,
        vec![
            Ok(big.clone()),
            Ok(big),
            Err(DestinationError::Load {
                table: "d1.orders".into(),
                message: "page 3 unreadable".into(),
            }),
        ],
        Load {
            load_id: "load-2",
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("page 3 unreadable"));
    assert_eq!(db.table("orders").await, snapshot);
    // The ledger did not record the failed load, so a retry runs for real.
    let again = batch(&spec.schema, &[json!({"id": 5, "dt": "2024-07-05"})]);
    let out = load(
        &*db.dest,
        &spec,
        vec![Ok(again)],
        Load {
            load_id: "load-2",
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(!out.already_loaded);
    assert_eq!(
        db.table("orders").await,
        vec![vec![s("5"), s("2024-07-05"), None]]
    );
}

#[tokio::test]
async fn evolution_adds_columns_and_widens_types_in_the_load_transaction() {
    let db = Db::new().await;
    let v1 = spec(
        "events",
        vec![
            Field::new("id", FieldType::Bigint),
            Field::new("score", FieldType::Bigint),
            Field::new("day", FieldType::Date),
        ],
        WriteMode::Append,
    );
    load(
        &*db.dest,
        &v1,
        vec![Ok(batch(
            &v1.schema,
            &[json!({"id": 1, "score": 5, "day": "2024-07-01"})],
        ))],
        Load::default(),
    )
    .await
    .unwrap();

    // score: bigint → numeric(38,2); day: date → timestamptz; new column `source`.
    let v2 = spec(
        "events",
        vec![
            Field::new("id", FieldType::Bigint),
            Field::new("score", FieldType::numeric(2)),
            Field::new("day", FieldType::Timestamp),
            Field::new("source", FieldType::Text),
        ],
        WriteMode::Append,
    );
    let rows = batch(
        &v2.schema,
        &[json!({"id": 2, "score": "5.25", "day": "2024-07-02T03:04:05Z", "source": "api"})],
    );
    load(
        &*db.dest,
        &v2,
        vec![Ok(rows)],
        Load {
            load_id: "load-2",
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let got = db
        .rows(&format!(
            "SELECT id::text, score::text, to_char(day AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), source FROM {} ORDER BY id",
            db.qualified("events")
        ))
        .await;
    assert_eq!(
        got,
        vec![
            vec![s("1"), s("5.00"), s("2024-07-01 00:00:00"), None],
            vec![s("2"), s("5.25"), s("2024-07-02 03:04:05"), s("api")],
        ]
    );

    // A narrower type than the column (bigint into numeric) just loads.
    let narrow = spec(
        "events",
        vec![
            Field::new("id", FieldType::Bigint),
            Field::new("score", FieldType::Bigint),
        ],
        WriteMode::Append,
    );
    load(
        &*db.dest,
        &narrow,
        vec![Ok(batch(&narrow.schema, &[json!({"id": 3, "score": 7})]))],
        Load {
            load_id: "load-3",
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(db.dest.row_count("d1", "events").await.unwrap(), Some(3));
}

#[tokio::test]
async fn an_incompatible_type_fails_and_changes_nothing() {
    let db = Db::new().await;
    let v1 = spec(
        "events",
        vec![
            Field::new("id", FieldType::Bigint),
            Field::new("day", FieldType::Date),
        ],
        WriteMode::Append,
    );
    load(
        &*db.dest,
        &v1,
        vec![Ok(batch(
            &v1.schema,
            &[json!({"id": 1, "day": "2024-07-01"})],
        ))],
        Load::default(),
    )
    .await
    .unwrap();
    let columns_sql = format!(
        "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum) FROM pg_attribute \
         WHERE attrelid = '{}'::regclass AND attnum > 0 AND NOT attisdropped",
        db.qualified("events")
    );
    let columns_before = db.rows(&columns_sql).await;

    // `added` would be a new column, `day` turns boolean: the whole load is refused.
    let v2 = spec(
        "events",
        vec![
            Field::new("id", FieldType::Bigint),
            Field::new("added", FieldType::Text),
            Field::new("day", FieldType::Boolean),
        ],
        WriteMode::Append,
    );
    let err = load(
        &*db.dest,
        &v2,
        vec![Ok(batch(&v2.schema, &[json!({"id": 2, "day": true})]))],
        Load {
            load_id: "load-2",
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, DestinationError::Schema { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("column `day` is date in the table but boolean"),
        "{err}"
    );
    assert!(!err.is_transient());
    assert_eq!(db.rows(&columns_sql).await, columns_before);
    assert_eq!(
        db.table("events").await,
        vec![vec![s("1"), s("2024-07-01")]]
    );
}

#[tokio::test]
async fn hostile_field_names_are_data_never_sql() {
    let db = Db::new().await;
    let long = "x".repeat(300);
    let long_other = "x".repeat(299) + "y";
    let hostile = [
        "\"); DROP TABLE x; --",
        "a.b.c",
        "with space",
        "Ünïcödé ✓ 列",
        "MixedCase",
        "select",
        long.as_str(),
        long_other.as_str(),
    ];
    let mut fields = vec![Field::new("id", FieldType::Bigint)];
    fields.extend(hostile.iter().map(|n| Field::new(*n, FieldType::Text)));
    let mut spec = spec("weird \"table\"; --", fields, WriteMode::Merge);
    spec.primary_key = vec!["id".into(), "a.b.c".into()];
    let mut row = serde_json::Map::new();
    row.insert("id".into(), json!(1));
    for (i, n) in hostile.iter().enumerate() {
        row.insert(n.to_string(), json!(format!("v{i}")));
    }
    let rows = batch(&spec.schema, &[Value::Object(row.clone())]);
    let bad = [rejected(1, "x")];
    load(
        &*db.dest,
        &spec,
        vec![Ok(rows.clone())],
        Load {
            quarantine: &bad,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // A second load evolves nothing and merges on the hostile key.
    load(
        &*db.dest,
        &spec,
        vec![Ok(rows)],
        Load {
            load_id: "load-2",
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        db.dest
            .row_count("d1", "weird \"table\"; --")
            .await
            .unwrap(),
        Some(1)
    );
    assert_eq!(
        db.dest
            .row_count("d1", "weird \"table\"; --__quarantine")
            .await
            .unwrap(),
        Some(1)
    );
    let got = db.table("weird \"table\"; --").await;
    let expected: Vec<Option<String>> = std::iter::once(s("1"))
        .chain((0..hostile.len()).map(|i| s(&format!("v{i}"))))
        .collect();
    assert_eq!(got, vec![expected]);
    let names = db
        .rows(&format!(
            "SELECT attname FROM pg_attribute WHERE attrelid = '{}'::regclass AND attnum > 0 ORDER BY attnum",
            db.qualified("weird \"table\"; --")
        ))
        .await;
    assert_eq!(names[1][0].as_deref(), Some(hostile[0]));
    let (a, b) = (names[7][0].clone().unwrap(), names[8][0].clone().unwrap());
    assert!(a.len() <= 63 && b.len() <= 63 && a != b, "{a} / {b}");
}

#[tokio::test]
async fn a_refused_row_is_not_quoted_in_the_error() {
    // A constraint someone added to the table refuses a row: PostgreSQL's `detail`
    // ("Failing row contains (…)") quotes the row's values, which must not reach
    // logs or run records.
    let db = Db::new().await;
    let v1 = spec(
        "people",
        vec![Field::new("email", FieldType::Text)],
        WriteMode::Append,
    );
    load(
        &*db.dest,
        &v1,
        vec![Ok(batch(&v1.schema, &[json!({"email": "ok@example.com"})]))],
        Load::default(),
    )
    .await
    .unwrap();
    db.rows(&format!(
        "ALTER TABLE {} ADD CONSTRAINT no_secret CHECK (email NOT LIKE 'secret%')",
        db.qualified("people")
    ))
    .await;
    let err = load(
        &*db.dest,
        &v1,
        vec![Ok(batch(
            &v1.schema,
            &[json!({"email": "secret.person@example.com"})],
        ))],
        Load {
            load_id: "load-2",
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("23514"), "{text}");
    assert!(!text.contains("secret.person"), "{text}");
}

#[test]
fn tls_is_required_for_remote_hosts_unless_disabled() {
    let tls = |url: &str| {
        let config = PostgresConfig {
            url: Secret::new(url),
            schema_prefix: String::new(),
            connect_timeout_secs: 2,
            ssl_root_cert: None,
            d1_readers: Vec::new(),
            readers: Vec::new(),
        };
        PostgresDestination::new(config, Path::new("."))
            .map(|d| d.tls_mode())
            .map_err(|p| p.message)
    };
    use tokio_postgres::config::SslMode;
    assert_eq!(tls("postgres://u@db.example.com/x"), Ok(SslMode::Require));
    assert_eq!(tls("postgres://u@10.0.0.5:5432/x"), Ok(SslMode::Require));
    assert_eq!(
        tls("postgres://u@db.example.com/x?sslmode=disable"),
        Ok(SslMode::Disable)
    );
    assert_eq!(
        tls("postgres://u@db.example.com/x?sslmode=prefer"),
        Ok(SslMode::Prefer)
    );
    assert_eq!(
        tls("postgres://u@db.example.com/x?sslmode=verify-full"),
        Ok(SslMode::Require)
    );
    assert_eq!(tls("postgres://u@127.0.0.1:5432/x"), Ok(SslMode::Disable));
    assert_eq!(tls("postgres://u@localhost/x"), Ok(SslMode::Disable));
    assert_eq!(tls("postgres://u@[::1]:5432/x"), Ok(SslMode::Disable));
    assert_eq!(
        tls("postgres://u@127.0.0.1/x?sslmode=require"),
        Ok(SslMode::Require)
    );
    let err = tls("postgres://u@localhost/x?sslmode=maybe").unwrap_err();
    assert!(err.contains("unknown sslmode `maybe`"), "{err}");
}

#[tokio::test]
async fn a_server_without_tls_is_refused_when_tls_is_required_and_says_how_to_opt_out() {
    // What PostgreSQL with `ssl=off` answers to the SSLRequest: a single `N`.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut request = [0u8; 8];
            let _ = socket.read_exact(&mut request).await;
            let _ = socket.write_all(b"N").await;
        }
    });
    let config = PostgresConfig {
        url: Secret::new(format!(
            "postgres://sluice@127.0.0.1:{port}/x?sslmode=require"
        )),
        schema_prefix: String::new(),
        connect_timeout_secs: 2,
        ssl_root_cert: None,
        d1_readers: Vec::new(),
        readers: Vec::new(),
    };
    let err = PostgresDestination::new(config, Path::new("."))
        .unwrap()
        .check()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("server does not support TLS"), "{err}");
    assert!(err.contains("sslmode=disable"), "{err}");
    server.abort();
}

#[tokio::test]
async fn check_and_unreachable_servers() {
    let db = Db::new().await;
    db.dest.check().await.unwrap();
    assert!(db.dest.describe().starts_with("postgres "));
    let config = PostgresConfig {
        url: Secret::new("postgres://sluice:pw-must-not-leak@127.0.0.1:1/none"),
        schema_prefix: String::new(),
        connect_timeout_secs: 2,
        ssl_root_cert: None,
        d1_readers: Vec::new(),
        readers: Vec::new(),
    };
    let unreachable = PostgresDestination::new(config, Path::new(".")).unwrap();
    let err = unreachable.check().await.unwrap_err();
    assert!(matches!(err, DestinationError::Connect { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with("cannot connect to postgres 127.0.0.1:1/none"),
        "{text}"
    );
    assert!(!text.contains("pw-must-not-leak"), "{text}");
}

// ---- crash safety: a child process killed with SIGKILL mid-load ----

const CRASH_ROWS: i64 = 200_000;
const CRASH_BATCH: i64 = 5_000;

fn crash_spec() -> TableSpec {
    let mut spec = spec("crash", order_fields(), WriteMode::Merge);
    spec.primary_key = vec!["id".into()];
    spec
}

/// Rows of the crash load: ids 0.. overwrite the seeded rows (merge) and add new ones.
fn crash_batch(schema: &TableSchema, from: i64) -> RecordBatch {
    let rows: Vec<Value> = (from..from + CRASH_BATCH)
        .map(|i| json!({"id": i, "dt": "2024-08-01", "amount": format!("{}.{:02}", i, i % 100)}))
        .collect();
    batch(schema, &rows)
}

/// Not a test on its own: the child process the crash test starts and kills.
/// It loads [`CRASH_ROWS`] rows and prints a marker at each stage so the
/// parent knows where it is when it kills it.
#[test]
fn crash_child() {
    let Ok(prefix) = std::env::var("SLUICE_CRASH_CHILD_PREFIX") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let dest = destination(&prefix);
        let spec = crash_spec();
        let schema = spec.schema.clone();
        println!("marker start");
        let batches = futures::stream::unfold(0i64, move |from| {
            let schema = schema.clone();
            async move {
                if from >= CRASH_ROWS {
                    println!("marker streamed");
                    return None;
                }
                if from == CRASH_ROWS / 2 {
                    println!("marker halfway");
                }
                Some((Ok(crash_batch(&schema, from)), from + CRASH_BATCH))
            }
        })
        .boxed();
        dest.load(LoadRequest {
            table: &spec,
            batches,
            tail: LoadTail {
                quarantine: vec![rejected(1, "bad")],
                partitions: vec![],
                fence: None,
            }
            .ready(),
            load_id: "crash-load",
            run_id: "crash-run",
        })
        .await
        .unwrap();
        println!("marker committed");
    });
}

/// Starts [`crash_child`] and SIGKILLs it as soon as it prints `marker`
/// (then after `delay`); `None` lets it finish.
fn run_child(prefix: &str, marker: Option<&str>, delay: Duration) -> bool {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env("SLUICE_CRASH_CHILD_PREFIX", prefix)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the crash child");
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let started = Instant::now();
    for line in stdout.lines() {
        let line = line.unwrap();
        if marker.is_some_and(|m| line.contains(&format!("marker {m}"))) {
            std::thread::sleep(delay);
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            return false;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "crash child is stuck"
        );
    }
    child.wait().unwrap().success()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_load_killed_at_any_point_leaves_before_or_after() {
    let db = Db::new().await;
    let spec = crash_spec();
    let seed = batch(
        &spec.schema,
        &[
            json!({"id": 1, "dt": "2024-07-01", "amount": "0.5"}),
            json!({"id": -1, "dt": "2024-07-01", "amount": "7"}),
        ],
    );
    load(
        &*db.dest,
        &spec,
        vec![Ok(seed)],
        Load {
            load_id: "seed",
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let fingerprint = format!(
        "SELECT count(*)::text, coalesce(sum(id), 0)::text, coalesce(sum(amount), 0)::text, \
         (SELECT count(*) FROM {q})::text FROM {t}",
        t = db.qualified("crash"),
        q = db.qualified("crash__quarantine"),
    );
    // The quarantine table does not exist before the crash load; create it so the
    // fingerprint query works (an empty table, as the load would create).
    db.admin
        .batch_execute(&format!(
            "CREATE TABLE {} (run_id text NOT NULL, origin text NOT NULL, line bigint, reason text NOT NULL, raw text, \
             quarantined_at timestamptz NOT NULL DEFAULT now())",
            db.qualified("crash__quarantine")
        ))
        .await
        .unwrap();
    let before = db.rows(&fingerprint).await;
    let after = {
        let n = CRASH_ROWS;
        let sum_ids = n * (n - 1) / 2 - 1; // ids 0..n plus the untouched seed row -1
        let sum_amounts: i64 = (0..n).map(|i| i * 100 + i % 100).sum::<i64>() + 700;
        vec![vec![
            s(&(n + 1).to_string()),
            s(&sum_ids.to_string()),
            s(&format!("{}.{:02}", sum_amounts / 100, sum_amounts % 100)),
            s("1"),
        ]]
    };

    let kill_points = [
        ("start", Duration::from_millis(0)),
        ("start", Duration::from_millis(30)),
        ("halfway", Duration::from_millis(0)),
        ("streamed", Duration::from_millis(0)),
        ("streamed", Duration::from_millis(15)),
        ("streamed", Duration::from_millis(60)),
        ("streamed", Duration::from_millis(250)),
        // After COMMIT: the kill must not undo a published load.
        ("committed", Duration::from_millis(0)),
    ];
    let mut saw_before = 0;
    for (marker, delay) in kill_points {
        run_child(&db.prefix, Some(marker), delay);
        let now = db.rows(&fingerprint).await;
        assert!(
            now == before || now == after,
            "killed at {marker}+{delay:?}: {now:?} is neither {before:?} nor {after:?}"
        );
        let state = if now == before { "before" } else { "after" };
        eprintln!("killed at {marker}+{delay:?}: table is as {state}");
        if now == before {
            saw_before += 1;
        }
        let locks = db
            .rows("SELECT count(*)::text FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
            .await;
        assert_eq!(locks[0][0].as_deref(), Some("0"));
    }
    assert!(
        saw_before >= 3,
        "the kills mid-load should have rolled back"
    );

    // Re-running converges on the after state, once, whatever the kills left.
    assert!(
        run_child(&db.prefix, None, Duration::ZERO),
        "a full run succeeds"
    );
    assert_eq!(db.rows(&fingerprint).await, after);
    assert!(run_child(&db.prefix, None, Duration::ZERO));
    assert_eq!(db.rows(&fingerprint).await, after, "a re-run adds nothing");
}
