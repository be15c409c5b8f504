//! `sync: cdc` — PostgreSQL logical replication (the `pgoutput` plugin) for table
//! streams whose deletes must be seen.
//!
//! How a stream is read:
//! - **First run** (or `--full-refresh`, or the slot went missing): the plan creates
//!   the publication (`FOR TABLE` the stream's table) and a logical replication slot
//!   with `pgoutput`, then the run reads the whole table in one snapshot (the ordinary
//!   full read, paged by the primary key) and merges it on the key. The slot was
//!   created first, so every change committed after its consistent point is replayed
//!   by the next run; applied by key in commit order, changes that the snapshot
//!   already held converge to the same rows.
//! - **Every later run**: the plan first advances the slot to the position the last
//!   published run reached (stored in the stream's cursor, which is written only
//!   after the destination's publish committed), then fixes an end position (the
//!   server's WAL flush position now). The read decodes everything committed in
//!   between with `pg_logical_slot_peek_binary_changes` over an ordinary connection
//!   (tokio-postgres speaks no replication protocol), into a temporary table of the
//!   session (so the server, not sluice, holds a large backlog), and lands the
//!   messages as NDJSON pages `{n, lsn, xid, data}` (`data`: the message's bytes
//!   exactly as received, in hex), newest first. Each page repeats first, marked
//!   `carried`, the Relation messages and the Begin messages of its transactions it
//!   needs, so it decodes alone (`sluice replay`). The page's changes become records:
//!   an insert or update is the new row, a delete is the old key (the whole old row
//!   with `REPLICA IDENTITY FULL`) with `_sluice_deleted_at` set to the commit time.
//!   Newest first, a key already emitted in this slice is skipped, so one run hands
//!   over the latest version of each changed key (the merge sees no repeats).
//! - **Crash safety**: a run killed before its publish leaves the cursor and the
//!   slot where they were, so the next run decodes the same changes again (and any
//!   newer); the merge on the key makes the repeat harmless.
//!
//! Values: pgoutput sends each column as its type's text output in the decoding
//! session, which is set up like every read session (UTC, ISO dates, hex bytea,
//! all float digits), so a value has the same text as in a snapshot read and goes
//! through the same column mapping. Arrays, which a snapshot reads as `to_json`,
//! are turned from PostgreSQL's array literal into the same JSON here.
//!
//! Not seen: `TRUNCATE` stops the stream with a data error (which rows it removed is
//! not in the WAL); `--full-refresh` then recreates the slot and reads a snapshot.
//!
//! (Longer than 700 lines: a quarter is the page decoder's tests; planning, reading
//! and decoding a changes slice depend on one page format and are kept together.)

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use serde_json::{json, Map, Value};
use sluice_core::destination::WriteMode;
use sluice_core::source::{
    DecodeState, DecodedPage, LandedPage, PageSink, RunWindow, Slice, SourceError, StreamPlan,
};
use sluice_core::typing::{Origin, Record};

use super::config::{CdcConfig, SqlStreamConfig};
use super::deletes::DELETED_AT_COLUMN;
use super::pgoutput::{self, Message, RelationMessage, Value as PgValue};
use super::read::cell_json;
use super::streams::SqlStream;
use super::{Database, ReadAs, Session, SqlColumn, SqlSource};

/// The slice parameter that says what a CDC slice reads: `snapshot` or `changes`.
const KIND_PARAM: &str = "cdc";
/// Array element types whose text in an array literal is what `to_json` writes.
const ARRAY_ELEMENTS: &[&str] = &[
    "int2", "int4", "int8", "oid", "float4", "float8", "numeric", "bool", "text", "varchar",
    "bpchar", "name", "uuid", "json", "jsonb", "date",
];

/// A stream's declared CDC: its slot and publication.
#[derive(Debug, Clone)]
pub(crate) struct Cdc {
    slot: String,
    publication: String,
    retained_wal_warning: u64,
    /// `sources.<name>.streams.<stream>`, for errors.
    key: String,
}

/// True when `slice` reads a CDC stream's changes (not its snapshot).
pub(crate) fn is_changes(slice: &Slice) -> bool {
    slice.params.get(KIND_PARAM).and_then(Value::as_str) == Some("changes")
}

/// A publication on the server, as seen for one table.
pub(crate) struct FoundPublication {
    /// `FOR ALL TABLES`.
    pub(crate) all_tables: bool,
    /// It lists `table` itself.
    pub(crate) lists_table: bool,
}

