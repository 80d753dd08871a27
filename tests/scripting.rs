//! The client in scripts, without a terminal (pipes only): `--send` and its exit
//! codes (acknowledged, refused, timed out, unreachable), `--json` with every frame
//! type, `--count`, `--listen`, `--history`, `--after`; and the completions and man
//! pages of both binaries.

mod common;

use std::process::Stdio;

use common::*;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::time::timeout;

/// How a client run ended: its exit code, and everything it printed.
struct Run {
    code: Option<i32>,
    stdout: Vec<String>,
    stderr: Vec<String>,
}

/// Waits for `client` to exit with its input closed, and collects what it printed.
async fn finish(mut client: Client) -> Run {
    client.close_stdin();
    let code = client.wait().await.code();
    Run {
        code,
        stdout: client.stdout.complete().await,
        stderr: client.stderr.complete().await,
    }
}

/// Runs the client with `args` (its standard input closed at once) to its end.
async fn run(args: &[&str]) -> Run {
    finish(Client::start(args)).await
}

/// Every stdout line of a `--json` run, parsed.
fn frames(run: &Run) -> Vec<Value> {
    run.stdout
        .iter()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
        })
        .collect()
}

/// A structured member of `url`'s room that has said each of `lines` (each
/// acknowledged and back) and read its own frames.
async fn member(url: &str, lines: &[&str]) -> (Ws, Value) {
    let (mut ws, welcome) = connect_structured(url).await;
    for (id, text) in (1..).zip(lines) {
        send(
            &mut ws,
            &json!({"type": "send", "id": id, "text": text}).to_string(),
        )
        .await;
        loop {
            let frame = recv_json(&mut ws).await;
            if frame["type"] == "message" && frame["text"] == *text {
                break;
            }
        }
    }
    (ws, welcome)
}

#[tokio::test]
async fn send_exits_zero_once_every_line_is_acknowledged_and_back() {
    let server = Server::start(&[]).await;
    let (mut alice, _) = member(&server.url(), &[]).await;
    let run = run(&["--url", &server.url(), "--send", "one", "--send", "two"]).await;
    assert_eq!(run.code, Some(0), "{:?}", run.stderr);
    assert!(run.stderr.is_empty(), "{:?}", run.stderr);
    let one = recv_json(&mut alice).await;
    let from = one["from"].as_str().expect("a sender");
    assert_eq!(one["text"], "one");
    assert_eq!(recv_json(&mut alice).await["text"], "two");
    // Its own lines came back before it closed: it waited for them.
    assert_eq!(
        run.stdout,
        [
            "From server: Welcome to chat! Type a message".to_owned(),
            format!("From server: {from}: \"one\""),
            format!("From server: {from}: \"two\""),
        ]
    );
}

#[tokio::test]
async fn a_line_over_the_rate_limit_exits_4_naming_it() {
    let server = Server::start(&["--max-rate", "1", "--max-burst", "1"]).await;
    let run = run(&[
        "--url",
        &server.url(),
        "--send",
        "a",
        "--send",
        "b",
        "--send",
        "c",
    ])
    .await;
    assert_eq!(run.code, Some(4), "{:?}", run.stderr);
    assert_eq!(
        run.stderr,
        [
            "error: the server refused line 2 (\"b\"): * slow down: 1 message dropped (the limit is 1 per second)"
        ]
    );
}

#[tokio::test]
async fn a_timeout_exits_3_saying_what_it_waited_for() {
    let server = Server::start(&[]).await;
    let started = std::time::Instant::now();
    let run = run(&[
        "--url",
        &server.url(),
        "--listen",
        "--count",
        "1",
        "--timeout",
        "2s",
    ])
    .await;
    assert_eq!(run.code, Some(3), "{:?}", run.stderr);
    assert!(started.elapsed() >= std::time::Duration::from_secs(2));
    assert_eq!(run.stdout, ["From server: Welcome to chat! Type a message"]);
    assert_eq!(
        run.stderr,
        ["error: timed out after 2s waiting for 1 more message (--count 1)"]
    );

    // A server that accepts the connection and never answers the upgrade.
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}", silent.local_addr().expect("address"));
    let client = Client::start(&["--url", &url, "--send", "x", "--timeout", "300ms"]);
    let (_held, _) = timeout(WAIT, silent.accept())
        .await
        .expect("the client connects in time")
        .expect("accept");
    let run = finish(client).await;
    assert_eq!(run.code, Some(3), "{:?}", run.stderr);
    assert_eq!(
        run.stderr,
        [format!(
            "error: timed out after 300ms waiting for a connection to {url}"
        )]
    );
}

