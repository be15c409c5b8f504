//! The lake on S3 for real: an S3 API server on loopback (`moto[server]`, from the
//! pinned test venv), the pipeline's lake at `s3://…`, and conditional writes of state
//! (create-only puts) with exactly one winner when writers race.

mod common;

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A moto S3 server on a free loopback port, killed on drop.
struct S3Server {
    child: Child,
    endpoint: String,
}

impl S3Server {
    fn start() -> S3Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(python())
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto.server from the test venv (moto[server] in scripts/requirements-test.txt)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto.server did not listen on {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// What object_store reads to reach this server.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    fn create_bucket(&self, bucket: &str) {
        let script = format!(
            "import boto3\nboto3.client('s3', endpoint_url='{}', region_name='us-east-1', \
             aws_access_key_id='testing', aws_secret_access_key='testing').create_bucket(Bucket='{bucket}')",
            self.endpoint
        );
        let out = Command::new(python())
            .args(["-c", &script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Keys under `prefix` in `bucket`, as the S3 API lists them.
    fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let script = format!(
            "import boto3\nc = boto3.client('s3', endpoint_url='{}', region_name='us-east-1', \
             aws_access_key_id='testing', aws_secret_access_key='testing')\n\
             for page in c.get_paginator('list_objects_v2').paginate(Bucket='{bucket}', Prefix='{prefix}'):\n    \
             for o in page.get('Contents', []): print(o['Key'])",
            self.endpoint
        );
        let out = Command::new(python())
            .args(["-c", &script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pipeline() -> String {
    r#"name: shop
lake: s3://lake/prod
sources:
  shop:
    type: files
    streams:
      orders:
        path: data/orders/*.ndjson
        columns: { order_id: bigint, amount: "numeric(12,2)", order_date: date }
        partition_column: order_date
"#
    .to_string()
}

#[test]
fn a_pipeline_with_its_lake_on_s3_loads_exactly_its_rows_and_reruns_idempotently() {
    let s3 = S3Server::start();
    s3.create_bucket("lake");
    let project = Project::new(&pipeline());
    project.write("data/orders/a.ndjson", orders_ndjson(1, 250));
    project.write(
        "models/d2a/orders_daily.sql",
        "SELECT order_date, count(*) AS orders, sum(amount) AS amount FROM d1.shop_orders GROUP BY order_date\n",
    );
    let run = |args: &[&str]| {
        let mut cmd = project.cmd();
        cmd.envs(s3.env()).arg("run").args(args);
        cmd.output().unwrap()
    };
    let first = run(&[]);
    assert_exit(&first, 0);

    // Every part of the lake is in the bucket: raw pages, D1, the model, state.
    let keys = s3.keys("lake", "prod/");
    for prefix in [
        "prod/raw/shop/orders/",
        "prod/d1/shop_orders/dt=",
        "prod/d2a/orders_daily/",
        "prod/_state/shop/",
    ] {
        assert!(
            keys.iter().any(|k| k.starts_with(prefix)),
            "no object under {prefix}: {keys:?}"
        );
    }
    assert!(
        !project.path().join("lake").exists(),
        "nothing is written locally"
    );

    let count = |sql: &str| -> String {
        let out = project
            .cmd()
            .envs(s3.env())
            .args(["query", sql, "--format", "csv"])
            .output()
            .unwrap();
        assert_exit(&out, 0);
        stdout(&out)
    };
    assert_eq!(
        count("select count(*) as n from d1.shop_orders"),
        "n\n250\n"
    );
    let db = project.sqlite();
    let warehouse: i64 = db
        .query_row("select sum(orders) from d2a__orders_daily", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(warehouse, 250);

    // New input, then a re-run with nothing new: exact, no doubles.
    project.write("data/orders/b.ndjson", orders_ndjson(251, 50));
    assert_exit(&run(&[]), 0);
    assert_exit(&run(&[]), 0);
    assert_eq!(
        count("select count(*) as n from d1.shop_orders"),
        "n\n300\n"
    );
    assert_eq!(
        count("select count(distinct order_id) as n from d1.shop_orders"),
        "n\n300\n"
    );
    let rows: i64 = db
        .query_row("select count(*) from d1__shop_orders", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 300);
}

#[test]
fn racing_create_only_writes_of_one_state_object_on_s3_have_exactly_one_winner() {
    let s3 = S3Server::start();
    s3.create_bucket("state");
    for (key, value) in s3.env() {
        // SAFETY: set before any thread of this test reads the environment.
        unsafe { std::env::set_var(key, value) };
    }
    let lake = sluice_core::lake::Lake::open("s3://state/p", std::path::Path::new(".")).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let outcomes: Vec<bool> = runtime.block_on(async {
        let writers = (0..8).map(|n| {
            let lake = lake.clone();
            tokio::spawn(async move {
                lake.put_new(
                    "_state/shop/cursors/shop/orders/0000000002.json",
                    bytes::Bytes::from(format!("{{\"writer\": {n}}}")),
                )
                .await
                .unwrap()
            })
        });
        futures::future::join_all(writers)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect()
    });
    assert_eq!(
        outcomes.iter().filter(|won| **won).count(),
        1,
        "exactly one writer advances the cursor: {outcomes:?}"
    );
    // The object holds the winner's content, not a later writer's.
    let stored = runtime
        .block_on(lake.get("_state/shop/cursors/shop/orders/0000000002.json"))
        .unwrap()
        .unwrap();
    let winner = outcomes.iter().position(|won| *won).unwrap();
    assert_eq!(stored, format!("{{\"writer\": {winner}}}"));
}

#[test]
fn an_encrypted_lake_on_s3_loads_verifies_and_keeps_one_winner_of_racing_creates() {
    let s3 = S3Server::start();
    s3.create_bucket("sealed");
    let key = "7a".repeat(32);
    let project = Project::new(&pipeline().replace(
        "lake: s3://lake/prod\n",
        "lake: s3://sealed/prod\nlake_encryption: { master_key: \"${LAKE_KEY}\" }\n",
    ));
    project.write("data/orders/a.ndjson", orders_ndjson(1, 250));
    let sluice = |args: &[&str]| {
        let mut cmd = project.cmd();
        cmd.envs(s3.env()).env("LAKE_KEY", &key).args(args);
        cmd.output().unwrap()
    };
    assert_exit(&sluice(&["run"]), 0);
    let out = sluice(&[
        "query",
        "select count(*) as n from d1.shop_orders",
        "--format",
        "csv",
    ]);
    assert_exit(&out, 0);
    assert_eq!(stdout(&out), "n\n250\n");
    let keys = s3.keys("sealed", "prod/");
    assert!(
        keys.iter().any(|k| k == "prod/_encryption.json"),
        "{keys:?}"
    );
    assert!(
        keys.iter()
            .any(|k| k.starts_with("prod/d1/") && k.ends_with(".dek")),
        "{keys:?}"
    );
    let out = sluice(&["lake", "verify"]);
    assert_exit(&out, 0);

    // Racing create-only writes: each writer wraps its own data key, and the one
    // whose object won is the one whose key opens it.
    for (name, value) in s3.env() {
        // SAFETY: set before any thread of this test reads the environment.
        unsafe { std::env::set_var(name, value) };
    }
    let master = sluice_core::lake::master_key_from_text(&key).unwrap();
    let lake = sluice_core::lake::Lake::open_with(
        "s3://sealed/prod",
        std::path::Path::new("."),
        Some(master),
    )
    .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let path = "_state/shop/cursors/shop/orders/0000000009.json";
    let outcomes: Vec<bool> = runtime.block_on(async {
        let writers = (0..8).map(|n| {
            let lake = lake.clone();
            tokio::spawn(async move {
                lake.put_new(path, bytes::Bytes::from(format!("{{\"writer\": {n}}}")))
                    .await
                    .unwrap()
            })
        });
        futures::future::join_all(writers)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect()
    });
    assert_eq!(
        outcomes.iter().filter(|won| **won).count(),
        1,
        "{outcomes:?}"
    );
    let winner = outcomes.iter().position(|won| *won).unwrap();
    let stored = runtime.block_on(lake.get(path)).unwrap().unwrap();
    assert_eq!(stored, format!("{{\"writer\": {winner}}}"));
    let report = runtime.block_on(lake.verify()).unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
}
