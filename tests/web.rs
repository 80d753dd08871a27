//! The web page's HTTP side, no browser needed: what a browser gets (the page, its
//! files, their security and cache headers), what curl and scripts still get, and
//! the token as a browser sends it, in a `Sec-WebSocket-Protocol` entry.

mod common;

use common::*;

/// The policy the page is served with.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// What Chromium sends for a page.
const BROWSER_ACCEPT: &str =
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8";

/// A plain GET of `target` with `extra_headers` (each ending in `\r\n`); the whole answer.
async fn get(server: &Server, target: &str, extra_headers: &str) -> Answer {
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n{extra_headers}\r\n",
        server.port
    );
    Answer::parse(&raw_exchange(server.addr(), request.as_bytes()).await)
}

/// An HTTP answer, taken apart.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn parse(text: &str) -> Answer {
        let (head, body) = text.split_once("\r\n\r\n").expect("a complete head");
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head}"));
        let headers = lines
            .map(|l| {
                let (name, value) = l.split_once(": ").expect("a header line");
                (name.to_ascii_lowercase(), value.to_owned())
            })
            .collect();
        Answer {
            status,
            headers,
            body: body.to_owned(),
        }
    }

    /// The one value of header `name`; panics when it is missing or repeated.
    fn header(&self, name: &str) -> &str {
        let values: Vec<_> = self
            .headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(values.len(), 1, "{name} in {self:#?}");
        values[0]
    }

    fn has(&self, name: &str) -> bool {
        self.headers.iter().any(|(n, _)| n == name)
    }
}

#[tokio::test]
async fn a_browser_gets_the_page_with_a_strict_policy_and_revalidates_it() {
    let server = Server::start(&[]).await;
    let accept = format!("Accept: {BROWSER_ACCEPT}\r\n");
    for room in ["/", "/rust", "/rust/"] {
        let page = get(&server, room, &accept).await;
        assert_eq!(page.status, 200, "{room}: {page:#?}");
        assert_eq!(page.header("content-type"), "text/html; charset=utf-8");
        assert_eq!(page.header("content-security-policy"), CSP);
        assert_eq!(page.header("x-content-type-options"), "nosniff");
        assert_eq!(page.header("cache-control"), "no-cache");
        assert_eq!(page.header("content-length"), page.body.len().to_string());
        assert!(page.body.starts_with("<!doctype html>"), "{}", page.body);
        assert!(
            page.body
                .contains("<script src=\"/_/chat.js\" defer></script>")
        );
    }

    // The browser's copy is current: 304, no body, the same validator.
    let page = get(&server, "/rust", &accept).await;
    let etag = page.header("etag");
    let again = get(&server, "/", &format!("{accept}If-None-Match: {etag}\r\n")).await;
    assert_eq!(again.status, 304, "{again:#?}");
    assert_eq!(again.body, "");
    assert!(!again.has("content-length") && !again.has("content-type"));
    assert_eq!(again.header("etag"), etag);
    assert_eq!(again.header("cache-control"), "no-cache");
    let stale = get(&server, "/", &format!("{accept}If-None-Match: \"0\"\r\n")).await;
    assert_eq!(stale.status, 200);

    // A path that is no room: the rule, in one line.
    let nested = get(&server, "/a/b", &accept).await;
    assert_eq!(nested.status, 400);
    assert_eq!(
        nested.body,
        "invalid room name \"a/b\": use 1 to 32 letters, digits, '-', '_' or '.'\n"
    );
}

#[tokio::test]
async fn the_pages_files_are_served_with_their_types_and_no_others() {
    let server = Server::start(&[]).await;
    for (file, content_type, start) in [
        ("/_/chat.js", "text/javascript; charset=utf-8", "// "),
        ("/_/chat.css", "text/css; charset=utf-8", "/* "),
        ("/_/icon.svg", "image/svg+xml", "<svg "),
    ] {
        // A script or a style is asked for with `*/*`, not `text/html`.
        let answer = get(&server, file, "Accept: */*\r\n").await;
        assert_eq!(answer.status, 200, "{file}: {answer:#?}");
        assert_eq!(answer.header("content-type"), content_type);
        assert_eq!(answer.header("x-content-type-options"), "nosniff");
        assert_eq!(answer.header("content-security-policy"), CSP);
        assert_eq!(answer.header("cache-control"), "no-cache");
        assert!(answer.body.starts_with(start), "{file}: {}", answer.body);
        let etag = answer.header("etag");
        let again = get(&server, file, &format!("If-None-Match: {etag}\r\n")).await;
        assert_eq!(again.status, 304, "{file}");
    }
    let missing = get(&server, "/_/chat.jsx", "").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.body, "no such file \"/_/chat.jsx\"\n");
}