/// A server that speaks the structured protocol, welcomes one client and then
/// acknowledges nothing: its URL, and the task that holds the connection.
async fn server_that_never_acknowledges() -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}", listener.local_addr().expect("address"));
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut tcp = BufReader::new(tcp);
        let mut key = String::new();
        loop {
            let mut line = String::new();
            tcp.read_line(&mut line).await.expect("request");
            if let Some(value) = line.strip_prefix("Sec-WebSocket-Key: ") {
                key = value.trim().to_owned();
            }
            if line == "\r\n" {
                break;
            }
        }
        let accept = broadcast_chat::protocol::accept_key(&key);
        let answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: broadcast-chat.v1\r\n\r\n"
        );
        tcp.write_all(answer.as_bytes()).await.expect("answer");
        let mut ws = tokio_websockets::ServerBuilder::new().serve(tcp.into_inner());
        let welcome = json!({"type": "welcome", "text": "Welcome to chat! Type a message",
            "room": "", "epoch": "00000000000000ab", "offset": 0, "you": "x", "echo": true});
        send(&mut ws, &welcome.to_string()).await;
        // Read (and answer pings, and the close) until the client goes.
        read_to_end(&mut ws).await;
    });
    (url, task)
}

#[tokio::test]
async fn a_line_never_acknowledged_times_out_with_3_and_ctrl_c_still_ends_the_wait() {
    let (url, _server) = server_that_never_acknowledges().await;
    let run = run(&["--url", &url, "--send", "deploy done", "--timeout", "1s"]).await;
    assert_eq!(run.code, Some(3), "{:?}", run.stderr);
    assert_eq!(
        run.stderr,
        ["error: timed out after 1s waiting for the acknowledgement of line 1 (\"deploy done\")"]
    );

    // Without --timeout it waits for the acknowledgement; Ctrl-C ends the wait.
    let (url, _server) = server_that_never_acknowledges().await;
    let client = Client::start(&["--url", &url, "--send", "x"]);
    client
        .stdout
        .wait_for("From server: Welcome to chat! Type a message")
        .await;
    signal(&client.child, "INT");
    let run = finish(client).await;
    assert_eq!(run.code, Some(0), "{:?}", run.stderr);
}

#[tokio::test]
async fn an_unreachable_server_exits_1_in_one_line() {
    let port = free_port();
    let url = format!("ws://127.0.0.1:{port}");
    let run = run(&["--url", &url, "--send", "x", "--timeout", "10s"]).await;
    assert_eq!(run.code, Some(1));
    assert!(run.stdout.is_empty(), "{:?}", run.stdout);
    assert_eq!(
        run.stderr,
        [format!(
            "error: cannot connect to {url}: connection refused (is the server running on that port?)"
        )]
    );
}

