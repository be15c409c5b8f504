//! `type: clevertap` — CleverTap events and profiles through the cursor flow.
//!
//! Owns the config ([`config`]), the REST conventions ([`api`]) and the two
//! streams. Slices are `event name × day window` for events and day windows
//! for profiles. Within a slice: an expired cursor restarts the window (records
//! already handed over are recognised and not repeated); a window that keeps
//! failing with server errors is split into single days. Profile PII columns
//! are marked PII in the stream schema, so the pipeline's PII policy applies.

pub mod api;
pub mod config;
mod records;

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{json, Value};
use sluice_core::destination::WriteMode;
use sluice_core::schema::{Field, FieldType, JsonPaths, TableSchema};
use sluice_core::source::{
    DecodeState, DecodedPage, ErrorClass, LandedPage, PageSink, RunWindow, Slice, Source,
    SourceError, StreamPlan, StreamSpec,
};
use sluice_core::typing::{Origin, Record, Rejected};

use crate::incremental::{plan_window, DayWindow, Incremental};
use crate::http::{parse_base_url, HttpClient};
use api::{CleverTapApi, CursorPage};
use config::{CleverTapConfig, ProfilesConfig};
use records::{event_record, event_slug, fingerprint, lift_properties, profile_record};

/// Restarts of one window after expired cursors before the slice fails.
const MAX_RESTARTS: u32 = 3;

pub struct CleverTapSource {
    name: String,
    config: CleverTapConfig,
    api: CleverTapApi,
    specs: Vec<StreamSpec>,
}

/// `type: clevertap`.
pub const SOURCE_TYPES: &[crate::SourceType] = &[crate::SourceType {
        name: "clevertap",
        build: |doc, section, _ctx| {
            Ok(std::sync::Arc::new(crate::build_from_config(
                doc,
                section,
                CleverTapSource::new,
            )?))
        },
}];

impl CleverTapSource {
    pub fn new(name: &str, config: CleverTapConfig, key_prefix: &str) -> Result<Self, SourceError> {
        let key = if config.base_url.is_some() {
            "base_url"
        } else {
            "region"
        };
        let root = parse_base_url(&config.root(), &format!("{key_prefix}.{key}"))?;
        let http = HttpClient::new(config.http.clone(), Some(config.max_in_flight))?;
        let api = CleverTapApi::new(
            http,
            root,
            config.account_id.clone(),
            config.passcode.clone(),
            key_prefix.to_string(),
        );
        let mut specs = Vec::new();
        if let Some(events) = &config.streams.events {
            if events.names.is_empty() {
                return Err(SourceError::config(
                    "list at least one event name",
                    format!("{key_prefix}.streams.events.names"),
                ));
            }
            specs.push(events_spec(name, events.table.clone()));
            for event in &events.typed {
                if !events.names.contains(event) {
                    return Err(SourceError::config(
                        format!("`{event}` is not one of the event `names`, so it is not read"),
                        format!("{key_prefix}.streams.events.typed"),
                    ));
                }
                specs.push(typed_events_spec(name, event));
            }
        }
        if let Some(profiles) = &config.streams.profiles {
            specs.push(profiles_spec(name, profiles));
        }
        Ok(CleverTapSource {
            name: name.to_string(),
            config,
            api,
            specs,
        })
    }

    pub fn http(&self) -> &HttpClient {
        &self.api.http
    }
}

fn events_spec(source: &str, table: Option<String>) -> StreamSpec {
    let mut fields = event_columns();
    fields.push(Field::new("event_props", FieldType::Json));
    fields.push(Field::new("session_props", FieldType::Json));
    let mut schema = TableSchema::new(fields);
    // Each event's properties are fields of the registry too (`event_props.Amount
    // [Charged]`), judged by the stream's schema policy like columns.
    schema.json_paths = vec![JsonPaths::object("event_props").scoped_by("event_name")];
    StreamSpec {
        name: "events".into(),
        table: table.unwrap_or_else(|| format!("{source}_events")),
        schema,
        infer_columns: true,
        primary_key: Vec::new(),
        // A re-run replaces the days it re-reads: idempotent without an event id.
        partition_column: Some("event_date".into()),
        write_mode: WriteMode::OverwritePartitions,
        dedupe: Default::default(),
    }
}

