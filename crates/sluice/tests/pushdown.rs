//! Models in the warehouse (`models: { engine: destination }`): the example pipeline
//! against the sandbox, once with every model local and once with the models run
//! inside PostgreSQL, must publish the same tables row for row, block and quarantine
//! on the same checks, and stay equal after an incremental re-run. What PostgreSQL
//! cannot compute is a config error before anything runs.

mod common;

use common::*;
use sluice_sandbox::SandboxOptions;

/// The example project publishing to PostgreSQL under `prefix`, with `engine` as
/// `models.engine`, plus two models whose checks fail: one `error` (blocked) and
/// one `warn` (published, rows quarantined).
fn project(sandbox: &TestSandbox, prefix: &str, engine: &str) -> Project {
    let project = example_project(&sandbox.url());
    let path = project.path().join("pipeline.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("\nmodels: ./models\n"),
        "the example's models line"
    );
    let text = text.replacen(
        "\nmodels: ./models\n",
        &format!("\nmodels: {{ path: ./models, engine: {engine} }}\n"),
        1,
    ) + &format!(
        "\ndestination:\n  type: postgres\n  url: {}\n  schema_prefix: {prefix}\n",
        pg_url()
    );
    std::fs::write(&path, text).unwrap();
    project.write(
        "models/d2b/spend_blocked.sql",
        "SELECT date, platform, account_id, spend_usd FROM d2a.ad_performance_daily\n",
    );
    project.write(
        "models/d2b/spend_blocked.yml",
        "checks:\n  - range: { column: spend_usd, max: 0 }\n",
    );
    project.write(
        "models/d2b/google_flagged.sql",
        "SELECT date, platform, account_id, ad_group_id, clicks, impressions FROM d2a.ad_performance_daily\n",
    );
    project.write(
        "models/d2b/google_flagged.yml",
        "checks:\n  - sql: \"SELECT * FROM this WHERE platform = 'google'\"\n    name: google_rows\n    severity: warn\n  - not_null: [date, platform]\n",
    );
    project
}

/// Rows of `schema.table` in one engine and not the other (and back), every column
/// compared exactly except `double precision` ones, compared to 12 significant digits:
/// a sum of doubles depends on the order it adds in, which differs between engines
/// (and between two parallel runs of one engine) in the last bits. `loaded_at` is
/// left out: it is when each project's own extraction loaded the row.
fn differing_rows(pg: &Pg, a: (&str, &str), b: (&str, &str)) -> i64 {
    let columns: Vec<String> = pg
        .strings(&format!(
            "select case when data_type = 'double precision' \
             then format('round((%I)::numeric, 12 - coalesce(floor(log(nullif(abs(%I), 0)::numeric)), 0)::int)', column_name, column_name) \
             else format('%I', column_name) end \
             from information_schema.columns where table_schema = '{}' and table_name = '{}' \
             and column_name <> 'loaded_at' \
             order by ordinal_position",
            a.0, a.1
        ));
    assert!(!columns.is_empty(), "{a:?} has no columns");
    let select = columns.join(", ");
    let (a, b) = (
        format!("\"{}\".\"{}\"", a.0, a.1),
        format!("\"{}\".\"{}\"", b.0, b.1),
    );
    pg.scalar_i64(&format!(
        "select count(*) from ((select {select} from {a} except all select {select} from {b}) \
         union all (select {select} from {b} except all select {select} from {a})) d"
    ))
}

fn quarantine(pg: &Pg, table: &str) -> Vec<String> {
    let mut rows = pg.strings(&format!(
        "select origin || ' | ' || reason from {table} order by 1"
    ));
    rows.sort();
    rows
}

/// Every published model table and quarantine of the two runs, compared.
fn assert_same_warehouse(pg: &Pg, local: &str, warehouse: &str, round: &str) {
    for table in [
        "d2a.ad_performance_daily",
        "d2b.channel_spend_daily",
        "d2b.customer_address_exceptions",
        "d2b.google_flagged",
    ] {
        let (layer, name) = table.split_once('.').unwrap();
        let a = format!("\"{local}{layer}\".\"{name}\"");
        let b = format!("\"{warehouse}{layer}\".\"{name}\"");
        let rows = pg.scalar_i64(&format!("select count(*) from {a}"));
        assert!(rows > 0, "{round}: {table} is empty with engine: local");
        assert_eq!(
            pg.scalar_i64(&format!("select count(*) from {b}")),
            rows,
            "{round}: {table} row count"
        );
        assert_eq!(
            differing_rows(
                pg,
                (&format!("{local}{layer}"), name),
                (&format!("{warehouse}{layer}"), name)
            ),
            0,
            "{round}: {table} differs between engine: local and engine: destination"
        );
    }
    // The error check blocked the publish in both; the failing rows are quarantined.
    for prefix in [local, warehouse] {
        assert!(
            !pg.table_exists(&format!("{prefix}d2b"), "spend_blocked"),
            "{round}: spend_blocked was published under {prefix}"
        );
    }
    for table in ["spend_blocked__quarantine", "google_flagged__quarantine"] {
        let a = quarantine(pg, &format!("\"{local}d2b\".\"{table}\""));
        let b = quarantine(pg, &format!("\"{warehouse}d2b\".\"{table}\""));
        assert!(
            !a.is_empty(),
            "{round}: {table} is empty with engine: local"
        );
        assert_eq!(a, b, "{round}: {table} differs");
    }
}

