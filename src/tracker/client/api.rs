//! The tracker's HTTP API as a client sees it, one method per route, and
//! the errors a request can end with. No state, no retries: [`super`]
//! decides what to do when a request fails.

use std::time::Duration;

use serde::de::DeserializeOwned;

use serde::Serialize;

use super::REQUEST_TIMEOUT;
use crate::identity::Identity;
use crate::tracker::proto::MAX_WATCH_SECS;
use crate::tracker::proto::{
    AnnounceResponse, ErrorBody, FullAnnounce, HeartbeatRequest, HeartbeatResponse, PatchAnnounce,
    PeersQuery, PeersResponse, RegisterRequest, RegisterResponse, SearchQuery, SearchResponse,
    Stats, WatchQuery, WatchResponse,
};
use crate::tracker::sign::{SIG_HEADER, sign_now};

/// Largest answer to a watch that is read (the real ones are ~40 bytes).
pub const MAX_WATCH_ANSWER: usize = 4096;
/// Time a watch may take beyond the wait it asked for.
const WATCH_SLACK: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the tracker at {url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("the tracker at {url} answered {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
        stored_digest: Option<String>,
    },
    #[error("the tracker at {url} sent an answer this node does not understand: {message}")]
    BadAnswer { url: String, message: String },
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The tracker's HTTP API, one method per route.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    /// `base` is the tracker's URL, `http://HOST:PORT`. Connections are
    /// kept open between requests (for scripts and the load generator).
    pub fn new(base: &str) -> Api {
        Self::build(base, true)
    }

    /// What a node uses: one connection per request, closed after it. A
    /// node talks to the tracker a few times per heartbeat interval, and
    /// thousands of nodes each holding an idle connection would exhaust
    /// the tracker's connection slots.
    pub fn per_request(base: &str) -> Api {
        Self::build(base, false)
    }

    fn build(base: &str, keep_alive: bool) -> Api {
        let mut b = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .no_proxy();
        b = if keep_alive {
            b.pool_idle_timeout(Duration::from_secs(30))
        } else {
            b.pool_max_idle_per_host(0)
        };
        let http = b.build().expect("a plain HTTP client builds");
        Api {
            http,
            base: base.trim_end_matches('/').to_string(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send<T: DeserializeOwned>(
        &self,
        url: String,
        rb: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let resp = rb.send().await.map_err(|source| ClientError::Unreachable {
            url: url.clone(),
            source,
        })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: url.clone(),
                source,
            })?;
        if !status.is_success() {
            let body: Option<ErrorBody> = serde_json::from_slice(&bytes).ok();
            return Err(ClientError::Status {
                url,
                status: status.as_u16(),
                message: body.as_ref().map(|b| b.error.clone()).unwrap_or_else(|| {
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned()
                }),
                stored_digest: body.and_then(|b| b.stored_digest),
            });
        }
        let body: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
        serde_json::from_slice(body).map_err(|e| ClientError::BadAnswer {
            url,
            message: e.to_string(),
        })
    }

    /// A request signed by `node` (`X-Lanshare-Sig` over the method, the
    /// route's path and the body), with `body` as JSON when given.
    fn signed<B: Serialize>(
        &self,
        method: reqwest::Method,
        path: &str,
        node: &Identity,
        token: Option<&str>,
        body: Option<&B>,
    ) -> Result<(String, reqwest::RequestBuilder), ClientError> {
        let url = self.url(path);
        let bytes = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| ClientError::BadAnswer {
                url: url.clone(),
                message: format!("cannot encode the request: {e}"),
            })?,
            None => Vec::new(),
        };
        let sig = sign_now(node, method.as_str(), path, &bytes);
        let mut rb = self
            .http
            .request(method, &url)
            .header(SIG_HEADER, sig.to_value());
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if body.is_some() {
            rb = rb
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(bytes);
        }
        Ok((url, rb))
    }

    /// Registers `node` (whose id and key `req` carries).
    pub async fn register(
        &self,
        node: &Identity,
        req: &RegisterRequest,
    ) -> Result<RegisterResponse, ClientError> {
        let (url, rb) = self.signed(reqwest::Method::POST, "/v1/nodes", node, None, Some(req))?;
        self.send(url, rb).await
    }

    pub async fn heartbeat(
        &self,
        node: &Identity,
        token: &str,
        req: &HeartbeatRequest,
    ) -> Result<HeartbeatResponse, ClientError> {
        let path = format!("/v1/nodes/{}/heartbeat", node.node_id());
        let (url, rb) = self.signed(reqwest::Method::POST, &path, node, Some(token), Some(req))?;
        self.send(url, rb).await
    }

    pub async fn announce_full(
        &self,
        node: &Identity,
        token: &str,
        req: &FullAnnounce,
    ) -> Result<AnnounceResponse, ClientError> {
        let path = format!("/v1/nodes/{}/inventory", node.node_id());
        let (url, rb) = self.signed(reqwest::Method::PUT, &path, node, Some(token), Some(req))?;
        self.send(url, rb).await
    }

    pub async fn announce_patch(
        &self,
        node: &Identity,
        token: &str,
        req: &PatchAnnounce,
    ) -> Result<AnnounceResponse, ClientError> {
        let path = format!("/v1/nodes/{}/inventory", node.node_id());
        let (url, rb) = self.signed(reqwest::Method::PATCH, &path, node, Some(token), Some(req))?;
        self.send(url, rb).await
    }

    pub async fn deregister(&self, node: &Identity, token: &str) -> Result<(), ClientError> {
        let path = format!("/v1/nodes/{}", node.node_id());
        let (url, rb) =
            self.signed::<()>(reqwest::Method::DELETE, &path, node, Some(token), None)?;
        self.send::<serde_json::Value>(url, rb).await.map(|_| ())
    }

    pub async fn peers(&self, q: &PeersQuery) -> Result<PeersResponse, ClientError> {
        let mut url = self.parse_url("/v1/peers")?;
        {
            let mut pairs = url.query_pairs_mut();
            pairs.append_pair("since", &q.since.to_string());
            if let Some(e) = &q.epoch {
                pairs.append_pair("epoch", e);
            }
            if let Some(l) = q.limit {
                pairs.append_pair("limit", &l.to_string());
            }
            if let Some(tag) = &q.swarm {
                pairs.append_pair("swarm", tag);
            }
        }
        let rb = self.http.get(url.clone());
        self.send(url.to_string(), rb).await
    }

    /// Waits (at most `q.wait` seconds, and a few more for the network)
    /// until the tracker says the peer list changed after `q.since`. The
    /// answer is read up to [`MAX_WATCH_ANSWER`] bytes: a few dozen are due.
    pub async fn watch(&self, q: &WatchQuery) -> Result<WatchResponse, ClientError> {
        let mut url = self.parse_url("/v1/watch")?;
        {
            let mut pairs = url.query_pairs_mut();
            pairs.append_pair("since", &q.since.to_string());
            if let Some(e) = &q.epoch {
                pairs.append_pair("epoch", e);
            }
            if let Some(tag) = &q.swarm {
                pairs.append_pair("swarm", tag);
            }
            if let Some(w) = q.wait {
                pairs.append_pair("wait", &format!("{w:.3}"));
            }
        }
        let wait =
            Duration::from_secs_f64(q.wait.unwrap_or(MAX_WATCH_SECS).clamp(0.0, MAX_WATCH_SECS));
        let rb = self.http.get(url.clone()).timeout(wait + WATCH_SLACK);
        let unreachable = |source| ClientError::Unreachable {
            url: url.to_string(),
            source,
        };
        let mut resp = rb.send().await.map_err(unreachable)?;
        let status = resp.status();
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(unreachable)? {
            if bytes.len() + chunk.len() > MAX_WATCH_ANSWER {
                return Err(ClientError::BadAnswer {
                    url: url.to_string(),
                    message: format!("a watch answer over {MAX_WATCH_ANSWER} bytes"),
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            let body: Option<ErrorBody> = serde_json::from_slice(&bytes).ok();
            return Err(ClientError::Status {
                url: url.to_string(),
                status: status.as_u16(),
                message: body.map(|b| b.error).unwrap_or_default(),
                stored_digest: None,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::BadAnswer {
            url: url.to_string(),
            message: e.to_string(),
        })
    }

    pub async fn search(&self, q: &SearchQuery) -> Result<SearchResponse, ClientError> {
        let mut url = self.parse_url("/v1/search")?;
        {
            let mut pairs = url.query_pairs_mut();
            if let Some(text) = &q.q {
                pairs.append_pair("q", text);
            }
            if let Some(c) = &q.category {
                pairs.append_pair("category", c);
            }
            if let Some(l) = q.limit {
                pairs.append_pair("limit", &l.to_string());
            }
        }
        let rb = self.http.get(url.clone());
        self.send(url.to_string(), rb).await
    }

    pub async fn stats(&self) -> Result<Stats, ClientError> {
        let url = self.url("/v1/stats");
        let rb = self.http.get(&url);
        self.send(url, rb).await
    }

    fn parse_url(&self, path: &str) -> Result<reqwest::Url, ClientError> {
        let url = self.url(path);
        reqwest::Url::parse(&url).map_err(|e| ClientError::BadAnswer {
            url: url.clone(),
            message: format!("not a valid URL: {e}"),
        })
    }
}
