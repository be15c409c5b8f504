//! Run the sandbox without the main binary: `cargo run -p sluice-sandbox --example serve -- serve --port 0`.
use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: sluice_sandbox::cli::SandboxCommand,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sluice_sandbox::cli::run(Cli::parse().cmd).await
}
