//! Signed identities (`--auth-key`): tokens minted by `server token`, checked at the
//! upgrade (forged, expired, wrong room, read-only, a `?name` that is not the
//! token's), closed with 4001 when they expire while connected, session ids bound
//! to the token's name, and the limit on failed authentications.

mod common;

use common::tokens::*;
use common::*;
use serde_json::{Value, json};
use tokio::time::timeout;

async fn send_json(ws: &mut Ws, frame: &Value) {
    send(ws, &frame.to_string()).await;
}

#[tokio::test]
async fn signed_tokens_decide_who_comes_in_and_under_which_name() {
    let dir = key_dir("admit");
    let key = secret(
        &dir,
        "chat.key",
        "an HMAC secret of at least 32 bytes, for the tests",
    );
    let forger = secret(
        &dir,
        "other.key",
        "another secret of at least 32 bytes, not the server's",
    );
    let server = Server::start(&["--auth-key", &key]).await;
    let alice = mint(&[
        "--key",
        &key,
        "--name",
        "alice",
        "--rooms",
        "rust,team-*",
        "--expires",
        "1h",
    ]);

    let forged = mint(&[
        "--key",
        &forger,
        "--name",
        "alice",
        "--rooms",
        "*",
        "--expires",
        "1h",
    ]);
    let expired = mint(&[
        "--key",
        &key,
        "--name",
        "alice",
        "--rooms",
        "*",
        "--expires",
        "0s",
    ]);
    let status = |code: &str| format!("HTTP/1.1 {code}");
    assert_eq!(
        refusal(&server, "/rust", None).await,
        (
            status("401 Unauthorized"),
            "missing token: send Authorization: Bearer TOKEN".into()
        )
    );
    assert_eq!(
        refusal(&server, "/rust", Some(&forged)).await,
        (
            status("401 Unauthorized"),
            "invalid token: bad signature".into()
        )
    );
    assert_eq!(
        refusal(&server, "/rust", Some(&expired)).await,
        (
            status("401 Unauthorized"),
            "token expired: get a new one".into()
        )
    );
    assert_eq!(
        refusal(&server, "/ops", Some(&alice)).await,
        (
            status("403 Forbidden"),
            "the token does not allow the room \"ops\"".into()
        )
    );
    assert_eq!(
        refusal(&server, "/", Some(&alice)).await,
        (
            status("403 Forbidden"),
            "the token does not allow the lobby".into()
        )
    );
    assert_eq!(
        refusal(&server, "/rust?name=bob", Some(&alice)).await,
        (
            status("403 Forbidden"),
            "the name \"bob\" is not the token's (\"alice\"): leave ?name= out, or use the token's"
                .into()
        )
    );

    // Her two connections are one person: tagged alike, by the token's name alone.
    let mut laptop = connect_with(&server, "/team-a?name=alice", &alice, false).await;
    let mut phone = connect_with(&server, "/team-a", &alice, false).await;
    for ws in [&mut laptop, &mut phone] {
        assert_eq!(recv_text(ws).await, "Welcome to chat! Type a message");
    }
    send(&mut laptop, "from the laptop").await;
    send(&mut phone, "from the phone").await;
    for ws in [&mut laptop, &mut phone] {
        let mut got = vec![recv_text(ws).await, recv_text(ws).await];
        got.sort();
        assert_eq!(
            got,
            ["alice: \"from the laptop\"", "alice: \"from the phone\""]
        );
    }

    // A token that never expires in the clock's terms is taken, and its session
    // lives (no timer can be set that far).
    let forever = {
        use broadcast_chat::auth::{self, Claims, SigningKey};
        let key = SigningKey::load(std::path::Path::new(&key)).expect("key");
        let claims = Claims {
            sub: "methuselah".into(),
            exp: u64::MAX,
            rooms: vec!["*".into()],
            read_only: false,
            publish: false,
        };
        auth::mint(&key, &claims).expect("token")
    };
    let mut old = connect_with(&server, "/", &forever, false).await;
    assert_eq!(recv_text(&mut old).await, "Welcome to chat! Type a message");
    send(&mut old, "still here").await;
    assert_eq!(recv_text(&mut old).await, "methuselah: \"still here\"");

    // The command-line client says what the server said, in one line.
    let mut client = Client::start(&[
        "--url",
        &format!("{}/rust", server.url()),
        "--token",
        &expired,
    ]);
    assert_eq!(client.wait().await.code(), Some(1));
    assert_eq!(
        client.stderr.complete().await,
        ["error: the server refused the token (401): token expired: get a new one"]
    );
}

