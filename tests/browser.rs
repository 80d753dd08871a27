//! The chat in a real browser: headless Chromium, driven through chromedriver,
//! opens the page the server serves and chats with other pages and with the
//! command-line client; markup shows as text, a cut connection resumes, a wrong
//! token is refused, and `wss://` works. Without chromium and chromedriver on
//! `PATH` each test is ignored, and the summary says why.

mod common;
#[path = "browser/page.rs"]
mod page;
#[path = "browser/webdriver.rs"]
mod webdriver;

use common::*;
use page::*;
use serde_json::{Value, json};
use webdriver::{Browser, Driver, ENTER};

#[tokio::test]
#[cfg_attr(
    not(all(has_chromium, has_chromedriver)),
    ignore = "needs chromium and chromedriver (apt-get install chromium chromium-driver)"
)]
async fn two_pages_and_a_command_line_client_chat_in_one_room_and_another_room_hears_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let driver = Driver::start().await;
    // With origins restricted, the server's own page is still allowed.
    let server = Server::start(&["--presence", "--allow-origin", "https://chat.example"]).await;
    let page = |path: &str| format!("http://127.0.0.1:{}{path}", server.port);
    let alice = driver.browser(1280, 800).await;
    let bob = driver.browser(375, 740).await;
    let dave = driver.browser(800, 600).await;
    join(&alice, &page("/rust"), "alice").await;
    join(&bob, &page("/rust"), "bob").await;
    join(&dave, &page("/"), "dave").await;
    let mut carol = command_line_client(&server, "/rust", &["--name", "carol"]).await;
    for reader in [&alice, &bob] {
        wait_log(reader, "carol's arrival, shown as a notice", |log| {
            log.iter().any(|s| {
                s.kind == "notice"
                    && s.from.is_none()
                    && s.text.starts_with("carol@127.0.0.1:")
                    && s.text.ends_with(" joined (3 here)")
            })
        })
        .await;
    }

    // The lobby speaks first; nobody in rust may hear it.
    say(&dave, "lobby only").await;
    wait_message(&dave, "lobby only").await;

    // Enter sends, and the focus stays in the input for the next line.
    say(&alice, "hello from alice").await;
    say(&alice, "and a second line").await;
    let focused = alice.run("return document.activeElement.id", &[]).await;
    assert_eq!(focused, "input", "the focus left the input");
    say(&bob, "hi alice").await;
    carol.send_line("hi both, from the terminal").await;

    let everything = [
        "hello from alice",
        "and a second line",
        "hi alice",
        "hi both, from the terminal",
    ];
    for reader in [&alice, &bob] {
        for text in everything {
            wait_message(reader, text).await;
        }
    }
    for text in everything {
        carol.stdout.wait_for(&format!("{text:?}")).await;
    }

    let seen_by_alice = log(&alice).await;
    let seen_by_bob = log(&bob).await;
    for (reader, log) in [("alice", &seen_by_alice), ("bob", &seen_by_bob)] {
        assert_eq!(texts(log), everything, "{reader} saw {log:#?}");
        for shown in log.iter().filter(|s| s.kind == "message") {
            let from = shown.from.as_deref().expect("a sender");
            let own = from.starts_with(&format!("{reader}@127.0.0.1:"));
            assert_eq!(shown.own, own, "{reader}: {shown:?}");
        }
        assert!(
            log.iter().any(|s| s.kind == "notice"
                && s.text.starts_with("bob@127.0.0.1:")
                && s.text.ends_with(" joined (2 here)")),
            "{reader} saw no presence notice: {log:#?}"
        );
    }
    let from = |log: &[Shown], text: &str| {
        log.iter()
            .find(|s| s.text == text)
            .and_then(|s| s.from.clone())
            .expect("a sender")
    };
    assert!(from(&seen_by_bob, "hello from alice").starts_with("alice@127.0.0.1:"));
    assert!(from(&seen_by_alice, "hi both, from the terminal").starts_with("carol@127.0.0.1:"));
    let line = carol.stdout.wait_for("\"hello from alice\"").await;
    assert!(line.starts_with("From server: alice@127.0.0.1:"), "{line}");

    // The lobby heard nothing of rust, and rust nothing of the lobby.
    let lobby = log(&dave).await;
    assert_eq!(texts(&lobby), ["lobby only"], "{lobby:#?}");
    for log in [&seen_by_alice, &seen_by_bob] {
        assert_eq!(count(log, "lobby only"), 0);
    }
    assert!(
        !carol.stdout.all().iter().any(|l| l.contains("lobby only")),
        "the terminal heard the lobby"
    );
}

