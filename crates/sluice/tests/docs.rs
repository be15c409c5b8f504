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
