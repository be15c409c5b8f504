//! Sharded runs (issue #20): `sluice run --shard K/N` workers against the sandbox,
//! then `sluice run --finalize`; the lease that keeps two processes off one shard;
//! a killed worker's shard re-run.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Output, Stdio};

use chrono::{Duration, Utc};
use common::*;
use sluice_sandbox::SandboxOptions;

fn sandbox() -> TestSandbox {
    TestSandbox::start(SandboxOptions::new(7, 1, Utc::now().date_naive()))
}

fn spawn_run(project: &Project, args: &[&str]) -> Child {
    Command::new(assert_cmd::cargo::cargo_bin("sluice"))
        .current_dir(project.path())
        .env_remove("RUST_LOG")
        .env("SLUICE_LOG", "info")
        .arg("run")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice")
}

/// Every row of every table in the warehouse, without sluice's per-run columns,
/// sorted: two warehouses loaded from the same data compare equal.
fn warehouse_rows(project: &Project) -> BTreeMap<String, Vec<String>> {
    let db = project.sqlite();
    let tables: Vec<String> = {
        let mut stmt = db
            .prepare("select name from sqlite_master where type = 'table' and name like 'd%' order by name")
            .unwrap();
        let names = stmt.query_map([], |r| r.get(0)).unwrap();
        names.map(Result::unwrap).collect()
    };
    let mut out = BTreeMap::new();
    for table in tables {
        let mut stmt = db.prepare(&format!("select * from \"{table}\"")).unwrap();
        let columns: Vec<String> = stmt.column_names().iter().map(|c| c.to_string()).collect();
        let keep: Vec<usize> = (0..columns.len())
            .filter(|&i| !columns[i].starts_with("_sluice_"))
            .collect();
        let mut rows: Vec<String> = stmt
            .query_map([], |r| {
                let values: Vec<String> = keep
                    .iter()
                    .map(|&i| match r.get_ref(i).unwrap() {
                        rusqlite::types::ValueRef::Text(t) => {
                            per_run_text(&String::from_utf8_lossy(t))
                        }
                        // A float sum depends on the order rows were loaded in.
                        rusqlite::types::ValueRef::Real(f) => format!("{f:.9e}"),
                        other => format!("{other:?}"),
                    })
                    .collect();
                Ok(values.join("|"))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        rows.sort();
        out.insert(table, rows);
    }
    out
}

/// A text value with what differs between two loads of the same data blanked: an
/// encrypted PII value (a fresh nonce each time), a time written by the run itself.
fn per_run_text(text: &str) -> String {
    if text.starts_with("enc:") {
        return "<encrypted>".into();
    }
    match chrono::DateTime::parse_from_rfc3339(text) {
        Ok(t) if Utc::now().signed_duration_since(t) < Duration::hours(1) => "<run time>".into(),
        _ => text.to_string(),
    }
}

/// The `(source/stream, slice key)` of every slice the lake records as extracted.
fn landed_slices(project: &Project) -> Vec<(String, String)> {
    let raw = project.path().join("lake/raw");
    let mut out = Vec::new();
    for file in project.lake_files() {
        let Ok(relative) = file.strip_prefix(&raw) else {
            continue;
        };
        let parts: Vec<String> = relative
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        // Only finished manifests: a store writes a temporary file first.
        if parts.len() == 5 && parts[2] == "_slices" && parts[4].ends_with(".json") {
            let Ok(manifest) =
                serde_json::from_slice::<serde_json::Value>(&std::fs::read(&file).unwrap())
            else {
                panic!("{} is not a slice manifest", file.display());
            };
            // `deletes@<time>`: the time it was planned differs between runs.
            let key = manifest["key"].as_str().unwrap();
            out.push((
                format!("{}/{}", parts[0], parts[1]),
                key.split('@').next().unwrap().to_string(),
            ));
        }
    }
    out.sort();
    out
}

/// D2B impressions and clicks per (day, platform) equal the sandbox's truth.
fn assert_spend_equals_truth(project: &Project) {
    let today = Utc::now().date_naive();
    let truth = sluice_sandbox::truth(
        &SandboxOptions::new(7, 1, today),
        today - Duration::days(3),
        today,
    );
    let mut expected = BTreeMap::<(String, String), (i64, i64)>::new();
    for platform in ["facebook", "google"] {
        for day in truth[platform]["days"].as_array().unwrap() {
            let e = expected
                .entry((day["date"].as_str().unwrap().into(), platform.into()))
                .or_default();
            e.0 += day["impressions"].as_i64().unwrap();
            e.1 += day["clicks"].as_i64().unwrap();
        }
    }
    let db = project.sqlite();
    let mut stmt = db
        .prepare("select cast(date as text), platform, impressions, clicks from d2b__channel_spend_daily")
        .unwrap();
    let loaded: BTreeMap<(String, String), (i64, i64)> = stmt
        .query_map([], |r| Ok(((r.get(0)?, r.get(1)?), (r.get(2)?, r.get(3)?))))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(loaded, expected);
}

/// The two warehouses hold the same rows, table by table (the first difference shown).
fn assert_same_rows(a: &Project, b: &Project) {
    let (a, b) = (warehouse_rows(a), warehouse_rows(b));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (table, rows) in &a {
        let other = &b[table];
        let only_a: Vec<_> = rows.iter().filter(|r| !other.contains(r)).take(2).collect();
        let only_b: Vec<_> = other.iter().filter(|r| !rows.contains(r)).take(2).collect();
        assert!(
            rows.len() == other.len() && only_a.is_empty(),
            "{table}: {} vs {} rows; only in the first: {only_a:?}; only in the second: {only_b:?}",
            rows.len(),
            other.len()
        );
    }
}

fn finish(child: Child) -> Output {
    child.wait_with_output().expect("wait for sluice")
}

#[test]
fn three_concurrent_shards_then_finalize_load_exactly_the_truth_once() {
    let sandbox = sandbox();
    let sharded = example_project(&sandbox.url());
    let workers: Vec<Child> = (0..3)
        .map(|k| spawn_run(&sharded, &["--shard", &format!("{k}/3"), "--round", "r1"]))
        .collect();
    let outputs: Vec<Output> = workers.into_iter().map(finish).collect();
    for out in &outputs {
        assert_exit(out, 0);
        assert!(
            stdout(out).contains("request budget divided by 3"),
            "{}",
            stdout(out)
        );
    }
    // Shards run no models.
    assert!(!warehouse_rows(&sharded).keys().any(|t| t.starts_with("d2")));

    let slices = landed_slices(&sharded);
    let distinct: BTreeSet<_> = slices.iter().collect();
    assert_eq!(distinct.len(), slices.len(), "a slice was landed twice");
    // Every shard had a share of the work.
    for k in 0..3 {
        let completion = sharded
            .path()
            .join(format!("lake/_state/marketing/shards/r1/all/{k}-of-3.json"));
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&completion).unwrap()).unwrap();
        let total: u64 = record["slices"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert!(total > 0, "shard {k} ran no slice: {record}");
    }

    let out = sharded.run(&["--finalize", "--round", "r1"]);
    assert_exit(&out, 0);
    assert_spend_equals_truth(&sharded);

    // The same example run whole, against the same sandbox, loads the same rows.
    let whole = example_project(&sandbox.url());
    assert_exit(&whole.run(&[]), 0);
    assert_same_rows(&sharded, &whole);
    // Together the shards extracted exactly the slices of the whole run.
    let sharded_keys: BTreeSet<_> = landed_slices(&sharded).into_iter().collect();
    let whole_keys: BTreeSet<_> = landed_slices(&whole).into_iter().collect();
    assert_eq!(
        sharded_keys.difference(&whole_keys).collect::<Vec<_>>(),
        whole_keys.difference(&sharded_keys).collect::<Vec<_>>()
    );
}

/// Listed ad accounts are looked up only by the shard that reads them: the shards
/// together make exactly the requests of one whole run (before, every shard looked up
/// every account to plan: 2 × 3 more requests here).
#[test]
fn shards_of_listed_accounts_make_exactly_the_requests_of_one_whole_run() {
    let sandbox = sandbox();
    let today = Utc::now().date_naive();
    // Account i of the sandbox is 284019000000001 + 17·i (docs/sandbox.md); scale 1 has 3.
    let accounts: Vec<String> = (0..3)
        .map(|i| format!("act_{}", 284019000000001u64 + 17 * i))
        .collect();
    let pipeline = format!(
        "name: listed\nlake: ./lake\nsources:\n  facebook:\n    type: facebook_ads\n    \
         base_url: {}\n    access_token: sandbox-facebook-token\n    api_version: v26.0\n    \
         accounts: [{}]\n    start_date: {}\n    \
         streams: {{ insights: {{ level: ad }}, campaigns: {{}}, ads: {{}} }}\n",
        sandbox.url(),
        accounts.join(", "),
        today - Duration::days(6)
    );
    let today = today.to_string();

    let whole = Project::new(&pipeline);
    let before = sandbox.request_count();
    assert_exit(&whole.run(&["--today", &today]), 0);
    let whole_requests = sandbox.request_count() - before;

    let sharded = Project::new(&pipeline);
    let before = sandbox.request_count();
    let workers: Vec<Child> = (0..3)
        .map(|k| {
            let shard = format!("{k}/3");
            spawn_run(
                &sharded,
                &["--today", &today, "--shard", &shard, "--round", "r"],
            )
        })
        .collect();
    for out in workers.into_iter().map(finish) {
        assert_exit(&out, 0);
    }
    assert_exit(
        &sharded.run(&["--today", &today, "--finalize", "--round", "r"]),
        0,
    );
    let sharded_requests = sandbox.request_count() - before;

    assert_same_rows(&whole, &sharded);
    assert!(whole_requests > 0);
    assert_eq!(
        sharded_requests, whole_requests,
        "3 shards made {sharded_requests} requests, one whole run {whole_requests}"
    );
}

#[test]
fn finalize_is_refused_until_every_shard_of_the_round_published() {
    let sandbox = sandbox();
    let project = example_project(&sandbox.url());
    let out = project.run(&["--finalize", "--round", "r2"]);
    assert_exit(&out, 10);
    assert!(
        stderr(&out).contains("no shard has published"),
        "{}",
        stderr(&out)
    );

    assert_exit(&project.run(&["--shard", "0/2", "--round", "r2"]), 0);
    let out = project.run(&["--finalize", "--round", "r2"]);
    assert_exit(&out, 10);
    assert!(stderr(&out).contains("1/2 (all)"), "{}", stderr(&out));
    assert!(!warehouse_rows(&project).keys().any(|t| t.starts_with("d2")));

    // A shard already published in the round is not run again.
    let again = project.run(&["--shard", "0/2", "--round", "r2"]);
    assert_exit(&again, 0);
    assert!(
        stderr(&again).contains("already published"),
        "{}",
        stderr(&again)
    );

    assert_exit(&project.run(&["--shard", "1/2", "--round", "r2"]), 0);
    assert_exit(&project.run(&["--finalize", "--round", "r2"]), 0);
    assert_spend_equals_truth(&project);
}

#[test]
fn of_two_processes_started_on_one_shard_exactly_one_publishes() {
    let sandbox = sandbox();
    let project = example_project(&sandbox.url());
    let a = spawn_run(&project, &["--shard", "0/1", "--round", "r3"]);
    let b = spawn_run(&project, &["--shard", "0/1", "--round", "r3"]);
    let outputs = [finish(a), finish(b)];
    let published: Vec<&Output> = outputs
        .iter()
        .filter(|o| o.status.code() == Some(0) && stdout(o).contains("succeeded"))
        .collect();
    assert_eq!(published.len(), 1, "{outputs:?}");
    let other = outputs
        .iter()
        .find(|o| !std::ptr::eq(*o, published[0]))
        .unwrap();
    // Refused at the lease (exit 10), or, had the first one already finished, told
    // the shard is published: either way before any extraction.
    let refused = other.status.code() == Some(11) && stderr(other).contains("is held by run");
    let skipped = other.status.code() == Some(0) && stderr(other).contains("already published");
    assert!(refused || skipped, "{}\n{}", stdout(other), stderr(other));
    assert!(stdout(other).is_empty(), "{}", stdout(other));
    let slices = landed_slices(&project);
    let distinct: BTreeSet<_> = slices.iter().collect();
    assert_eq!(distinct.len(), slices.len(), "a slice was landed twice");
}

#[test]
fn a_killed_worker_shard_is_taken_over_after_its_lease_and_the_round_converges() {
    let sandbox = sandbox();
    let project = example_project(&sandbox.url());
    let mut victim = spawn_run(
        &project,
        &["--shard", "1/3", "--round", "r4", "--lease", "2"],
    );
    // Kill it once it has landed pages (mid-extraction), with no chance to clean up.
    let started = std::time::Instant::now();
    while landed_slices(&project).is_empty() && started.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    victim.kill().unwrap();
    victim.wait().unwrap();

    // Its lease is still fresh: a retry is refused until it expires.
    let early = project.run(&["--shard", "1/3", "--round", "r4", "--lease", "600"]);
    assert_exit(&early, 11);
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_exit(
        &project.run(&["--shard", "1/3", "--round", "r4", "--lease", "2"]),
        0,
    );
    for k in [0, 2] {
        let shard = format!("{k}/3");
        assert_exit(&project.run(&["--shard", &shard, "--round", "r4"]), 0);
    }
    assert_exit(&project.run(&["--finalize", "--round", "r4"]), 0);
    assert_spend_equals_truth(&project);

    let whole = example_project(&sandbox.url());
    assert_exit(&whole.run(&[]), 0);
    assert_same_rows(&project, &whole);
}

#[test]
fn a_finalize_of_some_models_waits_only_for_the_shards_of_their_sources() {
    let sandbox = sandbox();
    let project = example_project(&sandbox.url());
    // As the Airflow export shards them: each source its own task, `--select <source>`.
    for k in 0..2 {
        let shard = format!("{k}/2");
        let out = project.run(&["--select", "facebook", "--shard", &shard, "--round", "r5"]);
        assert_exit(&out, 0);
    }
    // channel_spend_daily also reads google: refused until google's shards published.
    let out = project.run(&[
        "--finalize",
        "--select",
        "channel_spend_daily",
        "--round",
        "r5",
    ]);
    assert_exit(&out, 10);
    assert!(stderr(&out).contains("(google)"), "{}", stderr(&out));
    for k in 0..2 {
        let shard = format!("{k}/2");
        let out = project.run(&["--select", "google", "--shard", &shard, "--round", "r5"]);
        assert_exit(&out, 0);
    }
    // The app and crm sources were not sharded in this round: not waited for.
    let out = project.run(&[
        "--finalize",
        "--select",
        "+channel_spend_daily",
        "--round",
        "r5",
    ]);
    assert_exit(&out, 0);
    assert_spend_equals_truth(&project);
}

/// Files under `dir`, at any depth (0 when it does not exist).
fn walkdir_count(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let path = e.path();
            if path.is_dir() {
                walkdir_count(&path)
            } else {
                1
            }
        })
        .sum()
}

