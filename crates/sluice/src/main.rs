//! The `sluice` command line. It parses arguments and calls the library crates;
//! the work itself lives in sluice-core, sluice-connectors and sluice-destinations.

mod alerts;
mod commands;
mod docs;
mod exit;
mod export;
mod lineage;
mod logging;
mod plan_svg;
mod progress;
mod project;
mod run_log;
mod server;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::logging::LogFormat;

/// The system allocator (glibc's malloc), with its arenas capped.
///
/// mimalloc was used until measured against it, in the same runs (debug builds,
/// 2 cores): a 2M-row model published to PostgreSQL peaked at 255 MiB with mimalloc and
/// 156 MiB with glibc, a 300k-row load at 155 and 111 MiB (and 23% faster), and an idle
/// `sluice serve` held 8.9 MiB of heap against 1.0 MiB. mimalloc kept pages freed by
/// other threads (pages are decoded on blocking threads and freed on the runtime's).
/// glibc gives each thread that contends an arena of its own, up to 8 per core: four
/// bound that on big machines; capping cost nothing measurable here (the 2M-row model
/// with `MALLOC_ARENA_MAX=2`: 151 MiB).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn cap_malloc_arenas() {
    /// `M_ARENA_MAX` in glibc's `malloc.h`.
    const M_ARENA_MAX: std::os::raw::c_int = -8;
    extern "C" {
        fn mallopt(param: std::os::raw::c_int, value: std::os::raw::c_int) -> std::os::raw::c_int;
    }
    // SAFETY: a documented glibc tunable, set before any other thread exists.
    unsafe { mallopt(M_ARENA_MAX, 4) };
}

/// sluice: marketing and customer data pipelines in one binary.
///
/// Exit codes: 0 success, 2 usage error, 3 config error, 4 run failed,
/// 5 run partially failed, 6 a connection check failed, 7 a check failed (`test`),
/// 8 the streams differ (`compare`), 9 the next API version removes fields the
/// pipeline uses (`upgrade-check`), 10 shards of the round pending (`run --finalize`),
/// 11 the shard is held by another process (`run --shard`), 130 cancelled.
#[derive(Parser, Debug)]
#[command(name = "sluice", version, about, long_about = None)]
struct Cli {
    /// The pipeline file.
    #[arg(
        short,
        long,
        global = true,
        env = "SLUICE_PIPELINE",
        default_value = "pipeline.yaml"
    )]
    pipeline: PathBuf,
    /// The `targets:` entry to use (its lake and destination replace the top level's).
    #[arg(long, global = true, env = "SLUICE_TARGET", value_name = "NAME")]
    target: Option<String>,
    /// Log format on stderr: `text` (with progress bars on a terminal) or `json`.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log filter, e.g. `info`, `debug`, `sluice_connectors=debug` (or RUST_LOG).
    #[arg(long, global = true, env = "SLUICE_LOG", default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a pipeline project: pipeline.yaml, models/, .env.example, .gitignore, sample data.
    Init(commands::init::InitArgs),
    /// Check the pipeline file and models without side effects.
    Validate(commands::validate::ValidateArgs),
    /// Show the run plan: streams → D1 tables → models → checks (or a `--select`ion of it).
    Plan(commands::plan::PlanArgs),
    /// Run the pipeline (or a selection of it).
    Run(commands::run::RunArgs),
    /// Re-run a past run's extraction from the pages it landed, without calling sources.
    Replay(commands::replay::ReplayArgs),
    /// Run SQL over the lake's tables (d1.*, d2a.*, d2b.*) and print a table, CSV or JSON.
    Query(commands::query::QueryArgs),
    /// Compare a stream with the one it replaces (from the lake): rows by key, and per day.
    Compare(commands::compare::CompareArgs),
    /// Run the models' checks against what the lake holds, without running anything.
    Test(commands::test::TestArgs),
    /// Preview a model's rows over the lake (PII policy applied); nothing is published.
    Show(commands::show::ShowArgs),
    /// Print a model's SQL as it runs, with the D1 views it reads.
    Compile(commands::compile::CompileArgs),
    /// List the project's streams, models, tables and checks (or a `--select`ion).
    Ls(commands::ls::LsArgs),
    /// Inspect the lake's quarantines (PII policy applied).
    #[command(subcommand)]
    Quarantine(commands::quarantine::QuarantineCommand),
    /// Show run history.
    Runs(commands::runs::RunsArgs),
    /// Fields the next (or `--to`) Facebook / Google Ads API version removes or renames that this pipeline uses.
    UpgradeCheck(commands::upgrade_check::UpgradeCheckArgs),
    /// Inspect the schema registry: versions and changes of every stream.
    #[command(subcommand)]
    Schema(commands::schema::SchemaCommand),
    /// Run the pipeline on its `schedule:` with health probes, metrics, an API and a dashboard.
    Serve(server::ServeArgs),
    /// List a database source's tables, columns, types, keys and suggested sync; `--write` adds streams.
    Discover(commands::discover::DiscoverArgs),
    /// Drop a retired `sync: cdc` stream's replication slot (and its publication) on the source.
    DropSlot(commands::drop_slot::DropSlotArgs),
    /// Run the example pipeline end to end on the embedded default and print a summary.
    Demo(commands::demo::DemoArgs),
    /// Generate files that run the pipeline elsewhere: an Airflow DAG, Kubernetes manifests.
    #[command(subcommand)]
    Export(export::ExportCommand),
    /// Erase one person (`--subject <email>`) from the lake's tables and the warehouse.
    Forget(commands::forget::ForgetArgs),
    /// The audit log: who ran, replayed, cancelled or queried unmasked data; `verify` checks it.
    #[command(subcommand)]
    Audit(commands::audit::AuditCommand),
    /// The encrypted lake: `verify` authenticates every object, `rotate-key` re-wraps data keys.
    #[command(subcommand)]
    Lake(commands::lake::LakeCommand),
    /// Generated documentation: `docs build` (static site + runbook), `docs runbook`, `docs lineage`.
    #[command(subcommand)]
    Docs(docs::DocsCommand),
    /// Onboard a table: add a source to pipeline.yaml, or a model's SQL and YAML, validated at once.
    #[command(subcommand)]
    New(commands::new::NewCommand),
    /// Every model, check and table downstream of a table or column (`d1.facebook_insights.spend`).
    Impact(docs::impact::ImpactArgs),
    /// The local emulator of the Facebook, Google Ads and CleverTap APIs.
    #[command(subcommand)]
    Sandbox(sluice_sandbox::cli::SandboxCommand),
}