#[tokio::test]
async fn plain_requests_that_do_not_ask_for_html_keep_todays_answers() {
    let server = Server::start(&[]).await;
    for accept in ["", "Accept: */*\r\n", "Accept: application/json\r\n"] {
        let answer = get(&server, "/rust", accept).await;
        assert_eq!(answer.status, 426, "{accept:?}: {answer:#?}");
        assert_eq!(answer.header("upgrade"), "websocket");
        assert_eq!(
            answer.body,
            "this is a WebSocket chat server: connect with a WebSocket client such as `cargo run --bin client`\n"
        );
    }
    let health = get(
        &server,
        "/healthz",
        &format!("Accept: {BROWSER_ACCEPT}\r\n"),
    )
    .await;
    assert_eq!(health.status, 200);
    assert_eq!(health.header("content-type"), "application/json");
    // (The 426 answers above may still be closing: the count is not checked here.)
    assert!(
        health
            .body
            .starts_with("{\"status\":\"ok\",\"connections\":"),
        "{health:#?}"
    );
}

#[tokio::test]
async fn the_token_may_come_in_a_subprotocol_entry_and_is_never_echoed_or_logged() {
    let token = "open sesame/+";
    // base64url of the token, without padding.
    let encoded = "b3BlbiBzZXNhbWUvKw";
    let mut server = Server::start(&["--token", token]).await;
    let addr = server.addr();

    let protocols = |entry: &str| format!("Sec-WebSocket-Protocol: broadcast-chat.v1, {entry}\r\n");
    let accepted = upgrade_head(addr, "/", &protocols(&format!("bearer.{encoded}"))).await;
    assert!(accepted.starts_with("HTTP/1.1 101 "), "{accepted}");
    // Exactly the chat's protocol is chosen; the token's entry is never named.
    let chosen: Vec<_> = accepted
        .lines()
        .filter(|l| {
            l.to_ascii_lowercase()
                .starts_with("sec-websocket-protocol:")
        })
        .collect();
    assert_eq!(chosen, ["Sec-WebSocket-Protocol: broadcast-chat.v1"]);
    assert!(
        !accepted.contains(encoded) && !accepted.contains("bearer"),
        "{accepted}"
    );

    for refused in [
        protocols("bearer.Z3Vlc3M"),               // "guess"
        protocols(&format!("bearer.{encoded}==")), // padded: not base64url
        protocols(&format!("Bearer.{encoded}")),   // the prefix is exact
        "Sec-WebSocket-Protocol: broadcast-chat.v1\r\n".to_owned(),
    ] {
        let status = upgrade_status(addr, "/", &refused).await;
        assert_eq!(status, "HTTP/1.1 401 Unauthorized", "{refused}");
    }
    // Alone, without the chat's protocol, it admits a classic client.
    let classic = upgrade_head(
        addr,
        "/",
        &format!("Sec-WebSocket-Protocol: bearer.{encoded}\r\n"),
    )
    .await;
    assert!(classic.starts_with("HTTP/1.1 101 "), "{classic}");
    assert!(
        !classic
            .to_ascii_lowercase()
            .contains("sec-websocket-protocol"),
        "{classic}"
    );
    // The header still works, as before.
    let header = upgrade_status(addr, "/", &format!("Authorization: Bearer {token}\r\n")).await;
    assert_eq!(header, "HTTP/1.1 101 Switching Protocols");

    // The page's admission check answers as the upgrade would.
    assert_eq!(get(&server, "/_/auth", "").await.status, 401);
    assert_eq!(
        get(&server, "/_/auth", "Authorization: Bearer guess\r\n")
            .await
            .status,
        401
    );
    let admitted = get(
        &server,
        "/_/auth",
        &format!("Authorization: Bearer {token}\r\n"),
    )
    .await;
    assert_eq!(admitted.status, 204, "{admitted:#?}");
    assert_eq!(admitted.body, "");

    server.terminate();
    assert_eq!(server.wait().await.code(), Some(0));
    let log = server.stderr.complete().await;
    assert_eq!(
        log.iter()
            .filter(|l| log_event(l) == Some("refused")
                && log_field(l, "status").as_deref() == Some("401"))
            .count(),
        4,
        "{log:#?}"
    );
    assert!(
        !log.iter()
            .any(|l| l.contains("sesame") || l.contains(encoded)),
        "the token leaked into the log: {log:#?}"
    );
}

#[tokio::test]
async fn with_origins_restricted_the_servers_own_page_may_still_connect() {
    let server = Server::start(&["--allow-origin", "https://chat.example"]).await;
    let addr = server.addr();
    // `upgrade_request` says `Host: localhost`: the server's own origin is
    // http://localhost (it serves no TLS).
    for (origin, status) in [
        ("http://localhost", "HTTP/1.1 101 Switching Protocols"),
        ("HTTP://LOCALHOST/", "HTTP/1.1 101 Switching Protocols"),
        ("https://chat.example", "HTTP/1.1 101 Switching Protocols"),
        ("https://localhost", "HTTP/1.1 403 Forbidden"),
        ("http://localhost:8080", "HTTP/1.1 403 Forbidden"),
        ("http://evil.example", "HTTP/1.1 403 Forbidden"),
    ] {
        let answer = upgrade_status(addr, "/", &format!("Origin: {origin}\r\n")).await;
        assert_eq!(answer, status, "{origin}");
    }
}