#[tokio::test]
#[cfg_attr(
    not(all(has_chromium, has_chromedriver)),
    ignore = "needs chromium and chromedriver (apt-get install chromium chromium-driver)"
)]
async fn markup_shows_as_text_and_runs_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let driver = Driver::start().await;
    let server = Server::start(&[]).await;
    let room = format!("http://127.0.0.1:{}/x", server.port);
    let alice = driver.browser(1024, 700).await;
    let bob = driver.browser(1024, 700).await;
    join(&alice, &room, "alice").await;
    join(&bob, &room, "bob").await;
    let mut carol = command_line_client(&server, "/x", &[]).await;

    let image = "<img src=x onerror=alert(1)>";
    let script = "<script>document.title='pwned'</script><b>bold</b>";
    say(&alice, image).await;
    carol.send_line(script).await;
    for reader in [&alice, &bob] {
        wait_message(reader, image).await;
        let log = wait_message(reader, script).await;
        assert_eq!(texts(&log), [image, script]);
        let injected = reader
            .run(
                "return document.querySelectorAll('#log img, #log script, #log b').length",
                &[],
            )
            .await;
        assert_eq!(injected, 0, "markup became elements");
        assert_eq!(reader.open_dialog().await, None, "a dialog opened");
        let title = reader.run("return document.title", &[]).await;
        assert_eq!(title, "#x · chat");
    }
    carol.stdout.wait_for(&format!("{image:?}")).await;
}

#[tokio::test]
#[cfg_attr(
    not(all(has_chromium, has_chromedriver)),
    ignore = "needs chromium and chromedriver (apt-get install chromium chromium-driver)"
)]
async fn the_log_follows_new_messages_unless_the_reader_has_scrolled_up() {
    let _one = ONE_AT_A_TIME.lock().await;
    let driver = Driver::start().await;
    let server = Server::start(&["--max-rate", "0"]).await;
    let alice = driver.browser(800, 400).await;
    join(
        &alice,
        &format!("http://127.0.0.1:{}/long", server.port),
        "alice",
    )
    .await;
    let mut carol = command_line_client(&server, "/long", &[]).await;
    let view = "const log = document.getElementById('log');
                const first = document.querySelector('#messages > li.message');
                return {
                    gap: log.scrollHeight - log.scrollTop - log.clientHeight,
                    top: log.scrollTop,
                    first: first ? first.getBoundingClientRect().top : null,
                    jump: !document.getElementById('jump').hidden,
                    focused: document.activeElement.id,
                }";

    for n in 1..=30 {
        carol.send_line(&format!("line {n}")).await;
    }
    wait_message(&alice, "line 30").await;
    let following = alice.run(view, &[]).await;
    assert!(following["gap"].as_f64().expect("gap") < 2.0, "{following}");
    assert!(
        following["top"].as_f64().expect("top") > 0.0,
        "the log did not overflow"
    );
    assert_eq!(following["jump"], false);

    // Reading back: new messages neither pull the reader down nor move the lines read.
    alice
        .run("document.getElementById('log').scrollTop = 0", &[])
        .await;
    let reading = alice.run(view, &[]).await;
    for n in 31..=35 {
        carol.send_line(&format!("line {n}")).await;
    }
    wait_message(&alice, "line 35").await;
    let after = alice.run(view, &[]).await;
    assert_eq!(after["top"], 0, "{after}");
    assert_eq!(after["first"], reading["first"], "the lines read moved");
    assert_eq!(after["jump"], true, "not told of new messages: {after}");

    // The way back down, and the focus stays in the input.
    alice
        .run("document.getElementById('jump').click()", &[])
        .await;
    let back = alice.run(view, &[]).await;
    assert!(back["gap"].as_f64().expect("gap") < 2.0, "{back}");
    assert_eq!(back["jump"], false);
    assert_eq!(back["focused"], "input");
}

