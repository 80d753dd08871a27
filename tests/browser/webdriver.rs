//! A small WebDriver client for the browser tests: chromedriver on a port of its own
//! choosing, headless Chromium sessions with a fresh profile each, and the few
//! commands the tests use (open a page, run a script, press keys, take a
//! screenshot), each bounded by the tests' `WAIT`. Written by hand over the W3C
//! WebDriver protocol (JSON over HTTP/1.1), as the server's handshake is, rather
//! than with a crate that would bring an HTTP stack and two Unicode libraries.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::timeout;

use crate::common::WAIT;

/// The flags headless Chromium needs here: as root (no sandbox), without a GPU,
/// and without the background traffic that this machine's closed network refuses.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-crash-reporter",
];

/// The key WebDriver sends for Enter.
pub const ENTER: char = '\u{E007}';

/// The first executable called `name` on `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A running chromedriver, in a process group of its own with the Chromiums it
/// starts: dropping it ends the whole group, so no browser outlives a test, even
/// one that failed before its session was made.
pub struct Driver {
    child: Child,
    port: u16,
    chromium: PathBuf,
    /// The browsers' profile folders, removed once nothing runs in them.
    profiles: std::sync::Mutex<Vec<PathBuf>>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(group) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{group}")])
                .stderr(Stdio::null())
                .status();
        }
        let profiles = std::mem::take(&mut *self.profiles.lock().expect("profiles lock"));
        for profile in profiles {
            // A browser that was just killed may still be writing for a moment.
            for _ in 0..20 {
                if std::fs::remove_dir_all(&profile).is_ok() || !profile.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Driver {
    /// Starts chromedriver and waits for the line that names its port. The tests
    /// that call it are ignored where chromium or chromedriver is not on `PATH`
    /// (see `build.rs`).
    pub async fn start() -> Driver {
        let chromium = on_path("chromium").expect("chromium on PATH");
        let chromedriver = on_path("chromedriver").expect("chromedriver on PATH");
        let mut child = Command::new(chromedriver)
            .arg("--port=0")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn chromedriver");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let port = timeout(WAIT, async {
            while let Some(line) = stdout.next_line().await.expect("read chromedriver") {
                // "ChromeDriver was started successfully on port 41235."
                if let Some(rest) = line.split(" on port ").nth(1)
                    && line.contains("started successfully")
                {
                    return rest.trim_end_matches('.').parse::<u16>().ok();
                }
            }
            None
        })
        .await
        .expect("chromedriver said its port in time")
        .expect("chromedriver's readiness line names its port");
        // Keep reading, so that chromedriver never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
        Driver {
            child,
            port,
            chromium,
            profiles: std::sync::Mutex::default(),
        }
    }

    /// A new headless Chromium with a fresh profile and a viewport of
    /// `width` × `height` CSS pixels.
    pub async fn browser(&self, width: u32, height: u32) -> Browser {
        static PROFILES: AtomicUsize = AtomicUsize::new(0);
        let profile = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "chromium-{}-{}",
            std::process::id(),
            PROFILES.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&profile);
        self.profiles
            .lock()
            .expect("profiles lock")
            .push(profile.clone());
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| (*f).to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        args.push(format!("--window-size={width},{height}"));
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            // The TLS test's certificate is made at run time.
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {"binary": self.chromium, "args": args},
        }}});
        let created = request(self.port, "POST", "/session", Some(&capabilities)).await;
        let id = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_owned();
        let browser = Browser {
            port: self.port,
            id,
        };
        browser.resize(width, height).await;
        browser
    }
}

/// One headless Chromium, driven through its WebDriver session; closed when
/// dropped, even when a test fails.
pub struct Browser {
    port: u16,
    id: String,
}

impl Browser {
    async fn command(&self, method: &str, command: &str, body: Option<&Value>) -> Value {
        let path = format!("/session/{}/{command}", self.id);
        request(self.port, method, &path, body).await
    }

    /// Sets the page's viewport to exactly `width` × `height` CSS pixels, one
    /// device pixel each, as a phone or a desktop window would have it.
    pub async fn resize(&self, width: u32, height: u32) {
        let metrics = json!({"cmd": "Emulation.setDeviceMetricsOverride", "params": {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600,
        }});
        self.command("POST", "goog/cdp/execute", Some(&metrics))
            .await;
    }