#[tokio::test]
async fn a_read_only_holder_reads_but_its_lines_never_reach_the_room() {
    let dir = key_dir("read-only");
    let key = secret(
        &dir,
        "chat.key",
        "an HMAC secret of at least 32 bytes, for the tests",
    );
    let server = Server::start(&["--auth-key", &key]).await;
    let reader = mint(&[
        "--key",
        &key,
        "--name",
        "carol",
        "--rooms",
        "rust",
        "--expires",
        "1h",
        "--read-only",
    ]);
    let writer = mint(&[
        "--key",
        &key,
        "--name",
        "dave",
        "--rooms",
        "rust",
        "--expires",
        "1h",
    ]);

    let mut classic = connect_with(&server, "/rust", &reader, false).await;
    assert_eq!(
        recv_text(&mut classic).await,
        "Welcome to chat! Type a message"
    );
    let (mut structured, welcome) = {
        let mut ws = connect_with(&server, "/rust", &reader, true).await;
        let welcome = recv_json(&mut ws).await;
        (ws, welcome)
    };
    assert_eq!(welcome["you"], "carol");
    let mut dave = connect_with(&server, "/rust", &writer, false).await;
    assert_eq!(
        recv_text(&mut dave).await,
        "Welcome to chat! Type a message"
    );

    send(&mut classic, "let me in").await;
    assert_eq!(
        recv_text(&mut classic).await,
        "* your token is read-only: your lines do not reach the room"
    );
    send_json(
        &mut structured,
        &json!({"type": "send", "id": 1, "text": "me too"}),
    )
    .await;
    assert_eq!(
        recv_json(&mut structured).await,
        json!({"type": "error", "code": "read-only", "text": "your token is read-only: your lines do not reach the room"})
    );
    // `who` is still answered; and the next line in the room is dave's: neither of
    // carol's reached it.
    send(&mut classic, "/who").await;
    assert_eq!(
        recv_text(&mut classic).await,
        "* 3 here: carol, carol, dave"
    );
    send(&mut dave, "hello").await;
    assert_eq!(recv_text(&mut dave).await, "dave: \"hello\"");
    assert_eq!(recv_text(&mut classic).await, "dave: \"hello\"");
    assert_eq!(recv_json(&mut structured).await["text"], "hello");
}

#[tokio::test]
async fn a_token_that_expires_while_connected_is_told_and_closed_with_4001() {
    let dir = key_dir("expiry");
    let key = secret(
        &dir,
        "chat.key",
        "an HMAC secret of at least 32 bytes, for the tests",
    );
    let server = Server::start(&["--auth-key", &key]).await;
    let brief = mint(&[
        "--key",
        &key,
        "--name",
        "erin",
        "--rooms",
        "*",
        "--expires",
        "2s",
    ]);

    let mut structured = connect_with(&server, "/", &brief, true).await;
    assert_eq!(recv_json(&mut structured).await["type"], "welcome");
    let mut classic = connect_with(&server, "/", &brief, false).await;
    assert_eq!(
        recv_text(&mut classic).await,
        "Welcome to chat! Type a message"
    );
    // The command-line client, with --reconnect, does not come back with it.
    let mut client = Client::start(&["--url", &server.url(), "--token", &brief, "--reconnect"]);
    client
        .stdout
        .wait_for_line("From server: Welcome to chat! Type a message")
        .await;

    assert_eq!(
        recv_json(&mut structured).await,
        json!({"type": "notice", "kind": "expired", "text": "* your token expired: get a new one to come back"})
    );
    assert_eq!(
        recv_close(&mut structured).await,
        (4001, "token expired".into())
    );
    assert_eq!(
        recv_text(&mut classic).await,
        "* your token expired: get a new one to come back"
    );
    assert_eq!(
        recv_close(&mut classic).await,
        (4001, "token expired".into())
    );

    assert_eq!(client.wait().await.code(), Some(0));
    assert_eq!(
        client.stderr.complete().await,
        ["the server closed the connection: 4001 (token expired)"],
        "one line, and no retry"
    );
}