#[tokio::test]
async fn json_prints_every_frame_as_the_server_sent_it() {
    let server = Server::start(&["--presence"]).await;
    let room = format!("{}/ops", server.url());
    let (mut alice, welcome) = member(&format!("{room}?name=alice"), &["hello"]).await;
    let epoch = welcome["epoch"].as_str().expect("an epoch").to_owned();
    let alice_who = welcome["you"].as_str().expect("who").to_owned();
    // Offsets so far: 1 alice joined, 2 "hello".

    // A newcomer with history, a question and a line: the welcome, the history, its
    // own join, the answer, the ack, its line.
    let first = frames(
        &run(&[
            "--url",
            &room,
            "--name",
            "bob",
            "--json",
            "--history",
            "1",
            "--send",
            "/who",
            "--send",
            "hi",
        ])
        .await,
    );
    let bob_who = first[0]["you"].as_str().expect("who").to_owned();
    let members = {
        let mut m = vec![alice_who.clone(), bob_who.clone()];
        m.sort();
        m
    };
    // The room's frames come in offset order; the answers to bob alone (the who
    // notice, the ack) in their own order, between them wherever they happen.
    let (logged, answers): (Vec<Value>, Vec<Value>) = first[1..]
        .iter()
        .cloned()
        .partition(|frame| frame.get("epoch").is_some());
    assert_eq!(
        first[0],
        json!({"type": "welcome", "text": "Welcome to chat! Type a message", "room": "ops",
               "epoch": epoch, "offset": 2, "you": bob_who, "echo": true})
    );
    assert_eq!(
        logged,
        [
            json!({"type": "message", "room": "ops", "epoch": epoch, "offset": 2,
                   "from": alice_who, "text": "hello"}),
            json!({"type": "notice", "kind": "joined", "text": format!("* {bob_who} joined (2 here)"),
                   "room": "ops", "epoch": epoch, "offset": 3, "who": bob_who, "here": 2}),
            json!({"type": "message", "room": "ops", "epoch": epoch, "offset": 4,
                   "from": bob_who, "text": "hi"}),
        ]
    );
    assert_eq!(
        answers,
        [
            json!({"type": "notice", "kind": "who", "text": format!("* 2 here: {}", members.join(", ")),
                   "members": members}),
            json!({"type": "ack", "id": 1, "offset": 4}),
        ]
    );

    // Alice has heard all of it once bob has left.
    while recv_json(&mut alice).await["kind"] != "left" {}

    // Resuming after 3: the replay (bob's line, bob leaving), `recovered`, its own
    // join live, then alice's line, the one message counted.
    let client = Client::start(&[
        "--url", &room, "--json", "--listen", "--epoch", &epoch, "--after", "3", "--count", "2",
    ]);
    let carol = loop {
        let frame = recv_json(&mut alice).await;
        if frame["kind"] == "joined" {
            break frame["who"].as_str().expect("who").to_owned();
        }
    };
    send(
        &mut alice,
        &json!({"type": "send", "id": 2, "text": "welcome back"}).to_string(),
    )
    .await;
    let second = frames(&finish(client).await);
    assert_eq!(
        second[1..],
        [
            json!({"type": "message", "room": "ops", "epoch": epoch, "offset": 4,
                   "from": bob_who, "text": "hi"}),
            json!({"type": "notice", "kind": "left", "text": format!("* {bob_who} left (1 here)"),
                   "room": "ops", "epoch": epoch, "offset": 5, "who": bob_who, "here": 1}),
            json!({"type": "recovered", "complete": true}),
            json!({"type": "notice", "kind": "joined", "text": format!("* {carol} joined (2 here)"),
                   "room": "ops", "epoch": epoch, "offset": 6, "who": carol, "here": 2}),
            json!({"type": "message", "room": "ops", "epoch": epoch, "offset": 7,
                   "from": alice_who, "text": "welcome back"}),
        ]
    );
    assert_eq!(second[0]["type"], "welcome");

    // An offset the room never reached: an error frame (not a refusal: nothing was sent).
    let client = Client::start(&[
        "--url", &room, "--json", "--listen", "--epoch", &epoch, "--after", "99", "--count", "1",
    ]);
    loop {
        if recv_json(&mut alice).await["kind"] == "joined" {
            break;
        }
    }
    send(
        &mut alice,
        &json!({"type": "send", "id": 3, "text": "x"}).to_string(),
    )
    .await;
    let third = finish(client).await;
    assert_eq!(third.code, Some(0), "{:?}", third.stderr);
    assert_eq!(
        frames(&third)[1],
        json!({"type": "error", "code": "bad-offset",
               "text": "the offset to resume from is beyond the room's last one (8); going on from there"})
    );
}

