//! What the server says of its Redis's persistence, with real `redis-server`
//! processes: a Redis that keeps nothing is warned of once (not at every
//! reconnection) and `/healthz` says `"redis_persistence":"none"`; one with an
//! append-only file is not; the settings are read again when Redis comes back;
//! where `CONFIG` is renamed, `INFO persistence` is read instead. Ignored, saying
//! so in the summary, where `redis-server` is not on `PATH`.

mod common;

use common::instances::{REDIS_BACK, REDIS_DOWN};
use common::*;
use serde_json::json;
use tempfile::TempDir;

/// What the server logs when its Redis keeps nothing.
const KEEPS_NOTHING: &str = "Redis keeps nothing (appendonly no, no save points): a Redis restart loses every room; run it with --appendonly yes";
/// What the server logs when Redis's persistence cannot be read.
const CANNOT_READ: &str = "Redis's persistence cannot be read: a Redis restart may lose every room; run it with --appendonly yes";
/// What the server logs when Redis keeps the rooms.
const KEEPS: &str = "Redis keeps the rooms across its restarts";

/// A server on the Redis at `redis`.
async fn server_on(redis: &RedisServer) -> Server {
    Server::start(&["--redis-url", &redis.url()]).await
}

/// The lines `server` logged so far whose event is `event`.
fn logged(server: &Server, event: &str) -> Vec<String> {
    let lines = server.stderr.all();
    lines
        .into_iter()
        .filter(|l| log_event(l) == Some(event))
        .collect()
}

/// `redis-server` arguments for an append-only file in `dir`.
fn aof_in(dir: &TempDir) -> [&str; 4] {
    let dir = dir.path().to_str().expect("a UTF-8 path");
    ["--appendonly", "yes", "--dir", dir]
}

#[tokio::test]
#[cfg_attr(
    not(has_redis),
    ignore = "needs redis-server (apt-get install redis-server)"
)]
async fn a_redis_that_keeps_nothing_is_warned_of_once_and_healthz_says_none() {
    let redis = RedisServer::start().await;
    let port = redis.port;
    let server = server_on(&redis).await;
    let warning = server.stderr.wait_for_event(KEEPS_NOTHING).await;
    assert!(warning.contains(" WARN "), "{warning}");
    for (field, value) in [
        ("appendonly", "no"),
        ("save", ""),
        ("read_with", "CONFIG GET"),
    ] {
        assert_eq!(
            log_field(&warning, field).as_deref(),
            Some(value),
            "{warning}"
        );
    }
    let expected = json!({"status": "ok", "connections": 0, "store": "redis", "redis": "up", "redis_persistence": "none"});
    assert_eq!(health(server.addr()).await, expected);

    // The same Redis again: read again when it is back, and not said again.
    redis.kill().await;
    server.stderr.wait_for_event(REDIS_DOWN).await;
    let _redis = RedisServer::start_at(port).await;
    // The settings are read before the return is logged.
    server.stderr.wait_for_event(REDIS_BACK).await;
    assert_eq!(
        logged(&server, KEEPS_NOTHING).len(),
        1,
        "{:#?}",
        server.stderr.all()
    );
    assert_eq!(health(server.addr()).await, expected);
}

#[tokio::test]
#[cfg_attr(
    not(has_redis),
    ignore = "needs redis-server (apt-get install redis-server)"
)]
async fn a_redis_with_aof_is_not_warned_of_until_it_comes_back_without() {
    let dir = TempDir::new().expect("a temporary directory");
    let redis = RedisServer::start_with(&aof_in(&dir)).await;
    let port = redis.port;
    let server = server_on(&redis).await;
    let kept = server.stderr.wait_for_event(KEEPS).await;
    assert_eq!(
        log_field(&kept, "persistence").as_deref(),
        Some("aof"),
        "{kept}"
    );
    assert_eq!(
        log_field(&kept, "read_with").as_deref(),
        Some("CONFIG GET"),
        "{kept}"
    );
    // Both would come from the same reading, at connect.
    assert_eq!(logged(&server, KEEPS_NOTHING), Vec::<String>::new());
    assert_eq!(health(server.addr()).await["redis_persistence"], "aof");

    // Another Redis on the same address, keeping nothing: read when it is back.
    redis.kill().await;
    server.stderr.wait_for_event(REDIS_DOWN).await;
    let _redis = RedisServer::start_at(port).await;
    server.stderr.wait_for_event(REDIS_BACK).await;
    assert_eq!(
        logged(&server, KEEPS_NOTHING).len(),
        1,
        "{:#?}",
        server.stderr.all()
    );
    assert_eq!(health(server.addr()).await["redis_persistence"], "none");
}

#[tokio::test]
#[cfg_attr(
    not(has_redis),
    ignore = "needs redis-server (apt-get install redis-server)"
)]
async fn where_config_is_renamed_info_persistence_is_read() {
    let no_config = ["--rename-command", "CONFIG", ""];
    let dir = TempDir::new().expect("a temporary directory");
    let with_aof: Vec<&str> = aof_in(&dir).into_iter().chain(no_config).collect();
    let (aof, bare) = (
        RedisServer::start_with(&with_aof).await,
        RedisServer::start_with(&no_config).await,
    );
    let (on_aof, on_bare) = (server_on(&aof).await, server_on(&bare).await);

    let kept = on_aof.stderr.wait_for_event(KEEPS).await;
    assert_eq!(
        log_field(&kept, "persistence").as_deref(),
        Some("aof"),
        "{kept}"
    );
    assert_eq!(
        log_field(&kept, "read_with").as_deref(),
        Some("INFO persistence"),
        "{kept}"
    );
    assert_eq!(logged(&on_aof, CANNOT_READ), Vec::<String>::new());
    assert_eq!(health(on_aof.addr()).await["redis_persistence"], "aof");

    // INFO shows the AOF but not the save points: with neither the AOF nor a
    // snapshot seen, what Redis keeps is not known, and said so once.
    let warning = on_bare.stderr.wait_for_event(CANNOT_READ).await;
    let why = log_field(&warning, "why").unwrap_or_default();
    assert!(
        why.starts_with("CONFIG GET refused (")
            && why.ends_with("and INFO persistence shows the AOF off and no snapshot since Redis started (its save points are not shown)"),
        "{warning}"
    );
    assert_eq!(logged(&on_bare, KEEPS_NOTHING), Vec::<String>::new());
    assert_eq!(health(on_bare.addr()).await["redis_persistence"], "unknown");
}