/// The publication `name`, if the server has it; `table` is an SQL relation.
pub(crate) async fn find_publication(
    session: &mut dyn Session,
    name: &str,
    table: &str,
) -> Result<Option<FoundPublication>, SourceError> {
    let found = session
        .rows(
            "SELECT puballtables::text FROM pg_publication WHERE pubname = $1::text",
            vec![name.to_string()],
        )
        .await?;
    let Some(all_tables) = first(found) else {
        return Ok(None);
    };
    let listed = session
        .rows(
            "SELECT '1' FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid \
             WHERE p.pubname = $1::text AND r.prrelid = $2::text::regclass",
            vec![name.to_string(), table.to_string()],
        )
        .await?;
    Ok(Some(FoundPublication {
        all_tables: all_tables == "true",
        lists_table: !listed.is_empty(),
    }))
}

/// A CDC stream's replication slot and publication: as declared under `cdc:`, else
/// `sluice_<source>_<stream>` for both.
pub(crate) fn slot_and_publication(
    source: &str,
    stream: &str,
    declared: &CdcConfig,
) -> (String, String) {
    let slot = declared
        .slot
        .clone()
        .unwrap_or_else(|| format!("sluice_{source}_{stream}").to_lowercase());
    let publication = declared.publication.clone().unwrap_or_else(|| slot.clone());
    (slot, publication)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl Cdc {
    /// Checks `sync: cdc` against the stream it is declared on.
    pub(crate) fn new(
        db: &dyn Database,
        source: &str,
        config: &SqlStreamConfig,
        stream: &SqlStream,
        key: &str,
    ) -> Result<Cdc, SourceError> {
        if db.kind() != "postgres" {
            return Err(SourceError::config(
                format!(
                    "`sync: cdc` reads PostgreSQL's logical replication; a {} source has none (use `sync: incremental` with `deletes:`)",
                    db.kind()
                ),
                format!("{key}.sync"),
            ));
        }
        let what = stream.relation.describe();
        if stream.spec.write_mode != WriteMode::Merge {
            return Err(SourceError::config(
                "`sync: cdc` merges changes on the primary key: leave out `write_mode:` or set it to `merge`",
                format!("{key}.write_mode"),
            ));
        }
        for column in &stream.columns {
            if column.read_as != ReadAs::JsonText {
                continue;
            }
            let element = column.source_type.trim_start_matches('_');
            if !ARRAY_ELEMENTS.contains(&element) {
                return Err(SourceError::config(
                    format!(
                        "`{what}` column `{}` is an array of `{element}`; `sync: cdc` reads arrays of numbers, booleans, text, uuid, dates and json",
                        column.name
                    ),
                    format!("{key}.table"),
                ));
            }
        }
        let declared = config.cdc.clone().unwrap_or_default();
        let (slot, publication) = slot_and_publication(source, &stream.spec.name, &declared);
        let slot_key = match declared.slot {
            Some(_) => format!("{key}.cdc.slot"),
            None => format!("{key}.cdc"),
        };
        if !valid_name(&slot) {
            return Err(SourceError::config(
                format!("`{slot}` is not a replication slot name: lowercase letters, digits and `_`, at most 63 (name one under `cdc: {{slot: …}}`)"),
                slot_key,
            ));
        }
        if !valid_name(&publication) {
            return Err(SourceError::config(
                format!("`{publication}` is not a publication name sluice uses: lowercase letters, digits and `_`, at most 63"),
                format!("{key}.cdc.publication"),
            ));
        }
        let CdcConfig {
            retained_wal_warning_mib,
            ..
        } = declared;
        Ok(Cdc {
            slot,
            publication,
            retained_wal_warning: retained_wal_warning_mib.saturating_mul(1 << 20),
            key: key.to_string(),
        })
    }

    /// The server must decode its WAL logically (checked when the pipeline loads).
    pub(crate) async fn check_server(&self, session: &mut dyn Session) -> Result<(), SourceError> {
        let level = first(
            session
                .rows("SELECT current_setting('wal_level')", Vec::new())
                .await?,
        )
        .unwrap_or_default();
        if level != "logical" {
            return Err(SourceError::config(
                format!(
                    "`sync: cdc` reads PostgreSQL's logical replication, and this server's `wal_level` is `{level}`: \
                     set it to `logical` (`ALTER SYSTEM SET wal_level = logical;` or `wal_level = logical` in postgresql.conf) \
                     and restart PostgreSQL"
                ),
                format!("{}.sync", self.key),
            ));
        }
        Ok(())
    }

    /// Creates the publication, or adds the table to it.
    async fn ensure_publication(
        &self,
        db: &dyn Database,
        stream: &SqlStream,
        session: &mut dyn Session,
    ) -> Result<(), SourceError> {
        let table = db.relation_sql(&stream.relation);
        let publication = db.quote(&self.publication);
        let change = match find_publication(session, &self.publication, &table).await? {
            None => format!("CREATE PUBLICATION {publication} FOR TABLE {table}"),
            Some(found) if found.all_tables || found.lists_table => return Ok(()),
            Some(_) => format!("ALTER PUBLICATION {publication} ADD TABLE {table}"),
        };
        session.rows(&change, Vec::new()).await?;
        Ok(())
    }

    /// Creates the slot; returns its consistent point.
    async fn create_slot(&self, session: &mut dyn Session) -> Result<String, SourceError> {
        let rows = session
            .rows(
                "SELECT lsn::text FROM pg_create_logical_replication_slot($1::text::name, 'pgoutput')",
                vec![self.slot.clone()],
            )
            .await?;
        tracing::info!(slot = %self.slot, "created a logical replication slot");
        Ok(first(rows).unwrap_or_default())
    }

    async fn plan_in(
        &self,
        db: &dyn Database,
        stream: &SqlStream,
        cursor: Option<&Value>,
        window: &RunWindow,
        session: &mut dyn Session,
    ) -> Result<StreamPlan, SourceError> {
        let dt = window.today.to_string();
        self.ensure_publication(db, stream, session).await?;
        let found = session
            .rows(
                "SELECT confirmed_flush_lsn::text, plugin::text, (database = current_database())::text \
                 FROM pg_replication_slots WHERE slot_name = $1::text",
                vec![self.slot.clone()],
            )
            .await?;
        let stored = cursor
            .filter(|_| !window.full_refresh)
            .filter(|c| c.get("slot").and_then(Value::as_str) == Some(&self.slot));
        let slot_at = match found.into_iter().next() {
            Some(row) => {
                let plugin = row.get(1).cloned().flatten().unwrap_or_default();
                let here = row.get(2).cloned().flatten().unwrap_or_default();
                if plugin != "pgoutput" || here != "true" {
                    return Err(SourceError::config(
                        format!(
                            "replication slot `{}` exists but is not a pgoutput slot of this database (plugin `{plugin}`): name another under `cdc: {{slot: …}}`",
                            self.slot
                        ),
                        format!("{}.cdc", self.key),
                    ));
                }
                if window.full_refresh {
                    // A new consistent point: the snapshot replaces what the old slot held.
                    session
                        .rows(
                            "SELECT pg_drop_replication_slot($1::text::name)::text",
                            vec![self.slot.clone()],
                        )
                        .await?;
                    Some(self.create_slot(session).await?)
                } else if stored.is_none() {
                    // A first run that did not publish: the slot still predates the snapshot.
                    row.first().cloned().flatten()
                } else {
                    None
                }
            }
            None => {
                if stored.is_some() {
                    tracing::warn!(slot = %self.slot, "the replication slot is gone (dropped?): reading a new snapshot");
                }
                Some(self.create_slot(session).await?)
            }
        };
        if let Some(at) = slot_at {
            return Ok(StreamPlan {
                slices: vec![Slice {
                    key: format!("snapshot@{}", at.replace('/', "_")),
                    params: json!({"dt": dt, KIND_PARAM: "snapshot"}),
                }],
                cursor_after: Some(json!({"slot": self.slot, "lsn": Value::Null})),
            });
        }
        // The last published run's position: what the slot may now forget.
        if let Some(lsn) = stored
            .and_then(|c| c.get("lsn"))
            .and_then(Value::as_str)
            .filter(|l| pgoutput::parse_lsn(l).is_some())
        {
            session
                .rows(
                    "SELECT pg_replication_slot_advance($1::text::name, $2::text::pg_lsn)::text \
                     FROM pg_replication_slots WHERE slot_name = $1::text AND confirmed_flush_lsn < $2::text::pg_lsn",
                    vec![self.slot.clone(), lsn.to_string()],
                )
                .await?;
        }
        let rows = session
            .rows(
                "SELECT s.confirmed_flush_lsn::text, pg_current_wal_flush_lsn()::text \
                 FROM pg_replication_slots s WHERE s.slot_name = $1::text",
                vec![self.slot.clone()],
            )
            .await?;
        let row = rows.into_iter().next().unwrap_or_default();
        let from = row.first().cloned().flatten().unwrap_or_default();
        let upto = row.get(1).cloned().flatten().unwrap_or_default();
        Ok(StreamPlan {
            slices: vec![Slice {
                key: format!("changes@{from}..{upto}").replace('/', "_"),
                params: json!({"dt": dt, KIND_PARAM: "changes", "upto": upto}),
            }],
            // The read reports the position it reached (`cursor_reached`).
            cursor_after: None,
        })
    }
}

/// The first cell of the first row.
fn first(rows: super::TextRows) -> Option<String> {
    rows.into_iter().next().and_then(|r| r.into_iter().next().flatten())
}

impl SqlSource {
    /// Plans a CDC stream (see the module doc).
    pub(crate) async fn plan_cdc(
        &self,
        cdc: &Cdc,
        stream: &SqlStream,
        cursor: Option<&Value>,
        window: &RunWindow,
    ) -> Result<StreamPlan, SourceError> {
        let mut session = self.db.session().await?;
        let planned = cdc
            .plan_in(&*self.db, stream, cursor, window, &mut *session)
            .await;
        let closed = session.close().await;
        let plan = planned?;
        closed?;
        Ok(plan)
    }

    /// Reads a changes slice: decodes the slot's changes to the planned position.
    pub(crate) async fn read_changes(
        &self,
        cdc: &Cdc,
        stream: &SqlStream,
        slice: &Slice,
        dt: &str,
        sink: &mut dyn PageSink,
    ) -> Result<(), SourceError> {
        let upto = slice
            .params
            .get("upto")
            .and_then(Value::as_str)
            .filter(|l| pgoutput::parse_lsn(l).is_some())
            .ok_or_else(|| SourceError::data("a CDC slice without its end position"))?
            .to_string();
        let mut session = self.db.session().await?;
        let read = self
            .read_changes_in(cdc, stream, &upto, dt, &mut *session, sink)
            .await;
        // The temporary table goes with the connection.
        let closed = session.close().await;
        read?;
        closed?;
        sink.cursor_reached(json!({"slot": cdc.slot, "lsn": upto}));
        Ok(())
    }

    async fn read_changes_in(
        &self,
        cdc: &Cdc,
        stream: &SqlStream,
        upto: &str,
        dt: &str,
        session: &mut dyn Session,
        sink: &mut dyn PageSink,
    ) -> Result<(), SourceError> {
        // Names are checked (`valid_name`), the LSN parsed: literals are safe here,
        // and CREATE TABLE AS takes no parameters.
        session
            .rows(
                &format!(
                    "CREATE TEMPORARY TABLE sluice_cdc AS SELECT p.n, p.lsn::text AS lsn, p.xid::text AS xid, p.data \
                     FROM pg_logical_slot_peek_binary_changes('{}', '{upto}', NULL, 'proto_version', '1', \
                     'publication_names', '{}') WITH ORDINALITY AS p(lsn, xid, data, n)",
                    cdc.slot, cdc.publication
                ),
                Vec::new(),
            )
            .await?;
        // Ordered by the table's `c.n` (a bare `n` would be the text column selected).
        const COLUMNS: &str = "c.n::text, c.lsn, c.xid, encode(c.data, 'hex')";
        let relations = session
            .rows(
                &format!("SELECT {COLUMNS} FROM sluice_cdc c WHERE get_byte(c.data, 0) = 82 ORDER BY c.n"),
                Vec::new(),
            )
            .await?;
        let mut state = DecodeState::default();
        let mut before: Option<i64> = None;
        let mut page_no = 0;
        loop {
            let below = before.map(|n| format!(" AND c.n < {n}")).unwrap_or_default();
            // Inserts, updates, deletes and truncates, newest first.
            let rows = session
                .rows(
                    &format!(
                        "SELECT {COLUMNS} FROM sluice_cdc c WHERE get_byte(c.data, 0) IN (73, 85, 68, 84){below} \
                         ORDER BY c.n DESC LIMIT {}",
                        self.batch_size
                    ),
                    Vec::new(),
                )
                .await?;
            if rows.is_empty() {
                break;
            }
            let xids: HashSet<&str> = rows
                .iter()
                .filter_map(|r| r.get(2).and_then(|x| x.as_deref()))
                .collect();
            let xids: Vec<&str> = xids.into_iter().collect();
            let begins = session
                .rows(
                    &format!(
                        "SELECT {COLUMNS} FROM sluice_cdc c WHERE get_byte(c.data, 0) = 66 \
                         AND c.xid = ANY(string_to_array($1::text, ',')) ORDER BY c.n"
                    ),
                    vec![xids.join(",")],
                )
                .await?;
            let mut body = Vec::new();
            for (carried, row) in relations
                .iter()
                .map(|r| (true, r))
                .chain(begins.iter().map(|r| (true, r)))
                .chain(rows.iter().map(|r| (false, r)))
            {
                let cell = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
                let n: i64 = cell(0)
                    .parse()
                    .map_err(|_| SourceError::data("a change without its position"))?;
                let mut line = json!({"n": n, "lsn": cell(1), "xid": cell(2), "data": cell(3)});
                if carried {
                    line["carried"] = Value::Bool(true);
                }
                serde_json::to_writer(&mut body, &line)
                    .map_err(|e| SourceError::data(format!("encoding a change: {e}")))?;
                body.push(b'\n');
            }
            let full = rows.len() >= self.batch_size;
            before = rows
                .last()
                .and_then(|r| r.first().cloned().flatten())
                .and_then(|n| n.parse().ok());
            page_no += 1;
            let body = Bytes::from(body);
            let landed = sink
                .land(&format!("c{page_no:05}"), "ndjson", dt, &body)
                .await?;
            let decoded = decode_page(stream, &landed, &body, &mut state)?;
            sink.records(decoded.records).await?;
            sink.rejected(decoded.rejected).await?;
            if !full {
                break;
            }
            if sink.is_cancelled() {
                return Err(SourceError::transient("cancelled"));
            }
        }
        let retained = first(
            session
                .rows(
                    "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint::text \
                     FROM pg_replication_slots WHERE slot_name = $1::text",
                    vec![cdc.slot.clone()],
                )
                .await?,
        )
        .and_then(|b| b.parse::<u64>().ok())
        .unwrap_or(0);
        if retained > cdc.retained_wal_warning {
            sink.warn(format!(
                "replication slot `{}` holds {} MiB of WAL on the source server (it keeps every change since the slot's position \
                 until a run reads it); run this stream more often, or if it is no longer run drop the slot: \
                 `sluice drop-slot {}` (or SELECT pg_drop_replication_slot('{}');)",
                cdc.slot,
                retained >> 20,
                cdc.key
                    .trim_start_matches("sources.")
                    .replacen(".streams.", ".", 1),
                cdc.slot
            ));
        }
        Ok(())
    }
}

/// One line of a landed changes page.
struct Line {
    n: i64,
    xid: String,
    message: Message,
}

fn parse_line(line: &[u8]) -> Result<Line, String> {
    let value: Value = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    let n = value["n"].as_i64().ok_or("no position `n`")?;
    let xid = value["xid"].as_str().unwrap_or_default().to_string();
    let data = value["data"].as_str().ok_or("no `data`")?;
    let bytes = hex::decode(data).map_err(|_| "`data` is not hex".to_string())?;
    let message = pgoutput::parse(&bytes).map_err(|e| format!("message {n}: {e}"))?;
    Ok(Line { n, xid, message })
}

/// Decodes a landed changes page into records (the same for `read` and `replay`):
/// the latest change of each key not already emitted by a newer page of the slice.
pub(crate) fn decode_page(
    stream: &SqlStream,
    page: &LandedPage,
    body: &[u8],
    state: &mut DecodeState,
) -> Result<DecodedPage, SourceError> {
    let mut decoded = DecodedPage::default();
    let lines = body.strip_suffix(b"\n").unwrap_or(body);
    if lines.is_empty() {
        return Ok(decoded);
    }
    let data_error = |line: usize, e: String| {
        SourceError::data(format!("{} line {}: {e}", page.path, line + 1))
    };
    let mut parsed = Vec::new();
    for (i, line) in lines.split(|&b| b == b'\n').enumerate() {
        parsed.push(parse_line(line).map_err(|e| data_error(i, e))?);
    }
    let relations: Vec<(i64, &RelationMessage)> = parsed
        .iter()
        .filter_map(|l| match &l.message {
            Message::Relation(r) => Some((l.n, r)),
            _ => None,
        })
        .collect();
    let commits: HashMap<&str, i64> = parsed
        .iter()
        .filter_map(|l| match l.message {
            Message::Begin { commit_ts, .. } => Some((l.xid.as_str(), commit_ts)),
            _ => None,
        })
        .collect();
    let key_indices: Vec<usize> = stream
        .spec
        .primary_key
        .iter()
        .filter_map(|k| stream.columns.iter().position(|c| &c.name == k))
        .collect();
    for (i, line) in parsed.iter().enumerate() {
        let relation_of = |id: u32| {
            relations
                .iter()
                .filter(|(n, r)| r.id == id && *n < line.n)
                .max_by_key(|(n, _)| *n)
                .map(|(_, r)| *r)
                .ok_or_else(|| data_error(i, format!("no Relation message for relation {id} before it")))
        };
        let (texts, deleted_at) = match &line.message {
            Message::Insert { relation, new } => {
                (row_texts(stream, relation_of(*relation)?, new, None), None)
            }
            Message::Update { relation, old, new } => {
                let old = old.as_ref().filter(|(kind, _)| *kind == b'O');
                (
                    row_texts(stream, relation_of(*relation)?, new, old.map(|o| &o.1[..])),
                    None,
                )
            }
            Message::Delete { relation, old } => {
                let at = commits.get(line.xid.as_str()).ok_or_else(|| {
                    data_error(i, format!("no Begin message for transaction {}", line.xid))
                })?;
                (
                    row_texts(stream, relation_of(*relation)?, &old.1, None),
                    Some(pgoutput::timestamp_text(*at)),
                )
            }
            Message::Truncate { .. } => {
                return Err(SourceError::data(format!(
                    "`{}` was truncated at the source (transaction {}); logical replication does not say which rows that removed. \
                     Run `sluice run --full-refresh` to read the table again (the slot is recreated)",
                    stream.relation.describe(),
                    line.xid
                )))
            }
            _ => continue,
        };
        let texts = texts.map_err(|e| data_error(i, e))?;
        let key: Vec<&str> = key_indices
            .iter()
            .map(|&k| texts[k].as_deref().unwrap_or(""))
            .collect();
        if !state.seen.insert(key.join("\u{1f}")) {
            continue; // a newer change of this key came first
        }
        let mut fields = Map::with_capacity(stream.columns.len() + 1);
        for (column, text) in stream.columns.iter().zip(texts) {
            let value = cell_value(column, text).map_err(|e| data_error(i, e))?;
            fields.insert(column.name.clone(), value);
        }
        fields.insert(
            DELETED_AT_COLUMN.into(),
            deleted_at.map(Value::String).unwrap_or(Value::Null),
        );
        decoded.records.push(Record {
            fields,
            origin: Origin {
                page: page.path.clone(),
                line: i as u64 + 1,
            },
        });
    }
    Ok(decoded)
}

/// Each stream column's text in a tuple (by name: the relation's column order is
/// the table's); an unchanged TOASTed value comes from the old row when it was sent.
fn row_texts(
    stream: &SqlStream,
    relation: &RelationMessage,
    values: &[PgValue],
    old: Option<&[PgValue]>,
) -> Result<Vec<Option<String>>, String> {
    stream
        .columns
        .iter()
        .map(|column| {
            let Some(i) = relation.columns.iter().position(|c| c.name == column.name) else {
                return Ok(None); // dropped at the source since the pipeline loaded
            };
            match values.get(i) {
                None | Some(PgValue::Null) => Ok(None),
                Some(PgValue::Text(text)) => Ok(Some(text.clone())),
                Some(PgValue::Unchanged) => match old.and_then(|o| o.get(i)) {
                    Some(PgValue::Text(text)) => Ok(Some(text.clone())),
                    Some(PgValue::Null) => Ok(None),
                    _ => Err(format!(
                        "column `{}` of `{}.{}` was not sent (a large value the update did not change); \
                         `ALTER TABLE … REPLICA IDENTITY FULL` makes PostgreSQL send it",
                        column.name, relation.namespace, relation.name
                    )),
                },
            }
        })
        .collect()
}

/// A pgoutput text value as the JSON a snapshot read gives the same value.
fn cell_value(column: &SqlColumn, text: Option<String>) -> Result<Value, String> {
    let Some(text) = text else {
        return Ok(Value::Null);
    };
    match column.read_as {
        ReadAs::Text => Ok(cell_json(column, Some(text))),
        ReadAs::Hex => Ok(Value::String(
            text.strip_prefix("\\x").unwrap_or(&text).to_string(),
        )),
        ReadAs::JsonText => {
            let json = array_json(&text, column.source_type.trim_start_matches('_'))
                .map_err(|e| format!("column `{}`: {e} in `{text}`", column.name))?;
            serde_json::from_str(&json).map_err(|e| format!("column `{}`: {e}", column.name))
        }
    }
}

/// PostgreSQL's array literal (`{1,NULL,"a b"}`) as the JSON text `to_json` writes.
fn array_json(text: &str, element: &str) -> Result<String, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut at = 0;
    let mut out = String::with_capacity(text.len() + 8);
    array_level(&chars, &mut at, element, &mut out)?;
    if at != chars.len() {
        return Err("text after the array".into());
    }
    Ok(out)
}

