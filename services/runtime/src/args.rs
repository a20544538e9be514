//! Flags shared by every service, each also settable from the environment.

use clap::{Args, ValueEnum};

#[derive(Debug, Clone, Args)]
pub struct NatsArgs {
    /// NATS server to connect to (with credentials as `nats://user:password@host:port`).
    #[arg(
        long,
        env = "OPTIKON_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
}

#[derive(Debug, Clone, Args)]
pub struct TelemetryArgs {
    /// Log line format.
    #[arg(long, env = "OPTIKON_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}
