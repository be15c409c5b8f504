//! `sluice docs build` and `sluice impact` on the example marketing project
//! (examples/marketing) after a real run against the sandbox over HTTP: the site is
//! opened in headless Chromium from file://, following the overview's links.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use chrono::Utc;
use common::*;
use serde_json::Value;
use sluice_sandbox::SandboxOptions;

/// The example project after a run of everything `d2b.channel_spend_daily` reads,
/// so its D1 tables, schema registry and run history exist.
fn example_project_after_a_run() -> Project {
    let sandbox = TestSandbox::start(SandboxOptions::new(7, 1, Utc::now().date_naive()));
    let project = example_project(&sandbox.url());
    let out = project.run(&["--select", "+channel_spend_daily"]);
    assert_exit(&out, 0);
    project
}

/// The `href`s of the `<a>` elements in `html`, in order.
fn hrefs(html: &str) -> Vec<String> {
    html.split("<a href=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(|h| h.replace("&amp;", "&"))
        .collect()
}

/// The `<tr>` of a model page's lineage table for `column`.
fn lineage_row(dom: &str, column: &str) -> String {
    dom.split(&format!("<tr data-column=\"{column}\">"))
        .nth(1)
        .and_then(|rest| rest.split("</tr>").next())
        .unwrap_or_else(|| panic!("no lineage row for {column}:\n{dom}"))
        .to_string()
}

#[test]
fn the_docs_site_opens_from_file_and_links_streams_models_tables_with_column_lineage() {
    let project = example_project_after_a_run();
    let site = project.path().join("site");
    let out = project
        .cmd()
        .args(["docs", "build", "--out"])
        .arg(&site)
        .output()
        .unwrap();
    assert_exit(&out, 0);

    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let url_of = |path: &Path| format!("file://{}", path.display());
    let index = site.join("index.html");
    let overview = render(&url_of(&index), &shots.join("docs-site.png"));
    assert!(
        overview.contains("<svg") && overview.contains("d2b.channel_spend_daily"),
        "the overview draws the plan:\n{overview}"
    );
    assert!(overview.contains("id=\"search\""), "a search box");
    assert!(
        overview.contains("<table id=\"runs\">"),
        "the run is listed:\n{overview}"
    );
    // The search box's script filters the list (`?q=` fills it on load).
    let searched = render(
        &format!("{}?q=channel%20SPEND", url_of(&index)),
        &shots.join("docs-search.png"),
    );
    let shown: Vec<&str> = searched
        .split("<li ")
        .skip(1)
        .filter(|li| !li.split('>').next().unwrap_or_default().contains("hidden"))
        .filter_map(|li| li.split("href=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(
        shown,
        [
            "models/d2b.channel_spend_daily.html",
            "tables/d2b.channel_spend_daily.html"
        ],
        "{searched}"
    );
    let links = hrefs(&overview);
    assert!(links.iter().any(|l| l == "runbook.md"), "{links:?}");
    let follow = |href: &str| -> String {
        assert!(
            links.iter().any(|l| l == href),
            "the overview links {href}: {links:?}"
        );
        let page = site.join(href);
        assert!(page.exists(), "{href} is a page of the site");
        let name = href.replace('/', "-").replace(".html", ".png");
        render(&url_of(&page), &shots.join(format!("docs-{name}")))
    };

    // A source stream: its type, look-back, columns with types, and its schema history.
    let stream = follow("streams/facebook.insights.html");
    assert!(stream.contains("facebook_ads"), "{stream}");
    assert!(
        stream.contains("<dt>Look-back days</dt><dd>28</dd>"),
        "{stream}"
    );
    assert!(stream.contains("<td>spend</td>"), "{stream}");
    assert!(
        stream.contains("<table id=\"schema-history\">"),
        "the registry's versions after the run:\n{stream}"
    );
    let profiles = follow("streams/app.profiles.html");
    assert!(
        profiles.contains("<td>email</td><td>text</td><td>yes</td><td class=\"pii\">hash</td>"),
        "the PII policy's action on a marked column:\n{profiles}"
    );

    // A model: description from its .yml, SQL, upstream, checks and lineage.
    let model = follow("models/d2b.channel_spend_daily.html");
    assert!(
        model.contains("Spend, CPC, CTR and CPM per platform per day, in USD."),
        "{model}"
    );
    assert!(model.contains("FROM d2a.ad_performance_daily"), "{model}");
    assert!(
        model.contains("d2b.channel_spend_daily:unique(date,platform)"),
        "{model}"
    );
    let results = model
        .split("<table id=\"check-results\">")
        .nth(1)
        .and_then(|rest| rest.split("</table>").next())
        .unwrap_or_else(|| panic!("the checks' recent results:\n{model}"));
    assert!(results.contains("<td>ok</td>"), "{results}");
    let spend = lineage_row(&model, "spend_usd");
    assert!(
        spend.contains("d2a.ad_performance_daily.spend_usd"),
        "derives from the D2A column:\n{spend}"
    );
    let sources: BTreeSet<&str> = spend
        .split("<td class=\"source-fields\">")
        .nth(1)
        .and_then(|rest| rest.split("</td>").next())
        .unwrap_or_default()
        .split(", ")
        .collect();
    for field in [
        "facebook.insights.spend",
        "google.ad_group_daily.cost_micros",
    ] {
        assert!(
            sources.contains(field),
            "spend_usd reaches {field}: {sources:?}"
        );
    }
    assert!(
        !sources.contains("facebook.insights.reach"),
        "reach is not summed into spend: {sources:?}"
    );
    // The model page links to its upstream's page, which is in the site too.
    let upstream = hrefs(&model);
    assert!(
        upstream
            .iter()
            .any(|h| h == "../models/d2a.ad_performance_daily.html"),
        "{upstream:?}"
    );

    // A destination table: who writes it, its write mode, its last load.
    let table = follow("tables/d2b.channel_spend_daily.html");
    assert!(table.contains("overwrite_partitions"), "{table}");
    assert!(
        table.contains("rows (run "),
        "the last load is shown:\n{table}"
    );
}

#[test]
fn impact_of_a_d1_column_lists_exactly_the_models_that_use_it() {
    let project = example_project_after_a_run();
    let impact = |target: &str| -> Value {
        let out = project
            .cmd()
            .args(["impact", target, "--format", "json"])
            .output()
            .unwrap();
        assert_exit(&out, 0);
        serde_json::from_str(&stdout(&out)).unwrap()
    };
    let list = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };

    let spend = impact("d1.facebook_insights.spend");
    assert_eq!(
        list(&spend["models"]),
        ["d2a.ad_performance_daily", "d2b.channel_spend_daily"],
        "{spend:#}"
    );
    assert!(
        list(&spend["columns"]).contains(&"d2b.channel_spend_daily.spend_usd".to_string()),
        "{spend:#}"
    );
    assert!(
        list(&spend["checks"])
            .contains(&"d2b.channel_spend_daily:unique(date,platform)".to_string()),
        "{spend:#}"
    );
    assert_eq!(
        list(&spend["tables"]),
        ["d2a.ad_performance_daily", "d2b.channel_spend_daily"]
    );

    // Reach is kept per ad in D2A and never summed into D2B.
    let reach = impact("d1.facebook_insights.reach");
    assert_eq!(
        list(&reach["models"]),
        ["d2a.ad_performance_daily"],
        "{reach:#}"
    );

    // A column no model reads reaches nothing.
    let unused = impact("d1.facebook_insights.date_stop");
    assert_eq!(list(&unused["models"]), Vec::<String>::new(), "{unused:#}");
    assert_eq!(list(&unused["tables"]), Vec::<String>::new(), "{unused:#}");

    // A column the table does not have is an error naming the ones it has.
    let out = project
        .cmd()
        .args(["impact", "d1.facebook_insights.frequency"])
        .output()
        .unwrap();
    assert_exit(&out, 3);
    assert!(
        stderr(&out).contains("d1.facebook_insights has no column `frequency`; it has: ")
            && stderr(&out).contains("spend"),
        "{}",
        stderr(&out)
    );

    // A table: everything downstream in the plan.
    let profiles = impact("d1.app_profiles");
    assert_eq!(
        list(&profiles["models"]),
        ["d2a.customer_profiles", "d2b.customer_address_exceptions"],
        "{profiles:#}"
    );

    // A name that is neither says what the tables are.
    let out = project
        .cmd()
        .args(["impact", "d1.nope.x"])
        .output()
        .unwrap();
    assert_exit(&out, 3);
    assert!(
        stderr(&out).contains("d1.facebook_insights"),
        "{}",
        stderr(&out)
    );
}

/// Where each `## N. Title` heading of `markdown` starts, by title.
fn sections(markdown: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in markdown.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            let title = heading.split_once(". ").map_or(heading, |(_, t)| t);
            out.push((title.to_string(), String::new()));
        } else if let Some((_, body)) = out.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    out
}

