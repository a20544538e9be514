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
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::args::{LogFormat, TelemetryArgs};

/// Sets up logging (filter from `RUST_LOG`, default `info`) and trace propagation.
pub fn init(args: &TelemetryArgs, service: &'static str) {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = SdkTracerProvider::builder().build();
    let tracer = provider.tracer(service);
    global::set_tracer_provider(provider);

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let otel = tracing_opentelemetry::layer().with_tracer(tracer);
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let result = match args.log_format {
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_target(false))
            .try_init(),
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json())
            .try_init(),
    };
    if result.is_err() {
        tracing::debug!("a tracing subscriber was already installed");
    }
}