#[test]
fn example_models_in_the_warehouse_equal_the_local_ones_and_check_alike() {
    let today = chrono::Utc::now().date_naive();
    let sandbox = TestSandbox::start(SandboxOptions::new(7, 1, today));
    let pg = Pg::connect();
    let base = format!("pushdown_{}_", std::process::id());
    let (local_prefix, warehouse_prefix) = (format!("{base}l_"), format!("{base}w_"));
    pg.drop_schemas(&base);

    let local = project(&sandbox, &local_prefix, "local");
    let warehouse = project(&sandbox, &warehouse_prefix, "destination");
    // AES-GCM has no PostgreSQL form: the model that decrypts addresses stays local,
    // and the model reading it runs in the warehouse over its published table.
    let yml =
        std::fs::read_to_string(warehouse.path().join("models/d2a/customer_profiles.yml")).unwrap();
    warehouse.write(
        "models/d2a/customer_profiles.yml",
        format!("{yml}engine: local\n"),
    );

    let run = |project: &Project| {
        project
            .cmd()
            .args(["run", "--today", &today.to_string()])
            .output()
            .unwrap()
    };
    for round in ["first run", "incremental re-run"] {
        let a = run(&local);
        let b = run(&warehouse);
        // The blocked model makes both runs partial, in the same way.
        assert_eq!(
            a.status.code(),
            b.status.code(),
            "{round}: exit codes differ\n--- local\n{}\n{}\n--- warehouse\n{}\n{}",
            stdout(&a),
            stderr(&a),
            stdout(&b),
            stderr(&b)
        );
        assert!(
            stdout(&b).contains("spend_blocked") && stdout(&b).contains("range(spend_usd)"),
            "{round}: the blocking check is reported\n{}\n{}",
            stdout(&b),
            stderr(&b)
        );
        assert_same_warehouse(&pg, &local_prefix, &warehouse_prefix, round);
    }
    // The incremental re-run replaced recomputed dates, it did not append them.
    let dupes = pg.scalar_i64(&format!(
        "select count(*) from (select date, platform from \"{warehouse_prefix}d2b\".channel_spend_daily \
         group by 1, 2 having count(*) > 1) d"
    ));
    assert_eq!(dupes, 0, "duplicate days after the incremental re-run");
    // Both runs published the models in the warehouse (one ledger entry per run).
    for table in ["d2a.ad_performance_daily", "d2b.channel_spend_daily"] {
        assert_eq!(
            pg.scalar_i64(&format!(
                "select count(*) from \"{warehouse_prefix}_sluice\".loads where table_name = '{table}'"
            )),
            2,
            "{table}: publishes in the warehouse"
        );
    }

    // A blocked publish keeps the previous table: publish spend_blocked without its
    // check, then run it again with the failing check.
    let blocked = format!("\"{warehouse_prefix}d2b\".spend_blocked");
    warehouse.write(
        "models/d2b/spend_blocked.yml",
        "description: no checks yet\n",
    );
    let out = warehouse
        .cmd()
        .args(["run", "--select", "d2b.spend_blocked"])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let published = pg.scalar_i64(&format!("select count(*) from {blocked}"));
    assert!(published > 0);
    warehouse.write(
        "models/d2b/spend_blocked.yml",
        "checks:\n  - range: { column: spend_usd, max: 0 }\n",
    );
    pg.execute(&format!("delete from {blocked} where platform = 'google'"));
    let kept = pg.scalar_i64(&format!("select count(*) from {blocked}"));
    let out = warehouse
        .cmd()
        .args(["run", "--select", "d2b.spend_blocked"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(
        pg.scalar_i64(&format!("select count(*) from {blocked}")),
        kept,
        "a blocked publish changed the table"
    );

    // With the decrypting model in the warehouse too: refused before anything runs,
    // naming its file and the function.
    warehouse.write("models/d2a/customer_profiles.yml", yml);
    let out = warehouse.cmd().arg("validate").output().unwrap();
    assert_exit(&out, 3);
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        said.contains("customer_profiles.sql") && said.contains("decrypt"),
        "{said}"
    );
    assert!(!said.contains("DEMO-ONLY"), "the pii key leaked: {said}");

    // SQLite cannot run models: a config error naming a model's file.
    let sqlite = example_project(&sandbox.url());
    let path = sqlite.path().join("pipeline.yaml");
    let text = std::fs::read_to_string(&path).unwrap().replacen(
        "\nmodels: ./models\n",
        "\nmodels: { engine: destination }\n",
        1,
    );
    std::fs::write(&path, text).unwrap();
    let out = sqlite.cmd().arg("validate").output().unwrap();
    assert_exit(&out, 3);
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        said.contains("engine: destination") && said.contains("cannot run models"),
        "{said}"
    );
    assert!(said.contains(".sql"), "names a model file: {said}");

    pg.drop_schemas(&base);
}