/// Everything sluice creates (lake objects, state, `warehouse.db`, exports) is
/// readable by its owner only: files 0600, folders 0700. They hold personal data
/// and run history, and the process umask (often 022) would make them world-readable.
#[cfg(unix)]
fn create_files_private() {
    // `mode_t` of the C library; std has no umask and the libc crate is not a dependency.
    #[cfg(target_os = "linux")]
    type ModeT = u32;
    #[cfg(not(target_os = "linux"))]
    type ModeT = u16;
    extern "C" {
        fn umask(mask: ModeT) -> ModeT;
    }
    // SAFETY: umask only sets the process's file-creation mask; it cannot fail.
    unsafe { umask(0o077) };
}

fn main() -> ExitCode {
    #[cfg(unix)]
    create_files_private();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    cap_malloc_arenas();
    let cli = Cli::parse();
    if let Some(target) = &cli.target {
        // Read by the pipeline loader (sluice_core::config::TARGET_VAR); set while
        // the process still has one thread.
        std::env::set_var(sluice_core::config::TARGET_VAR, target);
    }
    let interactive = logging::init(cli.log_format, &cli.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            crate::logging::print_error!("cannot start the async runtime: {e}");
            return exit::INTERNAL.into();
        }
    };
    let code = runtime.block_on(async move {
        match cli.command {
            Command::Init(args) => commands::init::run(args),
            Command::Validate(args) => commands::validate::run(&cli.pipeline, args).await,
            Command::Plan(args) => commands::plan::run(&cli.pipeline, args).await,
            Command::Run(args) => commands::run::run(&cli.pipeline, args, interactive).await,
            Command::Replay(args) => commands::replay::run(&cli.pipeline, args, interactive).await,
            Command::Query(args) => commands::query::run(&cli.pipeline, args).await,
            Command::Test(args) => commands::test::run(&cli.pipeline, args).await,
            Command::Compare(args) => commands::compare::run(&cli.pipeline, args).await,
            Command::Show(args) => commands::show::run(&cli.pipeline, args).await,
            Command::Compile(args) => commands::compile::run(&cli.pipeline, args).await,
            Command::Ls(args) => commands::ls::run(&cli.pipeline, args).await,
            Command::Quarantine(cmd) => {
                commands::quarantine::run(&cli.pipeline, cmd, interactive).await
            }
            Command::Runs(args) => commands::runs::run(&cli.pipeline, args).await,
            Command::UpgradeCheck(args) => commands::upgrade_check::run(&cli.pipeline, args).await,
            Command::Schema(cmd) => commands::schema::run(&cli.pipeline, cmd).await,
            Command::Serve(args) => server::run(&cli.pipeline, args).await,
            Command::Discover(args) => commands::discover::run(&cli.pipeline, args).await,
            Command::DropSlot(args) => commands::drop_slot::run(&cli.pipeline, args).await,
            Command::Demo(args) => commands::demo::run(args, interactive).await,
            Command::Export(cmd) => export::run(&cli.pipeline, cmd).await,
            Command::Forget(args) => commands::forget::run(&cli.pipeline, args).await,
            Command::Audit(cmd) => commands::audit::run(&cli.pipeline, cmd).await,
            Command::Lake(cmd) => commands::lake::run(&cli.pipeline, cmd).await,
            Command::Docs(cmd) => docs::run(&cli.pipeline, cmd).await,
            Command::New(cmd) => commands::new::run(&cli.pipeline, cmd).await,
            Command::Impact(args) => docs::impact::run(&cli.pipeline, args).await,
            Command::Sandbox(cmd) => match sluice_sandbox::cli::run(cmd).await {
                Ok(()) => exit::OK,
                Err(e) => {
                    crate::logging::print_error!("{e:#}");
                    exit::INTERNAL
                }
            },
        }
    });
    if code == exit::CANCELLED {
        // A cancelled run may leave blocking work behind (a SQLite load waiting on a
        // lock held elsewhere, up to its busy timeout). Dropping the runtime would wait
        // for it; the run is over and rolled back, so exit: SQLite's journal and the
        // server's dropped connection undo what that work had started.
        runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    }
    ExitCode::from(code)
}