/// The columns every event record has, before its properties.
fn event_columns() -> Vec<Field> {
    vec![
        Field::new("event_name", FieldType::Text).required(),
        Field::new("event_date", FieldType::Date).required(),
        // `ts` is local time in the account's time zone, kept as sent (yyyyMMddHHmmss).
        Field::new("ts", FieldType::Bigint).required(),
        Field::new("event_time_local", FieldType::Text),
        Field::new("profile_object_id", FieldType::Text),
        Field::new("profile_identity", FieldType::Text),
        Field::new("profile_platform", FieldType::Text),
        Field::new("profile_email", FieldType::Text).pii(),
        Field::new("profile_phone", FieldType::Text).pii(),
        Field::new("profile_name", FieldType::Text).pii(),
    ]
}

/// The stream of one event with its properties as columns (`events.typed`).
const TYPED_PREFIX: &str = "events_";

/// A typed per-event stream: the event columns, then one column per property,
/// inferred from what the API sends (so each property is versioned like a column).
fn typed_events_spec(source: &str, event: &str) -> StreamSpec {
    let slug = event_slug(event);
    let mut fields = event_columns();
    fields.push(Field::new("session_props", FieldType::Json));
    StreamSpec {
        name: format!("{TYPED_PREFIX}{slug}"),
        table: format!("{source}_events_{slug}"),
        schema: TableSchema::new(fields),
        infer_columns: true,
        primary_key: Vec::new(),
        partition_column: Some("event_date".into()),
        write_mode: WriteMode::OverwritePartitions,
        dedupe: Default::default(),
    }
}

/// Which records a stream's pages hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Events,
    /// Events with their properties lifted into columns.
    TypedEvents,
    Profiles,
}

impl Kind {
    fn of(stream: &StreamSpec) -> Kind {
        if stream.name == "events" {
            Kind::Events
        } else if stream.name.starts_with(TYPED_PREFIX) {
            Kind::TypedEvents
        } else {
            Kind::Profiles
        }
    }

    /// The API endpoint family.
    fn endpoint(self) -> &'static str {
        match self {
            Kind::Events | Kind::TypedEvents => "events",
            Kind::Profiles => "profiles",
        }
    }
}

fn profiles_spec(source: &str, config: &ProfilesConfig) -> StreamSpec {
    let declared = [
        ("profile_id", FieldType::Text),
        ("identity", FieldType::Text),
        ("object_id", FieldType::Text),
        ("name", FieldType::Text),
        ("email", FieldType::Text),
        ("phone", FieldType::Text),
        ("gender", FieldType::Text),
        ("address", FieldType::Text),
        ("zip", FieldType::Text),
        ("profile_data", FieldType::Json),
        ("platform_info", FieldType::Json),
    ];
    let mut fields: Vec<Field> = declared
        .iter()
        .map(|(n, t)| {
            let f = Field::new(*n, *t);
            let f = if *n == "profile_id" { f.required() } else { f };
            if config.pii.iter().any(|p| p == n) {
                f.pii()
            } else {
                f
            }
        })
        .collect();
    for p in &config.pii {
        if !fields.iter().any(|f| &f.name == p) {
            fields.push(Field::new(p, FieldType::Text).pii());
        }
    }
    StreamSpec {
        name: "profiles".into(),
        table: config
            .table
            .clone()
            .unwrap_or_else(|| format!("{source}_profiles")),
        schema: TableSchema::new(fields),
        infer_columns: true,
        primary_key: vec!["profile_id".into()],
        partition_column: None,
        write_mode: WriteMode::Merge,
        dedupe: Default::default(),
    }
}

fn yyyymmdd(d: chrono::NaiveDate) -> u32 {
    d.format("%Y%m%d").to_string().parse().unwrap_or(0)
}

/// The records of one landed cursor page of `kind` (events of `event`, or
/// profiles): records already handed over in the slice (`seen`: fingerprints of
/// whole events, profile ids) are dropped — an expired cursor or a split window
/// re-reads them, and the API repeats records. Shared by `read` and replay. A page
/// without `records` (an error or status answer) yields nothing.
fn page_records(
    kind: Kind,
    event: &str,
    page: &Value,
    path: &Arc<str>,
    seen: &mut HashSet<String>,
) -> (Vec<Record>, Vec<Rejected>) {
    let mut records = Vec::new();
    let mut rejected = Vec::new();
    for (i, raw) in page
        .get("records")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let origin = Origin {
            page: path.clone(),
            line: i as u64 + 1,
        };
        let decoded = raw
            .as_object()
            .ok_or_else(|| "record is not an object".to_string())
            .and_then(|o| match kind {
                Kind::Events => event_record(event, o),
                Kind::TypedEvents => event_record(event, o).map(lift_properties),
                Kind::Profiles => profile_record(o),
            });
        match decoded {
            Ok(fields) => {
                // Events have no id: the whole record identifies it. Profiles: their id.
                let fp = if kind == Kind::Profiles {
                    fingerprint(&fields["profile_id"])
                } else {
                    fingerprint(raw)
                };
                if seen.insert(format!("{fp:016x}")) {
                    records.push(Record { fields, origin });
                }
            }
            Err(reason) => rejected.push(Rejected {
                origin,
                reason,
                raw: raw.to_string(),
            }),
        }
    }
    (records, rejected)
}

