//! sluice-sandbox: a local emulator of the Facebook Marketing, Google Ads
//! and CleverTap APIs, with fault injection and ground truth.
//!
//! No machine here reaches the real APIs, so connectors are developed,
//! tested and benchmarked against this server. It speaks the real
//! protocols (paths, paging, error shapes, proto3 JSON) closely enough that
//! the official clients accept it; deliberate differences are listed in
//! `docs/sandbox.md`.
//!
//! This module owns the options, the HTTP server (one port, all three APIs
//! under their real paths, dispatched by path prefix) and the request
//! plumbing shared by the API modules. Data comes from [`data`], faults from
//! [`faults`], the expected results from [`truth()`].

pub mod clevertap;
pub mod cli;
pub mod data;
pub mod facebook;
pub mod faults;
pub mod google;
pub mod google_gaql;
mod truth;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use chrono::NaiveDate;

pub use faults::Faults;
pub use truth::truth;

/// Everything that determines what the sandbox serves.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// Seed of the synthetic data; same seed and scale, same data.
    pub seed: u64,
    /// Multiplies entity counts (accounts, customers, profiles); at least 1.
    pub scale: u32,
    /// The sandbox's "today": no data after it, and the 28 days before it
    /// still change (see [`data`]).
    pub today: NaiveDate,
    pub faults: Faults,
}

impl SandboxOptions {
    /// Options without faults.
    pub fn new(seed: u64, scale: u32, today: NaiveDate) -> Self {
        SandboxOptions {
            seed,
            scale: scale.max(1),
            today,
            faults: Faults::default(),
        }
    }
}

/// The credentials the sandbox accepts. Anything else is rejected the way
/// the real API rejects it.
pub mod credentials {
    pub const FACEBOOK_ACCESS_TOKEN: &str = "sandbox-facebook-token";
    pub const GOOGLE_DEVELOPER_TOKEN: &str = "sandbox-developer-token";
    pub const GOOGLE_CLIENT_ID: &str = "sandbox-client-id.apps.googleusercontent.com";
    pub const GOOGLE_CLIENT_SECRET: &str = "sandbox-client-secret";
    pub const GOOGLE_REFRESH_TOKEN: &str = "sandbox-refresh-token";
    /// The manager (MCC) customer id (same for every seed); its clients are
    /// listed by a `customer_client` query and reached with
    /// `login-customer-id: <this>`.
    pub const GOOGLE_MANAGER_CUSTOMER_ID: &str = "8145550100";
    pub const CLEVERTAP_ACCOUNT_ID: &str = "SANDBOX-RZ4-7W6-ZZ5Z";
    pub const CLEVERTAP_PASSCODE: &str = "SANDBOX-PASSCODE";
}

/// Shared state of one running sandbox.
pub(crate) struct AppState {
    pub opts: SandboxOptions,
    pub world: data::World,
    pub counters: faults::Counters,
    pub requests: AtomicU64,
    pub facebook: facebook::FbState,
    pub google: google::GoogleState,
    pub clevertap: clevertap::CtState,
}

/// A parsed request as the API modules see it.
pub(crate) struct Req {
    pub method: Method,
    /// Path segments, percent-decoded.
    pub segments: Vec<String>,
    /// Query parameters followed by form-body parameters.
    pub params: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// `http://host:port` as the client addressed us, for `paging.next`.
    pub origin: String,
    /// The path as received (for `paging.next`).
    pub path: String,
    /// This request's number within its API (for "every N" faults); 0 = exempt.
    pub seq: u64,
}

impl Req {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A response before it is sent (so faults can post-process it).
pub(crate) struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(status: u16, v: &serde_json::Value) -> Reply {
        Reply {
            status,
            headers: vec![(
                "content-type".into(),
                "application/json; charset=UTF-8".into(),
            )],
            body: serde_json::to_vec(v).unwrap_or_default(),
        }
    }

    pub fn header(mut self, k: &str, v: impl Into<String>) -> Reply {
        self.headers.push((k.to_string(), v.into()));
        self
    }

    /// The standard deprecation headers when the sandbox announces a sunset
    /// (`Faults::version_sunset`): `Deprecation: @<unix seconds>` (RFC 9745, here
    /// the sandbox's today) and `Sunset: <HTTP date>` (RFC 8594).
    pub fn with_sunset_notice(self, opts: &SandboxOptions) -> Reply {
        let Some(sunset) = opts.faults.version_sunset else {
            return self;
        };
        let midnight = |d: NaiveDate| d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc();
        self.header(
            "deprecation",
            format!("@{}", midnight(opts.today).timestamp()),
        )
        .header(
            "sunset",
            midnight(sunset)
                .format("%a, %d %b %Y %H:%M:%S GMT")
                .to_string(),
        )
    }
}

