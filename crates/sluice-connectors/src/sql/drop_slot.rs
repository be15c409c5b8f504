//! `sluice drop-slot <source>.<stream>`: retires a `sync: cdc` stream on its server. Its
//! replication slot keeps every change since its position, so a stream no longer run
//! fills the source's disk; this drops the slot, and the publication sluice created for
//! it (one named under `cdc: {publication: …}` is shared: only the stream's table leaves
//! it). A stream brought back later runs with `--full-refresh`: a new snapshot merged
//! alone would keep rows deleted while the stream had no slot.

use sluice_core::config::{ConfigDocument, ConfigError, Section};
use sluice_core::source::SourceError;

use super::cdc::{find_publication, slot_and_publication};
use super::config::{SqlConfig, SyncMode};
use super::streams::relation_of;
use super::{database, Session};

/// What was dropped, one line each; empty when nothing was left to drop.
pub async fn drop_slot(
    doc: &ConfigDocument,
    section: &Section,
    stream: &str,
) -> Result<Result<Vec<String>, SourceError>, ConfigError> {
    let config: SqlConfig = doc.parse_section(section)?;
    let key_prefix = section.path.join(".");
    let stream_key = format!("{key_prefix}.streams.{stream}");
    let refuse = |message: String, key: &str| {
        Err(crate::error_at_key(
            doc,
            section,
            SourceError::config(message, key.to_string()),
        ))
    };
    let Some(stream_config) = config.streams.get(stream) else {
        let names: Vec<&str> = config.streams.keys().map(String::as_str).collect();
        return refuse(
            format!("no stream `{stream}` (streams: {})", names.join(", ")),
            &format!("{key_prefix}.streams"),
        );
    };
    if stream_config.sync != SyncMode::Cdc {
        return refuse(
            format!("stream `{stream}` is not `sync: cdc`: it has no replication slot"),
            &format!("{stream_key}.sync"),
        );
    }
    let declared = stream_config.cdc.clone().unwrap_or_default();
    let (slot, publication) = slot_and_publication(&section.name, stream, &declared);
    let shared_publication = declared.publication.is_some();
    let root = doc.file.parent().unwrap_or(std::path::Path::new("."));
    let db = database(&section.kind, &config, &key_prefix, root)
        .map_err(|e| crate::error_at_key(doc, section, e))?;
    let relation =
        relation_of(stream_config, &stream_key).map_err(|e| crate::error_at_key(doc, section, e))?;
    let table = db.relation_sql(&relation);
    Ok(async {
        let mut session = db.session().await?;
        let mut done = Vec::new();
        let slot_found = session
            .rows(
                "SELECT active::text FROM pg_replication_slots WHERE slot_name = $1::text",
                vec![slot.clone()],
            )
            .await?;
        if let Some(row) = slot_found.into_iter().next() {
            if row.first().cloned().flatten().as_deref() == Some("true") {
                let why = "is in use (a run of this stream?): drop it once that run ends";
                return Err(SourceError::data(format!("replication slot `{slot}` {why}")));
            }
            session
                .rows(
                    "SELECT pg_drop_replication_slot($1::text::name)::text",
                    vec![slot.clone()],
                )
                .await?;
            done.push(format!("dropped replication slot {slot}"));
        }
        let names = (publication.as_str(), db.quote(&publication));
        drop_publication(&mut *session, names, &table, shared_publication, &mut done).await?;
        session.close().await?;
        Ok(done)
    }
    .await)
}

/// Drops sluice's own publication, or takes the stream's table out of a shared one.
async fn drop_publication(
    session: &mut dyn Session,
    (publication, quoted): (&str, String),
    table: &str,
    shared: bool,
    done: &mut Vec<String>,
) -> Result<(), SourceError> {
    let Some(found) = find_publication(session, publication, table).await? else {
        return Ok(());
    };
    if !shared {
        session
            .rows(&format!("DROP PUBLICATION {quoted}"), Vec::new())
            .await?;
        done.push(format!("dropped publication {publication}"));
    } else if found.lists_table {
        session
            .rows(
                &format!("ALTER PUBLICATION {quoted} DROP TABLE {table}"),
                Vec::new(),
            )
            .await?;
        done.push(format!(
            "took {table} out of publication {publication} (named under `cdc: {{publication: …}}`, so kept)"
        ));
    }
    Ok(())
}
