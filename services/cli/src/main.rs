//! `optikon`: see the library for what it does.

use clap::Parser;
use optikon_cli::{BadInput, EXIT_BAD_INPUT, EXIT_FAILED, args::Cli};

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    optikon_runtime::telemetry::init_cli("optikon");
    // The root of the trace every request of this command carries (`traceparent`).
    let span = tracing::info_span!("optikon");
    let code = match tracing::Instrument::instrument(optikon_cli::run(cli), span).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            if error.downcast_ref::<BadInput>().is_some() {
                EXIT_BAD_INPUT
            } else {
                EXIT_FAILED
            }
        }
    };
    std::process::exit(code);
}
