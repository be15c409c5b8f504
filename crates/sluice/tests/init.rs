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
    // A second init into the same folder does not overwrite the user's work.
    let again = assert_cmd::Command::cargo_bin("sluice")
        .unwrap()
        .arg("init")
        .arg(&project)
        .output()
        .unwrap();
    assert_ne!(again.status.code(), Some(0), "init refuses to overwrite");
}
