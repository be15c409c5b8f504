//! End to end: `sync: cdc` (PostgreSQL logical replication) through the real binary,
//! against a real PostgreSQL with `wal_level = logical` at
//! `$SLUICE_TEST_CDC_DATABASE_URL` (scripts/test finds or starts one). Never skipped:
//! without a logical server these tests fail, naming the variable.

mod common;

use std::process::Command as Process;

use common::*;
use serde_json::Value;

fn cdc_url() -> String {
    std::env::var("SLUICE_TEST_CDC_DATABASE_URL").unwrap_or_else(|_| pg_url())
}

/// A blocking client of the logical-replication server.
struct Source {
    runtime: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl Source {
    fn connect() -> Source {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let url = cdc_url();
        let client = runtime.block_on(async {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("the CDC tests need PostgreSQL at {url}: {e}"));
            tokio::spawn(conn);
            client
        });
        let source = Source { runtime, client };
        let level = source.strings("SHOW wal_level");
        assert_eq!(
            level,
            ["logical"],
            "the CDC tests need a PostgreSQL with wal_level = logical: set SLUICE_TEST_CDC_DATABASE_URL \
             (scripts/test starts one under target/test-pg-cdc); {url} has {level:?}"
        );
        source
    }

    fn strings(&self, sql: &str) -> Vec<String> {
        self.runtime
            .block_on(self.client.query(sql, &[]))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect()
    }

    fn execute(&self, sql: &str) {
        self.runtime
            .block_on(self.client.batch_execute(sql))
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Drops the test's schemas, slots and publications.
    fn clean(&self, prefix: &str) {
        for slot in self.strings(&format!(
            "SELECT slot_name::text FROM pg_replication_slots WHERE slot_name LIKE '{prefix}%'"
        )) {
            self.execute(&format!("SELECT pg_drop_replication_slot('{slot}')"));
        }
        for publication in self.strings(&format!(
            "SELECT pubname::text FROM pg_publication WHERE pubname LIKE '{prefix}%'"
        )) {
            self.execute(&format!("DROP PUBLICATION {publication}"));
        }
        for schema in self.strings(&format!(
            "SELECT schema_name::text FROM information_schema.schemata WHERE schema_name LIKE '{prefix}%'"
        )) {
            self.execute(&format!("DROP SCHEMA {schema} CASCADE"));
        }
    }
}

/// A test's own source table, `<prefix>src.items` (seeded), and slot name; everything
/// under the prefix is dropped when `_cleanup` goes.
struct Seeded {
    source: Source,
    prefix: String,
    schema: String,
    table: String,
    slot: String,
    _cleanup: Cleanup,
}

fn seeded(name: &str) -> Seeded {
    let prefix = unique_prefix(name);
    let source = Source::connect();
    source.clean(&prefix);
    let _cleanup = Cleanup(prefix.clone());
    let schema = format!("{prefix}src");
    let table = format!("{schema}.items");
    seed(&source, &schema, &table);
    Seeded {
        source,
        slot: format!("{prefix}slot"),
        prefix,
        schema,
        table,
        _cleanup,
    }
}

/// Drops the test's slots, publications and schemas when the test ends, passed or
/// not: a slot left behind would hold the server's WAL for ever.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Ok(source) = std::panic::catch_unwind(Source::connect) {
            source.clean(&self.0);
        }
    }
}

fn pipeline(table: &str, slot: &str, destination: &str, extra: &str) -> String {
    format!(
        r#"name: cdc
lake: ./lake
{destination}
sources:
  src:
    type: postgres
    url: {url}
    batch_size: 2
    streams:
      items:
        table: {table}
        sync: cdc
        cdc:
          slot: {slot}
{extra}"#,
        url = cdc_url()
    )
}

fn run_json(project: &Project, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = project.run(&all);
    assert_exit(&out, 0);
    serde_json::from_slice(&out.stdout).expect("run record JSON")
}

fn task(record: &Value) -> &Value {
    record["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task"] == "src.items")
        .unwrap_or_else(|| panic!("no task src.items in {record}"))
}

const COLUMNS: &str = "id, v, n, tags, by, ts";

/// The source's rows as D1 holds them (`id|v|n|tags|by|ts`), NULL as `∅`.
fn source_rows(source: &Source, table: &str) -> Vec<String> {
    source.strings(&format!(
        "SELECT concat_ws('|', id, coalesce(v, '∅'), coalesce(n::text, '∅'), coalesce(to_json(tags)::text, '∅'), \
         coalesce(encode(by, 'hex'), '∅'), coalesce(to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), '∅')) \
         FROM {table} ORDER BY id"
    ))
}

