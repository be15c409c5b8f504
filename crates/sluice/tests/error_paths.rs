//! Every command's error path through the binary: a wrong argument ends with a
//! non-zero exit code and a message naming what is wrong (issue 14).

mod common;

use common::*;

const PIPELINE: &str = "name: shop\nlake: ./lake\nsources:\n  shop:\n    type: files\n    streams:\n      orders:\n        path: data/*.ndjson\n";

fn project_with_a_run() -> Project {
    let project = Project::new(PIPELINE);
    project.write("data/a.ndjson", "{\"id\": 1}\n");
    assert_exit(&project.run(&[]), 0);
    project
}

fn fails(project: &Project, args: &[&str], code: i32, says: &str) {
    let out = project.cmd().args(args).output().unwrap();
    assert_exit(&out, code);
    let text = stderr(&out) + &stdout(&out);
    assert!(text.contains(says), "{args:?}: {text}");
}

#[test]
fn each_command_names_what_is_wrong_with_its_arguments() {
    let project = project_with_a_run();
    fails(&project, &["runs", "nope"], 3, "no run nope");
    fails(
        &project,
        &["schema", "show", "shop.nope"],
        3,
        "no schema recorded for `shop_nope`",
    );
    fails(&project, &["replay", "--run", "nope"], 3, "no run nope");
    fails(&project, &["query", "select * from d1.nope"], 4, "d1.nope");
    fails(&project, &["query", "select from where"], 4, "error");
    fails(
        &project,
        &["run", "--since", "2024-07-02", "--until", "2024-07-01"],
        3,
        "is after --until",
    );
    fails(&project, &["run", "--select", "nope.*"], 3, "nope");
    fails(&project, &["run", "--today", "yesterday"], 2, "--today");
}

#[test]
fn a_missing_pipeline_file_is_a_config_error_for_every_command_that_reads_it() {
    let project = Project::new(PIPELINE);
    for command in [
        &["validate"][..],
        &["run"],
        &["runs"],
        &["query", "select 1"],
        &["schema", "show", "shop.orders"],
        &["replay", "--run", "x"],
    ] {
        let out = project
            .cmd()
            .args(["-p", "missing.yaml"])
            .args(command)
            .output()
            .unwrap();
        assert_exit(&out, 3);
        assert!(
            stderr(&out).contains("missing.yaml"),
            "{command:?}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn init_refuses_to_overwrite_a_project() {
    let project = Project::new(PIPELINE);
    let out = project.cmd().args(["init", "."]).output().unwrap();
    assert_exit(&out, 3);
    assert!(stderr(&out).contains("pipeline.yaml"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(project.path().join("pipeline.yaml")).unwrap(),
        PIPELINE
    );
}

// A lake laid out by a newer sluice is refused by an older one, before it writes.
#[test]
fn run_refuses_a_lake_in_a_newer_format() {
    let project = Project::new(
        "name: shop\nlake: ./lake\nsources:\n  shop:\n    type: files\n    streams:\n      orders:\n        path: data/*.ndjson\n",
    );
    project.write("data/a.ndjson", "{\"id\": 1}\n");
    assert_exit(&project.run(&[]), 0);
    let format = project.path().join("lake/_state/shop/format.json");
    assert!(format.exists(), "the first run records the lake format");
    std::fs::write(&format, "{\"lake_format\": 999}").unwrap();
    project.write("data/b.ndjson", "{\"id\": 2}\n");
    let out = project.run(&[]);
    assert_exit(&out, 4);
    let text = stdout(&out) + &stderr(&out);
    assert!(
        text.contains("format 999") && text.contains("upgrade sluice"),
        "{text}"
    );
    // Nothing of the refused run was loaded.
    let db = project.sqlite();
    let rows: i64 = db
        .query_row("select count(*) from d1__shop_orders", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 1);
}