/// A sandbox serving on a local port.
pub struct RunningSandbox {
    addr: SocketAddr,
    state: Arc<AppState>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningSandbox {
    /// e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests served so far, all APIs together.
    pub fn request_count(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// What `GET /_sandbox/requests` answers: request counts and peaks.
    pub fn counters(&self) -> serde_json::Value {
        self.state.counters.snapshot(self.request_count())
    }

    /// Stop accepting connections and wait for in-flight requests.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Bind `127.0.0.1:port` (0 = any free port) and serve until shut down.
pub async fn start(opts: SandboxOptions, port: u16) -> anyhow::Result<RunningSandbox> {
    let world = data::World::new(opts.seed, opts.scale);
    let state = Arc::new(AppState {
        world,
        counters: faults::Counters::default(),
        requests: AtomicU64::new(0),
        facebook: facebook::FbState::default(),
        google: google::GoogleState::default(),
        clevertap: clevertap::CtState::default(),
        opts,
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind 127.0.0.1:{port}: {e}"))?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new()
        .fallback(handle)
        .with_state(state.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stopped.await;
        });
        if let Err(e) = serve.await {
            tracing::error!("sandbox server failed: {e}");
        }
    });
    Ok(RunningSandbox {
        addr,
        state,
        stop,
        task,
    })
}

/// Which API a path belongs to.
fn route(segments: &[String]) -> Option<faults::Api> {
    let first = segments.first()?;
    let is_version = |s: &str, dotted: bool| {
        let Some(rest) = s.strip_prefix('v') else {
            return false;
        };
        match rest.split_once('.') {
            Some((a, b)) => {
                dotted
                    && !a.is_empty()
                    && a.bytes().all(|c| c.is_ascii_digit())
                    && b.bytes().all(|c| c.is_ascii_digit())
                    && !b.is_empty()
            }
            None => !dotted && !rest.is_empty() && rest.bytes().all(|c| c.is_ascii_digit()),
        }
    };
    if is_version(first, true) {
        Some(faults::Api::Facebook)
    } else if is_version(first, false) || first == "token" {
        Some(faults::Api::Google)
    } else if first == "1" {
        Some(faults::Api::CleverTap)
    } else {
        None
    }
}

/// The sandbox's own path: `GET /_sandbox/requests` answers the request counters
/// (benchmarks compare the requests two runs made). Not an API request: not counted.
const COUNTERS_PATH: &str = "/_sandbox/requests";

async fn handle(State(st): State<Arc<AppState>>, req: axum::extract::Request) -> Response {
    if req.uri().path() == COUNTERS_PATH {
        let body = serde_json::to_vec(&st.counters.snapshot(st.requests.load(Ordering::SeqCst)))
            .unwrap_or_default();
        let mut resp = Response::new(Body::from(body));
        resp.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return resp;
    }
    st.requests.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 64 << 20)
        .await
        .map(|b| b.to_vec())
        .unwrap_or_default();
    let path = parts.uri.path().to_string();
    let segments: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        })
        .collect();
    let mut params: Vec<(String, String)> = parts
        .uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let is_form = parts
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
    if is_form {
        params.extend(url::form_urlencoded::parse(&body).into_owned());
    }
    let host = parts
        .headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_string();
    let api = route(&segments);
    // Lowered when this request's answer is ready to go (after any delay).
    let _in_flight = api.map(|_| InFlight::new(&st.counters.in_flight));
    let seq = match api {
        Some(faults::Api::Google) if segments.first().is_some_and(|s| s == "token") => 0,
        Some(a) => st.counters.next(a),
        None => 0,
    };
    let r = Req {
        method: parts.method,
        segments,
        params,
        headers: parts.headers,
        body,
        origin: format!("http://{host}"),
        path,
        seq,
    };
    let mut reply = match api {
        Some(faults::Api::Facebook) => facebook::handle(&st, &r),
        Some(faults::Api::Google) => google::handle(&st, &r),
        Some(faults::Api::CleverTap) => clevertap::handle(&st, &r),
        None => Reply::json(
            404,
            &serde_json::json!({"error": format!("sandbox: no API serves {}", r.path)}),
        ),
    };
    let f = &st.opts.faults;
    if reply.status == 200 && f.hit(seq) == Some(faults::Hit::Malformed) {
        faults::truncate(&mut reply.body);
    }
    if let Some(ms) = f.delay_ms(seq) {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    let mut resp = Response::new(Body::from(reply.body));
    *resp.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    for (k, v) in reply.headers {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            resp.headers_mut().append(name, value);
        }
    }
    resp
}

// ------------------------------------------------------------ small helpers

/// One request counted in a [`faults::Gauge`] while it lives.
struct InFlight<'a>(&'a faults::Gauge);

impl<'a> InFlight<'a> {
    fn new(gauge: &'a faults::Gauge) -> Self {
        gauge.raise();
        InFlight(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.lower();
    }
}

/// Opaque cursor encoding (hex of a short text), stable for the same position.
pub(crate) fn encode_cursor(s: &str) -> String {
    hex::encode(s)
}

pub(crate) fn decode_cursor(s: &str) -> Option<String> {
    String::from_utf8(hex::decode(s).ok()?).ok()
}

/// A per-process id for requests (`requestId`, `fbtrace_id`).
pub(crate) fn request_id(seq: u64, salt: &str) -> String {
    let hv = data::h(&[seq, salt.len() as u64, salt.bytes().map(u64::from).sum()]);
    format!("Sbx{hv:016x}")
}

/// Key/value pairs into a map, last wins.
pub(crate) fn param_map(params: &[(String, String)]) -> HashMap<String, String> {
    params.iter().cloned().collect()
}