struct WindowRead<'a> {
    sink: &'a mut dyn PageSink,
    /// What was already handed over in this slice (see [`page_records`]).
    seen: HashSet<String>,
    pages: u32,
    emitted: u64,
    dt: String,
}

impl CleverTapSource {
    /// Reads one window through the cursor flow, restarting it when a cursor expires.
    async fn read_window(
        &self,
        kind: Kind,
        event: &str,
        window: DayWindow,
        state: &mut WindowRead<'_>,
    ) -> Result<(), SourceError> {
        let (from, to) = (yyyymmdd(window.since), yyyymmdd(window.until));
        let what = kind.endpoint();
        let mut restarts = 0;
        'restart: loop {
            let Some(mut cursor) = self
                .api
                .open_cursor(what, event, from, to, self.config.batch_size)
                .await?
            else {
                return Ok(());
            };
            // Cursors read in this pass: one coming back means the API's paging cycles.
            let mut read_cursors = HashSet::from([cursor.clone()]);
            loop {
                let (response, page) = match self.api.page(what, &cursor).await? {
                    CursorPage::Page(page) => *page,
                    CursorPage::Expired(message) => {
                        restarts += 1;
                        if restarts > MAX_RESTARTS {
                            return Err(SourceError::transient(format!(
                                "{what} {event} {}: cursors keep expiring: {message}",
                                window.key()
                            )));
                        }
                        tracing::debug!(what, event, window = %window.key(), "cursor expired; restarting the window");
                        continue 'restart;
                    }
                };
                state.pages += 1;
                let landed = state
                    .sink
                    .land(
                        &format!("p{:05}", state.pages),
                        "json",
                        &state.dt,
                        &response.body,
                    )
                    .await?;
                let (records, rejected) =
                    page_records(kind, event, &page, &landed.path, &mut state.seen);
                state.emitted += records.len() as u64;
                if !rejected.is_empty() {
                    state.sink.rejected(rejected).await?;
                }
                state.sink.records(records).await?;
                if state.sink.is_cancelled() {
                    return Err(SourceError::transient("cancelled"));
                }
                match page
                    .get("next_cursor")
                    .and_then(Value::as_str)
                    .filter(|c| !c.is_empty())
                {
                    Some(next) if !read_cursors.insert(next.to_string()) => {
                        return Err(SourceError::new(
                            ErrorClass::Data,
                            format!(
                                "{what} {event} {}: after {} page(s) the API answered a cursor it had already given in this read (its paging cycles); stopped instead of reading forever",
                                window.key(),
                                state.pages
                            ),
                        ));
                    }
                    Some(next) => cursor = next.to_string(),
                    None => return Ok(()),
                }
            }
        }
    }
}

