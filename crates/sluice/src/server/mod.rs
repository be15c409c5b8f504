//! `sluice serve`: the long-running mode. It runs the pipeline on its `schedule:`,
//! answers health probes, exposes metrics and a JSON API, draws a dashboard,
//! announces failures (`alerts:`) and watches table freshness between runs.
//!
//! | module | owns |
//! |---|---|
//! | `scheduler` | the cron loop, catch-up of missed times, its state in the lake |
//! | `http` | the routes: probes, API, token checks |
//! | `metrics` | Prometheus text derived from the run records |
//! | `records` | the run records, read from the lake, cached by object version |
//! | `dashboard` | the HTML page and the plan drawn as SVG |
//! | `tokens` | `serve.tokens`: hashed bearer tokens and their roles |
//!
//! Every run goes through the same library entry as `sluice run`
//! ([`crate::commands::run::execute_cancellable`] → `sluice_core::plan::execute::run`).
//!
//! Shutdown (SIGTERM / SIGINT) happens in three steps: stop taking work (the
//! scheduler stops waiting, triggers are refused, `/readyz` fails); give an
//! in-flight run `--shutdown-grace` to finish; then cancel it, which rolls its
//! in-flight loads back, so the destination is left as before or after the run.

mod dashboard;
mod http;
mod metrics;
mod records;
mod scheduler;
mod tokens;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use sluice_core::run::{RunRecord, RunStatus};
use sluice_core::source::RunWindow;
use tokio::sync::{Mutex, OwnedMutexGuard};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::alerts::Alerter;
use crate::commands::run::{build_plan, execute_cancellable, RunArgs};
use crate::exit;
use crate::project::Project;

pub use tokens::Tokens;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Address of the HTTP server (probes, metrics, API, dashboard).
    #[arg(
        long,
        alias = "addr",
        default_value = "127.0.0.1:8080",
        env = "SLUICE_LISTEN"
    )]
    pub listen: SocketAddr,
    /// On SIGTERM, how long an in-flight run may take to finish before it is
    /// cancelled and its loads rolled back (`30s`, `5m`).
    #[arg(long, default_value = "60s")]
    pub shutdown_grace: String,
    /// The dashboard's address as people reach it, for links in alerts
    /// (default: `http://<--listen>`).
    #[arg(long, env = "SLUICE_PUBLIC_URL")]
    pub public_url: Option<String>,
}

/// What the scheduler, the HTTP handlers and the runs share.
pub struct Daemon {
    pub project: Project,
    pub tokens: Tokens,
    pub alerter: Option<Alerter>,
    /// Held by the run in progress: one run of the pipeline at a time.
    pub run_slot: Arc<Mutex<()>>,
    /// The run in progress, if any, and what cancels it alone.
    current_run: StdMutex<Option<CurrentRun>>,
    /// Cancelled on shutdown: take no new work.
    pub stopping: CancellationToken,
    /// Cancelled when the grace period is over: in-flight runs roll back.
    pub cancel_runs: CancellationToken,
    /// False once the scheduler loop has ended (or if there is no schedule, true).
    pub scheduler_alive: AtomicBool,
    /// Runs started by the API, so shutdown can wait for them.
    pub triggered: TaskTracker,
    /// The run records, read from the lake and cached by version.
    pub records: records::RecordCache,
}

/// A claimed run: its id, what cancels it, and the run slot it holds until it ends.
pub struct RunTicket {
    run_id: String,
    cancel: CancellationToken,
    slot: OwnedMutexGuard<()>,
}

/// The run holding the run slot.
struct CurrentRun {
    run_id: String,
    cancel: CancellationToken,
}

impl Daemon {
    /// The id of the run in progress, if any.
    pub fn current_run(&self) -> Option<String> {
        self.current_run
            .lock()
            .expect("current run lock")
            .as_ref()
            .map(|r| r.run_id.clone())
    }

    /// Cancels run `run_id` if it is the one in progress (its loads roll back).
    pub fn cancel_run(&self, run_id: &str) -> bool {
        match self.current_run.lock().expect("current run lock").as_ref() {
            Some(current) if current.run_id == run_id => {
                current.cancel.cancel();
                true
            }
            _ => false,
        }
    }