#[tokio::test]
#[cfg_attr(
    not(all(has_chromium, has_chromedriver)),
    ignore = "needs chromium and chromedriver (apt-get install chromium chromium-driver)"
)]
async fn with_no_echo_the_page_shows_its_own_lines_once_when_the_room_has_them() {
    let _one = ONE_AT_A_TIME.lock().await;
    let driver = Driver::start().await;
    let server = Server::start(&["--no-echo"]).await;
    let alice = driver.browser(800, 600).await;
    join(
        &alice,
        &format!("http://127.0.0.1:{}/quiet", server.port),
        "alice",
    )
    .await;
    let mut carol = command_line_client(&server, "/quiet", &[]).await;
    say(&alice, "mine").await;
    carol.stdout.wait_for("\"mine\"").await;
    carol.send_line("theirs").await;
    let shown = wait_message(&alice, "theirs").await;
    assert_eq!(texts(&shown), ["mine", "theirs"], "{shown:#?}");
    let mine = shown.iter().find(|s| s.text == "mine").expect("mine");
    assert!(mine.own, "{mine:?}");
    assert!(
        mine.from
            .as_deref()
            .is_some_and(|f| f.starts_with("alice@127.0.0.1:"))
    );
    let pending = alice
        .run(
            "return document.querySelectorAll('#pending > li').length",
            &[],
        )
        .await;
    assert_eq!(pending, 0);
}

#[tokio::test]
#[cfg_attr(
    not(all(has_chromium, has_chromedriver)),
    ignore = "needs chromium and chromedriver (apt-get install chromium chromium-driver)"
)]
async fn the_page_reconnects_and_resumes_after_the_connection_is_cut() {
    let _one = ONE_AT_A_TIME.lock().await;
    let driver = Driver::start().await;
    let server = Server::start(&["--resume-window", "6"]).await;
    // The page comes through the proxy, and so does its socket: same origin.
    let proxy = Proxy::start(server.addr()).await;
    let alice = driver.browser(1024, 700).await;
    join(
        &alice,
        &format!("http://127.0.0.1:{}/rust", proxy.port),
        "alice",
    )
    .await;
    let mut carol = command_line_client(&server, "/rust", &["--name", "carol"]).await;
    carol.send_line("before the cut").await;
    wait_message(&alice, "before the cut").await;

    // Cut, and keep the way closed while the room goes on and alice types.
    proxy.set_down(true);
    proxy.sever();
    alice
        .wait_for(
            "the page to show it lost the connection",
            "const s = document.getElementById('state').dataset.state;
             return s === 'waiting' || s === 'connecting'",
            &[],
        )
        .await;
    for line in ["away 1", "away 2", "away 3"] {
        carol.send_line(line).await;
    }
    carol.stdout.wait_for("\"away 3\"").await;
    say(&alice, "typed while away").await;
    alice
        .wait_for(
            "the line typed while away, waiting",
            "return document.querySelectorAll('#pending > li').length === 1",
            &[],
        )
        .await;

    proxy.set_down(false);
    wait_state(&alice, "connected").await;
    wait_message(&alice, "typed while away").await;
    carol.stdout.wait_for("\"typed while away\"").await;
    carol.send_line("marker").await;
    let shown = wait_message(&alice, "marker").await;
    assert_eq!(
        texts(&shown),
        [
            "before the cut",
            "away 1",
            "away 2",
            "away 3",
            "typed while away",
            "marker"
        ],
        "every message once and in order: {shown:#?}"
    );
    assert!(
        !shown.iter().any(|s| s.warn),
        "nothing was lost: {shown:#?}"
    );
    let pending = alice
        .run(
            "return document.querySelectorAll('#pending > li').length",
            &[],
        )
        .await;
    assert_eq!(pending, 0);
    carol.stdout.wait_for("\"marker\"").await;
    let heard = carol
        .stdout
        .all()
        .iter()
        .filter(|l| l.ends_with(": \"typed while away\""))
        .count();
    assert_eq!(
        heard, 1,
        "the line typed while away was shown {heard} times"
    );

    // A longer absence: the room's log (6 messages) no longer reaches back, and the
    // page says how many were lost.
    proxy.set_down(true);
    proxy.sever();
    alice
        .wait_for(
            "the page to show it lost the connection again",
            "return document.getElementById('state').dataset.state !== 'connected'",
            &[],
        )
        .await;
    for n in 1..=8 {
        carol.send_line(&format!("lost {n}")).await;
    }
    carol.stdout.wait_for("\"lost 8\"").await;
    proxy.set_down(false);
    let shown = wait_message(&alice, "lost 8").await;
    wait_state(&alice, "connected").await;
    let warnings: Vec<_> = shown.iter().filter(|s| s.warn).collect();
    assert_eq!(warnings.len(), 1, "{shown:#?}");
    assert_eq!(
        warnings[0].text,
        "you missed 2 messages while you were away"
    );
    let after_marker: Vec<_> = texts(&shown).into_iter().skip(6).collect();
    assert_eq!(
        after_marker,
        ["lost 3", "lost 4", "lost 5", "lost 6", "lost 7", "lost 8"]
    );
}