/// The run id a finished run printed (`run <id>  succeeded  …`).
/// `sluice run ARGS`, held by the test hook once its lease is checked before its first
/// publish: returns when the process waits there, with the file whose removal lets it go.
fn run_held_before_publish(project: &Project, args: &[&str]) -> (Child, std::path::PathBuf) {
    let hold = project.path().join("hold-before-publish");
    let child = Command::new(assert_cmd::cargo::cargo_bin("sluice"))
        .current_dir(project.path())
        .env_remove("RUST_LOG")
        .env("SLUICE_LOG", "info")
        .env("SLUICE_TEST_HOLD_BEFORE_PUBLISH", &hold)
        .arg("run")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice");
    let started = std::time::Instant::now();
    while !hold.exists() && started.elapsed().as_secs() < 300 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        hold.exists(),
        "sluice run {args:?} never reached its publish"
    );
    (child, hold)
}

/// The checkpoints folder once no checkpoint has been added for 3 s (a held process's
/// streams have all reached the hook).
fn checkpoints_once_settled(project: &Project) -> std::path::PathBuf {
    let checkpoints = project.path().join("lake/_state/marketing/checkpoints");
    let count = || walkdir_count(&checkpoints);
    let started = std::time::Instant::now();
    let (mut last, mut stable_since) = (count(), std::time::Instant::now());
    while stable_since.elapsed().as_secs() < 3 && started.elapsed().as_secs() < 300 {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let now = count();
        if now != last {
            (last, stable_since) = (now, std::time::Instant::now());
        }
    }
    checkpoints
}

