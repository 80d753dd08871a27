//! Whether the Redis behind the store keeps the rooms across its own restart: read
//! at connect and after each reconnection (`CONFIG GET appendonly` and `save`, or
//! `INFO persistence` where `CONFIG` is renamed or refused), said in the log once
//! per change and in `/healthz` as `redis_persistence`.

use std::collections::HashMap;
use std::sync::Mutex;

use redis::aio::ConnectionManager;
use redis::{ErrorKind, RedisError, ServerErrorKind};
use tracing::{info, warn};

use crate::store::lock;

/// What Redis keeps of the rooms across its own restart, as `/healthz` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Persistence {
    /// Neither an append-only file nor save points: a restart loses every room.
    None,
    /// The append-only file (`appendonly yes`).
    Aof,
    /// Snapshots alone: save points (read with `CONFIG`), or snapshots written
    /// since Redis started (seen in `INFO`); a restart loses what came after the
    /// last one.
    Rdb,
    /// The append-only file and snapshots.
    AofRdb,
    /// Not known: Redis refused `CONFIG` and `INFO`, or `INFO` cannot tell.
    Unknown,
}

impl Persistence {
    /// Its name in `/healthz`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Aof => "aof",
            Self::Rdb => "rdb",
            Self::AofRdb => "aof+rdb",
            Self::Unknown => "unknown",
        }
    }

    /// From whether the append-only file and snapshots are on.
    fn of(aof: bool, rdb: bool) -> Self {
        match (aof, rdb) {
            (false, false) => Self::None,
            (true, false) => Self::Aof,
            (false, true) => Self::Rdb,
            (true, true) => Self::AofRdb,
        }
    }
}

/// One reading of Redis's settings: what it keeps, how that was read, and (when
/// it is not known) why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reading {
    pub(crate) persistence: Persistence,
    /// The command that answered: `CONFIG GET`, `INFO persistence`, or `none`.
    pub(crate) read_with: &'static str,
    /// For [`Persistence::Unknown`]: what was refused, or what `INFO` could not
    /// tell.
    pub(crate) why: String,
}

/// What Redis was last seen to keep, for `/healthz`, and the log said once per
/// change.
#[derive(Debug, Default)]
pub(crate) struct Watched {
    /// `None` until Redis's settings were read once. std `Mutex`: never held
    /// across an `.await`.
    last: Mutex<Option<Persistence>>,
}

impl Watched {
    /// What Redis keeps, as last read ([`Persistence::Unknown`] before that).
    pub(crate) fn now(&self) -> Persistence {
        lock(&self.last).unwrap_or(Persistence::Unknown)
    }

    /// Reads Redis's settings on `connection` and logs what changed: a warning
    /// when it keeps nothing or cannot be read, a line when it keeps the rooms. A
    /// Redis that does not answer leaves what was known (the next reconnection
    /// reads again).
    pub(crate) async fn check(&self, connection: ConnectionManager) {
        if let Some(reading) = read(connection).await {
            self.note(&reading);
        }
    }

    /// Keeps `reading`, and logs it if it differs from the last one.
    fn note(&self, reading: &Reading) {
        let before = lock(&self.last).replace(reading.persistence);
        if before == Some(reading.persistence) {
            return;
        }
        let Reading {
            persistence,
            read_with,
            why,
        } = reading;
        match persistence {
            Persistence::None => warn!(
                appendonly = "no",
                save = "",
                read_with,
                "Redis keeps nothing (appendonly no, no save points): a Redis restart loses every room; run it with --appendonly yes"
            ),
            Persistence::Unknown => warn!(
                why = why.as_str(),
                "Redis's persistence cannot be read: a Redis restart may lose every room; run it with --appendonly yes"
            ),
            kept => info!(
                persistence = kept.name(),
                read_with, "Redis keeps the rooms across its restarts"
            ),
        }
    }
}

/// A `CONFIG GET` answer: settings by name (a RESP3 map, or RESP2's pairs).
type Settings = HashMap<String, String>;

/// Reads what Redis keeps: `CONFIG GET` first, `INFO persistence` if that is
/// refused. `None` when Redis did not answer at all.
async fn read(mut connection: ConnectionManager) -> Option<Reading> {
    let refused = match config_get(&mut connection).await {
        Ok((appendonly, save)) => match from_config(appendonly.as_deref(), save.as_deref()) {
            Some(persistence) => {
                return Some(Reading {
                    persistence,
                    read_with: "CONFIG GET",
                    why: String::new(),
                });
            }
            None => format!("CONFIG GET answered appendonly {appendonly:?} and save {save:?}"),
        },
        Err(e) if answered(&e) => format!("CONFIG GET refused ({e})"),
        Err(_) => return None,
    };
    let info = redis::cmd("INFO")
        .arg("persistence")
        .query_async::<String>(&mut connection)
        .await;
    Some(match info {
        Ok(text) => match from_info(&text) {
            Ok(persistence) => Reading {
                persistence,
                read_with: "INFO persistence",
                why: String::new(),
            },
            Err(cannot) => Reading {
                persistence: Persistence::Unknown,
                read_with: "none",
                why: format!("{refused}, and INFO persistence {cannot}"),
            },
        },
        Err(e) if answered(&e) => Reading {
            persistence: Persistence::Unknown,
            read_with: "none",
            why: format!("{refused}, and INFO persistence refused ({e})"),
        },
        Err(_) => return None,
    })
}

