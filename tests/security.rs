//! Who may join (token, origin, connection limit), TLS, flood control and churn:
//! abuse costs only the abuser.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use std::process::Stdio;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use tokio::time::timeout;
use tokio_websockets::Message;

#[tokio::test]
async fn token_is_required_and_checked() {
    let mut server = Server::start(&["--token", "s3cret-token"]).await;
    let addr = server.addr();
    assert!(
        upgrade_status(addr, "/", "")
            .await
            .starts_with("HTTP/1.1 401")
    );
    assert!(
        upgrade_status(addr, "/", "Authorization: Bearer wrong\r\n")
            .await
            .starts_with("HTTP/1.1 401")
    );
    assert!(
        upgrade_status(addr, "/", "Authorization: Bearer s3cret-token\r\n")
            .await
            .starts_with("HTTP/1.1 101")
    );

    let url = server.url();
    let mut wrong = Client::start(&["--url", &url, "--token", "guess"]);
    assert_eq!(wrong.wait().await.code(), Some(1));
    assert_eq!(
        wrong.stderr.complete().await,
        ["error: the server refused the token (401)"]
    );

    let mut none = Client::start(&["--url", &url]);
    assert_eq!(none.wait().await.code(), Some(1));
    assert_eq!(
        none.stderr.complete().await,
        ["error: the server requires a token (401): pass --token or set CHAT_TOKEN"]
    );

    let mut right = Client::start_with_env(&["--url", &url], &[("CHAT_TOKEN", "s3cret-token")]);
    right.welcomed().await;
    right.close_stdin();
    assert_eq!(right.wait().await.code(), Some(0));

    server.terminate();
    assert_eq!(server.wait().await.code(), Some(0));
    let log = server.stderr.complete().await;
    assert!(
        log.iter()
            .any(|l| log_event(l) == Some("refused")
                && log_field(l, "status").as_deref() == Some("401")),
        "{log:#?}"
    );
    assert!(
        !log.iter().any(|l| l.contains("s3cret")),
        "the token leaked into the log"
    );
}

#[tokio::test]
async fn health_check_answers_without_the_token() {
    let server = Server::start(&["--token", "s3cret-token"]).await;
    let answer = raw_exchange(
        server.addr(),
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer.contains("\r\nContent-Type: application/json\r\n"),
        "{answer}"
    );
    assert!(
        answer.ends_with("\r\n\r\n{\"status\":\"ok\",\"connections\":0,\"store\":\"memory\"}\n"),
        "{answer}"
    );
}

