//! `sluice init [DIR]`: scaffold a pipeline project that runs as is — a small
//! files pipeline with a model and its checks, or (`--template marketing`) the full
//! example marketing project, pointed at `sluice sandbox serve`.

use std::path::{Path, PathBuf};

use crate::exit;

/// What `init` scaffolds.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Template {
    /// Files → lake → SQLite, with one model and its checks (runs offline).
    #[default]
    Shop,
    /// The example marketing project: Facebook Ads, Google Ads, CleverTap, its
    /// models and checks; `.env.example` points at `sluice sandbox serve`.
    Marketing,
}

#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// Folder to create the project in (created if missing).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Overwrite files that already exist.
    #[arg(long)]
    pub force: bool,
    /// The project to scaffold.
    #[arg(long, value_enum, default_value_t = Template::Shop)]
    pub template: Template,
}

const PIPELINE: &str = r#"# A sluice pipeline. Reference: README.md ("Pipeline file").
name: shop
lake: ./lake                      # or s3://bucket/prefix, gs://…, az://…
# destination:                    # default: SQLite at ./warehouse.db
#   type: postgres
#   url: ${WAREHOUSE_URL}         # secrets from the environment, .env or ${file:/run/secrets/x}

sources:
  shop:
    type: files
    streams:
      orders:
        path: data/orders/*.ndjson
        columns: { order_id: bigint, customer_id: text, amount: "numeric(12,2)", order_date: date }
        primary_key: [order_id]
        partition_column: order_date
        write_mode: overwrite_partitions
      customers:
        path: data/customers.csv
        columns: { customer_id: text, signed_up: date }
        primary_key: [customer_id]
        write_mode: merge

models: ./models
schedule: "0 5 * * *"
"#;

const ENV_EXAMPLE: &str = "# Copy to .env (never commit .env). Values here are read as ${NAME} in pipeline.yaml.\nWAREHOUSE_URL=postgres://user:password@localhost:5432/warehouse\n";
const GITIGNORE: &str = ".env\n/lake\n/warehouse.db*\n/docs-site\n";
const ORDERS: &str = r#"{"order_id": 1, "customer_id": "C-1", "amount": "19.99", "order_date": "2024-07-01", "channel": "web"}
{"order_id": 2, "customer_id": "C-2", "amount": "5.00", "order_date": "2024-07-01", "channel": "app"}
{"order_id": 3, "customer_id": "C-1", "amount": "42.10", "order_date": "2024-07-02", "channel": "web"}
"#;
const CUSTOMERS: &str =
    "customer_id,name,signed_up\nC-1,\"Smith, Ann\",2024-06-01\nC-2,Bob Müller,2024-06-15\n";
const MODEL_README: &str = "SQL models: models/d2a/*.sql (standardised) and models/d2b/*.sql (reporting), one SELECT per file.\nChecks and descriptions go beside each model in a .yml of the same name.\n";
const MODEL_SQL: &str = "-- One row per order, amounts in the order's currency. Read by reports.\n\
SELECT order_id, customer_id, amount, order_date\n\
FROM d1.shop_orders\n";
const MODEL_YML: &str = r#"description: Orders, one row each, as reports read them.
primary_key: [order_id]
checks:
  # A failing `error` check keeps the previous table and fails the run; a failing
  # `warn` check publishes and reports. Failing rows go to the quarantine
  # (`sluice quarantine list`).
  - not_null: [order_id, customer_id, amount, order_date]
  - unique: order_id
  - range: { column: amount, min: 0 }
  - sql: "SELECT * FROM this WHERE order_date > current_date"
    name: no_future_orders
    severity: warn
"#;
const README: &str = r#"# shop — a sluice pipeline

`pipeline.yaml` reads the files under `data/` into the lake (`./lake`) and the
warehouse (SQLite at `./warehouse.db` until you set a `destination:`);
`models/d2a/orders_clean.sql` builds a table from them, checked by
`models/d2a/orders_clean.yml`.

## Working on it

| | |
|---|---|
| `sluice validate` | check pipeline.yaml and the models (errors name file:line) |
| `sluice run` | extract what is new, build the models, run their checks, load |
| `sluice test` | run the checks again over what is published (`--junit report.xml` for CI) |
| `sluice show orders_clean` | preview a model's rows without publishing |
| `sluice quarantine list` | records that did not type, and rows that failed checks |
| `sluice quarantine retry shop_orders` | after fixing the config, load the records that now type |
| `sluice runs` | run history |

Add a model: a `SELECT` in `models/d2a/<name>.sql` (or `d2b` for reports) reading
`d1.<source>_<stream>` or other models, and its checks in `<name>.yml`.
Secrets go in `.env` (see `.env.example`), never in pipeline.yaml.
"#;
const MARKETING_README: &str = r#"# marketing — the sluice example project

Facebook Ads, Google Ads and CleverTap → lake → warehouse, with standardised
(`models/d2a`) and reporting (`models/d2b`) models and their checks.

## Run it against the sandbox

```sh
sluice sandbox serve &        # the three APIs, emulated, on 127.0.0.1:8990
cp .env.example .env          # the sandbox's address and its (fake) credentials
sluice validate && sluice run
sluice show channel_spend_daily
```

For the real services, drop `SANDBOX_URL` and `GOOGLE_TOKEN_URL` from `.env` and
put your own credentials there; set `PII_HMAC_KEY` (`openssl rand -hex 32`).
"#;

pub fn run(args: InitArgs) -> u8 {
    let result = match args.template {
        Template::Shop => scaffold(&args.dir, args.force),
        Template::Marketing => scaffold_marketing(&args.dir, args.force),
    };
    match result {
        Ok(created) => {
            for path in &created {
                println!("  created {}", path.display());
            }
            match args.template {
                Template::Shop => println!(
                    "\nNext: cd {} && sluice validate && sluice run",
                    args.dir.display()
                ),
                Template::Marketing => println!(
                    "\nNext: sluice sandbox serve &  then  cd {} && cp .env.example .env && sluice validate && sluice run",
                    args.dir.display()
                ),
            }
            exit::OK
        }
        Err(e) => {
            crate::logging::print_error!("{e}");
            exit::CONFIG
        }
    }
}

/// Writes the starter project; refuses to overwrite unless `force`.
pub fn scaffold(dir: &Path, force: bool) -> std::io::Result<Vec<PathBuf>> {
    let files = [
        ("pipeline.yaml", PIPELINE.to_string()),
        (".env.example", ENV_EXAMPLE.to_string()),
        (".gitignore", GITIGNORE.to_string()),
        ("README.md", README.to_string()),
        ("data/orders/orders-2024-07-01.ndjson", ORDERS.to_string()),
        ("data/customers.csv", CUSTOMERS.to_string()),
        ("models/README.md", MODEL_README.to_string()),
        ("models/d2a/orders_clean.sql", MODEL_SQL.to_string()),
        ("models/d2a/orders_clean.yml", MODEL_YML.to_string()),
    ];
    let created = write_files(dir, &files, force)?;
    std::fs::create_dir_all(dir.join("models/d2b"))?;
    Ok(created)
}

/// Writes the example marketing project, its `.env.example` pointing at
/// `sluice sandbox serve` on its default port, history from 30 days back.
pub fn scaffold_marketing(dir: &Path, force: bool) -> std::io::Result<Vec<PathBuf>> {
    use super::example::{sandbox_env, MODELS, PIPELINE};
    let start = chrono::Utc::now().date_naive() - chrono::Duration::days(30);
    let env = format!(
        "# Copy to .env (never commit .env). As written, it points at `sluice sandbox serve`\n\
         # (fake credentials); for the real APIs drop SANDBOX_URL and GOOGLE_TOKEN_URL and\n\
         # put your own credentials.\n{}",
        sandbox_env("http://127.0.0.1:8990", start)
    );
    let mut files = vec![
        ("pipeline.yaml".to_string(), PIPELINE.to_string()),
        (".env.example".to_string(), env),
        (".gitignore".to_string(), GITIGNORE.to_string()),
        ("README.md".to_string(), MARKETING_README.to_string()),
    ];
    files.extend(
        MODELS
            .iter()
            .map(|(path, content)| (format!("models/{path}"), content.to_string())),
    );
    let files: Vec<(&str, String)> = files.iter().map(|(p, c)| (p.as_str(), c.clone())).collect();
    let mut created = write_files(dir, &files, force)?;
    // The `crm` source's database: the same customers `sluice demo` writes.
    let crm = dir.join(super::example::CRM_DATABASE);
    super::example::write_crm_database(&crm, &super::example::crm_customers(7, 300))?;
    created.push(crm);
    Ok(created)
}

/// Writes `files` under `dir`; refuses to overwrite any unless `force`.
fn write_files(dir: &Path, files: &[(&str, String)], force: bool) -> std::io::Result<Vec<PathBuf>> {
    if !force {
        if let Some((existing, _)) = files.iter().find(|(p, _)| dir.join(p).exists()) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} already exists (use --force to overwrite)",
                    dir.join(existing).display()
                ),
            ));
        }
    }
    let mut created = Vec::new();
    for (path, content) in files {
        let full = dir.join(path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&full, content)?;
        created.push(full);
    }
    Ok(created)
}
