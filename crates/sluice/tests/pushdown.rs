//! Models in the warehouse (`models: { engine: destination }`): the example pipeline
//! against the sandbox, once with every model local and once with the models run
//! inside PostgreSQL, must publish the same tables row for row, block and quarantine
//! on the same checks, and stay equal after an incremental re-run. Encrypted values
//! made by either engine are read by both. What PostgreSQL cannot compute is a config
//! error before anything runs.

mod common;

use common::*;
use sluice_sandbox::SandboxOptions;

/// The example's `pii.key`: the test decrypts what either engine encrypted.
const EXAMPLE_PII_KEY: &str = "DEMO-ONLY-public-pii-key-never-use-for-real-data";

/// The example project publishing to PostgreSQL under `prefix`, with `engine` as
/// `models.engine`, plus two models whose checks fail: one `error` (blocked) and
/// one `warn` (published, rows quarantined), and one that decrypts every address.
fn project(sandbox: &TestSandbox, prefix: &str, engine: &str) -> Project {
    project_in(sandbox, &pg_url(), prefix, engine)
}

/// [`project`] publishing to the database at `url`.
fn project_in(sandbox: &TestSandbox, url: &str, prefix: &str, engine: &str) -> Project {
    let project = example_project(&sandbox.url());
    let path = project.path().join("pipeline.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("\nmodels: ./models\n"),
        "the example's models line"
    );
    let text =
        text.replacen(
            "\nmodels: ./models\n",
            &format!("\nmodels: {{ path: ./models, engine: {engine} }}\n"),
            1,
        ) + &format!("\ndestination:\n  type: postgres\n  url: {url}\n  schema_prefix: {prefix}\n");
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
        "models/d2b/clear_addresses.sql",
        "SELECT customer_id, decrypt(address_encrypted, CASE source WHEN 'crm' \
         THEN 'crm_customers.address' ELSE 'app_profiles.address' END) AS address \
         FROM d2a.customer_profiles\n",
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
/// left out: it is when each project's own extraction loaded the row. So is
/// `address_encrypted`: each encryption draws a random IV (compared decrypted instead).
fn differing_rows(pg: &Pg, a: (&str, &str), b: (&str, &str)) -> i64 {
    let columns: Vec<String> = pg
        .strings(&format!(
            "select case when data_type = 'double precision' \
             then format('round((%I)::numeric, 12 - coalesce(floor(log(nullif(abs(%I), 0)::numeric)), 0)::int)', column_name, column_name) \
             else format('%I', column_name) end \
             from information_schema.columns where table_schema = '{}' and table_name = '{}' \
             and column_name not in ('loaded_at', 'address_encrypted') \
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
        "d2a.customer_profiles",
        "d2b.channel_spend_daily",
        "d2b.clear_addresses",
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
    // The encrypted addresses: each engine's decrypt to the same clear text.
    let local_clear = clear_addresses(pg, &format!("{local}d2a"), round);
    assert!(
        local_clear.values().any(|a| a.is_some()),
        "{round}: no address decrypted"
    );
    assert_eq!(
        local_clear,
        clear_addresses(pg, &format!("{warehouse}d2a"), round),
        "{round}: the encrypted addresses differ once decrypted"
    );
}

/// `customer_id` → the clear address of `schema.customer_profiles`, decrypted here with
/// the example's key; every address present is an `enc:v3:` value that decrypts.
fn clear_addresses(
    pg: &Pg,
    schema: &str,
    round: &str,
) -> std::collections::BTreeMap<String, Option<String>> {
    let keys = sluice_transform::pii::PiiKeys::new(EXAMPLE_PII_KEY).unwrap();
    pg.strings(&format!(
        "select customer_id || '|' || source || '|' || coalesce(address_encrypted, '') \
         from \"{schema}\".customer_profiles"
    ))
    .into_iter()
    .map(|row| {
        let mut parts = row.splitn(3, '|');
        let (id, source, value) = (
            parts.next().unwrap().to_string(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        if value.is_empty() {
            return (id, None);
        }
        assert!(
            value.starts_with("enc:v3:k1:"),
            "{round}: {schema} {id}: {value}"
        );
        let context = if source == "crm" {
            "crm_customers.address"
        } else {
            "app_profiles.address"
        };
        let clear = keys.decrypt(value, context);
        assert!(
            clear.is_some(),
            "{round}: {schema} {id}: {value} does not decrypt"
        );
        (id, clear)
    })
    .collect()
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
    // encrypt() and decrypt() run in PostgreSQL through pgcrypto.
    pg.execute("create extension if not exists pgcrypto");

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

    // Values encrypted locally are decrypted in the warehouse: the local run's
    // ciphertexts put in the warehouse's table, and its decrypting model run again.
    // An altered value and an earlier version's AES-GCM value (which PostgreSQL cannot
    // open) read as NULL, not as text.
    let (l, w) = (
        format!("\"{local_prefix}d2a\".customer_profiles"),
        format!("\"{warehouse_prefix}d2a\".customer_profiles"),
    );
    pg.execute(&format!(
        "update {w} t set address_encrypted = l.address_encrypted from {l} l \
         where l.customer_id = t.customer_id"
    ));
    let altered = pg.strings(&format!(
        "select customer_id from {w} where address_encrypted is not null order by customer_id limit 2"
    ));
    assert_eq!(altered.len(), 2);
    pg.execute(&format!(
        "update {w} set address_encrypted = overlay(address_encrypted placing \
         case when substr(address_encrypted, 20, 1) = 'A' then 'B' else 'A' end from 20 for 1) \
         where customer_id = '{}'",
        altered[0]
    ));
    pg.execute(&format!(
        "update {w} set address_encrypted = 'enc:v2:k1:AAECAwQFBgcICQoLNHY7GjEog_SH_ubC0BY40b8uKwWu3vcCBTg' \
         where customer_id = '{}'",
        altered[1]
    ));
    let out = warehouse
        .cmd()
        .args(["run", "--select", "d2b.clear_addresses"])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let clear = |prefix: &str| {
        pg.strings(&format!(
            "select customer_id || '=' || coalesce(address, '<null>') from \"{prefix}d2b\".clear_addresses \
             order by customer_id"
        ))
    };
    let expected: Vec<String> = clear(&local_prefix)
        .into_iter()
        .map(|row| {
            let (id, _) = row.split_once('=').unwrap();
            if altered.iter().any(|a| a == id) {
                format!("{id}=<null>")
            } else {
                row
            }
        })
        .collect();
    assert!(expected.iter().filter(|r| !r.ends_with("=<null>")).count() > 2);
    assert_eq!(clear(&warehouse_prefix), expected);
    // The keys were bound as parameters: the run never says them.
    assert!(!stdout(&out).contains("DEMO-ONLY") && !stderr(&out).contains("DEMO-ONLY"));

    // A function PostgreSQL has no form of: refused before anything runs, naming the
    // model's file and the function.
    warehouse.write(
        "models/d2b/redacted.sql",
        "SELECT redact(customer_id) AS who FROM d2a.customer_profiles\n",
    );
    let out = warehouse.cmd().arg("validate").output().unwrap();
    assert_exit(&out, 3);
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        said.contains("redacted.sql") && said.contains("redact"),
        "{said}"
    );
    assert!(!said.contains("DEMO-ONLY"), "the pii key leaked: {said}");
    std::fs::remove_file(warehouse.path().join("models/d2b/redacted.sql")).unwrap();

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
    // This test must not depend on pgcrypto: the encrypting model stays local, and
    // the decrypting one is left out.
    let yml =
        std::fs::read_to_string(warehouse.path().join("models/d2a/customer_profiles.yml")).unwrap();
    warehouse.write(
        "models/d2a/customer_profiles.yml",
        format!("{yml}engine: local\n"),
    );
    std::fs::remove_file(warehouse.path().join("models/d2b/clear_addresses.sql")).unwrap();
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

/// Without pgcrypto in the database, the models that encrypt or decrypt in the
/// warehouse fail saying what to do; the models that do not are published.
#[test]
fn without_pgcrypto_the_encrypting_models_fail_saying_what_to_do() {
    let today = chrono::Utc::now().date_naive();
    let sandbox = TestSandbox::start(SandboxOptions::new(7, 1, today));
    let pg = Pg::connect();
    let db = format!("sluice_nopgcrypto_{}", std::process::id());
    pg.execute(&format!("drop database if exists {db}"));
    pg.execute(&format!("create database {db}"));
    // The test database's URL with another database name.
    let base = pg_url();
    let (path, query) = base
        .split_once('?')
        .map_or((base.as_str(), ""), |(p, q)| (p, q));
    let (server, _) = path.rsplit_once('/').unwrap();
    let url = if query.is_empty() {
        format!("{server}/{db}")
    } else {
        format!("{server}/{db}?{query}")
    };
    let project = project_in(&sandbox, &url, "nopg_", "destination");
    let out = project
        .cmd()
        .args(["run", "--today", &today.to_string()])
        .output()
        .unwrap();
    let said = format!("{}{}", stdout(&out), stderr(&out));
    pg.execute(&format!("drop database {db} with (force)"));
    assert_ne!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains("customer_profiles")
            && said.contains("pgcrypto")
            && said.contains("CREATE EXTENSION pgcrypto")
            && said.contains("engine: local"),
        "{said}"
    );
    assert!(!said.contains("DEMO-ONLY"), "the pii key leaked: {said}");
    // The models that do not encrypt ran in the warehouse as usual.
    let published = |model: &str| {
        stdout(&out).lines().any(|l| {
            l.split_whitespace().next() == Some(model) && l.split_whitespace().nth(2) == Some("ok")
        })
    };
    assert!(published("d2a.ad_performance_daily"), "{said}");
    assert!(!published("d2a.customer_profiles"), "{said}");
}
