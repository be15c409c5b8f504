//! A cancelled run does not sit out a server's wait (issue 15, defect 6): a
//! `Retry-After: 60` answer is being waited out when SIGINT arrives, and the run
//! stops within seconds, recorded as cancelled (exit 130).

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::*;

/// A loopback API that answers every request `429` with `Retry-After: 60`, and
/// says when the first request came.
fn throttling_server() -> (String, std::sync::mpsc::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (asked, first_request) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buffer = [0u8; 8192];
            let _ = stream.read(&mut buffer);
            let _ = stream.write_all(
                b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 60\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
            );
            let _ = asked.send(());
        }
    });
    (url, first_request)
}

#[test]
fn a_cancelled_run_stops_during_a_servers_retry_after() {
    let (url, first_request) = throttling_server();
    let project = Project::new(&format!(
        r#"name: shop
lake: ./lake
sources:
  app:
    type: clevertap
    base_url: {url}
    account_id: {account}
    passcode: {passcode}
    start_date: "2024-07-01"
    streams:
      profiles: {{}}
"#,
        account = sluice_sandbox::credentials::CLEVERTAP_ACCOUNT_ID,
        passcode = sluice_sandbox::credentials::CLEVERTAP_PASSCODE,
    ));
    #[allow(deprecated)] // cargo_bin: how common::Project finds the binary too
    let binary = assert_cmd::cargo::cargo_bin("sluice");
    let mut child = std::process::Command::new(binary)
        .current_dir(project.path())
        .env_remove("RUST_LOG")
        .args(["run", "--today", "2024-07-03"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    first_request
        .recv_timeout(Duration::from_secs(60))
        .expect("the run never called the API");
    // The client is now waiting out the 60 s the server asked for.
    std::thread::sleep(Duration::from_millis(500));
    let signalled = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if signalled.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("the run was still waiting 20 s after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(130));
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "{:?}",
        signalled.elapsed()
    );
}

/// SIGINT stops a run whose load waits on a SQLite database another process holds
/// locked (up to the 30 s busy timeout) within seconds, and the destination keeps
/// only what was there before.
#[test]
fn a_signal_stops_a_run_stuck_on_a_locked_destination() {
    let project = Project::new(
        "name: shop\nlake: ./lake\nsources:\n  shop:\n    type: files\n    streams:\n      orders:\n        path: data/*.ndjson\n        columns: { order_id: bigint, amount: \"numeric(12,2)\", order_date: date }\n        primary_key: [order_id]\n",
    );
    project.write("data/a.ndjson", orders_ndjson(1, 10));
    assert_exit(&project.run(&[]), 0);
    project.write("data/b.ndjson", orders_ndjson(11, 10));

    // Another writer holds the warehouse.
    let holder = project.sqlite();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();

    let log = project.path().join("run.log");
    #[allow(deprecated)] // cargo_bin: how common::Project finds the binary too
    let binary = assert_cmd::cargo::cargo_bin("sluice");
    let mut child = std::process::Command::new(binary)
        .current_dir(project.path())
        .env_remove("RUST_LOG")
        .env("SLUICE_LOG", "info")
        .arg("run")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("extracted; loading")
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the run never reached its load:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = child.id().to_string();
    let interrupt = || {
        let status = std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap();
        assert!(status.success());
    };
    interrupt();
    let signalled = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if signalled.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!(
                "still running 10 s after SIGINT:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(130));
    assert!(
        signalled.elapsed() < Duration::from_secs(8),
        "{:?}",
        signalled.elapsed()
    );
    holder.execute_batch("ROLLBACK").unwrap();
    let rows: i64 = holder
        .query_row("select count(*) from d1__shop_orders", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 10, "only the first run's rows");
    // And a re-run converges.
    drop(holder);
    assert_exit(&project.run(&[]), 0);
    let rows: i64 = project
        .sqlite()
        .query_row("select count(*) from d1__shop_orders", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 20);
}
