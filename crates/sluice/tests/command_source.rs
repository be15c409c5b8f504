//! `type: command`: a real Singer tap from PyPI (tap-spreadsheets, pinned in
//! scripts/requirements-taps.txt) loads exactly its records, hands its STATE back
//! on the next run, and replays without the tap; an NDJSON script's failure
//! publishes nothing and its stderr is logged with secrets redacted.

mod common;

use common::{assert_exit, stderr, stdout, tap_spreadsheets, Project};
use serde_json::Value;

fn singer_pipeline() -> &'static str {
    r#"name: taps
lake: ./lake
sources:
  crm:
    type: command
    command: ["${TAP}"]
    format: singer
    config:
      files:
        - { path: "data/*.csv", format: csv, table_name: orders, primary_keys: [id] }
    streams:
      orders: {}
"#
}

fn orders(project: &Project) -> Vec<String> {
    let db = project.sqlite();
    let mut statement = db
        .prepare(
            "select cast(id as integer), name, printf('%.2f', amount) from d1__crm_orders \
             order by cast(id as integer)",
        )
        .unwrap();
    statement
        .query_map([], |r| {
            Ok(format!(
                "{}|{}|{}",
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?
            ))
        })
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

fn run_json(project: &Project) -> Value {
    let out = project.run(&["--json"]);
    assert_exit(&out, 0);
    serde_json::from_slice(&out.stdout).unwrap()
}

fn rows_extracted(record: &Value) -> u64 {
    record["tasks"][0]["rows_extracted"].as_u64().unwrap()
}

#[test]
fn a_singer_tap_from_pypi_loads_exactly_its_records_resumes_from_its_state_and_replays() {
    let project = Project::new(singer_pipeline());
    project.write(".env", format!("TAP={}\n", tap_spreadsheets().display()));
    project.write(
        "data/orders.csv",
        "id,name,amount\n1,Ann,10.50\n2,\"Bob, Jr.\",3.25\n3,Cécile,7.00\n",
    );
    let first = run_json(&project);
    let first_run = first["run_id"].as_str().unwrap().to_string();
    let after_first = orders(&project);
    assert_eq!(
        after_first,
        ["1|Ann|10.50", "2|Bob, Jr.|3.25", "3|Cécile|7.00"]
    );
    assert_eq!(rows_extracted(&first), 3);

    // A new file, newer than the tap's bookmark (its STATE, stored as the cursor and
    // handed back with --state): the second run gets only its record.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    project.write("data/orders_2.csv", "id,name,amount\n4,Dee,1.00\n");
    let second = run_json(&project);
    let second_run = second["run_id"].as_str().unwrap().to_string();
    assert_eq!(rows_extracted(&second), 1, "{second}");
    let after_second = orders(&project);
    assert_eq!(after_second.len(), 4);
    assert_eq!(after_second[3], "4|Dee|1.00");

    // Replay needs no process: the tap is gone, the landed output is enough.
    project.write(".env", "TAP=/nonexistent/tap-spreadsheets\n");
    std::fs::remove_file(project.path().join("warehouse.db")).unwrap();
    for (run, expected) in [(&first_run, &after_first), (&second_run, &after_second)] {
        let out = project
            .cmd()
            .args(["replay", "--run", run])
            .output()
            .unwrap();
        assert_exit(&out, 0);
        assert_eq!(&orders(&project), expected, "replay of {run}");
    }
    // And running it now fails on the missing program, naming the key.
    let out = project.run(&[]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("cannot run"), "{}", stderr(&out));
}

const SCRIPT: &str = r#"#!/bin/sh
# $1: ok | fail; then --config <file>
mode=$(stat -c %a "$3")
case "$(cat "$3")" in *s3cr3t-command-token*) has=yes ;; *) has=no ;; esac
echo "debug: calling the API with s3cr3t-command-token" >&2
printf '{"id": 1, "config_mode": "%s", "has_secret": "%s"}\n' "$mode" "$has"
printf '{"id": 2, "config_mode": "%s", "has_secret": "%s"}\n' "$mode" "$has"
if [ "$1" = fail ]; then
  echo "fatal: quota exceeded for s3cr3t-command-token" >&2
  exit 3
fi
"#;

#[test]
fn an_ndjson_command_gets_a_private_config_and_a_failing_one_publishes_nothing() {
    let project = Project::new(
        r#"name: cmd
lake: ./lake
sources:
  script:
    type: command
    command: [sh, ./export.sh]
    config: { greeting: hello }
    secrets: { token: "${TOKEN}" }
    streams:
      good: { args: [ok] }
      bad: { args: [fail] }
"#,
    );
    project.write(".env", "TOKEN=s3cr3t-command-token\n");
    project.write("export.sh", SCRIPT);
    let out = project.run(&[]);
    assert_ne!(out.status.code(), Some(0), "a failed stream fails the run");
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(text.contains("exited with exit status: 3"), "{text}");
    assert!(text.contains("fatal: quota exceeded for ***"), "{text}");
    assert!(
        !text.contains("s3cr3t-command-token"),
        "the secret leaked:\n{text}"
    );

    let db = project.sqlite();
    let good: Vec<(i64, String, String)> = db
        .prepare("select id, config_mode, has_secret from d1__script_good order by id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    // The config file was private (0600) and carried the secret.
    assert_eq!(
        good,
        [
            (1, "600".to_string(), "yes".to_string()),
            (2, "600".to_string(), "yes".to_string())
        ]
    );
    let bad_tables: i64 = db
        .query_row(
            "select count(*) from sqlite_master where name = 'd1__script_bad'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(bad_tables, 0, "the failed stream published nothing");
}

#[test]
fn command_config_mistakes_point_at_the_key() {
    for (body, message) in [
        (
            "    command: []\n    streams: { a: {} }\n",
            "name the program",
        ),
        (
            "    command: [x]\n    streams: { a: { tap_stream: b } }\n",
            "set `format: singer`",
        ),
        (
            "    command: [x]\n    secrets: { k: v }\n    streams: { a: {} }\n",
            "`secrets` are added to `config`",
        ),
        (
            "    command: [x]\n    fromat: singer\n    streams: { a: {} }\n",
            "did you mean `format`?",
        ),
    ] {
        let project = Project::new(&format!(
            "name: bad\nlake: ./lake\nsources:\n  s:\n    type: command\n{body}"
        ));
        let out = project.cmd().arg("validate").output().unwrap();
        assert_exit(&out, 3);
        let text = stderr(&out);
        assert!(text.contains(message), "{message}: {text}");
        assert!(text.contains("pipeline.yaml:"), "no file:line: {text}");
    }
}
