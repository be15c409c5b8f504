//! Shared helpers for the CLI's end-to-end tests: a project folder, the real
//! binary, and a real PostgreSQL (never skipped: a missing database fails the test).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;

/// The test PostgreSQL URL (see scripts/test, which finds or starts one).
pub fn pg_url() -> String {
    std::env::var("SLUICE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Rows of a SQLite database as strings, `|`-joined, NULL as `∅`.
pub fn sqlite_text_rows(db: &rusqlite::Connection, sql: &str) -> Vec<String> {
    let mut statement = db.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let width = statement.column_count();
    let rows = statement
        .query_map([], |row| {
            Ok((0..width)
                .map(|i| match row.get_ref(i).unwrap() {
                    rusqlite::types::ValueRef::Null => "∅".to_string(),
                    rusqlite::types::ValueRef::Integer(n) => n.to_string(),
                    rusqlite::types::ValueRef::Real(f) => format!("{f:?}"),
                    rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                    rusqlite::types::ValueRef::Blob(b) => format!("blob:{b:?}"),
                })
                .collect::<Vec<_>>()
                .join("|"))
        })
        .unwrap();
    rows.map(Result::unwrap).collect()
}

/// The test MariaDB / MySQL URL (see scripts/lib/mysql.sh).
pub fn mysql_url() -> String {
    std::env::var("SLUICE_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

/// SQL through MariaDB's own command-line client on the test server; rows as
/// tab-separated lines. A missing client or server fails the test.
pub fn mariadb_cli(sql: &str) -> Vec<String> {
    let url = reqwest::Url::parse(&mysql_url()).expect("SLUICE_TEST_MYSQL_URL is a URL");
    let mut cmd = std::process::Command::new("mysql");
    cmd.args(["-h", url.host_str().unwrap_or("127.0.0.1")])
        .args(["-P", &url.port().unwrap_or(3306).to_string()])
        .args([
            "-u",
            url.username(),
            "--protocol=TCP",
            "-N",
            "-B",
            "-e",
            sql,
        ])
        .env("MYSQL_PWD", url.password().unwrap_or_default());
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("MariaDB's `mysql` client is required for this test: {e} (apt-get install mariadb-client)"));
    assert!(
        out.status.success(),
        "MariaDB is required for this test and failed at {}: {sql}: {}",
        mysql_url(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

/// A schema prefix unique to this test, so parallel tests never share tables.
pub fn unique_prefix(test: &str) -> String {
    format!("t{}_{}_", std::process::id(), test)
}

pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    pub fn new(pipeline: &str) -> Project {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("pipeline.yaml"), pipeline).expect("write pipeline");
        Project { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, relative: &str, content: impl AsRef<[u8]>) {
        let path = self.dir.path().join(relative);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, content).expect("write file");
    }

    pub fn cmd(&self) -> Command {
        let mut cmd = Command::cargo_bin("sluice").expect("sluice binary");
        cmd.current_dir(self.dir.path())
            .env_remove("RUST_LOG")
            .env("SLUICE_LOG", "info");
        cmd
    }

    /// `sluice run ARGS…`, returning the output whatever the exit code.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd()
            .arg("run")
            .args(args)
            .output()
            .expect("run sluice")
    }

    pub fn sqlite(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.dir.path().join("warehouse.db")).expect("open warehouse.db")
    }

    pub fn lake_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![self.dir.path().join("lake")];
        while let Some(dir) = stack.pop() {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for e in entries.flatten() {
                    let p = e.path();
                    if p.is_dir() {
                        stack.push(p);
                    } else {
                        out.push(p);
                    }
                }
            }
        }
        out
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the exit code, printing both streams when it differs.
pub fn assert_exit(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "exit code\n--- stdout\n{}\n--- stderr\n{}",
        stdout(o),
        stderr(o)
    );
}

/// A blocking PostgreSQL client for assertions.
pub struct Pg {
    runtime: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl Pg {
    pub fn connect() -> Pg {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let url = pg_url();
        let client = runtime.block_on(async {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "PostgreSQL is required for this test and is not reachable at {url}: {e}"
                    )
                });
            tokio::spawn(conn);
            client
        });
        Pg { runtime, client }
    }

    pub fn scalar_i64(&self, sql: &str) -> i64 {
        self.runtime
            .block_on(self.client.query_one(sql, &[]))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
    }

    pub fn strings(&self, sql: &str) -> Vec<String> {
        self.runtime
            .block_on(self.client.query(sql, &[]))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect()
    }

    /// Like [`Pg::strings`], with the server's refusal as the error (permission tests).
    pub fn try_strings(&self, sql: &str) -> Result<Vec<String>, String> {
        self.runtime
            .block_on(self.client.query(sql, &[]))
            .map(|rows| rows.iter().map(|r| r.get::<_, String>(0)).collect())
            .map_err(|e| match e.as_db_error() {
                Some(db) => format!("{} ({})", db.message(), db.code().code()),
                None => e.to_string(),
            })
    }

    pub fn table_exists(&self, schema: &str, table: &str) -> bool {
        let sql = format!(
            "select count(*) from information_schema.tables where table_schema = '{schema}' and table_name = '{table}'"
        );
        self.scalar_i64(&sql) > 0
    }

    pub fn execute(&self, sql: &str) {
        self.runtime
            .block_on(self.client.batch_execute(sql))
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Drops every schema starting with `prefix`.
    pub fn drop_schemas(&self, prefix: &str) {
        let schemas = self.strings(&format!(
            "select schema_name::text from information_schema.schemata where schema_name like '{prefix}%'"
        ));
        for s in schemas {
            self.execute(&format!("drop schema if exists \"{s}\" cascade"));
        }
    }
}

