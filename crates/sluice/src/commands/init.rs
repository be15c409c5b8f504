//! `sluice init [DIR]`: scaffold a pipeline project that runs as is.

use std::path::{Path, PathBuf};

use crate::exit;

#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// Folder to create the project in (created if missing).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Overwrite files that already exist.
    #[arg(long)]
    pub force: bool,
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
const MODEL_README: &str = "SQL models: models/d2a/*.sql (standardised) and models/d2b/*.sql (reporting), one SELECT per file.\n";

pub fn run(args: InitArgs) -> u8 {
    match scaffold(&args.dir, args.force) {
        Ok(created) => {
            for path in &created {
                println!("  created {}", path.display());
            }
            println!(
                "\nNext: cd {} && sluice validate && sluice run",
                args.dir.display()
            );
            exit::OK
        }
        Err(e) => {
            crate::logging::print_error!("{e}");
            exit::CONFIG
        }
    }
}

/// Writes the project files; refuses to overwrite unless `force`.
pub fn scaffold(dir: &Path, force: bool) -> std::io::Result<Vec<PathBuf>> {
    let files: [(&str, &str); 6] = [
        ("pipeline.yaml", PIPELINE),
        (".env.example", ENV_EXAMPLE),
        (".gitignore", GITIGNORE),
        ("data/orders/orders-2024-07-01.ndjson", ORDERS),
        ("data/customers.csv", CUSTOMERS),
        ("models/README.md", MODEL_README),
    ];
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
    std::fs::create_dir_all(dir.join("models/d2a"))?;
    std::fs::create_dir_all(dir.join("models/d2b"))?;
    Ok(created)
}