/// The values of `appendonly` and `save`, one command each (a Redis before 7.0
/// takes one name per `CONFIG GET`).
async fn config_get(
    connection: &mut ConnectionManager,
) -> redis::RedisResult<(Option<String>, Option<String>)> {
    let mut value = async |name: &str| {
        let mut settings: Settings = redis::cmd("CONFIG")
            .arg("GET")
            .arg(name)
            .query_async(connection)
            .await?;
        Ok::<_, RedisError>(settings.remove(name))
    };
    Ok((value("appendonly").await?, value("save").await?))
}

/// Whether `e` is Redis's answer (a refusal: renamed, not permitted), not a
/// connection that failed or a Redis still loading its data.
fn answered(e: &RedisError) -> bool {
    match e.kind() {
        ErrorKind::Server(ServerErrorKind::BusyLoading) => false,
        ErrorKind::Server(_) | ErrorKind::Extension => true,
        _ => false,
    }
}

/// What Redis keeps, from the values of `appendonly` and `save`. `None` for an
/// answer without one of them (a Redis that does not know the setting).
fn from_config(appendonly: Option<&str>, save: Option<&str>) -> Option<Persistence> {
    let aof = appendonly?.eq_ignore_ascii_case("yes");
    let rdb = !save?.trim().is_empty();
    Some(Persistence::of(aof, rdb))
}

/// What Redis keeps, from `INFO persistence`: `aof_enabled`, and `rdb_saves`
/// (snapshots written since Redis started, Redis 7.0 on) for snapshots, since
/// `INFO` does not show the save points. An error says what it cannot tell.
fn from_info(text: &str) -> Result<Persistence, &'static str> {
    let field = |name: &str| {
        text.lines()
            .filter_map(|line| line.trim_end().split_once(':'))
            .find(|(key, _)| *key == name)
            .and_then(|(_, value)| value.parse::<u64>().ok())
    };
    let aof = field("aof_enabled").ok_or("has no aof_enabled")? == 1;
    let snapshots = field("rdb_saves").unwrap_or(0) > 0;
    match (aof, snapshots) {
        (false, false) => Err(
            "shows the AOF off and no snapshot since Redis started (its save points are not shown)",
        ),
        (aof, rdb) => Ok(Persistence::of(aof, rdb)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_answers_name_what_redis_keeps() {
        let cases = [
            ("no", "", Some(Persistence::None)),
            ("yes", "", Some(Persistence::Aof)),
            ("no", "3600 1 300 100 60 10000", Some(Persistence::Rdb)),
            ("yes", "3600 1", Some(Persistence::AofRdb)),
        ];
        for (appendonly, save, expected) in cases {
            let got = from_config(Some(appendonly), Some(save));
            assert_eq!(got, expected, "appendonly {appendonly:?}, save {save:?}");
        }
        assert_eq!(from_config(None, Some("")), None);
    }

    #[test]
    fn info_tells_the_aof_and_snapshots_seen_but_not_save_points() {
        let info = |aof: u8, saves: u8| {
            format!("# Persistence\r\nloading:0\r\nrdb_saves:{saves}\r\naof_enabled:{aof}\r\n")
        };
        assert_eq!(from_info(&info(1, 0)), Ok(Persistence::Aof));
        assert_eq!(from_info(&info(1, 2)), Ok(Persistence::AofRdb));
        assert_eq!(from_info(&info(0, 1)), Ok(Persistence::Rdb));
        assert!(from_info(&info(0, 0)).is_err());
        assert!(from_info("# Persistence\r\nloading:0\r\n").is_err());
    }

    #[test]
    fn the_last_reading_is_what_healthz_says() {
        let watched = Watched::default();
        assert_eq!(watched.now(), Persistence::Unknown);
        let reading = |persistence| Reading {
            persistence,
            read_with: "CONFIG GET",
            why: String::new(),
        };
        watched.note(&reading(Persistence::None));
        assert_eq!(watched.now(), Persistence::None);
        watched.note(&reading(Persistence::Aof));
        assert_eq!(watched.now(), Persistence::Aof);
    }
}
