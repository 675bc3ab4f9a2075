//! openraft's `RaftStateMachine` around a `Replicated` state: applies
//! committed entries, publishes each new state, builds and installs snapshots.

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{AnyError, Entry, EntryPayload, RaftSnapshotBuilder, StorageIOError};
use tokio::sync::watch;

use super::error::EngineError;
use super::snapshot::{self, Stored};
use super::types::{
    decode_snapshot, encode, LogId, Membership, Replicated, SnapshotMeta, StorageError, Tc,
};

/// The applied state and what openraft needs to know about it.
pub(crate) struct StateMachine<S> {
    state: Arc<S>,
    last_applied: Option<LogId>,
    membership: Membership,
    dir: PathBuf,
    tx: watch::Sender<Arc<S>>,
}

/// A frozen copy of the state taken when openraft asks for a snapshot.
pub(crate) struct Builder<S> {
    state: Arc<S>,
    last_applied: Option<LogId>,
    membership: Membership,
    dir: PathBuf,
}

fn sm_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_state_machine(AnyError::error(e.to_string())).into()
}

fn snap_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_snapshot(None, AnyError::error(e.to_string())).into()
}

impl<S: Replicated> StateMachine<S> {
    /// Starts from the snapshot in `dir` if there is one (openraft then
    /// replays the committed log after it), else from `S::default()`.
    pub(crate) async fn open(dir: PathBuf) -> Result<(Self, watch::Receiver<Arc<S>>), EngineError> {
        let d = dir.clone();
        let stored = tokio::task::spawn_blocking(move || {
            snapshot::clean_temps(&d);
            snapshot::load(&d)
        })
        .await
        .map_err(|e| EngineError::Store(e.to_string()))??;
        let (state, last_applied, membership) = match stored {
            None => (S::default(), None, Membership::default()),
            Some(s) => {
                let st: S =
                    decode_snapshot(&s.data).map_err(|e| EngineError::Codec(e.to_string()))?;
                (st, s.meta.last_log_id, s.meta.last_membership)
            }
        };
        let state = Arc::new(state);
        let (tx, rx) = watch::channel(state.clone());
        let sm = StateMachine {
            state,
            last_applied,
            membership,
            dir,
            tx,
        };
        Ok((sm, rx))
    }
}

impl<S: Replicated> RaftSnapshotBuilder<Tc<S>> for Builder<S> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<Tc<S>>, StorageError> {
        let data = encode(&*self.state).map_err(snap_err)?;
        let snapshot_id = match &self.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, rand::random::<u32>()),
            None => format!("empty-{}", rand::random::<u32>()),
        };
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        let stored = Stored {
            meta: meta.clone(),
            data,
        };
        let dir = self.dir.clone();
        let stored =
            tokio::task::spawn_blocking(move || snapshot::save(&dir, &stored).map(|_| stored))
                .await
                .map_err(snap_err)?
                .map_err(snap_err)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl<S: Replicated> RaftStateMachine<Tc<S>> for StateMachine<S> {
    type SnapshotBuilder = Builder<S>;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Option<S::Outcome>>, StorageError>
    where
        I: IntoIterator<Item = Entry<Tc<S>>> + Send,
        I::IntoIter: Send,
    {
        let mut out = Vec::new();
        for e in entries {
            self.last_applied = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => out.push(None),
                EntryPayload::Normal(cmd) => {
                    out.push(Some(Arc::make_mut(&mut self.state).apply(&cmd)))
                }
                EntryPayload::Membership(m) => {
                    self.membership = Membership::new(Some(e.log_id), m);
                    out.push(None);
                }
            }
        }
        // Receivers hold the previous Arc only until they look again, so
        // make_mut above clones at most once per batch.
        self.tx.send_replace(self.state.clone());
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        Builder {
            state: self.state.clone(),
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            dir: self.dir.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let state: S = decode_snapshot(&data).map_err(sm_err)?;
        let stored = Stored {
            meta: meta.clone(),
            data,
        };
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || snapshot::save(&dir, &stored))
            .await
            .map_err(snap_err)?
            .map_err(snap_err)?;
        self.state = Arc::new(state);
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.tx.send_replace(self.state.clone());
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<Tc<S>>>, StorageError> {
        let dir = self.dir.clone();
        let stored = tokio::task::spawn_blocking(move || snapshot::load(&dir))
            .await
            .map_err(snap_err)?
            .map_err(snap_err)?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