#[tokio::test]
async fn a_session_id_is_bound_to_the_tokens_name() {
    let dir = key_dir("session");
    let key = secret(
        &dir,
        "chat.key",
        "an HMAC secret of at least 32 bytes, for the tests",
    );
    let server = Server::start(&["--auth-key", &key]).await;
    let alice = mint(&[
        "--key",
        &key,
        "--name",
        "alice",
        "--rooms",
        "*",
        "--expires",
        "1h",
    ]);
    let mallory = mint(&[
        "--key",
        &key,
        "--name",
        "mallory",
        "--rooms",
        "*",
        "--expires",
        "1h",
    ]);

    // Mallory knows alice's session id and sends ids ahead of hers: were the ids
    // shared, alice's next lines would be taken for repeats and dropped.
    let mut mallory = connect_with(&server, "/?session=alice-tab-1", &mallory, true).await;
    assert_eq!(recv_json(&mut mallory).await["type"], "welcome");
    send_json(
        &mut mallory,
        &json!({"type": "send", "id": 100, "text": "ahead"}),
    )
    .await;
    let ack = loop {
        let frame = recv_json(&mut mallory).await;
        if frame["type"] == "ack" {
            break frame;
        }
    };
    assert_eq!(ack["duplicate"], Value::Null);

    let mut alice = connect_with(&server, "/?session=alice-tab-1", &alice, true).await;
    assert_eq!(recv_json(&mut alice).await["type"], "welcome");
    send_json(
        &mut alice,
        &json!({"type": "send", "id": 1, "text": "mine"}),
    )
    .await;
    let mut seen = Vec::new();
    let ack = loop {
        let frame = recv_json(&mut alice).await;
        if frame["type"] == "ack" {
            break frame;
        }
        seen.push(frame);
    };
    assert_eq!(ack["duplicate"], Value::Null, "{ack}");
    let line = if seen.is_empty() {
        recv_json(&mut alice).await
    } else {
        seen.remove(0)
    };
    assert_eq!(
        (&line["from"], &line["text"]),
        (&json!("alice"), &json!("mine"))
    );
}

#[tokio::test]
async fn failed_authentications_are_limited_per_address_with_429() {
    let dir = key_dir("limit");
    let key = secret(
        &dir,
        "chat.key",
        "an HMAC secret of at least 32 bytes, for the tests",
    );
    let server = Server::start(&["--auth-key", &key, "--max-auth-failures", "3"]).await;
    let valid = mint(&[
        "--key",
        &key,
        "--name",
        "frank",
        "--rooms",
        "*",
        "--expires",
        "1h",
    ]);

    // Requests without a token are not guesses: they are not counted.
    for _ in 0..5 {
        assert_eq!(
            refusal(&server, "/", None).await.0,
            "HTTP/1.1 401 Unauthorized"
        );
    }
    for _ in 0..3 {
        assert_eq!(
            refusal(&server, "/", Some("guess")).await.0,
            "HTTP/1.1 401 Unauthorized"
        );
    }
    // The fourth attempt waits, right token or not.
    let header = format!("Authorization: Bearer {valid}\r\n");
    let answer = raw_exchange(server.addr(), upgrade_request("/", &header).as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
        "{answer}"
    );
    assert!(
        answer.contains("\r\nRetry-After: 20\r\n"),
        "three a minute: 20 s each: {answer}"
    );
    assert!(
        answer.ends_with(
            "\r\n\r\ntoo many failed authentications from this address; try again in 20 s\n"
        ),
        "{answer}"
    );
}

