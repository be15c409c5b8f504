//! Alerts: telling someone when a run fails, is partial, or an error-severity check
//! fails, and again when the pipeline recovers; and when a source's schema changed.
//!
//! ```yaml
//! alerts:
//!   webhook: { url: "${SLACK_WEBHOOK}" }          # Slack-compatible JSON: {"text": …}
//!   email: { smtp: "mail.example.com:587", from: sluice@example.com, to: [data@example.com] }
//!   repeat_after: 1h                              # a problem still there is re-announced this often
//! ```
//!
//! One problem is one alert: while runs keep failing, the same problem is repeated at
//! most once per `repeat_after`; the first good run after it announces the recovery.
//! Every alert names the pipeline, what failed, since when, and links to the run on
//! the dashboard. Sending is best effort: a webhook or SMTP server that is down is
//! logged, never fails a run.

mod freshness;

use std::time::Duration;

use chrono::{DateTime, Utc};
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;
use sluice_core::config::{ConfigError, PipelineConfig};
use sluice_core::lake::Lake;
use sluice_core::run::{RunRecord, RunStatus, TaskStatus};
use tokio::sync::Mutex;

/// `alerts:` in pipeline.yaml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// A Slack-compatible incoming webhook (any endpoint accepting `{"text": …}`).
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
    /// E-mail through an SMTP server.
    #[serde(default)]
    pub email: Option<EmailConfig>,
    /// How long an unchanged problem stays quiet before it is announced again
    /// (`30m`, `1h`, `1d`; default `1h`): a pipeline failing every five minutes
    /// should not send twelve messages an hour.
    #[serde(default = "default_repeat_after")]
    pub repeat_after: String,
    /// Announce tables not loaded for too long (`{warn_after: 26h, tables: {…}}`).
    #[serde(default)]
    pub freshness: Option<freshness::FreshnessConfig>,
}

fn default_repeat_after() -> String {
    "1h".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SmtpSecurity {
    /// Upgrade with STARTTLS (port 587); the default.
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// Plain text: only for a relay on the same host or network you trust.
    Plain,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// `host:port` of the SMTP server.
    pub smtp: String,
    pub from: String,
    /// One address or a list.
    #[serde(deserialize_with = "one_or_many")]
    pub to: Vec<String>,
    #[serde(default)]
    pub security: SmtpSecurity,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// Parses `1h`, `30m`, `45s`, `2d`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return None,
    };
    Some(Duration::from_secs(seconds))
}

/// A validated e-mail channel.
struct Email {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
}

/// What is wrong right now, and since when (kept in the lake across restarts).
#[derive(Debug, Clone, serde::Serialize, Deserialize)]
struct OpenProblem {
    since: DateTime<Utc>,
    last_sent: DateTime<Utc>,
    summary: String,
}

/// Sends alerts for one pipeline and remembers the open problem.
pub struct Alerter {
    pipeline: String,
    /// The dashboard's base URL for links (`http://host:port`).
    dashboard: String,
    webhook: Option<String>,
    email: Option<Email>,
    repeat_after: Duration,
    http: reqwest::Client,
    open: Mutex<Option<OpenProblem>>,
    /// Where the open problem is kept (`_state/<pipeline>/alerts.json`), if anywhere.
    store: Option<Lake>,
    /// Freshness limits per table, if configured.
    freshness: Option<freshness::Watch>,
}

/// One message, rendered for both channels.
#[derive(Debug, Clone)]
pub struct Alert {
    pub subject: String,
    pub body: String,
}