#[tokio::test]
async fn json_wraps_a_classic_servers_lines_and_says_what_it_cannot_promise() {
    // A bare WebSocket server, which chooses no subprotocol.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}", listener.local_addr().expect("address"));
    let client = Client::start(&["--url", &url, "--json", "--listen", "--count", "1"]);
    let (tcp, _) = timeout(WAIT, listener.accept())
        .await
        .expect("the client connects in time")
        .expect("accept");
    let (_request, mut ws) = timeout(WAIT, tokio_websockets::ServerBuilder::new().accept(tcp))
        .await
        .expect("upgrade in time")
        .expect("upgrade");
    for line in [
        "Welcome to chat! Type a message",
        r#"127.0.0.1:5: "hi \"you\"""#,
    ] {
        send(&mut ws, line).await;
    }
    let reader = tokio::spawn(async move { read_to_end(&mut ws).await });
    let run = finish(client).await;
    assert_eq!(run.code, Some(0), "{:?}", run.stderr);
    assert_eq!(
        frames(&run),
        [
            json!({"type": "line", "text": "Welcome to chat! Type a message"}),
            json!({"type": "line", "text": r#"127.0.0.1:5: "hi \"you\"""#}),
        ]
    );
    assert_eq!(run.stderr, [broadcast_chat::client::CLASSIC_PROMISE]);
    let _ = reader.await;
}

#[tokio::test]
async fn listen_and_count_print_exactly_n_messages_and_send_nothing() {
    let server = Server::start(&[]).await;
    let (mut alice, welcome) = member(&server.url(), &[]).await;
    let alice_who = welcome["you"].as_str().expect("who").to_owned();
    let mut client = Client::start(&["--url", &server.url(), "--listen", "--count", "2"]);
    client
        .stdout
        .wait_for("From server: Welcome to chat! Type a message")
        .await;
    // Standard input is not read.
    client.send_line("not for the room").await;
    for (id, text) in (1..).zip(["one", "two", "three"]) {
        send(
            &mut alice,
            &json!({"type": "send", "id": id, "text": text}).to_string(),
        )
        .await;
    }
    let run = finish(client).await;
    assert_eq!(run.code, Some(0), "{:?}", run.stderr);
    assert!(run.stderr.is_empty(), "{:?}", run.stderr);
    assert_eq!(
        run.stdout,
        [
            "From server: Welcome to chat! Type a message".to_owned(),
            format!("From server: {alice_who}: \"one\""),
            format!("From server: {alice_who}: \"two\""),
        ]
    );
    let heard: Vec<Value> = {
        let mut heard = Vec::new();
        while heard.len() < 3 {
            let frame = recv_json(&mut alice).await;
            if frame["type"] == "message" {
                heard.push(frame["text"].clone());
            }
        }
        heard
    };
    assert_eq!(heard, ["one", "two", "three"], "nothing from the listener");
}

#[tokio::test]
async fn history_prints_the_rooms_last_n_messages_and_count_ends_there() {
    let server = Server::start(&[]).await;
    let lines = ["l1", "l2", "l3", "l4", "l5"];
    let (_alice, welcome) = member(&server.url(), &lines).await;
    let alice_who = welcome["you"].as_str().expect("who").to_owned();
    let run = run(&[
        "--url",
        &server.url(),
        "--listen",
        "--history",
        "3",
        "--count",
        "3",
    ])
    .await;
    assert_eq!(run.code, Some(0), "{:?}", run.stderr);
    let mut expected = vec!["From server: Welcome to chat! Type a message".to_owned()];
    expected.extend(["l3", "l4", "l5"].map(|l| format!("From server: {alice_who}: \"{l}\"")));
    assert_eq!(run.stdout, expected);
}

/// The completions a binary prints for `shell`, checked by running it.
async fn completions(binary: &str, shell: &str) -> String {
    let output = tokio::process::Command::new(binary)
        .args(["completions", shell])
        .stdin(Stdio::null())
        .output();
    let output = timeout(WAIT, output).await.expect("in time").expect("run");
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    String::from_utf8(output.stdout).expect("UTF-8")
}

/// Checks both binaries' completions for `shell` with the shell itself (parsing,
/// not running them).
async fn check_completions(shell: &str) {
    for binary in [env!("CARGO_BIN_EXE_server"), env!("CARGO_BIN_EXE_client")] {
        let script = completions(binary, shell).await;
        assert!(script.contains("--help"), "{shell}: {script}");
        let path = std::env::temp_dir().join(format!(
            "broadcast-chat-completions-{}-{shell}",
            std::process::id()
        ));
        std::fs::write(&path, &script).expect("write the script");
        let check = if shell == "fish" {
            "--no-execute"
        } else {
            "-n"
        };
        let status = std::process::Command::new(shell)
            .arg(check)
            .arg(&path)
            .status()
            .expect("run the shell");
        let _ = std::fs::remove_file(&path);
        assert!(status.success(), "{binary} completions {shell}: {script}");
    }
}

#[tokio::test]
async fn bash_completions_of_both_binaries_parse_and_name_the_flags() {
    check_completions("bash").await;
    let client = completions(env!("CARGO_BIN_EXE_client"), "bash").await;
    for flag in [
        "--json",
        "--send",
        "--listen",
        "--count",
        "--timeout",
        "--history",
    ] {
        assert!(client.contains(flag), "{flag}");
    }
    assert!(client.contains("completions") && client.contains("man"));
}

#[tokio::test]
#[cfg_attr(not(has_zsh), ignore = "needs zsh (apt-get install zsh)")]
async fn zsh_completions_of_both_binaries_parse() {
    check_completions("zsh").await;
}

#[tokio::test]
#[cfg_attr(not(has_fish), ignore = "needs fish (apt-get install fish)")]
async fn fish_completions_of_both_binaries_parse() {
    check_completions("fish").await;
}

/// What `binary ARGS` prints on stdout, after checking that it exits 0.
fn stdout_of(binary: &str, args: &[&str]) -> String {
    let output = std::process::Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(0), "{args:?}: {output:?}");
    String::from_utf8(output.stdout).expect("UTF-8")
}

#[tokio::test]
async fn man_pages_name_the_program_and_every_flag_of_its_help() {
    for (binary, name, some) in [
        (env!("CARGO_BIN_EXE_server"), "server", "--redis-url"),
        (env!("CARGO_BIN_EXE_client"), "client", "--json"),
    ] {
        let page = stdout_of(binary, &["man"]);
        assert!(page.contains(&format!(".TH {name} 1 ")), "{page}");
        assert!(page.contains(&format!(".SH NAME\n{name} \\- ")), "{page}");
        assert!(page.contains(".SH OPTIONS\n"), "{page}");
        // Every flag `--help` lists, from the same definition.
        let flags: Vec<String> = stdout_of(binary, &["--help"])
            .lines()
            .map(str::trim_start)
            // The options' lines, not their descriptions.
            .filter(|line| line.starts_with('-'))
            .filter_map(|line| line.split([' ', ',']).find(|w| w.starts_with("--")))
            .map(str::to_owned)
            .collect();
        assert!(flags.iter().any(|f| f == some), "{flags:?}");
        for flag in flags {
            // roff escapes the dashes.
            let roff = flag.replace('-', "\\-");
            assert!(
                page.contains(&format!("\\fB{roff}\\fR")),
                "{flag} in {page}"
            );
        }
    }
}

#[tokio::test]
async fn flags_that_do_not_mix_are_usage_errors() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_client"))
        .args(["--json", "man"])
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("error: the subcommand 'man' cannot be used with '--json'"),
        "{stderr}"
    );
    for args in [
        &["--after", "5"][..],
        &["--send", "x", "--listen"],
        &["--timeout", "soon"],
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_client"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run");
        assert_eq!(output.status.code(), Some(2), "{args:?}: {output:?}");
    }
}