/// NDJSON orders: `count` rows with ids from `first_id`, spread over days of July 2024.
pub fn orders_ndjson(first_id: u64, count: u64) -> String {
    let mut s = String::new();
    for id in first_id..first_id + count {
        let day = 1 + id % 28;
        s.push_str(&format!(
            "{{\"order_id\": {id}, \"customer_id\": \"C-{}\", \"amount\": \"{}.{:02}\", \"order_date\": \"2024-07-{day:02}\", \"note\": \"a \\\"quoted\\\", comma\\nline ü\"}}\n",
            id % 97,
            id % 500,
            id % 100
        ));
    }
    s
}

/// "12.340000" → 1234: exact decimal text to cents (sub-cent digits must be zero).
pub fn cents(s: &str) -> i64 {
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let frac = format!("{frac:0<2}");
    assert!(frac[2..].chars().all(|c| c == '0'), "sub-cent amount {s}");
    whole.parse::<i64>().unwrap() * 100 + frac[..2].parse::<i64>().unwrap()
}

/// The pinned test venv's Python (`$SLUICE_TEST_PYTHON`, else target/py); fails
/// loudly, saying how to create it, when it is missing.
pub fn python() -> PathBuf {
    let path = std::env::var_os("SLUICE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/py/bin/python")
        });
    assert!(
        path.exists(),
        "{} not found: run ./scripts/test, or `source scripts/lib/python.sh && ensure_test_python`, \
         to create the pinned test venv",
        path.display()
    );
    path
}

/// The pinned Singer tap `tap-spreadsheets` (`$SLUICE_TEST_TAP_SPREADSHEETS`, else
/// target/py-taps); fails loudly, saying how to install it, when it is missing.
pub fn tap_spreadsheets() -> PathBuf {
    let path = std::env::var_os("SLUICE_TEST_TAP_SPREADSHEETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/py-taps/bin/tap-spreadsheets")
        });
    assert!(
        path.exists(),
        "{} not found: run ./scripts/test, or `source scripts/lib/python.sh && ensure_tap_python`, \
         to create the pinned Singer tap venv",
        path.display()
    );
    path
}

/// The in-process API sandbox on a loopback port, on its own runtime, shut down on drop.
pub struct TestSandbox {
    runtime: tokio::runtime::Runtime,
    running: Option<sluice_sandbox::RunningSandbox>,
    pub options: sluice_sandbox::SandboxOptions,
}

impl TestSandbox {
    pub fn start(options: sluice_sandbox::SandboxOptions) -> TestSandbox {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let running = runtime
            .block_on(sluice_sandbox::start(options.clone(), 0))
            .expect("sandbox starts");
        TestSandbox {
            runtime,
            running: Some(running),
            options,
        }
    }

    pub fn url(&self) -> String {
        self.running.as_ref().expect("running").base_url()
    }

    /// Requests the sandbox has answered so far.
    pub fn request_count(&self) -> u64 {
        self.running.as_ref().expect("running").request_count()
    }
}

impl Drop for TestSandbox {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            self.runtime.block_on(running.shutdown());
        }
    }
}