#[tokio::test]
async fn handshakes_in_progress_count_toward_max_connections() {
    let server = Server::start(&["--max-connections", "2"]).await;
    // Two connections that have sent only half a request: no WebSocket yet.
    let mut half = Vec::new();
    for _ in 0..2 {
        let mut tcp = TcpStream::connect(server.addr()).await.expect("connect");
        tcp.write_all(b"GET / HTTP/1.1\r\n").await.expect("write");
        half.push(tcp);
    }
    // Until the server has accepted both, an upgrade may still get through; once it
    // has, upgrades are refused.
    let status = timeout(WAIT, async {
        loop {
            let status = upgrade_status(server.addr(), "/", "").await;
            if status.starts_with("HTTP/1.1 503") {
                return status;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("a 503 once two handshakes are open");
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
    // One of them goes away: there is room again.
    half.pop();
    let status = timeout(WAIT, async {
        loop {
            let status = upgrade_status(server.addr(), "/", "").await;
            if status.starts_with("HTTP/1.1 101") {
                return status;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("an upgrade once a slot is free");
    assert_eq!(status, "HTTP/1.1 101 Switching Protocols");
}

#[tokio::test]
async fn token_from_the_environment_protects_the_server() {
    let server = Server::start_with_env(&[], &[("CHAT_TOKEN", "from-env")]).await;
    assert!(
        upgrade_status(server.addr(), "/", "")
            .await
            .starts_with("HTTP/1.1 401")
    );
    assert!(
        upgrade_status(server.addr(), "/", "Authorization: Bearer from-env\r\n")
            .await
            .starts_with("HTTP/1.1 101")
    );
}

#[tokio::test]
async fn origins_not_allowed_get_403_and_clients_without_origin_are_unaffected() {
    let server = Server::start(&[
        "--allow-origin",
        "https://chat.example",
        "--allow-origin",
        "http://localhost:8080",
    ])
    .await;
    let addr = server.addr();
    assert!(
        upgrade_status(addr, "/", "Origin: https://evil.example\r\n")
            .await
            .starts_with("HTTP/1.1 403")
    );
    assert!(
        upgrade_status(addr, "/", "Origin: https://chat.example\r\n")
            .await
            .starts_with("HTTP/1.1 101")
    );
    assert!(
        upgrade_status(addr, "/", "Origin: http://localhost:8080\r\n")
            .await
            .starts_with("HTTP/1.1 101")
    );
    assert!(
        upgrade_status(addr, "/", "")
            .await
            .starts_with("HTTP/1.1 101")
    );
}

#[tokio::test]
async fn one_over_max_connections_gets_503_and_the_others_stay() {
    let server = Server::start(&["--max-connections", "3"]).await;
    let mut alice = connect(&server.url()).await;
    let mut bob = connect(&server.url()).await;
    let _carol = connect(&server.url()).await;

    assert!(
        upgrade_status(server.addr(), "/", "")
            .await
            .starts_with("HTTP/1.1 503")
    );
    let mut client = Client::start(&["--url", &server.url()]);
    assert_eq!(client.wait().await.code(), Some(1));
    let stderr = client.stderr.complete().await;
    assert_eq!(stderr.len(), 1, "{stderr:?}");
    assert!(
        stderr[0].contains(
            "the server refused the upgrade with HTTP 503: too many connections; try again later"
        ),
        "{stderr:?}"
    );

    send(&mut alice, "still fine").await;
    assert_eq!(recv_text(&mut bob).await, tagged(&alice, "still fine"));
}

#[tokio::test]
async fn flooding_client_gets_notices_then_1008_and_others_keep_their_latency() {
    let server = Server::start(&[
        "--max-rate",
        "5",
        "--max-burst",
        "5",
        "--flood-timeout",
        "3s",
    ])
    .await;
    let mut flooder = connect(&server.url()).await;
    let flooder_tag = format!("{:?}: ", local_addr(&flooder));
    let bystander = connect(&server.url()).await;
    let bystander_addr = local_addr(&bystander);
    let (probe, mut heard) = chatter(bystander);

    // The flooder sends 200 messages a second until it is closed, and says when
    // the server first told it to slow down.
    let (limited_tx, limited) = tokio::sync::oneshot::channel();
    let flood = tokio::spawn(async move {
        let started = Instant::now();
        let mut limited_tx = Some(limited_tx);
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        let (mut notices, mut sent) = (Vec::new(), 0);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    sent += 1;
                    if flooder.send(Message::text(format!("flood {sent}"))).await.is_err() {
                        break (notices, None, started.elapsed());
                    }
                }
                message = flooder.next() => match message {
                    Some(Ok(m)) if m.is_close() => {
                        let (code, reason) = m.as_close().expect("close");
                        let close = Some((u16::from(code), reason.to_owned()));
                        break (notices, close, started.elapsed());
                    }
                    Some(Ok(m)) => {
                        if let Some(text) = m.as_text().filter(|t| t.starts_with("* ")) {
                            notices.push(text.to_owned());
                            if let Some(tx) = limited_tx.take() {
                                let _ = tx.send(());
                            }
                        }
                    }
                    _ => break (notices, None, started.elapsed()),
                },
            }
        }
    });

    // While it is held to the rate, the bystander's messages (within its own
    // limit) go round as ever: each is back long before the flooder is closed.
    timeout(WAIT, limited)
        .await
        .expect("the flooder was told to slow down in time")
        .expect("flood task");
    let mut flood_heard = Vec::new();
    let mut round_trip = async |text: String| {
        probe.send(text.clone()).expect("bystander alive");
        let expected = format!("{bystander_addr:?}: {text:?}");
        loop {
            let line = next(&mut heard).await;
            if line == expected {
                break;
            }
            if let Some(flood) = line.strip_prefix(&flooder_tag) {
                flood_heard.push(flood.to_owned());
            }
        }
    };
    // A human pace, within the rate without the burst (pacing, not a wait).
    let mut pace = tokio::time::interval(Duration::from_millis(250));
    for i in 0..4 {
        pace.tick().await;
        round_trip(format!("probe {i}")).await;
        assert!(
            !flood.is_finished(),
            "probe {i} came back only after the flood"
        );
    }

    let (notices, close, lasted) = timeout(WAIT, flood)
        .await
        .expect("flooder closed in time")
        .expect("flood task");
    assert_eq!(
        close,
        Some((1008, "too many messages for too long".to_owned()))
    );
    assert!(!notices.is_empty(), "no slow-down notice");
    assert!(notices[0].starts_with("* slow down: "), "{notices:?}");
    assert!(
        notices[0].ends_with("dropped (the limit is 5 per second)"),
        "{notices:?}"
    );
    // Everything of the flooder's that got through is before this.
    round_trip("after the flood".to_owned()).await;
    let numbers: Vec<u32> = flood_heard
        .iter()
        .map(|f| {
            f.trim_matches('"')
                .strip_prefix("flood ")
                .and_then(|n| n.parse().ok())
        })
        .map(|n| n.expect("a flood message"))
        .collect();
    // The burst: the first five at once, and not the sixth, sent 5 ms later.
    assert_eq!(numbers.get(..5), Some(&[1, 2, 3, 4, 5][..]), "{numbers:?}");
    assert!(numbers.get(5).is_some_and(|&n| n > 6), "{numbers:?}");
    // Then the rate: about 5 a second for as long as the flood lasted.
    let rate_allows = 5 + (5.0 * lasted.as_secs_f64()).ceil() as usize;
    assert!(
        (10..=rate_allows).contains(&numbers.len()),
        "{} flood messages got through in {lasted:?}: {numbers:?}",
        numbers.len()
    );
}

#[tokio::test]
async fn churn_of_a_thousand_connections_costs_the_chatters_nothing() {
    let server = Server::start(&["--max-rate", "0", "--handshake-timeout", "2s"]).await;
    let addr = server.addr();
    let url = server.url();
    let alice = connect(&url).await;
    let alice_tag = format!("{:?}: ", local_addr(&alice));
    let (alice_tx, _alice_rx) = chatter(alice);
    let bob = connect(&url).await;
    let (_bob_tx, mut bob_rx) = chatter(bob);

    let churn = tokio::spawn(async move {
        let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(100));
        let mut tasks = Vec::new();
        for i in 0..1000 {
            let permit = limit.clone().acquire_owned().await.expect("semaphore");
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let _permit = permit;
                match i % 4 {
                    // Connect and vanish.
                    0 => drop(TcpStream::connect(addr).await),
                    // Half a handshake, then vanish.
                    1 => {
                        if let Ok(mut tcp) = TcpStream::connect(addr).await {
                            let _ = tcp
                                .write_all(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n")
                                .await;
                        }
                    }
                    // A real client that says a few things and drops the connection.
                    2 => {
                        let mut ws = connect_raw(&url).await;
                        for n in 0..3 {
                            let _ = ws.send(Message::text(format!("churn {i}.{n}"))).await;
                        }
                    }
                    // Garbage.
                    _ => {
                        if let Ok(mut tcp) = TcpStream::connect(addr).await {
                            let _ = tcp.write_all(b"\x00\xffnot http at all\r\n\r\n").await;
                        }
                    }
                }
            }));
        }
        for task in tasks {
            task.await.expect("churn task");
        }
    });

    // Alice talks steadily through the churn; Bob must hear every word, in order.
    let mut sent = 0;
    while !churn.is_finished() || sent < 50 {
        alice_tx
            .send(format!("steady {sent}"))
            .expect("alice alive");
        sent += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut heard = 0;
    while heard < sent {
        let line = next(&mut bob_rx).await;
        if line.starts_with(&alice_tag) {
            assert_eq!(
                line,
                format!("{alice_tag}\"steady {heard}\""),
                "bob missed a message"
            );
            heard += 1;
        }
    }
    churn.await.expect("churn");

    // Every churned connection is gone; only Alice and Bob remain.
    let settled = timeout(WAIT, async {
        loop {
            let open = open_connections(addr).await;
            if open == 2 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        settled.is_ok(),
        "open connections never returned to 2: {}",
        open_connections(addr).await
    );
}

/// A self-signed certificate for `localhost`, written as PEM files; returns the
/// certificate's and the key's paths.
fn self_signed(name: &str) -> (String, String) {
    let dir = tls_dir(name);
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .expect("generate certificate");
    (
        write(&dir, "cert.pem", &certified.cert.pem()),
        write(&dir, "key.pem", &certified.signing_key.serialize_pem()),
    )
}

#[tokio::test]
async fn chat_works_end_to_end_over_wss_with_the_right_ca() {
    let (cert, key) = self_signed("ok");
    let server = Server::start(&["--tls-cert", &cert, "--tls-key", &key]).await;
    let url = format!("wss://localhost:{}", server.port);

    let mut alice = Client::start(&["--url", &url, "--ca", &cert]);
    let mut bob = Client::start(&["--url", &url, "--ca", &cert]);
    alice.welcomed().await;
    bob.welcomed().await;
    server.stderr.wait_for_events("connected", 2).await;
    alice.send_line("over tls").await;
    let line = bob.stdout.wait_for("\"over tls\"").await;
    assert!(line.starts_with("From server: 127.0.0.1:"), "{line}");
    alice.stdout.wait_for("\"over tls\"").await;

    alice.close_stdin();
    bob.close_stdin();
    assert_eq!(alice.wait().await.code(), Some(0));
    assert_eq!(bob.wait().await.code(), Some(0));
}

#[tokio::test]
async fn client_without_the_ca_is_refused_with_one_line() {
    let (cert, key) = self_signed("noca");
    let server = Server::start(&["--tls-cert", &cert, "--tls-key", &key]).await;
    let url = format!("wss://localhost:{}", server.port);
    assert_eq!(
        refusal(&["--url", &url]).await,
        format!(
            "error: cannot connect to {url}: TLS handshake failed: the server's certificate \
             is from an unknown issuer (pass --ca FILE to trust a private CA or a self-signed certificate)"
        )
    );
}

/// Runs the client with `args`, expects it to fail, and returns its one line on stderr.
async fn refusal(args: &[&str]) -> String {
    refusal_with_env(args, &[]).await
}

/// Like [`refusal`], with extra environment variables.
async fn refusal_with_env(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut client = Client::start_with_env(args, env);
    assert_eq!(client.wait().await.code(), Some(1));
    let mut stderr = client.stderr.complete().await;
    assert_eq!(stderr.len(), 1, "{stderr:?}");
    stderr.remove(0)
}

/// A folder for one test's certificate files.
fn tls_dir(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("tls-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Writes `text` to `file` in `dir`; returns the file's path.
fn write(dir: &std::path::Path, file: &str, text: &str) -> String {
    let path = dir.join(file);
    std::fs::write(&path, text).expect("write a PEM file");
    path.display().to_string()
}

/// Certificate parameters for `names` (DNS names or IP addresses) with `CN=localhost`,
/// marked as a CA when `ca`: what `openssl req -x509` makes.
fn params(names: &[&str], ca: bool) -> rcgen::CertificateParams {
    let names = names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
    let mut params = rcgen::CertificateParams::new(names).expect("certificate parameters");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    if ca {
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    }
    params
}

/// A self-signed certificate for `names` (with `basicConstraints CA:TRUE` when `ca`)
/// written as PEM files; returns the certificate's and the key's paths.
fn self_signed_for(dir: &str, names: &[&str], ca: bool) -> (String, String) {
    let dir = tls_dir(dir);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params(names, ca).self_signed(&key).expect("certificate");
    (
        write(&dir, "cert.pem", &cert.pem()),
        write(&dir, "key.pem", &key.serialize_pem()),
    )
}

/// Two clients chat over `wss://` with `--ca cert`, one by name and one by IP address,
/// with a server using `cert` and `key`.
async fn chat_over_wss_trusting_the_certificate_itself(cert: &str, key: &str) {
    let server = Server::start(&["--tls-cert", cert, "--tls-key", key]).await;
    let by_name = format!("wss://localhost:{}", server.port);
    let by_address = format!("wss://127.0.0.1:{}", server.port);
    let mut alice = Client::start(&["--url", &by_name, "--ca", cert]);
    let mut bob = Client::start(&["--url", &by_address, "--ca", cert]);
    for client in [&alice, &bob] {
        client.welcomed().await;
    }
    server.stderr.wait_for_events("connected", 2).await;
    alice.send_line("self-signed").await;
    bob.stdout.wait_for("\"self-signed\"").await;

    alice.close_stdin();
    bob.close_stdin();
    assert_eq!(alice.wait().await.code(), Some(0));
    assert_eq!(bob.wait().await.code(), Some(0));
    assert!(alice.stderr.complete().await.is_empty());
    assert!(bob.stderr.complete().await.is_empty());
}

#[tokio::test]
#[cfg_attr(not(has_openssl), ignore = "needs openssl (apt-get install openssl)")]
async fn an_openssl_self_signed_certificate_given_with_ca_is_trusted() {
    let dir = tls_dir("openssl");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    // Exactly the command people copy: it marks the certificate as a CA (CA:TRUE).
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args(["-days", "30", "-subj", "/CN=localhost", "-addext"])
        .arg("subjectAltName=DNS:localhost,IP:127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run openssl");
    assert!(
        made.status.success(),
        "openssl failed: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let text = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&cert)
        .output()
        .expect("openssl x509");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("CA:TRUE"), "not the CA:TRUE case: {text}");
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    chat_over_wss_trusting_the_certificate_itself(&cert, &key).await;
}

#[tokio::test]
async fn a_self_signed_certificate_marked_as_a_ca_given_with_ca_is_trusted() {
    let (cert, key) = self_signed_for("ca-true", &["localhost", "127.0.0.1"], true);
    chat_over_wss_trusting_the_certificate_itself(&cert, &key).await;
}

#[tokio::test]
async fn a_ca_file_with_another_self_signed_certificate_is_refused() {
    let (cert, key) = self_signed_for("served", &["localhost"], true);
    let (other, _) = self_signed_for("other", &["localhost"], true);
    let server = Server::start(&["--tls-cert", &cert, "--tls-key", &key]).await;
    let url = format!("wss://localhost:{}", server.port);
    assert_eq!(
        refusal(&["--url", &url, "--ca", &other]).await,
        format!(
            "error: cannot connect to {url}: TLS handshake failed: the server's certificate \
             is not trusted (pass --ca FILE to trust a private CA or a self-signed certificate)"
        )
    );
    let (plain, _) = self_signed_for("other-plain", &["localhost"], false);
    assert_eq!(
        refusal(&["--url", &url, "--ca", &plain]).await,
        format!(
            "error: cannot connect to {url}: TLS handshake failed: the server's certificate \
             is not trusted (pass --ca FILE to trust a private CA or a self-signed certificate)"
        )
    );
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused_even_when_given_with_ca() {
    for (dir, names, host) in [
        ("name-ca", &["localhost"][..], "127.0.0.1"),
        ("name-plain", &["localhost"][..], "127.0.0.1"),
        ("address-ca", &["127.0.0.1"][..], "localhost"),
    ] {
        let (cert, key) = self_signed_for(dir, names, dir.ends_with("ca"));
        let server = Server::start(&["--tls-cert", &cert, "--tls-key", &key]).await;
        let url = format!("wss://{host}:{}", server.port);
        assert_eq!(
            refusal(&["--url", &url, "--ca", &cert]).await,
            format!(
                "error: cannot connect to {url}: TLS handshake failed: the server's certificate \
                 is for another name, not {host} (put a name it holds in the URL)"
            ),
            "{dir}"
        );
    }
}

#[tokio::test]
async fn the_systems_certificate_store_is_trusted_by_default() {
    let dir = tls_dir("system");
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = params(&[], true);
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Test system CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params(&["localhost"], false)
        .signed_by(&key, &issuer)
        .expect("server certificate");
    let store = write(&dir, "store.pem", &ca.pem());
    let cert = write(&dir, "cert.pem", &cert.pem());
    let key = write(&dir, "key.pem", &key.serialize_pem());
    let server = Server::start(&["--tls-cert", &cert, "--tls-key", &key]).await;
    let url = format!("wss://localhost:{}", server.port);

    // rustls-native-certs reads the store from SSL_CERT_FILE when it is set.
    let mut client = Client::start_with_env(&["--url", &url], &[("SSL_CERT_FILE", &store)]);
    client.welcomed().await;
    client.close_stdin();
    assert_eq!(client.wait().await.code(), Some(0));

    // A store that cannot be read is no error of its own: the bundled roots remain.
    let missing = dir.join("missing.pem").display().to_string();
    assert_eq!(
        refusal_with_env(&["--url", &url], &[("SSL_CERT_FILE", &missing)]).await,
        format!(
            "error: cannot connect to {url}: TLS handshake failed: the server's certificate \
             is from an unknown issuer (pass --ca FILE to trust a private CA or a self-signed certificate)"
        )
    );
}

#[tokio::test]
async fn wss_url_never_falls_back_to_plain_text() {
    let server = Server::start(&[]).await;
    let url = format!("wss://localhost:{}", server.port);
    let mut client = Client::start(&["--url", &url]);
    assert_eq!(client.wait().await.code(), Some(1));
    assert_eq!(
        client.stderr.complete().await,
        [format!(
            "error: cannot connect to {url}: TLS handshake failed: the server did not answer \
             in TLS (is it a plain ws:// server? try ws://)"
        )]
    );
    assert!(
        client.stdout.complete().await.is_empty(),
        "the client chatted in plain text"
    );
}

#[tokio::test]
async fn plain_client_cannot_talk_to_a_tls_server() {
    let (cert, key) = self_signed("plain");
    let server = Server::start(&["--tls-cert", &cert, "--tls-key", &key]).await;
    let url = server.url();
    assert_eq!(
        refusal(&["--url", &url]).await,
        format!(
            "error: cannot connect to {url}: the server closed the connection during the \
             handshake (is it a broadcast-chat server, and is it full?)"
        )
    );
}

#[tokio::test]
async fn bad_certificate_files_are_a_one_line_error() {
    let server = server_command()
        .args([
            "--port",
            "0",
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            "/nonexistent/key.pem",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn server");
    let output = timeout(WAIT, server.wait_with_output())
        .await
        .expect("exit in time")
        .expect("output");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: cannot load TLS certificate /nonexistent/cert.pem: "),
        "{stderr}"
    );
}
