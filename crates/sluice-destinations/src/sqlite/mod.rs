//! The SQLite destination: the embedded default, one file beside the pipeline.
//!
//! This module owns the configuration and the async side: SQLite is blocking,
//! so each load runs on a blocking thread ([`load`]) and the async side streams
//! batches to it through a small bounded channel (memory stays bounded by a
//! few batches). A load whose future is dropped closes the channel without the
//! end-of-stream message, and the blocking side rolls back.
//!
//! Layers are name prefixes (`d1__facebook_insights`), since SQLite has no
//! schemas inside one file.

mod alias;
mod load;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use rusqlite::{Connection, OptionalExtension};
use serde::Deserialize;
use sluice_core::destination::{
    Destination, DestinationError, LoadOutcome, LoadRequest, StreamedLoads, TableSpec,
};
use sluice_core::typing::Rejected;

use crate::names::quote;

/// `destination: { type: sqlite, … }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqliteConfig {
    /// The database file, relative to the pipeline folder. Created if missing.
    pub path: PathBuf,
    /// Milliseconds a load waits for another writer (or a long reader
    /// checkpoint) before it fails and is retried.
    pub busy_timeout_ms: u64,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        SqliteConfig {
            path: PathBuf::from("warehouse.db"),
            busy_timeout_ms: 30_000,
        }
    }
}

/// Loads into a SQLite file; see the module docs.
pub struct SqliteDestination {
    path: PathBuf,
    busy_timeout: Duration,
    /// Switched replacements: a load of a replacing table also publishes the old name.
    aliases: std::sync::Mutex<Vec<sluice_core::replace::D1Alias>>,
}

/// What the blocking side receives.
enum Message {
    Batch(arrow::record_batch::RecordBatch),
    /// The stream ended normally: publish (with the tail) and commit.
    End(sluice_core::destination::LoadTail),
}

/// Batches in flight between the async and the blocking side.
const CHANNEL_BATCHES: usize = 2;

impl SqliteDestination {
    pub fn new(config: SqliteConfig, root: &Path) -> Self {
        SqliteDestination {
            path: root.join(config.path),
            busy_timeout: Duration::from_millis(config.busy_timeout_ms),
            aliases: Default::default(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, table: &str, e: impl std::fmt::Display) -> DestinationError {
        DestinationError::Load {
            table: table.to_string(),
            message: format!("{}: {e}", self.path.display()),
        }
    }

    /// Runs `work` with a connection on a blocking thread.
    async fn with_connection<T: Send + 'static>(
        &self,
        table: &str,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, DestinationError> {
        let path = self.path.clone();
        let busy = self.busy_timeout;
        let joined = tokio::task::spawn_blocking(move || -> Result<T, String> {
            let mut conn = open(&path, busy).map_err(|e| e.to_string())?;
            work(&mut conn).map_err(|e| e.to_string())
        })
        .await;
        match joined {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(message)) => Err(self.error(table, message)),
            Err(e) => Err(self.error(table, e)),
        }
    }
}

/// Opens (creating the file and folder if needed) in WAL mode, so readers never
/// block a load and a load never blocks readers.
pub(crate) fn open(path: &Path, busy_timeout: Duration) -> rusqlite::Result<Connection> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(parent);
    }
    let conn = Connection::open(path)?;
    conn.busy_timeout(busy_timeout)?;
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
    Ok(conn)
}

/// Longest pause between two tries at the write lock.
const LOCK_RETRY_MAX: Duration = Duration::from_millis(4);