/// The example project copied into a temp folder, its `.env` pointing at `base_url`.
pub fn example_project(base_url: &str) -> Project {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/marketing");
    let project = Project::new(&std::fs::read_to_string(example.join("pipeline.yaml")).unwrap());
    for layer in ["d2a", "d2b"] {
        for entry in std::fs::read_dir(example.join("models").join(layer)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap();
            project.write(
                &format!("models/{layer}/{name}"),
                std::fs::read(&path).unwrap(),
            );
        }
    }
    project.write(
        "models/currency_rates.csv",
        std::fs::read(example.join("models/currency_rates.csv")).unwrap(),
    );
    // The `crm` source's SQLite file (`sluice demo` writes a bigger one): one customer
    // with a street address, one whose address is shaped like an SSN.
    rusqlite::Connection::open(project.path().join("crm.db"))
        .unwrap()
        .execute_batch(
            "CREATE TABLE customers (customer_id INTEGER PRIMARY KEY, email TEXT NOT NULL, phone TEXT,
               address TEXT, lifetime_value DECIMAL(12,2) NOT NULL, signed_up_on DATE NOT NULL,
               is_active BOOLEAN NOT NULL, updated_at DATETIME NOT NULL);
             INSERT INTO customers VALUES
               (1001, 'ann@example.com', '+1 555 010 0001', '4 Elm St, Cork', 12.5, '2024-01-02', 1, '2024-01-02 09:00:00'),
               (1002, 'bo@example.com', '+1 555 010 0002', '123-45-6789', 0, '2024-02-03', 0, '2024-02-03 09:00:00');",
        )
        .unwrap();
    let start = chrono::Utc::now().date_naive() - chrono::Duration::days(3);
    project.write(
        ".env",
        format!(
            "SANDBOX_URL={base_url}\nGOOGLE_TOKEN_URL={base_url}/token\nSTART_DATE={start}\n\
             FB_TOKEN={}\nGADS_DEV_TOKEN={}\nGADS_CLIENT_ID={}\nGADS_CLIENT_SECRET={}\nGADS_REFRESH_TOKEN={}\n\
             GADS_MANAGER_ID={}\nCT_ACCOUNT={}\nCT_PASSCODE={}\n",
            sluice_sandbox::credentials::FACEBOOK_ACCESS_TOKEN,
            sluice_sandbox::credentials::GOOGLE_DEVELOPER_TOKEN,
            sluice_sandbox::credentials::GOOGLE_CLIENT_ID,
            sluice_sandbox::credentials::GOOGLE_CLIENT_SECRET,
            sluice_sandbox::credentials::GOOGLE_REFRESH_TOKEN,
            sluice_sandbox::credentials::GOOGLE_MANAGER_CUSTOMER_ID,
            sluice_sandbox::credentials::CLEVERTAP_ACCOUNT_ID,
            sluice_sandbox::credentials::CLEVERTAP_PASSCODE,
        ),
    );
    project
}

/// Headless Chromium (`$SLUICE_TEST_CHROMIUM`, found or installed by scripts/test).
pub fn chromium() -> std::path::PathBuf {
    let found = std::env::var_os("SLUICE_TEST_CHROMIUM")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            ["chromium", "chromium-browser", "google-chrome"]
                .iter()
                .map(|name| std::path::Path::new("/usr/bin").join(name))
                .find(|p| p.exists())
        });
    found.expect(
        "headless Chromium not found: run ./scripts/test (it installs Debian's chromium), \
         or set SLUICE_TEST_CHROMIUM",
    )
}

/// Chromium's rendering of `url`: the DOM after load, and a screenshot at `png`.
pub fn render(url: &str, png: &std::path::Path) -> String {
    let profile = tempfile::tempdir().unwrap();
    let common = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
    ];
    let profile_arg = format!("--user-data-dir={}", profile.path().display());
    let dom = std::process::Command::new(chromium())
        .args(common)
        .arg(&profile_arg)
        .args(["--dump-dom", url])
        .output()
        .expect("run chromium");
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let shot = std::process::Command::new(chromium())
        .args(common)
        .arg(&profile_arg)
        .arg(format!("--screenshot={}", png.display()))
        .args(["--window-size=1280,1400", url])
        .output()
        .expect("run chromium");
    assert!(
        shot.status.success(),
        "{}",
        String::from_utf8_lossy(&shot.stderr)
    );
    String::from_utf8(dom.stdout).unwrap()
}
