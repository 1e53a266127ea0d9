//! The page's files, compiled into the binary (`ui/` at the crate root):
//! no build step, nothing fetched at run time. Serving the page sets its
//! session cookie and writes its CSRF token into it; a page of another
//! origin can read neither. With `--ui-password` the page asks for it
//! first (HTTP basic auth).

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::AppState;

const INDEX: &str = include_str!("../../ui/index.html");
const APP_JS: &str = include_str!("../../ui/app.js");
const STYLE: &str = include_str!("../../ui/style.css");
const ICON: &str = include_str!("../../ui/icon.svg");
/// Where the page's CSRF token goes in `index.html`.
const CSRF_SLOT: &str = "{{CSRF}}";

/// The page and its files.
pub fn pages() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route(
            "/app.js",
            get(|s, h| file(s, h, APP_JS, "text/javascript; charset=utf-8")),
        )
        .route(
            "/style.css",
            get(|s, h| file(s, h, STYLE, "text/css; charset=utf-8")),
        )
        .route("/icon.svg", get(|s, h| file(s, h, ICON, "image/svg+xml")))
}

/// 401 asking for the dashboard's password.
fn ask_password() -> Response {
    let mut resp = (
        StatusCode::UNAUTHORIZED,
        "this dashboard needs its password (--ui-password)",
    )
        .into_response();
    let v = HeaderValue::from_static("Basic realm=\"lanshare\", charset=\"UTF-8\"");
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    resp
}

async fn index(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if !s.auth.password_ok(&headers) {
        return ask_password();
    }
    let page = INDEX.replace(CSRF_SLOT, &s.auth.csrf);
    let mut resp = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&s.auth.session_cookie()) {
        h.insert(header::SET_COOKIE, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

async fn file(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: &'static str,
    kind: &'static str,
) -> Response {
    if !s.auth.password_ok(&headers) {
        return ask_password();
    }
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