#[tokio::test]
#[cfg_attr(not(has_openssl), ignore = "needs openssl (apt-get install openssl)")]
async fn ed25519_and_rsa_public_keys_check_tokens_minted_with_their_private_keys() {
    let dir = key_dir("pem");
    for (kind, args) in [
        ("ed25519", &["-algorithm", "ed25519"][..]),
        (
            "rsa",
            &["-algorithm", "rsa", "-pkeyopt", "rsa_keygen_bits:2048"][..],
        ),
    ] {
        let private = dir.join(format!("{kind}.pem"));
        let public = dir.join(format!("{kind}.pub.pem"));
        let made = std::process::Command::new("openssl")
            .arg("genpkey")
            .args(args)
            .arg("-out")
            .arg(&private)
            // Its progress dots are noise in the test output.
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl genpkey");
        assert!(made.success(), "openssl genpkey {kind}");
        let status = std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public)
            .status()
            .expect("openssl pkey");
        assert!(status.success());
        let (private, public) = (private.display().to_string(), public.display().to_string());
        let server = Server::start(&["--auth-key", &public]).await;
        let token = mint(&[
            "--key",
            &private,
            "--name",
            "gina",
            "--rooms",
            "*",
            "--expires",
            "1h",
        ]);
        let mut ws = connect_with(&server, "/", &token, false).await;
        assert_eq!(
            recv_text(&mut ws).await,
            "Welcome to chat! Type a message",
            "{kind}"
        );
        let hmac = secret(
            &dir,
            "hmac.key",
            "an HMAC secret of at least 32 bytes, for the tests",
        );
        let other = mint(&[
            "--key",
            &hmac,
            "--name",
            "gina",
            "--rooms",
            "*",
            "--expires",
            "1h",
        ]);
        assert_eq!(
            refusal(&server, "/", Some(&other)).await.1,
            "invalid token: signed with another algorithm than the server's key",
            "{kind}"
        );
    }
}

#[tokio::test]
async fn a_key_the_server_cannot_use_is_one_line_and_exit_1() {
    let dir = key_dir("bad-key");
    let short = secret(&dir, "short.key", "s3cret");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["--port", "0", "--auth-key", &short])
        .output();
    let out = timeout(WAIT, out)
        .await
        .expect("exits in time")
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "error: cannot use the key in {short}: an HMAC secret of 6 bytes is too short: \
             use at least 32 (e.g. openssl rand -base64 32 > FILE)\n"
        )
    );
}

#[tokio::test]
async fn server_token_says_in_one_line_what_it_cannot_sign() {
    let dir = key_dir("mint-errors");
    let key = secret(&dir, "chat.key", SECRET);
    let missing = dir.join("missing.key").display().to_string();
    // `server token --key KEY --expires 1h ARGS`: exit code, stdout, stderr.
    let run = |key: &str, args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_server"))
            .args(["token", "--key", key, "--expires", "1h"])
            .args(args)
            .output()
            .expect("run server token");
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    assert_eq!(
        run(&key, &["--name", "a b", "--rooms", "rust"]),
        (
            Some(1),
            String::new(),
            "error: invalid name \"a b\": use 1 to 32 letters, digits, '-', '_' or '.'\n".into()
        )
    );
    let (code, out, err) = run(&key, &["--name", "alice", "--rooms", "a/b"]);
    assert_eq!((code, out.as_str()), (Some(1), ""));
    assert!(
        err.starts_with("error: invalid room pattern \"a/b\""),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let (code, _, err) = run(&missing, &["--name", "alice", "--rooms", "*"]);
    assert_eq!(code, Some(1));
    assert!(
        err.starts_with(&format!("error: cannot use the key in {missing}: ")),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    // Without --rooms it is a usage error.
    assert_eq!(run(&key, &["--name", "alice"]).0, Some(2));
}