/// D1's live rows (not marked deleted) and the keys marked deleted.
fn sqlite_d1(project: &Project) -> (Vec<String>, Vec<String>) {
    let db = project.sqlite();
    let live = sqlite_text_rows(
        &db,
        &format!(
            "SELECT {COLUMNS} FROM d1__src_items WHERE _sluice_deleted_at IS NULL ORDER BY id"
        ),
    );
    let deleted = sqlite_text_rows(
        &db,
        "SELECT id FROM d1__src_items WHERE _sluice_deleted_at IS NOT NULL ORDER BY id",
    );
    (live, deleted)
}

const TABLE: &str =
    "(id int PRIMARY KEY, v text, n numeric(10,2), tags int[], by bytea, ts timestamptz)";

fn seed(source: &Source, schema: &str, table: &str) {
    source.execute(&format!(
        "CREATE SCHEMA {schema}; CREATE TABLE {table} {TABLE};
         INSERT INTO {table} SELECT g, 'v' || g, g * 1.25, ARRAY[g, NULL], '\\x00ff', '2024-07-01 10:00:00.123456+02'
         FROM generate_series(1, 5) g;"
    ));
}

/// The changes every destination test commits between runs: inserts, updates (one
/// key twice), a delete, and a row inserted and deleted in one transaction.
fn change(source: &Source, table: &str) {
    source.execute(&format!(
        "INSERT INTO {table} VALUES (6, 'six', 6.5, '{{}}', NULL, NULL);
         UPDATE {table} SET v = 'one', tags = ARRAY[7, 8] WHERE id = 1;
         UPDATE {table} SET n = 99.99, by = '\\xbeef' WHERE id = 1;
         DELETE FROM {table} WHERE id = 2;
         BEGIN; INSERT INTO {table} VALUES (7, 'gone', 1, NULL, NULL, NULL); DELETE FROM {table} WHERE id = 7; COMMIT;
         UPDATE {table} SET v = NULL WHERE id = 3;"
    ));
}

#[test]
fn cdc_changes_arrive_in_sqlite_exactly_with_deletes_marked_and_replay_the_same() {
    let Seeded {
        source,
        prefix,
        table,
        slot,
        _cleanup,
        ..
    } = seeded("cdcsqlite");
    let project = Project::new(&pipeline(&table, &slot, "", ""));

    // First run: the slot and publication are created, then a snapshot.
    let first = run_json(&project, &[]);
    assert_eq!(task(&first)["rows_extracted"], 5, "{first}");
    assert_eq!(task(&first)["rows_quarantined"], 0, "{first}");
    assert_eq!(
        source.strings(&format!(
            "SELECT plugin::text FROM pg_replication_slots WHERE slot_name = '{slot}'"
        )),
        ["pgoutput"]
    );
    assert_eq!(sqlite_d1(&project).0, source_rows(&source, &table));

    change(&source, &table);
    let second = run_json(&project, &[]);
    // 1, 2, 3, 6, 7: the latest change of each key, once.
    assert_eq!(task(&second)["rows_extracted"], 5, "{second}");
    assert_eq!(task(&second)["rows_quarantined"], 0, "{second}");
    let (live, deleted) = sqlite_d1(&project);
    assert_eq!(live, source_rows(&source, &table));
    assert_eq!(deleted, ["2", "7"]);
    assert!(
        live.contains(&"1|one|99.99|[7,8]|beef|2024-07-01T08:00:00.123456Z".to_string()),
        "{live:?}"
    );
    // The delete's mark is its commit time: now-ish, not the run's.
    let marked_at = sqlite_text_rows(
        &project.sqlite(),
        "SELECT _sluice_deleted_at FROM d1__src_items WHERE id = 2",
    );
    assert!(marked_at[0].starts_with("20"), "{marked_at:?}");

    let after_changes = sqlite_text_rows(
        &project.sqlite(),
        &format!("SELECT {COLUMNS}, _sluice_deleted_at FROM d1__src_items ORDER BY id"),
    );

    // Nothing changed: nothing read, nothing different.
    let before = sqlite_text_rows(
        &project.sqlite(),
        &format!("SELECT {COLUMNS}, _sluice_deleted_at FROM d1__src_items ORDER BY id"),
    );
    let third = run_json(&project, &[]);
    assert_eq!(task(&third)["rows_extracted"], 0, "{third}");
    let after = sqlite_text_rows(
        &project.sqlite(),
        &format!("SELECT {COLUMNS}, _sluice_deleted_at FROM d1__src_items ORDER BY id"),
    );
    assert_eq!(before, after);

    // A deleted key inserted again is live again.
    source.execute(&format!(
        "INSERT INTO {table} VALUES (2, 'back', 2, NULL, NULL, NULL)"
    ));
    let fourth = run_json(&project, &[]);
    assert_eq!(task(&fourth)["rows_extracted"], 1, "{fourth}");
    let (live, deleted) = sqlite_d1(&project);
    assert_eq!(live, source_rows(&source, &table));
    assert_eq!(deleted, ["7"]);

    // The changes run's raw pages, replayed with the source emptied, load what that
    // run loaded (key 2 deleted again: the replay republishes the run's own rows).
    source.execute(&format!("DELETE FROM {table}"));
    let run_id = second["run_id"].as_str().unwrap().to_string();
    let out = project
        .cmd()
        .args(["replay", "--run", &run_id, "--json"])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let replayed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(task(&replayed)["rows_extracted"], 5, "{replayed}");
    let raw: Vec<_> = project
        .lake_files()
        .into_iter()
        .filter(|f| {
            let f = f.to_string_lossy();
            f.contains("raw/src/items") && f.contains(&run_id) && f.contains("-c00001.ndjson")
        })
        .collect();
    assert!(!raw.is_empty(), "no raw changes pages in the lake");
    let page = zstd::decode_all(std::fs::File::open(&raw[0]).unwrap()).unwrap();
    let page = String::from_utf8(page).unwrap();
    // Relation (R = 0x52) and Begin (B = 0x42) messages carried, then the changes.
    assert!(
        page.contains("\"data\":\"52") && page.contains("\"data\":\"42"),
        "{page}"
    );
    assert_eq!(
        sqlite_text_rows(
            &project.sqlite(),
            &format!("SELECT {COLUMNS}, _sluice_deleted_at FROM d1__src_items ORDER BY id"),
        ),
        after_changes
    );
    source.clean(&prefix);
}