#[tokio::test]
#[cfg_attr(
    not(all(has_chromium, has_chromedriver)),
    ignore = "needs chromium and chromedriver (apt-get install chromium chromium-driver)"
)]
async fn a_wrong_token_is_refused_and_the_page_says_so() {
    let _one = ONE_AT_A_TIME.lock().await;
    let driver = Driver::start().await;
    let token = "open sesame/+";
    let mut server = Server::start(&["--token", token]).await;
    let erin = driver.browser(1024, 700).await;
    let page = format!("http://127.0.0.1:{}/vault", server.port);
    erin.open(&page).await;
    erin.wait_for(
        "the name prompt, with the focus",
        "return document.activeElement === document.getElementById('name-input')",
        &[],
    )
    .await;
    erin.type_keys(&format!("erin{ENTER}")).await;

    let ask = "const s = document.getElementById('state');
               const form = document.getElementById('token-form');
               return s.dataset.state === 'refused' && !form.hidden
                   && document.activeElement === document.getElementById('token-input')
                   ? [s.textContent, document.getElementById('token-label').textContent] : null";
    let asked = erin
        .wait_for("the page to ask for the token", ask, &[])
        .await;
    assert_eq!(
        asked,
        json!(["Token needed", "This chat needs a token. Enter it to join:"])
    );

    erin.type_keys(&format!("guess{ENTER}")).await;
    let refused = erin
        .wait_for(
            "the page to say the token was refused",
            &ask.replace(
                "=== 'refused'",
                "=== 'refused' && s.textContent === 'Token refused'",
            ),
            &[],
        )
        .await;
    assert_eq!(
        refused,
        json!([
            "Token refused",
            "The server refused that token. Enter the chat's token:"
        ])
    );

    erin.type_keys(&format!("{token}{ENTER}")).await;
    wait_state(&erin, "connected").await;
    say(&erin, "let me in").await;
    let shown = wait_message(&erin, "let me in").await;
    assert!(shown.iter().any(|s| s.text == "let me in" && s.own));

    // Not remembered (the box was not ticked), and never in the URL.
    let kept = erin
        .run(
            "return [localStorage.getItem('broadcast-chat.token'), location.href,
                     JSON.stringify(sessionStorage), JSON.stringify(localStorage)]",
            &[],
        )
        .await;
    assert_eq!(kept[0], Value::Null);
    for place in kept.as_array().expect("a list").iter().skip(1) {
        assert!(!place.to_string().contains("sesame"), "{place}");
    }

    server.terminate();
    assert_eq!(server.wait().await.code(), Some(0));
    let log = server.stderr.complete().await;
    let refusals = log
        .iter()
        .filter(|l| {
            log_event(l) == Some("refused") && log_field(l, "status").as_deref() == Some("401")
        })
        .count();
    assert_eq!(refusals, 2, "one refusal per attempt: {log:#?}");
    let encoded = "b3BlbiBzZXNhbWUvKw";
    assert!(
        !log.iter()
            .any(|l| l.contains("sesame") || l.contains(encoded)),
        "the token leaked into the log: {log:#?}"
    );
}

