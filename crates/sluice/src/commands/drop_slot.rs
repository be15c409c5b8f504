//! `sluice drop-slot <source>.<stream>`: retires a `sync: cdc` stream on its PostgreSQL
//! server (its replication slot, and the publication sluice created for it), so a
//! stream that is no longer run stops holding the server's WAL.

use std::path::Path;

use sluice_connectors::sql::drop_slot::drop_slot;

use crate::exit;

#[derive(clap::Args, Debug)]
pub struct DropSlotArgs {
    /// The stream, `<source>.<stream>` (a `sync: cdc` stream of a postgres source).
    pub stream: String,
}

pub async fn run(pipeline: &Path, args: DropSlotArgs) -> u8 {
    let config = match crate::project::load_config(pipeline) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some((source, stream)) = args.stream.split_once('.') else {
        crate::logging::print_error!(
            "`{}`: name the stream as <source>.<stream>, e.g. `sluice drop-slot shop.orders`",
            args.stream
        );
        return exit::USAGE;
    };
    let Some(section) = crate::project::source_section(&config, pipeline, source) else {
        return exit::CONFIG;
    };
    if section.kind != "postgres" {
        crate::logging::print_error!(
            "source `{source}` is `type: {}`; replication slots are PostgreSQL's (`sync: cdc`)",
            section.kind
        );
        return exit::CONFIG;
    }
    match drop_slot(&config.doc, section, stream).await {
        Err(e) => {
            crate::project::print_config_error(&e);
            exit::CONFIG
        }
        Ok(Err(e)) => {
            crate::logging::print_error!("{}: {e}", args.stream);
            exit::CONNECTION
        }
        Ok(Ok(done)) if done.is_empty() => {
            println!(
                "{}: no replication slot or publication left to drop",
                args.stream
            );
            exit::OK
        }
        Ok(Ok(done)) => {
            for line in done {
                println!("{}: {line}", args.stream);
            }
            println!(
                "{}: remove the stream from the pipeline to retire it; to bring it back, run it with --full-refresh (a new snapshot, which alone would not see rows deleted meanwhile)",
                args.stream
            );
            exit::OK
        }
    }
}
