//! The `generate` source: a source type added through the registry (its own module
//! plus one line in `sluice-connectors/src/lib.rs`) runs end to end, and replays.

mod common;

use common::{assert_exit, stderr, Project};

fn pipeline(rows: u64) -> String {
    format!(
        "name: synth\nlake: ./lake\nsources:\n  synthetic:\n    type: generate\n    streams:\n      \
         insights: {{ rows: {rows}, page_rows: 1000, days: 7 }}\n"
    )
}

/// What rows `0..n` hold, computed independently of the source's code.
fn truth(n: u64) -> (u64, i64, i64) {
    let clicks: i64 = (0..n).map(|i| (i * 7 % 1000) as i64).sum();
    let cents: i64 = (0..n).map(|i| (i * 13 % 100_000) as i64).sum();
    (n, clicks, cents)
}

fn warehouse(project: &Project) -> (u64, i64, i64, i64) {
    let db = project.sqlite();
    db.query_row(
        "select count(*), sum(clicks), sum(cast(round(cast(spend as real) * 100) as integer)), \
         count(distinct day) from d1__synthetic_insights",
        [],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?, r.get(3)?)),
    )
    .unwrap()
}

#[test]
fn a_registered_toy_source_loads_exactly_its_rows_and_replays() {
    let project = Project::new(&pipeline(4_500));
    let out = project.run(&["--json"]);
    assert_exit(&out, 0);
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let first_run = record["run_id"].as_str().unwrap().to_string();
    let (rows, clicks, cents) = truth(4_500);
    assert_eq!(warehouse(&project), (rows, clicks, cents, 7));

    // A second run regenerates (write mode replace): the same table, no doubles.
    let out = project.run(&[]);
    assert_exit(&out, 0);
    assert_eq!(warehouse(&project), (rows, clicks, cents, 7));

    // Its landed pages replay without the source.
    let out = project
        .cmd()
        .args(["replay", "--run", &first_run])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(warehouse(&project), (rows, clicks, cents, 7));
}

#[test]
fn an_unknown_source_type_lists_the_registered_ones() {
    let project = Project::new(
        "name: synth\nlake: ./lake\nsources:\n  s:\n    type: generat\n    streams: {}\n",
    );
    let out = project.cmd().arg("validate").output().unwrap();
    assert_exit(&out, 3);
    let text = stderr(&out);
    assert!(text.contains("did you mean `generate`?"), "{text}");
}
