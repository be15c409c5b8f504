//! Exit codes, distinct per failure kind so schedulers can react (documented in `--help` and the README).

pub const OK: u8 = 0;
/// A bug or an environment failure sluice did not expect.
pub const INTERNAL: u8 = 1;
/// Arguments that name nothing valid (clap uses the same code for its own errors).
pub const USAGE: u8 = 2;
/// The pipeline file or models are invalid (nothing ran).
pub const CONFIG: u8 = 3;
/// The run failed: no task succeeded.
pub const RUN_FAILED: u8 = 4;
/// Some tasks failed; the others were published.
pub const PARTIAL: u8 = 5;
/// `validate --connections`: a source or the destination is unreachable.
pub const CONNECTION: u8 = 6;
/// `sluice test`: an `error` check failed or could not run.
pub const CHECKS_FAILED: u8 = 7;
/// `compare`: the two streams differ.
pub const DIFFERENCES: u8 = 8;
/// `sluice upgrade-check`: the target API version removes or renames fields the pipeline uses.
pub const UPGRADE_NEEDED: u8 = 9;
/// `run --finalize`: not every shard of the round has published (nothing ran).
pub const SHARDS_PENDING: u8 = 10;
/// `run --shard`: another live process holds the shard (or took it over): nothing published.
pub const SHARD_HELD: u8 = 11;
/// Stopped by SIGINT/SIGTERM; in-flight loads were rolled back.
pub const CANCELLED: u8 = 130;