impl Alerter {
    /// The alerter of `config`'s `alerts:`, or `None` when none is configured.
    pub fn from_config(
        config: &PipelineConfig,
        dashboard: &str,
    ) -> Result<Option<Alerter>, ConfigError> {
        let Some(section) = &config.alerts else {
            return Ok(None);
        };
        let parsed: AlertsConfig = config.doc.parse_section(section)?;
        let at = |key: &[&str]| {
            let mut path = section.path.clone();
            path.extend(key.iter().map(|k| k.to_string()));
            path
        };
        let repeat_after = parse_duration(&parsed.repeat_after).ok_or_else(|| {
            config.doc.error_at(
                &at(&["repeat_after"]),
                format!(
                    "`{}` is not a duration (write e.g. `30m`, `1h`, `1d`)",
                    parsed.repeat_after
                ),
            )
        })?;
        if let Some(webhook) = &parsed.webhook {
            reqwest::Url::parse(&webhook.url).map_err(|e| {
                config
                    .doc
                    .error_at(&at(&["webhook", "url"]), format!("not a URL: {e}"))
            })?;
        }
        let email = parsed
            .email
            .as_ref()
            .map(|e| {
                build_email(e)
                    .map_err(|(key, message)| config.doc.error_at(&at(&["email", key]), message))
            })
            .transpose()?;
        let freshness = parsed
            .freshness
            .as_ref()
            .map(|f| {
                freshness::Watch::new(f).map_err(|(key, message)| {
                    let mut path = at(&["freshness"]);
                    path.extend(key);
                    config.doc.error_at(&path, message)
                })
            })
            .transpose()?;
        Ok(Some(Alerter {
            freshness,
            pipeline: config.name.clone(),
            dashboard: dashboard.trim_end_matches('/').to_string(),
            webhook: parsed.webhook.map(|w| w.url),
            email,
            repeat_after,
            // No redirects: an alert (with its run details) goes where it was configured.
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
            open: Mutex::new(None),
            store: None,
        }))
    }

    /// How often `sluice serve` should call [`Alerter::check_freshness`], if at all.
    pub fn freshness_check_every(&self) -> Option<Duration> {
        self.freshness.as_ref().map(freshness::Watch::check_every)
    }

    /// Announces tables that became stale (or fresh again); `tables` are (table,
    /// last successful load). Returns the alerts it sent.
    pub async fn check_freshness(
        &self,
        tables: &[(String, Option<DateTime<Utc>>)],
        now: DateTime<Utc>,
    ) -> Vec<Alert> {
        let Some(watch) = &self.freshness else {
            return Vec::new();
        };
        let alerts = watch
            .check(&self.pipeline, &self.dashboard, tables, now)
            .await;
        for alert in &alerts {
            self.send(alert).await;
        }
        alerts
    }

    fn store_path(&self) -> String {
        format!(
            "{}/alerts.json",
            sluice_core::lake::layout::state(&self.pipeline)
        )
    }

    /// Keeps the open problem in `lake`, and picks up the one a previous process left:
    /// "failing since" and throttling survive a restart.
    pub async fn keep_state_in(mut self, lake: Lake) -> Alerter {
        match lake.get(&self.store_path()).await {
            Ok(Some(bytes)) => match serde_json::from_slice::<Option<OpenProblem>>(&bytes) {
                Ok(open) => *self.open.get_mut() = open,
                Err(e) => tracing::warn!("ignoring unreadable {}: {e}", self.store_path()),
            },
            Ok(None) => {}
            Err(e) => tracing::warn!("cannot read {}: {e}", self.store_path()),
        }
        self.store = Some(lake);
        self
    }

    async fn save(&self, open: &Option<OpenProblem>) {
        let Some(lake) = &self.store else { return };
        let text = serde_json::to_vec_pretty(open).unwrap_or_default();
        if let Err(e) = lake.put(&self.store_path(), text.into()).await {
            tracing::warn!("cannot write {}: {e}", self.store_path());
        }
    }

    /// Looks at a finished run: alerts on a new or still-open problem (throttled),
    /// announces a recovery and source schema changes. Returns the alerts it sent.
    pub async fn after_run(&self, record: &RunRecord) -> Vec<Alert> {
        let mut sent = Vec::new();
        if let Some(alert) = self.problem_alert(record).await {
            sent.push(alert);
        }
        // A schema change is news, not a lasting problem: announced once, never throttled.
        if let Some(alert) = self.schema_alert(record) {
            self.send(&alert).await;
            sent.push(alert);
        }
        sent
    }