#[tokio::test]
#[cfg_attr(
    not(all(has_chromium, has_chromedriver)),
    ignore = "needs chromium and chromedriver (apt-get install chromium chromium-driver)"
)]
async fn a_minted_token_is_taken_by_the_page_which_joins_under_its_name() {
    let _one = ONE_AT_A_TIME.lock().await;
    let driver = Driver::start().await;
    let key = tokens::secret(&tokens::key_dir("browser"), "chat.key", tokens::SECRET);
    let mint = |name: &str| {
        tokens::mint(&[
            "--key",
            &key,
            "--name",
            name,
            "--rooms",
            "vault",
            "--expires",
            "1h",
        ])
    };
    let server = Server::start(&["--auth-key", &key]).await;
    let frank = command_line_client(&server, "/vault", &["--token", &mint("frank")]).await;

    let erin = driver.browser(1024, 700).await;
    erin.open(&format!("http://127.0.0.1:{}/vault", server.port))
        .await;
    erin.wait_for(
        "the name prompt, with the focus",
        "return document.activeElement === document.getElementById('name-input')",
        &[],
    )
    .await;
    // A name of her own choosing: the token's name wins.
    erin.type_keys(&format!("eve{ENTER}")).await;
    erin.wait_for(
        "the page to ask for the token",
        "return !document.getElementById('token-form').hidden
             && document.activeElement === document.getElementById('token-input')",
        &[],
    )
    .await;
    erin.type_keys(&format!("{}{ENTER}", mint("erin"))).await;
    wait_state(&erin, "connected").await;
    let me = erin
        .run("return document.getElementById('me').textContent", &[])
        .await;
    assert_eq!(me, json!("erin"));
    say(&erin, "let me in").await;
    let shown = wait_message(&erin, "let me in").await;
    assert!(
        shown
            .iter()
            .any(|s| s.text == "let me in" && s.own && s.from.as_deref() == Some("erin")),
        "{shown:#?}"
    );
    frank
        .stdout
        .wait_for_line("From server: erin: \"let me in\"")
        .await;
}

#[tokio::test]
#[cfg_attr(
    not(all(has_chromium, has_chromedriver)),
    ignore = "needs chromium and chromedriver (apt-get install chromium chromium-driver)"
)]
async fn over_tls_the_page_is_served_over_https_and_connects_with_wss() {
    let _one = ONE_AT_A_TIME.lock().await;
    let driver = Driver::start().await;
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("browser-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a folder");
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("a certificate");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).expect("write the certificate");
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write the key");
    let server = Server::start(&[
        "--tls-cert",
        &cert.display().to_string(),
        "--tls-key",
        &key.display().to_string(),
        "--allow-origin",
        "https://chat.example",
    ])
    .await;

    let tess = driver.browser(1024, 700).await;
    let origin = format!("https://127.0.0.1:{}", server.port);
    join(&tess, &format!("{origin}/secure"), "tess").await;
    let title = tess
        .run("return document.getElementById('state').title", &[])
        .await;
    let title = title.as_str().expect("a title");
    assert!(
        title.starts_with(&format!(
            "connected to wss://127.0.0.1:{}/secure as tess@",
            server.port
        )),
        "{title}"
    );
    say(&tess, "over tls").await;
    let shown = wait_message(&tess, "over tls").await;
    assert!(shown.iter().any(|s| s.text == "over tls" && s.own));
}

/// Not a check: makes the README's screenshot (`docs/chat.png`) with the same
/// browser. Run it by hand: `cargo test --test browser -- --ignored screenshot`.
#[tokio::test]
#[ignore = "makes docs/chat.png; run by hand"]
async fn screenshot() {
    let _one = ONE_AT_A_TIME.lock().await;
    let driver = Driver::start().await;
    let server = Server::start(&["--presence"]).await;
    let room = format!("http://127.0.0.1:{}/rust", server.port);
    let alice = driver.browser(1280, 720).await;
    let bob = driver.browser(375, 720).await;
    join(&bob, &room, "bob").await;
    join(&alice, &room, "alice").await;
    let mut carol = command_line_client(&server, "/rust", &["--name", "carol"]).await;
    let script: [(Option<&Browser>, &str); 6] = [
        (Some(&bob), "anyone tried the 2024 edition?"),
        (Some(&alice), "yes, let chains are nice"),
        (Some(&alice), "and async closures, finally"),
        (None, "rust 1.89 here, all green"),
        (Some(&bob), "<b>no markup</b> gets through, by the way"),
        (Some(&alice), "see you at the meetup"),
    ];
    for (who, line) in script {
        match who {
            Some(page) => say(page, line).await,
            None => carol.send_line(line).await,
        }
        wait_message(&alice, line).await;
        wait_message(&bob, line).await;
    }
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    std::fs::create_dir_all(&docs).expect("create docs/");
    std::fs::write(docs.join("chat.png"), alice.screenshot().await).expect("write chat.png");
    std::fs::write(docs.join("chat-phone.png"), bob.screenshot().await)
        .expect("write chat-phone.png");
}
