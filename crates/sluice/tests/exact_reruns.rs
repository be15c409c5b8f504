//! Re-runs load exactly what is new (issue 14): a touched file loads nothing, a
//! grown file only its new lines, a rewritten one follows `on_changed_file`; a
//! glob that matches nothing fails instead of reporting "up to date".

mod common;

use common::*;

fn events_pipeline(destination: &str, extra: &str) -> String {
    format!(
        r#"name: shop
lake: ./lake
{destination}
sources:
  shop:
    type: files
    streams:
      events:
        path: data/events/*.ndjson
        columns: {{ id: bigint, kind: text }}
        write_mode: append
{extra}
      visits:
        path: data/visits/*.csv
        columns: {{ id: bigint, page: text }}
        write_mode: append
{extra}
"#
    )
}

fn events(ids: std::ops::Range<u64>) -> String {
    ids.map(|id| format!("{{\"id\": {id}, \"kind\": \"k{id}\"}}\n"))
        .collect()
}

fn visits_rows(ids: std::ops::Range<u64>) -> String {
    ids.map(|id| format!("{id},/p{id}\n")).collect()
}

fn touch(project: &Project, relative: &str) {
    let path = project.path().join(relative);
    let file = std::fs::File::options().append(true).open(&path).unwrap();
    file.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .unwrap();
}

fn append(project: &Project, relative: &str, text: &str) {
    use std::io::Write;
    let mut file = std::fs::File::options()
        .append(true)
        .open(project.path().join(relative))
        .unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

#[test]
fn append_loads_touched_files_never_and_grown_files_only_their_new_lines() {
    let pg = Pg::connect();
    let prefix = unique_prefix("rerun");
    let destination = format!(
        "destination:\n  type: postgres\n  url: {}\n  schema_prefix: {prefix}",
        pg_url()
    );
    let project = Project::new(&events_pipeline(&destination, ""));
    let count = |table: &str| {
        pg.scalar_i64(&format!(
            "select count(*) from \"{prefix}d1\".\"shop_{table}\""
        ))
    };
    let distinct = |table: &str| {
        pg.scalar_i64(&format!(
            "select count(distinct id) from \"{prefix}d1\".\"shop_{table}\""
        ))
    };
    project.write("data/events/a.ndjson", events(1..5));
    project.write(
        "data/visits/a.csv",
        format!("id,page\n{}", visits_rows(1..4)),
    );
    assert_exit(&project.run(&[]), 0);
    assert_eq!((count("events"), count("visits")), (4, 3));

    // Touched, same bytes: nothing loads again.
    touch(&project, "data/events/a.ndjson");
    touch(&project, "data/visits/a.csv");
    let out = project.run(&["--json"]);
    assert_exit(&out, 0);
    assert_eq!(
        (count("events"), count("visits")),
        (4, 3),
        "{}",
        stdout(&out)
    );

    // Grown: only the new lines load, with their real line numbers.
    append(&project, "data/events/a.ndjson", &events(5..7));
    append(
        &project,
        "data/visits/a.csv",
        &format!("{}x,/bad\n", visits_rows(4..6)),
    );
    let out = project.run(&["--json"]);
    assert_exit(&out, 0);
    assert_eq!(
        (count("events"), count("visits")),
        (6, 5),
        "{}",
        stdout(&out)
    );
    assert_eq!((distinct("events"), distinct("visits")), (6, 5));
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let visits = record["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task"] == "shop.visits")
        .unwrap();
    assert_eq!(visits["rows_quarantined"], 1, "{visits}");
    // header + 3 + 2 good lines: the bad one is line 7.
    assert!(
        visits["warnings"]
            .to_string()
            .contains("data/visits/a.csv:7"),
        "{visits}"
    );

    // Rewritten: the default for append is to stop, naming the file and the fix.
    project.write("data/events/a.ndjson", events(100..103));
    let out = project.run(&[]);
    assert_exit(&out, 5);
    let text = stdout(&out) + &stderr(&out);
    assert!(
        text.contains("data/events/a.ndjson changed since it was loaded")
            && text.contains("on_changed_file"),
        "{text}"
    );
    assert_eq!(count("events"), 6);
    pg.drop_schemas(&prefix);
}

#[test]
fn on_changed_file_append_all_loads_a_rewritten_file_again_and_reload_is_refused_for_append() {
    let project = Project::new(&events_pipeline("", "        on_changed_file: append_all"));
    let count = |table: &str| -> i64 {
        project
            .sqlite()
            .query_row(&format!("select count(*) from d1__shop_{table}"), [], |r| {
                r.get(0)
            })
            .unwrap()
    };
    project.write("data/events/a.ndjson", events(1..5));
    project.write(
        "data/visits/a.csv",
        format!("id,page\n{}", visits_rows(1..4)),
    );
    assert_exit(&project.run(&[]), 0);
    project.write("data/events/a.ndjson", events(10..12));
    assert_exit(&project.run(&[]), 0);
    assert_eq!(count("events"), 6);

    let refused = Project::new(&events_pipeline("", "        on_changed_file: reload"));
    let out = refused.cmd().arg("validate").output().unwrap();
    assert_exit(&out, 3);
    assert!(
        stderr(&out).contains("reload cannot take back the rows an append stream loaded"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_glob_that_matches_nothing_fails_run_and_validate_connections_unless_allowed() {
    let project = Project::new(&events_pipeline("", ""));
    project.write("data/events/a.ndjson", events(1..3));
    // data/visits/ holds no CSV file: a typo'd folder looks the same.
    let out = project.run(&[]);
    assert_exit(&out, 5);
    let text = stdout(&out);
    assert!(
        text.contains("no file matches `data/visits/*.csv`") && text.contains("allow_empty"),
        "{text}"
    );
    let out = project
        .cmd()
        .args(["validate", "--connections"])
        .output()
        .unwrap();
    assert_exit(&out, 6);
    assert!(stdout(&out).contains("no file matches"), "{}", stdout(&out));

    let allowed = Project::new(&events_pipeline("", "        allow_empty: true"));
    allowed.write("data/events/a.ndjson", events(1..3));
    assert_exit(&allowed.run(&[]), 0);
    let out = allowed
        .cmd()
        .args(["validate", "--connections"])
        .output()
        .unwrap();
    assert_exit(&out, 0);
}

// Two processes on one pipeline (a second pod, a shard): a publish removes staged
// leftovers of runs that ended, never the files of a run that is still going.
#[test]
fn a_publish_keeps_the_staged_files_of_another_live_run_and_removes_dead_ones() {
    let project = Project::new(
        "name: shop\nlake: ./lake\nsources:\n  shop:\n    type: files\n    streams:\n      orders:\n        path: data/orders/*.ndjson\n        columns: { order_id: bigint, amount: \"numeric(12,2)\", order_date: date }\n        partition_column: order_date\n",
    );
    project.write("data/orders/a.ndjson", orders_ndjson(1, 10));
    let out = project.run(&["--json"]);
    assert_exit(&out, 0);
    let finished: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs = project.path().join("lake/_state/shop/runs");

    // Another process's run, started a minute ago and still going; and a run killed
    // long ago (still `running` in its record) and one that failed.
    let record = |id: &str, status: &str, started: chrono::DateTime<chrono::Utc>| {
        let mut r = finished.clone();
        r["run_id"] = id.into();
        r["status"] = status.into();
        r["started_at"] = started.to_rfc3339().into();
        std::fs::write(runs.join(format!("{id}.json")), r.to_string()).unwrap();
        let staged = format!("lake/_staging/{id}/shop_orders/dt=2024-07-01/s00000-a0-0000.parquet");
        project.write(&staged, "staged by another run");
        project.path().join(staged)
    };
    let now = chrono::Utc::now();
    let live = record(
        "20991231T000000000Z-live",
        "running",
        now - chrono::Duration::minutes(1),
    );
    let killed = record(
        "20000101T000000000Z-killed",
        "running",
        now - chrono::Duration::days(3),
    );
    let failed = record(
        "20000102T000000000Z-failed",
        "failed",
        now - chrono::Duration::hours(1),
    );

    project.write("data/orders/b.ndjson", orders_ndjson(11, 5));
    assert_exit(&project.run(&[]), 0);
    assert!(live.exists(), "a live run's staged file was deleted");
    assert!(!killed.exists(), "a killed run's leftover was kept");
    assert!(!failed.exists(), "a failed run's leftover was kept");
}
