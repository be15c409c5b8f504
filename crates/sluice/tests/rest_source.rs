//! `type: rest` against a small REST API served by the test over loopback: every
//! pagination style, an OAuth2 token that lapses mid-run, a 429 with Retry-After, a
//! 500, API-key / basic / bearer credentials. The warehouse must equal what the
//! server holds, a second run must fetch only what is new, and `sluice replay`
//! must rebuild both runs' loads with the server stopped.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{Days, NaiveDate, Utc};
use common::{assert_exit, stderr, stdout, Project};
use serde_json::{json, Value};

const CLIENT_BASIC: &str = "Basic Y2xpZW50LTE6Y2xpZW50LXNlY3JldC14eXo="; // client-1:client-secret-xyz
const USER_BASIC: &str = "Basic dXNlcjpwYTU1d29yZA=="; // user:pa55word
const BEARER: &str = "static-bearer-token-123";
const API_KEY: &str = "key-abc-123";
/// How long an OAuth2 token lives (and says it lives, `expires_in`): less than the
/// run, so the client refreshes it before expiry, and the request that waits out
/// the 429's Retry-After comes back with a lapsed token, meets a 401 and must refresh.
const TOKEN_LIFETIME: std::time::Duration = std::time::Duration::from_secs(1);

/// What the API holds and what it saw.
#[derive(Default)]
struct Data {
    base: String,
    items: Vec<Value>,
    days: BTreeMap<NaiveDate, i64>,
    /// OAuth2 tokens granted → when they lapse.
    tokens: HashMap<String, std::time::Instant>,
    grants: u32,
    /// Faults still to serve, once each.
    faults: Vec<&'static str>,
    /// Records served per endpoint, and the query of every data request.
    served: HashMap<String, usize>,
    queries: Vec<(String, HashMap<String, String>)>,
    requests: u32,
}

type Api = Arc<Mutex<Data>>;

fn item(id: i64, version: u32, minute: u32) -> Value {
    json!({
        "id": id,
        "name": format!("item {id} v{version}"),
        "amount": format!("{}.{:02}", id * 3, id % 100),
        "updated_at": format!("2024-07-01T10:{minute:02}:00Z"),
    })
}

