//! Tests of the request path: URL rules, redirects, Retry-After and judging answers.

use super::*;

#[test]
fn https_required_except_loopback() {
    assert!(require_secure(&Url::parse("https://graph.facebook.com/").unwrap()).is_ok());
    assert!(require_secure(&Url::parse("http://127.0.0.1:8080/").unwrap()).is_ok());
    assert!(require_secure(&Url::parse("http://localhost:8080/").unwrap()).is_ok());
    assert!(require_secure(&Url::parse("http://[::1]:8080/").unwrap()).is_ok());
    let err = require_secure(&Url::parse("http://graph.facebook.com/").unwrap()).unwrap_err();
    assert!(err.contains("use https"), "{err}");
    let err = parse_base_url("http://example.com", "sources.fb.base_url").unwrap_err();
    assert_eq!(err.config_key.as_deref(), Some("sources.fb.base_url"));
}

#[test]
fn hostile_retry_after_values_are_clamped_not_a_panic() {
    let with = |value: &str| {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
        ApiResponse {
            status: 429,
            headers,
            body: Bytes::new(),
            label: "GET /x".into(),
            sent: std::time::Instant::now(),
        }
        .retry_after()
    };
    assert_eq!(with("1e20"), Some(MAX_SERVER_WAIT));
    assert_eq!(with("inf"), Some(MAX_SERVER_WAIT));
    assert_eq!(with("18446744073709551616"), Some(MAX_SERVER_WAIT));
    assert_eq!(with("NaN"), None);
    assert_eq!(with("-5"), None);
    assert_eq!(with("2.5"), Some(Duration::from_millis(2500)));
    // The pacer takes a clamped wait too, whatever it is handed.
    Pacer::default().block("a", Duration::MAX);
}

#[tokio::test]
async fn a_huge_retry_after_fails_the_request_as_transient() {
    // A real server on loopback answering 429 with `Retry-After: 1e20`.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            let _ = socket
                .write_all(b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 1e20\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
                .await;
        }
    });
    let client = HttpClient::new(HttpSettings::default(), None).unwrap();
    let url = Url::parse(&format!("http://{addr}/x")).unwrap();
    let err = client
        .send(&ApiRequest::get(url), &|r: &ApiResponse| {
            generic_retry(r).unwrap_or(Verdict::Accept)
        })
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Transient);
    assert!(
        err.message.contains("asks to wait 3600s"),
        "{}",
        err.message
    );
    server.abort();
}

/// The requests a test server received (request line and headers).
type Seen = Arc<std::sync::Mutex<Vec<String>>>;

/// A loopback HTTP server answering every request with `reply` (given its own port).
async fn server(
    reply: impl Fn(u16) -> String + Send + Sync + 'static,
) -> (u16, Seen, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = vec![0u8; 8192];
            let n = socket.read(&mut buf).await.unwrap_or(0);
            log.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            let _ = socket.write_all(reply(port).as_bytes()).await;
        }
    });
    (port, seen, task)
}

fn redirect_to(location: &str) -> String {
    format!("HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
}

const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}";

#[tokio::test]
async fn redirects_to_another_origin_are_refused_and_carry_no_credential() {
    let (elsewhere, stolen, other_task) = server(|_| OK.to_string()).await;
    // Another loopback port is another origin.
    let (port, seen, task) =
        server(move |_| redirect_to(&format!("http://127.0.0.1:{elsewhere}/steal?x=1"))).await;
    let client = HttpClient::new(HttpSettings::default(), None).unwrap();
    let request =
        ApiRequest::get(Url::parse(&format!("http://127.0.0.1:{port}/1/profiles.json")).unwrap())
            .header("x-clevertap-passcode", "passcode-must-stay-home")
            .header("developer-token", "dev-token-must-stay-home")
            .header("authorization", "Bearer bearer-must-stay-home");
    let err = client.send(&request, &require_json).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Configuration, "{}", err.message);
    assert!(
        err.message.contains("redirected to http://127.0.0.1:"),
        "{}",
        err.message
    );
    assert!(!err.message.contains("steal"), "{}", err.message);
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "a refused redirect is not retried"
    );
    assert!(
        stolen.lock().unwrap().is_empty(),
        "the other origin was contacted: {:?}",
        stolen.lock().unwrap()
    );
    task.abort();
    other_task.abort();
}

