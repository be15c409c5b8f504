//! Crash safety: `sluice run` killed with SIGKILL at several points of a PostgreSQL
//! load leaves every table as before or as after, and a re-run converges with no duplicates.

mod common;

use std::process::{Command, Stdio};
use std::time::Instant;

use common::*;

const FIRST: u64 = 20_000;
const SECOND: u64 = 60_000;

#[test]
fn sigkill_during_a_postgres_load_leaves_before_or_after_and_rerun_converges() {
    let pg = Pg::connect();
    let prefix = unique_prefix("crash");
    let project = Project::new(&format!(
        r#"name: crash
destination:
  type: postgres
  url: {}
  schema_prefix: {prefix}
sources:
  shop:
    type: files
    streams:
      orders:
        path: data/*.ndjson
        columns: {{ order_id: bigint, customer_id: text, amount: "numeric(12,2)", order_date: date }}
        primary_key: [order_id]
        write_mode: append
"#,
        pg_url()
    ));
    let table = format!("\"{prefix}d1\".shop_orders");
    project.write("data/a.ndjson", orders_ndjson(1, FIRST));
    assert_exit(&project.run(&[]), 0);
    let count = || pg.scalar_i64(&format!("select count(*) from {table}"));
    assert_eq!(count(), FIRST as i64);

    // The second file makes the run that gets killed.
    project.write("data/b.ndjson", orders_ndjson(FIRST + 1, SECOND));
    let binary = assert_cmd::cargo::cargo_bin("sluice");

    // Time one full run on a throwaway copy of the state to spread the kill points over it.
    let timing = {
        let started = Instant::now();
        let mut child = spawn(&binary, &project);
        let status = child.wait().unwrap();
        assert!(status.success());
        started.elapsed()
    };
    // That run completed: undo it so the kills below hit a real load of file b.
    pg.execute(&format!("delete from {table} where order_id > {FIRST}; delete from \"{prefix}_sluice\".loads where run_id <> (select min(run_id) from \"{prefix}_sluice\".loads)"));
    reset_cursor_to_first_run(&project);
    assert_eq!(count(), FIRST as i64);

    let mut outcomes = Vec::new();
    for fraction in [0.15, 0.35, 0.55, 0.75, 0.9] {
        let mut child = spawn(&binary, &project);
        std::thread::sleep(timing.mul_f64(fraction));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let n = count();
        assert!(
            n == FIRST as i64 || n == (FIRST + SECOND) as i64,
            "after a kill at {fraction:.2} of the run the table has {n} rows: neither before nor after"
        );
        outcomes.push(n);
        if n == (FIRST + SECOND) as i64 {
            // The kill came after the commit; the rest of this loop would only test a no-op.
            break;
        }
    }
    // Re-running converges on exactly the rows of both files, no duplicates.
    assert_exit(&project.run(&[]), 0);
    assert_eq!(count(), (FIRST + SECOND) as i64, "outcomes: {outcomes:?}");
    assert_eq!(
        pg.scalar_i64(&format!("select count(distinct order_id) from {table}")),
        (FIRST + SECOND) as i64
    );
    // And once more: still no duplicates.
    assert_exit(&project.run(&["--select", "shop.orders"]), 0);
    assert_eq!(count(), (FIRST + SECOND) as i64);
    pg.drop_schemas(&prefix);
}

fn spawn(binary: &std::path::Path, project: &Project) -> std::process::Child {
    Command::new(binary)
        .arg("run")
        .current_dir(project.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sluice")
}

/// Removes cursor versions written after the first run, as if the timing run never happened.
fn reset_cursor_to_first_run(project: &Project) {
    let dir = project.path().join("lake/_state/crash/cursors/shop/orders");
    let mut versions: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    versions.sort();
    for extra in versions.iter().skip(1) {
        std::fs::remove_file(extra).unwrap();
    }
}
