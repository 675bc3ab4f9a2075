//! The group state as the engine's replicated state machine.

use super::engine::Replicated;
use super::state::{ApplyOutcome, GroupState};
use super::GroupCommand;

impl Replicated for GroupState {
    type Command = GroupCommand;
    /// A refused command comes back as its reason, for the proposer to report.
    type Outcome = Result<ApplyOutcome, String>;

    fn apply(&mut self, cmd: &GroupCommand) -> Self::Outcome {
        GroupState::apply(self, cmd).map_err(|e| e.to_string())
    }
}
