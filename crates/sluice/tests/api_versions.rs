//! API version sunsets through the CLI: a sunset `api_version` is a config error
//! naming the key; `validate --connections` reports the deprecation headers the
//! (sandbox) API sends on its answers.

mod common;

use chrono::{Duration, Utc};
use common::*;
use sluice_sandbox::{credentials, Faults, SandboxOptions};

fn pipeline(url: &str, facebook_version: &str) -> String {
    format!(
        r#"name: versions
lake: ./lake
sources:
  facebook:
    type: facebook_ads
    base_url: {url}
    access_token: {token}
    api_version: {facebook_version}
    accounts: all
    streams:
      campaigns: {{}}
  google:
    type: google_ads
    base_url: {url}
    token_url: {url}/token
    developer_token: {dev}
    oauth: {{ client_id: "{cid}", client_secret: "{secret}", refresh_token: "{refresh}" }}
    login_customer_id: "{manager}"
    streams:
      customers: builtin
"#,
        token = credentials::FACEBOOK_ACCESS_TOKEN,
        dev = credentials::GOOGLE_DEVELOPER_TOKEN,
        cid = credentials::GOOGLE_CLIENT_ID,
        secret = credentials::GOOGLE_CLIENT_SECRET,
        refresh = credentials::GOOGLE_REFRESH_TOKEN,
        manager = credentials::GOOGLE_MANAGER_CUSTOMER_ID,
    )
}

#[test]
fn a_sunset_version_is_a_config_error_naming_the_key() {
    // v19.0 of the Marketing API expired on 2025-02-04.
    let project = Project::new(&pipeline("http://127.0.0.1:9", "v19.0"));
    let out = project.cmd().arg("validate").output().unwrap();
    assert_exit(&out, 3);
    let text = stdout(&out) + &stderr(&out);
    assert!(
        text.contains("sources.facebook.api_version") && text.contains("sunset on 2025-02-04"),
        "{text}"
    );
}

#[test]
fn validate_connections_reports_the_apis_deprecation_headers() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let today = Utc::now().date_naive();
    let sunset = today + Duration::days(60);
    let mut options = SandboxOptions::new(7, 1, today);
    options.faults = Faults {
        version_sunset: Some(sunset),
        ..Faults::default()
    };
    let sandbox = runtime.block_on(sluice_sandbox::start(options, 0)).unwrap();
    let project = Project::new(&pipeline(&sandbox.base_url(), "v26.0"));
    let quiet = project.cmd().arg("validate").output().unwrap();
    let out = project
        .cmd()
        .args(["validate", "--connections"])
        .output()
        .unwrap();
    // A run says it too, in its summary and in the record `sluice runs` reads.
    let ran = project.run(&[]);
    let runs = project.cmd().args(["runs", "--json"]).output().unwrap();
    runtime.block_on(sandbox.shutdown());
    assert_exit(&ran, 0);
    let summary = stdout(&ran);
    assert!(
        summary
            .lines()
            .any(|l| l.starts_with("  ! facebook:") && l.contains(&format!("{sunset}"))),
        "the run summary shows the notice:\n{summary}"
    );
    let stored = stdout(&runs);
    assert!(
        stored.contains("\"notices\"") && stored.contains(&format!("stops answering on {sunset}")),
        "the stored run record keeps the notice:\n{stored}"
    );
    assert_exit(&quiet, 0);
    assert!(
        !stdout(&quiet).contains("Sunset"),
        "without --connections nothing is asked of the API:\n{}",
        stdout(&quiet)
    );
    assert_exit(&out, 0);
    let text = stdout(&out);
    for source in ["facebook", "google"] {
        assert!(
            text.lines()
                .any(|l| l.contains(&format!("! source {source}:"))
                    && l.contains(&format!("stops answering on {sunset}"))
                    && l.contains(&format!("deprecated since {today}"))),
            "{source}'s notice is reported:\n{text}"
        );
    }
}
