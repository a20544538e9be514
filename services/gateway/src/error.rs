//! HTTP errors: a status and a JSON body `{"code": "...", "message": "..."}` that says what
//! was wrong (the `/v0` API writes the code as the HTTP status number instead).

use std::borrow::Cow;

use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use optikon_client::ClientError;
use optikon_core::message::{ApiError, ErrorCode};
use serde::de::DeserializeOwned;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct HttpError {
    pub status: StatusCode,
    /// Machine-readable: the NATS API's error codes (`bad_selector`, `release_not_found`,
    /// ...) plus `not_found`, `method_not_allowed` and `timeout` for HTTP's own cases.
    pub code: Cow<'static, str>,
    pub message: String,
}

impl HttpError {
    pub fn new(
        status: StatusCode,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        HttpError {
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    /// Bad input, named by one of the NATS API's codes.
    pub fn bad(code: ErrorCode, message: impl Into<String>) -> Self {
        HttpError::from(ApiError::new(code, message))
    }

    pub fn not_found(code: ErrorCode, message: impl Into<String>) -> Self {
        HttpError::from(ApiError::new(code, message))
    }

    pub fn internal(message: impl Into<String>) -> Self {
        HttpError::from(ApiError::new(ErrorCode::Internal, message))
    }

    /// A request body or query string that is not what the route takes.
    pub fn malformed(message: impl Into<String>) -> Self {
        HttpError::bad(ErrorCode::MalformedMessage, message)
    }
}

/// The HTTP status that fits each of the NATS API's error codes.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::MalformedMessage
        | ErrorCode::InvalidRequest
        | ErrorCode::BadSelector
        | ErrorCode::BadReleaseName
        | ErrorCode::BadNamespace
        | ErrorCode::BadLabel
        | ErrorCode::BadChart
        | ErrorCode::BadValues => StatusCode::BAD_REQUEST,
        ErrorCode::ChartNotFound | ErrorCode::ReleaseNotFound | ErrorCode::ClusterNotFound => {
            StatusCode::NOT_FOUND
        }
        ErrorCode::ChartConflict => StatusCode::CONFLICT,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        HttpError::new(status_of(e.code), e.code.to_string(), e.message)
    }
}

impl From<ClientError> for HttpError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Refused(e) => e.into(),
            ClientError::NotFound(m) => HttpError::new(StatusCode::NOT_FOUND, "not_found", m),
            ClientError::BadInput(m) => HttpError::bad(ErrorCode::InvalidRequest, m),
            ClientError::Timeout(m) => HttpError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", m),
            ClientError::Nats(m) => HttpError::internal(m),
        }
    }
}

#[derive(serde::Serialize)]
struct Body<'a, C> {
    code: C,
    message: &'a str,
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, code = %self.code, message = %self.message, "request failed");
        }
        let body = Body {
            code: self.code.as_ref(),
            message: &self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

/// An [`HttpError`] in the original API's shape: `{"code": 400, "message": "..."}`.
#[derive(Debug)]
pub struct V0Error(pub HttpError);

impl<E: Into<HttpError>> From<E> for V0Error {
    fn from(e: E) -> Self {
        V0Error(e.into())
    }
}

impl IntoResponse for V0Error {
    fn into_response(self) -> Response {
        let HttpError {
            status, message, ..
        } = self.0;
        if status.is_server_error() {
            tracing::warn!(%status, %message, "v0 request failed");
        }
        let body = Body {
            code: status.as_u16(),
            message: &message,
        };
        (status, Json(body)).into_response()
    }
}

/// A JSON request body whose problems (not JSON, a missing field, a wrong type) come back
/// as [`HttpError`]s that name them. The content type is not insisted on.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = HttpError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = bytes::Bytes::from_request(req, state)
            .await
            .map_err(|e| HttpError::new(e.status(), "malformed_message", e.body_text()))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(HttpError::malformed(
                "the request body is empty; send a JSON object",
            ));
        }
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            let code = match e.classify() {
                serde_json::error::Category::Data => ErrorCode::InvalidRequest,
                _ => ErrorCode::MalformedMessage,
            };
            HttpError::bad(code, format!("request body: {e}"))
        })
    }
}

/// Query parameters whose problems come back as [`HttpError`]s.
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| QueryParams(value))
            .map_err(|e| HttpError::bad(ErrorCode::InvalidRequest, e.body_text()))
    }
}

/// Query parameters for `/v0` routes: problems come back in the original API's shape.
pub struct V0Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for V0Query<T> {
    type Rejection = V0Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let QueryParams(value) = QueryParams::from_request_parts(parts, state).await?;
        Ok(V0Query(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_get_fitting_statuses() {
        let e = HttpError::from(ApiError::new(ErrorCode::BadSelector, "x"));
        assert_eq!(
            (e.status, e.code.as_ref()),
            (StatusCode::BAD_REQUEST, "bad_selector")
        );
        let e = HttpError::from(ClientError::Refused(ApiError::new(
            ErrorCode::ChartNotFound,
            "x",
        )));
        assert_eq!(
            (e.status, e.code.as_ref()),
            (StatusCode::NOT_FOUND, "chart_not_found")
        );
        let e = HttpError::from(ClientError::Nats("down".into()));
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}