#[test]
fn the_runbook_has_the_wiki_sections_in_order_filled_from_config_and_run_history() {
    let project = example_project_after_a_run();
    let site = project.path().join("site");
    let out = project
        .cmd()
        .args(["docs", "build", "--out"])
        .arg(&site)
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let runbook = std::fs::read_to_string(site.join("runbook.md")).unwrap();
    // `sluice docs runbook` prints the same page.
    let printed = project.cmd().args(["docs", "runbook"]).output().unwrap();
    assert_exit(&printed, 0);
    assert_eq!(stdout(&printed), runbook);

    let sections = sections(&runbook);
    let titles: Vec<&str> = sections.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        titles,
        [
            "Introduction",
            "Architecture",
            "Sources",
            "Extraction",
            "Transformation",
            "Loading",
            "Orchestration",
            "Deployment",
            "Monitoring",
            "Error handling",
            "Security",
            "Performance",
            "Maintenance",
            "Troubleshooting",
            "Testing"
        ],
        "{runbook}"
    );
    let section = |title: &str| -> &str { &sections.iter().find(|(t, _)| t == title).unwrap().1 };
    let runs: Value = serde_json::from_str(&stdout(
        &project.cmd().args(["runs", "--json"]).output().unwrap(),
    ))
    .unwrap();
    let run_id = runs
        .as_array()
        .and_then(|r| r.first())
        .and_then(|r| r["run_id"].as_str())
        .unwrap_or_else(|| panic!("a run id: {runs}"))
        .to_string();

    // Real values from the config, the models and the run.
    let intro = section("Introduction");
    assert!(intro.contains("`facebook`: facebook_ads"), "{intro}");
    assert!(
        intro.contains(
            "`d2b.channel_spend_daily`: Spend, CPC, CTR and CPM per platform per day, in USD."
        ),
        "{intro}"
    );
    assert!(
        section("Architecture").contains(
            "d2a_ad_performance_daily[\"d2a.ad_performance_daily\"] --> d2b_channel_spend_daily"
        ),
        "the plan as a Mermaid graph:\n{}",
        section("Architecture")
    );
    let sources = section("Sources");
    assert!(
        sources.contains("| `facebook.insights` | `d1.facebook_insights` |"),
        "{sources}"
    );
    let extraction = section("Extraction");
    let insights = extraction
        .lines()
        .find(|l| l.starts_with("| `facebook.insights` |"))
        .unwrap_or_else(|| panic!("{extraction}"));
    assert!(
        insights.contains("| incremental by day window | ")
            && !insights.contains("none yet")
            && insights.contains(" | 28 | ")
            && insights.contains(" | overwrite_partitions | ")
            && insights.contains(" rows, "),
        "sync, stored cursor, look-back, write mode and the last extraction: {insights}"
    );
    assert!(
        section("Transformation")
            .contains("| `d2a.ad_performance_daily` | incremental by `date` |"),
        "{}",
        section("Transformation")
    );
    let loading = section("Loading");
    let spend_table = loading
        .lines()
        .find(|l| l.starts_with("| `d2b.channel_spend_daily` |"))
        .unwrap_or_else(|| panic!("{loading}"));
    assert!(
        spend_table.contains("overwrite_partitions") && spend_table.contains(&run_id),
        "write mode and last load: {spend_table}"
    );
    assert!(
        section("Orchestration").contains("`0 5 * * *` (UTC)"),
        "{}",
        section("Orchestration")
    );
    assert!(
        section("Deployment").contains("`FB_TOKEN`"),
        "{}",
        section("Deployment")
    );
    assert!(section("Monitoring").contains("`GET /docs/`"));
    assert!(
        section("Security").contains("| `d1.app_profiles.email` | the connector | hash |"),
        "the PII policy:\n{}",
        section("Security")
    );
    assert!(
        section("Performance").contains(&format!("Latest finished run `{run_id}`")),
        "{}",
        section("Performance")
    );
    let testing = section("Testing");
    let unique = testing
        .lines()
        .find(|l| l.contains("| `d2b.channel_spend_daily` | unique(date,platform) | error |"))
        .unwrap_or_else(|| panic!("{testing}"));
    assert!(
        unique.contains(&format!("ok ({run_id})")),
        "the latest result: {unique}"
    );
    // What only people know is marked where they must write it.
    for title in [
        "Introduction",
        "Sources",
        "Deployment",
        "Monitoring",
        "Security",
        "Troubleshooting",
        "Testing",
    ] {
        assert!(
            section(title).contains("> TODO(owner): "),
            "{title} marks its gap:\n{}",
            section(title)
        );
    }
    // Credentials are named, never written.
    assert!(!runbook.contains(sluice_sandbox::credentials::FACEBOOK_ACCESS_TOKEN));
}