    /// Opens `url` and waits for it to load.
    pub async fn open(&self, url: &str) {
        self.command("POST", "url", Some(&json!({ "url": url })))
            .await;
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page and
    /// returns what it returns.
    pub async fn run(&self, script: &str, args: &[Value]) -> Value {
        self.command(
            "POST",
            "execute/sync",
            Some(&json!({ "script": script, "args": args })),
        )
        .await
    }

    /// Presses the keys of `text` (`ENTER` for Enter) on whatever has the focus,
    /// as a person at the keyboard would.
    pub async fn type_keys(&self, text: &str) {
        let keys: Vec<Value> = text
            .chars()
            .flat_map(|c| {
                let key = c.to_string();
                [
                    json!({"type": "keyDown", "value": key}),
                    json!({"type": "keyUp", "value": key}),
                ]
            })
            .collect();
        let actions = json!({"actions": [{"type": "key", "id": "keyboard", "actions": keys}]});
        self.command("POST", "actions", Some(&actions)).await;
    }

    /// The text of the dialog (`alert`) open in the page, if one is.
    pub async fn open_dialog(&self) -> Option<String> {
        let path = format!("/session/{}/alert/text", self.id);
        let (status, answer) = exchange(self.port, "GET", &path, None).await;
        (status == 200).then(|| answer["value"].to_string())
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let png = self.command("GET", "screenshot", None).await;
        base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("a base64 screenshot"))
            .expect("valid base64")
    }

    /// Runs `script` every 50 ms until it returns something other than `null` or
    /// `false`, and returns that; panics after `WAIT` with `what`, the last result
    /// and what the page shows.
    pub async fn wait_for(&self, what: &str, script: &str, args: &[Value]) -> Value {
        let mut last = Value::Null;
        let found = timeout(WAIT, async {
            loop {
                last = self.run(script, args).await;
                if !matches!(last, Value::Null | Value::Bool(false)) {
                    return last.clone();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        match found {
            Ok(value) => value,
            Err(_) => {
                let shown = self.run("return document.body.innerText", &[]).await;
                panic!(
                    "waited {WAIT:?} for {what}; the script last returned {last}; the page shows:\n{}",
                    shown.as_str().unwrap_or_default()
                )
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Blocking, and bounded: a drop cannot wait on the runtime, and a Chromium
        // left running would outlive the test.
        let path = format!("/session/{}", self.id);
        let _ = blocking_request(self.port, "DELETE", &path);
    }
}

/// Sends one WebDriver command and returns its `value`; panics on an error answer.
async fn request(port: u16, method: &str, path: &str, body: Option<&Value>) -> Value {
    let (status, answer) = exchange(port, method, path, body).await;
    assert_eq!(status, 200, "{method} {path} failed: {answer}");
    answer["value"].clone()
}

/// The HTTP request for one WebDriver command: one connection each, closed after.
fn http_request(method: &str, path: &str, body: Option<&Value>) -> Vec<u8> {
    let body = body.map(Value::to_string).unwrap_or_default();
    format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The status and the JSON body of a complete WebDriver answer, or `None` while
/// `answer` does not hold all of it yet (chromedriver keeps the connection open, so
/// the end is known by `Content-Length`).
fn parse_answer(answer: &[u8]) -> Option<(u16, Value)> {
    let end = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&answer[..end]);
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no Content-Length in {head}"));
    let body = answer.get(end + 4..end + 4 + length)?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head}"));
    let json = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)));
    Some((status, json))
}

async fn exchange(port: u16, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    timeout(WAIT, async {
        let mut tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect to chromedriver");
        tcp.write_all(&http_request(method, path, body))
            .await
            .expect("write to chromedriver");
        let mut answer = Vec::new();
        loop {
            if let Some(parsed) = parse_answer(&answer) {
                return parsed;
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = tcp.read(&mut chunk).await.expect("read from chromedriver");
            assert!(
                n > 0,
                "chromedriver closed before answering {method} {path}"
            );
            answer.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("chromedriver did not answer {method} {path} within {WAIT:?}"))
}

fn blocking_request(port: u16, method: &str, path: &str) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    tcp.write_all(&http_request(method, path, None))?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    while parse_answer(&answer).is_none() {
        match tcp.read(&mut chunk)? {
            0 => break,
            n => answer.extend_from_slice(&chunk[..n]),
        }
    }
    Ok(())
}