    /// Makes `run_id` the run in progress, holding the run `slot`: from now on it is
    /// listed as current and can be cancelled, even before [`Daemon::execute`] starts.
    pub fn claim(&self, run_id: String, slot: OwnedMutexGuard<()>) -> RunTicket {
        // A child of the shutdown token: cancelled by shutdown or by `POST …/cancel`.
        let cancel = self.cancel_runs.child_token();
        *self.current_run.lock().expect("current run lock") = Some(CurrentRun {
            run_id: run_id.clone(),
            cancel: cancel.clone(),
        });
        RunTicket {
            run_id,
            cancel,
            slot,
        }
    }

    /// Runs the pipeline once (the `select`ed part, default all) as the claimed run;
    /// alerts on the outcome. Never fails: a run that cannot start (or panics) is
    /// recorded as a failed run, so it shows on the dashboard and is alerted.
    pub async fn execute(self: &Arc<Self>, select: Vec<String>, ticket: RunTicket) -> RunRecord {
        // The run is driven from a blocking thread with `block_on`: rustc cannot yet
        // prove the run's future `Send` (higher-ranked lifetimes in its async closures,
        // rust-lang/rust#102211), which `tokio::spawn` needs. Its own tasks still run
        // on the runtime's workers.
        let daemon = self.clone();
        let handle = tokio::runtime::Handle::current();
        let run_id = ticket.run_id.clone();
        let started_at = chrono::Utc::now();
        let selected = select.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let RunTicket {
                run_id,
                cancel,
                slot: _slot,
            } = ticket;
            handle.block_on(daemon.run_once(selected, run_id, cancel))
        })
        .await;
        let record = match joined {
            Ok(Ok(record)) => record,
            Ok(Err(code)) => {
                let message =
                    format!("the run could not start (exit code {code}); the server log says why");
                self.record_failure(&run_id, select, started_at, message)
                    .await
            }
            Err(e) => {
                let message = format!("the run stopped unexpectedly: {e}");
                tracing::error!(run_id = %run_id, "{message}");
                self.record_failure(&run_id, select, started_at, message)
                    .await
            }
        };
        tracing::info!(
            run_id = %record.run_id,
            status = record.status.as_str(),
            "run finished"
        );
        self.records.invalidate().await;
        *self.current_run.lock().expect("current run lock") = None;
        if let Some(alerter) = &self.alerter {
            if record.status != RunStatus::Cancelled {
                alerter.after_run(&record).await;
            }
        }
        record
    }

    /// The run itself, through the same entry as `sluice run`; `Err` is the exit code
    /// of a failure before it started (printed to the log).
    async fn run_once(
        &self,
        select: Vec<String>,
        run_id: String,
        cancel: CancellationToken,
    ) -> Result<RunRecord, u8> {
        let args = RunArgs {
            select,
            ..RunArgs::default()
        };
        execute_cancellable(
            &self.project,
            &self.project.sources,
            &args,
            Arc::new(crate::progress::LogLines),
            cancel,
            run_id,
        )
        .await
    }

    /// Stores (and returns) the record of a run that failed without a record of its own.
    async fn record_failure(
        &self,
        run_id: &str,
        select: Vec<String>,
        started_at: chrono::DateTime<chrono::Utc>,
        message: String,
    ) -> RunRecord {
        let record = RunRecord {
            run_id: run_id.to_string(),
            pipeline: self.project.config.name.clone(),
            started_at,
            finished_at: Some(chrono::Utc::now()),
            status: RunStatus::Failed,
            window: RunWindow {
                since: None,
                until: None,
                today: started_at.date_naive(),
                full_refresh: false,
            },
            select,
            tasks: Vec::new(),
            notices: Vec::new(),
            api_usage: Default::default(),
            error: Some(message),
        };
        if let Err(e) = self.project.state.save_run(&record).await {
            tracing::warn!("cannot record the failure of run {run_id}: {e}");
        }
        record
    }
}