/// The `--format openlineage` events, checked by the client's models; each output
/// column's inputs as `[input, type, subtype]`.
fn openlineage_column_lineage(project: &Project) -> Value {
    let out = project
        .cmd()
        .args(["docs", "lineage", "--format", "openlineage"])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let file = project.path().join("lineage-jobs.ndjson");
    std::fs::write(&file, stdout(&out)).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/lineage_job_events.py");
    let checked = std::process::Command::new(python())
        .arg(script)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "lineage_job_events.py failed\n--- stdout\n{}\n--- stderr\n{}",
        stdout(&checked),
        stderr(&checked)
    );
    serde_json::from_str(stdout(&checked).trim()).unwrap()
}

#[test]
fn lineage_exports_as_openlineage_column_facets_json_and_dot() {
    let project = example_project_after_a_run();
    let lineage = openlineage_column_lineage(&project);
    let inputs = |column: &str| -> BTreeSet<(String, String, String)> {
        lineage[column]
            .as_array()
            .unwrap_or_else(|| panic!("no lineage for {column}"))
            .iter()
            .map(|i| {
                (
                    i[0].as_str().unwrap().to_string(),
                    i[1].as_str().unwrap().to_string(),
                    i[2].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let t = |input: &str, kind: &str, subtype: &str| {
        (input.to_string(), kind.to_string(), subtype.to_string())
    };
    assert_eq!(
        inputs("d2b.channel_spend_daily.spend_usd"),
        BTreeSet::from([t(
            "d2a.ad_performance_daily.spend_usd",
            "DIRECT",
            "AGGREGATION"
        )])
    );
    // The currency and the date pick the rate; their values are not in the spend.
    let spend_usd = inputs("d2a.ad_performance_daily.spend_usd");
    for expected in [
        t("d1.facebook_insights.spend", "DIRECT", "TRANSFORMATION"),
        t("d1.google_ad_group_daily.cost", "DIRECT", "TRANSFORMATION"),
        t(
            "d1.facebook_insights.account_currency",
            "INDIRECT",
            "CONDITIONAL",
        ),
        t(
            "d1.google_ad_group_daily.customer_currency",
            "INDIRECT",
            "CONDITIONAL",
        ),
    ] {
        assert!(
            spend_usd.contains(&expected),
            "{expected:?} in {spend_usd:?}"
        );
    }
    assert!(
        inputs("d2a.ad_performance_daily.reach").contains(&t(
            "d1.facebook_insights.reach",
            "DIRECT",
            "IDENTITY"
        )),
        "{:?}",
        inputs("d2a.ad_performance_daily.reach")
    );
    // D1 columns come from the source's fields: Google's cost from cost_micros.
    assert_eq!(
        inputs("d1.google_ad_group_daily.cost"),
        BTreeSet::from([t("ad_group_daily.cost_micros", "DIRECT", "TRANSFORMATION")])
    );
    // The whole-table inputs: the join keys of the conversions.
    assert!(
        inputs("d2a.ad_performance_daily.*").contains(&t(
            "d1.facebook_insights_actions.action_type",
            "INDIRECT",
            "FILTER"
        )),
        "{:?}",
        inputs("d2a.ad_performance_daily.*")
    );
    // Following the value inputs from the D2B column reaches both platforms' spend fields.
    let mut reached = BTreeSet::new();
    let mut frontier = vec!["d2b.channel_spend_daily.spend_usd".to_string()];
    while let Some(column) = frontier.pop() {
        match lineage.get(&column) {
            Some(Value::Array(inputs)) => frontier.extend(
                inputs
                    .iter()
                    .filter(|i| i[1] == "DIRECT")
                    .map(|i| i[0].as_str().unwrap().to_string()),
            ),
            _ => {
                reached.insert(column);
            }
        }
    }
    assert_eq!(
        reached,
        BTreeSet::from([
            "insights.spend".to_string(),
            "ad_group_daily.cost_micros".to_string()
        ])
    );

    let json = project
        .cmd()
        .args(["docs", "lineage", "--format", "json"])
        .output()
        .unwrap();
    assert_exit(&json, 0);
    let json: Value = serde_json::from_str(&stdout(&json)).unwrap();
    let table = json["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "d2b.channel_spend_daily")
        .unwrap();
    assert_eq!(
        table["reads"],
        serde_json::json!(["d2a.ad_performance_daily"])
    );
    let ctr = table["columns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "ctr")
        .unwrap();
    assert_eq!(
        ctr["inputs"],
        serde_json::json!([
            {"column": "d2a.ad_performance_daily.clicks", "flow": "aggregation"},
            {"column": "d2a.ad_performance_daily.impressions", "flow": "aggregation"}
        ])
    );

    let dot = project
        .cmd()
        .args(["docs", "lineage", "--format", "dot"])
        .output()
        .unwrap();
    assert_exit(&dot, 0);
    let dot = stdout(&dot);
    assert!(dot.starts_with("digraph lineage {"), "{dot}");
    assert!(
        dot.contains("\"d1.facebook_insights.account_currency\" -> \"d2a.ad_performance_daily.spend_usd\" [label=\"condition\", style=dashed];"),
        "{dot}"
    );
}

#[test]
fn a_new_model_from_a_d2a_table_runs_with_its_upstream_without_an_edit() {
    let sandbox = TestSandbox::start(SandboxOptions::new(7, 1, Utc::now().date_naive()));
    let project = example_project(&sandbox.url());
    let out = project
        .cmd()
        .args([
            "new",
            "model",
            "d2b.x",
            "--from",
            "d2a.ad_performance_daily",
        ])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("models/d2b/x.sql"),
        "{}",
        stdout(&out)
    );
    // Before a first run Facebook's columns are only known from data: `*`.
    let sql = std::fs::read_to_string(project.path().join("models/d2b/x.sql")).unwrap();
    assert!(
        sql.starts_with("SELECT\n  *") && sql.ends_with("FROM d2a.ad_performance_daily\n"),
        "{sql}"
    );
    let yml = std::fs::read_to_string(project.path().join("models/d2b/x.yml")).unwrap();
    assert!(
        yml.contains("partition_by: date"),
        "incremental like its upstream:\n{yml}"
    );

    let out = project.run(&["--select", "+x"]);
    assert_exit(&out, 0);
    let db = project.sqlite();
    let count = |table: &str| -> i64 {
        db.query_row(&format!("select count(*) from {table}"), [], |r| r.get(0))
            .unwrap()
    };
    let rows = count("d2b__x");
    assert!(
        rows > 0 && rows == count("d2a__ad_performance_daily"),
        "{rows} rows"
    );

    // After the run the registry knows the columns: they are named and described.
    let out = project
        .cmd()
        .args([
            "new",
            "model",
            "d2b.y",
            "--from",
            "d2a.ad_performance_daily",
        ])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let sql = std::fs::read_to_string(project.path().join("models/d2b/y.sql")).unwrap();
    assert!(
        sql.starts_with("SELECT\n  date,\n  platform,\n") && sql.contains("  spend_usd,\n"),
        "{sql}"
    );
    let yml = std::fs::read_to_string(project.path().join("models/d2b/y.yml")).unwrap();
    assert!(
        yml.contains("  spend_usd: { description: \"Spend converted to USD with models/currency_rates.csv; never NULL (see the checks).\" }"),
        "upstream descriptions are copied:\n{yml}"
    );
    assert!(
        yml.contains("  platform: { description: \"\" }   # TODO(owner)"),
        "{yml}"
    );
    let out = project.run(&["--select", "y"]);
    assert_exit(&out, 0);
    assert_eq!(count("d2b__y"), rows);

    // Clear errors: the name exists, the table does not, the layer is wrong.
    let new_model = |args: &[&str]| {
        project
            .cmd()
            .args(["new", "model"])
            .args(args)
            .output()
            .unwrap()
    };
    let out = new_model(&["d2a.x", "--from", "d1.facebook_insights"]);
    assert_exit(&out, 3);
    assert!(
        stderr(&out).contains("a model named `x` exists already: d2b.x (models/d2b/x.sql)"),
        "{}",
        stderr(&out)
    );
    let out = new_model(&["d2b.z", "--from", "d2a.nope"]);
    assert_exit(&out, 3);
    assert!(
        stderr(&out).contains("`d2a.nope` is not a table of this pipeline; the tables are: ")
            && stderr(&out).contains("d1.facebook_insights"),
        "{}",
        stderr(&out)
    );
    let out = new_model(&["d3.z"]);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("unknown layer `d3`"),
        "{}",
        stderr(&out)
    );
    let out = new_model(&["d2a.z", "--from", "d2b.channel_spend_daily"]);
    assert_exit(&out, 3);
    assert!(
        stderr(&out).contains("data flows d1 → d2a → d2b"),
        "{}",
        stderr(&out)
    );
    assert!(!project.path().join("models/d2a/z.sql").exists());
}

/// A files project with one model, `docs: { require_descriptions: true }`.
fn described_project(sql: &str, yml: &str) -> Project {
    let project = Project::new(
        r#"name: shop
lake: ./lake
# Comments stay when sources are added.
sources:
  shop:
    type: files
    streams:
      orders:
        path: data/orders/*.ndjson
        columns: { order_id: bigint, amount: "numeric(12,2)", order_date: date }
        infer_columns: false
        primary_key: [order_id]
docs: { require_descriptions: true }
"#,
    );
    project.write("data/orders/a.ndjson", orders_ndjson(1, 5));
    project.write("models/d2a/orders.sql", sql);
    project.write("models/d2a/orders.yml", yml);
    project
}

#[test]
fn require_descriptions_fails_validate_at_the_undescribed_model_and_column() {
    let sql = "SELECT\n  order_id,\n  amount * 2 AS doubled,\n  order_date -- the day it was placed\nFROM d1.shop_orders\n";
    let project = described_project(sql, "columns:\n  order_id: { description: The order. }\n");
    let out = project.cmd().arg("validate").output().unwrap();
    assert_exit(&out, 3);
    let err = stderr(&out);
    assert!(
        err.contains("models/d2a/orders.yml:1:1: model d2a.orders has no description"),
        "{err}"
    );
    assert!(
        err.contains(
            "models/d2a/orders.sql:3:17: column `doubled` of model d2a.orders has no description"
        ),
        "the column's line:\n{err}"
    );
    assert!(
        !err.contains("`order_date`"),
        "a trailing SQL comment describes it:\n{err}"
    );
    assert!(!err.contains("`order_id`"), "{err}");
    assert!(err.contains("2 description(s) missing"), "{err}");

    // Described by a leading SQL comment and a trailing one: valid.
    let sql = format!(
        "-- Orders, amounts doubled.\n{}",
        sql.replace("doubled,", "doubled, -- twice the amount")
    );
    let project = described_project(&sql, "columns:\n  order_id: { description: The order. }\n");
    let out = project.cmd().arg("validate").output().unwrap();
    assert_exit(&out, 0);
    // The descriptions reach the docs.
    let out = project
        .cmd()
        .args(["docs", "lineage", "--format", "json"])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let json: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let columns = json["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "d2a.orders")
        .unwrap()["columns"]
        .clone();
    let description = |name: &str| {
        columns
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()["description"]
            .clone()
    };
    assert_eq!(description("doubled"), "twice the amount");
    assert_eq!(description("order_date"), "the day it was placed");
    assert_eq!(description("order_id"), "The order.");
}

#[test]
fn a_new_source_is_appended_keeping_comments_and_validated_and_bad_ones_are_refused() {
    let project = described_project("-- x\nSELECT order_id -- id\nFROM d1.shop_orders\n", "");
    let out = project
        .cmd()
        .args(["new", "source", "facebook_ads", "fb_brand"])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("FB_BRAND_ACCESS_TOKEN"),
        "{}",
        stdout(&out)
    );
    let text = std::fs::read_to_string(project.path().join("pipeline.yaml")).unwrap();
    assert!(
        text.contains("# Comments stay when sources are added."),
        "{text}"
    );
    assert!(
        text.contains(
            "  fb_brand:\n    type: facebook_ads\n    access_token: ${FB_BRAND_ACCESS_TOKEN}\n"
        ),
        "{text}"
    );
    assert!(
        text.ends_with("docs: { require_descriptions: true }\n"),
        "{text}"
    );
    let out = project
        .cmd()
        .env("FB_BRAND_ACCESS_TOKEN", "t")
        .args(["ls", "streams"])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("fb_brand.insights"),
        "{}",
        stdout(&out)
    );

    let new_source = |kind: &str, name: &str| {
        project
            .cmd()
            .args(["new", "source", kind, name])
            .output()
            .unwrap()
    };
    let out = new_source("files", "shop");
    assert_exit(&out, 3);
    assert!(
        stderr(&out).contains("a source named `shop` exists already (type files)"),
        "{}",
        stderr(&out)
    );
    let out = new_source("facebook", "fb2");
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("unknown source type `facebook`; the types are: facebook_ads,"),
        "{}",
        stderr(&out)
    );
    let out = new_source("files", "Bad-Name");
    assert_exit(&out, 2);
    assert_eq!(
        std::fs::read_to_string(project.path().join("pipeline.yaml")).unwrap(),
        text,
        "refused additions leave the file as it was"
    );
}

#[test]
fn the_runbook_lists_a_failed_task_and_where_to_look() {
    let project = described_project(
        "SELECT order_id, amount, order_date FROM d1.shop_orders\n",
        "description: Orders.\n",
    );
    // `order_id` is a number, `amount * 0` is 0: a division by zero when it runs.
    project.write(
        "models/d2b/broken.sql",
        "SELECT CAST(order_id AS BIGINT) / CAST(amount * 0 AS BIGINT) AS ratio FROM d2a.orders\n",
    );
    let out = project.run(&[]);
    assert_exit(&out, 5);
    let printed = project.cmd().args(["docs", "runbook"]).output().unwrap();
    assert_exit(&printed, 0);
    let runbook = stdout(&printed);
    let sections = sections(&runbook);
    let section = |title: &str| -> &str { &sections.iter().find(|(t, _)| t == title).unwrap().1 };
    let errors = section("Error handling");
    let row = errors
        .lines()
        .find(|l| l.contains("| d2b.broken |"))
        .unwrap_or_else(|| panic!("the failed task is listed:\n{errors}"));
    assert!(row.to_lowercase().contains("divide by zero"), "{row}");
    assert!(
        section("Troubleshooting").contains("Latest run with a failure: `"),
        "{}",
        section("Troubleshooting")
    );
    // The good model's checks and the broken one's absence of them.
    assert!(
        section("Testing").contains("No model has checks."),
        "{}",
        section("Testing")
    );
}
