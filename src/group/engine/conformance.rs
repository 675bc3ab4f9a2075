//! openraft's own storage test suite run against our redb log store and
//! state machine: the contract openraft relies on, checked case by case.

use openraft::testing::{StoreBuilder, Suite};
use serde::{Deserialize, Serialize};
use tempfile::TempDir;

use super::state_machine::StateMachine;
use super::store::LogStore;
use super::types::{Replicated, StorageError, Tc};

#[derive(Clone, Default, Serialize, Deserialize)]
struct Counter(u64);

impl Replicated for Counter {
    type Command = u64;
    type Outcome = u64;
    fn apply(&mut self, add: &u64) -> u64 {
        self.0 += add;
        self.0
    }
}

struct Fresh;

fn setup_err(e: impl std::fmt::Display) -> StorageError {
    openraft::StorageIOError::read_logs(openraft::AnyError::error(e.to_string())).into()
}

impl StoreBuilder<Tc<Counter>, LogStore<Counter>, StateMachine<Counter>, TempDir> for Fresh {
    async fn build(
        &self,
    ) -> Result<(TempDir, LogStore<Counter>, StateMachine<Counter>), StorageError> {
        let dir = tempfile::tempdir().map_err(setup_err)?;
        let log = LogStore::open(dir.path()).await.map_err(setup_err)?;
        let (sm, _state) = StateMachine::open(dir.path().to_path_buf())
            .await
            .map_err(setup_err)?;
        Ok((dir, log, sm))
    }
}

#[test]
fn log_store_and_state_machine_pass_the_openraft_suite() {
    Suite::test_all(Fresh).expect("every openraft storage case passes");
}
