//! Installs the tracing subscriber and the OpenTelemetry tracer of a service binary.
//!
//! Libraries only emit `tracing` events; this is the one place that decides where they go.
//! Spans get OpenTelemetry trace ids so `traceparent` can ride in NATS headers across hops
//! (see [`crate::trace`]); no exporter is configured, so nothing leaves the machine.

use opentelemetry::global;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::args::{LogFormat, TelemetryArgs};

/// Sets up logging (filter from `RUST_LOG`, default `info`) and trace propagation.
pub fn init(args: &TelemetryArgs, service: &'static str) {
    install(service, args.log_format, "info", false);
}

/// For command-line tools: only warnings (unless `RUST_LOG` says otherwise), on stderr, so
/// stdout stays clean for tables and JSON; spans still carry trace context.
pub fn init_cli(service: &'static str) {
    install(service, LogFormat::Text, "warn", true);
}

fn install(service: &'static str, format: LogFormat, default_filter: &str, to_stderr: bool) {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = SdkTracerProvider::builder().build();
    let tracer = provider.tracer(service);
    global::set_tracer_provider(provider);

    // The filter applies to log output only: spans below the log level still get trace
    // context, so `traceparent` propagates whatever the log level.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let otel = tracing_opentelemetry::layer().with_tracer(tracer);
    let registry = tracing_subscriber::registry().with(otel);
    let result = match (format, to_stderr) {
        (LogFormat::Text, false) => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .with_filter(filter),
            )
            .try_init(),
        (LogFormat::Text, true) => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .try_init(),
        (LogFormat::Json, _) => registry
            .with(tracing_subscriber::fmt::layer().json().with_filter(filter))
            .try_init(),
    };
    if result.is_err() {
        tracing::debug!("a tracing subscriber was already installed");
    }
}
