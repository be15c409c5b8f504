//! `type: command` — any executable that writes records to stdout: NDJSON (one
//! object per line) or Singer messages (SCHEMA / RECORD / STATE), so existing
//! Singer taps run under sluice.
//!
//! One process per stream and run (`command` + the stream's `args`). Its stdout is
//! cut into pages at line ends, each landed exactly as received before it is
//! decoded, so `sluice replay` needs no process. Its stderr is logged line by line
//! through the secret redactor. A non-zero exit fails the stream: the slice's
//! staged rows are discarded and nothing is published. A Singer tap's last STATE
//! becomes the stream's cursor after the publish and is handed back with
//! `--state <file>` on the next run; `config:` (plus `secrets:`) is handed over
//! with `--config <file>`. Both files are private (0600) temp files, removed when
//! the process ends.
//!
//! ```yaml
//! sources:
//!   crm:
//!     type: command
//!     command: [target/py-taps/bin/tap-spreadsheets]
//!     format: singer
//!     config: { files: [{ path: data/*.csv, format: csv, table_name: orders }] }
//!     streams:
//!       orders: { primary_key: [id], write_mode: merge }
//! ```

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use sluice_core::config::{ConfigDocument, ConfigError, Section};
use sluice_core::destination::WriteMode;
use sluice_core::schema::TableSchema;
use sluice_core::secret::{redact, Secret};
use sluice_core::source::{
    DecodeState, DecodedPage, ErrorClass, LandedPage, PageSink, RunWindow, Slice, Source,
    SourceError, StreamPlan, StreamSpec,
};
use sluice_core::typing::{decode_json_line, Origin, Record, Rejected};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::declared_columns::OrderedColumns;
use crate::BuildContext;

/// `type: command`.
pub const SOURCE_TYPES: &[crate::SourceType] = &[crate::SourceType {
    name: "command",
    build: |doc, section, ctx| Ok(Arc::new(CommandSource::build(doc, section, ctx)?)),
}];

/// stdout is landed in pages cut at the first line end after this many bytes:
/// memory per stream stays at about one page, whatever the process writes.
const PAGE_BYTES: usize = 4 * 1024 * 1024;
/// stderr lines kept for the error message when the process fails.
const STDERR_TAIL: usize = 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandConfig {
    /// The program and its arguments (no shell): `[python, export.py]`. A relative
    /// program path with a `/` is resolved against the pipeline folder.
    pub command: Vec<String>,
    /// `ndjson` (default: one JSON object per line) or `singer`.
    #[serde(default)]
    pub format: OutputFormat,
    /// Written as JSON to a private temp file passed as `--config <file>` (Singer's
    /// convention); not passed when absent.
    #[serde(default)]
    pub config: Option<Map<String, Value>>,
    /// Credentials added to `config`'s top level; kept out of every log line,
    /// including the process's own stderr.
    #[serde(default)]
    pub secrets: BTreeMap<String, Secret>,
    /// Environment variables set for the process (it inherits sluice's otherwise).
    #[serde(default)]
    pub env: BTreeMap<String, Secret>,
    /// The process is killed, and the stream fails, after this many seconds (default 3600).
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Streams run at once (each is its own process). Default 1.
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    pub streams: BTreeMap<String, CommandStreamConfig>,
}