/// `BEGIN IMMEDIATE`, waiting up to `busy_timeout` for the write lock: every writer
/// here starts with it. SQLite's own busy handler sleeps in growing steps (1, 2, 5, 10,
/// 15, 20, 25… ms), so a load waiting on another's publish of 10 ms could sleep 30 more
/// (up to 80 ms was seen between a round's shards); this one tries again every 1–4 ms.
/// Once in, the connection's `busy_timeout` applies again.
pub(crate) fn begin_immediate(
    conn: &Connection,
    busy_timeout: Duration,
) -> rusqlite::Result<rusqlite::Transaction<'_>> {
    let deadline = std::time::Instant::now() + busy_timeout;
    let mut pause = Duration::from_millis(1);
    conn.busy_timeout(Duration::ZERO)?;
    let tx = loop {
        // Unchecked: takes `&Connection`, so the loop can borrow it again; no other
        // transaction is open on it here.
        match rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate) {
            Ok(tx) => break tx,
            Err(e)
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(LOCK_RETRY_MAX);
            }
            Err(e) => {
                conn.busy_timeout(busy_timeout)?;
                return Err(e);
            }
        }
    };
    tx.busy_timeout(busy_timeout)?;
    Ok(tx)
}

/// The table name for a layer and table: `d1__facebook_insights`.
pub(crate) fn table_name(layer: &str, name: &str) -> String {
    format!("{layer}__{name}")
}

#[async_trait]
impl Destination for SqliteDestination {
    fn describe(&self) -> String {
        format!("sqlite {}", self.path.display())
    }

    /// Staging fills a temporary table without the database's write lock (see
    /// `load.rs`): other loads, a round's other shards among them, commit meanwhile.
    fn streams_loads(&self) -> StreamedLoads {
        StreamedLoads::Unlocked
    }

    fn set_d1_aliases(&self, aliases: &[sluice_core::replace::D1Alias]) {
        *self.aliases.lock().expect("aliases lock") = aliases
            .iter()
            .filter(|a| a.replacement.switch)
            .cloned()
            .collect();
    }

    async fn check(&self) -> Result<(), DestinationError> {
        let busy = self.busy_timeout;
        self.with_connection("(check)", move |conn| {
            let tx = begin_immediate(conn, busy)?;
            tx.execute_batch("CREATE TABLE _sluice_probe (id INTEGER)")?;
            tx.rollback()
        })
        .await
        .map_err(|e| DestinationError::Connect {
            target: self.describe(),
            message: e.to_string(),
        })
    }

    async fn load(&self, request: LoadRequest<'_>) -> Result<LoadOutcome, DestinationError> {
        let job = load::Job {
            spec: request.table.clone(),
            load_id: request.load_id.to_string(),
            run_id: request.run_id.to_string(),
            aliases: self.aliases.lock().expect("aliases lock").clone(),
        };
        let label = job.spec.qualified_name();
        let (sender, receiver) = tokio::sync::mpsc::channel(CHANNEL_BATCHES);
        let (path, busy) = (self.path.clone(), self.busy_timeout);
        let worker = tokio::task::spawn_blocking(move || load::run(&path, busy, job, receiver));

        let mut batches = request.batches;
        while let Some(item) = batches.next().await {
            match item {
                // A closed channel means the worker stopped early (error or
                // already loaded); its result says which.
                Ok(batch) => {
                    if sender.send(Message::Batch(batch)).await.is_err() {
                        // Its result stands at once: dropping the batches tells a live
                        // load's sender, whose slices would otherwise wait for ever on a
                        // load that no longer reads them (and never send the tail).
                        drop(batches);
                        return worker.await.map_err(|e| self.error(&label, e))?;
                    }
                }
                Err(e) => {
                    drop(sender);
                    let _ = worker.await;
                    return Err(e);
                }
            }
        }
        match request.tail.await {
            Ok(tail) => {
                let _ = sender.send(Message::End(tail)).await;
            }
            Err(e) => {
                drop(sender);
                let _ = worker.await;
                return Err(e);
            }
        }
        worker.await.map_err(|e| self.error(&label, e))?
    }

