//! The `crash` scenario: ours with a data directory under traffic from structured clients that
//! track their acks (`crash_client.rs`); SIGKILL mid-traffic, a restart on the same directory and
//! port, every client back with `epoch` and `after`, every sender sending again what was not
//! acknowledged. What they received and had acknowledged is checked in `ledger.rs`.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::timeout_at;
use tokio_util::sync::CancellationToken;

pub use crate::crash_client::CrashPlan;
use crate::crash_client::{Shared, audit, client};
use crate::datadir::DataRoot;
use crate::ledger::{self, ClientRecord, CrashRun};
use crate::server::{ServerProcess, ServerSpec};

/// Bound on the first connect phase.
const CONNECT_PHASE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long clients get to hand in their records once the run is cancelled.
const WIND_DOWN: Duration = Duration::from_secs(5);
/// How often the kill's trigger (acks so far) is looked at.
const POLL: Duration = Duration::from_millis(2);

/// Runs the crash scenario once with `spec` (ours, on `--port 0`) and a data directory under
/// `root`; `Err` when the server cannot be started or the traffic never reaches the kill.
pub async fn run(
    plan: &CrashPlan,
    spec: &ServerSpec,
    root: &DataRoot,
    tag: String,
) -> Result<CrashRun, String> {
    let dir = root.fresh(&tag)?;
    let mut spec = spec.clone();
    spec.args
        .extend(["--data-dir".to_owned(), dir.path.display().to_string()]);
    let mut server = ServerProcess::spawn(&spec)?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, server.port));
    let shared = Arc::new(Shared {
        plan: plan.clone(),
        addr,
        uri: format!("ws://{addr}/")
            .parse()
            .map_err(|e| format!("bad address {addr}: {e}"))?,
        tag,
        acks: AtomicU64::new(0),
        killed_at: OnceLock::new(),
        start: CancellationToken::new(),
        cancel: CancellationToken::new(),
        connect_limit: Semaphore::new(plan.concurrency),
    });

    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let mut clients = JoinSet::new();
    for id in 0..plan.clients {
        clients.spawn(client(id, Arc::clone(&shared), ready_tx.clone()));
    }
    let connect_deadline = tokio::time::Instant::now() + CONNECT_PHASE_TIMEOUT;
    for _ in 0..plan.clients {
        match timeout_at(connect_deadline, ready_rx.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(why))) => return Err(format!("a client could not connect: {why}")),
            Ok(None) | Err(_) => return Err("the clients did not all connect in time".into()),
        }
    }
    shared.start.cancel();
    let deadline = tokio::time::Instant::now() + plan.timeout;

    // Killed mid-traffic: once the share of lines is acknowledged.
    let trigger = (plan.kill_at * (plan.senders * plan.lines) as f64) as u64;
    while shared.acks.load(Ordering::Relaxed) < trigger.max(1) {
        if tokio::time::Instant::now() >= deadline {
            shared.cancel.cancel();
            return Err(format!(
                "fewer than {trigger} lines were acknowledged in time"
            ));
        }
        if let Some(status) = server.exited() {
            return Err(format!("the server exited before the kill: {status}"));
        }
        tokio::time::sleep(POLL).await;
    }
    let killed_at = *shared.killed_at.get_or_init(Instant::now);
    server.sigkill()?;
    let mut notes = log_notes("before the kill", &server);
    let restarted = on_port(&spec, server.port);
    let server = ServerProcess::spawn(&restarted)
        .map_err(|e| format!("restarting on the same data directory and port: {e}"))?;
    let restart = killed_at.elapsed();

    let mut records = Vec::with_capacity(plan.clients);
    let mut cancelled = false;
    while records.len() < plan.clients {
        let joined = if cancelled {
            timeout_at(tokio::time::Instant::now() + WIND_DOWN, clients.join_next()).await
        } else {
            timeout_at(deadline, clients.join_next()).await
        };
        match joined {
            Ok(Some(Ok(record))) => records.push(record),
            Ok(Some(Err(e))) => return Err(format!("a client task failed: {e}")),
            Ok(None) => break,
            Err(_) if cancelled => break,
            Err(_) => {
                notes.push(format!("the run timed out after {:?}", plan.timeout));
                shared.cancel.cancel();
                cancelled = true;
            }
        }
    }
    let log = match audit(&shared).await {
        Ok(log) => Some(log),
        Err(why) => {
            notes.push(format!("the log could not be read back: {why}"));
            None
        }
    };
    notes.extend(log_notes("after the restart", &server));
    // The server goes before its data directory.
    drop(server);
    drop(dir);

    records.sort_by_key(|(id, _)| *id);
    let records: Vec<ClientRecord> = records.into_iter().map(|(_, r)| r).collect();
    let mut run = ledger::check(&records, log.as_deref(), plan.senders, plan.lines);
    run.restart = Some(restart);
    run.notes.extend(notes);
    Ok(run)
}

/// `spec` listening on `port` instead of the one `--port` gave.
fn on_port(spec: &ServerSpec, port: u16) -> ServerSpec {
    let mut spec = spec.clone();
    if let Some(i) = spec.args.iter().position(|a| a == "--port") {
        spec.args[i + 1] = port.to_string();
    }
    spec
}

/// A note if the server wrote to stderr.
fn log_notes(when: &str, server: &ServerProcess) -> Vec<String> {
    let (lines, first) = server.log();
    if lines == 0 {
        return Vec::new();
    }
    vec![format!(
        "the server {when} wrote {lines} stderr lines at RUST_LOG=warn, first: {}",
        first.join(" | ")
    )]
}