async fn token(State(api): State<Api>, headers: HeaderMap, body: String) -> Response {
    let mut data = api.lock().unwrap();
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    if auth != Some(CLIENT_BASIC) || !body.contains("grant_type=client_credentials") {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    data.grants += 1;
    let token = format!("tok-{}-d3adb33f", data.grants);
    data.tokens
        .insert(token.clone(), std::time::Instant::now() + TOKEN_LIFETIME);
    let expires_in = TOKEN_LIFETIME.as_secs();
    Json(json!({"access_token": token, "token_type": "bearer", "expires_in": expires_in}))
        .into_response()
}

fn authorized(
    data: &mut Data,
    auth: &str,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> bool {
    let header = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match auth {
        "oauth" => {
            let token = header.strip_prefix("Bearer ").unwrap_or("");
            data.tokens
                .get(token)
                .is_some_and(|lapses| std::time::Instant::now() < *lapses)
        }
        "bearer" => header == format!("Bearer {BEARER}"),
        "basic" => header == USER_BASIC,
        "key" => query.get("api_key").map(String::as_str) == Some(API_KEY),
        _ => false,
    }
}

fn number(query: &HashMap<String, String>, key: &str, default: usize) -> usize {
    query
        .get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn items(
    State(api): State<Api>,
    Path((auth, style)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let mut data = api.lock().unwrap();
    data.requests += 1;
    if !authorized(&mut data, &auth, &headers, &query) {
        return (StatusCode::UNAUTHORIZED, "token expired").into_response();
    }
    // Each fault once: a 429 on the cursor stream's second page, a 500 on the offset one's.
    let fault = match style.as_str() {
        "cursor" if query.contains_key("after") => "429",
        "offset" if number(&query, "offset", 0) > 0 => "500",
        _ => "",
    };
    if let Some(at) = data.faults.iter().position(|f| *f == fault) {
        data.faults.remove(at);
        return match fault {
            "429" => (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "1")],
                "slow down",
            )
                .into_response(),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "oops").into_response(),
        };
    }
    data.queries.push((style.clone(), query.clone()));
    let since = query.get("updated_since").cloned().unwrap_or_default();
    let all: Vec<Value> = data
        .items
        .iter()
        .filter(|i| i["updated_at"].as_str().unwrap() >= since.as_str())
        .cloned()
        .collect();
    let page_of = |from: usize, size: usize| -> Vec<Value> {
        all.iter().skip(from).take(size).cloned().collect()
    };
    let endpoint = format!("{auth}/{style}");
    let base = data.base.clone();
    let (records, response) = match style.as_str() {
        "cursor" => {
            // The cursor is the last id served; the next page starts after it.
            let after: i64 = query.get("after").and_then(|a| a.parse().ok()).unwrap_or(0);
            let from = all
                .iter()
                .position(|i| i["id"].as_i64().unwrap() > after)
                .unwrap_or(all.len());
            let page = page_of(from, 3);
            let next = (from + 3 < all.len()).then(|| page.last().unwrap()["id"].to_string());
            (
                page.len(),
                Json(json!({"data": page, "meta": {"next": next}})).into_response(),
            )
        }
        "offset" => {
            let page = page_of(number(&query, "offset", 0), number(&query, "limit", 10));
            (page.len(), Json(json!({"results": page})).into_response())
        }
        "page" => {
            let size = number(&query, "per_page", 10);
            let page = page_of((number(&query, "page", 1) - 1) * size, size);
            (page.len(), Json(page).into_response())
        }
        "link" => {
            let n = number(&query, "page", 1);
            let page = page_of((n - 1) * 3, 3);
            let mut link = format!("<{base}/api/{auth}/link?page=1>; rel=\"first\"");
            if n * 3 < all.len() {
                link = format!(
                    "<{base}/api/{auth}/link?page={}>; rel=\"next\", {link}",
                    n + 1
                );
            }
            (page.len(), ([("link", link)], Json(page)).into_response())
        }
        "next" => {
            let n = number(&query, "page", 1);
            let page = page_of((n - 1) * 3, 3);
            // A relative next URL, resolved against the request's.
            let next = (n * 3 < all.len()).then(|| format!("next?page={}", n + 1));
            (
                page.len(),
                Json(json!({"items": page, "links": {"next": next}})).into_response(),
            )
        }
        "daily" => {
            let day = |k: &str| query.get(k).and_then(|d| d.parse::<NaiveDate>().ok());
            let (Some(since), Some(until)) = (day("start_date"), day("end_date")) else {
                return (
                    StatusCode::BAD_REQUEST,
                    "start_date and end_date are required",
                )
                    .into_response();
            };
            let rows: Vec<Value> = data
                .days
                .range(since..=until)
                .map(|(d, clicks)| json!({"day": d.to_string(), "clicks": clicks}))
                .collect();
            (
                rows.len(),
                Json(json!({"report": {"rows": rows}})).into_response(),
            )
        }
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    *data.served.entry(endpoint).or_default() += records;
    response
}

/// The API on a loopback port, on its own runtime; stopped on drop.
struct Server {
    api: Api,
    url: String,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Server {
    fn start(today: NaiveDate) -> Server {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let mut data = Data {
            base: url.clone(),
            items: (1..=11).map(|id| item(id, 1, id as u32)).collect(),
            faults: vec!["429", "500"],
            ..Data::default()
        };
        for back in 0..10u64 {
            let day = today.checked_sub_days(Days::new(back)).unwrap();
            data.days.insert(day, 100 + back as i64);
        }
        let api: Api = Arc::new(Mutex::new(data));
        let app = Router::new()
            .route("/oauth/token", post(token))
            .route("/api/{auth}/{style}", get(items))
            .with_state(api.clone());
        runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
        Server {
            api,
            url,
            runtime: Some(runtime),
        }
    }

    fn data(&self) -> std::sync::MutexGuard<'_, Data> {
        self.api.lock().unwrap()
    }

    fn stop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn pipeline(url: &str, start: NaiveDate) -> String {
    format!(
        r#"name: resty
lake: ./lake
sources:
  shop:
    type: rest
    base_url: {url}/api/oauth/
    auth:
      type: oauth2
      token_url: {url}/oauth/token
      client_id: client-1
      client_secret: ${{CLIENT_SECRET}}
    http: {{ initial_backoff_ms: 10, max_backoff_ms: 50 }}
    streams:
      orders:
        path: cursor
        records: data
        paginate: {{ type: cursor, cursor_path: meta.next, cursor_param: after }}
        incremental: {{ type: field, field: updated_at, param: updated_since }}
        primary_key: [id]
        write_mode: merge
      by_offset:
        path: offset
        records: results
        paginate: {{ type: offset, limit: 4 }}
        write_mode: replace
      by_page:
        path: page
        paginate: {{ type: page, size_param: per_page, page_size: 5 }}
        write_mode: replace
      by_link:
        path: link
        paginate: {{ type: link_header }}
        write_mode: replace
      by_next:
        path: next
        records: items
        paginate: {{ type: next_url, next_url_path: links.next }}
        write_mode: replace
      daily:
        path: daily
        records: report.rows
        incremental:
          type: date_window
          since_param: start_date
          until_param: end_date
          start_date: {start}
          lookback_days: 2
          window_days: 3
        columns: {{ day: date, clicks: bigint }}
        primary_key: [day]
        write_mode: merge
  keyed:
    type: rest
    base_url: {url}/api/key/
    auth: {{ type: api_key, name: api_key, value: "${{API_KEY}}", in: query }}
    streams:
      items: {{ path: page, paginate: {{ type: page, size_param: per_page, page_size: 4 }}, write_mode: replace }}
  basic:
    type: rest
    base_url: {url}/api/basic/
    auth: {{ type: basic, username: user, password: "${{BASIC_PASSWORD}}" }}
    streams:
      items: {{ path: offset, records: results, paginate: {{ type: offset, limit: 20 }}, write_mode: replace }}
  bearer:
    type: rest
    base_url: {url}/api/bearer/
    auth: {{ type: bearer, token: "${{BEARER_TOKEN}}" }}
    streams:
      items: {{ path: next, records: items, paginate: {{ type: next_url, next_url_path: links.next }}, write_mode: replace }}
"#
    )
}

/// Every table's rows, as text, ordered: what the warehouse holds.
fn warehouse(project: &Project) -> BTreeMap<String, Vec<String>> {
    let db = project.sqlite();
    let mut out = BTreeMap::new();
    for table in [
        "shop_orders",
        "shop_by_offset",
        "shop_by_page",
        "shop_by_link",
        "shop_by_next",
        "keyed_items",
        "basic_items",
        "bearer_items",
    ] {
        let sql = format!(
            "select id, name, printf('%.2f', amount), updated_at from d1__{table} order by id"
        );
        let mut statement = db.prepare(&sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        let rows = statement
            .query_map([], |r| {
                Ok(format!(
                    "{}|{}|{}|{}",
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?
                ))
            })
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        out.insert(table.to_string(), rows);
    }
    let mut statement = db
        .prepare("select cast(day as text), clicks from d1__shop_daily order by day")
        .unwrap();
    let days = statement
        .query_map([], |r| {
            Ok(format!(
                "{}|{}",
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?
            ))
        })
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    out.insert("shop_daily".into(), days);
    out
}

/// What the warehouse should hold: every item in every table; the days from `start`.
fn truth(server: &Server, start: NaiveDate) -> BTreeMap<String, Vec<String>> {
    let data = server.data();
    let items: Vec<String> = data
        .items
        .iter()
        .map(|i| {
            format!(
                "{}|{}|{}|{}",
                i["id"],
                i["name"].as_str().unwrap(),
                i["amount"].as_str().unwrap(),
                // Inferred as a timestamp; SQLite holds it with microseconds.
                i["updated_at"].as_str().unwrap().replace('Z', ".000000Z")
            )
        })
        .collect();
    let mut out: BTreeMap<String, Vec<String>> = [
        "shop_orders",
        "shop_by_offset",
        "shop_by_page",
        "shop_by_link",
        "shop_by_next",
        "keyed_items",
        "basic_items",
        "bearer_items",
    ]
    .iter()
    .map(|t| (t.to_string(), items.clone()))
    .collect();
    let days = data
        .days
        .range(start..)
        .map(|(d, c)| format!("{d}|{c}"))
        .collect();
    out.insert("shop_daily".into(), days);
    out
}

fn run_json(project: &Project) -> Value {
    let out = project.run(&["--json"]);
    assert_exit(&out, 0);
    let text = format!("{}{}", stdout(&out), stderr(&out));
    for secret in [
        "client-secret-xyz",
        "tok-1-d3adb33f",
        "tok-2-d3adb33f",
        API_KEY,
        BEARER,
        "pa55word",
    ] {
        assert!(
            !text.contains(secret),
            "`{secret}` leaked into the output:\n{text}"
        );
    }
    serde_json::from_slice(&out.stdout).unwrap()
}

fn task<'r>(record: &'r Value, name: &str) -> &'r Value {
    record["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task"] == name)
        .unwrap_or_else(|| panic!("no task {name} in {record}"))
}

#[test]
fn a_rest_api_loads_exactly_what_it_holds_incrementally_and_replays_without_it() {
    let today = Utc::now().date_naive();
    let start = today.checked_sub_days(Days::new(6)).unwrap();
    let mut server = Server::start(today);
    let project = Project::new(&pipeline(&server.url, start));
    project.write(
        ".env",
        format!(
            "CLIENT_SECRET=client-secret-xyz\nAPI_KEY={API_KEY}\nBASIC_PASSWORD=pa55word\nBEARER_TOKEN={BEARER}\n"
        ),
    );

    let first = run_json(&project);
    let first_run = first["run_id"].as_str().unwrap().to_string();
    let after_first = warehouse(&project);
    assert_eq!(after_first, truth(&server, start));
    {
        let data = server.data();
        assert!(data.faults.is_empty(), "the 429 and the 500 were served");
        // The run outlasted a token (the Retry-After alone takes a second).
        assert!(data.grants >= 2, "tokens granted: {}", data.grants);
    }

    // The API changes: item 5 is edited, items 12 and 13 appear, today's clicks grow.
    {
        let mut data = server.data();
        data.items[4] = item(5, 2, 40);
        data.items.push(item(12, 1, 41));
        data.items.push(item(13, 1, 42));
        *data.days.get_mut(&today).unwrap() += 1000;
        data.served.clear();
        data.queries.clear();
    }
    let second = run_json(&project);
    let second_run = second["run_id"].as_str().unwrap().to_string();
    let after_second = warehouse(&project);
    assert_eq!(after_second, truth(&server, start));
    {
        let data = server.data();
        // Only what changed since the largest updated_at of run 1 (10:11, sent back,
        // inclusive): item 11 again, then 5, 12 and 13.
        assert_eq!(data.served["oauth/cursor"], 4, "{:?}", data.queries);
        let orders: Vec<_> = data.queries.iter().filter(|(s, _)| s == "cursor").collect();
        assert!(orders.iter().all(
            |(_, q)| q.get("updated_since").map(String::as_str) == Some("2024-07-01T10:11:00Z")
        ));
        // The date window starts again two days back (lookback), not at start_date.
        let yesterday = today.pred_opt().unwrap().to_string();
        let windows: Vec<_> = data
            .queries
            .iter()
            .filter(|(s, _)| s == "daily")
            .map(|(_, q)| q["start_date"].clone())
            .collect();
        assert_eq!(windows, [yesterday], "{:?}", data.queries);
    }
    assert_eq!(task(&second, "shop.orders")["rows_extracted"], 4);

    // Replay rebuilds both runs' loads from the landed pages, the API gone.
    server.stop();
    std::fs::remove_file(project.path().join("warehouse.db")).unwrap();
    for (run, expected) in [(&first_run, &after_first), (&second_run, &after_second)] {
        let out = project
            .cmd()
            .args(["replay", "--run", run])
            .output()
            .unwrap();
        assert_exit(&out, 0);
        assert_eq!(&warehouse(&project), expected, "replay of {run}");
    }
}

#[test]
fn rest_config_mistakes_point_at_the_key() {
    let cases = [
        (
            "    streams:\n      a:\n        path: x\n        recrods: data\n",
            "recrods",
            "did you mean `records`?",
        ),
        (
            "    streams:\n      a:\n        path: x\n        paginate: { type: cursor, cursor_path: meta.next }\n",
            "cursor_param",
            "paginate",
        ),
        (
            "    streams:\n      a:\n        path: x\n        records: data..items\n",
            "not a dotted path",
            "records",
        ),
        (
            "    auth: { type: oauth2, token_url: http://example.com/token, client_id: a, client_secret: b }\n    streams:\n      a: { path: x }\n",
            "use https",
            "token_url",
        ),
        (
            "    streams:\n      a:\n        path: x\n        incremental: { type: date_window, since_param: a, until_param: b, date_format: \"%Q\" }\n",
            "not a strftime format",
            "date_format",
        ),
        (
            "    streams:\n      a:\n        path: x\n        write_mode: merge\n",
            "needs a primary_key",
            "write_mode",
        ),
    ];
    for (body, message, key) in cases {
        let yaml = format!(
            "name: bad\nlake: ./lake\nsources:\n  api:\n    type: rest\n    base_url: http://127.0.0.1:9/v1/\n{body}"
        );
        let project = Project::new(&yaml);
        let out = project.cmd().arg("validate").output().unwrap();
        assert_exit(&out, 3);
        let text = stderr(&out);
        assert!(text.contains(message), "{message}: {text}");
        assert!(text.contains(key), "{key}: {text}");
        assert!(text.contains("pipeline.yaml:"), "no file:line: {text}");
    }
}
