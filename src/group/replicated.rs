//! The group state as the engine's replicated state machine.

use super::engine::Replicated;
use super::state::{ApplyOutcome, GroupState};
use super::{GroupCommand, MemberId};

impl Replicated for GroupState {
    type Command = GroupCommand;
    /// A refused command comes back as its reason, for the proposer to report.
    type Outcome = Result<ApplyOutcome, String>;

    fn apply(&mut self, cmd: &GroupCommand) -> Self::Outcome {
        GroupState::apply(self, cmd).map_err(|e| e.to_string())
    }

    /// The one writer of the volume is the production host; each time a
    /// member becomes it, the group epoch it became it at is new.
    fn lease_holder(&self) -> Option<(u64, u64)> {
        let production = self.resources.first()?;
        production
            .host
            .map(|host: MemberId| (host.node_id(), production.host_epoch))
    }
}