    fn schema_alert(&self, record: &RunRecord) -> Option<Alert> {
        let changes: Vec<String> = record
            .tasks
            .iter()
            .flat_map(|t| {
                t.schema_changes
                    .iter()
                    .map(move |c| format!("- {} ({}): {c}", t.task, t.table))
            })
            .collect();
        if changes.is_empty() {
            return None;
        }
        Some(Alert {
            subject: format!("[sluice] {}: source schema changed", self.pipeline),
            body: format!(
                "Pipeline `{}`: run {} found source schema changes:\n{}\nRun: {}",
                self.pipeline,
                record.run_id,
                changes.join("\n"),
                self.run_link(&record.run_id),
            ),
        })
    }

    /// The alert about the run's problem (new, repeated after `repeat_after`) or
    /// about the recovery from the open one; `None` when there is nothing to say.
    async fn problem_alert(&self, record: &RunRecord) -> Option<Alert> {
        let problem = problem_of(record);
        let now = Utc::now();
        let mut open = self.open.lock().await;
        let alert = match (problem, open.as_mut()) {
            (None, None) => return None,
            (None, Some(previous)) => {
                let alert = Alert {
                    subject: format!("[sluice] {}: recovered", self.pipeline),
                    body: format!(
                        "Pipeline `{}` recovered: run {} succeeded.\nIt had been failing since {} ({}).\nRun: {}",
                        self.pipeline,
                        record.run_id,
                        previous.since.format("%Y-%m-%d %H:%M:%S UTC"),
                        previous.summary,
                        self.run_link(&record.run_id),
                    ),
                };
                *open = None;
                alert
            }
            (Some(summary), existing) => {
                let since = match existing {
                    Some(previous) => {
                        let quiet = (now - previous.last_sent)
                            .to_std()
                            .is_ok_and(|elapsed| elapsed < self.repeat_after);
                        if quiet {
                            tracing::info!(run_id = %record.run_id, "alert throttled: {summary}");
                            return None;
                        }
                        previous.since
                    }
                    None => record.started_at,
                };
                *open = Some(OpenProblem {
                    since,
                    last_sent: now,
                    summary: summary.clone(),
                });
                let status = record.status.as_str().to_uppercase();
                Alert {
                    subject: format!("[sluice] {}: run {status}", self.pipeline),
                    body: format!(
                        "Pipeline `{}`: run {} {status}.\n{summary}\nFailing since {}.\nRun: {}",
                        self.pipeline,
                        record.run_id,
                        since.format("%Y-%m-%d %H:%M:%S UTC"),
                        self.run_link(&record.run_id),
                    ),
                }
            }
        };
        self.save(&open).await;
        drop(open);
        self.send(&alert).await;
        Some(alert)
    }

    fn run_link(&self, run_id: &str) -> String {
        format!("{}/runs/{run_id}", self.dashboard)
    }

    async fn send(&self, alert: &Alert) {
        // Error messages come from sources and databases: no secret leaves in an alert.
        let subject = sluice_core::secret::redact(&alert.subject);
        let body = sluice_core::secret::redact(&alert.body);
        if let Some(url) = &self.webhook {
            let text = format!("*{subject}*\n{body}");
            let sent = self
                .http
                .post(url)
                .json(&serde_json::json!({ "text": text }))
                .send()
                .await
                .and_then(|r| r.error_for_status());
            if let Err(e) = sent {
                tracing::warn!(
                    "alert webhook failed: {}",
                    sluice_core::secret::redact(&e.to_string())
                );
            }
        }
        if let Some(email) = &self.email {
            let mut builder = Message::builder().from(email.from.clone()).subject(subject);
            for to in &email.to {
                builder = builder.to(to.clone());
            }
            let sent = match builder.body(body) {
                Ok(message) => email
                    .transport
                    .send(message)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = sent {
                tracing::warn!("alert e-mail failed: {}", sluice_core::secret::redact(&e));
            }
        }
    }
}

/// The transport for `email:`, or the key and message of what is wrong.
fn build_email(config: &EmailConfig) -> Result<Email, (&'static str, String)> {
    let (host, port) = config
        .smtp
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .ok_or(("smtp", format!("`{}` is not `host:port`", config.smtp)))?;
    let mut builder = match config.security {
        SmtpSecurity::Plain => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
        SmtpSecurity::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)
            .map_err(|e| ("smtp", e.to_string()))?,
        SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host)
            .map_err(|e| ("smtp", e.to_string()))?,
    }
    .port(port)
    .timeout(Some(Duration::from_secs(10)));
    if let (Some(user), Some(password)) = (&config.username, &config.password) {
        builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
    }
    let mailbox = |key: &'static str, text: &str| {
        text.parse::<Mailbox>()
            .map_err(|e| (key, format!("`{text}` is not an e-mail address: {e}")))
    };
    if config.to.is_empty() {
        return Err(("to", "name at least one recipient".into()));
    }
    Ok(Email {
        transport: builder.build(),
        from: mailbox("from", &config.from)?,
        to: config
            .to
            .iter()
            .map(|t| mailbox("to", t))
            .collect::<Result<_, _>>()?,
    })
}