/// The slice key a checkpoint file (`file`, relative to `checkpoints`) holds.
fn checkpoint_slice_key(checkpoints: &std::path::Path, file: &str) -> String {
    let text = std::fs::read(checkpoints.join(file)).unwrap();
    let checkpoint: serde_json::Value = serde_json::from_slice(&text).unwrap();
    checkpoint["slice_key"].as_str().unwrap().to_string()
}

/// Every file under `dir`, relative to it.
fn files_under(dir: &std::path::Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                folders.push(path);
            } else {
                let relative = path.strip_prefix(dir).unwrap();
                found.insert(relative.to_string_lossy().into_owned());
            }
        }
    }
    found
}

/// A shard that publishes forgets only its own slices' checkpoints: a worker of the
/// same round killed before its publish resumes its finished slices on the retry.
#[test]
fn a_shards_publish_keeps_the_checkpoints_of_the_rounds_other_shards() {
    let sandbox = sandbox();
    let project = example_project(&sandbox.url());
    let (mut held, _hold) = run_held_before_publish(&project, &["--shard", "1/2", "--round", "r8"]);
    let checkpoints = checkpoints_once_settled(&project);
    let held_checkpoints = files_under(&checkpoints);
    // Slices planned anew each run (`deletes@<time>`) are read again, not resumed.
    let resumable: BTreeSet<String> = held_checkpoints
        .iter()
        .map(|file| checkpoint_slice_key(&checkpoints, file))
        .filter(|key| !key.contains('@'))
        .collect();
    assert!(!resumable.is_empty());

    assert_exit(&project.run(&["--shard", "0/2", "--round", "r8"]), 0);
    let after = files_under(&checkpoints);
    let lost: Vec<_> = held_checkpoints.difference(&after).collect();
    assert!(
        lost.is_empty(),
        "shard 0's publish deleted shard 1's checkpoints {lost:?}"
    );

    // Shard 1 dies before its publish; its retry reuses every slice it had finished.
    held.kill().unwrap();
    held.wait().unwrap();
    let retry = Command::new(assert_cmd::cargo::cargo_bin("sluice"))
        .current_dir(project.path())
        .env_remove("RUST_LOG")
        .env("SLUICE_LOG", "info")
        .args(["run", "--shard", "1/2", "--round", "r8", "--take-over"])
        .output()
        .unwrap();
    assert_exit(&retry, 0);
    let resumed: BTreeSet<String> = stderr(&retry)
        .lines()
        .filter(|l| l.contains("resumed slice from an earlier run's checkpoint"))
        .filter_map(|l| l.split(" slice=").nth(1))
        .map(String::from)
        .collect();
    assert_eq!(resumed, resumable, "{}", stderr(&retry));
    // What the shards published has no checkpoint left; a slice planned anew by the
    // retry (`deletes@<time>`) leaves the killed attempt's until a whole run's publish.
    let left: Vec<String> = files_under(&checkpoints)
        .iter()
        .map(|file| checkpoint_slice_key(&checkpoints, file))
        .collect();
    assert!(left.iter().all(|key| key.contains('@')), "{left:?}");
    assert_exit(&project.run(&["--finalize", "--round", "r8"]), 0);
    assert_spend_equals_truth(&project);
}