#[test]
fn cdc_changes_arrive_in_postgres_exactly_and_the_slot_warns_when_it_holds_wal() {
    let Seeded {
        source,
        prefix,
        table,
        slot,
        _cleanup,
        ..
    } = seeded("cdcpg");
    let pg = Pg::connect();
    pg.drop_schemas(&prefix);
    let destination = format!(
        "destination:\n  type: postgres\n  url: {}\n  schema_prefix: {prefix}\n",
        pg_url()
    );
    let project = Project::new(&pipeline(
        &table,
        &slot,
        &destination,
        "          retained_wal_warning_mib: 0\n",
    ));
    let d1 = format!("{prefix}d1.src_items");
    let loaded = |deleted: bool| {
        pg.strings(&format!(
            "SELECT concat_ws('|', id, coalesce(v, '∅'), coalesce(n::text, '∅'), coalesce(replace(tags::text, ' ', ''), '∅'), \
             coalesce(by, '∅'), coalesce(to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), '∅')) \
             FROM {d1} WHERE (_sluice_deleted_at IS NOT NULL) = {deleted} ORDER BY id"
        ))
    };
    run_json(&project, &[]);
    assert_eq!(loaded(false), source_rows(&source, &table));
    change(&source, &table);
    let second = run_json(&project, &[]);
    assert_eq!(loaded(false), source_rows(&source, &table));
    assert_eq!(
        loaded(true)
            .iter()
            .map(|r| r.split('|').next().unwrap().to_string())
            .collect::<Vec<_>>(),
        ["2", "7"]
    );
    let warnings = task(&second)["warnings"].to_string();
    assert!(
        warnings.contains(&format!("pg_drop_replication_slot('{slot}')"))
            && warnings.contains("sluice drop-slot src.items"),
        "{second}"
    );
    let third = run_json(&project, &[]);
    assert_eq!(task(&third)["rows_extracted"], 0, "{third}");
    source.clean(&prefix);
    pg.drop_schemas(&prefix);
}