fn array_level(chars: &[char], at: &mut usize, element: &str, out: &mut String) -> Result<(), String> {
    if chars.get(*at) != Some(&'{') {
        return Err("not an array literal".into());
    }
    *at += 1;
    out.push('[');
    if chars.get(*at) == Some(&'}') {
        *at += 1;
        out.push(']');
        return Ok(());
    }
    loop {
        match chars.get(*at) {
            Some('{') => array_level(chars, at, element, out)?,
            Some('"') => {
                *at += 1;
                let mut item = String::new();
                loop {
                    match chars.get(*at) {
                        Some('\\') => {
                            item.push(*chars.get(*at + 1).ok_or("an unfinished escape")?);
                            *at += 2;
                        }
                        Some('"') => {
                            *at += 1;
                            break;
                        }
                        Some(c) => {
                            item.push(*c);
                            *at += 1;
                        }
                        None => return Err("an unfinished quoted element".into()),
                    }
                }
                push_element(&item, element, out)?;
            }
            Some(_) => {
                let start = *at;
                while let Some(c) = chars.get(*at) {
                    if *c == ',' || *c == '}' {
                        break;
                    }
                    *at += 1;
                }
                let item: String = chars[start..*at].iter().collect();
                if item.eq_ignore_ascii_case("NULL") {
                    out.push_str("null");
                } else {
                    push_element(&item, element, out)?;
                }
            }
            None => return Err("an unfinished array".into()),
        }
        match chars.get(*at) {
            Some(',') => {
                *at += 1;
                out.push(',');
            }
            Some('}') => {
                *at += 1;
                out.push(']');
                return Ok(());
            }
            _ => return Err("an unfinished array".into()),
        }
    }
}

