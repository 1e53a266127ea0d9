//! The dashboard's HTTP JSON API against real nodes on loopback: every
//! route with the API token, then what must be refused (no token, a
//! foreign Host, a cross-origin or CSRF-less state change, bad input),
//! each with a JSON `{"error": ...}`; the `--ui` / `--no-ui` /
//! `--ui-password` rules. Requests are written by hand over a TCP socket
//! so every header (Host, Origin, Cookie) is exactly what the test says.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use super::harness::{Net, Node, data, sha256_hex, wait_until};

/// One HTTP answer.
struct Answer {
    status: u16,
    /// Header lines, lowercase names.
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// A refusal: the status wanted and a JSON error message.
    fn refused(&self, status: u16, what: &str) -> String {
        assert_eq!(self.status, status, "{what}: {}", self.body);
        let msg = self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no error field: {}", self.body))
            .to_string();
        assert!(!msg.is_empty(), "{what}");
        msg
    }
}

/// The dashboard of one node: its address and API token.
struct Ui {
    /// host:port
    addr: String,
    token: String,
}

impl Ui {
    fn of(node: &Node) -> Ui {
        let url = node.status()["ui"]
            .as_str()
            .expect("status names the dashboard")
            .to_string();
        let addr = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let token = std::fs::read_to_string(node.home.join(".lanshare/api-token"))
            .unwrap()
            .trim()
            .to_string();
        Ui { addr, token }
    }

    /// Sends one request with exactly `headers` (plus Host unless given).
    fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Answer {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            req.push_str(&format!("Host: {}\r\n", self.addr));
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        let body = body.unwrap_or("");
        req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        s.write_all(req.as_bytes()).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        parse(&String::from_utf8_lossy(&raw))
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }

    /// A request with the API token (and a JSON body, if any).
    fn call(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> Answer {
        let auth = self.bearer();
        let body = body.map(|b| b.to_string());
        let mut h = vec![("Authorization", auth.as_str())];
        if body.is_some() {
            h.push(("Content-Type", "application/json"));
        }
        self.raw(method, &format!("/api/v1/{path}"), &h, body.as_deref())
    }

    fn get(&self, path: &str) -> serde_json::Value {
        let a = self.call("GET", path, None);
        assert_eq!(a.status, 200, "GET {path}: {}", a.body);
        a.json()
    }
}

fn parse(raw: &str) -> Answer {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Answer {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn names(page: &serde_json::Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect()
}

/// Every route answers with the token, and a fetch started through the
/// API lands byte-identical in downloads/ and in the history.
#[test]
fn every_route_answers_with_the_api_token() {
    let net = Net::new();
    let song = data(3 << 20, 11);
    let a = net.in_process(
        "alpha",
        &[
            ("song.mp3", &song),
            ("photo.png", b"pixels"),
            ("notes.txt", b"text"),
        ],
    );
    let b = net.in_process("beta", &[]);
    let ui = Ui::of(&b);
    assert!(
        wait_until(Duration::from_secs(10), || ui.get("contents")["total"] == 3),
        "{}",
        ui.get("contents")
    );

    let status = ui.get("status");
    assert_eq!(status["name"], "beta");
    assert_eq!(status["id"], b.id());
    assert_eq!(status["ui"], format!("http://{}/", ui.addr));
    assert!(
        status["discovery"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["kind"] == "multicast" && d["active"] == true)
    );
    let peers = ui.get("peers");
    assert_eq!(peers[0]["name"], "alpha");
    assert_eq!(peers[0]["online"], true);
    assert_eq!(peers[0]["contents"], 3);

    // Filtered, sorted and paged on the node.
    assert_eq!(names(&ui.get("contents?q=SONG")), ["song.mp3"]);
    assert_eq!(names(&ui.get("contents?category=image")), ["photo.png"]);
    assert_eq!(
        names(&ui.get("contents?sort=size&order=desc&limit=1")),
        ["song.mp3"]
    );
    let page = ui.get("contents?offset=1&limit=1");
    assert_eq!(
        (page["total"].as_u64(), names(&page)),
        (Some(3), vec!["photo.png".to_string()])
    );
    let counts = &ui.get("contents?q=o")["categories"];
    assert!(
        counts
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["category"] == "audio" && c["count"] == 1),
        "{counts}"
    );

    assert_eq!(
        ui.get("transfers"),
        serde_json::json!({"downloads": [], "uploads": []})
    );
    let started = ui.call("POST", "fetch", Some(serde_json::json!({"query": "song"})));
    assert_eq!(started.status, 202, "{}", started.body);
    assert_eq!(started.json()["name"], "song.mp3");
    assert!(
        wait_until(Duration::from_secs(20), || ui.get("transfers")["downloads"]
            [0]["state"]
            == "done"),
        "{}",
        ui.get("transfers")
    );
    let got = std::fs::read(b.downloads().join("song.mp3")).unwrap();
    assert_eq!(sha256_hex(&got), sha256_hex(&song));
    let dl = &ui.get("transfers")["downloads"][0];
    assert_eq!(dl["done"], song.len() as u64);
    assert!(
        dl["peers"][0]["peer"]
            .as_str()
            .unwrap()
            .starts_with("alpha@"),
        "{dl}"
    );
    assert_eq!(dl["peers"][0]["bytes"], song.len() as u64);
    let history = ui.get("history?event=download");
    assert_eq!(history[0]["file"], "song.mp3");
    assert_eq!(history[0]["sha256"], sha256_hex(&song));
    assert!(
        ui.get("history?q=nothing-like-this")
            .as_array()
            .unwrap()
            .is_empty()
    );
    let a_ui = Ui::of(&a);
    assert!(
        wait_until(Duration::from_secs(10), || a_ui.get("history?event=upload")
            [0]["file"]
            == "song.mp3"),
        "{}",
        a_ui.get("history")
    );

    shares_are_added_edited_and_removed(&ui, &net.dir.path().join("extra"));
    events_stream_the_state(&ui);
}

fn shares_are_added_edited_and_removed(ui: &Ui, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("live.ogg"), b"la la").unwrap();
    let path = dir.canonicalize().unwrap().display().to_string();
    let body = serde_json::json!({"path": path, "comment": "live set", "category": "audio"});
    let added = ui.call("POST", "shares", Some(body));
    assert_eq!(added.status, 201, "{}", added.body);
    let root = |ui: &Ui| {
        ui.get("shares")["roots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["path"] == path.as_str())
            .cloned()
    };
    assert_eq!(root(ui).unwrap()["comment"], "live set");
    let edit = serde_json::json!({"path": path, "comment": "second set", "category": "other"});
    assert_eq!(ui.call("PATCH", "shares", Some(edit)).status, 200);
    let r = root(ui).unwrap();
    assert_eq!(
        (r["comment"].as_str(), r["category"].as_str()),
        (Some("second set"), Some("other"))
    );
    assert!(
        wait_until(Duration::from_secs(10), || ui.get("shares")["files"] == 2),
        "{}",
        ui.get("shares")
    );
    let q = format!("shares?path={}", path.replace('/', "%2F"));
    assert_eq!(ui.call("DELETE", &q, None).status, 200);
    assert!(root(ui).is_none());
    ui.call("DELETE", &q, None)
        .refused(404, "a share removed twice");
}

/// The event stream starts with the node's state, one event per kind.
fn events_stream_the_state(ui: &Ui) {
    let mut s = TcpStream::connect(&ui.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = format!(
        "GET /api/v1/events HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\n\r\n",
        ui.addr,
        ui.bearer()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut seen = String::new();
    let started = Instant::now();
    let mut buf = [0u8; 65536];
    while started.elapsed() < Duration::from_secs(5) && !seen.contains("event: contents") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    assert!(seen.contains("content-type: text/event-stream"), "{seen}");
    for ev in ["status", "peers", "transfers", "shares", "contents"] {
        assert!(
            seen.contains(&format!("event: {ev}\ndata: ")),
            "no {ev} event in {seen}"
        );
    }
}

/// Without the token, from another Host or origin, without the CSRF
/// header, or with bad input: refused with a status and a JSON message.
/// The overview warns about a tracker the node cannot reach, and stops
/// when it answers (nothing listens on the port given here).
#[test]
fn an_unreachable_tracker_is_a_warning() {
    let net = Net::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let a = net.in_process_with("alpha", &[], &["--tracker", &url]);
    let ui = Ui::of(&a);
    let warned = |ui: &Ui| {
        ui.get("status")["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|w| w.as_str())
            .any(|w| w.contains(&url) && w.contains("is unreachable"))
    };
    assert!(
        wait_until(Duration::from_secs(10), || warned(&ui)),
        "{}",
        ui.get("status")["warnings"]
    );
}

#[test]
fn what_is_refused_is_refused_with_a_json_error() {
    let net = Net::new();
    let a = net.in_process("alpha", &[]);
    let ui = Ui::of(&a);
    ui.raw("GET", "/api/v1/status", &[], None)
        .refused(401, "no token");
    ui.raw(
        "GET",
        "/api/v1/status",
        &[("Authorization", "Bearer 00")],
        None,
    )
    .refused(401, "wrong token");
    let auth = ui.bearer();
    let port = ui.addr.rsplit_once(':').unwrap().1;
    for host in [
        format!("evil.example:{port}"),
        format!("127.0.0.2:{port}"),
        "localhost".into(),
    ] {
        let h = [("Host", host.as_str()), ("Authorization", auth.as_str())];
        ui.raw("GET", "/api/v1/status", &h, None)
            .refused(421, &format!("Host {host}"));
        ui.raw("GET", "/", &[("Host", host.as_str())], None)
            .refused(421, "page from a foreign Host");
    }
    let local = format!("localhost:{port}");
    assert_eq!(
        ui.raw(
            "GET",
            "/api/v1/status",
            &[("Host", &local), ("Authorization", &auth)],
            None
        )
        .status,
        200
    );

    // The page: its cookie, its CSRF token, headers against framing.
    let page = ui.raw("GET", "/", &[], None);
    assert_eq!(page.status, 200);
    let cookie = page
        .header("set-cookie")
        .expect("the page sets its session cookie")
        .to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let cookie = cookie.split(';').next().unwrap().to_string();
    let csrf = page
        .body
        .split("name=\"lanshare-csrf\" content=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    for a in [&page, &ui.call("GET", "status", None)] {
        assert_eq!(a.header("x-frame-options"), Some("DENY"));
        assert!(
            a.header("content-security-policy")
                .unwrap()
                .contains("frame-ancestors 'none'")
        );
        assert!(a.header("access-control-allow-origin").is_none(), "no CORS");
    }
    let own = format!("http://{}", ui.addr);
    let body = r#"{"target":"nothing-running"}"#;
    let json = ("Content-Type", "application/json");
    let with = |extra: &[(&str, &str)]| {
        let mut h = vec![("Cookie", cookie.as_str()), json];
        h.extend_from_slice(extra);
        ui.raw("POST", "/api/v1/cancel", &h, Some(body))
    };
    assert_eq!(
        ui.raw("GET", "/api/v1/status", &[("Cookie", &cookie)], None)
            .status,
        200,
        "the page reads with its cookie"
    );
    with(&[]).refused(403, "a state change without the CSRF header");
    with(&[("X-Lanshare-CSRF", "forged")]).refused(403, "a wrong CSRF header");
    with(&[
        ("X-Lanshare-CSRF", &csrf),
        ("Origin", "http://evil.example"),
    ])
    .refused(403, "a cross-origin POST");
    let auth_h = [
        ("Authorization", auth.as_str()),
        ("Origin", "http://evil.example"),
        json,
    ];
    ui.raw("POST", "/api/v1/cancel", &auth_h, Some(body))
        .refused(403, "a cross-origin POST with the token");
    ui.raw(
        "OPTIONS",
        "/api/v1/fetch",
        &[("Origin", "http://evil.example")],
        None,
    )
    .refused(403, "a CORS preflight");
    // Past the guards: the answer is the route's own (nothing to cancel).
    with(&[("X-Lanshare-CSRF", &csrf), ("Origin", &own)]).refused(404, "cancel of nothing");

    bad_input_gets_a_4xx(&ui);
}

fn bad_input_gets_a_4xx(ui: &Ui) {
    let auth = ui.bearer();
    let raw_post = |path: &str, ctype: &str, body: &str| {
        let h = [("Authorization", auth.as_str()), ("Content-Type", ctype)];
        ui.raw("POST", &format!("/api/v1/{path}"), &h, Some(body))
    };
    raw_post("fetch", "application/json", "{not json").refused(400, "malformed JSON");
    raw_post("fetch", "text/plain", r#"{"query":"x"}"#).refused(415, "not JSON");
    raw_post("fetch", "application/json", r#"{"name":"x"}"#).refused(422, "missing field");
    let msg = ui
        .call("POST", "fetch", Some(serde_json::json!({"query": ""})))
        .refused(400, "empty query");
    assert!(msg.contains("query"), "{msg}");
    let msg = ui
        .call(
            "POST",
            "fetch",
            Some(serde_json::json!({"query": "nothing-like-this"})),
        )
        .refused(404, "unknown name");
    assert!(msg.contains("nothing-like-this"), "{msg}");
    let msg = ui
        .call("GET", "contents?category=films", None)
        .refused(400, "unknown category");
    assert!(msg.contains("films") && msg.contains("audio"), "{msg}");
    ui.call("GET", "contents?limit=0", None)
        .refused(400, "limit 0");
    ui.call("GET", "contents?limit=100000", None)
        .refused(400, "limit too large");
    ui.call("GET", "contents?offset=-1", None)
        .refused(400, "negative offset");
    ui.call("GET", "contents?sort=age", None)
        .refused(400, "unknown sort");
    ui.call("GET", "history?event=sideways", None)
        .refused(400, "unknown event");
    ui.call("DELETE", "transfers/abc", None)
        .refused(400, "not a number");
    ui.call("DELETE", "transfers/99", None)
        .refused(404, "no such transfer");
    ui.call("POST", "cancel", Some(serde_json::json!({"target": " "})))
        .refused(400, "empty target");
    let rel = serde_json::json!({"path": "relative/dir", "comment": ""});
    ui.call("POST", "shares", Some(rel))
        .refused(400, "relative path");
    let gone = serde_json::json!({"path": "/no/such/dir/anywhere"});
    ui.call("POST", "shares", Some(gone.clone()))
        .refused(400, "missing path");
    ui.call("PATCH", "shares", Some(gone))
        .refused(404, "editing what is not shared");
    let long = serde_json::json!({"path": "/tmp", "comment": "x".repeat(5000)});
    ui.call("POST", "shares", Some(long))
        .refused(400, "comment too long");
    ui.call("GET", "no-such-route", None)
        .refused(404, "unknown route");
    ui.call("PUT", "status", None).refused(405, "wrong method");
    let big = "x".repeat(100 * 1024);
    raw_post("fetch", "application/json", &big).refused(413, "body too large");
}

/// `--no-ui` serves nothing; a non-loopback `--ui` needs a password, and
/// then the page asks for it.
#[test]
fn ui_flags_and_the_password_rule() {
    let net = Net::new();
    let off = net.in_process_with("quiet", &[], &["--no-ui"]);
    assert_eq!(off.status()["ui"], serde_json::Value::Null);

    let home = net.home("open");
    let mut up = std::process::Command::new(super::harness::BIN)
        .args(["up", "--home"])
        .arg(&home)
        .args(net.args(None, &["--ui", "0.0.0.0:0"]))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let ended = wait_until(Duration::from_secs(20), || up.try_wait().unwrap().is_some());
    if !ended {
        let _ = up.kill();
    }
    let out = up.wait_with_output().unwrap();
    assert!(
        ended && !out.status.success(),
        "a dashboard on 0.0.0.0 without a password started"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--ui-password"), "{err}");

    let guarded = net.in_process_with(
        "guarded",
        &[],
        &["--ui", "0.0.0.0:0", "--ui-password", "sesame"],
    );
    let ui = Ui::of(&guarded);
    let port = ui.addr.rsplit_once(':').unwrap().1;
    let host = format!("127.0.0.1:{port}");
    let ui = Ui {
        addr: host.clone(),
        token: ui.token,
    };
    let page = ui.raw("GET", "/", &[], None);
    assert_eq!(page.status, 401);
    assert!(
        page.header("www-authenticate")
            .unwrap()
            .starts_with("Basic")
    );
    // "anyone:sesame"
    let ok = ui.raw(
        "GET",
        "/",
        &[("Authorization", "Basic YW55b25lOnNlc2FtZQ==")],
        None,
    );
    assert_eq!(ok.status, 200);
    let rebind = [
        ("Host", "dashboard.example"),
        ("Authorization", "Basic YW55b25lOnNlc2FtZQ=="),
    ];
    assert_eq!(
        ui.raw("GET", "/", &rebind, None).status,
        421,
        "only IP literals on a wildcard address"
    );
    assert_eq!(
        ui.call("GET", "status", None).status,
        200,
        "scripts still use the token"
    );
}
