//! Durable Raft log, vote and committed/purged ids in a redb database under
//! the state directory (openraft storage-v2 `RaftLogStorage`).

use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, Entry, RaftLogReader, StorageIOError};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::EngineError;
use super::types::{decode, encode, LogId, Replicated, StorageError, Tc, Vote};

/// Log entries by index, each a bincode-encoded `openraft::Entry`.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// Small records: vote, committed and last purged log ids.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "purged";
/// How long `open` waits for a previous instance in this process to release
/// the database lock (an engine restarted right after shutdown).
const OPEN_WAIT_MS: u64 = 5_000;
/// Entries returned by one read, so a far-behind follower is fed in batches.
const READ_ENTRIES_MAX: u64 = 4_096;

/// The log store; cheap to clone (openraft's log reader is a clone).
pub(crate) struct LogStore<S> {
    db: Arc<Database>,
    _s: PhantomData<fn() -> S>,
}

impl<S> Clone for LogStore<S> {
    fn clone(&self) -> Self {
        LogStore {
            db: self.db.clone(),
            _s: PhantomData,
        }
    }
}

/// A failure inside a blocking redb closure; small, unlike openraft's
/// `StorageError`, into which it is turned once back on the async side.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct DbError(String);

fn db_err(e: impl std::fmt::Display) -> DbError {
    DbError(e.to_string())
}

fn io_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

/// Whether a blocking closure reads or writes, for openraft's error report.
#[derive(Clone, Copy)]
enum Access {
    Read,
    Write,
}

impl<S: Replicated> LogStore<S> {
    /// Opens (or creates) `dir/raft.redb`.
    pub(crate) async fn open(dir: &Path) -> Result<Self, EngineError> {
        let path = dir.join("raft.redb");
        let deadline = tokio::time::Instant::now() + Duration::from_millis(OPEN_WAIT_MS);
        let db = loop {
            let p = path.clone();
            let res = tokio::task::spawn_blocking(move || Database::create(p))
                .await
                .map_err(|e| EngineError::Store(e.to_string()))?;
            match res {
                Ok(db) => break db,
                Err(redb::DatabaseError::DatabaseAlreadyOpen)
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(EngineError::Store(format!("{}: {e}", path.display()))),
            }
        };
        let txn = db
            .begin_write()
            .map_err(|e| EngineError::Store(e.to_string()))?;
        txn.open_table(LOG)
            .map_err(|e| EngineError::Store(e.to_string()))?;
        txn.open_table(META)
            .map_err(|e| EngineError::Store(e.to_string()))?;
        txn.commit()
            .map_err(|e| EngineError::Store(e.to_string()))?;
        Ok(LogStore {
            db: Arc::new(db),
            _s: PhantomData,
        })
    }

    /// Index of the last stored (or purged) entry.
    pub(crate) async fn last_log_index(&mut self) -> Result<Option<u64>, StorageError> {
        Ok(self.get_log_state().await?.last_log_id.map(|l| l.index))
    }

    /// Runs a blocking redb closure off the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        access: Access,
        f: impl FnOnce(&Database) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let db = self.db.clone();
        let res = tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(db_err)
            .and_then(|r| r);
        res.map_err(|e| match access {
            Access::Read => StorageIOError::read_logs(AnyError::new(&e)).into(),
            Access::Write => StorageIOError::write_logs(AnyError::new(&e)).into(),
        })
    }

    async fn get_meta<T: DeserializeOwned + Send + 'static>(
        &self,
        key: &'static str,
    ) -> Result<Option<T>, StorageError> {
        self.blocking(Access::Read, move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let t = txn.open_table(META).map_err(db_err)?;
            match t.get(key).map_err(db_err)? {
                None => Ok(None),
                Some(v) => decode(v.value()).map(Some).map_err(db_err),
            }
        })
        .await
    }

    async fn put_meta<T: Serialize>(
        &self,
        key: &'static str,
        v: &T,
        durability: Durability,
    ) -> Result<(), StorageError> {
        let bytes = encode(v).map_err(io_err)?;
        self.blocking(Access::Write, move |db| {
            let mut txn = db.begin_write().map_err(db_err)?;
            txn.set_durability(durability).map_err(db_err)?;
            {
                let mut t = txn.open_table(META).map_err(db_err)?;
                t.insert(key, bytes.as_slice()).map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        })
        .await
    }
}

impl<S: Replicated> RaftLogReader<Tc<S>> for LogStore<S> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<Tc<S>>>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => i.saturating_add(1),
            Bound::Excluded(&i) => i,
            Bound::Unbounded => u64::MAX,
        };
        let end = end.min(start.saturating_add(READ_ENTRIES_MAX));
        self.blocking(Access::Read, move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let t = txn.open_table(LOG).map_err(db_err)?;
            let mut out = Vec::new();
            for kv in t.range(start..end).map_err(db_err)? {
                let (_, v) = kv.map_err(db_err)?;
                out.push(decode(v.value()).map_err(db_err)?);
            }
            Ok(out)
        })
        .await
    }
}

impl<S: Replicated> RaftLogStorage<Tc<S>> for LogStore<S> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<Tc<S>>, StorageError> {
        let purged: Option<LogId> = self.get_meta(KEY_PURGED).await?;
        let last: Option<LogId> = self
            .blocking(Access::Read, |db| {
                let txn = db.begin_read().map_err(db_err)?;
                let t = txn.open_table(LOG).map_err(db_err)?;
                let last = match t.last().map_err(db_err)? {
                    None => None,
                    Some((_, v)) => {
                        let e: Entry<Tc<S>> = decode(v.value()).map_err(db_err)?;
                        Some(e.log_id)
                    }
                };
                Ok(last)
            })
            .await?;
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last.or(purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.put_meta(KEY_VOTE, vote, Durability::Immediate).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(KEY_VOTE).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // The committed id only saves re-replication after a restart: losing
        // the latest one in a crash is safe (openraft re-learns it from the
        // leader), so it rides on the next durable commit (an append or a
        // clean close) instead of costing an fsync of its own.
        self.put_meta(KEY_COMMITTED, &committed, Durability::None)
            .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .get_meta::<Option<LogId>>(KEY_COMMITTED)
            .await?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<Tc<S>>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<Tc<S>>> + Send,
        I::IntoIter: Send,
    {
        let mut rows = Vec::new();
        for e in entries {
            rows.push((e.log_id.index, encode(&e).map_err(io_err)?));
        }
        let res = self
            .blocking(Access::Write, move |db| {
                let txn = db.begin_write().map_err(db_err)?;
                {
                    let mut t = txn.open_table(LOG).map_err(db_err)?;
                    for (i, b) in &rows {
                        t.insert(*i, b.as_slice()).map_err(db_err)?;
                    }
                }
                // redb's default durability fsyncs on commit: the entries are
                // on disk before openraft is told so.
                txn.commit().map_err(db_err)
            })
            .await;
        match &res {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        res
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let from = log_id.index;
        self.blocking(Access::Write, move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut t = txn.open_table(LOG).map_err(db_err)?;
                t.retain_in(from.., |_, _| false).map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: a crash between the two steps leaves
        // entries below it, which `get_log_state` and openraft ignore.
        self.put_meta(KEY_PURGED, &log_id, Durability::Immediate)
            .await?;
        let upto = log_id.index;
        self.blocking(Access::Write, move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut t = txn.open_table(LOG).map_err(db_err)?;
                t.retain_in(..=upto, |_, _| false).map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        })
        .await
    }
}