#[async_trait]
impl Source for CleverTapSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn streams(&self) -> Vec<StreamSpec> {
        self.specs.clone()
    }

    async fn check(&self) -> Result<(), SourceError> {
        let event = self
            .config
            .streams
            .events
            .as_ref()
            .and_then(|e| e.names.first().cloned())
            .unwrap_or_else(|| "App Launched".into());
        let today = yyyymmdd(chrono::Utc::now().date_naive());
        self.api.count(&event, today, today).await.map(|_| ())
    }

    async fn plan(
        &self,
        stream: &StreamSpec,
        cursor: Option<&Value>,
        window: &RunWindow,
    ) -> Result<StreamPlan, SourceError> {
        let incremental = Incremental {
            start_date: self.config.start_date,
            default_history_days: 30,
            lookback_days: self.config.lookback_days,
        };
        let (days, cursor_after) = plan_window(&incremental, cursor, window);
        let chunks = days
            .map(|d| d.chunks(self.config.slice_days as i64))
            .unwrap_or_default();
        let mut slices = Vec::new();
        let kind = Kind::of(stream);
        if kind != Kind::Profiles {
            let names = self
                .config
                .streams
                .events
                .iter()
                .flat_map(|e| e.names.iter());
            // A typed stream reads its one event.
            let names = names.filter(|event| {
                kind == Kind::Events
                    || stream.name == format!("{TYPED_PREFIX}{}", event_slug(event))
            });
            for event in names {
                for w in &chunks {
                    slices.push(Slice {
                        key: format!("{event}/{}", w.key()),
                        params: json!({"event": event, "window": w.to_json()}),
                    });
                }
            }
        } else {
            let event = self
                .config
                .streams
                .profiles
                .as_ref()
                .map(|p| p.event_name.clone())
                .unwrap_or_default();
            for w in &chunks {
                slices.push(Slice {
                    key: w.key(),
                    params: json!({"event": event, "window": w.to_json()}),
                });
            }
        }
        Ok(StreamPlan {
            slices,
            cursor_after: Some(cursor_after),
        })
    }

    async fn read(
        &self,
        stream: &StreamSpec,
        slice: &Slice,
        sink: &mut dyn PageSink,
    ) -> Result<(), SourceError> {
        let event = slice
            .params
            .get("event")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let Some(window) = slice.params.get("window").and_then(DayWindow::from_json) else {
            return Err(SourceError::data(format!(
                "slice `{}` has malformed parameters",
                slice.key
            )));
        };
        let kind = Kind::of(stream);
        let what = kind.endpoint();
        let mut state = WindowRead {
            sink,
            seen: HashSet::new(),
            pages: 0,
            emitted: 0,
            dt: window.since.to_string(),
        };
        let mut queue = VecDeque::from([window]);
        while let Some(w) = queue.pop_front() {
            match self.read_window(kind, &event, w, &mut state).await {
                Ok(()) => {}
                // Large windows time out or 5xx on CleverTap's side: retry them day by day.
                Err(e) if e.class == ErrorClass::Transient && w.days() > 1 => {
                    tracing::debug!(what, event, window = %w.key(), error = %e, "splitting the window by day");
                    for day in w.chunks(1).into_iter().rev() {
                        queue.push_front(day);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        if what == "events" && self.config.reconcile {
            if let Some(count) = self
                .api
                .count(&event, yyyymmdd(window.since), yyyymmdd(window.until))
                .await?
            {
                if count != state.emitted {
                    state.sink.warn(format!(
                        "clevertap {event} {}: read {} events but the counts endpoint reports {count}",
                        window.key(),
                        state.emitted
                    ));
                }
            }
        }
        Ok(())
    }

    fn decode(
        &self,
        stream: &StreamSpec,
        slice: &Slice,
        page: &LandedPage,
        body: &[u8],
        state: &mut DecodeState,
    ) -> Option<Result<DecodedPage, SourceError>> {
        let path = &page.path;
        let kind = Kind::of(stream);
        // An event page does not name its event: it comes from the slice as planned.
        let event = match slice.params.get("event").and_then(Value::as_str) {
            Some(event) => event,
            None if kind == Kind::Profiles => "",
            None => {
                return Some(Err(SourceError::data(format!(
                    "slice `{}` has no `event` parameter: its pages cannot be decoded",
                    slice.key
                ))))
            }
        };
        Some(
            serde_json::from_slice::<Value>(body)
                .map_err(|e| SourceError::data(format!("{path}: malformed JSON: {e}")))
                .map(|page| {
                    let (records, rejected) =
                        page_records(kind, event, &page, path, &mut state.seen);
                    DecodedPage { records, rejected }
                }),
        )
    }

    fn max_concurrency(&self) -> usize {
        self.config.max_concurrency.max(1)
    }

    fn api_usage(&self) -> Option<sluice_core::run::ApiUsage> {
        Some(self.api.http.stats().usage())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_lift_profile_data_and_get_an_id() {
        let raw = json!({"identity": "C-1", "name": "Ann", "profileData": {"address": "12 Main St", "zip": "10115"},
            "platformInfo": [{"platform": "Android", "objectId": "__x"}]});
        let r = profile_record(raw.as_object().unwrap()).unwrap();
        assert_eq!(r["profile_id"], "C-1");
        assert_eq!(r["address"], "12 Main St");
        assert_eq!(r["object_id"], "__x");
        let anon = json!({"platformInfo": [{"objectId": "__y"}]});
        assert_eq!(
            profile_record(anon.as_object().unwrap()).unwrap()["profile_id"],
            "__y"
        );
        let spec = profiles_spec("app", &ProfilesConfig::default());
        assert!(spec.schema.field("email").unwrap().pii);
        assert!(spec.schema.field("address").unwrap().pii);
        assert!(!spec.schema.field("gender").unwrap().pii);
    }

    #[test]
    fn a_typed_event_stream_is_named_after_its_event() {
        assert_eq!(
            typed_events_spec("app", "Charged").table,
            "app_events_charged"
        );
        assert_eq!(
            typed_events_spec("app", "App Launched").name,
            "events_app_launched"
        );
    }
}
