//! `server backup`: a copy of a data directory taken while the server runs is a
//! data directory again, with every room as it was; it never overwrites a file.

mod common;

use common::*;
use serde_json::{Value, json};
use tokio::time::timeout;

/// Runs `server backup` with `args`: its exit code, stdout and stderr.
async fn backup(args: &[&str]) -> (Option<i32>, String, String) {
    let output = timeout(WAIT, server_command().arg("backup").args(args).output())
        .await
        .expect("the backup ends in time")
        .expect("run server backup");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Sends line `id` and waits for its ack, passing over the messages before it.
async fn send_acked(ws: &mut Ws, id: u64) {
    let frame = json!({"type": "send", "id": id, "text": format!("line {id}")});
    send(ws, &frame.to_string()).await;
    loop {
        let frame = recv_json(ws).await;
        if frame["type"] == "ack" {
            assert_eq!(frame["id"], id, "{frame}");
            return;
        }
    }
}

#[tokio::test]
async fn a_backup_taken_while_the_server_runs_restores_every_room() {
    let dir = tempfile::tempdir().expect("a directory");
    let data = dir.path().join("data");
    let copy = dir.path().join("copy.sqlite3");
    let data_arg = data.to_str().expect("utf-8 path");
    let server = Server::start(&["--data-dir", data_arg]).await;
    let (mut ws, welcome) = connect_structured(&format!("{}/team", server.url())).await;
    for id in 1..=20 {
        send_acked(&mut ws, id).await;
    }
    let (code, stdout, stderr) =
        backup(&["--data-dir", data_arg, copy.to_str().expect("utf-8")]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let size = std::fs::metadata(&copy).expect("the copy").len();
    assert_eq!(
        stdout,
        format!(
            "backed up 1 rooms, 20 entries, to {} ({size} bytes)\n",
            copy.display()
        )
    );
    // The server went on as before.
    send_acked(&mut ws, 21).await;
    drop((ws, server));

    let restored = dir.path().join("restored");
    std::fs::create_dir(&restored).expect("a directory");
    std::fs::copy(&copy, restored.join("chat.sqlite3")).expect("restore");
    let args = [
        "--data-dir",
        restored.to_str().expect("utf-8"),
        "--history",
        "50",
    ];
    let server = Server::start(&args).await;
    let (mut ws, again) = connect_structured(&format!("{}/team", server.url())).await;
    assert_eq!(again["epoch"], welcome["epoch"], "the same room: {again}");
    assert_eq!(again["offset"], 20, "as of the copy: {again}");
    let mut texts = Vec::new();
    while texts.len() < 20 {
        let frame: Value = recv_json(&mut ws).await;
        if frame["type"] == "message" {
            texts.push(frame["text"].as_str().expect("text").to_owned());
        }
    }
    let said: Vec<String> = (1..=20).map(|id| format!("line {id}")).collect();
    assert_eq!(texts, said);
}

#[tokio::test]
async fn a_backup_never_overwrites_and_needs_a_data_directory() {
    let dir = tempfile::tempdir().expect("a directory");
    let data = dir.path().join("data");
    let data_arg = data.to_str().expect("utf-8 path");
    drop(Server::start(&["--data-dir", data_arg]).await);
    let taken = dir.path().join("taken");
    std::fs::write(&taken, "keep me").expect("write");
    let (code, stdout, stderr) =
        backup(&["--data-dir", data_arg, taken.to_str().expect("utf-8")]).await;
    assert_eq!((code, stdout.as_str()), (Some(1), ""));
    assert_eq!(
        stderr,
        format!(
            "error: cannot back up {data_arg}: {} exists already: give a new file\n",
            taken.display()
        )
    );
    assert_eq!(std::fs::read_to_string(&taken).expect("read"), "keep me");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).expect("a directory");
    let copy = dir.path().join("copy");
    let (code, _, stderr) = backup(&[
        "--data-dir",
        empty.to_str().expect("utf-8"),
        copy.to_str().expect("utf-8"),
    ])
    .await;
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr,
        format!(
            "error: cannot back up {}: it holds no chat.sqlite3: is it a data directory?\n",
            empty.display()
        )
    );
    assert!(!copy.exists());
}
