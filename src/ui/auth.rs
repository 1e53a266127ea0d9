//! What guards the dashboard: the API token (`HOME/.lanshare/api-token`,
//! mode 0600), the Host check against DNS rebinding, the session cookie
//! and CSRF token of the page, the optional password, and the headers
//! every answer carries (no framing, a strict content policy, no CORS).
//! Secrets are compared in constant time (BLAKE3 hashes compared by
//! `blake3::Hash`'s constant-time equality). Decides who may ask; never
//! answers a request itself.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::routes::ApiError;

/// The header the page sends its CSRF token in, on every state change.
pub const CSRF_HEADER: &str = "x-lanshare-csrf";

/// The content policy of every answer: only this origin's own scripts,
/// styles and connections; never framed.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The secrets of one dashboard and the address it answers for.
pub struct Auth {
    /// Sent by scripts as `Authorization: Bearer TOKEN`.
    token: String,
    /// The page's cookie value (derived from the token).
    session: String,
    /// The page's CSRF token (derived from the token), in the page itself.
    pub csrf: String,
    /// Asked of a non-loopback dashboard's page (HTTP basic auth).
    password: Option<String>,
    listen: SocketAddr,
    /// The session cookie's name (per port: cookies ignore ports).
    pub cookie_name: String,
}

/// Constant-time equality of two secrets of any length.
fn same(a: &str, b: &str) -> bool {
    blake3::hash(a.as_bytes()) == blake3::hash(b.as_bytes())
}

/// Reads the API token from `path`, or creates a random one there (mode
/// 0600) at first start; a looser mode is tightened.
pub fn load_or_create_token(path: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Ok(text) = std::fs::read_to_string(path) {
        let token = text.trim().to_string();
        if token.len() >= 32 && token.chars().all(|c| c.is_ascii_hexdigit()) {
            let private = std::fs::Permissions::from_mode(0o600);
            std::fs::set_permissions(path, private)?;
            return Ok(token);
        }
        tracing::warn!(path = %path.display(), "the API token file is malformed; writing a new token");
        std::fs::remove_file(path)?;
    }
    let token = crate::id::to_hex(&crate::identity::random_bytes());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot create the API token {}: {e}", path.display()))?;
    writeln!(f, "{token}")?;
    Ok(token)
}

impl Auth {
    pub fn new(token: &str, listen: SocketAddr, password: Option<String>) -> Auth {
        let derive = |context| crate::id::to_hex(&blake3::derive_key(context, token.as_bytes()));
        Auth {
            token: token.to_string(),
            session: derive("lanshare 2026 dashboard session cookie"),
            csrf: derive("lanshare 2026 dashboard csrf token"),
            password,
            listen,
            cookie_name: format!("lanshare_session_{}", listen.port()),
        }
    }

    /// Whether `host` (a Host header) names this dashboard: `localhost`
    /// or the IP address it listens on (any IP literal when it listens on
    /// every address), with its port. A name other than localhost is
    /// refused, so a DNS-rebinding page cannot reach the API.
    pub fn host_ok(&self, host: &str) -> bool {
        let (name, port) = match host.rsplit_once(':') {
            Some((n, _)) if !n.ends_with(']') && n.contains(':') => (host, None),
            Some((n, p)) => (n, p.parse::<u16>().ok()),
            None => (host, None),
        };
        if port.unwrap_or(80) != self.listen.port() {
            return false;
        }
        let name = name.trim_start_matches('[').trim_end_matches(']');
        if name.eq_ignore_ascii_case("localhost") {
            return true;
        }
        match name.parse::<IpAddr>() {
            Ok(ip) => ip.to_canonical() == self.listen.ip() || self.listen.ip().is_unspecified(),
            Err(_) => false,
        }
    }

    /// The `Set-Cookie` value that gives the page its session.
    pub fn session_cookie(&self) -> String {
        format!(
            "{}={}; Path=/; HttpOnly; SameSite=Strict",
            self.cookie_name, self.session
        )
    }

    /// Whether the page's password was given (always, when none is set).
    pub fn password_ok(&self, headers: &HeaderMap) -> bool {
        let Some(want) = &self.password else {
            return true;
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| decode_base64(b.trim()))
            .and_then(|raw| String::from_utf8(raw).ok());
        given.is_some_and(|up| up.split_once(':').is_some_and(|(_, p)| same(p, want)))
    }

    fn bearer_ok(&self, headers: &HeaderMap) -> Option<bool> {
        let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let token = v.strip_prefix("Bearer ")?;
        Some(same(token.trim(), &self.token))
    }

    fn cookie_ok(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .any(|(k, v)| k == self.cookie_name && same(v, &self.session))
    }

