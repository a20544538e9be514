//! The Edge Manager page: plain HTML, CSS and JavaScript built into the binary (no build
//! step, nothing fetched from elsewhere). It reads `/api/v1` and follows `/api/v1/events`.

use axum::http::header;
use axum::response::IntoResponse;

use crate::Gateway;
use crate::routes::Routes;

const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const STYLE_CSS: &str = include_str!("page/style.css");

pub fn routes() -> Routes<Gateway> {
    Routes::new()
        .get("/", || async {
            file("text/html; charset=utf-8", INDEX_HTML)
        })
        .get("/app.js", || async {
            file("text/javascript; charset=utf-8", APP_JS)
        })
        .get("/style.css", || async {
            file("text/css; charset=utf-8", STYLE_CSS)
        })
}

fn file(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Small files; a new gateway version must show at once.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}
