//! `sluice init` scaffolds a project that validates and runs as it is.

mod common;

use common::*;

#[test]
fn an_initialised_project_validates_runs_and_ignores_its_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("shop");
    let sluice = || {
        let mut cmd = assert_cmd::Command::cargo_bin("sluice").unwrap();
        cmd.current_dir(&project).env_remove("RUST_LOG");
        cmd
    };
    let init = assert_cmd::Command::cargo_bin("sluice")
        .unwrap()
        .arg("init")
        .arg(&project)
        .output()
        .unwrap();
    assert_exit(&init, 0);
    for file in ["pipeline.yaml", ".env.example", ".gitignore"] {
        assert!(project.join(file).is_file(), "{file} scaffolded");
    }
    assert!(project.join("models").is_dir());
    let gitignore = std::fs::read_to_string(project.join(".gitignore")).unwrap();
    assert!(gitignore.lines().any(|l| l.trim() == ".env"), "{gitignore}");

    assert_exit(&sluice().arg("validate").output().unwrap(), 0);
    let first = sluice().arg("run").output().unwrap();
    assert_exit(&first, 0);
    assert!(stdout(&first).contains("succeeded"), "{}", stdout(&first));
    let db = rusqlite::Connection::open(project.join("warehouse.db")).unwrap();
    let rows = |db: &rusqlite::Connection| -> i64 {
        db.query_row("select count(*) from d1__shop_orders", [], |r| r.get(0))
            .unwrap()
    };
    let loaded = rows(&db);
    assert!(loaded > 0);
    // Nothing new: the second run loads nothing more.
    assert_exit(&sluice().arg("run").output().unwrap(), 0);
    assert_eq!(rows(&db), loaded);
    // The example model was built and its checks ran (and pass again under `sluice test`).
    let modelled: i64 = db
        .query_row("select count(*) from d2a__orders_clean", [], |r| r.get(0))
        .unwrap();
    assert_eq!(modelled, loaded);
    assert!(project.join("models/d2a/orders_clean.yml").is_file());
    let yml = std::fs::read_to_string(project.join("models/d2a/orders_clean.yml")).unwrap();
    assert!(yml.contains("checks:"), "{yml}");
    let test = sluice().arg("test").output().unwrap();
    assert_exit(&test, 0);
    assert!(stdout(&test).contains("not_null"), "{}", stdout(&test));
    let readme = std::fs::read_to_string(project.join("README.md")).unwrap();
    assert!(readme.contains("sluice quarantine retry"), "{readme}");
    // A second init into the same folder does not overwrite the user's work.
    let again = assert_cmd::Command::cargo_bin("sluice")
        .unwrap()
        .arg("init")
        .arg(&project)
        .output()
        .unwrap();
    assert_ne!(again.status.code(), Some(0), "init refuses to overwrite");
}

#[test]
fn the_marketing_template_validates_and_runs_against_the_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("marketing");
    let sluice = || {
        let mut cmd = assert_cmd::Command::cargo_bin("sluice").unwrap();
        cmd.current_dir(&project).env_remove("RUST_LOG");
        cmd
    };
    let init = assert_cmd::Command::cargo_bin("sluice")
        .unwrap()
        .args(["init", "--template", "marketing"])
        .arg(&project)
        .output()
        .unwrap();
    assert_exit(&init, 0);
    // The example project as the repository has it, byte for byte.
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/marketing");
    for file in [
        "pipeline.yaml",
        "models/currency_rates.csv",
        "models/d2a/ad_performance_daily.yml",
        "models/d2b/channel_spend_daily.sql",
    ] {
        assert_eq!(
            std::fs::read(project.join(file)).unwrap(),
            std::fs::read(example.join(file)).unwrap(),
            "{file}"
        );
    }
    let env_example = std::fs::read_to_string(project.join(".env.example")).unwrap();
    assert!(
        env_example.contains("SANDBOX_URL=http://127.0.0.1:8990"),
        "{env_example}"
    );

    // As the README says: copy .env.example to .env (here with the test sandbox's port).
    let today = chrono::Utc::now().date_naive();
    let sandbox = TestSandbox::start(sluice_sandbox::SandboxOptions::new(7, 1, today));
    let start = today - chrono::Duration::days(2);
    let env = env_example
        .replace("http://127.0.0.1:8990", &sandbox.url())
        .lines()
        .map(|l| {
            if l.starts_with("START_DATE=") {
                format!("START_DATE={start}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(project.join(".env"), env).unwrap();
    let validate = sluice().arg("validate").output().unwrap();
    assert_exit(&validate, 0);
    let run = sluice().arg("run").output().unwrap();
    assert_exit(&run, 0);
    assert!(sandbox.request_count() > 0);
    let db = rusqlite::Connection::open(project.join("warehouse.db")).unwrap();
    let count = |table: &str| -> i64 {
        db.query_row(&format!("select count(*) from {table}"), [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("{table}: {e}"))
    };
    assert!(count("d1__facebook_insights") > 0);
    assert!(count("d2b__channel_spend_daily") > 0);
}
