//! Request bodies that carry a chart archive: `multipart/form-data` (browsers, the original
//! API's `chartTar`) or the raw `.tgz` bytes.

use std::collections::BTreeMap;

use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{StatusCode, header};
use bytes::Bytes;
use optikon_core::message::ErrorCode;

use crate::error::HttpError;

/// A form: its text fields and its files, by field name.
#[derive(Debug, Default)]
pub struct Form {
    pub fields: BTreeMap<String, String>,
    pub files: BTreeMap<String, Bytes>,
}

impl Form {
    /// Reads a multipart form; any other body becomes one file named `""`.
    pub async fn read(request: Request) -> Result<Form, HttpError> {
        let is_multipart = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
        let mut form = Form::default();
        if !is_multipart {
            let bytes = Bytes::from_request(request, &())
                .await
                .map_err(|e| too_large_or(e.status(), e.body_text()))?;
            form.files.insert(String::new(), bytes);
            return Ok(form);
        }
        let mut multipart = Multipart::from_request(request, &())
            .await
            .map_err(|e| HttpError::malformed(format!("multipart form: {}", e.body_text())))?;
        loop {
            let field = match multipart.next_field().await {
                Ok(Some(field)) => field,
                Ok(None) => break,
                Err(e) => {
                    return Err(too_large_or(
                        e.status(),
                        format!("multipart form: {}", e.body_text()),
                    ));
                }
            };
            let name = field.name().unwrap_or_default().to_owned();
            let is_file = field.file_name().is_some();
            let bytes = field.bytes().await.map_err(|e| {
                too_large_or(
                    e.status(),
                    format!("multipart field {name:?}: {}", e.body_text()),
                )
            })?;
            if is_file {
                form.files.insert(name, bytes);
            } else {
                let text = String::from_utf8(bytes.to_vec()).map_err(|_| {
                    HttpError::malformed(format!("multipart field {name:?} is not UTF-8 text"))
                })?;
                form.fields.insert(name, text);
            }
        }
        Ok(form)
    }

    /// The bytes given under `name`, as a file or (for clients that send a blob without a
    /// file name) as a field.
    pub fn take_file(&mut self, name: &str) -> Option<Bytes> {
        self.files
            .remove(name)
            .or_else(|| self.fields.remove(name).map(Bytes::from))
    }

    /// The chart archive of an `/api/v1/charts` upload: field `chart`, else the only file,
    /// else the raw body.
    pub fn chart(mut self) -> Result<Bytes, HttpError> {
        let bytes = match self.take_file("chart") {
            Some(bytes) => bytes,
            None if self.files.len() == 1 => self.files.into_values().next().unwrap_or_default(),
            None if self.files.is_empty() => {
                return Err(missing_chart(
                    "send the chart .tgz as the request body, or as form field \"chart\"",
                ));
            }
            None => {
                return Err(HttpError::bad(
                    ErrorCode::InvalidRequest,
                    format!(
                        "the form has several files ({}); name the chart's field \"chart\"",
                        self.files.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        };
        if bytes.is_empty() {
            return Err(missing_chart(
                "the chart archive is empty; send the .tgz that `helm package` made",
            ));
        }
        Ok(bytes)
    }

    /// A required text field, trimmed.
    pub fn text(&self, name: &str) -> Result<&str, HttpError> {
        match self.fields.get(name).map(|v| v.trim()) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(HttpError::bad(
                ErrorCode::InvalidRequest,
                format!("form field {name:?} is missing"),
            )),
        }
    }
}

fn missing_chart(message: &str) -> HttpError {
    HttpError::bad(ErrorCode::BadChart, format!("no chart archive: {message}"))
}

fn too_large_or(status: StatusCode, message: String) -> HttpError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        HttpError::new(
            status,
            "too_large",
            format!("{message}; charts must be at most 10 MiB (chart-ingest's limit)"),
        )
    } else {
        HttpError::malformed(message)
    }
}
