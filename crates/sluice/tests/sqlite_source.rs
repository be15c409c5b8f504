//! End to end: `type: sqlite` sources (a database file in the project) through the
//! real binary, into the SQLite and the real PostgreSQL destinations.

mod common;

use common::*;
use serde_json::Value;

fn run_json(project: &Project, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = project.run(&all);
    assert_exit(&out, 0);
    serde_json::from_slice(&out.stdout).expect("run record JSON")
}

fn task<'a>(record: &'a Value, name: &str) -> &'a Value {
    record["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task"] == name)
        .unwrap_or_else(|| panic!("no task {name} in {record}"))
}

/// The source database of a project: `source.db` in its folder.
fn source_db(project: &Project) -> rusqlite::Connection {
    rusqlite::Connection::open(project.path().join("source.db")).unwrap()
}

const TYPES_TABLE: &str = r#"
CREATE TABLE every_type (
  id INTEGER PRIMARY KEY, i BIGINT, r REAL, f8 DOUBLE PRECISION, t TEXT, vc VARCHAR(20),
  bl BLOB, n DECIMAL(12,2), n6 NUMERIC(18,6), d DATE, dt DATETIME, ts TIMESTAMP,
  b BOOLEAN, js JSON
);
INSERT INTO every_type VALUES
 (1, 9223372036854775807, 1.5, 0.1, 'héllo "quoted", comma' || char(10) || 'line', 'short',
  X'00ff10', '1234567890.12', '12345678.123456', '2024-02-29', '2024-07-01 10:11:12.123456',
  '2024-07-01T10:11:12Z', 1, '{"b": 1, "a": [1, 2]}'),
 (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (3, -9223372036854775808, -2.5, 1e300, '', 'ü', X'', '-0.01', 7, '1970-01-01',
  '1999-12-31 23:59:59', '2000-01-01 00:00:00', 0, '[]');
CREATE TABLE no_key (v TEXT, n INTEGER);
INSERT INTO no_key VALUES ('a', 1), ('b', 2), ('c', 3), ('d', 4), ('e', 5);
"#;

fn types_pipeline(destination: &str) -> String {
    format!(
        r#"name: rel
lake: ./lake
{destination}
sources:
  sq:
    type: sqlite
    path: source.db
    batch_size: 2
    streams:
      every:
        table: every_type
      no_key:
        table: no_key
"#
    )
}

#[test]
fn sqlite_types_round_trip_into_sqlite_and_postgres() {
    let project = Project::new(&types_pipeline(""));
    source_db(&project).execute_batch(TYPES_TABLE).unwrap();
    let record = run_json(&project, &[]);
    let every = task(&record, "sq.every");
    assert_eq!(every["rows_extracted"], 3, "{every}");
    assert_eq!(every["rows_quarantined"], 0, "{every}");
    assert_eq!(every["pages"], 2, "three rows in pages of two: {every}");
    let no_key = task(&record, "sq.no_key");
    assert_eq!(no_key["rows_extracted"], 5, "{no_key}");
    assert_eq!(
        no_key["pages"], 3,
        "one query streamed in pages of two: {no_key}"
    );

    let warehouse = project.sqlite();
    assert_eq!(
        sqlite_text_rows(&warehouse, "SELECT v, n FROM d1__sq_no_key ORDER BY n"),
        ["a|1", "b|2", "c|3", "d|4", "e|5"]
    );
    // Decimals regain their scale (the real 1234567890.12 SQLite stored, the
    // integer 7), blobs are hex, instants RFC 3339 in UTC, booleans 1/0.
    assert_eq!(
        sqlite_text_rows(
            &warehouse,
            "SELECT id, i, r, f8, t, vc, bl, n, n6, d, dt, ts, b, js FROM d1__sq_every ORDER BY id"
        ),
        [
            "1|9223372036854775807|1.5|0.1|héllo \"quoted\", comma\nline|short|00ff10|1234567890.12|12345678.123456|2024-02-29|2024-07-01T10:11:12.123456Z|2024-07-01T10:11:12.000000Z|1|{\"b\":1,\"a\":[1,2]}",
            "2|∅|∅|∅|∅|∅|∅|∅|∅|∅|∅|∅|∅|∅",
            "3|-9223372036854775808|-2.5|1e300||ü||-0.01|7.000000|1970-01-01|1999-12-31T23:59:59.000000Z|2000-01-01T00:00:00.000000Z|0|[]",
        ]
    );

    // PostgreSQL: each value compared with what was inserted, typed, in SQL.
    let prefix = unique_prefix("sqtypes");
    let pg = Pg::connect();
    pg.drop_schemas(&prefix);
    let project_pg = Project::new(&types_pipeline(&format!(
        "destination:\n  type: postgres\n  url: {}\n  schema_prefix: {prefix}\n",
        pg_url()
    )));
    source_db(&project_pg).execute_batch(TYPES_TABLE).unwrap();
    run_json(&project_pg, &[]);
    let d1 = format!("{prefix}d1");
    let differing = pg.strings(&format!(
        "SELECT e.id::text FROM (VALUES
           (1::bigint, 9223372036854775807::bigint, 1.5::float8, 0.1::float8, E'héllo \"quoted\", comma\\nline', 'short',
            '00ff10', 1234567890.12::numeric, 12345678.123456::numeric, '2024-02-29'::date,
            '2024-07-01 10:11:12.123456+00'::timestamptz, '2024-07-01 10:11:12+00'::timestamptz, true, '{{\"b\": 1, \"a\": [1, 2]}}'::jsonb),
           (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
           (3, -9223372036854775808, -2.5, 1e300, '', 'ü', '', -0.01, 7, '1970-01-01',
            '1999-12-31 23:59:59+00', '2000-01-01 00:00:00+00', false, '[]'))
         AS e(id, i, r, f8, t, vc, bl, n, n6, d, dt, ts, b, js)
         FULL JOIN {d1}.sq_every g ON g.id = e.id
         WHERE g.id IS NULL OR e.id IS NULL
            OR (e.i, e.r, e.f8, e.t, e.vc, e.bl, e.n, e.n6, e.d, e.dt, e.ts, e.b, e.js)
               IS DISTINCT FROM (g.i, g.r, g.f8, g.t, g.vc, g.bl, g.n, g.n6, g.d, g.dt, g.ts, g.b, g.js)"
    ));
    assert!(
        differing.is_empty(),
        "rows differing from the source: {differing:?}"
    );
    let types = pg.strings(&format!(
        "SELECT column_name || ' ' || data_type || coalesce('(' || numeric_precision || ',' || numeric_scale || ')', '') \
         FROM information_schema.columns WHERE table_schema = '{d1}' AND table_name = 'sq_every' \
         AND column_name IN ('n', 'n6', 'dt', 'b', 'js', 'd') ORDER BY column_name"
    ));
    assert_eq!(
        types,
        [
            "b boolean",
            "d date",
            "dt timestamp with time zone",
            "js jsonb",
            "n numeric(12,2)",
            "n6 numeric(18,6)"
        ]
    );
    pg.drop_schemas(&prefix);
}

#[test]
fn a_value_that_does_not_fit_its_declared_type_is_quarantined() {
    let project = Project::new(&types_pipeline(""));
    let db = source_db(&project);
    db.execute_batch(TYPES_TABLE).unwrap();
    // SQLite keeps text in an INTEGER-declared column as text.
    db.execute_batch("INSERT INTO every_type (id, i) VALUES (4, 'forty-two')")
        .unwrap();
    let record = run_json(&project, &[]);
    let every = task(&record, "sq.every");
    assert_eq!(every["rows_loaded"], 3, "{every}");
    assert_eq!(every["rows_quarantined"], 1, "{every}");
    let warehouse = project.sqlite();
    // Pages of two rows: id 4 is line 2 of the second page.
    let quarantined = sqlite_text_rows(
        &warehouse,
        "SELECT origin, line, reason, raw FROM d1__sq_every__quarantine",
    );
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    assert!(
        quarantined[0].contains("p00002.ndjson.zst|2|field `i`")
            && quarantined[0].contains(r#""i":"forty-two""#),
        "{quarantined:?}"
    );
    assert_eq!(
        sqlite_text_rows(&warehouse, "SELECT id FROM d1__sq_every ORDER BY id"),
        ["1", "2", "3"]
    );
}

#[test]
fn an_ambiguous_declared_type_is_a_config_error_naming_table_and_column() {
    let project = Project::new(&types_pipeline("").replace("every_type", "loose"));
    source_db(&project)
        .execute_batch(
            "CREATE TABLE loose (id INTEGER PRIMARY KEY, anything, price MONEY);
             CREATE TABLE no_key (v TEXT, n INTEGER);",
        )
        .unwrap();
    let out = project.cmd().arg("validate").output().unwrap();
    assert_exit(&out, 3);
    let text = stderr(&out);
    assert!(
        text.contains("`loose` column `anything`") && text.contains("ambiguous"),
        "{text}"
    );
    assert!(
        text.contains("pipeline.yaml:"),
        "the error points into the file: {text}"
    );
}

#[test]
fn a_missing_database_file_fails_the_run_but_not_plan() {
    let project = Project::new(&types_pipeline(""));
    let out = project.cmd().arg("plan").output().unwrap();
    assert_exit(&out, 0);
    let out = project.run(&[]);
    assert!(!out.status.success());
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(text.contains("no SQLite database file at"), "{text}");
}

/// 25 rows over five cursor values (ties everywhere, pages of 4); then inserts and
/// updates, some at the old maximum's value; every run loads exactly the changes.
#[test]
fn sqlite_incremental_by_cursor_loads_exactly_the_changes() {
    let project = Project::new(
        r#"name: rel
lake: ./lake
sources:
  src:
    type: sqlite
    path: data/shop.db
    batch_size: 4
    streams:
      items:
        table: items
        sync: incremental
        cursor: updated_at
"#,
    );
    std::fs::create_dir_all(project.path().join("data")).unwrap();
    let db = rusqlite::Connection::open(project.path().join("data/shop.db")).unwrap();
    let ts = |n: u32| format!("'2024-07-0{} 10:00:00'", n + 1);
    db.execute_batch(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, updated_at DATETIME NOT NULL, v TEXT)",
    )
    .unwrap();
    let values: Vec<String> = (1..=25)
        .map(|id| format!("({id}, {}, 'v{id}')", ts(id % 5)))
        .collect();
    db.execute_batch(&format!("INSERT INTO items VALUES {}", values.join(", ")))
        .unwrap();
    let rows = || {
        sqlite_text_rows(
            &project.sqlite(),
            "SELECT id, v FROM d1__src_items ORDER BY id",
        )
    };

    let first = run_json(&project, &[]);
    let t = task(&first, "src.items");
    assert_eq!(t["rows_extracted"], 25, "{t}");
    assert_eq!(t["pages"], 7, "25 rows in pages of 4: {t}");
    assert_eq!(rows().len(), 25);

    let second = run_json(&project, &[]);
    assert_eq!(task(&second, "src.items")["rows_extracted"], 0);

    // Changes later than the stored cursor: three new rows and two updates.
    db.execute_batch(&format!(
        "INSERT INTO items VALUES (26, {t5}, 'v26'), (27, {t5}, 'v27'), (28, {t6}, 'v28');
         UPDATE items SET updated_at = {t5}, v = 'changed' WHERE id IN (3, 7);",
        t5 = ts(5),
        t6 = ts(6)
    ))
    .unwrap();
    let third = run_json(&project, &[]);
    assert_eq!(
        task(&third, "src.items")["rows_extracted"],
        5,
        "exactly the changes"
    );
    let all = rows();
    assert_eq!(all.len(), 28, "{all:?}");
    assert!(all.contains(&"3|changed".to_string()) && all.contains(&"7|changed".to_string()));
    assert!(all.contains(&"28|v28".to_string()));

    let fourth = run_json(&project, &[]);
    assert_eq!(task(&fourth, "src.items")["rows_extracted"], 0);
    assert_eq!(rows(), all);

    let fifth = run_json(&project, &["--full-refresh"]);
    assert_eq!(task(&fifth, "src.items")["rows_extracted"], 28);
    assert_eq!(rows(), all);
}

#[test]
fn discover_lists_a_sqlite_files_tables_and_writes_streams() {
    let pipeline = "name: rel\nlake: ./lake\nsources:\n  crm:   # the CRM's file\n    type: sqlite\n    path: crm.db\n    streams:\n      # added by discover\n";
    let project = Project::new(pipeline);
    rusqlite::Connection::open(project.path().join("crm.db"))
        .unwrap()
        .execute_batch(
            "CREATE TABLE customers (id INTEGER PRIMARY KEY, email TEXT, balance DECIMAL(10,2), updated_at DATETIME);
             INSERT INTO customers VALUES (1, 'a@example.com', 1.5, '2024-07-01 10:00:00'), (2, 'b@example.com', 0, '2024-07-02 10:00:00');
             CREATE TABLE events (id INTEGER PRIMARY KEY, name TEXT);
             CREATE TABLE loose (id INTEGER PRIMARY KEY, anything);",
        )
        .unwrap();
    let out = project.cmd().args(["discover", "crm"]).output().unwrap();
    assert_exit(&out, 0);
    let listing = stdout(&out);
    assert!(
        listing.contains(
            "main.customers  (primary key: id; suggested sync: incremental, cursor: updated_at)"
        ),
        "{listing}"
    );
    assert!(
        listing.contains(
            "main.events  (primary key: id; suggested sync: incremental, append_key: id)"
        ),
        "{listing}"
    );
    assert!(listing.contains("DECIMAL(10,2)"), "{listing}");
    assert!(listing.contains("numeric(10,2)"), "{listing}");
    assert!(
        listing.contains("unsupported: no declared type"),
        "{listing}"
    );

    let out = project
        .cmd()
        .args(["discover", "crm", "customers", "loose", "--write"])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert!(stderr(&out).contains("`anything`"), "{}", stderr(&out));
    let written = std::fs::read_to_string(project.path().join("pipeline.yaml")).unwrap();
    assert_eq!(
        written,
        format!("{pipeline}      customers:\n        table: main.customers\n        sync: incremental\n        cursor: updated_at\n")
    );
    let record = run_json(&project, &[]);
    assert_eq!(task(&record, "crm.customers")["rows_extracted"], 2);
    assert_eq!(
        sqlite_text_rows(
            &project.sqlite(),
            "SELECT id, email, balance, updated_at FROM d1__crm_customers ORDER BY id"
        ),
        [
            "1|a@example.com|1.50|2024-07-01T10:00:00.000000Z",
            "2|b@example.com|0.00|2024-07-02T10:00:00.000000Z"
        ]
    );
}

#[test]
fn a_key_scan_needs_an_incremental_stream_and_a_period() {
    let pipeline = |stream: &str| {
        format!(
            "name: rel\nlake: ./lake\nsources:\n  sq:\n    type: sqlite\n    path: source.db\n    streams:\n      items:\n{stream}"
        )
    };
    let project = Project::new(&pipeline(
        "        table: items\n        deletes: { scan: key, every: 1d }\n",
    ));
    rusqlite::Connection::open(project.path().join("source.db"))
        .unwrap()
        .execute_batch("CREATE TABLE items (id INTEGER PRIMARY KEY, updated_at DATETIME)")
        .unwrap();
    let out = project.cmd().arg("validate").output().unwrap();
    assert_exit(&out, 3);
    let text = stderr(&out);
    assert!(
        text.contains("sources.sq.streams.items.deletes") && text.contains("sync: incremental"),
        "{text}"
    );

    project.write(
        "pipeline.yaml",
        pipeline("        table: items\n        sync: incremental\n        cursor: updated_at\n        deletes: { scan: key, every: soon }\n"),
    );
    let out = project.cmd().arg("validate").output().unwrap();
    assert_exit(&out, 3);
    let text = stderr(&out);
    assert!(
        text.contains("deletes.every") && text.contains("`soon` is not a period"),
        "{text}"
    );

    // A database source without its address says which key to give.
    project.write(
        "pipeline.yaml",
        "name: rel\nlake: ./lake\nsources:\n  pg:\n    type: postgres\n    path: source.db\n",
    );
    let out = project.cmd().arg("validate").output().unwrap();
    assert_exit(&out, 3);
    let text = stderr(&out);
    assert!(
        text.contains("sources.pg.path") && text.contains("`path:` is for `type: sqlite`"),
        "{text}"
    );
}