    async fn record_quarantine(
        &self,
        table: &TableSpec,
        run_id: &str,
        rows: &[Rejected],
    ) -> Result<u64, DestinationError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let name = table_name(&table.layer, &table.name);
        let (run_id, rows) = (run_id.to_string(), rows.to_vec());
        let busy = self.busy_timeout;
        self.with_connection(&table.qualified_name(), move |conn| {
            let tx = begin_immediate(conn, busy)?;
            let now = chrono::Utc::now()
                .format("%Y-%m-%dT%H:%M:%S%.6fZ")
                .to_string();
            load::insert_quarantine(&tx, &name, &run_id, &rows, &now)?;
            tx.commit()?;
            Ok(rows.len() as u64)
        })
        .await
    }

    async fn forget(
        &self,
        layer: &str,
        table: &str,
        columns: &[String],
        values: &[String],
    ) -> Result<u64, DestinationError> {
        let name = table_name(layer, table);
        let columns = columns.to_vec();
        let values = values.to_vec();
        let busy = self.busy_timeout;
        self.with_connection(&format!("{layer}.{table}"), move |conn| {
            let tx = begin_immediate(conn, busy)?;
            let mut deleted = 0;
            let quarantine = format!("{name}__quarantine");
            for (table, wanted) in [(&name, columns), (&quarantine, vec!["raw".to_string()])] {
                let present: Vec<String> = tx
                    .prepare("SELECT name FROM pragma_table_info(?1)")?
                    .query_map([table], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                for column in wanted.iter().filter(|c| present.contains(c)) {
                    let sql = if table == &quarantine {
                        format!(
                            "DELETE FROM {} WHERE instr({}, ?1) > 0",
                            quote(table),
                            quote(column)
                        )
                    } else {
                        format!(
                            "DELETE FROM {} WHERE CAST({} AS TEXT) = ?1",
                            quote(table),
                            quote(column)
                        )
                    };
                    let mut statement = tx.prepare(&sql)?;
                    for value in &values {
                        deleted += statement.execute([value])? as u64;
                    }
                }
            }
            tx.commit()?;
            Ok(deleted)
        })
        .await
    }

    async fn row_count(&self, layer: &str, table: &str) -> Result<Option<u64>, DestinationError> {
        let name = table_name(layer, table);
        self.with_connection(&format!("{layer}.{table}"), move |conn| {
            let exists = conn
                .query_row(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
                    [&name],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            if !exists {
                return Ok(None);
            }
            let count: i64 =
                conn.query_row(&format!("SELECT count(*) FROM {}", quote(&name)), [], |r| {
                    r.get(0)
                })?;
            Ok(Some(count as u64))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Another connection holds the write lock for `hold`, then commits.
    fn hold_write_lock(path: &Path, hold: Duration) -> std::thread::JoinHandle<()> {
        let holder = super::open(path, Duration::from_secs(5)).unwrap();
        holder.execute_batch("BEGIN IMMEDIATE").unwrap();
        std::thread::spawn(move || {
            std::thread::sleep(hold);
            holder.execute_batch("COMMIT").unwrap();
        })
    }

    #[test]
    fn the_write_lock_is_taken_once_another_load_releases_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let released = hold_write_lock(&path, Duration::from_millis(150));
        let conn = super::open(&path, Duration::from_secs(5)).unwrap();
        let tx = begin_immediate(&conn, Duration::from_secs(5)).unwrap();
        tx.execute_batch("CREATE TABLE t (x INTEGER)").unwrap();
        tx.commit().unwrap();
        released.join().unwrap();
    }

    #[test]
    fn waiting_for_the_write_lock_ends_at_the_busy_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let released = hold_write_lock(&path, Duration::from_secs(3));
        let conn = super::open(&path, Duration::from_secs(5)).unwrap();
        let asked = std::time::Instant::now();
        let err = begin_immediate(&conn, Duration::from_millis(300))
            .expect_err("the lock is held past the timeout");
        let waited = asked.elapsed();
        assert_eq!(
            err.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy)
        );
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
        assert!(waited < Duration::from_secs(3), "{waited:?}");
        // The connection's own timeout is back for what comes next.
        released.join().unwrap();
        conn.execute_batch("CREATE TABLE t (x INTEGER)").unwrap();
    }
}
