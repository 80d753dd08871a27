//! Signed tokens for the tests: key files, `server token`, and upgrades and
//! publishes that present a token.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_websockets::ClientBuilder;

use super::{Server, WAIT, Ws, raw_exchange, upgrade_request};

/// A secret of the tests' own, for `--auth-key`.
pub const SECRET: &str = "an HMAC secret of at least 32 bytes, for the tests";

/// A folder of this test's own for key files.
pub fn key_dir(name: &str) -> PathBuf {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("auth-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// An HMAC secret file in `dir`; returns its path.
pub fn secret(dir: &Path, file: &str, secret: &str) -> String {
    let path = dir.join(file);
    std::fs::write(&path, format!("{secret}\n")).expect("write the secret");
    path.display().to_string()
}

/// The token `server token ARGS` prints.
pub fn mint(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_server"))
        .arg("token")
        .args(args)
        .output()
        .expect("run server token");
    assert!(
        out.status.success(),
        "server token {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).expect("utf-8");
    let token = token.trim_end_matches('\n');
    assert_eq!(token.lines().count(), 1, "one line: {token:?}");
    assert_eq!(token.split('.').count(), 3, "a JWT: {token:?}");
    token.to_owned()
}

/// The answer's status line and its one-line body, for an upgrade of `target`
/// with `token` as `Authorization: Bearer`.
pub async fn refusal(server: &Server, target: &str, token: Option<&str>) -> (String, String) {
    let header = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let answer = raw_exchange(server.addr(), upgrade_request(target, &header).as_bytes()).await;
    let status = answer.lines().next().unwrap_or_default().to_owned();
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.trim_end().to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A WebSocket to `target` on `server` with `token`, in the structured format when
/// `structured`; nothing read yet.
pub async fn connect_with(server: &Server, target: &str, token: &str, structured: bool) -> Ws {
    let uri: http::Uri = format!("{}{target}", server.url()).parse().expect("url");
    let mut builder = ClientBuilder::from_uri(uri)
        .add_header(
            http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().expect("header value"),
        )
        .expect("header");
    if structured {
        builder = builder
            .add_header(
                http::header::SEC_WEBSOCKET_PROTOCOL,
                http::HeaderValue::from_static("broadcast-chat.v1"),
            )
            .expect("header");
    }
    timeout(WAIT, async {
        let stream = TcpStream::connect(server.addr())
            .await
            .expect("tcp connect");
        builder.connect_on(stream).await.expect("upgrade").0
    })
    .await
    .expect("connect in time")
}

/// Sends `request` (a whole HTTP request) and splits the answer: the status line,
/// the head's lines, and the body without its line end.
pub async fn exchange(addr: SocketAddr, request: &str) -> (String, String, String) {
    let answer = raw_exchange(addr, request.as_bytes()).await;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.lines().next().unwrap_or_default().to_owned();
    (
        status,
        head.to_owned(),
        body.trim_end_matches('\n').to_owned(),
    )
}