#[tokio::test]
async fn redirects_within_the_origin_are_followed_without_a_referer() {
    // `/a` moves to `/moved`, on the same origin, which answers 200.
    let (port, seen, task) =
        server(|own| redirect_to(&format!("http://127.0.0.1:{own}/moved"))).await;
    let (ok_port, ok_seen, ok_task) = server(|_| OK.to_string()).await;
    let client = HttpClient::new(HttpSettings::default(), None).unwrap();
    let url = |p: u16, path: &str| Url::parse(&format!("http://127.0.0.1:{p}{path}")).unwrap();
    // A server that redirects forever to itself: followed a few times, then refused.
    let err = client
        .send(&ApiRequest::get(url(port, "/a")), &require_json)
        .await
        .unwrap_err();
    assert!(err.message.contains("redirected"), "{}", err.message);
    let requests = seen.lock().unwrap().clone();
    assert!(requests.len() > 1, "{requests:?}");
    assert!(requests[1].starts_with("GET /moved "), "{requests:?}");
    assert!(
        requests
            .iter()
            .all(|r| !r.to_ascii_lowercase().contains("referer")),
        "{requests:?}"
    );
    // Without a redirect nothing changes.
    client
        .send(&ApiRequest::get(url(ok_port, "/b")), &require_json)
        .await
        .unwrap();
    assert_eq!(ok_seen.lock().unwrap().len(), 1);
    task.abort();
    ok_task.abort();
}

#[test]
fn joined_paths_stay_under_the_base_url() {
    let base = Url::parse("https://graph.facebook.com/v26.0/").unwrap();
    assert_eq!(
        join(&base, "act_1/insights").unwrap().as_str(),
        "https://graph.facebook.com/v26.0/act_1/insights"
    );
    for hostile in [
        "https://evil.example/x",
        "http://graph.facebook.com/v26.0/x",
        "https://graph.facebook.com:8443/v26.0/x",
        "../v1.0/x",
    ] {
        let err = join(&base, hostile).unwrap_err();
        assert!(
            err.message.contains("refused URL path"),
            "{hostile}: {}",
            err.message
        );
    }
    assert!(id_segment("123456789", "report_run_id").is_ok());
    assert!(id_segment("act_123", "account id").is_ok());
    for bad in [
        "https://evil.example/x",
        "1/../../x",
        "",
        "a b",
        "..",
        "1?x=2",
    ] {
        assert!(id_segment(bad, "report_run_id").is_err(), "{bad}");
    }
}

#[test]
fn next_page_links_resolve_against_the_request_and_stay_under_the_base() {
    let base = Url::parse("https://api.example.com/v1/").unwrap();
    let current = Url::parse("https://api.example.com/v1/orders?page=1").unwrap();
    assert_eq!(
        follow(&base, &current, "orders?page=2").unwrap().as_str(),
        "https://api.example.com/v1/orders?page=2"
    );
    assert_eq!(
        follow(&base, &current, "https://api.example.com/v1/orders?page=3")
            .unwrap()
            .as_str(),
        "https://api.example.com/v1/orders?page=3"
    );
    for hostile in [
        "https://evil.example/v1/orders?page=2",
        "//evil.example/v1/x",
        "http://api.example.com/v1/orders?page=2",
        "/v2/orders",
        "../admin",
    ] {
        let err = follow(&base, &current, hostile).unwrap_err();
        assert!(
            err.message.contains("refused"),
            "{hostile}: {}",
            err.message
        );
    }
}

#[test]
fn labels_never_carry_the_query() {
    let r = ApiRequest::get(Url::parse("https://x/v1/act_1/insights?access_token=abc").unwrap())
        .query("access_token", "secret-token-value");
    assert_eq!(r.label(), "GET /v1/act_1/insights");
}

#[test]
fn truncated_json_is_retried() {
    let r = ApiResponse {
        status: 200,
        headers: HeaderMap::new(),
        body: Bytes::from_static(b"{\"data\":[{\"a\":1"),
        label: "GET /x".into(),
        sent: std::time::Instant::now(),
    };
    assert!(matches!(require_json(&r), Verdict::Retry { .. }));
}