fn printed_run_id(out: &Output) -> String {
    stdout(out)
        .lines()
        .find_map(|l| l.strip_prefix("run "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no run line in {}", stdout(out)))
        .to_string()
}

/// Process A passes its lease check, then is held (test hook) before it publishes;
/// process B takes the shard over and publishes; A, released, must be refused by the
/// destination's fence inside its own publish transaction. `published_runs` lists the
/// run ids in the destination's load ledger.
fn a_paused_shard_is_refused_by_the_destination(
    project: &Project,
    published_runs: &dyn Fn() -> Vec<String>,
) {
    let (a, hold) = run_held_before_publish(
        project,
        &["--shard", "0/1", "--round", "r7", "--lease", "600"],
    );
    // B would reuse A's finished slices (their checkpoints name A's staged files) and
    // move those files into d1/, so A's load would fail on missing files before its
    // transaction. Without A's checkpoints (as if not yet written), B extracts alone
    // and A's files stay: A reaches its publish, and only the fence can stop it.
    // A's other streams are still reading, and each finished slice writes a checkpoint:
    // wait until every stream of A waits at the hook (no new checkpoint for 3 s) first.
    let checkpoints = checkpoints_once_settled(project);
    std::fs::remove_dir_all(&checkpoints).unwrap();
    // A is alive and beating: B needs --take-over.
    let held = project.run(&["--shard", "0/1", "--round", "r7"]);
    assert_exit(&held, 11);
    let b = project.run(&["--shard", "0/1", "--round", "r7", "--take-over"]);
    assert_exit(&b, 0);
    let b_run = printed_run_id(&b);
    std::fs::remove_file(&hold).unwrap();
    let a = finish(a);
    assert_exit(&a, 11);
    // Refused in the publish transaction (its lease check had passed before B took over).
    assert!(
        stderr(&a).contains("fencing token 2 has published, this process holds 1"),
        "{}",
        stderr(&a)
    );
    let runs: BTreeSet<String> = published_runs().into_iter().collect();
    assert_eq!(runs, BTreeSet::from([b_run]), "only B published");

    assert_exit(&project.run(&["--finalize", "--round", "r7"]), 0);
}

#[test]
fn a_shard_paused_before_its_publish_is_fenced_by_sqlite_and_the_warehouse_equals_the_truth() {
    let sandbox = sandbox();
    let project = example_project(&sandbox.url());
    a_paused_shard_is_refused_by_the_destination(&project, &|| {
        common::sqlite_text_rows(
            &project.sqlite(),
            "select distinct run_id from _sluice_loads where table_name like 'd1.%'",
        )
    });
    assert_spend_equals_truth(&project);
    let whole = example_project(&sandbox.url());
    assert_exit(&whole.run(&[]), 0);
    assert_same_rows(&project, &whole);
}

#[test]
fn a_shard_paused_before_its_publish_is_fenced_by_postgres_and_the_warehouse_equals_the_truth() {
    let sandbox = sandbox();
    let project = example_project(&sandbox.url());
    let prefix = unique_prefix("shardops_fence");
    let pg = Pg::connect();
    pg.drop_schemas(&prefix);
    let mut pipeline = std::fs::read_to_string(project.path().join("pipeline.yaml")).unwrap();
    pipeline += &format!(
        "\ndestination: {{ type: postgres, url: \"{}\", schema_prefix: \"{prefix}\" }}\n",
        pg_url()
    );
    project.write("pipeline.yaml", pipeline);
    a_paused_shard_is_refused_by_the_destination(&project, &|| {
        pg.strings(&format!(
            "select distinct run_id from \"{prefix}_sluice\".loads where table_name like 'd1.%'"
        ))
    });
    // D2B spend per day and platform equals the truth, as in PostgreSQL.
    let today = Utc::now().date_naive();
    let truth = sluice_sandbox::truth(
        &SandboxOptions::new(7, 1, today),
        today - Duration::days(3),
        today,
    );
    let mut expected = BTreeSet::new();
    for platform in ["facebook", "google"] {
        let mut per_day = BTreeMap::<String, (i64, i64)>::new();
        for day in truth[platform]["days"].as_array().unwrap() {
            let e = per_day
                .entry(day["date"].as_str().unwrap().to_string())
                .or_default();
            e.0 += day["impressions"].as_i64().unwrap();
            e.1 += day["clicks"].as_i64().unwrap();
        }
        for (day, (impressions, clicks)) in per_day {
            expected.insert(format!("{day}|{platform}|{impressions}|{clicks}"));
        }
    }
    let loaded: BTreeSet<String> = pg
        .strings(&format!(
            "select date::text || '|' || platform || '|' || impressions::text || '|' || clicks::text \
             from \"{prefix}d2b\".channel_spend_daily"
        ))
        .into_iter()
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(loaded, expected);
    // Exactly one row per ad and day in D1: nothing published twice.
    let duplicates = pg.scalar_i64(&format!(
        "select count(*) from (select 1 from \"{prefix}d1\".facebook_insights \
         group by ad_id, date_start having count(*) > 1) d"
    ));
    assert_eq!(duplicates, 0);
    pg.drop_schemas(&prefix);
}
