//! gateway: the Edge Manager page, an HTTP API (`/api/v1`), the original Optikon REST API
//! (`/v0`) and live status over Server-Sent Events — a stateless client of the NATS API.
//!
//! - [`clusters`], [`charts`], [`releases`]: the `/api/v1` resources.
//! - [`events`]: one set of NATS subscriptions fanned out to every SSE client.
//! - [`v0`]: the 2018 API's shapes, with CORS, for existing clients.
//! - [`page`]: the Edge Manager page (static files built into the binary).
//! - [`openapi`]: the OpenAPI 3 document of all of the above.
//!
//! Every answer is read from the hub's KV buckets or streams at request time; the gateway
//! keeps nothing, so any number of replicas can serve behind a load balancer.

pub mod charts;
pub mod clusters;
pub mod error;
pub mod events;
pub mod openapi;
pub mod page;
pub mod releases;
pub mod routes;
pub mod upload;
pub mod v0;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use clap::Parser;
use optikon_client::Client;
use optikon_runtime::args::{NatsArgs, TelemetryArgs};
use optikon_runtime::shutdown::Shutdown;

use crate::error::{HttpError, V0Error};
use crate::routes::Routes;

#[derive(Debug, Clone, Parser)]
#[command(about = "Optikon's HTTP gateway: the Edge Manager page, the HTTP API and live status")]
pub struct Args {
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    /// Address to serve HTTP on (`0.0.0.0:8080` to serve other machines).
    #[arg(long, env = "OPTIKON_GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Seconds a release call waits for every cluster to finish, unless it asks otherwise
    /// (`?timeout=`).
    #[arg(long, env = "OPTIKON_GATEWAY_TIMEOUT", default_value_t = 120)]
    pub timeout: u64,
}

impl Args {
    pub fn config(&self) -> GatewayConfig {
        GatewayConfig {
            default_timeout: Duration::from_secs(self.timeout),
            ..GatewayConfig::default()
        }
    }
}

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// How long a release call waits when it does not say (`?timeout=`).
    pub default_timeout: Duration,
    /// The longest wait a call may ask for.
    pub max_timeout: Duration,
    /// Largest request body: a chart upload (chart-ingest's own limit is 10 MiB) plus room
    /// for the multipart envelope.
    pub max_body_bytes: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            default_timeout: Duration::from_secs(120),
            max_timeout: Duration::from_secs(3600),
            max_body_bytes: 16 << 20,
        }
    }
}

/// What every handler gets: the NATS API client and the live event fan-out.
#[derive(Clone)]
pub struct Gateway {
    pub client: Client,
    pub config: Arc<GatewayConfig>,
    pub events: events::EventHub,
    pub shutdown: Shutdown,
}

impl Gateway {
    /// Connects the fan-out of live events; it runs until `shutdown`.
    pub fn new(nats: async_nats::Client, config: GatewayConfig, shutdown: Shutdown) -> Self {
        let client = Client::new(nats);
        let events = events::EventHub::start(client.clone(), shutdown.clone());
        Gateway {
            client,
            config: Arc::new(config),
            events,
            shutdown,
        }
    }
}

/// Every route: the page, `/api/v1` and `/v0`, with the table the OpenAPI test checks.
pub fn routes() -> Routes<Gateway> {
    Routes::new()
        .merge(page::routes())
        .merge(
            Routes::new()
                .get("/api/v1/health", health)
                .get("/api/v1/openapi.json", openapi::serve)
                .get("/api/v1/events", events::stream)
                .merge(clusters::routes())
                .merge(charts::routes())
                .merge(releases::routes()),
        )
        .merge(v0::routes())
}

/// The complete application, ready to serve.
pub fn app(gateway: Gateway) -> axum::Router {
    let max_body = gateway.config.max_body_bytes;
    routes()
        .router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(gateway)
}

/// Serves on `listener` until `shutdown`; SSE streams end with it, so the server stops.
pub async fn serve(
    nats: async_nats::Client,
    listener: tokio::net::TcpListener,
    config: GatewayConfig,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let gateway = Gateway::new(nats, config, shutdown.clone());
    let address = listener.local_addr()?;
    tracing::info!(%address, "gateway ready");
    axum::serve(listener, app(gateway))
        .with_graceful_shutdown(async move { shutdown.wait().await })
        .await
}