/// A model's warehouse session that loses its connection mid-transaction (the
/// server terminates it) is retried whole: the run succeeds, the table holds exactly
/// the rows it held before, and the ledger has one more publish. A model's SQL
/// failing on the data is not retried.
#[test]
fn a_model_session_killed_mid_transaction_is_retried_whole() {
    let today = chrono::Utc::now().date_naive().to_string();
    let sandbox = TestSandbox::start(SandboxOptions::new(7, 1, chrono::Utc::now().date_naive()));
    let pg = Pg::connect();
    let prefix = format!("pushkill_{}_", std::process::id());
    pg.drop_schemas(&prefix);
    let warehouse = project(&sandbox, &prefix, "destination");
    // Sessions of this test are found by their application name.
    let app = format!("sluice_{prefix}");
    let path = warehouse.path().join("pipeline.yaml");
    let separator = if pg_url().contains('?') { '&' } else { '?' };
    let text = std::fs::read_to_string(&path).unwrap().replacen(
        &format!("url: {}\n", pg_url()),
        &format!("url: \"{}{separator}application_name={app}\"\n", pg_url()),
        1,
    );
    std::fs::write(&path, text).unwrap();
    let yml =
        std::fs::read_to_string(warehouse.path().join("models/d2a/customer_profiles.yml")).unwrap();
    warehouse.write(
        "models/d2a/customer_profiles.yml",
        format!("{yml}engine: local\n"),
    );
    let out = warehouse.run(&["--today", &today]);
    let model = "d2a.ad_performance_daily";
    let table = format!("\"{prefix}d2a\".ad_performance_daily");
    let before = pg.scalar_i64(&format!("select count(*) from {table}"));
    assert!(before > 0, "{}\n{}", stdout(&out), stderr(&out));
    pg.execute(&format!(
        "create table \"{prefix}d2a\".before_kill as select * from {table}"
    ));

    let hold = warehouse.path().join("hold");
    let child = std::process::Command::new(assert_cmd::cargo::cargo_bin("sluice"))
        .current_dir(warehouse.path())
        .env_remove("RUST_LOG")
        .env("SLUICE_LOG", "info")
        .env("SLUICE_TEST_HOLD_IN_WAREHOUSE", &hold)
        .args([
            "run",
            "--today",
            &today,
            "--full-refresh",
            "--select",
            model,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let mut child = child;
    while !hold.exists() {
        if child.try_wait().unwrap().is_some() || started.elapsed().as_secs() > 60 {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the model never reached the hold\n{}\n{}",
                stdout(&out),
                stderr(&out)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let killed = pg.scalar_i64(&format!(
        "select count(*) from (select pg_terminate_backend(pid) from pg_stat_activity \
         where application_name = '{app}' and state like 'idle in transaction%') k"
    ));
    assert_eq!(killed, 1, "one open model session to terminate");
    std::fs::remove_file(&hold).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_exit(&out, 0);
    assert!(
        stderr(&out).contains("retrying"),
        "the retry is logged\n{}",
        stderr(&out)
    );
    assert_eq!(
        differing_rows(
            &pg,
            (&format!("{prefix}d2a"), "ad_performance_daily"),
            (&format!("{prefix}d2a"), "before_kill")
        ),
        0,
        "the retried publish changed the rows"
    );
    assert_eq!(
        pg.scalar_i64(&format!(
            "select count(*) from \"{prefix}_sluice\".loads where table_name = '{model}'"
        )),
        2,
        "publishes of {model}"
    );

    // A model whose SQL fails on the data fails once, with the warehouse's message.
    warehouse.write(
        "models/d2b/divides_by_zero.sql",
        "SELECT date, clicks / (clicks - clicks) AS ratio FROM d2a.ad_performance_daily\n",
    );
    let out = warehouse.run(&["--today", &today, "--select", "d2b.divides_by_zero"]);
    assert_exit(&out, 4);
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(said.contains("division by zero"), "{said}");
    assert!(
        !said.contains("retrying"),
        "a SQL error was retried: {said}"
    );
    pg.drop_schemas(&prefix);
}