#[test]
fn cdc_under_writes_and_a_sigkill_converges_with_no_lost_or_repeated_change() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    const SEEDED: i64 = 20_000;
    let prefix = unique_prefix("cdcwrites");
    let source = Source::connect();
    source.clean(&prefix);
    let _cleanup = Cleanup(prefix.clone());
    let schema = format!("{prefix}src");
    let table = format!("{schema}.items");
    source.execute(&format!(
        "CREATE SCHEMA {schema}; CREATE TABLE {table} (id int PRIMARY KEY, v int NOT NULL);
         INSERT INTO {table} SELECT g, 0 FROM generate_series(1, {SEEDED}) g;"
    ));
    let slot = format!("{prefix}slot");
    let project =
        Project::new(&pipeline(&table, &slot, "", "").replace("batch_size: 2", "batch_size: 100"));

    // Inserts, updates and deletes committed all the while.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let table = table.clone();
        std::thread::spawn(move || {
            let writer = Source::connect();
            let mut next = SEEDED + 1;
            while !stop.load(Ordering::Relaxed) {
                // Hot keys change many times a run; deleted keys come back; some
                // rows are inserted and deleted between two runs.
                writer.execute(&format!(
                    "INSERT INTO {table} VALUES ({next}, 0);
                     UPDATE {table} SET v = v + 1 WHERE id = {};
                     DELETE FROM {table} WHERE id = {};
                     INSERT INTO {table} VALUES ({}, 1000) ON CONFLICT (id) DO UPDATE SET v = {table}.v + 100;
                     DELETE FROM {table} WHERE id = {};",
                    next % 40 + 1,
                    (next * 104_729) % SEEDED + 1,
                    (next * 7919) % 200 + 1,
                    if next % 3 == 0 { next - 1 } else { 0 },
                ));
                next += 1;
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            next - SEEDED - 1
        })
    };
    // Killed once a page has landed, before any publish: first in the snapshot,
    // then (when the run is still going) while reading changes.
    let pages = |marker: &str| {
        project
            .lake_files()
            .iter()
            .filter(|f| {
                let f = f.to_string_lossy();
                f.contains("raw/src/items") && f.contains(marker)
            })
            .count()
    };
    let kill_when = |marker: &str| {
        let landed = pages(marker);
        let mut child = Process::new(assert_cmd::cargo::cargo_bin("sluice"))
            .arg("run")
            .current_dir(project.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        while pages(marker) == landed {
            assert!(
                started.elapsed().as_secs() < 60,
                "no {marker} page in a minute"
            );
            if child.try_wait().unwrap().is_some() {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let running = child.try_wait().unwrap().is_none();
        let _ = child.kill(); // SIGKILL
        child.wait().unwrap();
        running
    };
    assert!(
        kill_when("-p00001."),
        "the snapshot run ended before it could be killed"
    );
    run_json(&project, &[]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let killed_in_changes = kill_when("-c00001.");
    run_json(&project, &[]);
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().unwrap();
    assert!(
        writes > 10,
        "the writer made only {writes} rounds of changes"
    );

    run_json(&project, &[]);
    let expected = source.strings(&format!("SELECT id || '|' || v FROM {table} ORDER BY id"));
    let db = project.sqlite();
    let live = sqlite_text_rows(
        &db,
        "SELECT id, v FROM d1__src_items WHERE _sluice_deleted_at IS NULL ORDER BY id",
    );
    assert_eq!(
        live.len(),
        expected.len(),
        "killed while reading changes: {killed_in_changes}"
    );
    let differing: Vec<_> = expected
        .iter()
        .zip(&live)
        .filter(|(s, l)| s != l)
        .take(5)
        .collect();
    assert!(differing.is_empty(), "rows differ: {differing:?}");
    // Every key the source no longer has, and only those, is marked.
    let source_keys: std::collections::HashSet<String> = expected
        .iter()
        .map(|r| r.split('|').next().unwrap().to_string())
        .collect();
    let deleted = sqlite_text_rows(
        &db,
        "SELECT id FROM d1__src_items WHERE _sluice_deleted_at IS NOT NULL",
    );
    assert!(!deleted.is_empty());
    assert!(deleted.iter().all(|k| !source_keys.contains(k)));
    let all = sqlite_text_rows(&db, "SELECT count(*) FROM d1__src_items")[0]
        .parse::<usize>()
        .unwrap();
    assert_eq!(all, live.len() + deleted.len());
    let last = run_json(&project, &[]);
    assert_eq!(task(&last)["rows_extracted"], 0, "{last}");
    source.clean(&prefix);
}

#[test]
fn cdc_config_mistakes_are_config_errors_naming_the_key() {
    let prefix = unique_prefix("cdcconfig");
    let source = Source::connect();
    source.clean(&prefix);
    let _cleanup = Cleanup(prefix.clone());
    let schema = format!("{prefix}src");
    source.execute(&format!(
        "CREATE SCHEMA {schema}; CREATE TABLE {schema}.keyless (id int, v text);"
    ));
    let validate = |pipeline: &str| {
        let project = Project::new(pipeline);
        let out = project.cmd().arg("validate").output().unwrap();
        assert_exit(&out, 3);
        stderr(&out)
    };
    let text = validate(&pipeline(&format!("{schema}.keyless"), "x", "", ""));
    assert!(
        text.contains("primary_key") && text.contains("keyless"),
        "{text}"
    );
    let text = validate(
        &pipeline(&format!("{schema}.keyless"), "x", "", "").replace(
            &format!("table: {schema}.keyless"),
            &format!("query: SELECT * FROM {schema}.keyless"),
        ),
    );
    assert!(
        text.contains("`query:`") && text.contains("table:"),
        "{text}"
    );

    // A server without logical decoding (the main test server, when it is not logical).
    let pg = Pg::connect();
    if pg.strings("SHOW wal_level") != ["logical"] {
        pg.drop_schemas(&prefix);
        pg.execute(&format!(
            "CREATE SCHEMA {schema}; CREATE TABLE {schema}.items (id int PRIMARY KEY);"
        ));
        let text = validate(
            &pipeline(&format!("{schema}.items"), "x", "", "").replace(&cdc_url(), &pg_url()),
        );
        assert!(
            text.contains("wal_level") && text.contains("ALTER SYSTEM SET wal_level = logical"),
            "{text}"
        );
        pg.drop_schemas(&prefix);
    }
    source.clean(&prefix);
}

#[test]
fn drop_slot_retires_a_cdc_stream_on_its_server_and_a_full_refresh_brings_it_back() {
    let Seeded {
        source,
        prefix,
        schema,
        table,
        slot,
        _cleanup,
    } = seeded("cdcdrop");
    let shared = format!("{prefix}shared");
    // `kept` reads the same table through a publication it shares with another table.
    let extra = format!(
        "      kept:\n        table: {table}\n        sync: cdc\n        cdc:\n          slot: {prefix}kept\n          publication: {shared}\n"
    );
    let project = Project::new(&pipeline(&table, &slot, "", &extra));
    source.execute(&format!(
        "CREATE TABLE {schema}.other (id int PRIMARY KEY); CREATE PUBLICATION {shared} FOR TABLE {schema}.other"
    ));
    assert_exit(&project.run(&[]), 0);
    let slots = |name: &str| {
        source.strings(&format!(
            "SELECT slot_name::text FROM pg_replication_slots WHERE slot_name = '{name}'"
        ))
    };
    let publications = |name: &str| {
        source.strings(&format!(
            "SELECT pubname::text FROM pg_publication WHERE pubname = '{name}'"
        ))
    };
    let published_tables = |name: &str| {
        source.strings(&format!(
            "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = '{name}' ORDER BY 1"
        ))
    };
    assert_eq!(slots(&slot), vec![slot.clone()]);
    assert_eq!(publications(&slot), vec![slot.clone()]);
    assert_eq!(
        published_tables(&shared),
        [table.clone(), format!("{schema}.other")]
    );

    // sluice's own publication goes with the slot.
    let out = project
        .cmd()
        .args(["drop-slot", "src.items"])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains(&format!("dropped replication slot {slot}")),
        "{}",
        stdout(&out)
    );
    assert!(slots(&slot).is_empty());
    assert!(publications(&slot).is_empty());
    let again = project
        .cmd()
        .args(["drop-slot", "src.items"])
        .output()
        .unwrap();
    assert_exit(&again, 0);
    assert!(
        stdout(&again).contains("no replication slot or publication left to drop"),
        "{}",
        stdout(&again)
    );

    // A declared publication is shared: only the stream's table leaves it.
    let out = project
        .cmd()
        .args(["drop-slot", "src.kept"])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert!(slots(&format!("{prefix}kept")).is_empty());
    assert_eq!(published_tables(&shared), [format!("{schema}.other")]);

    // Not a CDC stream, or no such stream: config errors naming it.
    let out = project
        .cmd()
        .args(["drop-slot", "src.nope"])
        .output()
        .unwrap();
    assert_exit(&out, 3);
    assert!(
        stderr(&out).contains("nope") && stderr(&out).contains("items"),
        "{}",
        stderr(&out)
    );

    // Brought back with --full-refresh, the stream reads a new snapshot into a new slot,
    // and D1 equals the source again, rows deleted while it had no slot included.
    change(&source, &table);
    let record = run_json(&project, &["--full-refresh"]);
    assert_eq!(task(&record)["rows_quarantined"], 0, "{record}");
    assert_eq!(slots(&slot), vec![slot.clone()]);
    assert_eq!(sqlite_d1(&project).0, source_rows(&source, &table));
}