fn default_timeout() -> u64 {
    3600
}
fn default_concurrency() -> usize {
    1
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    #[default]
    Ndjson,
    Singer,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandStreamConfig {
    /// Arguments added after `command` for this stream.
    #[serde(default)]
    pub args: Vec<String>,
    /// `singer` only: the tap's stream whose RECORD messages feed this stream
    /// (default: the stream's name).
    #[serde(default)]
    pub tap_stream: Option<String>,
    /// Declared column types (`id: bigint`); others are inferred.
    #[serde(default)]
    pub columns: OrderedColumns,
    /// Add columns found in the data but not declared (default true).
    #[serde(default = "yes")]
    pub infer_columns: bool,
    #[serde(default)]
    pub primary_key: Vec<String>,
    /// A date column that partitions the table.
    #[serde(default)]
    pub partition_column: Option<String>,
    /// append (default), replace, merge (needs primary_key) or overwrite_partitions.
    #[serde(default)]
    pub write_mode: WriteMode,
    /// The D1 table name (default `<source>_<stream>`).
    #[serde(default)]
    pub table: Option<String>,
    /// `merge` only: which row wins when one run's input repeats a key.
    #[serde(default)]
    pub dedupe: sluice_core::dedupe::Dedupe,
}

fn yes() -> bool {
    true
}

pub struct CommandSource {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    format: OutputFormat,
    /// `config` with `secrets` merged in; `None` when no `--config` is passed.
    tap_config: Option<Map<String, Value>>,
    env: Vec<(String, Secret)>,
    timeout: Duration,
    root: PathBuf,
    streams: Vec<CommandStream>,
    max_concurrency: usize,
    /// `sources.<name>`.
    key: String,
}

struct CommandStream {
    spec: StreamSpec,
    args: Vec<String>,
    tap_stream: String,
}

impl CommandSource {
    #[allow(clippy::result_large_err)] // ConfigError's size is the config module's choice.
    pub fn build(
        doc: &ConfigDocument,
        section: &Section,
        ctx: &BuildContext,
    ) -> Result<Self, ConfigError> {
        let config: CommandConfig = doc.parse_section(section)?;
        let at = |rest: &[&str]| {
            let mut p = section.path.clone();
            p.extend(rest.iter().map(|s| s.to_string()));
            p
        };
        let Some((program, args)) = config.command.split_first() else {
            return Err(doc.error_at(&at(&["command"]), "name the program to run: `[tap-x]`"));
        };
        let program = PathBuf::from(program);
        let program = if program.is_relative() && program.components().count() > 1 {
            ctx.root.join(program)
        } else {
            program
        };
        if !config.secrets.is_empty() && config.config.is_none() {
            return Err(doc.error_at(
                &at(&["secrets"]),
                "`secrets` are added to `config`, which is not set: add `config: {}` to pass them with --config",
            ));
        }
        let tap_config = config.config.map(|mut map| {
            for (key, value) in &config.secrets {
                map.insert(key.clone(), Value::String(value.expose().to_string()));
            }
            map
        });
        let mut streams = Vec::new();
        for (name, stream) in config.streams {
            if !sluice_core::config::is_identifier(&name) {
                return Err(doc.error_at(
                    &at(&["streams", &name]),
                    "stream names may use lowercase letters, digits and `_`",
                ));
            }
            if stream.tap_stream.is_some() && config.format != OutputFormat::Singer {
                return Err(doc.error_at(
                    &at(&["streams", &name, "tap_stream"]),
                    "`tap_stream` picks a Singer stream: set `format: singer`",
                ));
            }
            let fields = stream
                .columns
                .fields(
                    &stream.primary_key,
                    stream.partition_column.as_deref(),
                    stream.write_mode,
                )
                .map_err(|(key, message)| {
                    let mut path = at(&["streams", &name]);
                    path.extend(key);
                    doc.error_at(&path, message)
                })?;
            streams.push(CommandStream {
                spec: StreamSpec {
                    table: stream
                        .table
                        .unwrap_or_else(|| format!("{}_{name}", section.name)),
                    name: name.clone(),
                    schema: TableSchema::new(fields),
                    infer_columns: stream.infer_columns,
                    primary_key: stream.primary_key,
                    partition_column: stream.partition_column,
                    write_mode: stream.write_mode,
                    dedupe: stream.dedupe,
                },
                args: stream.args,
                tap_stream: stream.tap_stream.unwrap_or(name),
            });
        }
        if streams.is_empty() {
            return Err(doc.error_at(&at(&["streams"]), "declare at least one stream"));
        }
        Ok(CommandSource {
            name: section.name.clone(),
            program,
            args: args.to_vec(),
            format: config.format,
            tap_config,
            env: config.env.into_iter().collect(),
            timeout: Duration::from_secs(config.timeout_secs.max(1)),
            root: ctx.root.clone(),
            streams,
            max_concurrency: config.max_concurrency.max(1),
            key: section.path.join("."),
        })
    }

    fn stream(&self, name: &str) -> Result<&CommandStream, SourceError> {
        self.streams
            .iter()
            .find(|s| s.spec.name == name)
            .ok_or_else(|| SourceError::data(format!("unknown stream {name}")))
    }

    fn failed(&self, message: String) -> SourceError {
        SourceError::config(message, format!("{}.command", self.key))
    }

    /// Decodes one landed page: NDJSON objects, or the RECORDs of `tap_stream` (other
    /// messages are skipped). Returns the last Singer STATE on the page, if any.
    fn decode_page(
        &self,
        stream: &CommandStream,
        origin: &Arc<str>,
        body: &[u8],
    ) -> (DecodedPage, Option<Value>) {
        let mut decoded = DecodedPage::default();
        let mut state = None;
        for (n, line) in body.split(|b| *b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let origin = Origin {
                page: origin.clone(),
                line: n as u64 + 1,
            };
            let record = match decode_json_line(line, origin) {
                Ok(record) => record,
                Err(rejected) => {
                    decoded.rejected.push(rejected);
                    continue;
                }
            };
            if self.format == OutputFormat::Ndjson {
                decoded.records.push(record);
                continue;
            }
            match singer_message(record, &stream.tap_stream) {
                Singer::Record(record) => decoded.records.push(record),
                Singer::State(value) => state = Some(value),
                Singer::Other => {}
                Singer::Bad(rejected) => decoded.rejected.push(rejected),
            }
        }
        (decoded, state)
    }
}

enum Singer {
    Record(Record),
    State(Value),
    /// SCHEMA, ACTIVATE_VERSION, BATCH, another stream's RECORD.
    Other,
    Bad(Rejected),
}

/// One Singer message (https://hub.meltano.com/singer/spec).
fn singer_message(message: Record, tap_stream: &str) -> Singer {
    let Record { mut fields, origin } = message;
    let bad = |origin: Origin, reason: &str, fields: &Map<String, Value>| {
        Singer::Bad(Rejected {
            origin,
            reason: reason.to_string(),
            raw: Value::Object(fields.clone()).to_string(),
        })
    };
    match fields.get("type").and_then(Value::as_str) {
        Some("RECORD") => {
            if fields.get("stream").and_then(Value::as_str) != Some(tap_stream) {
                return Singer::Other;
            }
            match fields.remove("record") {
                Some(Value::Object(record)) => Singer::Record(Record {
                    fields: record,
                    origin,
                }),
                _ => bad(origin, "a Singer RECORD without a `record` object", &fields),
            }
        }
        Some("STATE") => match fields.remove("value") {
            Some(value) => Singer::State(value),
            None => bad(origin, "a Singer STATE without a `value`", &fields),
        },
        Some(_) => Singer::Other,
        None => bad(origin, "not a Singer message: no `type`", &fields),
    }
}

/// A private (0600) temp file holding `value` as JSON, removed on drop.
fn private_json_file(value: &Value) -> Result<tempfile::NamedTempFile, SourceError> {
    let io = |e: std::io::Error| SourceError::transient(format!("cannot write a temp file: {e}"));
    // NamedTempFile creates the file 0600 on Unix, before anything is written to it.
    let mut file = tempfile::Builder::new()
        .prefix("sluice-")
        .suffix(".json")
        .tempfile()
        .map_err(io)?;
    file.write_all(value.to_string().as_bytes()).map_err(io)?;
    file.flush().map_err(io)?;
    Ok(file)
}

#[async_trait]
impl Source for CommandSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn streams(&self) -> Vec<StreamSpec> {
        self.streams.iter().map(|s| s.spec.clone()).collect()
    }

    /// The program can be found (running it would extract).
    async fn check(&self) -> Result<(), SourceError> {
        let found = if self.program.components().count() > 1 {
            self.program.exists()
        } else {
            std::env::var_os("PATH").is_some_and(|path| {
                std::env::split_paths(&path).any(|dir| dir.join(&self.program).exists())
            })
        };
        if found {
            Ok(())
        } else {
            Err(self.failed(format!("`{}` not found", self.program.display())))
        }
    }

    async fn plan(
        &self,
        stream: &StreamSpec,
        cursor: Option<&Value>,
        window: &RunWindow,
    ) -> Result<StreamPlan, SourceError> {
        self.stream(&stream.name)?;
        let state = cursor.and_then(|c| c.get("singer_state")).cloned();
        // The key changes with the state handed to the tap, so a crashed run's finished
        // slice is reused only for the same input on the same day.
        let digest = Sha256::digest(state.as_ref().map(Value::to_string).unwrap_or_default());
        let key = format!("{}-{:x}", window.today, digest)[..19].to_string();
        Ok(StreamPlan {
            slices: vec![Slice {
                key,
                params: json!({"dt": window.today.to_string(), "state": state}),
            }],
            // A Singer tap's STATE is reported by `read`.
            cursor_after: None,
        })
    }

    async fn read(
        &self,
        stream: &StreamSpec,
        slice: &Slice,
        sink: &mut dyn PageSink,
    ) -> Result<(), SourceError> {
        let command = self.stream(&stream.name)?;
        let dt = slice.params["dt"].as_str().unwrap_or("unknown").to_string();
        let mut process = tokio::process::Command::new(&self.program);
        process
            .args(&self.args)
            .args(&command.args)
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A cancelled or timed-out run does not leave the process behind.
            .kill_on_drop(true);
        for (name, value) in &self.env {
            process.env(name, value.expose());
        }
        // Held until the process is done; dropping them removes the files.
        let config_file = self
            .tap_config
            .as_ref()
            .map(|c| private_json_file(&Value::Object(c.clone())))
            .transpose()?;
        if let Some(file) = &config_file {
            process.arg("--config").arg(file.path());
        }
        let state = slice.params.get("state").filter(|s| !s.is_null());
        let state_file = state.map(private_json_file).transpose()?;
        if let Some(file) = &state_file {
            process.arg("--state").arg(file.path());
        }
        let label = format!("`{}`", self.program.display());
        let mut child = process
            .spawn()
            .map_err(|e| self.failed(format!("cannot run {label}: {e}")))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let source = self.name.clone();
        let stderr_task = tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            let mut tail = std::collections::VecDeque::new();
            while let Ok(Some(line)) = lines.next_line().await {
                let line = redact(&line);
                tracing::info!(source = %source, "stderr: {line}");
                if tail.len() == STDERR_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
            tail.into_iter().collect::<Vec<_>>().join("\n")
        });

        let work = async {
            let mut reader = BufReader::with_capacity(64 * 1024, stdout);
            let mut page = BytesMut::with_capacity(PAGE_BYTES + 64 * 1024);
            let mut number = 0u32;
            let mut last_state = None;
            loop {
                if sink.is_cancelled() {
                    return Err(SourceError::transient("cancelled"));
                }
                // Read whole lines until the page is full or stdout ends.
                let mut line = Vec::new();
                let n = reader
                    .read_until(b'\n', &mut line)
                    .await
                    .map_err(|e| SourceError::transient(format!("{label}: reading stdout: {e}")))?;
                page.extend_from_slice(&line);
                if (n == 0 && !page.is_empty()) || page.len() >= PAGE_BYTES {
                    number += 1;
                    let body: Bytes = page.split().freeze();
                    let landed = sink
                        .land(&format!("p{number:05}"), "ndjson", &dt, &body)
                        .await?;
                    let (decoded, state) = self.decode_page(command, &landed.path, &body);
                    last_state = state.or(last_state);
                    sink.records(decoded.records).await?;
                    sink.rejected(decoded.rejected).await?;
                }
                if n == 0 {
                    break;
                }
            }
            let status = child
                .wait()
                .await
                .map_err(|e| SourceError::transient(format!("{label}: {e}")))?;
            Ok((status, last_state))
        };
        let outcome = tokio::time::timeout(self.timeout, work).await;
        let stderr_tail = match &outcome {
            // On a timeout the process is killed when `child` drops; its stderr ends then.
            Ok(_) => stderr_task.await.unwrap_or_default(),
            Err(_) => {
                stderr_task.abort();
                String::new()
            }
        };
        let (status, last_state) = match outcome {
            Ok(result) => result?,
            Err(_) => {
                return Err(self.failed(format!(
                    "{label} did not finish within timeout_secs = {}s: killed",
                    self.timeout.as_secs()
                )))
            }
        };
        drop((config_file, state_file));
        if !status.success() {
            let mut error = self.failed(format!(
                "{label} exited with {status}; nothing from this run is published. Its last stderr lines:\n{stderr_tail}"
            ));
            // A failing process is not retried blindly: it may have side effects.
            error.class = ErrorClass::Data;
            return Err(error);
        }
        if let Some(state) = last_state {
            sink.cursor_reached(json!({ "singer_state": state }));
        }
        Ok(())
    }

    fn decode(
        &self,
        stream: &StreamSpec,
        _slice: &Slice,
        page: &LandedPage,
        body: &[u8],
        _state: &mut DecodeState,
    ) -> Option<Result<DecodedPage, SourceError>> {
        Some(
            self.stream(&stream.name)
                .map(|command| self.decode_page(command, &page.path, body).0),
        )
    }

    fn max_concurrency(&self) -> usize {
        self.max_concurrency
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn singer_records_of_other_streams_and_schemas_are_skipped() {
        let origin: Arc<str> = Arc::from("p");
        let message = |text: &str| {
            decode_json_line(
                text.as_bytes(),
                Origin {
                    page: origin.clone(),
                    line: 1,
                },
            )
            .unwrap()
        };
        assert!(matches!(
            singer_message(message(r#"{"type":"RECORD","stream":"a","record":{"id":1}}"#), "a"),
            Singer::Record(r) if r.fields["id"] == 1
        ));
        assert!(matches!(
            singer_message(message(r#"{"type":"RECORD","stream":"b","record":{"id":1}}"#), "a"),
            Singer::Other
        ));
        assert!(matches!(
            singer_message(message(r#"{"type":"SCHEMA","stream":"a","schema":{}}"#), "a"),
            Singer::Other
        ));
        assert!(matches!(
            singer_message(message(r#"{"type":"STATE","value":{"x":1}}"#), "a"),
            Singer::State(v) if v["x"] == 1
        ));
        assert!(matches!(
            singer_message(message(r#"{"type":"RECORD","stream":"a"}"#), "a"),
            Singer::Bad(_)
        ));
        assert!(matches!(singer_message(message(r#"{"id":1}"#), "a"), Singer::Bad(_)));
    }
}