/// One element as `to_json` writes it: numbers bare (non-finite ones quoted),
/// booleans, JSON as is, everything else a string.
fn push_element(item: &str, element: &str, out: &mut String) -> Result<(), String> {
    match element {
        "int2" | "int4" | "int8" | "oid" | "float4" | "float8" | "numeric" => {
            if item.parse::<f64>().is_ok_and(f64::is_finite) {
                out.push_str(item);
            } else {
                out.push_str(&Value::String(item.to_string()).to_string());
            }
        }
        "bool" => out.push_str(if item == "t" { "true" } else { "false" }),
        "json" | "jsonb" => {
            serde_json::from_str::<Value>(item).map_err(|e| format!("a json element: {e}"))?;
            out.push_str(item);
        }
        _ => out.push_str(&Value::String(item.to_string()).to_string()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::Relation;
    use super::*;
    use sluice_core::schema::{FieldType, TableSchema};
    use std::sync::Arc;

    #[test]
    fn array_literals_become_what_to_json_writes() {
        let json = |text, element| array_json(text, element).unwrap();
        assert_eq!(json("{1,NULL,3}", "int4"), "[1,null,3]");
        assert_eq!(json("{}", "int4"), "[]");
        assert_eq!(json(r#"{x,"y,z","q\"u"}"#, "text"), r#"["x","y,z","q\"u"]"#);
        assert_eq!(json("{{1,2},{3,4}}", "int8"), "[[1,2],[3,4]]");
        assert_eq!(json("{t,f}", "bool"), "[true,false]");
        assert_eq!(json("{NaN,1.5}", "float8"), r#"["NaN",1.5]"#);
        assert_eq!(json(r#"{"{\"a\": 1}"}"#, "jsonb"), r#"[{"a": 1}]"#);
        assert!(array_json("{1,2", "int4").is_err());
        assert!(array_json("1,2}", "int4").is_err());
    }

    fn stream() -> SqlStream {
        let column = |name: &str, ty, read_as| SqlColumn {
            name: name.into(),
            ty,
            read_as,
            source_type: String::new(),
        };
        SqlStream {
            spec: sluice_core::source::StreamSpec {
                name: "t".into(),
                table: "pg_t".into(),
                schema: TableSchema::new(Vec::new()),
                infer_columns: false,
                primary_key: vec!["id".into()],
                partition_column: None,
                write_mode: WriteMode::Merge,
                dedupe: Default::default(),
            },
            relation: Relation::Table {
                schema: Some("public".into()),
                name: "t".into(),
            },
            columns: vec![
                column("id", FieldType::Bigint, ReadAs::Text),
                column("v", FieldType::Text, ReadAs::Text),
                column("by", FieldType::Text, ReadAs::Hex),
            ],
            order_key: vec![0],
            mode: super::super::streams::Mode::Full,
            ranges: 1,
            range_columns: vec![0],
        }
    }

    /// A page as landed: the relation and begin carried, then changes newest first.
    #[test]
    fn a_page_decodes_to_the_latest_change_of_each_key() {
        // Relation 7: public.t (id int4 key, v text, by bytea).
        let mut relation = vec![b'R', 0, 0, 0, 7];
        relation.extend(b"public\0t\0d\0\x03");
        relation.extend(b"\x01id\0\0\0\0\x17\xff\xff\xff\xff");
        relation.extend(b"\x00v\0\0\0\0\x19\xff\xff\xff\xff");
        relation.extend(b"\x00by\0\0\0\0\x11\xff\xff\xff\xff");
        let mut begin = vec![b'B'];
        begin.extend(0u64.to_be_bytes());
        begin.extend(1_500_000i64.to_be_bytes());
        begin.extend(738u32.to_be_bytes());
        let tuple = |id: &str, v: Option<&str>| {
            let mut t = vec![0, 3];
            for value in [Some(id), v, Some("\\x00ff")] {
                match value {
                    Some(text) => {
                        t.push(b't');
                        t.extend((text.len() as i32).to_be_bytes());
                        t.extend(text.as_bytes());
                    }
                    None => t.push(b'n'),
                }
            }
            t
        };
        let insert = |id, v| [&[b'I', 0, 0, 0, 7, b'N'][..], &tuple(id, Some(v))].concat();
        let update = |id, v| [&[b'U', 0, 0, 0, 7, b'N'][..], &tuple(id, Some(v))].concat();
        let delete = |id| [&[b'D', 0, 0, 0, 7, b'K'][..], &tuple(id, None)].concat();
        let line = |n: i64, data: &[u8], carried: bool| {
            let mut v = json!({"n": n, "lsn": "0/1", "xid": "738", "data": hex::encode(data)});
            if carried {
                v["carried"] = json!(true);
            }
            format!("{v}\n")
        };
        // Oldest to newest: insert 1, insert 2, update 1, delete 2.
        let body = [
            line(2, &relation, true),
            line(1, &begin, true),
            line(6, &delete("2"), false),
            line(5, &update("1", "b"), false),
            line(4, &insert("2", "z"), false),
            line(3, &insert("1", "a"), false),
        ]
        .concat();
        let page = LandedPage {
            path: Arc::from("raw/pg/t/c00001.ndjson"),
        };
        let mut state = DecodeState::default();
        let decoded = decode_page(&stream(), &page, body.as_bytes(), &mut state).unwrap();
        let rows: Vec<Value> = decoded
            .records
            .iter()
            .map(|r| Value::Object(r.fields.clone()))
            .collect();
        assert_eq!(
            rows,
            [
                json!({"id": 2, "v": null, "by": "00ff", "_sluice_deleted_at": "2000-01-01T00:00:01.500000Z"}),
                json!({"id": 1, "v": "b", "by": "00ff", "_sluice_deleted_at": null}),
            ]
        );
        assert_eq!(decoded.records[1].origin.line, 4);
        // A later (older) page of the same slice: its keys were already emitted.
        let older = [line(2, &relation, true), line(1, &begin, true), line(3, &insert("1", "a"), false)].concat();
        let decoded = decode_page(&stream(), &page, older.as_bytes(), &mut state).unwrap();
        assert!(decoded.records.is_empty());

        // A change before any Relation message is a data error, not a guess.
        let orphan = line(3, &insert("9", "x"), false);
        let mut fresh = DecodeState::default();
        let e = decode_page(&stream(), &page, orphan.as_bytes(), &mut fresh).unwrap_err();
        assert!(e.message.contains("no Relation message"), "{e}");
    }
}
