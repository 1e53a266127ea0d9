//! Extractors and the error answer of the tracker's API: every bad
//! request (body, query, path, token, signature) becomes a 4xx with a JSON
//! `{"error": ...}`, and each [`DbError`] its status. No handler logic.
//!
//! [`SignedJson`] and [`SigOnly`] keep what a signature covers (method,
//! path, body) and the `X-Lanshare-Sig` header; the handler verifies it
//! with the node's key after the cheap checks, so a malformed request gets
//! its 4xx without costing a verification.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::id::NodeId;
use crate::identity::PublicKey;
use crate::tracker::db::{DbError, Proof};
use crate::tracker::proto::{ErrorBody, hex16_string};
use crate::tracker::sign::{SIG_HEADER, SigHeader};

/// An error answer: a status and `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub stored_digest: Option<[u8; 16]>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            stored_digest: None,
        }
    }
    pub(super) fn bad_request(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, m)
    }
    pub(super) fn invalid(m: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, m)
    }
    pub(super) fn unauthorized(m: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, m)
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        let status = match &e {
            DbError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            DbError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            DbError::UnknownNode(_) => StatusCode::NOT_FOUND,
            DbError::Conflict { .. } => StatusCode::CONFLICT,
            DbError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            DbError::Full(_) => StatusCode::SERVICE_UNAVAILABLE,
            DbError::Quota(_) => StatusCode::TOO_MANY_REQUESTS,
            DbError::Sql(_) | DbError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(error = %e, "request failed inside the tracker");
        }
        let stored_digest = match &e {
            DbError::Conflict { stored, .. } => *stored,
            _ => None,
        };
        ApiError {
            status,
            message: e.to_string(),
            stored_digest,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
            stored_digest: self.stored_digest.map(|d| hex16_string(&d)),
        };
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        }
        resp
    }
}

/// `Json<T>` whose rejections are JSON errors that say what is wrong.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rej) => {
                let status = rej.status();
                let message = match &rej {
                    JsonRejection::BytesRejection(_) if status == StatusCode::PAYLOAD_TOO_LARGE => {
                        "the request body is larger than this route accepts (see docs/tracker.md: 64 KiB, or --max-body for inventories; send a big inventory in parts)".to_string()
                    }
                    JsonRejection::MissingJsonContentType(_) => {
                        "send the body as JSON with the header Content-Type: application/json".into()
                    }
                    _ => rej.body_text(),
                };
                Err(ApiError::new(status, message))
            }
        }
    }
}

/// `Query<T>` whose rejection is a JSON 400.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|rej| ApiError::bad_request(rej.body_text()))
    }
}

/// The `{id}` of a node route, parsed.
pub struct NodePath(pub NodeId);

impl<S: Send + Sync> FromRequestParts<S> for NodePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rej| ApiError::bad_request(rej.body_text()))?;
        raw.parse().map(NodePath).map_err(|_| {
            ApiError::bad_request(format!(
                "{:?} in the path is not a node id (32 hex digits)",
                raw.chars().take(80).collect::<String>()
            ))
        })
    }
}

/// The token of `Authorization: Bearer TOKEN`.
pub struct Bearer(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Bearer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, m);
        let value = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
            unauthorized(
                "missing the header Authorization: Bearer TOKEN (the token POST /v1/nodes returned)",
            )
        })?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= 128)
            .ok_or_else(|| unauthorized("the Authorization header is not \"Bearer TOKEN\""))?;
        Ok(Bearer(token.to_string()))
    }
}

/// What a request's signature covers, and its `X-Lanshare-Sig` header as
/// sent (checked by [`Signature::verify`]).
pub struct Signature {
    method: String,
    path: String,
    body: Bytes,
    header: Result<SigHeader, String>,
}

impl Signature {
    fn of(parts: &Parts, body: Bytes) -> Signature {
        let header = match parts.headers.get(SIG_HEADER) {
            None => Err(
                "missing the header X-Lanshare-Sig: SEQ.SIG (every change of a node's registration is signed by the node's key; see docs/tracker.md)".to_string(),
            ),
            Some(v) => v
                .to_str()
                .map_err(|_| "the X-Lanshare-Sig header is not text".to_string())
                .and_then(|v| SigHeader::parse(v).map_err(|e| e.to_string())),
        };
        Signature {
            method: parts.method.as_str().to_string(),
            path: parts.uri.path().to_string(),
            body,
            header,
        }
    }

    /// Checks the signature with `key`: 401 when missing or wrong.
    pub fn verify(&self, key: &PublicKey) -> Result<Proof, ApiError> {
        let header = self.header.as_ref().map_err(ApiError::unauthorized)?;
        header
            .verify(key, &self.method, &self.path, &self.body)
            .map_err(|_| {
                ApiError::unauthorized(format!(
                    "the X-Lanshare-Sig signature does not verify with node {}'s key (signed by another key, or over another method, path or body)",
                    key.node_id()
                ))
            })?;
        Ok(Proof {
            key: *key,
            seq: header.seq,
        })
    }
}

/// A signed request with a JSON body: the body parsed (errors as
/// [`ApiJson`]'s) and the [`Signature`] to check.
pub struct SignedJson<T>(pub T, pub Signature);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for SignedJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        let is_json = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|m| m.trim().to_ascii_lowercase())
            .is_some_and(|m| m == "application/json" || m.ends_with("+json"));
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send the body as JSON with the header Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(Request::from_parts(parts.clone(), body), state)
            .await
            .map_err(|rej| {
                let status = rej.status();
                let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    "the request body is larger than this route accepts (see docs/tracker.md: 64 KiB, or --max-body for inventories; send a big inventory in parts)".to_string()
                } else {
                    rej.body_text()
                };
                ApiError::new(status, message)
            })?;
        let value = match Json::<T>::from_bytes(&bytes) {
            Ok(Json(v)) => v,
            Err(rej) => return Err(ApiError::new(rej.status(), rej.body_text())),
        };
        Ok(SignedJson(value, Signature::of(&parts, bytes)))
    }
}

/// A signed request without a body (the signature covers an empty one).
pub struct SigOnly(pub Signature);

impl<S: Send + Sync> FromRequestParts<S> for SigOnly {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(SigOnly(Signature::of(parts, Bytes::new())))
    }
}