async fn health(State(gateway): State<Gateway>) -> Response {
    let state = gateway.client.nats().connection_state();
    let connected = matches!(state, async_nats::connection::State::Connected);
    let body = serde_json::json!({
        "status": if connected { "ok" } else { "degraded" },
        "nats": state.to_string(),
    });
    let status = if connected {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn not_found(uri: Uri) -> Response {
    let message = format!("no such route: {}; see /api/v1/openapi.json", uri.path());
    let error = HttpError::new(StatusCode::NOT_FOUND, "not_found", message);
    if uri.path().starts_with("/v0/") {
        V0Error(error).into_response()
    } else {
        error.into_response()
    }
}

pub(crate) async fn method_not_allowed(uri: Uri, method: axum::http::Method) -> Response {
    let message = format!(
        "{method} is not allowed on {}; see /api/v1/openapi.json",
        uri.path()
    );
    let error = HttpError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        message,
    );
    if uri.path().starts_with("/v0/") {
        V0Error(error).into_response()
    } else {
        error.into_response()
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    #[test]
    fn args_are_consistent() {
        use clap::CommandFactory;
        super::Args::command().debug_assert();
    }

    /// The app with a NATS client that never connects: enough for everything the gateway
    /// decides before asking the hub.
    async fn offline_app() -> axum::Router {
        let nats = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("127.0.0.1:9")
            .await
            .expect("a client that retries in the background");
        app(Gateway::new(
            nats,
            GatewayConfig::default(),
            Shutdown::new(),
        ))
    }

    async fn call(
        request: Request<Body>,
    ) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
        let response = offline_app().await.oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (parts.status, parts.headers, json)
    }

    fn post(uri: &str, body: &str) -> Request<Body> {
        Request::post(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap()
    }

    #[tokio::test]
    async fn bad_release_requests_are_refused_before_reaching_the_hub() {
        let cases = [
            (
                r#"{"release":"web","namespace":"default","chart":{"name":"nginx"}}"#,
                "invalid_request",
                "selector",
            ),
            (
                r#"{"release":"Web!","namespace":"default","selector":"","chart":{"name":"nginx"}}"#,
                "bad_release_name",
                "Web!",
            ),
            (
                r#"{"release":"web","namespace":"default","selector":"a in (","chart":{"name":"nginx"}}"#,
                "bad_selector",
                "a in (",
            ),
            (
                r#"{"release":"web","namespace":"default","selector":"","chart":{"name":"nginx"},"values":"a: [1"}"#,
                "bad_values",
                "values",
            ),
            (r#"{"release":"web""#, "malformed_message", "EOF"),
        ];
        for (body, code, mentions) in cases {
            let (status, _, json) = call(post("/api/v1/releases", body)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {json}");
            assert_eq!(json["code"], code, "{body}: {json}");
            let message = json["message"].as_str().unwrap();
            assert!(message.contains(mentions), "{body}: {message}");
        }
        let (status, _, json) = call(post("/api/v1/releases?timeout=0", "{}")).await;
        assert_eq!(
            (status, json["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_request"))
        );
    }

    #[tokio::test]
    async fn v0_answers_cors_preflight_for_any_origin() {
        let request = Request::options("/v0/releases/nginx?labels=ID%3D123")
            .header(header::ORIGIN, "http://legacy.example")
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "DELETE")
            .body(Body::empty())
            .unwrap();
        let (status, headers, _) = call(request).await;
        assert!(status.is_success(), "{status}");
        assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        let methods = headers[header::ACCESS_CONTROL_ALLOW_METHODS]
            .to_str()
            .unwrap();
        for method in ["GET", "POST", "PUT", "DELETE", "OPTIONS"] {
            assert!(methods.contains(method), "{methods}");
        }
    }

    #[tokio::test]
    async fn v0_errors_carry_the_status_as_a_number() {
        let (status, headers, json) = call(
            Request::post("/v0/releases")
                .header(header::ORIGIN, "http://legacy.example")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(json["code"], 400);
        assert!(
            json["message"].as_str().unwrap().contains("labels"),
            "{json}"
        );
        assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    }

    #[tokio::test]
    async fn unknown_routes_answer_in_json() {
        let (status, _, json) =
            call(Request::get("/api/v1/nothing").body(Body::empty()).unwrap()).await;
        assert_eq!(
            (status, json["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found"))
        );
        let (status, _, json) = call(
            Request::delete("/api/v1/clusters")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(
            (status, json["code"].as_str()),
            (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed"))
        );
    }

    #[tokio::test]
    async fn the_page_and_its_files_are_served() {
        for (path, kind) in [
            ("/", "text/html"),
            ("/app.js", "text/javascript"),
            ("/style.css", "text/css"),
        ] {
            let response = offline_app()
                .await
                .oneshot(Request::get(path).body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            let content_type = response.headers()[header::CONTENT_TYPE].to_str().unwrap();
            assert!(content_type.starts_with(kind), "{path}: {content_type}");
        }
    }
}
