//! The audit log (issue 15): runs, replays and unmasked queries are recorded with
//! who did them, as a hash chain in the lake that `sluice audit verify` checks; an
//! edited, deleted or reordered entry is found and named.

mod common;

use std::path::PathBuf;

use common::*;

const PIPELINE: &str = r#"name: shop
lake: ./lake
sources:
  shop:
    type: files
    streams:
      orders:
        path: data/orders/*.ndjson
        columns: { order_id: bigint, customer_id: text, amount: "numeric(12,2)", order_date: date }
"#;

fn entry(project: &Project, seq: u64) -> PathBuf {
    project
        .path()
        .join(format!("lake/_state/shop/audit/{seq:012}.jsonl"))
}

fn verify(project: &Project) -> std::process::Output {
    project.cmd().args(["audit", "verify"]).output().unwrap()
}

/// Runs `tamper`, checks `verify` fails naming `object` and saying `how`, then puts
/// every entry back and checks the log verifies again.
fn assert_detected(project: &Project, tamper: impl FnOnce(), object: u64, how: &str) {
    let saved: Vec<Vec<u8>> = (1..=4)
        .map(|s| std::fs::read(entry(project, s)).unwrap())
        .collect();
    tamper();
    let out = verify(project);
    assert_exit(&out, 4);
    let text = stderr(&out);
    assert!(
        text.contains(&format!("{object:012}.jsonl")) && text.contains(how),
        "expected entry {object} named as {how}:\n{text}"
    );
    for (i, bytes) in saved.iter().enumerate() {
        std::fs::write(entry(project, i as u64 + 1), bytes).unwrap();
    }
    assert_exit(&verify(project), 0);
}

#[test]
fn runs_replays_and_unmasked_queries_are_chained_and_tampering_is_found() {
    let project = Project::new(PIPELINE);
    project.write("data/orders/a.ndjson", orders_ndjson(1, 20));
    let audited = |args: &[&str]| {
        project
            .cmd()
            .env("USER", "auditor-test")
            .args(args)
            .output()
            .unwrap()
    };
    let out = audited(&["run", "--json"]);
    assert_exit(&out, 0);
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let run_id = record["run_id"].as_str().unwrap().to_string();
    let out = audited(&[
        "query",
        "--unmasked",
        "--format",
        "csv",
        "SELECT count(*) FROM d1.shop_orders",
    ]);
    assert_exit(&out, 0);
    // A masked query is not an audited action.
    let out = audited(&["query", "SELECT count(*) FROM d1.shop_orders"]);
    assert_exit(&out, 0);
    let out = audited(&["replay", "--run", &run_id]);
    assert_exit(&out, 0);

    let out = verify(&project);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("intact: 4 entries"),
        "{}",
        stdout(&out)
    );
    let out = project.cmd().args(["audit", "show"]).output().unwrap();
    assert_exit(&out, 0);
    let entries: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["run", "query_unmasked", "replay", "run"]);
    for e in &entries {
        assert_eq!(e["user"], "auditor-test", "{e}");
        assert!(!e["host"].as_str().unwrap().is_empty(), "{e}");
        assert!(e["token"].is_null(), "{e}");
    }
    assert_eq!(entries[0]["details"]["run_id"], run_id.as_str());
    assert_eq!(
        entries[1]["details"]["sql"],
        "SELECT count(*) FROM d1.shop_orders"
    );
    assert_eq!(entries[2]["details"]["of_run"], run_id.as_str());
    assert_eq!(entries[1]["prev"], entries[0]["hash"]);

    // Edited: a byte of an entry's content.
    assert_detected(
        &project,
        || {
            let path = entry(&project, 2);
            let text = std::fs::read_to_string(&path).unwrap();
            std::fs::write(&path, text.replace("auditor-test", "someone-else")).unwrap();
        },
        2,
        "edited",
    );
    // Edited, with a forged hash.
    assert_detected(
        &project,
        || {
            let path = entry(&project, 2);
            let mut value: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            value["details"]["sql"] = "SELECT 1".into();
            value["hash"] = "f".repeat(64).into();
            std::fs::write(&path, value.to_string()).unwrap();
        },
        2,
        "edited",
    );
    // Deleted: a gap in the numbers.
    assert_detected(
        &project,
        || std::fs::remove_file(entry(&project, 2)).unwrap(),
        3,
        "missing",
    );
    // Deleted and the later ones renumbered to close the gap.
    assert_detected(
        &project,
        || {
            for seq in 3..=4 {
                let mut value: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(entry(&project, seq)).unwrap()).unwrap();
                value["seq"] = (seq - 1).into();
                std::fs::write(entry(&project, seq - 1), value.to_string()).unwrap();
            }
            std::fs::remove_file(entry(&project, 4)).unwrap();
        },
        2,
        "edited",
    );
    // Reordered: two entries swapped.
    assert_detected(
        &project,
        || {
            let (two, three) = (entry(&project, 2), entry(&project, 3));
            let a = std::fs::read(&two).unwrap();
            std::fs::write(&two, std::fs::read(&three).unwrap()).unwrap();
            std::fs::write(&three, a).unwrap();
        },
        2,
        "reordered",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_stopped_by_a_signal_is_recorded_as_cancelled() {
    use sluice_sandbox::{credentials, Faults, SandboxOptions};
    let mut options = SandboxOptions::new(7, 1, chrono::Utc::now().date_naive());
    options.faults = Faults {
        slow_ms: Some(1000),
        ..Faults::default()
    };
    let sandbox = sluice_sandbox::start(options, 0).await.expect("sandbox");
    let project = Project::new(&format!(
        r#"name: shop
lake: ./lake
sources:
  facebook:
    type: facebook_ads
    base_url: {url}
    access_token: {token}
    api_version: v26.0
    accounts: all
    streams:
      campaigns: {{}}
"#,
        url = sandbox.base_url(),
        token = credentials::FACEBOOK_ACCESS_TOKEN,
    ));
    #[allow(deprecated)] // cargo_bin: how common::Project finds the binary too
    let binary = assert_cmd::cargo::cargo_bin("sluice");
    let mut child = std::process::Command::new(binary)
        .current_dir(project.path())
        .env_remove("RUST_LOG")
        .args(["run"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The run's own entry is written after the signal handler is installed.
    let started = std::time::Instant::now();
    while !entry(&project, 1).exists() {
        assert!(started.elapsed().as_secs() < 30, "the run never started");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let code = tokio::task::spawn_blocking(move || child.wait().unwrap().code())
        .await
        .unwrap();
    assert_eq!(code, Some(130));
    let out = project.cmd().args(["audit", "show"]).output().unwrap();
    assert_exit(&out, 0);
    let entries: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["run", "cancel"], "{entries:#?}");
    assert_eq!(
        entries[1]["details"]["run_id"],
        entries[0]["details"]["run_id"]
    );
    assert_eq!(entries[1]["details"]["by"], "signal");
    sandbox.shutdown().await;
}