/// The commands of the README's Scripting example, each with the lines it prints.
fn readme_examples() -> Vec<(String, Vec<String>)> {
    let readme = include_str!("../README.md");
    let section = &readme[readme
        .find("\n## Scripting\n")
        .expect("a Scripting section")..];
    let block = section
        .split("```console\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("a console block");
    let mut examples: Vec<(String, Vec<String>)> = Vec::new();
    for line in block.lines() {
        match (line.strip_prefix("$ "), examples.last_mut()) {
            (Some(command), _) => examples.push((command.to_owned(), Vec::new())),
            (None, Some((_, output))) => output.push(line.to_owned()),
            (None, None) => panic!("output before any command: {line}"),
        }
    }
    examples
}

/// `line` with the port of every `127.0.0.1:` address made `PORT`: they differ per run.
fn without_ports(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(at) = rest.find("127.0.0.1:") {
        let (before, after) = rest.split_at(at + "127.0.0.1:".len());
        out.push_str(before);
        out.push_str("PORT");
        rest = after.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    out.push_str(rest);
    out
}

#[tokio::test]
#[cfg_attr(not(has_jq), ignore = "needs jq (apt-get install jq)")]
async fn the_readme_scripting_examples_print_what_it_shows() {
    let examples = readme_examples();
    assert!(examples.len() >= 5, "{examples:?}");
    let server = Server::start(&[]).await;
    // Alice, named, has said her line and stays, so the room keeps its log.
    let (_alice, _) = member(
        &format!("{}/?name=alice", server.url()),
        &["build 41 passed"],
    )
    .await;
    // `client` in the examples is this build's binary.
    let bin = std::env::temp_dir().join(format!("broadcast-chat-readme-{}", std::process::id()));
    std::fs::create_dir_all(&bin).expect("a folder");
    let link = bin.join("client");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_client"), &link).expect("link the client");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for (command, expected) in examples {
        let output = tokio::process::Command::new("sh")
            .args(["-c", &command])
            .env("PATH", &path)
            .env("CHAT_URL", server.url())
            .env_remove("CHAT_TOKEN")
            .env_remove("CHAT_NAME")
            .stdin(Stdio::null())
            .output();
        let output = timeout(WAIT, output)
            .await
            .expect("in time")
            .expect("run sh");
        let printed: Vec<String> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(without_ports)
            .collect();
        let expected: Vec<String> = expected.iter().map(|l| without_ports(l)).collect();
        assert_eq!(printed, expected, "{command}: {output:?}");
    }
    let _ = std::fs::remove_dir_all(&bin);
}