    fn csrf_ok(&self, headers: &HeaderMap) -> bool {
        headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| same(v, &self.csrf))
    }
}

/// A minimal standard base64 decoder (for the basic-auth header).
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c)? << (18 - 6 * i);
        }
        let take = chunk.len().saturating_sub(1);
        out.extend(n.to_be_bytes()[1..=3].iter().take(take));
    }
    Some(out)
}

/// Adds the headers every answer carries.
fn harden(resp: &mut Response) {
    let h = resp.headers_mut();
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
}

/// Every request: the Host must name this dashboard (else 421), and no
/// cross-origin request may change anything (else 403); every answer is
/// hardened.
pub(super) async fn host_guard(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut resp = if !state.auth.host_ok(&host) {
        let msg = format!(
            "this dashboard answers only to http://{}/ (or localhost with its port), not to Host {host:?}",
            state.auth.listen
        );
        ApiError::new(StatusCode::MISDIRECTED_REQUEST, msg).into_response()
    } else if let Some(why) = cross_origin(&req, &host) {
        ApiError::new(StatusCode::FORBIDDEN, why).into_response()
    } else {
        next.run(req).await
    };
    harden(&mut resp);
    resp
}

/// Why a request is refused as cross-origin: a state change (anything
/// but GET and HEAD) whose Origin is another site, or any preflight.
fn cross_origin(req: &Request, host: &str) -> Option<String> {
    if req.method() == Method::OPTIONS {
        return Some("cross-origin requests are not allowed (no CORS)".into());
    }
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return None;
    }
    let origin = req.headers().get(header::ORIGIN)?.to_str().unwrap_or("");
    let own = format!("http://{host}");
    (origin != own).then(|| format!("cross-origin request from {origin:?} refused"))
}

/// `/api/v1/`: a bearer token, or the page's cookie (plus its CSRF header
/// on a state change). 401 without either, 403 without the CSRF header.
pub(super) async fn api_guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let auth = &state.auth;
    let headers = req.headers();
    let refused = match auth.bearer_ok(headers) {
        Some(true) => None,
        Some(false) => Some((StatusCode::UNAUTHORIZED, "wrong API token")),
        None if !auth.cookie_ok(headers) => Some((
            StatusCode::UNAUTHORIZED,
            "an API token is required: send `Authorization: Bearer TOKEN` with the token in HOME/.lanshare/api-token",
        )),
        None if !matches!(*req.method(), Method::GET | Method::HEAD) && !auth.csrf_ok(headers) => {
            Some((
                StatusCode::FORBIDDEN,
                "missing or wrong X-Lanshare-CSRF header",
            ))
        }
        None => None,
    };
    match refused {
        Some((code, msg)) => {
            let mut resp = ApiError::new(code, msg.to_string()).into_response();
            if code == StatusCode::UNAUTHORIZED {
                let v = HeaderValue::from_static("Bearer realm=\"lanshare\"");
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
            resp
        }
        None => next.run(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(listen: &str) -> Auth {
        Auth::new(&"ab".repeat(32), listen.parse().unwrap(), None)
    }

    #[test]
    fn only_this_address_or_localhost_is_a_good_host() {
        let a = auth("127.0.0.1:7380");
        for ok in ["127.0.0.1:7380", "localhost:7380", "LOCALHOST:7380"] {
            assert!(a.host_ok(ok), "{ok}");
        }
        for bad in [
            "evil.example:7380",
            "127.0.0.1:7381",
            "127.0.0.1",
            "10.0.0.1:7380",
            "",
            "localhost.evil:7380",
        ] {
            assert!(!a.host_ok(bad), "{bad}");
        }
        let any = auth("0.0.0.0:80");
        assert!(any.host_ok("192.168.1.9") && any.host_ok("[fe80::1]:80"));
        assert!(!any.host_ok("rebind.example"));
        assert!(auth("[::1]:7380").host_ok("[::1]:7380"));
    }

    #[test]
    fn basic_auth_checks_the_password() {
        let a = Auth::new("ab", "0.0.0.0:7380".parse().unwrap(), Some("sesame".into()));
        let mut h = HeaderMap::new();
        assert!(!a.password_ok(&h));
        // "user:sesame"
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic dXNlcjpzZXNhbWU="),
        );
        assert!(a.password_ok(&h));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic dXNlcjpvcGVuIHNlc2FtZQ=="),
        );
        assert!(!a.password_ok(&h));
        assert_eq!(decode_base64("YWJj").unwrap(), b"abc");
        assert_eq!(decode_base64("YWI=").unwrap(), b"ab");
    }

    #[test]
    fn the_token_file_is_private_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api-token");
        let t = load_or_create_token(&path).unwrap();
        assert_eq!(t.len(), 64);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create_token(&path).unwrap(), t);
    }
}