pub async fn run(pipeline: &Path, args: ServeArgs) -> u8 {
    let Some(grace) = crate::alerts::parse_duration(&args.shutdown_grace) else {
        crate::logging::print_error!(
            "--shutdown-grace `{}` is not a duration (e.g. `30s`, `5m`)",
            args.shutdown_grace
        );
        return exit::CONFIG;
    };
    let project = match Project::load(pipeline) {
        Ok(p) => p,
        Err(e) => return e.report(),
    };
    // The plan is built once up front: a model error stops the server before it listens.
    let plan = match build_plan(&project, &project.sources) {
        Ok((plan, _models)) => plan,
        Err(code) => return code,
    };
    let tokens = match Tokens::from_config(&project.config) {
        Ok(t) => t,
        Err(e) => {
            crate::project::print_config_error(&e);
            return exit::CONFIG;
        }
    };
    let public_url = args
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", args.listen));
    let alerter = match Alerter::from_config(&project.config, &public_url) {
        Ok(a) => a,
        Err(e) => {
            crate::project::print_config_error(&e);
            return exit::CONFIG;
        }
    };
    let alerter = match alerter {
        Some(a) => Some(a.keep_state_in(project.lake.clone()).await),
        None => None,
    };
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            crate::logging::print_error!("cannot listen on {}: {e}", args.listen);
            return exit::CONFIG;
        }
    };
    let schedule = project.config.schedule.clone();
    let records = records::RecordCache::new(project.lake.clone(), &project.config.name);
    let daemon = Arc::new(Daemon {
        records,
        project,
        tokens,
        alerter,
        run_slot: Arc::new(Mutex::new(())),
        current_run: StdMutex::new(None),
        stopping: CancellationToken::new(),
        cancel_runs: CancellationToken::new(),
        scheduler_alive: AtomicBool::new(schedule.is_none()),
        triggered: TaskTracker::new(),
    });
    let scheduler = schedule.map(|s| {
        tracing::info!(
            "scheduling `{}` ({}, catch_up: {})",
            s.expression,
            s.timezone.name(),
            s.catch_up.as_str()
        );
        tokio::spawn(scheduler::run_loop(daemon.clone(), s))
    });
    if let Some(every) = daemon
        .alerter
        .as_ref()
        .and_then(|a| a.freshness_check_every())
    {
        tokio::spawn(watch_freshness(daemon.clone(), every));
    }
    let app = http::router(daemon.clone(), plan);
    let server_stop = CancellationToken::new();
    let server = {
        let stop = server_stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        })
    };
    eprintln!(
        "sluice serve: pipeline `{}` on http://{}",
        daemon.project.config.name, args.listen
    );

    wait_for_signal().await;
    eprintln!("stopping: taking no new work; an in-flight run has {grace:?} to finish");
    daemon.stopping.cancel();
    daemon.triggered.close();
    let drain = async {
        if let Some(scheduler) = scheduler {
            let _ = scheduler.await;
        }
        daemon.triggered.wait().await;
    };
    tokio::pin!(drain);
    if tokio::time::timeout(grace, &mut drain).await.is_err() {
        eprintln!("stopping: grace period over, cancelling the run (its loads roll back)");
        daemon.cancel_runs.cancel();
        // Cancellation is prompt but cooperative; do not hang forever on a stuck source.
        if tokio::time::timeout(Duration::from_secs(60), &mut drain)
            .await
            .is_err()
        {
            eprintln!("stopping: the run did not stop within 60 s after cancellation");
        }
    }
    server_stop.cancel();
    let _ = server.await;
    exit::OK
}

/// Checks table freshness every `every` until the server stops: a table goes stale
/// while nothing runs, so this cannot wait for a run to end.
async fn watch_freshness(daemon: Arc<Daemon>, every: Duration) {
    let Some(alerter) = &daemon.alerter else {
        return;
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = daemon.stopping.cancelled() => return,
        }
        match daemon.records.all().await {
            Ok(records) => {
                let now = chrono::Utc::now();
                let tables: Vec<_> = http::freshness(&records, now)
                    .into_iter()
                    .map(|t| (t.table, t.last_success))
                    .collect();
                alerter.check_freshness(&tables, now).await;
            }
            Err(e) => tracing::warn!("freshness check: cannot read run records: {e}"),
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
