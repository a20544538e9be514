//! W3C trace context (`traceparent`) carried in NATS message headers.

use async_nats::HeaderMap;
use opentelemetry::global;
use opentelemetry::propagation::{Extractor, Injector};
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// Writes the current span's trace context into `headers`.
pub fn inject(headers: &mut HeaderMap) {
    let context = tracing::Span::current().context();
    global::get_text_map_propagator(|p| p.inject_context(&context, &mut HeaderInjector(headers)));
}

/// Makes `span` a child of the trace context found in `headers`, if any.
pub fn adopt(span: &tracing::Span, headers: Option<&HeaderMap>) {
    if let Some(headers) = headers
        && headers.get("traceparent").is_some()
    {
        let parent = global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
        let _ = span.set_parent(parent);
    }
}

/// Headers for a new message: the trace context, plus a dedup id when given.
pub fn headers(msg_id: Option<&str>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    inject(&mut headers);
    if let Some(id) = msg_id {
        headers.insert("Nats-Msg-Id", id);
    }
    headers
}