/// What went wrong in a run, in a few lines; `None` for a good run.
pub fn problem_of(record: &RunRecord) -> Option<String> {
    let failed_checks: Vec<&str> = record
        .tasks
        .iter()
        .filter(|t| t.status == TaskStatus::Failed && t.task.ends_with(":checks"))
        .map(|t| t.table.as_str())
        .collect();
    let bad_status = matches!(record.status, RunStatus::Failed | RunStatus::Partial);
    if !bad_status && failed_checks.is_empty() {
        return None;
    }
    let mut lines: Vec<String> = record
        .tasks
        .iter()
        .filter(|t| t.status == TaskStatus::Failed)
        .map(|t| {
            let message = t
                .error
                .as_ref()
                .map(|e| e.message.lines().next().unwrap_or("").to_string())
                .unwrap_or_else(|| "failed".into());
            format!("- {} ({}): {message}", t.task, t.table)
        })
        .collect();
    if let Some(error) = &record.error {
        lines.push(format!("- {error}"));
    }
    if !failed_checks.is_empty() {
        lines.push(format!(
            "- error checks failed on: {}",
            failed_checks.join(", ")
        ));
    }
    Some(lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::run::{TaskError, TaskRecord};
    use sluice_core::source::{ErrorClass, RunWindow};

    fn record(id: &str, failed: bool) -> RunRecord {
        let mut task = TaskRecord::new("shop.orders", "d1.shop_orders");
        task.status = if failed {
            TaskStatus::Failed
        } else {
            TaskStatus::Succeeded
        };
        if failed {
            task.error = Some(TaskError {
                class: ErrorClass::Configuration,
                message: "401 from the API\nmore detail".into(),
                config_key: None,
            });
        }
        let mut record = RunRecord {
            run_id: id.into(),
            pipeline: "shop".into(),
            started_at: Utc::now(),
            finished_at: None,
            status: RunStatus::Running,
            window: RunWindow {
                since: None,
                until: None,
                today: Utc::now().date_naive(),
                full_refresh: false,
            },
            select: Vec::new(),
            tasks: vec![task],
            notices: Vec::new(),
            api_usage: Default::default(),
            error: None,
        };
        record.settle(false);
        record
    }

    fn silent_alerter() -> Alerter {
        Alerter {
            pipeline: "shop".into(),
            dashboard: "http://dash".into(),
            webhook: None,
            email: None,
            repeat_after: Duration::from_secs(3600),
            http: reqwest::Client::new(),
            open: Mutex::new(None),
            store: None,
            freshness: None,
        }
    }

    #[tokio::test]
    async fn a_problem_is_announced_once_then_its_recovery() {
        let alerter = silent_alerter();
        assert!(alerter.problem_alert(&record("r0", false)).await.is_none());
        let first = alerter.problem_alert(&record("r1", true)).await.unwrap();
        assert_eq!(first.subject, "[sluice] shop: run FAILED");
        assert!(first
            .body
            .contains("- shop.orders (d1.shop_orders): 401 from the API\n"));
        assert!(first.body.contains("http://dash/runs/r1"));
        assert!(alerter.problem_alert(&record("r2", true)).await.is_none());
        let recovered = alerter.problem_alert(&record("r3", false)).await.unwrap();
        assert!(recovered.subject.ends_with("recovered"), "{recovered:?}");
        assert!(recovered.body.contains("http://dash/runs/r3"));
        assert!(alerter.problem_alert(&record("r4", false)).await.is_none());
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(parse_duration("30m"), Some(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2d"), Some(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration("5 weeks"), None);
    }
}
